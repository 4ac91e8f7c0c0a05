"""What the benchmark runs: configurations, GPU rows, RL rows, suites, and the options that pick
them.

A :class:`Config` is one cell and its sizes. It counts its own FLOPs and bytes by the stated
conventions (docs/design.md section 4); every rate and floor of either device comes from these
counts (:func:`work_counts`). A :class:`GpuRow` runs the shape of a float32 Config in one GPU
dtype, possibly as packed input. An :class:`RlRow` is one workload of the RL suite (``--suite
rl``), its Config the work of one timed call. Cell names and gate counts come from
:mod:`fastrnn._cells`, the GPU dtypes from :mod:`fastrnn.cuda`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from fastrnn import cuda as fastrnn_cuda
from fastrnn._cells import CELLS, MODES, VANILLA_MODES, num_gates

# --cells takes these names for both vanilla cells.
_VANILLA = tuple(VANILLA_MODES.values())
CELL_ALIASES = {"rnn": _VANILLA, "vanilla": _VANILLA}
DTYPES = ("float32", "float64")  # the CPU core's
# fastrnn.cuda's dtypes, the GPU mode's defaults first (the order of its options and tables).
GPU_DEFAULT_DTYPES = ("float32", "bfloat16")
GPU_DTYPES = GPU_DEFAULT_DTYPES + tuple(d for d in fastrnn_cuda.DTYPES
                                        if d not in GPU_DEFAULT_DTYPES)

FLOP_CONVENTION = ("forward FLOPs = 2*G*H*(I+H)*B*T per layer and direction (G = 1 vanilla, "
                   "4 LSTM, 3 GRU); forward+backward FLOPs = 3 x forward; "
                   "GFLOP/s = FLOPs / median time")
BYTES_CONVENTION = ("forward bytes = T*|W_hh| + |W_ih| + |x| + |y| per layer and direction "
                    "(|W_hh| = G*H*H, |W_ih| = G*H*I, |x| = T*B*I, |y| = T*B*H elements); "
                    "forward+backward bytes = 2 x forward + the saved gates T*B*G*H")


def itemsize(dtype: str) -> int:
    """Bytes of one element: NumPy's size, and 2 for bfloat16 (which NumPy lacks)."""
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


@dataclass(frozen=True)
class Config:
    """One benchmark problem: a cell and its sizes (time-major input ``(T, B, I)``).

    The counting methods take ``rows``, the sequence steps of work (default ``T*B``; a packed
    input has fewer: the sum of its lengths), and ``element_bytes`` (default the dtype's).
    """
    cell: str
    T: int
    B: int
    I: int  # noqa: E741  (the design's name for the input size)
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

    @property
    def itemsize(self) -> int:
        return itemsize(self.dtype)

    def _layer_inputs(self) -> List[int]:
        """Each layer's input size: I, then D*H above the first layer."""
        return [self.I] + [self.directions * self.H] * (self.layers - 1)

    def _rows(self, rows: Optional[int]) -> int:
        return self.T * self.B if rows is None else rows

    def forward_flops(self, rows: Optional[int] = None) -> int:
        """``2*G*H*(I_l+H)*B*T`` summed over layers and directions."""
        g, h, d, rows = num_gates(self.cell), self.H, self.directions, self._rows(rows)
        return sum(d * 2 * g * h * (layer_in + h) * rows for layer_in in self._layer_inputs())

    def forward_backward_flops(self, rows: Optional[int] = None) -> int:
        return 3 * self.forward_flops(rows)

    def whh_bytes(self, element_bytes: Optional[int] = None) -> int:
        """One layer and direction's ``W_hh``: what every step re-reads (its working set)."""
        size = self.itemsize if element_bytes is None else element_bytes
        return num_gates(self.cell) * self.H * self.H * size

    def forward_bytes(self, rows: Optional[int] = None,
                      element_bytes: Optional[int] = None) -> int:
        """``T*|W_hh| + |W_ih| + |x| + |y|`` over layers and directions (BYTES_CONVENTION);
        W_hh is re-read T times whatever ``rows`` is."""
        g, h, d, t = num_gates(self.cell), self.H, self.directions, self.T
        rows = self._rows(rows)
        size = self.itemsize if element_bytes is None else element_bytes
        elements = sum(d * (t * g * h * h + g * h * layer_in + rows * (layer_in + h))
                       for layer_in in self._layer_inputs())
        return elements * size

    def forward_backward_bytes(self, rows: Optional[int] = None,
                               element_bytes: Optional[int] = None) -> int:
        """2 x forward, plus the gates the forward saved for the backward."""
        size = self.itemsize if element_bytes is None else element_bytes
        saved = self.layers * self.directions * self._rows(rows) * num_gates(self.cell) * self.H
        return 2 * self.forward_bytes(rows, size) + saved * size

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["label"] = self.label
        return d


