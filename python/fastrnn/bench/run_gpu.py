"""The GPU mode (``--device cuda``): fastrnn.torch against torch.nn (cuDNN) on one CUDA device.

Each row runs a fastrnn.torch module and a torch.nn module with the same weights on the same
device and dtype (:func:`run_gpu_row`): first a check of the path each side takes and of its
accuracy (:mod:`fastrnn.bench.gpu_checks`, :mod:`fastrnn.bench.accuracy`), then forward (under
``torch.no_grad()``) and forward+backward (``y, _ = m(x); y.backward(dy)``) timed with CUDA
events by the shared :func:`fastrnn.bench.timing.measure`. The floor of a row uses the FLOP and
byte conventions of :class:`fastrnn.bench.configs.Config` with the row's element size, and the
HBM bandwidth and GEMM peaks measured at start-up (:class:`fastrnn.bench.ceilings.GpuCeilings`).
:class:`GpuMode` is what the shared run (:mod:`fastrnn.bench.session`) asks of this device;
without a usable GPU it exits with code 2 and one line saying why.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import sys
from typing import Dict, List, Optional, Tuple

from .accuracy import GPU_ACCURACY_CONVENTION, row_accuracy
from .ceilings import GPU_FLOOR_CONVENTION, GPU_GEMM_N, GpuCeilings, floor_times
from .configs import (BYTES_CONVENTION, FLOP_CONVENTION, GPU_DEFAULT_DTYPES, GpuRow, itemsize,
                      packed_lengths, select_gpu_rows, work_counts)
from .gpu_checks import check_outputs, fastrnn_outputs, output_tensor, plan_algo, torch_outputs
from .machine import collect_meta, gpu_unavailable_reason, tf32_off, tf32_state
from .peers import make_layer
from .report_json import failed_rows, gpu_document, write_json
from .report_markdown import cudnn_table, markdown_document
from .report_text import format_header, progress_line
from .session import Mode, Session
from .targets import TARGET_RULE, row_targets, summary_lines, targets_summary
from .timing import GPU_SETTINGS, CudaEventClock, Settings, add_rates, event_timing_text, measure

_PHASES = ("forward", "forward_backward")
GPU_ROTATE_BYTES = 64 << 20  # input sets (x and dy) up to this size rotate 4 ways, larger 2 ways
TF32_NOTE = ("off for both sides on float32 rows (torch.backends.cuda.matmul.allow_tf32 = "
             "torch.backends.cudnn.allow_tf32 = False): true float32 arithmetic")


class GpuInputs:
    """Random input sets of one row on the device (rotated among runs, so no run finds its
    input in L2 from the run before): x (T, B, I) -- a PackedSequence for a packed row --, the
    leaf tensor its gradient lands in, and dy, all in the row's dtype."""

    def __init__(self, row: GpuRow, lengths: Optional[List[int]], seed: int, device):
        import torch
        cfg = row.config
        gen = torch.Generator(device=device).manual_seed(seed + 1)
        set_bytes = cfg.T * cfg.B * (cfg.I + cfg.directions * cfg.H) * itemsize(row.dtype)
        self.n = 4 if set_bytes <= GPU_ROTATE_BYTES else 2
        self.xs, self.leaves, self.dys = [], [], []
        for _ in range(self.n):
            x = torch.randn(cfg.T, cfg.B, cfg.I, generator=gen, device=device)
            xin, leaf = self._input(x.to(getattr(torch, row.dtype)), lengths)
            rows = leaf.shape[0] if lengths is not None else None
            dy_shape = ((rows, cfg.directions * cfg.H) if lengths is not None
                        else (cfg.T, cfg.B, cfg.directions * cfg.H))
            dy = torch.randn(dy_shape, generator=gen, device=device).to(getattr(torch, row.dtype))
            self.xs.append(xin)
            self.leaves.append(leaf)
            self.dys.append(dy)

    @staticmethod
    def _input(x, lengths: Optional[List[int]]):
        """The module's input (x, or x packed by ``lengths``) and the leaf its gradient lands in."""
        import torch
        from torch.nn.utils.rnn import pack_padded_sequence
        if lengths is None:
            leaf = x.requires_grad_(True)
            return leaf, leaf
        packed = pack_padded_sequence(x, torch.tensor(lengths, dtype=torch.int64),
                                      enforce_sorted=False)
        leaf = packed.data.detach().requires_grad_(True)
        return _packed_like(packed, leaf), leaf

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


