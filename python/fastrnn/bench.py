"""Micro-benchmark of fastrnn against its peers: ``python -m fastrnn.bench``.

For every configuration of a suite and every peer (``fastrnn``: the C++ core; ``numpy``: the NumPy
reference, ``fastrnn.reference``; ``torch``: ``torch.nn.RNN/LSTM/GRU``; ``fastrnn.torch``: their
drop-in replacements -- the last two when torch is importable) it measures

- forward: the module in eval mode (inference: nothing is saved for backward);
- forward+backward: a training-mode forward followed by ``.backward(dy)``,

and prints the median (and keeps the minimum) wall time, GFLOP/s, the fraction of the machine's
floor reached, how many times faster fastrnn is than each peer, and the accuracy of each peer's
forward output and input gradient against the float64 NumPy reference. ``--json PATH`` also
writes every number (each timed run included) with the machine and build it came from,
``--markdown PATH`` a Markdown table for ``bench/RESULTS.md``, ``--plot PATH`` a PNG of the
speed-ups against the batch size (needs matplotlib).

Needs nothing but NumPy. Times are wall clock (``time.perf_counter``) of the Python module call,
what a user pays, with the garbage collector paused; each measurement warms up first, then
repeats until it has ``--repeats`` runs or has spent ``--budget`` seconds (but at least
``--min-repeats`` runs), so slow peers get fewer repeats and a suite's run time stays bounded.

FLOP convention (DESIGN.md section 4): forward ``2*G*H*(I+H)*B*T`` per layer and direction
(G = 1 vanilla, 4 LSTM, 3 GRU; I the layer's input size); forward+backward counts 3x forward.
GFLOP/s = FLOPs / median time.

Bytes convention (the least memory traffic, DESIGN.md section 4): every step re-reads the
recurrent weights ``W_hh`` (G*H*H elements), so forward reads ``T*|W_hh| + |W_ih| + |x| + |y|``
elements per layer and direction (``|W_ih| = G*H*I``, ``|x| = T*B*I``, ``|y| = T*B*H``; biases
and states left out); forward+backward moves twice that (backward re-reads ``W_hh`` every step
too, and moves a gradient as large as each of ``x``, ``y`` and ``W_ih``) plus the gate
activations the forward saved, ``T*B*G*H``.

Floor: ``max(FLOPs / GEMM ceiling, bytes / read bandwidth)``, with both ceilings measured at
start-up with the thread count in use: the GFLOP/s of a large square GEMM in the configuration's
dtype, and the GB/s of reading, again and again, a buffer the size of one ``W_hh`` (rounded to a
power of two), since weights that fit in a cache are re-read from it. A measurement's floor
fraction is floor / median time: 1 means at the floor, above 1 means the floor is wrong.

The pieces are meant to grow: configurations are :class:`Config` values grouped in
:data:`SUITES`; peers are entries of :data:`PEERS` (a name, a description and a function that
builds a :class:`Runner` for a configuration); results are plain dicts, rendered by
:func:`format_header` / :func:`format_rows` and :func:`format_markdown`, written by
:func:`write_json` and :func:`write_plot`.
"""
from __future__ import annotations

import abc
import argparse
import ctypes
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import fastrnn
from fastrnn import _core, reference

JSON_SCHEMA = 2  # 2: ceilings, floors, input-gradient accuracy
MODES = ("rnn_tanh", "rnn_relu", "lstm", "gru")
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
CELL_ALIASES = {"rnn": ("rnn_tanh", "rnn_relu"), "vanilla": ("rnn_tanh", "rnn_relu")}
DTYPES = ("float32", "float64")
FLOP_CONVENTION = ("forward FLOPs = 2*G*H*(I+H)*B*T per layer and direction (G = 1 vanilla, "
                   "4 LSTM, 3 GRU); forward+backward FLOPs = 3 x forward; "
                   "GFLOP/s = FLOPs / median time")
BYTES_CONVENTION = ("forward bytes = T*|W_hh| + |W_ih| + |x| + |y| per layer and direction "
                    "(|W_hh| = G*H*H, |W_ih| = G*H*I, |x| = T*B*I, |y| = T*B*H elements); "
                    "forward+backward bytes = 2 x forward + the saved gates T*B*G*H")
FLOOR_CONVENTION = ("floor = max(FLOPs / GEMM ceiling, bytes / read bandwidth at the size of one "
                    "W_hh); flr% = floor / median time (100%: at the floor)")
BASELINE = "fastrnn"
ENV_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE",
            "OPENBLAS_VERBOSE")


# ---------------------------------------------------------------------------------------------
# Configurations and suites
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """One benchmark problem: a cell and its sizes (time-major input ``(T, B, I)``)."""
    cell: str
    T: int
    B: int
    I: int  # noqa: E741  (the DESIGN's name for the input size)
    H: int
    layers: int = 1
    bidirectional: bool = False
    dtype: str = "float32"

    def __post_init__(self):
        if self.cell not in MODES:
            raise ValueError(f"cell: expected one of {MODES}, got {self.cell!r}")
        for name in ("T", "B", "I", "H", "layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {DTYPES}, got {self.dtype!r}")

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def label(self) -> str:
        s = f"{self.cell} T={self.T} B={self.B} I={self.I} H={self.H}"
        if self.layers != 1:
            s += f" L={self.layers}"
        if self.bidirectional:
            s += " bidir"
        if self.dtype != "float32":
            s += f" {self.dtype}"
        return s

    def _layer_inputs(self) -> List[int]:
        """Each layer's input size: I, then D*H above the first layer."""
        return [self.I] + [self.directions * self.H] * (self.layers - 1)

    def forward_flops(self) -> int:
        """``2*G*H*(I_l+H)*B*T`` summed over layers and directions."""
        g, h, d = GATES[self.cell], self.H, self.directions
        return sum(d * 2 * g * h * (layer_in + h) * self.B * self.T
                   for layer_in in self._layer_inputs())

    def forward_backward_flops(self) -> int:
        return 3 * self.forward_flops()

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    def whh_bytes(self) -> int:
        """One layer and direction's ``W_hh``: what every step re-reads (its working set)."""
        return GATES[self.cell] * self.H * self.H * self.itemsize

    def forward_bytes(self) -> int:
        """``T*|W_hh| + |W_ih| + |x| + |y|`` over layers and directions (BYTES_CONVENTION)."""
        g, h, d, t = GATES[self.cell], self.H, self.directions, self.T
        elements = sum(d * (t * g * h * h + g * h * layer_in + t * self.B * (layer_in + h))
                       for layer_in in self._layer_inputs())
        return elements * self.itemsize

    def forward_backward_bytes(self) -> int:
        """2 x forward, plus the gates the forward saved for the backward."""
        saved = self.layers * self.directions * self.T * self.B * GATES[self.cell] * self.H
        return 2 * self.forward_bytes() + saved * self.itemsize

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["label"] = self.label
        return d


