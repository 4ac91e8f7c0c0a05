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

``--device cuda`` (see the "GPU mode" section below) times ``fastrnn.torch`` modules against
``torch.nn`` (cuDNN) with the same weights on one GPU instead, each row in float32 (TF32 off for
both) and bfloat16: suites ``gpu`` (DESIGN.md section 5 GPU rows, batch 1-8 latency rows,
packed-input rows) and ``gpu-quick``; CUDA-event times; floors from the HBM bandwidth and GEMM
peaks measured at start-up; accuracy against torch.nn in float64; a Markdown table and the
issue's targets (``TARGET_RULE``). Without a usable GPU it exits with code 2 and one line why.

The pieces are meant to grow: configurations are :class:`Config` values grouped in
:data:`SUITES`; peers are entries of :data:`PEERS` (a name, a description and a function that
builds a :class:`Runner` for a configuration); results are plain dicts, rendered by
:func:`format_header` / :func:`format_rows` and :func:`format_markdown`, written by
:func:`write_json` and :func:`write_plot`.
"""
from __future__ import annotations

import abc
import argparse
import contextlib
import ctypes
import dataclasses
import datetime
import gc
import importlib
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
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
    return _summary(times, warmups)


def _summary(times: List[float], warmups: int) -> Dict[str, object]:
    """The statistics every measurement reports: median, minimum, quartiles, spread."""
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
# GPU mode (--device cuda): fastrnn.torch against torch.nn (cuDNN) on one CUDA device
# ---------------------------------------------------------------------------------------------
# Each row runs a fastrnn.torch module and a torch.nn module with the same weights on the same
# device and dtype: forward (under torch.no_grad()) and forward+backward (y, _ = m(x);
# y.backward(dy)), timed with CUDA events. The floor of a row uses the FLOP and byte conventions
# above (Config) with the row's element size, the HBM bandwidth of a large device-to-device copy
# and the GEMM peak of a large torch.matmul in the row's dtype, both measured at start-up.

GPU_JSON_SCHEMA = 1
GPU_DTYPES = ("float32", "bfloat16", "float16")
GPU_DEFAULT_DTYPES = ("float32", "bfloat16")
_GPU_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}
_GPU_DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}  # fastrnn.cuda's dtype codes
_CELL_CODES = {cell: code for code, cell in enumerate(MODES)}  # rnn_tanh 0 .. gru 3
_ALGO_NAMES = {0: "standard", 1: "persistent"}
GPU_SETTINGS = Settings(repeats=30, min_repeats=5, warmup=3, warmup_s=0.05, budget=0.25)
GPU_GEMM_N = 8192            # the square torch.matmul of the GEMM peak
GPU_GEMM_REPS = 10
GPU_COPY_BYTES = 1 << 30     # the device-to-device copy of the bandwidth ceiling (read + write)
GPU_COPY_REPS = 20
GPU_ROTATE_BYTES = 64 << 20  # input sets (x and dy) up to this size rotate 4 ways, larger 2 ways
# Relative max-norm error against torch.nn in float64 beyond which a row is flagged (not failed).
GPU_TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}
TARGET_TRAINING = 1.0        # fwd+bwd: cuDNN time / fastrnn time on every row
TARGET_NO_PERSISTENT = 2.0   # where cuDNN has no persistent kernel, at batch <= 16
TARGET_NO_PERSISTENT_MAX_B = 16
TARGET_RULE = ("fwd+bwd ratio >= 1.0 on every row; ratio >= 2.0 (fwd and fwd+bwd, each checked) "
               "at B <= 16 where cuDNN has no persistent kernel: GRU, float32 or packed input "
               "(torch only picks cuDNN's persistent algorithm for unpacked float16)")
GPU_FLOOR_CONVENTION = (
    "floor = max(FLOPs / GEMM peak of the row's dtype, bytes / HBM bandwidth), both measured "
    "at start-up on this device (torch.matmul n^3, float32 with TF32 off; device-to-device "
    "copy, bytes read + written); floor% = floor / median time (above 100%: the bytes came from "
    "L2, not HBM); FLOPs and bytes as above with the row's element size; packed rows count "
    "sum(lengths) rows instead of T*B (W_hh is still re-read T = max length times)")
GPU_ACCURACY_CONVENTION = (
    "relative max-norm error max|a - b| / max|b| (a NaN or inf anywhere: NON-FINITE): fastrnn's "
    "forward output against torch.nn's, and both implementations' output y, training output, "
    "input gradient dx and dW_hh (layer 0) against torch.nn in float64 on the same (rounded) "
    "weights, input and dy")


@dataclass(frozen=True)
class GpuRow:
    """One GPU benchmark row: the sizes (a float32 :class:`Config`: the FLOP and element counts),
    the dtype it runs in, whether the input is a PackedSequence of varied lengths, its group."""
    config: Config
    dtype: str = "float32"
    packed: bool = False
    group: str = "custom"

    def __post_init__(self):
        if self.dtype not in GPU_DTYPES:
            raise ValueError(f"dtype: expected one of {GPU_DTYPES}, got {self.dtype!r}")
        if self.config.dtype != "float32":
            raise ValueError("config: expected a float32 Config (its sizes only)")

    @property
    def label(self) -> str:
        return f"{self.config.label} {self.dtype}" + (" packed" if self.packed else "")

    def to_dict(self) -> Dict[str, object]:
        d = {k: v for k, v in self.config.to_dict().items() if k not in ("dtype", "label")}
        d.update(dtype=self.dtype, packed=self.packed, group=self.group, label=self.label)
        return d


def _gpu_suite_full() -> List[GpuRow]:
    """DESIGN.md section 5 GPU rows, then batch 1-8 latency rows, then packed-input rows."""
    out = [GpuRow(c, group="deepbench") for c in _cpu_suite_full()]
    out += [GpuRow(Config("lstm", 50, b, h, h), group="deepbench")
            for h in (1536, 2048, 4096) for b in (8, 32, 128)]
    out += [GpuRow(Config(cell, 100, b, h, h), group="latency")
            for cell in ("lstm", "gru") for h in (512, 1024) for b in (1, 2, 4, 8)]
    out += [GpuRow(Config(cell, 100, b, 512, 512), packed=True, group="packed")
            for cell in ("gru", "lstm") for b in (8, 16)]
    return out


# Shapes only: each runs once per dtype of --dtypes.
GPU_SUITES: Dict[str, List[GpuRow]] = {
    "gpu": _gpu_suite_full(),
    "gpu-quick": [
        GpuRow(Config("lstm", 25, 64, 1024, 1024), group="deepbench"),
        GpuRow(Config("gru", 187, 1, 512, 512), group="deepbench"),
        GpuRow(Config("lstm", 100, 4, 512, 512), group="latency"),
        GpuRow(Config("gru", 100, 8, 512, 512), packed=True, group="packed"),
        GpuRow(Config("lstm", 50, 32, 2048, 2048), group="deepbench"),
    ],
}


def _parse_gpu_dtypes(text: str) -> List[str]:
    return _parse_names(text, "--dtypes", GPU_DTYPES)


def select_gpu_rows(args) -> List[GpuRow]:
    """The rows of --config, or of the suite (a CPU suite's configurations become GPU rows),
    filtered by --cells, each in every dtype of --dtypes (adjacent)."""
    if args.config:
        shapes = [GpuRow(dataclasses.replace(c, dtype="float32")) for c in args.config]
    elif args.suite in GPU_SUITES:
        shapes = list(GPU_SUITES[args.suite])
    else:
        shapes = [GpuRow(dataclasses.replace(c, dtype="float32"), group=args.suite)
                  for c in SUITES[args.suite]]
    if args.cells:
        shapes = [r for r in shapes if r.config.cell in args.cells]
    return [dataclasses.replace(r, dtype=dt) for r in shapes for dt in args.dtypes]


def packed_lengths(T: int, B: int, seed: int = 0) -> List[int]:
    """Varied sequence lengths of a packed row, from T/4 to T (the first is T), fixed by seed."""
    rng = np.random.default_rng(seed + 7)
    lengths = rng.integers(max(1, T // 4), T + 1, size=B)
    lengths[0] = T
    return [int(v) for v in lengths]


def gpu_counts(row: GpuRow, rows: Optional[int] = None) -> Dict[str, Dict[str, int]]:
    """FLOPs and bytes of a row's forward and forward+backward by the conventions above, with
    ``rows`` (sum of lengths of a packed row; default T*B) sequence steps of work."""
    cfg, item = row.config, _GPU_ITEMSIZE[row.dtype]
    full = cfg.T * cfg.B
    rows = full if rows is None else rows
    if rows == full:  # Config's own counts, at the row's element size
        fwd_flops = cfg.forward_flops()
        fwd_bytes = cfg.forward_bytes() // cfg.itemsize * item
        fb_bytes = cfg.forward_backward_bytes() // cfg.itemsize * item
    else:  # the same conventions with ``rows`` in place of T*B (W_hh still re-read T times)
        g, h, d = GATES[cfg.cell], cfg.H, cfg.directions
        fwd_flops = sum(d * 2 * g * h * (i + h) * rows for i in cfg._layer_inputs())
        elements = sum(d * (cfg.T * g * h * h + g * h * i + rows * (i + h))
                       for i in cfg._layer_inputs())
        fwd_bytes = elements * item
        fb_bytes = 2 * fwd_bytes + cfg.layers * d * rows * g * h * item
    return {"forward": {"flops": fwd_flops, "bytes": fwd_bytes},
            "forward_backward": {"flops": 3 * fwd_flops, "bytes": fb_bytes}}


def gpu_floor_times(counts: Dict[str, Dict[str, int]], ceilings: Dict[str, object],
                    dtype: str) -> Dict[str, Dict[str, object]]:
    """Per phase: the time at the GEMM peak, at the HBM bandwidth, and the larger (the floor)."""
    tflops = ceilings["gemm"][dtype]["tflops"]
    gbs = ceilings["hbm"]["gbs"]
    out = {}
    for kind, c in counts.items():
        compute_s, memory_s = c["flops"] / (tflops * 1e12), c["bytes"] / (gbs * 1e9)
        out[kind] = {**c, "gemm_tflops": tflops, "hbm_gbs": gbs, "compute_s": compute_s,
                     "memory_s": memory_s, "floor_s": max(compute_s, memory_s),
                     "bound": "compute" if compute_s >= memory_s else "memory"}
    return out


def gpu_unavailable_reason() -> Optional[str]:
    """None when the GPU mode can run here, else one line saying why not."""
    try:
        import torch
    except ImportError:
        return "torch is not installed (the GPU mode times fastrnn.torch against torch.nn)"
    reasons = []
    if not torch.cuda.is_available():
        build = (f"built for CUDA {torch.version.cuda}" if torch.version.cuda
                 else "a CPU-only build")
        reasons.append(f"torch.cuda.is_available() is False (torch {torch.__version__}, {build})")
    try:
        from fastrnn import cuda as fastrnn_cuda
    except ImportError:
        reasons.append("this fastrnn has no fastrnn.cuda module (a build from before the CUDA "
                       "backend)")
    else:
        why = fastrnn_cuda.unavailable_reason()
        if why is not None:
            reasons.append(f"fastrnn.cuda: {why}")
    if not reasons and not torch.backends.cudnn.is_available():
        reasons.append("torch has no cuDNN (torch.backends.cudnn.is_available() is False)")
    return "; ".join(reasons) or None


@contextlib.contextmanager
def _tf32_off():
    """TF32 off for torch's float32 matrix products and cuDNN (fastrnn follows the former)."""
    import torch
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32 = False
    cudnn.allow_tf32 = False
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


def _tf32_state() -> Dict[str, bool]:
    import torch
    return {"matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn": bool(torch.backends.cudnn.allow_tf32)}


def _event_times_ms(fn: Callable[[], object], reps: int, warmup: int) -> List[float]:
    """Back-to-back CUDA-event times (ms) of ``fn`` after ``warmup`` runs (a ceiling's probe)."""
    import torch
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def measure_gpu_ceilings(dtypes: Sequence[str], gemm_n: int = GPU_GEMM_N,
                         copy_bytes: int = GPU_COPY_BYTES) -> Dict[str, object]:
    """HBM bandwidth (a device-to-device copy of ``copy_bytes``: bytes read + written over the
    best time) and the GEMM peak of each dtype (torch.matmul of two random n x n matrices; TF32
    off for float32), on random data, once per run."""
    import torch
    device = torch.device("cuda", torch.cuda.current_device())
    gen = torch.Generator(device=device).manual_seed(12345)
    times = _copy_times_ms(device, gen, copy_bytes)
    moved = 2 * (copy_bytes // 4) * 4
    hbm = {"gbs": moved / (min(times) / 1e3) / 1e9,
           "gbs_median": moved / (statistics.median(times) / 1e3) / 1e9,
           "bytes_moved": moved, "reps": GPU_COPY_REPS,
           "method": f"torch copy_ of {_fmt_bytes(copy_bytes)} float32 device to device, "
                     "bytes read + written over the best of the CUDA-event times"}
    gemm = {}
    for dtype in sorted(set(dtypes) | {"float32"}, key=GPU_DTYPES.index):
        with _tf32_off() if dtype == "float32" else contextlib.nullcontext():
            times = _matmul_times_ms(device, gen, getattr(torch, dtype), gemm_n)
            tf32 = _tf32_state()["matmul"]
        flops = 2 * gemm_n ** 3
        gemm[dtype] = {"tflops": flops / (min(times) / 1e3) / 1e12,
                       "tflops_median": flops / (statistics.median(times) / 1e3) / 1e12,
                       "n": gemm_n, "reps": GPU_GEMM_REPS, "tf32": tf32,
                       "method": "torch.matmul, best of the CUDA-event times"}
    torch.cuda.empty_cache()
    return {"hbm": hbm, "gemm": gemm}


def _copy_times_ms(device, gen, copy_bytes: int) -> List[float]:
    import torch
    src = torch.randn(copy_bytes // 4, generator=gen, device=device)
    dst = torch.empty_like(src)
    return _event_times_ms(lambda: dst.copy_(src), GPU_COPY_REPS, warmup=3)


def _matmul_times_ms(device, gen, dtype, n: int) -> List[float]:
    import torch
    a = torch.randn(n, n, generator=gen, device=device).to(dtype)
    b = torch.randn(n, n, generator=gen, device=device).to(dtype)
    c = torch.empty_like(a)
    return _event_times_ms(lambda: torch.matmul(a, b, out=c), GPU_GEMM_REPS, warmup=3)


def measure_cuda(run: Callable[[int], object], settings: Settings,
                 prepare: Optional[Callable[[int], object]] = None) -> Dict[str, object]:
    """Time ``run(k)`` (k counts the runs: it picks the input set) with CUDA events.

    Every run starts on an idle GPU (synchronize, then record the start event), so host-side
    launch overhead counts as it does for one call; ``prepare(k)`` runs before, untimed (zeroing
    gradients). Warm-up as :func:`measure`: at least ``warmup`` runs and ``warmup_s`` seconds,
    stopping early after ``max(warmup_s, budget / 4)``. Then up to ``repeats`` timed runs, at
    least ``min_repeats``, stopping once ``budget`` seconds have passed. Same keys as
    :func:`measure`.
    """
    import torch
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        k = 0
        start = time.perf_counter()
        warmups = 0
        while True:
            if prepare is not None:
                prepare(k)
            run(k)
            torch.cuda.synchronize()
            k += 1
            warmups += 1
            elapsed = time.perf_counter() - start
            if elapsed >= max(settings.warmup_s, 0.25 * settings.budget):
                break
            if warmups >= settings.warmup and elapsed >= settings.warmup_s:
                break
        events = []
        start = time.perf_counter()
        while len(events) < settings.repeats:
            if prepare is not None:
                prepare(k)
            torch.cuda.synchronize()
            begin, end = (torch.cuda.Event(enable_timing=True),
                          torch.cuda.Event(enable_timing=True))
            begin.record()
            run(k)
            end.record()
            events.append((begin, end))
            k += 1
            if (len(events) >= settings.min_repeats
                    and time.perf_counter() - start >= settings.budget):
                break
        torch.cuda.synchronize()
    finally:
        if gc_was_enabled:
            gc.enable()
    times = [begin.elapsed_time(end) / 1e3 for begin, end in events]
    return _summary(times, warmups)


class _GpuInputs:
    """Random input sets of one row on the device (rotated among runs, so no run finds its
    input in L2 from the run before): x (T, B, I) -- a PackedSequence for a packed row --, the
    leaf tensor its gradient lands in, and dy, all in the row's dtype."""

    def __init__(self, row: GpuRow, lengths: Optional[List[int]], seed: int, device):
        import torch
        from torch.nn.utils.rnn import pack_padded_sequence
        cfg = row.config
        dtype = getattr(torch, row.dtype)
        gen = torch.Generator(device=device).manual_seed(seed + 1)
        set_bytes = (cfg.T * cfg.B * (cfg.I + cfg.directions * cfg.H)
                     * _GPU_ITEMSIZE[row.dtype])
        self.n = 4 if set_bytes <= GPU_ROTATE_BYTES else 2
        self.xs, self.leaves, self.dys = [], [], []
        for _ in range(self.n):
            x = torch.randn(cfg.T, cfg.B, cfg.I, generator=gen, device=device).to(dtype)
            if lengths is None:
                leaf = x.requires_grad_(True)
                xin = leaf
            else:
                packed = pack_padded_sequence(x, torch.tensor(lengths, dtype=torch.int64),
                                              enforce_sorted=False)
                leaf = packed.data.detach().requires_grad_(True)
                xin = _packed_like(packed, leaf)
            rows = leaf.shape[0] if lengths is not None else None
            dy_shape = ((rows, cfg.directions * cfg.H) if lengths is not None
                        else (cfg.T, cfg.B, cfg.directions * cfg.H))
            dy = torch.randn(dy_shape, generator=gen, device=device).to(dtype)
            self.xs.append(xin)
            self.leaves.append(leaf)
            self.dys.append(dy)

    def first_as(self, dtype):
        """Input set 0 converted to ``dtype`` (the float64 reference's copy): x, leaf, dy."""
        leaf = self.leaves[0].detach().to(dtype).requires_grad_(True)
        x0 = self.xs[0]
        xin = leaf if x0 is self.leaves[0] else _packed_like(x0, leaf)
        return xin, leaf, self.dys[0].to(dtype)


def _packed_like(packed, data):
    """A PackedSequence with ``packed``'s batch sizes and order around ``data``."""
    from torch.nn.utils.rnn import PackedSequence
    return PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                          packed.unsorted_indices)


def _gpu_module(namespace, cfg: Config, device, dtype, **extra):
    """``namespace.RNN/LSTM/GRU`` (torch.nn or fastrnn.torch) of ``cfg`` on ``device``."""
    kwargs = dict(num_layers=cfg.layers, bidirectional=cfg.bidirectional, device=device,
                  dtype=dtype, **extra)
    if cfg.cell in ("rnn_tanh", "rnn_relu"):
        module = namespace.RNN(cfg.I, cfg.H, nonlinearity=cfg.cell[4:], **kwargs)
    else:
        module = getattr(namespace, cfg.cell.upper())(cfg.I, cfg.H, **kwargs)
    return module.to(device=device, dtype=dtype)


def _output_tensor(out):
    """The tensor of a module's output (a PackedSequence's data)."""
    return out.data if hasattr(out, "batch_sizes") else out


def _check_outputs(module, x, leaf, dy) -> Dict[str, object]:
    """One inference forward (y), one training forward (y_train) and its backward (dx, dW_hh of
    layer 0), detached copies; ``graph``: the names of the autograd nodes near the output."""
    import torch
    with torch.no_grad():
        y = _output_tensor(module(x)[0]).clone()
    module.zero_grad(set_to_none=True)
    leaf.grad = None
    out = _output_tensor(module(x)[0])
    graph = _autograd_node_names(out)
    out.backward(dy)
    return {"y": y, "y_train": out.detach().clone(), "dx": leaf.grad.detach().clone(),
            "dw_hh": module.weight_hh_l0.grad.detach().clone(), "graph": graph}


def _autograd_node_names(tensor, limit: int = 64) -> set:
    """Names of the first ``limit`` autograd nodes behind ``tensor`` (CudnnRnnBackward0 where
    cuDNN ran the layer; fastrnn's own function where fastrnn did)."""
    names, seen, stack = set(), set(), [tensor.grad_fn]
    while stack and len(seen) < limit:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def _rel_err(a, b) -> float:
    """max|a - b| / max|b| in float64; NaN when ``a`` is not all finite."""
    import torch
    a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
    if not bool(torch.isfinite(a).all()):
        return float("nan")
    scale = float(b.abs().max())
    diff = float((a - b).abs().max())
    return diff / scale if scale > 0 else diff


# Autograd nodes of torch's own recurrent kernels: cuDNN's, and the fused cells of its native
# CUDA path (in a fastrnn.torch module's graph they mean it ran torch.nn's implementation).
_TORCH_RNN_NODES = ("CudnnRnn", "MiopenRnn", "ThnnFused")


def _fastrnn_fallbacks(ftorch, fn) -> List[str]:
    """The FallbackWarnings of fastrnn.torch while ``fn`` runs (its warn-once memory cleared
    first, so every row is checked): what makes a module run torch.nn instead of fastrnn."""
    warned, lock = getattr(ftorch, "_warned", None), getattr(ftorch, "_warned_lock", None)
    if warned is not None and lock is not None:
        with lock:
            warned.clear()
    category = getattr(ftorch, "FallbackWarning", RuntimeWarning)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", category)
        fn()
    return [str(w.message) for w in caught if issubclass(w.category, category)]


def _plan_algo(row: GpuRow, algo: str, device_index: int, training: bool) -> Tuple[str, str]:
    """The algo fastrnn's CUDA backend picks for layer 0 of the row (fastrnn.cuda.plan), and
    why it is unknown when plan fails ("" otherwise)."""
    from fastrnn import cuda as fastrnn_cuda
    cfg = row.config
    try:
        code = fastrnn_cuda.plan(_CELL_CODES[cfg.cell], _GPU_DTYPE_CODES[row.dtype], cfg.T, cfg.B,
                                 cfg.I, cfg.H, 0, algo, device_index, training).algo
    except Exception as exc:
        return "unknown", f"{type(exc).__name__}: {exc}"
    return _ALGO_NAMES.get(int(code), str(code)), ""


def _gpu_accuracy(checks: Dict[str, Dict[str, object]], dtype: str) -> Dict[str, object]:
    """Errors of fastrnn against cuDNN and of both against the float64 reference, and a flag."""
    names = ("y", "y_train", "dx", "dw_hh")
    acc: Dict[str, object] = {"tolerance": GPU_TOLERANCE[dtype], "finite": {}}
    for impl in ("fastrnn", "cudnn"):
        if impl in checks:
            acc["finite"][impl] = all(bool(checks[impl][n].isfinite().all()) for n in names)
    if "fastrnn" in checks and "cudnn" in checks:
        acc["fastrnn_vs_cudnn"] = {n: _rel_err(checks["fastrnn"][n], checks["cudnn"][n])
                                   for n in names}
    ref = checks.get("float64")
    if ref is not None:
        for impl in ("fastrnn", "cudnn"):
            if impl in checks:
                acc[f"{impl}_vs_f64"] = {n: _rel_err(checks[impl][n], ref[n]) for n in names}
    flags = []
    for impl, name in (("fastrnn", "fastrnn"), ("cudnn", "torch.nn")):
        if acc["finite"].get(impl) is False:
            flags.append(f"NON-FINITE {name} output or gradient")
    mine, theirs = acc.get("fastrnn_vs_f64"), acc.get("cudnn_vs_f64")
    if mine and acc["finite"].get("fastrnn"):
        worst = max(mine, key=lambda n: mine[n])
        # Beyond the dtype's tolerance and clearly worse than torch.nn on the same problem.
        if mine[worst] > GPU_TOLERANCE[dtype] and not (
                theirs and math.isfinite(theirs[worst]) and mine[worst] <= 2 * theirs[worst]):
            flags.append(f"fastrnn {worst} error {mine[worst]:.1e} > {GPU_TOLERANCE[dtype]:g}")
    acc["flags"] = flags
    return acc


def _row_targets(row: GpuRow, ratio: Dict[str, float]) -> Dict[str, object]:
    cfg = row.config
    applies = cfg.B <= TARGET_NO_PERSISTENT_MAX_B and (
        cfg.cell == "gru" or row.dtype == "float32" or row.packed)
    fb = ratio.get("forward_backward")
    out: Dict[str, object] = {"training_1x": {"required": TARGET_TRAINING, "ratio": fb,
                                              "met": fb is not None and fb >= TARGET_TRAINING}}
    out["no_persistent_2x"] = {"applies": applies, "required": TARGET_NO_PERSISTENT}
    if applies:
        for kind in ("forward", "forward_backward"):
            r = ratio.get(kind)
            out["no_persistent_2x"][kind] = {"ratio": r,
                                             "met": r is not None and r >= TARGET_NO_PERSISTENT}
    return out


def run_gpu_row(row: GpuRow, settings: Settings, ceilings: Dict[str, object], seed: int = 0,
                algo: str = "auto", check_accuracy: bool = True,
                device=None) -> Dict[str, object]:
    """Check, then time one row on both implementations; failures are recorded, not raised.
    ``device``: torch's current CUDA device unless given (tests pass the CPU)."""
    import torch
    cfg = row.config
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device())
    device = torch.device(device)
    device_index = device.index or 0
    lengths = packed_lengths(cfg.T, cfg.B, seed) if row.packed else None
    rows = sum(lengths) if lengths is not None else cfg.T * cfg.B
    counts = gpu_counts(row, rows)
    result: Dict[str, object] = {
        "row": row.to_dict(), "lengths": lengths, "rows": rows,
        "floor": gpu_floor_times(counts, ceilings, row.dtype),
        "algo": {"requested": algo},
    }
    for kind, training in (("forward", False), ("forward_backward", True)):
        name, why = _plan_algo(row, algo, device_index, training)
        result["algo"][kind] = name
        if why:
            result["algo"][f"{kind}_error"] = why
    entries: Dict[str, Dict[str, object]] = {"fastrnn": {}, "cudnn": {}}
    result["fastrnn"], result["cudnn"] = entries["fastrnn"], entries["cudnn"]
    with _tf32_off() if row.dtype == "float32" else contextlib.nullcontext():
        result["tf32"] = _tf32_state()
        _check_and_time(row, settings, result, entries, lengths, device, seed, algo,
                        check_accuracy)
    torch.cuda.empty_cache()  # what the row allocated went with _check_and_time's frame
    ratio = {}
    if "error" not in result and all("error" not in e for e in entries.values()):
        ratio = {kind: entries["cudnn"][kind]["median_s"] / entries["fastrnn"][kind]["median_s"]
                 for kind in ("forward", "forward_backward")}
    result["ratio"] = ratio
    result["targets"] = _row_targets(row, ratio)
    return result


def _check_and_time(row: GpuRow, settings: Settings, result: Dict[str, object],
                    entries: Dict[str, Dict[str, object]], lengths: Optional[List[int]], device,
                    seed: int, algo: str, check_accuracy: bool) -> None:
    """The device work of :func:`run_gpu_row`, filling ``result`` and ``entries``."""
    import torch
    import fastrnn.torch as ftorch
    cfg = row.config
    try:
        tdt = getattr(torch, row.dtype)
        torch.manual_seed(seed)
        modules = {"fastrnn": _gpu_module(ftorch, cfg, device, tdt, algo=algo)}
        modules["fastrnn"].algo = algo
        peer = _gpu_module(torch.nn, cfg, device, tdt)
        peer.load_state_dict(modules["fastrnn"].state_dict())
        peer.flatten_parameters()
        modules["cudnn"] = peer
        data = _GpuInputs(row, lengths, seed, device)
    except Exception as exc:
        result["error"] = f"setup: {type(exc).__name__}: {exc}"
        return
    result["input_sets"] = data.n
    x0, leaf0, dy0 = data.xs[0], data.leaves[0], data.dys[0]

    # Which path each side takes, and the accuracy check (inputs of set 0, once).
    checks: Dict[str, Dict[str, object]] = {}
    # Both run even without the accuracy check: the path checks need one call of each kind.
    for name, module in modules.items():
        try:
            if name == "fastrnn":
                outputs: Dict[str, object] = {}
                fell_back = _fastrnn_fallbacks(ftorch, lambda: outputs.update(
                    _check_outputs(module, x0, leaf0, dy0)))
                torch_nodes = sorted(n for n in outputs["graph"]
                                     if any(k in n for k in _TORCH_RNN_NODES))
                if torch_nodes:
                    fell_back.append("torch's autograd nodes " + ", ".join(torch_nodes))
                if fell_back:
                    raise RuntimeError("fastrnn.torch ran torch.nn's implementation, not "
                                       "fastrnn's kernels: " + "; ".join(fell_back))
            else:
                outputs = _check_outputs(module, x0, leaf0, dy0)
                cudnn = any("CudnnRnn" in n for n in outputs["graph"])
                result["torch_nn_path"] = "cudnn" if cudnn else "native (not cuDNN)"
            if check_accuracy:
                checks[name] = outputs
        except Exception as exc:
            entries[name]["error"] = f"{type(exc).__name__}: {exc}"
    if check_accuracy and checks:
        try:
            ref = _gpu_module(torch.nn, cfg, device, torch.float64)
            ref.load_state_dict({k: v.to(torch.float64)
                                 for k, v in modules["fastrnn"].state_dict().items()})
            checks["float64"] = _check_outputs(ref, *data.first_as(torch.float64))
            del ref
        except Exception as exc:
            result["reference_error"] = f"{type(exc).__name__}: {exc}"
        result["accuracy"] = _gpu_accuracy(checks, row.dtype)
        checks.clear()

    # Timing: forward for both, then forward+backward for both.
    n = data.n
    for kind in ("forward", "forward_backward"):
        for name, module in modules.items():
            entry = entries[name]
            if "error" in entry:
                continue
            if kind == "forward":
                def run(k, module=module):
                    with torch.no_grad():
                        module(data.xs[k % n])
                prepare = None
            else:
                def run(k, module=module):
                    _output_tensor(module(data.xs[k % n])[0]).backward(data.dys[k % n])

                def prepare(k, module=module):
                    module.zero_grad(set_to_none=True)
                    data.leaves[k % n].grad = None
            try:
                m = measure_cuda(run, settings, prepare)
            except Exception as exc:
                entry.clear()
                entry["error"] = f"{kind}: {type(exc).__name__}: {exc}"
                continue
            floor = result["floor"][kind]
            m["tflops"] = floor["flops"] / m["median_s"] / 1e12
            m["floor_fraction"] = floor["floor_s"] / m["median_s"]
            entry[kind] = m


def _gpu_row_failed(r: Dict[str, object]) -> Optional[str]:
    """Why a row counts as failed (an error on either side, or a non-finite result), or None."""
    if "error" in r:
        return r["error"]
    for name in ("fastrnn", "cudnn"):
        if "error" in r[name]:
            return f"{'torch.nn' if name == 'cudnn' else name}: {r[name]['error']}"
    flags = [f for f in (r.get("accuracy") or {}).get("flags", []) if f.startswith("NON-FINITE")]
    return "; ".join(flags) or None


def collect_gpu_meta(argv: Sequence[str]) -> Dict[str, object]:
    import torch
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    device = {"index": index, "name": props.name, "capability": f"{props.major}.{props.minor}",
              "multiprocessors": props.multi_processor_count,
              "memory_bytes": props.total_memory,
              "l2_bytes": getattr(props, "L2_cache_size", None)}
    return {
        "fastrnn_version": fastrnn.__version__,
        "build_info": fastrnn.build_info(),
        "device": device,
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version(),
        "cudnn_enabled": bool(torch.backends.cudnn.enabled),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(argv),
        "tf32": "off for both sides on float32 rows (torch.backends.cuda.matmul.allow_tf32 = "
                "torch.backends.cudnn.allow_tf32 = False): true float32 arithmetic",
    }


def _gpu_timing_text(settings: Settings) -> str:
    return (f"CUDA events around each call, each started on an idle GPU (synchronize first: "
            f"host launch overhead counts); warm-up >= {settings.warmup} runs and "
            f">= {settings.warmup_s:g} s; median of up to {settings.repeats} runs (at least "
            f"{settings.min_repeats}; {settings.budget:g} s budget); inputs rotate among 4 random "
            f"sets (2 when large); fwd = module(x) under torch.no_grad(); fwd+bwd = y, _ = "
            f"module(x); y.backward(dy), gradients set to None before each run, untimed")


def format_gpu_header(meta: Dict[str, object], suite: str, rows: Sequence[GpuRow],
                      settings: Settings, algo: str) -> List[Tuple[str, str]]:
    """(title, text) pairs: 'title: text' lines on stdout, Markdown bullets in --markdown."""
    d, info, ceil = meta["device"], meta["build_info"], meta["ceilings"]
    cuda_keys = {k: v for k, v in info.items() if k.startswith("cuda") or k == "cublas"}
    return [
        ("device", f"{d['name']} (sm_{d['capability'].replace('.', '')}, {d['multiprocessors']} "
                   f"SMs, {d['memory_bytes'] / 2**30:.0f} GiB), cuda:{d['index']}"),
        ("software", f"torch {meta['torch_version']} (CUDA {meta['torch_cuda']}), cuDNN "
                     f"{meta['cudnn_version']}, fastrnn {meta['fastrnn_version']} "
                     + ", ".join(f"{k}={v}" for k, v in cuda_keys.items())),
        ("run", f"suite {suite!r}, {len(rows)} row(s); fastrnn.torch algo={algo!r} (column "
                f"algo: what fastrnn.cuda.plan picks for layer 0, fwd/fwd+bwd)"),
        ("peer", "cuDNN = torch.nn.RNN/LSTM/GRU on the same device and dtype with the same "
                 "weights (state_dict copied); notes say where torch.nn did not run cuDNN"),
        ("TF32", meta["tf32"]),
        ("HBM", f"{ceil['hbm']['gbs']:.0f} GB/s ({ceil['hbm']['method']})"),
        ("GEMM peak", ", ".join(f"{dt} {m['tflops']:.4g} TFLOP/s" for dt, m in
                                ceil["gemm"].items())
         + f" (torch.matmul {next(iter(ceil['gemm'].values()))['n']}^3, best of "
           f"{GPU_GEMM_REPS}; float32 with TF32 off)"),
        ("FLOPs", FLOP_CONVENTION),
        ("bytes", BYTES_CONVENTION),
        ("floor", GPU_FLOOR_CONVENTION),
        ("timing", _gpu_timing_text(settings)),
        ("ratio", "cuDNN median time / fastrnn median time (> 1: fastrnn is faster)"),
        ("accuracy", GPU_ACCURACY_CONVENTION),
        ("targets", TARGET_RULE),
    ]


def _fmt_err(value: Optional[float]) -> str:
    """A relative error; None is how JSON-safe results carry a NaN (a non-finite result)."""
    return "NON-FINITE" if value is None or not math.isfinite(value) else f"{value:.1e}"


def _fmt_errs(errs: Optional[Dict[str, float]]) -> str:
    return "" if not errs else "/".join(_fmt_err(errs[n]) for n in ("y", "dx", "dw_hh"))


def _gpu_table(results: List[Dict[str, object]]) -> List[str]:
    header = ["cell", "H", "B", "T", "dtype", "packed", "algo", "fastrnn fwd ms", "cuDNN fwd ms",
              "fwd ratio", "fastrnn f+b ms", "cuDNN f+b ms", "f+b ratio", "floor% fwd",
              "floor% f+b", "err y vs cuDNN", "err vs f64 fastrnn y/dx/dW",
              "err vs f64 cuDNN y/dx/dW", "targets", "notes"]
    table = [header]
    for r in results:
        row = r["row"]
        algo = r.get("algo") or {}
        fwd_algo, fb_algo = algo.get("forward", ""), algo.get("forward_backward", "")
        algo_text = fwd_algo if fwd_algo == fb_algo else f"{fwd_algo}/{fb_algo}"
        cells = [row["cell"], str(row["H"]), str(row["B"]), str(row["T"]), row["dtype"],
                 "yes" if row["packed"] else "", algo_text]
        fr, cu, ratio = r.get("fastrnn", {}), r.get("cudnn", {}), r.get("ratio", {})
        for kind in ("forward", "forward_backward"):
            for entry in (fr, cu):
                m = entry.get(kind)
                cells.append(_fmt_ms(m) + _noise(m) if m else "error" if "error" in entry else "")
            cells.append(_fmt_x(ratio.get(kind)))
        for kind in ("forward", "forward_backward"):
            m = fr.get(kind)
            cells.append(f"{_fmt_floor(m)} {r['floor'][kind]['bound'][:3]}" if m else "")
        acc = r.get("accuracy") or {}
        vs = acc.get("fastrnn_vs_cudnn")
        cells += [_fmt_err(vs["y"]) if vs else "", _fmt_errs(acc.get("fastrnn_vs_f64")),
                  _fmt_errs(acc.get("cudnn_vs_f64"))]
        t = r.get("targets") or {}
        missed = []
        if ratio:
            if not t["training_1x"]["met"]:
                missed.append("f+b<1x")
            two = t["no_persistent_2x"]
            if two["applies"]:
                missed += [f"{k}<2x" for k, label in (("fwd", "forward"),
                                                      ("f+b", "forward_backward"))
                           if not two[label]["met"]]
        cells.append(("MISS " + ", ".join(missed)) if missed else "ok" if ratio else "")
        notes = list(acc.get("flags", []))
        failed = _gpu_row_failed(r)
        if failed and failed not in notes:
            notes.append(failed)
        if r.get("torch_nn_path", "cudnn") != "cudnn":
            notes.append(f"torch.nn path: {r.get('torch_nn_path')}")
        if r.get("reference_error"):
            notes.append(f"float64 reference failed: {r['reference_error']}")
        cells.append("; ".join(n.replace("|", "/") for n in notes))
        table.append(cells)
    return _md_table(table, right_from=1)


def gpu_targets_summary(results: List[Dict[str, object]]) -> Dict[str, object]:
    measured = [r for r in results if r.get("ratio")]
    training = [r for r in measured if not r["targets"]["training_1x"]["met"]]
    two = [r for r in measured if r["targets"]["no_persistent_2x"]["applies"]]
    summary: Dict[str, object] = {
        "rule": TARGET_RULE, "rows_measured": len(measured), "rows_total": len(results),
        "training_1x": {"met": len(measured) - len(training), "of": len(measured),
                        "missed": [r["row"]["label"] for r in training]},
        "no_persistent_2x": {"of": len(two)}}
    for kind in ("forward", "forward_backward"):
        missed = [r for r in two if not r["targets"]["no_persistent_2x"][kind]["met"]]
        summary["no_persistent_2x"][kind] = {"met": len(two) - len(missed),
                                             "missed": [r["row"]["label"] for r in missed]}
    return summary


def _gpu_summary_lines(summary: Dict[str, object]) -> List[str]:
    t1, t2 = summary["training_1x"], summary["no_persistent_2x"]
    lines = [f"target fwd+bwd >= {TARGET_TRAINING:g}x cuDNN: {t1['met']}/{t1['of']} rows met"
             + (f"; missed: {', '.join(t1['missed'])}" if t1["missed"] else "")]
    for kind, label in (("forward", "fwd"), ("forward_backward", "fwd+bwd")):
        k = t2[kind]
        lines.append(f"target {label} >= {TARGET_NO_PERSISTENT:g}x cuDNN at B <= "
                     f"{TARGET_NO_PERSISTENT_MAX_B} without a cuDNN persistent kernel: "
                     f"{k['met']}/{t2['of']} rows met"
                     + (f"; missed: {', '.join(k['missed'])}" if k["missed"] else ""))
    if summary["rows_measured"] < summary["rows_total"]:
        lines.append(f"{summary['rows_total'] - summary['rows_measured']} row(s) not measured "
                     "on both sides (errors): not counted above")
    return lines


def write_gpu_json(path: str, meta: Dict[str, object], settings: Settings, suite: str,
                   results: List[Dict[str, object]], complete: bool) -> None:
    doc = {"schema": GPU_JSON_SCHEMA, "mode": "cuda", "complete": complete, "suite": suite,
           "meta": meta, "settings": dataclasses.asdict(settings),
           "conventions": {"flops": FLOP_CONVENTION, "bytes": BYTES_CONVENTION,
                           "floor": GPU_FLOOR_CONVENTION, "timing": _gpu_timing_text(settings),
                           "ratio": "cuDNN median time / fastrnn median time",
                           "accuracy": GPU_ACCURACY_CONVENTION, "targets": TARGET_RULE},
           "results": results, "targets": gpu_targets_summary(results),
           "failed": [f"{r['row']['label']}: {why}" for r in results
                      for why in [_gpu_row_failed(r)] if why]}

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(_json_safe(doc), f, indent=1, allow_nan=False, default=_json_default)
            f.write("\n")
    _write_atomically(path, write)


def gpu_main(args, parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    """``--device cuda``: check and time every row, print a Markdown table and the targets."""
    cpu_only = [name for name, value in (("--peers", args.peers), ("--plot", args.plot),
                                         ("--dtype", args.dtype)) if value]
    if cpu_only:
        parser.error(f"{', '.join(cpu_only)}: not with --device cuda (the peers are fastrnn.torch "
                     "and torch.nn; dtypes go in --dtypes)")
    settings = _timing_settings(parser, args, GPU_SETTINGS, GPU_GEMM_N, "gpu")
    args.dtypes = args.dtypes or list(GPU_DEFAULT_DTYPES)
    args.algo = args.algo or "auto"
    rows = select_gpu_rows(args)
    suite = "custom" if args.config else args.suite
    if not rows:
        parser.error("no row left to run (check --cells)")
    if args.list:
        for r in rows:
            lengths = packed_lengths(r.config.T, r.config.B, args.seed) if r.packed else None
            c = gpu_counts(r, sum(lengths) if lengths else None)["forward"]
            print(f"{r.label:52s} {r.group:9s} forward {c['flops'] / 1e9:10.2f} GFLOP "
                  f"{c['bytes'] / 1e6:9.2f} MB")
        return 0
    why = gpu_unavailable_reason()
    if why is not None:
        print(f"python -m fastrnn.bench: error: --device cuda: no usable GPU here: {why}",
              file=sys.stderr)
        return 2

    import torch
    importlib.import_module("fastrnn.torch")  # before any measurement, as in the CPU mode

    meta = collect_gpu_meta(argv)
    print("measuring the HBM bandwidth and GEMM peaks ...", file=sys.stderr, flush=True)
    meta["ceilings"] = measure_gpu_ceilings(args.dtypes, args.gemm_n)
    header = format_gpu_header(meta, suite, rows, settings, args.algo)
    print(f"fastrnn {meta['fastrnn_version']} GPU benchmark against torch.nn (cuDNN)")
    print("\n".join(f"{title:9s}: {text}" for title, text in header), flush=True)
    start = time.perf_counter()
    results: List[Dict[str, object]] = []
    for i, row in enumerate(rows, 1):
        t0 = time.perf_counter()
        try:
            result = run_gpu_row(row, settings, meta["ceilings"], seed=args.seed, algo=args.algo,
                                 check_accuracy=not args.no_accuracy)
        except Exception as exc:  # e.g. a sticky CUDA error: record it, the later rows fail too
            result = {"row": row.to_dict(), "error": f"{type(exc).__name__}: {exc}",
                      "fastrnn": {}, "cudnn": {}, "ratio": {}}
        result = _json_safe(result)
        results.append(result)
        print(_gpu_progress(i, len(rows), result, time.perf_counter() - t0), file=sys.stderr,
              flush=True)
        flags = [f for f in (result.get("accuracy") or {}).get("flags", [])
                 if f.startswith("NON-FINITE")]
        if flags:
            print(f"!!! {row.label}: {'; '.join(flags)} !!!", file=sys.stderr, flush=True)
        if args.json:  # after every row, so a run cut short still leaves its rows
            write_gpu_json(args.json, meta, settings, suite, results, complete=False)
    meta["wall_s"] = round(time.perf_counter() - start, 3)
    try:
        meta["torch_max_memory_bytes"] = torch.cuda.max_memory_allocated()
    except Exception:  # the context may be gone after a CUDA error; the table still prints
        meta["torch_max_memory_bytes"] = None
    summary = gpu_targets_summary(results)
    table = _gpu_table(results)
    lines = [""] + table + [""] + _gpu_summary_lines(summary)
    failed = [f"{r['row']['label']}: {why}" for r in results
              for why in [_gpu_row_failed(r)] if why]
    flagged = [f"{r['row']['label']}: {f}" for r in results
               for f in (r.get("accuracy") or {}).get("flags", []) if not f.startswith("NON")]
    if flagged:
        lines.append("ACCURACY WARNING: " + "; ".join(flagged))
    lines.append(f"{len(rows)} row(s) in {meta['wall_s']:.1f} s")
    print("\n".join(lines), flush=True)
    if args.json:
        write_gpu_json(args.json, meta, settings, suite, results, complete=True)
        print(f"wrote {args.json}")
    if args.markdown:
        md = [f"### fastrnn {meta['fastrnn_version']} on {meta['device']['name']}, suite "
              f"{suite!r}, {meta['date_utc']}", "",
              f"- command: `{shlex.join(['python', '-m', 'fastrnn.bench', *meta['argv']])}`",
              *(f"- {title}: {text}" for title, text in header)]
        write_text(args.markdown, "\n".join(md + lines[:-1]) + "\n")
        print(f"wrote {args.markdown}")
    if failed:
        print("FAILED (error, or non-finite output or gradient): " + "; ".join(failed),
              file=sys.stderr)
        return 1
    return 0


def _gpu_progress(i: int, n: int, r: Dict[str, object], seconds: float) -> str:
    head = f"[{i:>{len(str(n))}}/{n}] {r['row']['label']} ({seconds:.1f} s)"
    failed = _gpu_row_failed(r)
    if failed and not r.get("ratio"):
        return f"{head}: FAILED {failed}"
    algo, ratio, fr, cu = r["algo"], r["ratio"], r["fastrnn"], r["cudnn"]
    parts = [f"algo {algo['forward']}/{algo['forward_backward']}"]
    for kind, label in (("forward", "fwd"), ("forward_backward", "f+b")):
        parts.append(f"{label} {fr[kind]['median_s'] * 1e3:.3f} ms vs cuDNN "
                     f"{cu[kind]['median_s'] * 1e3:.3f} ({ratio[kind]:.2f}x)")
    vs = (r.get("accuracy") or {}).get("fastrnn_vs_cudnn")
    if vs:
        parts.append(f"err y {_fmt_err(vs['y'])}")
    return f"{head}: " + "; ".join(parts) + (f"; {failed}" if failed else "")


def _timing_settings(parser, args, defaults: Settings, gemm_n: int, suite: str) -> Settings:
    """The run's timing settings: options left unset take the mode's defaults (the CPU's are
    Settings()'s), then the whole is checked."""
    for field in ("repeats", "min_repeats", "warmup", "warmup_s", "budget"):
        if getattr(args, field) is None:
            setattr(args, field, getattr(defaults, field))
    if args.gemm_n is None:
        args.gemm_n = gemm_n
    if args.suite is None:
        args.suite = suite
    if (args.repeats < 1 or args.min_repeats < 1 or args.warmup < 0 or args.budget < 0
            or args.warmup_s < 0 or args.gemm_n < 1):
        parser.error("--repeats, --min-repeats and --gemm-n must be >= 1; --warmup, --warmup-s "
                     "and --budget >= 0")
    return Settings(repeats=args.repeats, min_repeats=min(args.min_repeats, args.repeats),
                    warmup=args.warmup, warmup_s=args.warmup_s, budget=args.budget)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastrnn.bench",
        description="Time fastrnn against its peers (forward, forward+backward), per cell.",
        epilog=FLOP_CONVENTION + ". " + FLOOR_CONVENTION + ". Peers: " + ", ".join(PEERS) + ".")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="cpu (default): the C++ core against its CPU peers; cuda: fastrnn.torch "
                        "modules against torch.nn on the GPU (cuDNN), float32 and bfloat16 (needs "
                        "a GPU, torch with CUDA and fastrnn's CUDA backend)")
    p.add_argument("--suite", choices=sorted(SUITES) + sorted(GPU_SUITES),
                   help="configurations to run (default: quick, under a minute on 2 cores; "
                        "full: DESIGN.md section 5 CPU rows, takes long; smoke: tiny sizes; "
                        "with --device cuda: gpu (its default), the GPU rows of DESIGN.md "
                        "section 5 plus batch 1-8 latency and packed-input rows, or gpu-quick, "
                        "a few of them)")
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
    cpu, gpu = Settings(), GPU_SETTINGS
    p.add_argument("--repeats", type=int,
                   help=f"most timed runs per measurement (default {cpu.repeats}; "
                        f"{gpu.repeats} with --device cuda)")
    p.add_argument("--min-repeats", type=int,
                   help=f"fewest timed runs per measurement (default {cpu.min_repeats}; "
                        f"{gpu.min_repeats} with --device cuda)")
    p.add_argument("--warmup", type=int,
                   help=f"untimed warm-up runs per measurement, at least 1 (default {cpu.warmup}; "
                        f"{gpu.warmup} with --device cuda)")
    p.add_argument("--warmup-s", type=float,
                   help=f"least seconds of warm-up per measurement (default {cpu.warmup_s}; "
                        f"{gpu.warmup_s} with --device cuda)")
    p.add_argument("--budget", type=float,
                   help="seconds of timed runs per measurement once --min-repeats are done "
                        f"(default {cpu.budget}; {gpu.budget} with --device cuda)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, input and dy")
    p.add_argument("--no-accuracy", action="store_true",
                   help="skip the accuracy check against the float64 reference")
    p.add_argument("--gemm-n", type=int, metavar="N",
                   help="size of the square GEMM that measures the GFLOP/s ceiling "
                        f"(default {GEMM_N}; {GPU_GEMM_N} with --device cuda)")
    p.add_argument("--dtypes", type=_arg(_parse_gpu_dtypes), metavar="LIST",
                   help="--device cuda only: dtypes to run each row in, comma-separated "
                        f"(default {','.join(GPU_DEFAULT_DTYPES)}; also float16)")
    p.add_argument("--algo", choices=("auto", "standard", "persistent"),
                   help="--device cuda only: the algo of the fastrnn.torch modules "
                        "(default auto)")
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