def work_counts(config: Config, rows: Optional[int] = None,
                dtype: Optional[str] = None) -> Dict[str, Dict[str, int]]:
    """FLOPs and bytes of the forward and the forward+backward of ``config`` run in ``dtype``
    (default its own) over ``rows`` sequence steps (default T*B)."""
    size = itemsize(dtype or config.dtype)
    return {"forward": {"flops": config.forward_flops(rows),
                        "bytes": config.forward_bytes(rows, size)},
            "forward_backward": {"flops": config.forward_backward_flops(rows),
                                 "bytes": config.forward_backward_bytes(rows, size)}}


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


def packed_lengths(T: int, B: int, seed: int = 0) -> List[int]:
    """Varied sequence lengths of a packed row, from T/4 to T (the first is T), fixed by seed."""
    rng = np.random.default_rng(seed + 7)
    lengths = rng.integers(max(1, T // 4), T + 1, size=B)
    lengths[0] = T
    return [int(v) for v in lengths]


# ---- suites --------------------------------------------------------------------------------

def _cpu_suite_full() -> List[Config]:
    """docs/design.md section 5, CPU rows (from DeepBench's RNN set), input size = hidden size."""
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


def _gpu_suite_full() -> List[GpuRow]:
    """docs/design.md section 5 GPU rows, then batch 1-8 latency rows, then packed-input rows."""
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


# ---- the RL suite: fastrnn.torch against torch.nn on recurrent-RL workloads ---------------

# What an RlRow's group runs (docs/benchmarks.md, "The RL suite"):
RL_GROUPS = {
    "update": "a recurrent-policy update: the rollout (T steps x B envs) through the layer module "
              "in one call with resets=episode_starts, against torch.nn's step loop that "
              "multiplies the state by (1 - episode_start[t]) before each single-step call",
    "cell": "one step of the single-step cell (fastrnn.torch.XCell against torch.nn.XCell)",
    "loop": "a Python loop of N steps of the cell (xN), timed as a whole",
    "stream": "N calls of T = 1 (xN) carrying the state under torch.no_grad(), timed as a whole "
              "and reported per call",
}


@dataclass(frozen=True)
class RlRow:
    """One row of the RL suite: its group (a key of :data:`RL_GROUPS`), ``config``, the cell and
    sizes of one call, and ``calls``, the calls a timed run makes (a loop's steps, a stream's
    calls); for ``update``, ``reset_p`` is the probability of an episode start per step and
    env."""
    group: str
    config: Config
    reset_p: float = 0.0
    calls: int = 1

    def __post_init__(self):
        if self.group not in RL_GROUPS:
            raise ValueError(f"group: expected one of {tuple(RL_GROUPS)}, got {self.group!r}")
        c = self.config
        if c.bidirectional or c.dtype != "float32":
            raise ValueError("config: expected a unidirectional float32 Config")
        if self.group in ("cell", "loop") and (c.layers != 1 or c.T != 1):
            raise ValueError("config: a cell's call is one step of one layer (T = 1, layers = 1)")
        if self.group == "stream" and c.T != 1:
            raise ValueError("config: a stream's calls have T = 1")
        if self.calls < 1 or (self.calls > 1) != (self.group in ("loop", "stream")):
            raise ValueError("calls: more than 1 for a loop or a stream row, else 1")

    @property
    def phases(self) -> tuple:
        """What is timed: forward, and forward+backward except for a stream (inference)."""
        return ("forward",) if self.group == "stream" else ("forward", "forward_backward")

    @property
    def reported_calls(self) -> int:
        """The calls one reported time covers: a stream's time is per call, the others' per
        run."""
        return 1 if self.group == "stream" else self.calls

    @property
    def torch_class(self) -> str:
        """The torch.nn class both sides are: ``LSTM``, ``GRU``, ``RNN`` or their ``...Cell``."""
        name = CELLS[self.config.cell].torch_class
        return name + "Cell" if self.group in ("cell", "loop") else name

    @property
    def label(self) -> str:
        c = self.config
        if self.group == "update":
            return f"update {self.torch_class} T={c.T} B={c.B} I={c.I} H={c.H} p={self.reset_p:g}"
        if self.group == "stream":
            return f"stream {self.torch_class} x{self.calls} L={c.layers} B={c.B} H={c.H}"
        steps = f" x{self.calls}" if self.group == "loop" else ""
        return f"{self.group} {self.torch_class}{steps} B={c.B} H={c.H}"

    def work_counts(self) -> Dict[str, Dict[str, int]]:
        """FLOPs and bytes of what one reported time covers (:attr:`reported_calls` calls of
        ``config``), per phase of the row."""
        n = self.reported_calls
        return {phase: {k: n * v for k, v in counts.items()}
                for phase, counts in work_counts(self.config).items() if phase in self.phases}

    def to_dict(self) -> Dict[str, object]:
        d = {k: v for k, v in self.config.to_dict().items() if k not in ("bidirectional", "label")}
        d.update(group=self.group, torch_class=self.torch_class, reset_p=self.reset_p,
                 calls=self.calls, reported_calls=self.reported_calls, label=self.label)
        return d


def _rl_suite() -> List[RlRow]:
    """The RL rows (docs/benchmarks.md): policy updates with resets, cells, streaming."""
    rows = [RlRow("update", Config(cell, 128, b, 64, h), reset_p=0.02)
            for cell in ("lstm", "gru") for h in (64, 256) for b in (8, 64)]
    rows += [RlRow(group, Config(cell, 1, b, h, h), calls=calls)
             for cell in ("lstm", "gru", "rnn_tanh") for h in (128, 512) for b in (1, 16, 256)
             for group, calls in (("cell", 1), ("loop", 100))]
    rows += [RlRow("stream", Config(cell, 1, 1, h, h, layers=2), calls=200)
             for cell in ("lstm", "gru") for h in (200, 650)]
    return rows


RL_SUITES: Dict[str, List[RlRow]] = {
    "rl": _rl_suite(),
    # A smoke test of the RL harness (every group and cell, resets that happen); not a benchmark.
    "rl-smoke": [
        RlRow("update", Config("lstm", 6, 3, 4, 5), reset_p=0.3),
        RlRow("update", Config("gru", 6, 3, 4, 5), reset_p=0.3),
        *(RlRow(group, Config(cell, 1, 2, 5, 5), calls=calls)
          for cell in ("lstm", "gru", "rnn_tanh") for group, calls in (("cell", 1), ("loop", 4))),
        RlRow("stream", Config("lstm", 1, 1, 5, 5, layers=2), calls=4),
        RlRow("stream", Config("gru", 1, 1, 5, 5, layers=2), calls=4),
    ],
}


# ---- options -------------------------------------------------------------------------------

def parse_config(text: str) -> Config:
    """``lstm:T=3,B=2,I=4,H=5[,layers=2][,bidirectional=1][,dtype=float64]``; I defaults to H."""
    cell, _, rest = text.partition(":")
    values: Dict[str, object] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise ValueError(f"--config {text!r}: expected key=value, got {item!r}")
        values[key] = _config_value(text, key, value)
    missing = [k for k in ("T", "B", "H") if k not in values]
    if missing:
        raise ValueError(f"--config {text!r}: missing {', '.join(missing)}")
    values.setdefault("I", values["H"])
    return Config(cell.strip(), **values)  # type: ignore[arg-type]


def _config_value(text: str, key: str, value: str) -> object:
    """One ``key=value`` of --config ``text``, converted."""
    if key in ("T", "B", "I", "H", "layers"):
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"--config {text!r}: {key} must be an integer, got {value!r}")
    if key == "bidirectional":
        if value.lower() not in ("0", "1", "true", "false"):
            raise ValueError(f"--config {text!r}: bidirectional must be 0/1/true/false")
        return value.lower() in ("1", "true")
    if key == "dtype":
        return value
    raise ValueError(f"--config {text!r}: unknown key {key!r} "
                     "(expected T, B, I, H, layers, bidirectional, dtype)")


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


def parse_names(text: str, option: str, allowed: Sequence[str]) -> List[str]:
    """A comma-separated list of some of `allowed`, in order, without repeats."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise ValueError(f"{option}: unknown {unknown}; expected some of {', '.join(allowed)}")
    return list(dict.fromkeys(names))


def select_configs(args) -> List[Config]:
    """The CPU mode's configurations: those of --config, or of the suite; filtered by --cells,
    in the dtype of --dtype."""
    configs = list(args.config) if args.config else list(SUITES[args.suite or "quick"])
    if args.cells:
        configs = [c for c in configs if c.cell in args.cells]
    if args.dtype:
        configs = [dataclasses.replace(c, dtype=args.dtype) for c in configs]
    return configs


def select_rl_rows(args) -> List[RlRow]:
    """The rows of the RL suite of --suite, filtered by --cells."""
    rows = list(RL_SUITES[args.suite])
    if args.cells:
        rows = [r for r in rows if r.config.cell in args.cells]
    return rows


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