def _cpu_suite_full() -> List[Config]:
    """DESIGN.md section 5, CPU rows (from DeepBench's RNN set), input size = hidden size."""
    out = [Config("lstm", 150, b, 256, 256) for b in (1, 16, 64)]
    out += [Config("lstm", 25, b, h, h) for h in (512, 1024) for b in (1, 16, 64)]
    out += [Config("gru", 187, b, h, h) for h in (512, 1024) for b in (1, 32)]
    out += [Config(cell, 50, b, 1024, 1024) for cell in ("rnn_relu", "rnn_tanh") for b in (16, 64)]
    return out


SUITES: Dict[str, List[Config]] = {
    # The default: one configuration per cell, sized so the whole run (NumPy reference included)
    # stays under a minute on 2 cores.
    "quick": [
        Config("rnn_tanh", 50, 16, 512, 512),
        Config("rnn_relu", 50, 16, 512, 512),
        Config("lstm", 50, 16, 256, 256),
        Config("gru", 50, 16, 256, 256),
    ],
    "full": _cpu_suite_full(),
    # A smoke test of the harness (every cell, stacking, bidirection); not a benchmark.
    "smoke": [
        Config("rnn_tanh", 3, 2, 4, 5),
        Config("rnn_relu", 3, 2, 4, 5),
        Config("lstm", 3, 2, 4, 5, layers=2, bidirectional=True),
        Config("gru", 3, 2, 4, 5),
    ],
}


def parse_config(text: str) -> Config:
    """``lstm:T=3,B=2,I=4,H=5[,layers=2][,bidirectional=1][,dtype=float64]``; I defaults to H."""
    cell, _, rest = text.partition(":")
    cell = cell.strip()
    values: Dict[str, object] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise ValueError(f"--config {text!r}: expected key=value, got {item!r}")
        if key in ("T", "B", "I", "H", "layers"):
            try:
                values[key] = int(value)
            except ValueError:
                raise ValueError(f"--config {text!r}: {key} must be an integer, got {value!r}")
        elif key == "bidirectional":
            if value.lower() not in ("0", "1", "true", "false"):
                raise ValueError(f"--config {text!r}: bidirectional must be 0/1/true/false")
            values[key] = value.lower() in ("1", "true")
        elif key == "dtype":
            values[key] = value
        else:
            raise ValueError(f"--config {text!r}: unknown key {key!r} "
                             "(expected T, B, I, H, layers, bidirectional, dtype)")
    missing = [k for k in ("T", "B", "H") if k not in values]
    if missing:
        raise ValueError(f"--config {text!r}: missing {', '.join(missing)}")
    values.setdefault("I", values["H"])
    return Config(cell, **values)  # type: ignore[arg-type]


def parse_cells(text: str) -> List[str]:
    cells: List[str] = []
    for name in filter(None, (c.strip() for c in text.split(","))):
        if name in CELL_ALIASES:
            cells.extend(CELL_ALIASES[name])
        elif name in MODES:
            cells.append(name)
        else:
            raise ValueError(f"--cells: unknown cell {name!r}; expected some of "
                             f"{', '.join(MODES + tuple(CELL_ALIASES))}")
    return cells


# ---------------------------------------------------------------------------------------------
# Peers
# ---------------------------------------------------------------------------------------------

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


def _new_module(namespace, config: Config, seed: int = 0):
    """A module of fastrnn's API from ``namespace`` (``fastrnn`` or ``fastrnn.reference``)."""
    kwargs = dict(num_layers=config.layers, bidirectional=config.bidirectional,
                  dtype=np.dtype(config.dtype), seed=seed)
    if config.cell in ("rnn_tanh", "rnn_relu"):
        return namespace.RNN(config.I, config.H, nonlinearity=config.cell[4:], **kwargs)
    return getattr(namespace, config.cell.upper())(config.I, config.H, **kwargs)


def _build_module(namespace, config: Config, params: Dict[str, np.ndarray]):
    """A module of fastrnn's API carrying ``params`` (shared, not copied)."""
    module = _new_module(namespace, config)
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
        self.infer = _build_module(namespace, cfg, inputs.params).eval()
        self.train = _build_module(namespace, cfg, inputs.params).train()

    def forward(self):
        return self.infer(self.x)[0]

    def forward_backward(self) -> None:
        self.train(self.x)
        self.train.backward(self.dy)

    def input_gradient(self) -> np.ndarray:
        self.train(self.x)
        return self.train.backward(self.dy)["input"]


def _numpy_description() -> str:
    blas = _numpy_blas_name()
    return f"NumPy reference (fastrnn.reference), numpy {np.__version__}" + (
        f", {blas}" if blas else "")


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
        dtype = {"float32": torch.float32, "float64": torch.float64}[cfg.dtype]
        kwargs = dict(num_layers=cfg.layers, bidirectional=cfg.bidirectional, dtype=dtype)
        if cfg.cell in ("rnn_tanh", "rnn_relu"):
            module = namespace.RNN(cfg.I, cfg.H, nonlinearity=cfg.cell[4:], **kwargs)
        else:
            module = getattr(namespace, cfg.cell.upper())(cfg.I, cfg.H, **kwargs)
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


def _torch_unavailable() -> Optional[str]:
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch is not installed (pip install torch)"
    return None


def _torch_description() -> str:
    import torch

    return f"torch.nn on the CPU, torch {torch.__version__}"


