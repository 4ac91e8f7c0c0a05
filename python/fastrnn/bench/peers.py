"""The implementations the CPU mode times against each other (its peers), and the layers both
modes build.

A :class:`Peer` names an implementation and builds a :class:`Runner` for one configuration's
:class:`Inputs`: ``fastrnn`` (the C++ core), ``numpy`` (the reference, ``fastrnn.reference``),
``torch`` (``torch.nn``) and ``fastrnn.torch`` (its drop-in replacements; both need torch),
``jax`` (Flax's scanned cells) and ``fastrnn.jax`` (``fastrnn.jax.layer``; both need jax and
flax, :mod:`fastrnn.bench.jax_peers`).
:func:`make_layer` builds an RNN/LSTM/GRU of any of these APIs, which share one constructor; the
GPU mode and the RL suite build their fastrnn.torch and torch.nn modules with it too, and the RL
suite its single-step cells with :func:`make_cell`.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np

import fastrnn
from fastrnn import reference
from fastrnn._cells import CELLS

from .configs import Config
from .machine import numpy_blas_name

BASELINE = "fastrnn"  # the peer every other is compared with
# The pair whose ratio answers "how much faster does my torch model get": printed per configuration.
ADAPTER_PAIR = ("torch", "fastrnn.torch")
# The pairs of a framework's own layer and fastrnn's adapter for it, by the result key of their
# ratio (the framework's median time / the adapter's): printed per configuration, and their
# geometric means over the run.
ADAPTER_PAIRS = {"speedup_torch_adapter": ADAPTER_PAIR,
                 "speedup_jax_adapter": ("jax", "fastrnn.jax")}
# How the reports name each pair's ratio (the JAX peer ``jax`` is Flax's scanned cells).
ADAPTER_TITLES = {"speedup_torch_adapter": "torch.nn / fastrnn.torch",
                  "speedup_jax_adapter": "jax / fastrnn.jax"}


def make_layer(namespace, config: Config, **kwargs):
    """``namespace.RNN/LSTM/GRU`` (fastrnn, fastrnn.reference, torch.nn or fastrnn.torch) with
    the cell, sizes, layers and direction of ``config``; ``kwargs`` go to the constructor."""
    spec = CELLS[config.cell]
    if spec.nonlinearity is not None:
        kwargs["nonlinearity"] = spec.nonlinearity
    return getattr(namespace, spec.torch_class)(config.I, config.H, num_layers=config.layers,
                                                bidirectional=config.bidirectional, **kwargs)


def make_cell(namespace, config: Config, **kwargs):
    """``namespace.RNNCell/LSTMCell/GRUCell`` (torch.nn or fastrnn.torch) of ``config``'s cell
    and sizes (one layer, one direction); ``kwargs`` go to the constructor."""
    spec = CELLS[config.cell]
    if spec.nonlinearity is not None:
        kwargs["nonlinearity"] = spec.nonlinearity
    return getattr(namespace, spec.torch_class + "Cell")(config.I, config.H, **kwargs)


@dataclass
class Inputs:
    """The data every peer of one configuration runs on: the same weights, input and ``dy``.

    ``params`` uses fastrnn's (= PyTorch's) parameter names, in the configuration's dtype.
    """
    config: Config
    params: Dict[str, np.ndarray]
    x: np.ndarray   # (T, B, I)
    dy: np.ndarray  # (T, B, D*H)


class Runner(abc.ABC):
    """One peer's implementation of one configuration, with its inputs bound.

    ``forward`` runs inference and returns the output; ``forward_backward`` runs a training
    forward and the backward pass. Both must finish their work before returning (a GPU peer
    synchronises), since the harness times the calls.
    """

    @abc.abstractmethod
    def forward(self):
        """Inference forward; returns the output."""

    @abc.abstractmethod
    def forward_backward(self) -> None:
        """Training forward, then backward with the configuration's ``dy``."""

    def output(self) -> np.ndarray:
        """The forward output ``(T, B, D*H)`` as a NumPy array (for the accuracy check)."""
        return np.asarray(self.forward())

    @abc.abstractmethod
    def input_gradient(self) -> np.ndarray:
        """``dx`` of one training forward and backward, as a NumPy array (accuracy check)."""


@dataclass(frozen=True)
class Peer:
    name: str
    description: Callable[[], str]
    make: Callable[[Inputs], Runner]
    # None when usable here, else why not (e.g. a missing optional package, no GPU).
    unavailable: Callable[[], Optional[str]] = lambda: None


def new_module(namespace, config: Config, seed: int = 0):
    """A module of fastrnn's API from ``namespace`` (``fastrnn`` or ``fastrnn.reference``)."""
    return make_layer(namespace, config, dtype=np.dtype(config.dtype), seed=seed)


def build_module(namespace, config: Config, params: Dict[str, np.ndarray]):
    """A module of fastrnn's API carrying ``params`` (shared, not copied)."""
    module = new_module(namespace, config)
    if set(module.params) != set(params):
        raise KeyError(f"parameter names differ: {sorted(module.params)} vs {sorted(params)}")
    module.params = dict(params)
    return module