def _device_layer(namespace, row: GpuRow, device, dtype, **extra):
    """``namespace.RNN/LSTM/GRU`` (torch.nn or fastrnn.torch) of the row on ``device``."""
    return make_layer(namespace, row.config, device=device, dtype=dtype, **extra).to(
        device=device, dtype=dtype)


def run_gpu_row(row: GpuRow, settings: Settings, ceilings: GpuCeilings, seed: int = 0,
                algo: str = "auto", check_accuracy: bool = True,
                device=None) -> Dict[str, object]:
    """Check, then time one row on both implementations; failures are recorded, not raised.
    ``device``: torch's current CUDA device unless given (tests pass the CPU)."""
    import torch
    cfg = row.config
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device())
    device = torch.device(device)
    lengths = packed_lengths(cfg.T, cfg.B, seed) if row.packed else None
    rows = sum(lengths) if lengths is not None else cfg.T * cfg.B
    result: Dict[str, object] = {
        "row": row.to_dict(), "lengths": lengths, "rows": rows,
        "floor": floor_times(cfg, ceilings, row.dtype, rows),
        "algo": {"requested": algo},
    }
    for kind, training in (("forward", False), ("forward_backward", True)):
        name, why = plan_algo(row, algo, device.index or 0, training)
        result["algo"][kind] = name
        if why:
            result["algo"][f"{kind}_error"] = why
    entries: Dict[str, Dict[str, object]] = {"fastrnn": {}, "cudnn": {}}
    result["fastrnn"], result["cudnn"] = entries["fastrnn"], entries["cudnn"]
    with tf32_off() if row.dtype == "float32" else contextlib.nullcontext():
        result["tf32"] = tf32_state()
        _check_and_time(row, settings, result, entries, lengths, device, seed, algo,
                        check_accuracy)
    torch.cuda.empty_cache()  # what the row allocated went with _check_and_time's frame
    ratio = {}
    if "error" not in result and all("error" not in e for e in entries.values()):
        ratio = {kind: entries["cudnn"][kind]["median_s"] / entries["fastrnn"][kind]["median_s"]
                 for kind in _PHASES}
    result["ratio"] = ratio
    result["targets"] = row_targets(row, ratio)
    return result


def _check_and_time(row: GpuRow, settings: Settings, result: Dict[str, object],
                    entries: Dict[str, Dict[str, object]], lengths: Optional[List[int]], device,
                    seed: int, algo: str, check_accuracy: bool) -> None:
    """The device work of :func:`run_gpu_row`, filling ``result`` and ``entries``."""
    import torch
    import fastrnn.torch as ftorch
    try:
        torch.manual_seed(seed)
        fast = _device_layer(ftorch, row, device, getattr(torch, row.dtype), algo=algo)
        fast.algo = algo
        peer = _device_layer(torch.nn, row, device, getattr(torch, row.dtype))
        peer.load_state_dict(fast.state_dict())
        peer.flatten_parameters()
        modules = {"fastrnn": fast, "cudnn": peer}
        data = GpuInputs(row, lengths, seed, device)
    except Exception as exc:
        result["error"] = f"setup: {type(exc).__name__}: {exc}"
        return
    result["input_sets"] = data.n
    # Both sides run once even without the accuracy check: the path checks need the calls.
    checks = _check_paths(modules, data, ftorch, result, entries)
    if check_accuracy and checks:
        _check_against_float64(row, modules["fastrnn"], data, device, checks, result)
    checks.clear()  # before timing: the outputs may be large
    _time_modules(modules, data, settings, result, entries)


def _check_paths(modules, data: GpuInputs, ftorch, result: Dict[str, object],
                 entries: Dict[str, Dict[str, object]]) -> Dict[str, Dict[str, object]]:
    """Which path each side takes, on input set 0; each side's outputs where it ran."""
    x0, leaf0, dy0 = data.xs[0], data.leaves[0], data.dys[0]
    checks: Dict[str, Dict[str, object]] = {}
    for name, module in modules.items():
        try:
            if name == "fastrnn":
                checks[name] = fastrnn_outputs(module, ftorch, x0, leaf0, dy0)
            else:
                checks[name], result["torch_nn_path"] = torch_outputs(module, x0, leaf0, dy0)
        except Exception as exc:
            entries[name]["error"] = f"{type(exc).__name__}: {exc}"
    return checks