PEERS: Dict[str, Peer] = {
    "fastrnn": Peer("fastrnn", lambda: f"fastrnn {fastrnn.__version__} C++ core",
                    lambda inputs: ModuleRunner(fastrnn, inputs)),
    "numpy": Peer("numpy", _numpy_description, lambda inputs: ModuleRunner(reference, inputs)),
    "torch": Peer("torch", _torch_description, TorchRunner, _torch_unavailable),
    "fastrnn.torch": Peer("fastrnn.torch",
                          lambda: "fastrnn.torch modules (torch.nn's drop-in replacements)",
                          lambda inputs: TorchRunner(inputs, adapter=True), _torch_unavailable),
}
# The pair whose ratio answers "how much faster does my torch model get": printed per configuration.
ADAPTER_PAIR = ("torch", "fastrnn.torch")


def make_inputs(config: Config, seed: int = 0) -> Inputs:
    """Weights as fastrnn initialises them (PyTorch's uniform init), standard-normal x and dy."""
    dtype = np.dtype(config.dtype)
    params = _new_module(fastrnn, config, seed).params
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((config.T, config.B, config.I)).astype(dtype)
    dy = rng.standard_normal((config.T, config.B, config.directions * config.H)).astype(dtype)
    return Inputs(config, params, x, dy)


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

@dataclass
class Settings:
    repeats: int = 50        # most timed runs per measurement
    min_repeats: int = 3     # fewest timed runs, whatever the budget
    warmup: int = 2          # fewest untimed runs before timing (at least one) ...
    warmup_s: float = 0.2    # ... and the least time they take, unless a run is slow (below)
    budget: float = 1.0      # seconds of timed runs per measurement, once min_repeats are done


def measure(fn: Callable[[], object], settings: Settings) -> Dict[str, object]:
    """Warm up, then time ``fn`` until ``settings.repeats`` runs or ``settings.budget`` seconds.

    Warm-up runs ``fn`` at least ``warmup`` times and for at least ``warmup_s`` seconds (long
    enough for the thread pool of a BLAS used just before, by another peer, to stop spinning
    and give the cores back), but stops, even after a single run, once it has used the larger of
    ``warmup_s`` and a quarter of the budget, so that a slow peer is not run needlessly.
    Returns the times in seconds with their median and min.
    """
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        warmups = 0
        while True:
            fn()
            warmups += 1
            elapsed = time.perf_counter() - start
            if elapsed >= max(settings.warmup_s, 0.25 * settings.budget):
                break  # a slow fn: one run (or the few that fit) is warm-up enough
            if warmups >= settings.warmup and elapsed >= settings.warmup_s:
                break
        times: List[float] = []
        start = time.perf_counter()
        while len(times) < settings.repeats:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            spent = time.perf_counter() - start
            if len(times) >= settings.min_repeats and spent >= settings.budget:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    median = statistics.median(times)
    if len(times) >= 2:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    else:
        q1 = q3 = times[0]
    return {"times_s": times, "n": len(times), "warmup": warmups, "median_s": median,
            "min_s": min(times), "q1_s": q1, "q3_s": q3, "spread": (q3 - q1) / median}


BUSY_WARNING = 0.25  # warn when other processes use more than this fraction of the CPUs
NOISY_SPREAD = 0.10  # a measurement whose interquartile range exceeds this fraction of its median


def _add_rates(m: Dict[str, object], flops: int, floor_s: float) -> Dict[str, object]:
    m["gflops"] = flops / m["median_s"] / 1e9
    m["gflops_best"] = flops / m["min_s"] / 1e9
    m["floor_fraction"] = floor_s / m["median_s"]
    return m


def _difference(out: np.ndarray, ref: np.ndarray) -> Dict[str, object]:
    out = np.asarray(out, dtype=np.float64)
    finite = bool(np.isfinite(out).all())
    max_abs = float(np.abs(out - ref).max()) if finite else float("nan")
    scale = max(1.0, float(np.abs(ref).max()))
    return {"max_abs_diff": max_abs, "max_rel_diff": max_abs / scale, "finite": finite}


def _accuracy(runner: Runner, ref: Dict[str, np.ndarray]) -> Dict[str, object]:
    """The output's differences at the top level, the input gradient's under ``grad_input``."""
    return {**_difference(runner.output(), ref["output"]),
            "grad_input": _difference(runner.input_gradient(), ref["grad_input"]),
            "against": "fastrnn.reference in float64, same weights, input and dy",
            "rel_scale": "max(1, max|ref|)"}


def _failed(entry: Dict[str, object]) -> bool:
    """A peer that raised, or produced a non-finite output or input gradient."""
    if "error" in entry:
        return True
    acc = entry.get("accuracy")
    return acc is not None and not (acc["finite"] and acc["grad_input"]["finite"])


def reference_f64(inputs: Inputs) -> Dict[str, np.ndarray]:
    """Output and input gradient of the NumPy reference in float64 on the (upcast) same weights,
    input and ``dy``."""
    cfg64 = dataclasses.replace(inputs.config, dtype="float64")
    params64 = {k: v.astype(np.float64) for k, v in inputs.params.items()}
    module = _build_module(reference, cfg64, params64).train()  # no dropout: output as in eval
    y = module(inputs.x.astype(np.float64))[0]
    return {"output": y, "grad_input": module.backward(inputs.dy.astype(np.float64))["input"]}


def run_config(config: Config, peers: Sequence[str], settings: Settings, ceilings: "Ceilings",
               seed: int = 0, check_accuracy: bool = True) -> Dict[str, object]:
    """Measure every peer on one configuration; a peer that fails records its error."""
    inputs = make_inputs(config, seed)
    flops = {"forward": config.forward_flops(), "forward_backward": config.forward_backward_flops()}
    floor = floor_times(config, ceilings)
    ref = reference_f64(inputs) if check_accuracy else None
    result: Dict[str, object] = {"config": config.to_dict(), "flops": flops, "floor": floor,
                                 "peers": {}}
    for name in peers:
        entry: Dict[str, object] = {}
        try:
            runner = PEERS[name].make(inputs)
            if ref is not None:
                entry["accuracy"] = _accuracy(runner, ref)
            for kind, fn in (("forward", runner.forward),
                             ("forward_backward", runner.forward_backward)):
                entry[kind] = _add_rates(measure(fn, settings), flops[kind], floor[kind]["floor_s"])
        except Exception as exc:  # a benchmark reports a failing peer and goes on
            entry = {"error": f"{type(exc).__name__}: {exc}"}
        result["peers"][name] = entry
    result["speedup"] = _speedups(result["peers"])
    pair = [result["peers"].get(name) for name in ADAPTER_PAIR]
    if all(entry and "error" not in entry for entry in pair):
        result["speedup_torch_adapter"] = {
            kind: pair[0][kind]["median_s"] / pair[1][kind]["median_s"]
            for kind in ("forward", "forward_backward")}
    return result


