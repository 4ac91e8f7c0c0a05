"""The CPU mode (``--device cpu``, the default): fastrnn's C++ core against its peers.

For every configuration, every peer (:mod:`fastrnn.bench.peers`) runs on the same weights, input
and ``dy``: its accuracy against the float64 reference first, then its forward (eval mode) and
forward+backward (train mode, then ``.backward(dy)``) timed on the wall clock
(:func:`run_config`; the JAX peers jit the function, forward+backward ``jax.vjp`` applied to
``dy``). The results say how many times faster fastrnn is than each peer, torch.nn's time over
fastrnn.torch's and Flax's over fastrnn.jax's where both of a pair ran, and at the end each
pair's geometric mean (with the JAX pair's target). :class:`CpuMode` is what the shared run
(:mod:`fastrnn.bench.session`) asks of this device.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from .accuracy import peer_accuracy, peer_failed, reference_f64
from .ceilings import FLOOR_CONVENTION, GEMM_N, CpuCeilings, floor_times
from .configs import BYTES_CONVENTION, FLOP_CONVENTION, GPU_SUITES, Config, select_configs
from .formatting import NOISY_SPREAD, pct
from .machine import BUSY_WARNING, collect_meta, cpu_busy_by_others, loadavg
from .peers import ADAPTER_PAIRS, ADAPTER_TITLES, BASELINE, PEERS, make_inputs, peer_descriptions
from .plot import import_pyplot
from .report_json import cpu_document
from .report_markdown import markdown_document, other_peers, peer_table
from .report_text import format_header, peer_rows, table_head
from .session import Mode, Session
from .targets import adapter_summary, adapter_summary_lines
from .timing import CPU_SETTINGS, Settings, add_rates, measure

_PHASES = ("forward", "forward_backward")


def run_config(config: Config, peers: Sequence[str], settings: Settings, ceilings: CpuCeilings,
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
                entry["accuracy"] = peer_accuracy(runner, ref)
            for kind, fn in (("forward", runner.forward),
                             ("forward_backward", runner.forward_backward)):
                entry[kind] = add_rates(measure([fn], settings), flops[kind],
                                        floor[kind]["floor_s"])
        except Exception as exc:  # a benchmark reports a failing peer and goes on
            entry = {"error": f"{type(exc).__name__}: {exc}"}
        result["peers"][name] = entry
    result["speedup"] = _speedups(result["peers"])
    for key, names in ADAPTER_PAIRS.items():
        pair = [result["peers"].get(name) for name in names]
        if all(entry and "error" not in entry for entry in pair):
            result[key] = {kind: pair[0][kind]["median_s"] / pair[1][kind]["median_s"]
                           for kind in _PHASES}
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
        out[name] = {kind: entry[kind]["median_s"] / base[kind]["median_s"] for kind in _PHASES}
    return out


class CpuMode(Mode):
    settings = CPU_SETTINGS
    gemm_n = GEMM_N
    default_suite = "quick"
    item_name = "configuration"
    count_name = "config"  # the closing line's "N config(s) in S s"
    failure_rule = "error, or non-finite output or input gradient"

    def __init__(self):
        self.peers: List[str] = []

    def check_options(self, args, parser: argparse.ArgumentParser) -> None:
        gpu_only = [name for name, value in (("--dtypes", args.dtypes), ("--algo", args.algo))
                    if value is not None]
        if gpu_only:
            parser.error(f"{', '.join(gpu_only)}: only with --device cuda")
        if args.suite in GPU_SUITES:
            parser.error(f"--suite {args.suite}: only with --device cuda")

    def complete_options(self, session: Session, parser: argparse.ArgumentParser) -> None:
        if session.args.plot:
            session.pyplot = import_pyplot()
            if session.pyplot is None:  # before anything runs, not after a long suite
                parser.error("--plot needs matplotlib, which is not installed: "
                             "pip install matplotlib")

    def select(self, args) -> List[Config]:
        return select_configs(args)

    def list_line(self, c: Config, args) -> str:
        return (f"{c.label:40s} forward {c.forward_flops() / 1e6:10.1f} MFLOP "
                f"{c.forward_bytes() / 1e6:8.2f} MB")

    def start(self, session: Session, parser: argparse.ArgumentParser) -> Optional[int]:
        for name in session.args.peers or list(PEERS):
            why = PEERS[name].unavailable()
            if why is None:
                self.peers.append(name)
            else:
                print(f"peer {name} skipped: {why}", file=sys.stderr)
        if not self.peers:
            parser.error("no peer available")
        if "fastrnn.torch" in self.peers:
            # Before any measurement: importing it moves the BLAS jobs onto torch's thread pool
            # (fastrnn.torch docs), so every peer runs on the same pool throughout the run.
            import fastrnn.torch  # noqa: F401
        if {"jax", "fastrnn.jax"} & set(self.peers):
            from .jax_peers import xla_threads_note
            note = xla_threads_note()
            if note:
                print(f"note: {note}", file=sys.stderr)
        return None

    def describe(self, session: Session) -> Dict[str, object]:
        meta = collect_meta(session.argv, "cpu")
        meta["peers"] = peer_descriptions()
        return meta

    def measure_ceilings(self, session: Session) -> CpuCeilings:
        # After the busy-CPU sample of describe(): the probes spin the cores.
        return CpuCeilings.measure(session.items, session.args.gemm_n)

    def header(self, session: Session) -> str:
        first = (f"fastrnn {session.meta['fastrnn_version']} benchmark: suite "
                 f"{session.suite!r}, {len(session.items)} config(s), "
                 f"peers {', '.join(self.peers)}")
        fields = _header_fields(session.meta, session.settings, session.ceilings)
        return "\n".join([format_header(first, fields, width=10), "", *table_head()])

    def run_item(self, config: Config, session: Session) -> Dict[str, object]:
        return run_config(config, self.peers, session.settings, session.ceilings,
                          seed=session.args.seed, check_accuracy=not session.args.no_accuracy)

    def report_item(self, index: int, result: Dict[str, object], seconds: float,
                    session: Session) -> None:
        print(peer_rows(result), flush=True)

    def finish(self, session: Session) -> None:
        session.meta["loadavg_end"] = loadavg()
        time.sleep(0.3)  # let this process's BLAS thread pools stop spinning before sampling
        session.meta["cpu_busy_end"] = cpu_busy_by_others()

    def closing(self, session: Session) -> List[str]:
        busy = session.meta["cpu_busy_end"]
        lines = ["", *adapter_summary_lines(adapter_summary(session.results)),
                 f"{len(session.items)} {self.count_name}(s) in {session.meta['wall_s']:.1f} "
                     f"s; CPUs busy with other processes just after the end: {pct(busy)}"]
        if busy is not None and busy > BUSY_WARNING:
            lines.append("WARNING: other processes were running at the end: times may be slow "
                         "and noisy")
        return lines

    def json_document(self, session: Session, complete: bool) -> Dict[str, object]:
        return cpu_document(session.meta, session.settings, session.suite, session.results)

    def markdown(self, session: Session) -> str:
        meta, results = session.meta, session.results
        title = f"fastrnn {meta['fastrnn_version']}, suite {session.suite!r}, {meta['date_utc']}"
        fields = _markdown_fields(meta, session.settings, session.ceilings, results)
        summary = adapter_summary_lines(adapter_summary(results))
        return markdown_document(title, meta["argv"], fields,
                                 ["", *peer_table(results), *([""] if summary else []),
                                  *(f"- {line}" for line in summary)])

    def failures(self, results: List[Dict[str, object]]) -> List[str]:
        return [f"{r['config']['label']} / {name}" for r in results
                for name, e in r["peers"].items() if peer_failed(e)]


def machine_fields(meta: Dict[str, object]) -> List[Tuple[str, str]]:
    """The printed header's first fields, those of every CPU run: the build, software, machine
    and threads."""
    info, th = meta["build_info"], meta["threads"]
    env = th["env"]
    affinity = th["affinity_cpus"]
    return [
        ("build", f"{info['compiler']}; BLAS {info['blas']}; SIMD {', '.join(info['simd'])}; "
                  f"cuda {info['cuda']}"),
        ("BLAS", f"{info['blas_config']}; parallel jobs on {info['thread_pool']}"),
        ("numpy", f"{meta['numpy_version']} ({meta['numpy_blas'] or 'BLAS unknown'}); "
                  f"python {meta['python']}"),
        ("machine", f"{meta['cpu_model']} ({meta['machine']}), {th['cpu_count']} CPUs"
                    + (f", {affinity} usable" if affinity not in (None, th["cpu_count"]) else "")
                    + f"; busy before start {pct(meta['cpu_busy_start'])}, load average "
                      f"{meta['loadavg_start']}"),
        ("threads", (", ".join(f"{k}={v}" for k, v in env.items() if k != "OPENBLAS_CORETYPE")
                     or "no thread variable set")
         + "".join(f"; {lib['used_by']}'s BLAS ({os.path.basename(str(lib['path']))}): "
                   f"{lib.get('threads', '?')} threads, core {lib.get('core', '?')}"
                   for lib in th["blas_libraries"])),
        ("coretype", f"OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']}"
                     if "OPENBLAS_CORETYPE" in env else "OPENBLAS_CORETYPE unset"),
    ]


def busy_warning(meta: Dict[str, object]) -> List[Tuple[str, str]]:
    """The header's last field when other processes kept the CPUs busy before the start."""
    busy = meta["cpu_busy_start"]
    if busy is not None and busy > BUSY_WARNING:
        return [("WARNING", f"other processes kept the CPUs {pct(busy)} busy just before the "
                            "start: times will be slow and noisy")]
    return []