class ModuleRunner(Runner):
    """Runs a module with fastrnn's API: ``y, state = m(x)``, ``m.backward(dy)``."""

    def __init__(self, namespace, inputs: Inputs):
        cfg = inputs.config
        self.x, self.dy = inputs.x, inputs.dy
        # Two instances sharing the weights, so no mode switch happens inside a timed call.
        self.infer = build_module(namespace, cfg, inputs.params).eval()
        self.train = build_module(namespace, cfg, inputs.params).train()

    def forward(self):
        return self.infer(self.x)[0]

    def forward_backward(self) -> None:
        self.train(self.x)
        self.train.backward(self.dy)

    def input_gradient(self) -> np.ndarray:
        self.train(self.x)
        return self.train.backward(self.dy)["input"]


class TorchRunner(Runner):
    """``torch.nn.RNN/LSTM/GRU`` on the CPU with the same weights, input and ``dy`` -- or, with
    ``adapter=True``, their drop-in replacements ``fastrnn.torch.RNN/LSTM/GRU``.

    torch runs with as many threads as fastrnn (``fastrnn.get_num_threads()``), so that neither
    side gets more of the machine; torch.nn is the peer fastrnn exists to beat.
    """

    def __init__(self, inputs: Inputs, adapter: bool = False):
        import torch

        if adapter:
            import fastrnn.torch as namespace
        else:
            namespace = torch.nn
        cfg = inputs.config
        torch.set_num_threads(fastrnn.get_num_threads())
        module = make_layer(namespace, cfg, dtype=getattr(torch, cfg.dtype))
        module.load_state_dict({k: torch.from_numpy(v) for k, v in inputs.params.items()})
        self.torch, self.module = torch, module
        self.x = torch.from_numpy(inputs.x)
        self.x_train = self.x.clone().requires_grad_(True)
        self.dy = torch.from_numpy(inputs.dy)

    def forward(self):
        with self.torch.no_grad():
            return self.module(self.x)[0]

    def forward_backward(self) -> None:
        y, _ = self.module(self.x_train)
        y.backward(self.dy)

    def output(self) -> np.ndarray:
        return self.forward().numpy()

    def input_gradient(self) -> np.ndarray:
        self.x_train.grad = None  # the timed runs accumulate into it
        self.forward_backward()
        return self.x_train.grad.numpy()


def _numpy_description() -> str:
    blas = numpy_blas_name()
    return f"NumPy reference (fastrnn.reference), numpy {np.__version__}" + (
        f", {blas}" if blas else "")


def _torch_unavailable() -> Optional[str]:
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch is not installed (pip install torch)"
    return None


def _torch_description() -> str:
    import torch

    return f"torch.nn on the CPU, torch {torch.__version__}"


def _jax_peers():
    """:mod:`fastrnn.bench.jax_peers`, imported when a JAX peer is asked about (it imports this
    module)."""
    from . import jax_peers
    return jax_peers


PEERS: Dict[str, Peer] = {
    "fastrnn": Peer("fastrnn", lambda: f"fastrnn {fastrnn.__version__} C++ core",
                    lambda inputs: ModuleRunner(fastrnn, inputs)),
    "numpy": Peer("numpy", _numpy_description, lambda inputs: ModuleRunner(reference, inputs)),
    "torch": Peer("torch", _torch_description, TorchRunner, _torch_unavailable),
    "fastrnn.torch": Peer("fastrnn.torch",
                          lambda: "fastrnn.torch modules (torch.nn's drop-in replacements)",
                          lambda inputs: TorchRunner(inputs, adapter=True), _torch_unavailable),
    "jax": Peer("jax", lambda: _jax_peers().flax_description(),
                lambda inputs: _jax_peers().make_flax_runner(inputs),
                lambda: _jax_peers().jax_unavailable()),
    "fastrnn.jax": Peer("fastrnn.jax", lambda: _jax_peers().fastrnn_jax_description(),
                        lambda inputs: _jax_peers().make_fastrnn_jax_runner(inputs),
                        lambda: _jax_peers().fastrnn_jax_unavailable()),
}


def peer_descriptions() -> Dict[str, str]:
    """Every peer's description, or why it cannot run here (the run's metadata)."""
    return {name: peer.unavailable() and f"unavailable: {peer.unavailable()}"
            or peer.description() for name, peer in PEERS.items()}


def make_inputs(config: Config, seed: int = 0) -> Inputs:
    """Weights as fastrnn initialises them (PyTorch's uniform init), standard-normal x and dy."""
    dtype = np.dtype(config.dtype)
    params = new_module(fastrnn, config, seed).params
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((config.T, config.B, config.I)).astype(dtype)
    dy = rng.standard_normal((config.T, config.B, config.directions * config.H)).astype(dtype)
    return Inputs(config, params, x, dy)