def _speedups(peers: Dict[str, Dict[str, object]]) -> Dict[str, Dict[str, float]]:
    """Per peer: its median time / fastrnn's (how many times faster fastrnn is)."""
    base = peers.get(BASELINE)
    out: Dict[str, Dict[str, float]] = {}
    if not base or "error" in base:
        return out
    for name, entry in peers.items():
        if name == BASELINE or "error" in entry:
            continue
        out[name] = {kind: entry[kind]["median_s"] / base[kind]["median_s"]
                     for kind in ("forward", "forward_backward")}
    return out


# ---------------------------------------------------------------------------------------------
# Ceilings and floor
# ---------------------------------------------------------------------------------------------

GEMM_N = 2048                # the square GEMM of the GFLOP/s ceiling: large enough to reach peak
GEMM_REPS = 4                # timed GEMMs; the best counts
READ_REPS = 10               # timed reads of each buffer; the best counts
READ_MIN_BYTES = 64 << 10    # smaller buffers are measured at this size (they sit in L1/L2)


def read_probe_bytes(nbytes: int) -> int:
    """The buffer size the bandwidth for a working set of ``nbytes`` is measured at: the nearest
    power of two (so configurations share measurements), at least ``READ_MIN_BYTES``."""
    return max(READ_MIN_BYTES, 1 << round(math.log2(max(nbytes, 1))))


@dataclass
class Ceilings:
    """What the machine can do, measured once per run: GEMM GFLOP/s per dtype and read GB/s per
    buffer size (keyed by :func:`read_probe_bytes`), each with the method that measured it."""
    threads: int
    gemm: Dict[str, Dict[str, object]]
    read: Dict[int, Dict[str, object]]

    def gemm_gflops(self, dtype: str) -> float:
        return self.gemm[dtype]["gflops"]

    def read_gbs(self, nbytes: int) -> float:
        return self.read[read_probe_bytes(nbytes)]["gbs"]

    def to_dict(self) -> Dict[str, object]:
        return {"threads": self.threads, "gemm": self.gemm,
                "read": {str(size): m for size, m in sorted(self.read.items())}}


CEILING_ATTEMPTS = 5         # a ceiling is re-measured until two attempts agree within 3%


def _settled_best(measure: Callable[[], float]) -> Tuple[float, int]:
    """The best of repeated measurements of a ceiling, repeated (at most CEILING_ATTEMPTS times,
    0.2 s apart) until one comes within 3% of the best so far. A ceiling is a maximum: a single
    attempt can be cut short by a transient neighbour (seen: another BLAS copy's threads still
    spinning after the process loaded it, which halved a 2-thread GEMM), never pushed above it."""
    best = measure()
    for attempt in range(2, CEILING_ATTEMPTS + 1):
        time.sleep(0.2)
        value = measure()
        agreed = value >= 0.97 * best
        best = max(best, value)
        if agreed:
            return best, attempt
    return best, CEILING_ATTEMPTS


def _measure_gemm(dtype: str, n: int, reps: int) -> Dict[str, object]:
    """Best GFLOP/s of an n x n x n GEMM through fastrnn's own BLAS, with its threads."""
    gflops, attempts = _settled_best(lambda: _core.measure_gemm_gflops(dtype, n, reps))
    return {"gflops": float(gflops), "n": n, "reps": reps, "attempts": attempts,
            "method": "fastrnn._core.measure_gemm_gflops (fastrnn's BLAS)"}


def _measure_read(nbytes: int, reps: int) -> Dict[str, object]:
    """Best GB/s of fastrnn's threads re-reading a buffer of ``nbytes`` (each its own slice, so
    the slice stays in that core's cache, as a split W_hh does)."""
    gbs, attempts = _settled_best(lambda: _core.measure_read_gbs(nbytes, reps))
    return {"gbs": float(gbs), "reps": reps, "attempts": attempts,
            "method": "fastrnn._core.measure_read_gbs (fastrnn's threads)"}


def _measure_ceilings(configs: Sequence[Config], gemm_n: int = GEMM_N) -> Ceilings:
    """The GEMM ceiling of each dtype that runs and the read bandwidth at each W_hh size, with
    the thread count in use."""
    threads = fastrnn.get_num_threads()
    dtypes = sorted({"float32"} | {c.dtype for c in configs})
    sizes = sorted({read_probe_bytes(c.whh_bytes()) for c in configs})
    return Ceilings(threads=threads,
                    gemm={dt: _measure_gemm(dt, gemm_n, GEMM_REPS) for dt in dtypes},
                    read={size: _measure_read(size, READ_REPS) for size in sizes})


def floor_times(config: Config, ceilings: Ceilings) -> Dict[str, Dict[str, object]]:
    """Per phase: FLOPs and bytes, the time each takes at its ceiling, the larger (the floor)."""
    gflops, gbs = ceilings.gemm_gflops(config.dtype), ceilings.read_gbs(config.whh_bytes())
    out = {}
    for kind, flops, nbytes in (("forward", config.forward_flops(), config.forward_bytes()),
                                ("forward_backward", config.forward_backward_flops(),
                                 config.forward_backward_bytes())):
        compute_s, memory_s = flops / (gflops * 1e9), nbytes / (gbs * 1e9)
        out[kind] = {"flops": flops, "bytes": nbytes, "gemm_gflops": gflops, "read_gbs": gbs,
                     "compute_s": compute_s, "memory_s": memory_s,
                     "floor_s": max(compute_s, memory_s),
                     "bound": "compute" if compute_s >= memory_s else "memory"}
    return out


