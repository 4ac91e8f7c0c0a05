"""How long a call takes: one measurement loop for both devices, the clock its only difference.

:func:`measure` warms a call up, then times it until it has ``repeats`` runs or has spent its
budget (but at least ``min_repeats`` runs), with the garbage collector paused, and summarises the
times (:func:`summary`); :func:`measure_alternating` does the same for several implementations of
the same work at once, their timed runs taking turns (the RL suite's two sides). The clock says
what one run's time is:

- :class:`WallClock` (the CPU mode): ``time.perf_counter`` around the call, what a user pays;
- :class:`CudaEventClock` (the GPU mode): CUDA events around the call, each run started on an
  idle GPU (so the host's launch overhead counts, as it does for a single call).

Both loops stop on the host's wall clock, so a run's budget means the same on either device.
"""
from __future__ import annotations

import contextlib
import gc
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence


@dataclass
class Settings:
    repeats: int = 50        # most timed runs per measurement
    min_repeats: int = 3     # fewest timed runs, whatever the budget
    warmup: int = 2          # fewest untimed runs before timing (at least one) ...
    warmup_s: float = 0.2    # ... and the least time they take, unless a run is slow (below)
    budget: float = 1.0      # seconds of timed runs per measurement, once min_repeats are done


CPU_SETTINGS = Settings()
# A GPU row's calls take micro- to milliseconds: fewer warm-up seconds and a smaller budget
# still give dozens of runs.
GPU_SETTINGS = Settings(repeats=30, min_repeats=5, warmup=3, warmup_s=0.05, budget=0.25)


class WallClock:
    """Host wall clock around each call; the calls finish their work before returning."""

    def wait(self) -> None:
        """Nothing runs asynchronously on the CPU."""

    def time_call(self, call: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        call()
        return time.perf_counter() - t0

    def seconds(self, mark: float) -> float:
        return mark


class CudaEventClock:
    """CUDA events recorded around each call on torch's current stream. A call starts on an idle
    GPU (synchronize first); its time is read once all runs are done (no sync between runs)."""

    def __init__(self):
        import torch
        self._cuda = torch.cuda  # looked up per call, so a test can replace Event and synchronize

    def wait(self) -> None:
        self._cuda.synchronize()

    def time_call(self, call: Callable[[], object]):
        self._cuda.synchronize()
        begin = self._cuda.Event(enable_timing=True)
        end = self._cuda.Event(enable_timing=True)
        begin.record()
        call()
        end.record()
        return begin, end

    def seconds(self, mark) -> float:
        begin, end = mark
        return begin.elapsed_time(end) / 1e3


WALL_CLOCK = WallClock()


def event_timing_text(settings: Settings) -> str:
    """How the GPU mode times a row, in words (its header and JSON document say it)."""
    return (f"CUDA events around each call, each started on an idle GPU (synchronize first: "
            f"host launch overhead counts); warm-up >= {settings.warmup} runs and "
            f">= {settings.warmup_s:g} s; median of up to {settings.repeats} runs (at least "
            f"{settings.min_repeats}; {settings.budget:g} s budget); inputs rotate among 4 random "
            f"sets (2 when large); fwd = module(x) under torch.no_grad(); fwd+bwd = y, _ = "
            f"module(x); y.backward(dy), gradients set to None before each run, untimed")


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No garbage collection inside timed runs (collected once before)."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def measure(calls: Sequence[Callable[[], object]], settings: Settings, clock=WALL_CLOCK,
            prepare: Optional[Callable[[int], object]] = None) -> Dict[str, object]:
    """Warm up, then time runs until ``settings.repeats`` runs or ``settings.budget`` seconds.

    ``calls`` holds one call per input set; runs use them in turn (the GPU mode rotates its
    inputs so that no run finds them in L2 from the run before; the CPU mode has one).
    ``prepare(i)``, when given, runs untimed before each run of ``calls[i]`` (zeroing gradients).

    Warm-up runs at least ``warmup`` times and for at least ``warmup_s`` seconds (long enough
    for the thread pool of a BLAS used just before, by another peer, to stop spinning and give
    the cores back), but stops, even after a single run, once it has used the larger of
    ``warmup_s`` and a quarter of the budget, so that a slow call is not run needlessly.
    Returns the times in seconds with their statistics (:func:`summary`). One side of
    :func:`measure_alternating`.
    """
    return measure_alternating([calls], settings, clock, [prepare])[0]


