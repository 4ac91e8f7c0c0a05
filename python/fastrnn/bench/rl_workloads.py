"""The RL suite's workloads: each row's two sides, fastrnn.torch and torch.nn, built on the same
weights and data.

:func:`build_sides` gives, for one :class:`~fastrnn.bench.configs.RlRow`, a :class:`Side` per
implementation (:data:`SIDES`), each with the calls the suite times:

- ``update``: the rollout ``x`` (T, B, I) from a carried state ``hx``, episode starts drawn with
  probability ``reset_p`` per step and env (fixed seed). fastrnn.torch: one call,
  ``m(x, hx, resets=episode_starts)``. torch.nn: what recurrent PPO implementations do (e.g.
  sb3-contrib's RecurrentPPO), a Python loop of single-step calls, the state multiplied by
  ``(1 - episode_start[t])`` before each;
- ``cell``: one step ``cell(x, hx)``; ``loop``: a Python loop of ``calls`` steps of it;
- ``stream``: ``calls`` calls with T = 1 and B = 1, each carrying the state of the one before.

``forward`` runs under ``torch.no_grad()`` and returns the outputs (every step's); a row with a
backward times ``forward_backward``: the same calls with autograd, then ``.backward()`` of the sum
of the outputs, the gradients landing in the parameters only (the inputs and the initial state
need none). ``prepare`` sets the gradients to None, untimed, before each run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict

import fastrnn

from .configs import RlRow
from .peers import make_cell, make_layer

SIDES = ("fastrnn.torch", "torch.nn")  # the side measured against, second


@dataclass
class Side:
    """One implementation of a row's work."""
    module: object                        # the torch module (its gradients are compared)
    run: Callable[[], object]             # the work, with autograd as the caller has it
    backward: bool                        # whether the row has a backward

    def forward(self):
        """Inference: the outputs of every step, nothing saved for backward."""
        import torch
        with torch.no_grad():
            return self.run()

    def forward_backward(self) -> None:
        self.run().sum().backward()

    def prepare(self, i: int = 0) -> None:
        self.module.zero_grad(set_to_none=True)

    def results(self) -> Dict[str, object]:
        """The outputs, and each parameter's gradient of one forward+backward as ``grad:NAME``
        (what the accuracy check compares)."""
        out = {"y": self.forward()}
        if self.backward:
            self.prepare()
            self.forward_backward()
            out.update({f"grad:{n}": p.grad.detach().clone()
                        for n, p in self.module.named_parameters()})
            self.prepare()
        return out


def build_sides(row: RlRow, seed: int = 0) -> Dict[str, Side]:
    """Both sides of ``row``: fastrnn.torch and torch.nn modules with the same weights (torch's
    initialisation under ``torch.manual_seed(seed)``), on the same data; torch runs with as many
    threads as fastrnn, as the CPU mode's torch peer does."""
    import torch
    import fastrnn.torch as ftorch

    torch.set_num_threads(fastrnn.get_num_threads())
    make = make_cell if row.group in ("cell", "loop") else make_layer
    torch.manual_seed(seed)
    fast = make(ftorch, row.config)
    ref = make(torch.nn, row.config)
    ref.load_state_dict(fast.state_dict())
    data = _data(row, seed)
    build = _BUILDERS[row.group]
    return {"fastrnn.torch": build(row, fast, data, True), "torch.nn": build(row, ref, data, False)}


def _data(row: RlRow, seed: int) -> Dict[str, object]:
    """A row's inputs, initial state and episode starts, the same for both sides (drawn from
    ``seed``)."""
    import torch
    c = row.config
    gen = torch.Generator().manual_seed(seed + 1)
    lstm = c.cell == "lstm"
    if row.group == "stream":
        x = torch.randn(row.calls, 1, c.B, c.I, generator=gen)  # one (T=1, B, I) input per call
        zeros = torch.zeros(c.layers, c.B, c.H)
        return {"x": x, "hx": (zeros, zeros.clone()) if lstm else zeros}
    layered = row.group == "update"
    shape = (1, c.B, c.H) if layered else (c.B, c.H)
    state = [0.5 * torch.randn(shape, generator=gen) for _ in range(2 if lstm else 1)]
    data: Dict[str, object] = {"hx": tuple(state) if lstm else state[0]}
    steps = {"cell": (), "loop": (row.calls,), "update": (c.T,)}[row.group]
    data["x"] = torch.randn(steps + (c.B, c.I), generator=gen)
    if layered:
        starts = torch.rand(c.T, c.B, generator=torch.Generator().manual_seed(seed + 2))
        data["episode_starts"] = starts < row.reset_p
    return data


def _hidden(out):
    """h of a step's result: ``(h, c)`` of an LSTM cell, h otherwise."""
    return out[0] if isinstance(out, tuple) else out


def _update(row: RlRow, module, data, native: bool) -> Side:
    import torch
    x, hx, starts = data["x"], data["hx"], data["episode_starts"]
    if native:
        def run():
            return module(x, hx, resets=starts)[0]
        return Side(module, run, True)

    T, B = x.shape[0], x.shape[1]
    starts_f = starts.to(x.dtype)  # a rollout buffer keeps episode_starts as floats

    def step_loop():
        state, outputs = hx, []
        for t in range(T):
            keep = (1.0 - starts_f[t]).view(1, B, 1)
            state = tuple(keep * s for s in state) if isinstance(state, tuple) else keep * state
            y, state = module(x[t].unsqueeze(0), state)
            outputs.append(y)
        return torch.cat(outputs)
    return Side(module, step_loop, True)


def _cell(row: RlRow, module, data, native: bool) -> Side:
    x, hx = data["x"], data["hx"]

    def run():
        return _hidden(module(x, hx))
    return Side(module, run, True)


def _loop(row: RlRow, module, data, native: bool) -> Side:
    import torch
    x, hx = data["x"], data["hx"]

    def run():
        state, outputs = hx, []
        for t in range(x.shape[0]):
            state = module(x[t], state)
            outputs.append(_hidden(state))
        return torch.stack(outputs)
    return Side(module, run, True)


def _stream(row: RlRow, module, data, native: bool) -> Side:
    import torch
    x, hx = data["x"], data["hx"]

    def run():
        state, outputs = hx, []
        for k in range(x.shape[0]):
            y, state = module(x[k], state)
            outputs.append(y)
        return torch.cat(outputs)
    return Side(module, run, False)


_BUILDERS = {"update": _update, "cell": _cell, "loop": _loop, "stream": _stream}