# ---------------------------------------------------------------------------------------------
# Machine and build description
# ---------------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _loaded_blas_libraries() -> List[Dict[str, object]]:
    """OpenBLAS libraries mapped into this process: path, whose, thread count, core (Linux)."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({parts[-1] for parts in (line.split() for line in f)
                            if len(parts) >= 6 and os.path.isabs(parts[-1])
                            and "openblas" in os.path.basename(parts[-1]).lower()
                            and ".so" in os.path.basename(parts[-1])})
    except OSError:
        return []
    libs = []
    for path in paths:
        owner = ("fastrnn" if "scipy_openblas32" in path
                 else "numpy" if "numpy" in path else "other")
        info: Dict[str, object] = {"path": path, "used_by": owner}
        try:
            lib = ctypes.CDLL(path)  # already loaded: this only returns its handle
        except OSError:
            libs.append(info)
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                threads = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                if threads is None:
                    continue
                threads.restype = ctypes.c_int
                info["threads"] = int(threads())
                core = getattr(lib, f"{prefix}_get_corename{suffix}", None)
                if core is not None:
                    core.restype = ctypes.c_char_p
                    value = core()
                    info["core"] = value.decode() if value else None
                break
            if "threads" in info:
                break
        libs.append(info)
    return libs


def _numpy_blas_name() -> Optional[str]:
    try:
        cfg = np.show_config(mode="dicts")  # numpy >= 1.25
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}".strip()
    except Exception:
        return None


def _threads_summary(libs: List[Dict[str, object]]) -> Dict[str, object]:
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {"cpu_count": os.cpu_count(), "affinity_cpus": affinity,
            "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
            "blas_libraries": libs}


def collect_meta(argv: Sequence[str]) -> Dict[str, object]:
    """Everything a reader needs to know where the numbers come from (``argv``: the options)."""
    info = fastrnn.build_info()
    libs = _loaded_blas_libraries()
    meta = {
        "fastrnn_version": fastrnn.__version__,
        "build_info": info,
        "blas_kernel": _kernel_name(info.get("blas_config", "")),
        "numpy_version": np.__version__,
        "numpy_blas": _numpy_blas_name(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "threads": _threads_summary(libs),
        "loadavg_start": _loadavg(),
        "cpu_busy_start": cpu_busy_by_others(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(argv),
        "peers": {name: PEERS[name].unavailable() and f"unavailable: {PEERS[name].unavailable()}"
                  or PEERS[name].description() for name in PEERS},
    }
    return meta


def _pct(value: Optional[float]) -> str:
    return "unknown" if value is None else f"{value:.0%}"


def _kernel_name(blas_config: str) -> Optional[str]:
    marker = "(kernel:"
    if marker in blas_config:
        return blas_config.split(marker, 1)[1].split(")", 1)[0].strip()
    return None


def cpu_busy_by_others(seconds: float = 0.5) -> Optional[float]:
    """Fraction of all CPUs' time spent busy while this process sleeps ``seconds`` (Linux).

    Unlike the load average, which lags by a minute, this says whether something else runs
    right now and would share the cores with the benchmark.
    """
    def sample():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle
    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return round(1.0 - (idle1 - idle0) / (total1 - total0), 3)


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

_COLUMNS = [  # (title, width, align)
    ("config", 30, "<"), ("peer", 13, "<"), ("fwd ms", 9, ">"), ("GFLOP/s", 8, ">"),
    ("flr%", 7, ">"), ("fwd+bwd ms", 10, ">"), ("GFLOP/s", 8, ">"), ("flr%", 7, ">"),
    ("speedup fwd", 11, ">"), ("speedup f+b", 11, ">"), ("max|y-ref64|", 12, ">"),
    ("max|dx-ref64|", 13, ">"), ("runs", 8, ">"),
]


def _row(cells: Sequence[str]) -> str:
    return "  ".join(f"{c:{a}{w}}" for c, (_, w, a) in zip(cells, _COLUMNS)).rstrip()


def format_header(meta: Dict[str, object], suite: str, configs: Sequence[Config],
                  settings: Settings, peers: Sequence[str]) -> str:
    info = meta["build_info"]
    th = meta["threads"]
    env = th["env"]
    lines = [
        f"fastrnn {meta['fastrnn_version']} benchmark: suite {suite!r}, {len(configs)} config(s), "
        f"peers {', '.join(peers)}",
        f"build     : {info['compiler']}; BLAS {info['blas']}; SIMD {', '.join(info['simd'])}; "
        f"cuda {info['cuda']}",
        f"BLAS      : {info['blas_config']}; parallel jobs on {info['thread_pool']}",
        f"numpy     : {meta['numpy_version']} ({meta['numpy_blas'] or 'BLAS unknown'}); "
        f"python {meta['python']}",
        f"machine   : {meta['cpu_model']} ({meta['machine']}), {th['cpu_count']} CPUs"
        + (f", {th['affinity_cpus']} usable" if th["affinity_cpus"] not in (None, th["cpu_count"])
           else "") + f"; busy before start {_pct(meta['cpu_busy_start'])}, load average "
        f"{meta['loadavg_start']}",
        "threads   : " + (", ".join(f"{k}={v}" for k, v in env.items()
                                    if k != "OPENBLAS_CORETYPE") or "no thread variable set")
        + "".join(f"; {lib['used_by']}'s BLAS ({os.path.basename(str(lib['path']))}): "
                  f"{lib.get('threads', '?')} threads, core {lib.get('core', '?')}"
                  for lib in th["blas_libraries"]),
        "coretype  : " + (f"OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']}"
                          if "OPENBLAS_CORETYPE" in env else "OPENBLAS_CORETYPE unset"),
        "measured  : fwd = eval-mode forward (inference); fwd+bwd = train-mode forward, then "
        ".backward(dy)",
        f"timing    : wall clock of the module call; median of up to {settings.repeats} runs "
        f"(at least {settings.min_repeats}; {settings.budget:g} s budget per measurement) after "
        f"warm-up (>= {settings.warmup} runs and {settings.warmup_s:g} s); runs = fwd/fwd+bwd",
        f"FLOPs     : {FLOP_CONVENTION}",
        f"bytes     : {BYTES_CONVENTION}",
        *(f"{title:10s}: {text}" for title, text in _ceiling_lines(meta["ceilings"])),
        f"floor     : {FLOOR_CONVENTION}",
        "speedup   : peer median time / fastrnn median time (> 1: fastrnn is faster); with both "
        "torch peers, a line per config gives torch.nn time / fastrnn.torch time",
        "accuracy  : max |y - y_ref| and max |dx - dx_ref| of each peer's forward output and "
        "input gradient against the float64 NumPy reference on the same weights, input and dy",
        f"runs      : timed runs fwd/fwd+bwd; '~' marks a noisy measurement (interquartile "
        f"range > {NOISY_SPREAD:.0%} of the median)",
    ]
    busy = meta["cpu_busy_start"]
    if busy is not None and busy > BUSY_WARNING:
        lines.append(f"WARNING   : other processes kept the CPUs {_pct(busy)} busy just before the "
                     "start: times will be slow and noisy")
    lines += ["", _row([t for t, _, _ in _COLUMNS]), _row(["-" * w for _, w, _ in _COLUMNS])]
    return "\n".join(lines)


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"


def _ceiling_lines(ceilings: Dict[str, object]) -> List[tuple]:
    """(title, text) lines describing the measured ceilings (``Ceilings.to_dict()``)."""
    gemm, read = ceilings["gemm"], ceilings["read"]
    first_gemm, first_read = next(iter(gemm.values())), next(iter(read.values()))
    return [
        ("GEMM", ", ".join(f"{dt} {m['gflops']:.1f} GFLOP/s" for dt, m in gemm.items())
         + f" ({first_gemm['n']}^3, best of {first_gemm['reps']}; {first_gemm['method']}); "
           f"{ceilings['threads']} fastrnn threads"),
        ("bandwidth", "read " + ", ".join(f"{_fmt_bytes(int(size))} {m['gbs']:.1f} GB/s"
                                          for size, m in read.items())
         + f" (best of {first_read['reps']}; {first_read['method']})"),
    ]


def _fmt_ms(m) -> str:
    ms = m["median_s"] * 1e3
    digits = 0 if ms >= 1000 else 1 if ms >= 100 else 2 if ms >= 10 else 3 if ms >= 1 else 4
    return f"{ms:.{digits}f}"


def _fmt_x(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.2f}x"


def _noise(m) -> str:
    return "~" if m["spread"] > NOISY_SPREAD else ""


def _fmt_floor(m) -> str:
    """The floor fraction as a percentage, with a couple of digits even when tiny."""
    pct = 100 * m["floor_fraction"]
    return f"{pct:.0f}%" if pct >= 10 else f"{pct:.1f}%" if pct >= 1 else f"{pct:.2g}%"


def _fmt_diff(diff: Optional[Dict[str, object]]) -> str:
    if diff is None:
        return ""
    return f"{diff['max_abs_diff']:.1e}" if diff["finite"] else "NON-FINITE"


def format_rows(result: Dict[str, object]) -> str:
    """The table rows of one configuration: one per peer."""
    label = result["config"]["label"]
    lines = []
    for i, (name, entry) in enumerate(result["peers"].items()):
        first = label if i == 0 else ""
        if "error" in entry:
            lines.append(_row([first, name, "error: " + entry["error"]]))
            continue
        fwd, fb = entry["forward"], entry["forward_backward"]
        speed = result["speedup"].get(name, {})
        acc = entry.get("accuracy")
        lines.append(_row([first, name, _fmt_ms(fwd), f"{fwd['gflops']:.2f}", _fmt_floor(fwd),
                           _fmt_ms(fb), f"{fb['gflops']:.2f}", _fmt_floor(fb),
                           _fmt_x(speed.get("forward")), _fmt_x(speed.get("forward_backward")),
                           _fmt_diff(acc), _fmt_diff(acc and acc["grad_input"]),
                           f"{fwd['n']}{_noise(fwd)}/{fb['n']}{_noise(fb)}"]))
    adapter = result.get("speedup_torch_adapter")
    if adapter:
        lines.append(_row(["", f"  torch.nn.{_TORCH_CLASS[result['config']['cell']]} time / "
                               f"fastrnn.torch's: fwd {_fmt_x(adapter['forward'])}, "
                               f"fwd+bwd {_fmt_x(adapter['forward_backward'])}"]))
    return "\n".join(lines)


_TORCH_CLASS = {"rnn_tanh": "RNN", "rnn_relu": "RNN", "lstm": "LSTM", "gru": "GRU"}


def _md_table(rows: List[List[str]], right_from: int) -> List[str]:
    """A Markdown table; columns from ``right_from`` on are right-aligned (numbers)."""
    align = ["---" if i < right_from else "---:" for i in range(len(rows[0]))]
    return ["| " + " | ".join(r) + " |" for r in [rows[0], align] + rows[1:]]


def format_markdown(meta: Dict[str, object], settings: Settings, suite: str,
                    results: List[Dict[str, object]]) -> str:
    """A header naming where the numbers come from, then one table row per configuration:
    fastrnn's times, each peer's ratio, fastrnn's GFLOP/s, floor fraction and accuracy."""
    info, th = meta["build_info"], meta["threads"]
    others = [name for name in dict.fromkeys(n for r in results for n in r["peers"])
              if name != BASELINE]
    adapter = any("speedup_torch_adapter" in r for r in results)
    lines = [
        f"### fastrnn {meta['fastrnn_version']}, suite {suite!r}, {meta['date_utc']}",
        "",
        f"- command: `{shlex.join(['python', '-m', 'fastrnn.bench', *meta['argv']])}`",
        f"- machine: {meta['cpu_model']} ({meta['machine']}), {th['cpu_count']} CPUs; "
        f"{meta['platform']}; CPUs busy before start {_pct(meta['cpu_busy_start'])}",
        f"- fastrnn: {info['compiler']}, SIMD {info.get('simd_active', '?')}; BLAS "
        f"{info['blas_config']}" + ("" if meta["blas_kernel"] else ", kernel unknown")
        + f"; parallel jobs on {info['thread_pool']}; {meta['ceilings']['threads']} threads",
        f"- numpy: {meta['numpy_version']} ({meta['numpy_blas'] or 'BLAS unknown'}); "
        f"python {meta['python']}",
        *(f"- peer {name}: {meta['peers'][name]}" for name in others),
        *(f"- {title} ceiling: {text}" for title, text in _ceiling_lines(meta["ceilings"])),
        f"- FLOPs: {FLOP_CONVENTION}",
        f"- bytes: {BYTES_CONVENTION}",
        f"- floor: {FLOOR_CONVENTION}",
        f"- timing: median of up to {settings.repeats} runs (at least {settings.min_repeats}; "
        f"{settings.budget:g} s budget per measurement) after warm-up; fwd = eval-mode forward, "
        "fwd+bwd = train-mode forward then .backward(dy)",
        "- vs X: X's median time / fastrnn's (> 1: fastrnn is faster)"
        + ("; torch.nn / fastrnn.torch: torch.nn's time / fastrnn.torch's" if adapter else ""),
        "- accuracy: fastrnn's max |y - y_ref| (output) and max |dx - dx_ref| (input gradient) "
        "against the float64 NumPy reference on the same weights, input and dy",
        "",
    ]
    header = ["config", "fwd ms", "fwd+bwd ms"]
    header += [f"vs {name} {phase}" for name in others for phase in ("fwd", "fwd+bwd")]
    header += [f"torch.nn / fastrnn.torch {p}" for p in ("fwd", "fwd+bwd")] if adapter else []
    header += ["GFLOP/s fwd", "GFLOP/s fwd+bwd", "floor fwd", "floor fwd+bwd",
               "max abs err y", "max abs err dx"]
    rows = [header]
    for r in results:
        row = [r["config"]["label"]]
        base = r["peers"].get(BASELINE, {"error": "not run"})
        if "error" in base:
            rows.append(row + ["error"] * (len(header) - 1))
            continue
        row += [_fmt_ms(base[k]) for k in ("forward", "forward_backward")]
        for name in others:
            ratio = r["speedup"].get(name)
            row += [_fmt_x(ratio[k]) if ratio else "error" if name in r["peers"] else ""
                    for k in ("forward", "forward_backward")]
        if adapter:
            ratio = r.get("speedup_torch_adapter")
            row += [_fmt_x(ratio[k]) if ratio else "" for k in ("forward", "forward_backward")]
        row += [f"{base[k]['gflops']:.3g}" for k in ("forward", "forward_backward")]
        row += [_fmt_floor(base[k]) for k in ("forward", "forward_backward")]
        acc = base.get("accuracy")
        row += [_fmt_diff(acc), _fmt_diff(acc and acc["grad_input"])]
        rows.append(row)
    return "\n".join(lines + _md_table(rows, right_from=1)) + "\n"


