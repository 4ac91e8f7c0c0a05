"""What the machine can do, measured at start-up, and the floor it puts under a piece of work.

Each device measures two ceilings: a GEMM rate per dtype and a memory bandwidth.

- :class:`CpuCeilings`: the GFLOP/s of a large square GEMM through fastrnn's own BLAS, and the
  GB/s of fastrnn's threads re-reading a buffer the size of one ``W_hh`` (rounded to a power of
  two), since weights that fit in a cache are re-read from it; both with the thread count in use.
- :class:`GpuCeilings`: the TFLOP/s of a large torch.matmul per dtype (float32 with TF32 off) and
  the HBM bandwidth of a large device-to-device copy.

Both are a :class:`Roofline`: the floor of some work is the longer of its FLOPs at the GEMM rate
and its bytes at the bandwidth (:func:`floor_times`), whichever device it runs on.
"""
from __future__ import annotations

import abc
import contextlib
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import fastrnn
from fastrnn import _core

from .configs import GPU_DTYPES, Config, itemsize, work_counts
from .formatting import fmt_bytes
from .machine import tf32_off, tf32_state

FLOOR_CONVENTION = ("floor = max(FLOPs / GEMM ceiling, bytes / read bandwidth at the size of one "
                    "W_hh); flr% = floor / median time (100%: at the floor)")
GPU_FLOOR_CONVENTION = (
    "floor = max(FLOPs / GEMM peak of the row's dtype, bytes / HBM bandwidth), both measured "
    "at start-up on this device (torch.matmul n^3, float32 with TF32 off; device-to-device "
    "copy, bytes read + written); floor% = floor / median time (above 100%: the bytes came from "
    "L2, not HBM); FLOPs and bytes as above with the row's element size; packed rows count "
    "sum(lengths) rows instead of T*B (W_hh is still re-read T = max length times)")

GEMM_N = 2048                # the square GEMM of the GFLOP/s ceiling: large enough to reach peak
GEMM_REPS = 4                # timed GEMMs; the best counts
READ_REPS = 10               # timed reads of each buffer; the best counts
READ_MIN_BYTES = 64 << 10    # smaller buffers are measured at this size (they sit in L1/L2)
CEILING_ATTEMPTS = 5         # a ceiling is re-measured until two attempts agree within 3%

GPU_GEMM_N = 8192            # the square torch.matmul of the GEMM peak
GPU_GEMM_REPS = 10
GPU_COPY_BYTES = 1 << 30     # the device-to-device copy of the bandwidth ceiling (read + write)
GPU_COPY_REPS = 20


class Roofline(abc.ABC):
    """Ceilings of a machine, and the floor they put under a piece of work."""

    @abc.abstractmethod
    def rates(self, dtype: str, working_set: int) -> Tuple[float, float, Dict[str, float]]:
        """FLOP/s and bytes/s for work in ``dtype`` that re-reads ``working_set`` bytes, and the
        same two ceilings under the names (and units) a floor records them with."""

    @abc.abstractmethod
    def to_dict(self) -> Dict[str, object]:
        """The ceilings as the run's metadata records them."""

    @abc.abstractmethod
    def describe(self) -> List[Tuple[str, str]]:
        """``(title, text)`` of each ceiling, for the run's header."""

    def floor_times(self, counts: Dict[str, Dict[str, int]], dtype: str,
                    working_set: int = 0) -> Dict[str, Dict[str, object]]:
        """Per phase of ``counts`` (FLOPs and bytes): the time each takes at its ceiling and the
        larger, the floor; ``bound`` says which."""
        flops_per_s, bytes_per_s, named = self.rates(dtype, working_set)
        out = {}
        for phase, c in counts.items():
            compute_s, memory_s = c["flops"] / flops_per_s, c["bytes"] / bytes_per_s
            out[phase] = {**c, **named, "compute_s": compute_s, "memory_s": memory_s,
                          "floor_s": max(compute_s, memory_s),
                          "bound": "compute" if compute_s >= memory_s else "memory"}
        return out


