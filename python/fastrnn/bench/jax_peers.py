"""The CPU mode's JAX peers: Flax's scanned cells (``jax``) and ``fastrnn.jax.layer``
(``fastrnn.jax``), both on the configuration's weights, input and ``dy``, under ``jax.jit``.

- ``jax``: a stack of ``flax.nnx.RNN`` (``time_major=True``; ``flax.nnx.Bidirectional`` for a
  bidirectional layer) over the Flax cell of the configuration's mode: ``nnx.OptimizedLSTMCell``,
  ``nnx.GRUCell``, ``nnx.SimpleCell`` (tanh, or ``activation_fn=jax.nn.relu``). The torch-layout
  weights are converted into each cell's parameters so that it computes the same function as the
  other peers (:func:`load_flax_cell`): kernels are the transposed weights; the LSTM's and the
  vanilla cells' one bias is ``b_ih + b_hh``. Flax's GRUCell has no bias on its recurrent product,
  so torch's ``b_hn`` (inside ``r * (W_hn h + b_hn)``) has nowhere to go: its ``dense_h`` is
  replaced by the same ``nnx.Linear`` with a bias (``b_hh``), one add per step.
- ``fastrnn.jax``: ``fastrnn.jax.layer`` once per layer and direction (``reverse=True`` for the
  reverse one, the directions' outputs concatenated as the next layer's input).

Both are pure functions of a parameter pytree and ``x`` under ``jax.jit``: forward returns ``y``;
forward+backward is ``jax.vjp`` of the same function applied to ``dy`` (what ``y.backward(dy)``
computes: the gradients of ``sum(y * dy)`` with respect to the input and every weight), returning
``y`` and those gradients. Each timed call ends with ``block_until_ready()``. The initial states
are zeros, as for the other peers. Compilation happens in the untimed accuracy check (or warm-up).

Threads: both peers run in the benchmark's process with XLA's defaults; XLA's CPU client runs its
own intra-op thread pool, as many threads as CPUs this process may run on (its affinity), which
is also fastrnn's default thread count; fastrnn.jax's custom calls run on fastrnn's own threads
(``fastrnn.set_num_threads``). :func:`xla_threads_note` says when the two differ.

float64 configurations run with ``jax.enable_x64(True)`` around the runner's calls (never
switched on for the process, so the rest of it keeps JAX's defaults).
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Dict, Optional

import numpy as np

import fastrnn

from .configs import Config
from .peers import Runner

_FLAX_CELLS = {"lstm": "OptimizedLSTMCell", "gru": "GRUCell", "rnn_tanh": "SimpleCell",
               "rnn_relu": "SimpleCell"}


def jax_unavailable() -> Optional[str]:
    """None when jax and flax import, else why not."""
    try:
        import jax  # noqa: F401
        from flax import nnx  # noqa: F401
    except ImportError as exc:
        return f"jax and flax are not installed (pip install jax flax): {exc}"
    return None


def fastrnn_jax_unavailable() -> Optional[str]:
    """None when fastrnn.jax imports (it needs jax, and a fastrnn built with its handlers)."""
    why = jax_unavailable()
    if why is not None:
        return why
    try:
        import fastrnn.jax  # noqa: F401
    except ImportError as exc:
        return f"fastrnn.jax does not import: {exc}"
    return None


def xla_threads() -> int:
    """The threads of XLA's CPU intra-op pool: the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def xla_threads_note() -> Optional[str]:
    """A warning when XLA's pool and fastrnn's threads differ (the comparison is then uneven)."""
    mine, xla = fastrnn.get_num_threads(), xla_threads()
    if mine == xla:
        return None
    return (f"XLA's CPU pool has {xla} threads (one per usable CPU) but fastrnn uses {mine}: "
            f"to compare like with like, run under `taskset -c` with {mine} CPU(s) instead of "
            "changing fastrnn's thread count")


def _threads_text() -> str:
    flags = os.environ.get("XLA_FLAGS")
    return (f"XLA CPU intra-op pool {xla_threads()} threads"
            + (f", XLA_FLAGS={flags!r}" if flags else ", XLA_FLAGS unset"))