def _check_against_float64(row: GpuRow, fast, data: GpuInputs, device,
                           checks: Dict[str, Dict[str, object]],
                           result: Dict[str, object]) -> None:
    """torch.nn in float64 on the same (rounded) weights and input set 0, then the errors."""
    import torch
    try:
        ref = _device_layer(torch.nn, row, device, torch.float64)
        ref.load_state_dict({k: v.to(torch.float64) for k, v in fast.state_dict().items()})
        checks["float64"] = check_outputs(ref, *data.first_as(torch.float64))
        del ref
    except Exception as exc:
        result["reference_error"] = f"{type(exc).__name__}: {exc}"
    result["accuracy"] = row_accuracy(checks, row.dtype)


def _time_modules(modules, data: GpuInputs, settings: Settings, result: Dict[str, object],
                  entries: Dict[str, Dict[str, object]]) -> None:
    """Forward for both sides, then forward+backward for both, on CUDA events."""
    clock = CudaEventClock()
    for kind in _PHASES:
        for name, module in modules.items():
            entry = entries[name]
            if "error" in entry:
                continue
            calls, prepare = _phase_calls(module, data, kind)
            try:
                m = measure(calls, settings, clock, prepare)
            except Exception as exc:
                entry.clear()
                entry["error"] = f"{kind}: {type(exc).__name__}: {exc}"
                continue
            floor = result["floor"][kind]
            entry[kind] = add_rates(m, floor["flops"], floor["floor_s"], unit="tflops")


def _phase_calls(module, data: GpuInputs, kind: str):
    """One call per input set for ``kind``, and what runs untimed before each (None, or
    gradients set to None before a forward+backward)."""
    import torch
    if kind == "forward":
        def forward(x):
            with torch.no_grad():
                module(x)
        return [functools.partial(forward, x) for x in data.xs], None

    def forward_backward(x, dy):
        output_tensor(module(x)[0]).backward(dy)

    def zero_gradients(i):
        module.zero_grad(set_to_none=True)
        data.leaves[i].grad = None
    return ([functools.partial(forward_backward, x, dy) for x, dy in zip(data.xs, data.dys)],
            zero_gradients)


