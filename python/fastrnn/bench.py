"""Micro-benchmark of fastrnn against its peers: ``python -m fastrnn.bench``.

For every configuration of a suite and every peer (``fastrnn``: the C++ core; ``numpy``: the NumPy
reference, ``fastrnn.reference``) it measures

- forward: the module in eval mode (inference: nothing is saved for backward);
- forward+backward: a training-mode forward followed by ``.backward(dy)``,

and prints the median (and keeps the minimum) wall time, GFLOP/s, how many times faster fastrnn
is than each peer, and the accuracy of each peer's forward output against the float64 NumPy
reference. ``--json PATH`` also writes every number (each timed run included) with the machine
and build it came from.

Needs nothing but NumPy. Times are wall clock (``time.perf_counter``) of the Python module call,
what a user pays, with the garbage collector paused; each measurement warms up first, then
repeats until it has ``--repeats`` runs or has spent ``--budget`` seconds (but at least
``--min-repeats`` runs), so slow peers get fewer repeats and a suite's run time stays bounded.

FLOP convention (DESIGN.md section 4): forward ``2*G*H*(I+H)*B*T`` per layer and direction
(G = 1 vanilla, 4 LSTM, 3 GRU; I the layer's input size); forward+backward counts 3x forward.
GFLOP/s = FLOPs / median time.

The pieces are meant to grow: configurations are :class:`Config` values grouped in
:data:`SUITES`; peers are entries of :data:`PEERS` (a name, a description and a function that
builds a :class:`Runner` for a configuration); results are plain dicts, rendered by
:func:`format_header` / :func:`format_rows` and written by :func:`write_json`.
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
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

import fastrnn
from fastrnn import reference

JSON_SCHEMA = 1
MODES = ("rnn_tanh", "rnn_relu", "lstm", "gru")
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
CELL_ALIASES = {"rnn": ("rnn_tanh", "rnn_relu"), "vanilla": ("rnn_tanh", "rnn_relu")}
DTYPES = ("float32", "float64")
FLOP_CONVENTION = ("forward FLOPs = 2*G*H*(I+H)*B*T per layer and direction (G = 1 vanilla, "
                   "4 LSTM, 3 GRU); forward+backward FLOPs = 3 x forward; "
                   "GFLOP/s = FLOPs / median time")
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

    def forward_flops(self) -> int:
        """``2*G*H*(I_l+H)*B*T`` summed over layers and directions."""
        g, h, d = GATES[self.cell], self.H, self.directions
        total = 0
        for layer in range(self.layers):
            layer_in = self.I if layer == 0 else d * h
            total += d * 2 * g * h * (layer_in + h) * self.B * self.T
        return total

    def forward_backward_flops(self) -> int:
        return 3 * self.forward_flops()

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


def _add_rates(m: Dict[str, object], flops: int) -> Dict[str, object]:
    m["gflops"] = flops / m["median_s"] / 1e9
    m["gflops_best"] = flops / m["min_s"] / 1e9
    return m


def _accuracy(out: np.ndarray, ref: np.ndarray) -> Dict[str, object]:
    out = np.asarray(out, dtype=np.float64)
    diff = np.abs(out - ref)
    finite = bool(np.isfinite(out).all())
    max_abs = float(diff.max()) if finite else float("nan")
    scale = max(1.0, float(np.abs(ref).max()))
    return {"max_abs_diff": max_abs, "max_rel_diff": max_abs / scale, "finite": finite,
            "against": "fastrnn.reference in float64, same weights and input",
            "rel_scale": "max(1, max|ref|)"}


def reference_output_f64(inputs: Inputs) -> np.ndarray:
    """Forward output of the NumPy reference in float64 on the (upcast) same weights and input."""
    cfg64 = dataclasses.replace(inputs.config, dtype="float64")
    params64 = {k: v.astype(np.float64) for k, v in inputs.params.items()}
    module = _build_module(reference, cfg64, params64).eval()
    return module(inputs.x.astype(np.float64))[0]


def run_config(config: Config, peers: Sequence[str], settings: Settings, seed: int = 0,
               check_accuracy: bool = True) -> Dict[str, object]:
    """Measure every peer on one configuration; a peer that fails records its error."""
    inputs = make_inputs(config, seed)
    flops = {"forward": config.forward_flops(), "forward_backward": config.forward_backward_flops()}
    ref = reference_output_f64(inputs) if check_accuracy else None
    result: Dict[str, object] = {"config": config.to_dict(), "flops": flops, "peers": {}}
    for name in peers:
        entry: Dict[str, object] = {}
        try:
            runner = PEERS[name].make(inputs)
            if ref is not None:
                entry["accuracy"] = _accuracy(runner.output(), ref)
            entry["forward"] = _add_rates(measure(runner.forward, settings), flops["forward"])
            entry["forward_backward"] = _add_rates(measure(runner.forward_backward, settings),
                                                   flops["forward_backward"])
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


def collect_meta() -> Dict[str, object]:
    """Everything a reader needs to know where the numbers come from."""
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
        "argv": sys.argv[1:],
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
    ("config", 30, "<"), ("peer", 8, "<"), ("fwd ms", 9, ">"), ("GFLOP/s", 8, ">"),
    ("fwd+bwd ms", 11, ">"), ("GFLOP/s", 8, ">"), ("speedup fwd", 12, ">"),
    ("speedup f+b", 12, ">"), ("max|y-ref64|", 13, ">"), ("runs", 8, ">"),
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
        f"BLAS      : {info['blas_config']}; parallel jobs on {info['blas_threads']}",
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
        "speedup   : peer median time / fastrnn median time (> 1: fastrnn is faster); with both "
        "torch peers, a line per config gives torch.nn time / fastrnn.torch time",
        "accuracy  : max |y - y_ref| of each peer's forward output against the float64 NumPy "
        "reference on the same weights and input",
        f"runs      : timed runs fwd/fwd+bwd; '~' marks a noisy measurement (interquartile "
        f"range > {NOISY_SPREAD:.0%} of the median)",
    ]
    busy = meta["cpu_busy_start"]
    if busy is not None and busy > BUSY_WARNING:
        lines.append(f"WARNING   : other processes kept the CPUs {_pct(busy)} busy just before the "
                     "start: times will be slow and noisy")
    lines += ["", _row([t for t, _, _ in _COLUMNS]), _row(["-" * w for _, w, _ in _COLUMNS])]
    return "\n".join(lines)


def _fmt_ms(m) -> str:
    ms = m["median_s"] * 1e3
    digits = 0 if ms >= 1000 else 1 if ms >= 100 else 2 if ms >= 10 else 3 if ms >= 1 else 4
    return f"{ms:.{digits}f}"


def _fmt_x(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.2f}x"


def _noise(m) -> str:
    return "~" if m["spread"] > NOISY_SPREAD else ""


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
        acc_s = "" if acc is None else (f"{acc['max_abs_diff']:.1e}" if acc["finite"]
                                        else "NON-FINITE")
        lines.append(_row([first, name, _fmt_ms(fwd), f"{fwd['gflops']:.2f}", _fmt_ms(fb),
                           f"{fb['gflops']:.2f}", _fmt_x(speed.get("forward")),
                           _fmt_x(speed.get("forward_backward")), acc_s,
                           f"{fwd['n']}{_noise(fwd)}/{fb['n']}{_noise(fb)}"]))
    adapter = result.get("speedup_torch_adapter")
    if adapter:
        lines.append(_row(["", f"  torch.nn.{_TORCH_CLASS[result['config']['cell']]} time / "
                               f"fastrnn.torch's: fwd {_fmt_x(adapter['forward'])}, "
                               f"fwd+bwd {_fmt_x(adapter['forward_backward'])}"]))
    return "\n".join(lines)


_TORCH_CLASS = {"rnn_tanh": "RNN", "rnn_relu": "RNN", "lstm": "LSTM", "gru": "GRU"}


def write_json(path: str, meta: Dict[str, object], settings: Settings, suite: str,
               results: List[Dict[str, object]]) -> None:
    doc = {"schema": JSON_SCHEMA, "meta": meta, "suite": suite,
           "settings": dataclasses.asdict(settings), "flop_convention": FLOP_CONVENTION,
           "speedup_convention": "peer median time / fastrnn median time",
           "results": results}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, allow_nan=False, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


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
        epilog=FLOP_CONVENTION + ". Peers: " + ", ".join(PEERS) + ".")
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
                   help="comma-separated peers to run (default: all available: "
                        f"{', '.join(PEERS)})")
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
    p.add_argument("--json", metavar="PATH", help="also write all numbers to this JSON file")
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.repeats < 1 or args.min_repeats < 1 or args.warmup < 0 or args.budget < 0
            or args.warmup_s < 0):
        parser.error("--repeats and --min-repeats must be >= 1; --warmup, --warmup-s and "
                     "--budget >= 0")
    settings = Settings(repeats=args.repeats, min_repeats=min(args.min_repeats, args.repeats),
                        warmup=args.warmup, warmup_s=args.warmup_s, budget=args.budget)
    configs = select_configs(args)
    suite = "custom" if args.config else args.suite
    if not configs:
        parser.error("no configuration left to run (check --cells)")
    if args.list:
        for c in configs:
            print(f"{c.label:40s} forward {c.forward_flops() / 1e6:10.1f} MFLOP")
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

    meta = collect_meta()
    print(format_header(meta, suite, configs, settings, peers), flush=True)
    start = time.perf_counter()
    results = []
    for config in configs:
        result = run_config(config, peers, settings, seed=args.seed,
                            check_accuracy=not args.no_accuracy)
        results.append(_json_safe(result))
        print(format_rows(result), flush=True)
    meta["wall_s"] = round(time.perf_counter() - start, 3)
    meta["loadavg_end"] = _loadavg()
    time.sleep(0.3)  # let this process's BLAS thread pools stop spinning before sampling
    meta["cpu_busy_end"] = cpu_busy_by_others()
    failed = [f"{r['config']['label']} / {name}" for r in results
              for name, e in r["peers"].items()
              if "error" in e or not e.get("accuracy", {}).get("finite", True)]
    print(f"\n{len(configs)} config(s) in {meta['wall_s']:.1f} s; CPUs busy with other "
          f"processes just after the end: {_pct(meta['cpu_busy_end'])}")
    if meta["cpu_busy_end"] is not None and meta["cpu_busy_end"] > BUSY_WARNING:
        print("WARNING: other processes were running at the end: times may be slow and noisy")
    if args.json:
        write_json(args.json, meta, settings, suite, results)
        print(f"wrote {args.json}")
    if failed:
        print("FAILED (error or non-finite output): " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