def _header_fields(meta: Dict[str, object], settings: Settings,
                   ceilings: CpuCeilings) -> List[Tuple[str, str]]:
    """The printed header: the build, software, machine and threads, then the conventions."""
    return [
        *machine_fields(meta),
        ("measured", "fwd = eval-mode forward (inference); fwd+bwd = train-mode forward, then "
                     ".backward(dy); JAX peers: fwd = jax.jit(f)(x), fwd+bwd = jax.jit of "
                     "jax.vjp(f) applied to dy, each ending in block_until_ready()"),
        ("timing", f"wall clock of the module call; median of up to {settings.repeats} runs "
                   f"(at least {settings.min_repeats}; {settings.budget:g} s budget per "
                   f"measurement) after warm-up (>= {settings.warmup} runs and "
                   f"{settings.warmup_s:g} s); runs = fwd/fwd+bwd"),
        ("FLOPs", FLOP_CONVENTION),
        ("bytes", BYTES_CONVENTION),
        *ceilings.describe(),
        ("floor", FLOOR_CONVENTION),
        ("speedup", "peer median time / fastrnn median time (> 1: fastrnn is faster); with both "
                    "torch peers, a line per config gives torch.nn time / fastrnn.torch time, "
                    "with both JAX peers Flax's time / fastrnn.jax's; their geometric means "
                    "close the run"),
        ("accuracy", "max |y - y_ref| and max |dx - dx_ref| of each peer's forward output and "
                     "input gradient against the float64 NumPy reference on the same weights, "
                     "input and dy"),
        ("runs", f"timed runs fwd/fwd+bwd; '~' marks a noisy measurement (interquartile "
                 f"range > {NOISY_SPREAD:.0%} of the median)"),
        *busy_warning(meta),
    ]