class GpuMode(Mode):
    settings = GPU_SETTINGS
    gemm_n = GPU_GEMM_N
    default_suite = "gpu"
    item_name = "row"
    failure_rule = "error, or non-finite output or gradient"

    def check_options(self, args, parser: argparse.ArgumentParser) -> None:
        cpu_only = [name for name, value in (("--peers", args.peers), ("--plot", args.plot),
                                             ("--dtype", args.dtype)) if value]
        if cpu_only:
            parser.error(f"{', '.join(cpu_only)}: not with --device cuda (the peers are "
                         "fastrnn.torch and torch.nn; dtypes go in --dtypes)")

    def complete_options(self, session: Session, parser: argparse.ArgumentParser) -> None:
        session.args.dtypes = session.args.dtypes or list(GPU_DEFAULT_DTYPES)
        session.args.algo = session.args.algo or "auto"

    def select(self, args) -> List[GpuRow]:
        return select_gpu_rows(args)

    def list_line(self, r: GpuRow, args) -> str:
        lengths = packed_lengths(r.config.T, r.config.B, args.seed) if r.packed else None
        c = work_counts(r.config, sum(lengths) if lengths else None, r.dtype)["forward"]
        return (f"{r.label:52s} {r.group:9s} forward {c['flops'] / 1e9:10.2f} GFLOP "
                f"{c['bytes'] / 1e6:9.2f} MB")

    def start(self, session: Session, parser: argparse.ArgumentParser) -> Optional[int]:
        why = gpu_unavailable_reason()
        if why is not None:
            print(f"python -m fastrnn.bench: error: --device cuda: no usable GPU here: {why}",
                  file=sys.stderr)
            return 2
        importlib.import_module("fastrnn.torch")  # before any measurement, as in the CPU mode
        return None

    def describe(self, session: Session) -> Dict[str, object]:
        meta = collect_meta(session.argv, "cuda")
        meta["tf32"] = TF32_NOTE
        return meta

    def measure_ceilings(self, session: Session) -> GpuCeilings:
        print("measuring the HBM bandwidth and GEMM peaks ...", file=sys.stderr, flush=True)
        return GpuCeilings.measure(session.args.dtypes, session.args.gemm_n)

    def header(self, session: Session) -> str:
        first = (f"fastrnn {session.meta['fastrnn_version']} GPU benchmark against torch.nn "
                 "(cuDNN)")
        return format_header(first, _header_fields(session), width=9)

    def run_item(self, row: GpuRow, session: Session) -> Dict[str, object]:
        args = session.args
        try:
            return run_gpu_row(row, session.settings, session.ceilings, seed=args.seed,
                               algo=args.algo, check_accuracy=not args.no_accuracy)
        except Exception as exc:  # e.g. a sticky CUDA error: record it, the later rows fail too
            return {"row": row.to_dict(), "error": f"{type(exc).__name__}: {exc}",
                    "fastrnn": {}, "cudnn": {}, "ratio": {}}

    def report_item(self, index: int, result: Dict[str, object], seconds: float,
                    session: Session) -> None:
        safe = session.results[-1]  # the progress line reads the JSON-safe copy
        print(progress_line(index, len(session.items), safe, seconds), file=sys.stderr,
              flush=True)
        flags = [f for f in (safe.get("accuracy") or {}).get("flags", [])
                 if f.startswith("NON-FINITE")]
        if flags:
            print(f"!!! {safe['row']['label']}: {'; '.join(flags)} !!!", file=sys.stderr,
                  flush=True)
        if session.args.json:  # after every row, so a run cut short still leaves its rows
            write_json(session.args.json, self.json_document(session, complete=False))

    def finish(self, session: Session) -> None:
        import torch
        try:
            session.meta["torch_max_memory_bytes"] = torch.cuda.max_memory_allocated()
        except Exception:  # the context may be gone after a CUDA error; the table still prints
            session.meta["torch_max_memory_bytes"] = None

    def closing(self, session: Session) -> List[str]:
        results = session.results
        lines = ["", *cudnn_table(results), "", *summary_lines(targets_summary(results))]
        flagged = [f"{r['row']['label']}: {f}" for r in results
                   for f in (r.get("accuracy") or {}).get("flags", []) if not f.startswith("NON")]
        if flagged:
            lines.append("ACCURACY WARNING: " + "; ".join(flagged))
        lines.append(f"{len(session.items)} row(s) in {session.meta['wall_s']:.1f} s")
        return lines

    def json_document(self, session: Session, complete: bool) -> Dict[str, object]:
        return gpu_document(session.meta, session.settings, session.suite, session.results,
                            complete)

    def markdown(self, session: Session) -> str:
        meta = session.meta
        title = (f"fastrnn {meta['fastrnn_version']} on {meta['device']['name']}, suite "
                 f"{session.suite!r}, {meta['date_utc']}")
        body = self.closing(session)[:-1]  # all but the run time
        return markdown_document(title, meta["argv"], _header_fields(session), body)

    def failures(self, results: List[Dict[str, object]]) -> List[str]:
        return failed_rows(results)


def _header_fields(session: Session) -> List[Tuple[str, str]]:
    """(title, text) pairs: 'title: text' lines on stdout, Markdown bullets in --markdown."""
    meta, settings = session.meta, session.settings
    d, info = meta["device"], meta["build_info"]
    cuda_keys = {k: v for k, v in info.items() if k.startswith("cuda") or k == "cublas"}
    return [
        ("device", f"{d['name']} (sm_{d['capability'].replace('.', '')}, {d['multiprocessors']} "
                   f"SMs, {d['memory_bytes'] / 2**30:.0f} GiB), cuda:{d['index']}"),
        ("software", f"torch {meta['torch_version']} (CUDA {meta['torch_cuda']}), cuDNN "
                     f"{meta['cudnn_version']}, fastrnn {meta['fastrnn_version']} "
                     + ", ".join(f"{k}={v}" for k, v in cuda_keys.items())),
        ("run", f"suite {session.suite!r}, {len(session.items)} row(s); fastrnn.torch "
                f"algo={session.args.algo!r} (column algo: what fastrnn.cuda.plan picks for "
                "layer 0, fwd/fwd+bwd)"),
        ("peer", "cuDNN = torch.nn.RNN/LSTM/GRU on the same device and dtype with the same "
                 "weights (state_dict copied); notes say where torch.nn did not run cuDNN"),
        ("TF32", meta["tf32"]),
        *session.ceilings.describe(),
        ("FLOPs", FLOP_CONVENTION),
        ("bytes", BYTES_CONVENTION),
        ("floor", GPU_FLOOR_CONVENTION),
        ("timing", event_timing_text(settings)),
        ("ratio", "cuDNN median time / fastrnn median time (> 1: fastrnn is faster)"),
        ("accuracy", GPU_ACCURACY_CONVENTION),
        ("targets", TARGET_RULE),
    ]
