"""One benchmark run, from parsed options to exit code, for either device.

:func:`run_session` takes the steps every run takes -- the timing settings, the items to run,
``--list``, whether the run can happen here, metadata and ceilings, the header, each item
measured and reported as it finishes, the closing lines, the ``--json``/``--markdown``/``--plot``
files and the exit code -- and asks a :class:`Mode` for each thing that differs between the CPU
mode (:class:`fastrnn.bench.run_cpu.CpuMode`) and the GPU mode
(:class:`fastrnn.bench.run_gpu.GpuMode`).
"""
from __future__ import annotations

import abc
import argparse
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from .ceilings import Roofline
from .plot import write_plot
from .report_json import json_safe, write_json, write_text
from .timing import Settings


@dataclass
class Session:
    """What a run knows as it goes; the mode reads it and adds to it."""
    args: argparse.Namespace
    argv: List[str]
    settings: Settings
    suite: str = ""
    items: list = field(default_factory=list)
    meta: Dict[str, object] = field(default_factory=dict)
    ceilings: Optional[Roofline] = None
    results: List[Dict[str, object]] = field(default_factory=list)  # JSON-safe, as they finish
    pyplot: object = None  # matplotlib.pyplot when --plot


class Mode(abc.ABC):
    """What one device's run does differently; a fresh instance serves one run."""
    settings: Settings    # the timing defaults
    gemm_n: int           # --gemm-n's default
    default_suite: str
    item_name: str        # what one item is called: "no {item_name} left to run"
    failure_rule: str     # what counts as a failure, for the FAILED line

    @abc.abstractmethod
    def check_options(self, args, parser: argparse.ArgumentParser) -> None:
        """Reject the other device's options (``parser.error``)."""

    @abc.abstractmethod
    def complete_options(self, session: Session, parser: argparse.ArgumentParser) -> None:
        """After the timing settings: the mode's own defaults and what options need."""

    @abc.abstractmethod
    def select(self, args) -> list:
        """The items to run, from --suite/--config and the filters."""

    @abc.abstractmethod
    def list_line(self, item, args) -> str:
        """One line of --list: an item and its forward work."""

    @abc.abstractmethod
    def start(self, session: Session, parser: argparse.ArgumentParser) -> Optional[int]:
        """Get ready to measure; the exit code when the run cannot happen here."""

    @abc.abstractmethod
    def describe(self, session: Session) -> Dict[str, object]:
        """The run's metadata (before the ceilings)."""

    @abc.abstractmethod
    def measure_ceilings(self, session: Session) -> Roofline:
        """The machine's ceilings for the items of this run."""

    @abc.abstractmethod
    def header(self, session: Session) -> str:
        """What is printed before the first item runs."""

    @abc.abstractmethod
    def run_item(self, item, session: Session) -> Dict[str, object]:
        """Measure one item; its result."""

    @abc.abstractmethod
    def report_item(self, index: int, result: Dict[str, object], seconds: float,
                    session: Session) -> None:
        """Say that item ``index`` (from 1) finished, with its result."""

    @abc.abstractmethod
    def finish(self, session: Session) -> None:
        """After the last item: what the metadata adds at the end."""

    @abc.abstractmethod
    def closing(self, session: Session) -> List[str]:
        """The lines printed after the last item."""

    @abc.abstractmethod
    def json_document(self, session: Session, complete: bool) -> Dict[str, object]:
        """The --json document of the results so far."""

    @abc.abstractmethod
    def markdown(self, session: Session) -> str:
        """The --markdown document."""

    @abc.abstractmethod
    def failures(self, results: List[Dict[str, object]]) -> List[str]:
        """What failed, one entry each."""


def run_session(mode: Mode, args, parser: argparse.ArgumentParser,
                argv: Sequence[str]) -> int:
    """Run the benchmark the options ask for on ``mode``'s device; the exit code."""
    mode.check_options(args, parser)
    session = Session(args, list(argv), timing_settings(parser, args, mode.settings,
                                                        mode.gemm_n, mode.default_suite))
    mode.complete_options(session, parser)
    session.items = mode.select(args)
    session.suite = "custom" if args.config else args.suite
    if not session.items:
        parser.error(f"no {mode.item_name} left to run (check --cells)")
    if args.list:
        for item in session.items:
            print(mode.list_line(item, args))
        return 0
    exit_code = mode.start(session, parser)
    if exit_code is not None:
        return exit_code

    session.meta = mode.describe(session)
    session.ceilings = mode.measure_ceilings(session)
    session.meta["ceilings"] = session.ceilings.to_dict()
    print(mode.header(session), flush=True)
    start = time.perf_counter()
    for index, item in enumerate(session.items, 1):
        began = time.perf_counter()
        result = mode.run_item(item, session)
        session.results.append(json_safe(result))
        mode.report_item(index, result, time.perf_counter() - began, session)
    session.meta["wall_s"] = round(time.perf_counter() - start, 3)
    mode.finish(session)
    print("\n".join(mode.closing(session)), flush=True)
    _write_files(mode, session)
    failed = mode.failures(session.results)
    if failed:
        print(f"FAILED ({mode.failure_rule}): " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


def _write_files(mode: Mode, session: Session) -> None:
    args = session.args
    if args.json:
        write_json(args.json, mode.json_document(session, complete=True))
        print(f"wrote {args.json}")
    if args.markdown:
        write_text(args.markdown, mode.markdown(session))
        print(f"wrote {args.markdown}")
    if args.plot:  # CPU mode only (the GPU mode rejects --plot)
        write_plot(args.plot, session.results, session.pyplot)
        print(f"wrote {args.plot}")


def timing_settings(parser: argparse.ArgumentParser, args, defaults: Settings, gemm_n: int,
                    suite: str) -> Settings:
    """The run's timing settings: options left unset take the mode's defaults, then the whole
    is checked."""
    for name in ("repeats", "min_repeats", "warmup", "warmup_s", "budget"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(defaults, name))
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