def floor_times(config: Config, ceilings: Roofline, dtype: Optional[str] = None,
                rows: Optional[int] = None) -> Dict[str, Dict[str, object]]:
    """Per phase: FLOPs and bytes of ``config`` run in ``dtype`` (default its own) over ``rows``
    sequence steps (default T*B), the time each takes at its ceiling, the larger (the floor)."""
    dtype = dtype or config.dtype
    return ceilings.floor_times(work_counts(config, rows, dtype), dtype,
                                config.whh_bytes(itemsize(dtype)))


# ---- CPU: fastrnn's BLAS and threads --------------------------------------------------------

def read_probe_bytes(nbytes: int) -> int:
    """The buffer size the bandwidth for a working set of ``nbytes`` is measured at: the nearest
    power of two (so configurations share measurements), at least ``READ_MIN_BYTES``."""
    return max(READ_MIN_BYTES, 1 << round(math.log2(max(nbytes, 1))))


@dataclass
class CpuCeilings(Roofline):
    """GEMM GFLOP/s per dtype and read GB/s per buffer size (keyed by :func:`read_probe_bytes`),
    each with the method that measured it, at ``threads`` fastrnn threads."""
    threads: int
    gemm: Dict[str, Dict[str, object]]
    read: Dict[int, Dict[str, object]]

    @classmethod
    def measure(cls, configs: Sequence[Config], gemm_n: int = GEMM_N) -> "CpuCeilings":
        """The GEMM ceiling of each dtype that runs and the read bandwidth at each W_hh size,
        with the thread count in use."""
        dtypes = sorted({"float32"} | {c.dtype for c in configs})
        sizes = sorted({read_probe_bytes(c.whh_bytes()) for c in configs})
        return cls(threads=fastrnn.get_num_threads(),
                   gemm={dt: _measure_gemm(dt, gemm_n, GEMM_REPS) for dt in dtypes},
                   read={size: _measure_read(size, READ_REPS) for size in sizes})

    def gemm_gflops(self, dtype: str) -> float:
        return self.gemm[dtype]["gflops"]

    def read_gbs(self, nbytes: int) -> float:
        return self.read[read_probe_bytes(nbytes)]["gbs"]

    def rates(self, dtype: str, working_set: int) -> Tuple[float, float, Dict[str, float]]:
        gflops, gbs = self.gemm_gflops(dtype), self.read_gbs(working_set)
        return gflops * 1e9, gbs * 1e9, {"gemm_gflops": gflops, "read_gbs": gbs}

    def to_dict(self) -> Dict[str, object]:
        return {"threads": self.threads, "gemm": self.gemm,
                "read": {str(size): m for size, m in sorted(self.read.items())}}

    def describe(self) -> List[Tuple[str, str]]:
        reads = sorted(self.read.items())
        first_gemm, first_read = next(iter(self.gemm.values())), reads[0][1]
        return [
            ("GEMM", ", ".join(f"{dt} {m['gflops']:.1f} GFLOP/s" for dt, m in self.gemm.items())
             + f" ({first_gemm['n']}^3, best of {first_gemm['reps']}; {first_gemm['method']}); "
               f"{self.threads} fastrnn threads"),
            ("bandwidth", "read " + ", ".join(f"{fmt_bytes(size)} {m['gbs']:.1f} GB/s"
                                              for size, m in reads)
             + f" (best of {first_read['reps']}; {first_read['method']})"),
        ]


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


# ---- GPU: torch on the current CUDA device --------------------------------------------------