def _parse_names(text: str, option: str, allowed: Sequence[str]) -> List[str]:
    """A comma-separated list of some of `allowed`, in order, without repeats."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise ValueError(f"{option}: unknown {unknown}; expected some of {', '.join(allowed)}")
    return list(dict.fromkeys(names))


def _parse_peers(text: str) -> List[str]:
    return _parse_names(text, "--peers", PEERS)


def select_configs(args) -> List[Config]:
    configs = list(args.config) if args.config else list(SUITES[args.suite or "quick"])
    if args.cells:
        configs = [c for c in configs if c.cell in args.cells]
    if args.dtype:
        configs = [dataclasses.replace(c, dtype=args.dtype) for c in configs]
    return configs


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == "cuda":
        return gpu_main(args, parser, argv)
    gpu_only = [name for name, value in (("--dtypes", args.dtypes), ("--algo", args.algo))
                if value is not None]
    if gpu_only:
        parser.error(f"{', '.join(gpu_only)}: only with --device cuda")
    if args.suite in GPU_SUITES:
        parser.error(f"--suite {args.suite}: only with --device cuda")
    settings = _timing_settings(parser, args, Settings(), GEMM_N, "quick")
    plt = _import_pyplot() if args.plot else None
    if args.plot and plt is None:  # before anything runs, not after a long suite
        parser.error("--plot needs matplotlib, which is not installed: pip install matplotlib")
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