def machine_markdown_fields(meta: Dict[str, object]) -> List[Tuple[str, str]]:
    """The Markdown report's first bullets, those of every CPU run: the machine, fastrnn's
    build and threads, NumPy."""
    info, th = meta["build_info"], meta["threads"]
    return [
        ("machine", f"{meta['cpu_model']} ({meta['machine']}), {th['cpu_count']} CPUs; "
                    f"{meta['platform']}; CPUs busy before start {pct(meta['cpu_busy_start'])}"),
        ("fastrnn", f"{info['compiler']}, SIMD {info.get('simd_active', '?')}; BLAS "
                    f"{info['blas_config']}" + ("" if meta["blas_kernel"] else ", kernel unknown")
                    + f"; parallel jobs on {info['thread_pool']}; "
                      f"{meta['ceilings']['threads']} threads"),
        ("numpy", f"{meta['numpy_version']} ({meta['numpy_blas'] or 'BLAS unknown'}); "
                  f"python {meta['python']}"),
    ]


def _markdown_fields(meta: Dict[str, object], settings: Settings, ceilings: CpuCeilings,
                     results: List[Dict[str, object]]) -> List[Tuple[str, str]]:
    """The Markdown report's bullets: where the numbers come from, and the conventions."""
    titles = [ADAPTER_TITLES[key] for key in ADAPTER_PAIRS if any(key in r for r in results)]
    pairs = [f"{title}: {title.split(' / ')[0]}'s time / {title.split(' / ')[1]}'s"
             for title in titles]
    return [
        *machine_markdown_fields(meta),
        *((f"peer {name}", meta["peers"][name]) for name in other_peers(results)),
        *((f"{title} ceiling", text) for title, text in ceilings.describe()),
        ("FLOPs", FLOP_CONVENTION),
        ("bytes", BYTES_CONVENTION),
        ("floor", FLOOR_CONVENTION),
        ("timing", f"median of up to {settings.repeats} runs (at least {settings.min_repeats}; "
                   f"{settings.budget:g} s budget per measurement) after warm-up; fwd = "
                   "eval-mode forward, fwd+bwd = train-mode forward then .backward(dy) (JAX "
                   "peers: jax.jit of the function, and of jax.vjp applied to dy)"),
        ("vs X", "X's median time / fastrnn's (> 1: fastrnn is faster)"
                 + "".join(f"; {text}" for text in pairs)),
        ("accuracy", "fastrnn's max |y - y_ref| (output) and max |dx - dx_ref| (input gradient) "
                     "against the float64 NumPy reference on the same weights, input and dy"),
    ]