def measure_alternating(sides: Sequence[Sequence[Callable[[], object]]], settings: Settings,
                        clock=WALL_CLOCK,
                        prepares: Optional[Sequence[Optional[Callable[[int], object]]]] = None
                        ) -> List[Dict[str, object]]:
    """:func:`measure` of several implementations of the same work (``sides``, each a list of
    calls as ``measure`` takes them, with its ``prepares[s]``), their timed runs alternating.

    Each side warms up in turn as ``measure`` does; then every round times one run of each side,
    in order, so that a change in the machine's load reaches all of them alike. A side stops at
    ``settings.repeats`` runs; the rounds stop once every side has ``settings.min_repeats`` runs
    and ``settings.budget`` seconds per side have been spent. Returns each side's
    :func:`summary`, in the order of ``sides``.
    """
    prepares = list(prepares) if prepares is not None else [None] * len(sides)
    with _gc_paused():
        warmups = [_warm_up(calls, settings, clock, prepare)
                   for calls, prepare in zip(sides, prepares)]
        marks: List[List[object]] = [[] for _ in sides]
        start = time.perf_counter()
        while any(len(m) < settings.repeats for m in marks):
            for calls, prepare, warmed, side_marks in zip(sides, prepares, warmups, marks):
                if len(side_marks) >= settings.repeats:
                    continue
                i = (warmed + len(side_marks)) % len(calls)
                if prepare is not None:
                    prepare(i)
                side_marks.append(clock.time_call(calls[i]))
            if (all(len(m) >= settings.min_repeats for m in marks)
                    and time.perf_counter() - start >= settings.budget * len(sides)):
                break
        clock.wait()
    return [summary([clock.seconds(mark) for mark in side_marks], warmed)
            for side_marks, warmed in zip(marks, warmups)]


def _warm_up(calls: Sequence[Callable[[], object]], settings: Settings, clock,
             prepare: Optional[Callable[[int], object]]) -> int:
    """The untimed runs before a measurement; returns how many ran."""
    start = time.perf_counter()
    warmups = 0
    while True:
        i = warmups % len(calls)
        if prepare is not None:
            prepare(i)
        calls[i]()
        clock.wait()
        warmups += 1
        elapsed = time.perf_counter() - start
        if elapsed >= max(settings.warmup_s, 0.25 * settings.budget):
            return warmups  # a slow call: one run (or the few that fit) is warm-up enough
        if warmups >= settings.warmup and elapsed >= settings.warmup_s:
            return warmups


def per_call(m: Dict[str, object], calls: int) -> Dict[str, object]:
    """Measurement ``m`` of runs that each made ``calls`` calls, as the time of one call."""
    return {**summary([t / calls for t in m["times_s"]], m["warmup"]), "calls_per_run": calls}


def summary(times: List[float], warmups: int) -> Dict[str, object]:
    """The statistics every measurement reports: median, minimum, quartiles, spread."""
    median = statistics.median(times)
    if len(times) >= 2:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    else:
        q1 = q3 = times[0]
    return {"times_s": times, "n": len(times), "warmup": warmups, "median_s": median,
            "min_s": min(times), "q1_s": q1, "q3_s": q3, "spread": (q3 - q1) / median}


# The FLOP rate each mode reports: GFLOP/s at the median and the best run (CPU), TFLOP/s at the
# median (GPU).
_RATE_UNITS = {"gflops": (1e9, True), "tflops": (1e12, False)}


def add_rates(m: Dict[str, object], flops: int, floor_s: float,
              unit: str = "gflops") -> Dict[str, object]:
    """Adds to measurement ``m`` its FLOP rate in ``unit`` and its floor fraction (floor time /
    median time: 1 at the floor)."""
    scale, with_best = _RATE_UNITS[unit]
    m[unit] = flops / m["median_s"] / scale
    if with_best:
        m[f"{unit}_best"] = flops / m["min_s"] / scale
    m["floor_fraction"] = floor_s / m["median_s"]
    return m