# label, line style, marker face (hollow markers tell the phases apart where a line has 1 point)
_PHASES = {"forward": ("fwd", "-", None), "forward_backward": ("fwd+bwd", "--", "none")}
_PLOT_CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


def _import_pyplot():
    """matplotlib's pyplot on a file-only backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _series_name(label: str) -> str:
    """A configuration label without its cell and batch size: what a line of the plot keeps."""
    return " ".join(w for w in label.split()[1:] if not w.startswith("B="))


def write_plot(path: str, results: List[Dict[str, object]], plt) -> None:
    """Speed-up (peer time / fastrnn time) against the batch size: a panel per cell, a line per
    peer, phase and the rest of the configuration (H, T, ...)."""
    series: Dict[tuple, List[tuple]] = {}
    for r in results:
        cfg = r["config"]
        for name, ratio in r["speedup"].items():
            for phase in _PHASES:
                key = (cfg["cell"], name, phase, _series_name(cfg["label"]))
                series.setdefault(key, []).append((cfg["B"], ratio[phase]))
    cells = [c for c in _PLOT_CELLS if any(r["config"]["cell"] == c for r in results)]
    peers = list(dict.fromkeys(key[1] for key in series))
    shapes = list(dict.fromkeys(key[3] for key in series))
    ncols = min(2, len(cells))
    fig, axes = plt.subplots((len(cells) + 1) // 2, ncols, squeeze=False,
                             figsize=(6.5 * ncols, 4.5 * ((len(cells) + 1) // 2)))
    for ax, cell in zip(axes.flat, cells):
        for (c, name, phase, shape), points in series.items():
            if c != cell:
                continue
            bs, ratios = zip(*sorted(points))
            label, style, face = _PHASES[phase]
            ax.plot(bs, ratios, style, color=f"C{peers.index(name)}",
                    marker="osD^v<>p*h"[shapes.index(shape) % 10], markerfacecolor=face,
                    label=f"vs {name}, {label}, {shape}")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        batches = sorted({r["config"]["B"] for r in results if r["config"]["cell"] == cell})
        ax.set_xticks(batches, [str(b) for b in batches])  # the measured sizes, not 10^k
        ax.set_xticks([], minor=True)
        ax.set_title(cell)
        ax.set_xlabel("batch size B")
        ax.set_yscale("log")  # a ratio: 2x and 0.5x equally far from 1
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(plt.LogFormatter(labelOnlyBase=False))  # 0.5, 2, 3 rather than 5x10^-1 ...
        ax.set_ylabel("peer time / fastrnn time")
        ax.legend(fontsize="x-small")
    for ax in list(axes.flat)[len(cells):]:
        ax.set_visible(False)
    fig.tight_layout()
    _write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _write_atomically(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` then rename onto ``path`` (its directory created), so a half-written file
    never sits at ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def write_json(path: str, meta: Dict[str, object], settings: Settings, suite: str,
               results: List[Dict[str, object]]) -> None:
    doc = {"schema": JSON_SCHEMA, "meta": meta, "suite": suite,
           "settings": dataclasses.asdict(settings), "flop_convention": FLOP_CONVENTION,
           "bytes_convention": BYTES_CONVENTION, "floor_convention": FLOOR_CONVENTION,
           "speedup_convention": "peer median time / fastrnn median time",
           "results": results}

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1, allow_nan=False, default=_json_default)
            f.write("\n")
    _write_atomically(path, write)


def write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    _write_atomically(path, write)


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _json_safe(value):
    """NaN/inf become None (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastrnn.bench",
        description="Time fastrnn against its peers (forward, forward+backward), per cell.",
        epilog=FLOP_CONVENTION + ". " + FLOOR_CONVENTION + ". Peers: " + ", ".join(PEERS) + ".")
    p.add_argument("--suite", default="quick", choices=sorted(SUITES),
                   help="configurations to run (default: quick, under a minute on 2 cores; "
                        "full: DESIGN.md section 5 CPU rows, takes long; smoke: tiny sizes)")
    p.add_argument("--config", action="append", metavar="SPEC", type=_arg(parse_config),
                   help="run this configuration instead of a suite (repeatable), e.g. "
                        "'lstm:T=50,B=16,H=256' or 'gru:T=3,B=2,I=4,H=5,layers=2,bidirectional=1'")
    p.add_argument("--cells", type=_arg(parse_cells), metavar="LIST",
                   help="only these cells, comma-separated: rnn_tanh, rnn_relu, lstm, gru "
                        "(rnn = both vanilla cells)")
    p.add_argument("--dtype", choices=DTYPES, help="override the configurations' dtype")
    p.add_argument("--peers", type=_arg(_parse_peers), metavar="LIST",
                   help="comma-separated peers to run (default, whatever the suite: all "
                        f"available of {', '.join(PEERS)}; the torch ones need torch)")
    p.add_argument("--repeats", type=int, default=Settings.repeats,
                   help="most timed runs per measurement (default %(default)s)")
    p.add_argument("--min-repeats", type=int, default=Settings.min_repeats,
                   help="fewest timed runs per measurement (default %(default)s)")
    p.add_argument("--warmup", type=int, default=Settings.warmup,
                   help="untimed warm-up runs per measurement, at least 1 (default %(default)s)")
    p.add_argument("--warmup-s", type=float, default=Settings.warmup_s,
                   help="least seconds of warm-up per measurement (default %(default)s)")
    p.add_argument("--budget", type=float, default=Settings.budget,
                   help="seconds of timed runs per measurement once --min-repeats are done "
                        "(default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, input and dy")
    p.add_argument("--no-accuracy", action="store_true",
                   help="skip the accuracy check against the float64 reference")
    p.add_argument("--gemm-n", type=int, default=GEMM_N, metavar="N",
                   help="size of the square GEMM that measures the GFLOP/s ceiling "
                        "(default %(default)s)")
    p.add_argument("--json", metavar="PATH", help="also write all numbers to this JSON file")
    p.add_argument("--markdown", metavar="PATH",
                   help="also write a Markdown table of the results (for bench/RESULTS.md)")
    p.add_argument("--plot", metavar="PATH",
                   help="also plot the speed-ups against the batch size to this PNG file "
                        "(needs matplotlib)")
    p.add_argument("--list", action="store_true", help="list the configurations and exit")
    return p


