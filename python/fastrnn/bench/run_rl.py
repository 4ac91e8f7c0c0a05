"""The RL suite (``--suite rl``, CPU): fastrnn.torch against torch.nn on the workloads of recurrent
reinforcement learning.

Each row (:class:`~fastrnn.bench.configs.RlRow`; the groups in
:data:`~fastrnn.bench.configs.RL_GROUPS`) builds both sides on the same weights and data
(:mod:`fastrnn.bench.rl_workloads`), checks fastrnn.torch's outputs and gradients against
torch.nn's, then times forward and forward+backward, the two sides' runs alternating
(:func:`fastrnn.bench.timing.measure_alternating`), on the wall clock (:func:`run_rl_row`). A row
reports torch.nn's median time over fastrnn.torch's, fastrnn.torch's fraction of the floor of its
work (the row's Config, by the conventions every CPU run uses) and the targets
(:data:`~fastrnn.bench.targets.RL_TARGET_RULE`), which are printed, never asserted.

:class:`RlMode` is a CPU mode (:class:`~fastrnn.bench.run_cpu.CpuMode`: the same metadata,
ceilings, machine fields and closing checks) with its own rows, table and documents. It needs
torch: without it the run exits with code 2 and one line saying so.
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional, Tuple

from .accuracy import RL_ACCURACY_CONVENTION, rl_accuracy, rl_failure
from .ceilings import FLOOR_CONVENTION, CpuCeilings
from .configs import BYTES_CONVENTION, FLOP_CONVENTION, RL_GROUPS, RlRow, select_rl_rows
from .formatting import NOISY_SPREAD
from .machine import collect_meta
from .peers import PEERS
from .report_json import rl_document
from .report_markdown import markdown_document, rl_table
from .report_text import format_header, rl_row, rl_table_head
from .rl_workloads import SIDES, build_sides
from .run_cpu import CpuMode, busy_warning, machine_fields, machine_markdown_fields
from .session import Session
from .targets import RL_TARGET_RULE, rl_row_targets, rl_summary_lines, rl_targets_summary
from .timing import Settings, add_rates, measure_alternating, per_call

MEASURED = ("fwd = the row's calls under torch.no_grad(); fwd+bwd = the same calls with autograd, "
            "then .backward() of the sum of their outputs (gradients of the parameters only, set "
            "to None before each run, untimed); both sides have the same weights and data")
FLOOR_NOTE = ("; of fastrnn.torch's time; the fwd+bwd floor counts the input gradient, as the "
              "convention does, which these rows do not ask for")
RATIO = "torch.nn median time / fastrnn.torch median time (> 1: fastrnn.torch is faster)"


def timing_text(settings: Settings) -> str:
    """How the RL suite times a row, in words (its header and JSON document say it)."""
    return (f"wall clock of the row's calls; each side warms up (>= {settings.warmup} runs and "
            f"{settings.warmup_s:g} s), then the two sides' timed runs alternate "
            f"(fastrnn.torch, torch.nn, fastrnn.torch, ...) until each has {settings.repeats} "
            f"runs or {2 * settings.budget:g} s are spent (at least {settings.min_repeats} runs "
            f"each); medians; a stream row's run is all its calls, reported per call")


def run_rl_row(row: RlRow, settings: Settings, ceilings: CpuCeilings, seed: int = 0,
               check_accuracy: bool = True) -> Dict[str, object]:
    """Check, then time one RL row on both sides; failures are recorded, not raised."""
    floor = ceilings.floor_times(row.work_counts(), row.config.dtype, row.config.whh_bytes())
    result: Dict[str, object] = {"row": row.to_dict(), "floor": floor,
                                 "sides": {name: {} for name in SIDES}, "ratio": {}}
    try:
        sides = build_sides(row, seed)
    except Exception as exc:
        result["error"] = f"setup: {type(exc).__name__}: {exc}"
        sides = {}
    if sides and check_accuracy:
        outputs = {}
        for name, side in sides.items():
            try:
                outputs[name] = side.results()
            except Exception as exc:
                result["sides"][name]["error"] = f"{type(exc).__name__}: {exc}"
        if len(outputs) == len(SIDES):
            result["accuracy"] = rl_accuracy(outputs[SIDES[0]], outputs[SIDES[1]])
    if sides and not any("error" in e for e in result["sides"].values()):
        _time_sides(row, sides, settings, result)
    entries = result["sides"]
    if all(kind in entries[name] for name in SIDES for kind in row.phases):
        result["ratio"] = {kind: entries["torch.nn"][kind]["median_s"]
                           / entries["fastrnn.torch"][kind]["median_s"] for kind in row.phases}
    result["targets"] = rl_row_targets(row, result["ratio"])
    return result


def _time_sides(row: RlRow, sides, settings: Settings, result: Dict[str, object]) -> None:
    """Each phase of ``row``, both sides' runs alternating; a stream's times per call."""
    for kind in row.phases:
        calls = [[getattr(sides[name], kind)] for name in SIDES]
        prepares = [sides[name].prepare if kind == "forward_backward" else None
                    for name in SIDES]
        try:
            measured = measure_alternating(calls, settings, prepares=prepares)
        except Exception as exc:
            result["error"] = f"{kind}: {type(exc).__name__}: {exc}"
            return
        floor = result["floor"][kind]
        per_run = row.calls // row.reported_calls  # > 1: a run's time is reported per call
        for name, m in zip(SIDES, measured):
            if per_run > 1:
                m = per_call(m, per_run)
            result["sides"][name][kind] = add_rates(m, floor["flops"], floor["floor_s"])


class RlMode(CpuMode):
    default_suite = "rl"
    item_name = "row"
    count_name = "row"
    failure_rule = "error, or non-finite fastrnn.torch output or gradient"

    def check_options(self, args, parser: argparse.ArgumentParser) -> None:
        other = [name for name, value in (
            ("--device cuda", args.device == "cuda"), ("--config", args.config),
            ("--dtype", args.dtype), ("--peers", args.peers), ("--plot", args.plot),
            ("--dtypes", args.dtypes), ("--algo", args.algo)) if value]
        if other:
            parser.error(f"{', '.join(other)}: not with --suite {args.suite} (its rows are "
                         "fixed: fastrnn.torch against torch.nn, float32, on the CPU; --cells "
                         "filters them)")

    def select(self, args) -> List[RlRow]:
        return select_rl_rows(args)

    def list_line(self, r: RlRow, args) -> str:
        c = r.work_counts()["forward"]
        per = "per call" if r.group == "stream" else "        "
        return (f"{r.label:40s} {r.group:6s} forward {per} {c['flops'] / 1e6:10.2f} MFLOP "
                f"{c['bytes'] / 1e6:8.2f} MB")

    def start(self, session: Session, parser: argparse.ArgumentParser) -> Optional[int]:
        why = PEERS["torch"].unavailable()
        if why is not None:
            print(f"python -m fastrnn.bench: error: --suite {session.suite} times fastrnn.torch "
                  f"against torch.nn and needs torch: {why}", file=sys.stderr)
            return 2
        import fastrnn.torch  # noqa: F401  (before any measurement, as in the CPU mode)
        return None

    def describe(self, session: Session) -> Dict[str, object]:
        meta = collect_meta(session.argv, "cpu")
        meta["peers"] = {"fastrnn.torch": PEERS["fastrnn.torch"].description(),
                         "torch.nn": PEERS["torch"].description()}
        return meta

    def measure_ceilings(self, session: Session) -> CpuCeilings:
        return CpuCeilings.measure([r.config for r in session.items], session.args.gemm_n)

    def header(self, session: Session) -> str:
        first = (f"fastrnn {session.meta['fastrnn_version']} RL benchmark: suite "
                 f"{session.suite!r}, {len(session.items)} row(s), fastrnn.torch against torch.nn")
        fields = [*machine_fields(session.meta), *self._fields(session),
                  ("runs", f"timed runs fastrnn.torch/torch.nn, fwd then fwd+bwd; '~' marks a "
                           f"noisy measurement (interquartile range > {NOISY_SPREAD:.0%} of the "
                           "median)"),
                  *busy_warning(session.meta)]
        return "\n".join([format_header(first, fields, width=10), "", *rl_table_head()])

    def _fields(self, session: Session) -> List[Tuple[str, str]]:
        """The header's and the Markdown report's fields after the machine's."""
        return [
            ("torch", session.meta["peers"]["torch.nn"]),
            *RL_GROUPS.items(),
            ("measured", MEASURED),
            ("timing", timing_text(session.settings)),
            ("FLOPs", FLOP_CONVENTION + "; per call of a row's layer or cell (a cell's call: "
                                        "T = 1), times the calls a reported time covers"),
            ("bytes", BYTES_CONVENTION),
            *session.ceilings.describe(),
            ("floor", FLOOR_CONVENTION + FLOOR_NOTE),
            ("ratio", RATIO),
            ("accuracy", RL_ACCURACY_CONVENTION),
            ("targets", RL_TARGET_RULE),
        ]

    def run_item(self, row: RlRow, session: Session) -> Dict[str, object]:
        return run_rl_row(row, session.settings, session.ceilings, seed=session.args.seed,
                          check_accuracy=not session.args.no_accuracy)

    def report_item(self, index: int, result: Dict[str, object], seconds: float,
                    session: Session) -> None:
        print(rl_row(session.results[-1]), flush=True)  # the JSON-safe copy, as the GPU mode

    def closing(self, session: Session) -> List[str]:
        results = session.results
        lines = ["", *rl_summary_lines(rl_targets_summary(results))]
        flagged = [f"{r['row']['label']}: {f}" for r in results
                   for f in (r.get("accuracy") or {}).get("flags", []) if not f.startswith("NON")]
        if flagged:
            lines.append("ACCURACY WARNING: " + "; ".join(flagged))
        return lines + super().closing(session)

    def json_document(self, session: Session, complete: bool) -> Dict[str, object]:
        return rl_document(session.meta, session.settings, session.suite, session.results,
                           {"timing": timing_text(session.settings), "measured": MEASURED})

    def markdown(self, session: Session) -> str:
        meta = session.meta
        title = f"fastrnn {meta['fastrnn_version']}, suite {session.suite!r}, {meta['date_utc']}"
        fields = [*machine_markdown_fields(meta), *self._fields(session)]
        return markdown_document(title, meta["argv"], fields, ["", *rl_table(session.results)])

    def failures(self, results: List[Dict[str, object]]) -> List[str]:
        return [f"{r['row']['label']}: {why}" for r in results for why in [rl_failure(r)] if why]