@dataclass
class GpuCeilings(Roofline):
    """The HBM bandwidth (``hbm["gbs"]``) and the GEMM peak of each dtype
    (``gemm[dtype]["tflops"]``), each with the method that measured it."""
    hbm: Dict[str, object]
    gemm: Dict[str, Dict[str, object]]

    @classmethod
    def measure(cls, dtypes: Sequence[str], gemm_n: int = GPU_GEMM_N,
                copy_bytes: int = GPU_COPY_BYTES) -> "GpuCeilings":
        """HBM bandwidth (a device-to-device copy of ``copy_bytes``: bytes read + written over the
        best time) and the GEMM peak of each dtype (torch.matmul of two random n x n matrices;
        TF32 off for float32), on random data, once per run."""
        import torch
        device = torch.device("cuda", torch.cuda.current_device())
        gen = torch.Generator(device=device).manual_seed(12345)
        hbm = _measure_copy(device, gen, copy_bytes)
        gemm = {dtype: _measure_matmul(device, gen, dtype, gemm_n)
                for dtype in sorted(set(dtypes) | {"float32"}, key=GPU_DTYPES.index)}
        torch.cuda.empty_cache()
        return cls(hbm=hbm, gemm=gemm)

    def rates(self, dtype: str, working_set: int) -> Tuple[float, float, Dict[str, float]]:
        tflops, gbs = self.gemm[dtype]["tflops"], self.hbm["gbs"]
        return tflops * 1e12, gbs * 1e9, {"gemm_tflops": tflops, "hbm_gbs": gbs}

    def to_dict(self) -> Dict[str, object]:
        return {"hbm": self.hbm, "gemm": self.gemm}

    def describe(self) -> List[Tuple[str, str]]:
        return [
            ("HBM", f"{self.hbm['gbs']:.0f} GB/s ({self.hbm['method']})"),
            ("GEMM peak", ", ".join(f"{dt} {m['tflops']:.4g} TFLOP/s"
                                    for dt, m in self.gemm.items())
             + f" (torch.matmul {next(iter(self.gemm.values()))['n']}^3, best of "
               f"{GPU_GEMM_REPS}; float32 with TF32 off)"),
        ]


def _event_times_ms(fn: Callable[[], object], reps: int, warmup: int) -> List[float]:
    """Back-to-back CUDA-event times (ms) of ``fn`` after ``warmup`` runs: a probe's throughput,
    unlike :func:`timing.measure`, which starts every run on an idle GPU."""
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


def _measure_copy(device, gen, copy_bytes: int) -> Dict[str, object]:
    import torch
    src = torch.randn(copy_bytes // 4, generator=gen, device=device)
    dst = torch.empty_like(src)
    times = _event_times_ms(lambda: dst.copy_(src), GPU_COPY_REPS, warmup=3)
    moved = 2 * (copy_bytes // 4) * 4
    return {"gbs": moved / (min(times) / 1e3) / 1e9,
            "gbs_median": moved / (statistics.median(times) / 1e3) / 1e9,
            "bytes_moved": moved, "reps": GPU_COPY_REPS,
            "method": f"torch copy_ of {fmt_bytes(copy_bytes)} float32 device to device, "
                      "bytes read + written over the best of the CUDA-event times"}


def _measure_matmul(device, gen, dtype: str, n: int) -> Dict[str, object]:
    import torch
    with tf32_off() if dtype == "float32" else contextlib.nullcontext():
        a = torch.randn(n, n, generator=gen, device=device).to(getattr(torch, dtype))
        b = torch.randn(n, n, generator=gen, device=device).to(getattr(torch, dtype))
        c = torch.empty_like(a)
        times = _event_times_ms(lambda: torch.matmul(a, b, out=c), GPU_GEMM_REPS, warmup=3)
        tf32 = tf32_state()["matmul"]
    flops = 2 * n ** 3
    return {"tflops": flops / (min(times) / 1e3) / 1e12,
            "tflops_median": flops / (statistics.median(times) / 1e3) / 1e12,
            "n": n, "reps": GPU_GEMM_REPS, "tf32": tf32,
            "method": "torch.matmul, best of the CUDA-event times"}