def _arg(parse):
    def wrapped(text):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc))
    wrapped.__name__ = parse.__name__
    return wrapped


def _parse_peers(text: str) -> List[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown or not names:
        raise ValueError(f"--peers: unknown {unknown}; expected some of {', '.join(PEERS)}")
    return list(dict.fromkeys(names))


def select_configs(args) -> List[Config]:
    configs = list(args.config) if args.config else list(SUITES[args.suite])
    if args.cells:
        configs = [c for c in configs if c.cell in args.cells]
    if args.dtype:
        configs = [dataclasses.replace(c, dtype=args.dtype) for c in configs]
    return configs


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.repeats < 1 or args.min_repeats < 1 or args.warmup < 0 or args.budget < 0
            or args.warmup_s < 0 or args.gemm_n < 1):
        parser.error("--repeats, --min-repeats and --gemm-n must be >= 1; --warmup, --warmup-s "
                     "and --budget >= 0")
    plt = _import_pyplot() if args.plot else None
    if args.plot and plt is None:  # before anything runs, not after a long suite
        parser.error("--plot needs matplotlib, which is not installed: pip install matplotlib")
    settings = Settings(repeats=args.repeats, min_repeats=min(args.min_repeats, args.repeats),
                        warmup=args.warmup, warmup_s=args.warmup_s, budget=args.budget)
    configs = select_configs(args)
    suite = "custom" if args.config else args.suite
    if not configs:
        parser.error("no configuration left to run (check --cells)")
    if args.list:
        for c in configs:
            print(f"{c.label:40s} forward {c.forward_flops() / 1e6:10.1f} MFLOP "
                  f"{c.forward_bytes() / 1e6:8.2f} MB")
        return 0

    requested = args.peers or list(PEERS)
    peers = []
    for name in requested:
        why = PEERS[name].unavailable()
        if why is None:
            peers.append(name)
        else:
            print(f"peer {name} skipped: {why}", file=sys.stderr)
    if not peers:
        parser.error("no peer available")
    if "fastrnn.torch" in peers:
        # Before any measurement: importing it moves the BLAS jobs onto torch's thread pool
        # (fastrnn.torch docs), so every peer runs on the same pool throughout the run.
        import fastrnn.torch  # noqa: F401

    meta = collect_meta(argv)
    ceilings = _measure_ceilings(configs, args.gemm_n)  # after the busy-CPU sample: it spins
    meta["ceilings"] = ceilings.to_dict()
    print(format_header(meta, suite, configs, settings, peers), flush=True)
    start = time.perf_counter()
    results = []
    for config in configs:
        result = run_config(config, peers, settings, ceilings, seed=args.seed,
                            check_accuracy=not args.no_accuracy)
        results.append(_json_safe(result))
        print(format_rows(result), flush=True)
    meta["wall_s"] = round(time.perf_counter() - start, 3)
    meta["loadavg_end"] = _loadavg()
    time.sleep(0.3)  # let this process's BLAS thread pools stop spinning before sampling
    meta["cpu_busy_end"] = cpu_busy_by_others()
    failed = [f"{r['config']['label']} / {name}" for r in results
              for name, e in r["peers"].items() if _failed(e)]
    print(f"\n{len(configs)} config(s) in {meta['wall_s']:.1f} s; CPUs busy with other "
          f"processes just after the end: {_pct(meta['cpu_busy_end'])}")
    if meta["cpu_busy_end"] is not None and meta["cpu_busy_end"] > BUSY_WARNING:
        print("WARNING: other processes were running at the end: times may be slow and noisy")
    if args.json:
        write_json(args.json, meta, settings, suite, results)
        print(f"wrote {args.json}")
    if args.markdown:
        write_text(args.markdown, format_markdown(meta, settings, suite, results))
        print(f"wrote {args.markdown}")
    if args.plot:
        write_plot(args.plot, results, plt)
        print(f"wrote {args.plot}")
    if failed:
        print("FAILED (error, or non-finite output or input gradient): " + "; ".join(failed),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