def flax_description() -> str:
    import flax
    import jax
    return (f"Flax's scanned cells under jax.jit: flax.nnx.RNN (time-major) over "
            f"OptimizedLSTMCell / GRUCell (+ b_hn) / SimpleCell, jax {jax.__version__}, "
            f"flax {flax.__version__}; {_threads_text()}")


def fastrnn_jax_description() -> str:
    import jax
    return (f"fastrnn.jax.layer under jax.jit, one call per layer and direction, jax "
            f"{jax.__version__}; {fastrnn.get_num_threads()} fastrnn threads; {_threads_text()}")


def _x64(config: Config):
    """JAX's float64 switched on for a float64 configuration's calls only."""
    if config.dtype == "float64":
        import jax
        return jax.enable_x64(True)
    return contextlib.nullcontext()


def _suffix(layer: int, direction: int) -> str:
    return f"_l{layer}" + ("_reverse" if direction == 1 else "")


# ---- the runners --------------------------------------------------------------------------

class JaxRunner(Runner):
    """A pure ``apply(params, x) -> y`` under ``jax.jit``: forward, and ``jax.vjp`` with ``dy``."""

    def __init__(self, inputs, apply: Callable, params, ctx):
        import jax
        import jax.numpy as jnp

        self._jax, self._ctx = jax, ctx
        with ctx:
            self.params = jax.tree_util.tree_map(jnp.asarray, params)
            self.x, self.dy = jnp.asarray(inputs.x), jnp.asarray(inputs.dy)

            def forward_backward(params, x, dy):
                y, vjp = jax.vjp(apply, params, x)
                return y, vjp(dy)

            self._forward = jax.jit(apply)
            self._forward_backward = jax.jit(forward_backward)

    def forward(self):
        with self._ctx:
            return self._forward(self.params, self.x).block_until_ready()

    def forward_backward(self) -> None:
        with self._ctx:
            self._jax.block_until_ready(self._forward_backward(self.params, self.x, self.dy))

    def output(self) -> np.ndarray:
        return np.asarray(self.forward())

    def input_gradient(self) -> np.ndarray:
        with self._ctx:
            _, (_, dx) = self._forward_backward(self.params, self.x, self.dy)
            return np.asarray(dx)


def fastrnn_jax_apply(config: Config) -> Callable:
    """``apply(params, x) -> y`` of the whole stack on ``fastrnn.jax.layer``; ``params`` in
    torch's names and layout."""
    import jax.numpy as jnp

    import fastrnn.jax

    cfg = config

    def apply(params, x):
        B, dtype = x.shape[1], x.dtype
        h0 = jnp.zeros((B, cfg.H), dtype)
        c0 = h0 if cfg.cell == "lstm" else None
        for layer in range(cfg.layers):
            outs = []
            for direction in range(cfg.directions):
                s = _suffix(layer, direction)
                y, _, _ = fastrnn.jax.layer(
                    cfg.cell, x, h0, c0, params["weight_ih" + s], params["weight_hh" + s],
                    params.get("bias_ih" + s), params.get("bias_hh" + s),
                    reverse=direction == 1)
                outs.append(y)
            x = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)
        return x

    return apply


def make_fastrnn_jax_runner(inputs) -> JaxRunner:
    ctx = _x64(inputs.config)
    return JaxRunner(inputs, fastrnn_jax_apply(inputs.config), dict(inputs.params), ctx)


def make_flax_cell(mode: str, input_size: int, hidden: int, dtype, rngs):
    """Flax's cell for ``mode``, its parameters zeros (torch.nn's function once
    :func:`load_flax_cell` fills them)."""
    import jax
    from flax import nnx

    zeros = nnx.initializers.zeros_init()  # load_flax_cell overwrites them: no random init
    kwargs = dict(dtype=dtype, param_dtype=dtype, kernel_init=zeros, recurrent_kernel_init=zeros,
                  bias_init=zeros, rngs=rngs)
    if mode == "rnn_relu":
        kwargs["activation_fn"] = jax.nn.relu
    cell = getattr(nnx, _FLAX_CELLS[mode])(input_size, hidden, **kwargs)
    if mode == "gru":  # torch's b_hn sits inside r * (W_hn h + b_hn): a bias on dense_h
        cell.dense_h = nnx.Linear(hidden, 3 * hidden, use_bias=True, dtype=dtype,
                                  param_dtype=dtype, kernel_init=zeros, bias_init=zeros,
                                  rngs=rngs)
    return cell


def load_flax_cell(cell, mode: str, w_ih, w_hh, b_ih, b_hh) -> None:
    """Put torch-layout weights ``W_ih (G*H, I)``, ``W_hh (G*H, H)``, biases ``(G*H,)`` (or
    None) into a cell from :func:`make_flax_cell`."""
    import jax.numpy as jnp

    dtype = cell.dense_i.kernel[...].dtype
    zeros = np.zeros(np.shape(w_ih)[0], dtype)
    b_ih = zeros if b_ih is None else np.asarray(b_ih)
    b_hh = zeros if b_hh is None else np.asarray(b_hh)
    cell.dense_i.kernel[...] = jnp.asarray(np.asarray(w_ih).T, dtype)
    cell.dense_h.kernel[...] = jnp.asarray(np.asarray(w_hh).T, dtype)
    if mode == "lstm":    # one bias, on dense_h
        cell.dense_h.bias[...] = jnp.asarray(b_ih + b_hh, dtype)
    elif mode == "gru":   # dense_i's bias, and dense_h's (added by make_flax_cell)
        cell.dense_i.bias[...] = jnp.asarray(b_ih, dtype)
        cell.dense_h.bias[...] = jnp.asarray(b_hh, dtype)
    else:                 # one bias, on dense_i
        cell.dense_i.bias[...] = jnp.asarray(b_ih + b_hh, dtype)


def flax_stack(config: Config, params: Dict[str, np.ndarray]):
    """The configuration's layers as Flax modules carrying ``params`` (torch names): a list of
    ``nnx.RNN`` (or ``nnx.Bidirectional`` of two), time-major, without random state (the
    initial carries are passed in: :func:`flax_apply`)."""
    import jax.numpy as jnp
    from flax import nnx

    cfg, dtype = config, jnp.dtype(config.dtype)
    rngs = nnx.Rngs(0)
    layers = []
    for layer in range(cfg.layers):
        input_size = cfg.I if layer == 0 else cfg.directions * cfg.H
        rnns = []
        for direction in range(cfg.directions):
            s = _suffix(layer, direction)
            cell = make_flax_cell(cfg.cell, input_size, cfg.H, dtype, rngs)
            load_flax_cell(cell, cfg.cell, params["weight_ih" + s], params["weight_hh" + s],
                           params.get("bias_ih" + s), params.get("bias_hh" + s))
            rnns.append(nnx.RNN(cell, time_major=True, rngs=False))
        layers.append(rnns[0] if len(rnns) == 1
                      else nnx.Bidirectional(rnns[0], rnns[1], time_major=True, rngs=False))
    return nnx.List(layers)


def flax_apply(config: Config, graphdef) -> "Callable":
    """``apply(params, x) -> y`` of :func:`flax_stack`'s modules split as ``graphdef, params``,
    from zero initial states."""
    import jax.numpy as jnp
    from flax import nnx

    cfg = config

    def apply(params, x):
        h0 = jnp.zeros((x.shape[1], cfg.H), x.dtype)
        carry = (h0, h0) if cfg.cell == "lstm" else h0  # Flax's LSTM carry is (c, h)
        if cfg.bidirectional:
            carry = (carry, carry)
        for layer in nnx.merge(graphdef, params):
            x = layer(x, initial_carry=carry)
        return x

    return apply


def make_flax_runner(inputs) -> JaxRunner:
    from flax import nnx

    ctx = _x64(inputs.config)
    with ctx:
        graphdef, params = nnx.split(flax_stack(inputs.config, inputs.params))
    return JaxRunner(inputs, flax_apply(inputs.config, graphdef), params, ctx)


def flax_cell_name(cell: str) -> str:
    """The Flax cell the ``jax`` peer scans for ``cell`` (a mode)."""
    return _FLAX_CELLS[cell]
