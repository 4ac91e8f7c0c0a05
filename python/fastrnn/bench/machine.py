"""The machine a run happens on: what it is, how busy, and the GPU's float32 math mode.

:func:`collect_meta` describes a run for either device: fastrnn's build, the software that
matters there (NumPy and the BLAS libraries on the CPU; torch, CUDA and cuDNN on the GPU), the
machine, when, and the options. The CPU mode also samples how busy other processes keep the CPUs
(:func:`cpu_busy_by_others`); the GPU mode says why it cannot run (:func:`gpu_unavailable_reason`)
and switches TF32 off for both sides of a float32 row (:func:`tf32_off`).
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import platform
import sys
import time
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

import fastrnn

BUSY_WARNING = 0.25  # warn when other processes use more than this fraction of the CPUs
ENV_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE",
            "OPENBLAS_VERBOSE")


def collect_meta(argv: Sequence[str], device: str = "cpu") -> Dict[str, object]:
    """Everything a reader needs to know where the numbers come from (``argv``: the options).
    The CPU mode's metadata also says how busy the CPUs were just before the start."""
    info = fastrnn.build_info()
    cpu = device == "cpu"
    return {
        "fastrnn_version": fastrnn.__version__,
        "build_info": info,
        **(_cpu_software(info) if cpu else _gpu_software()),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        **({"machine": platform.machine()} if cpu else {}),
        "cpu_model": _cpu_model(),
        **(_cpu_state() if cpu else {}),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(argv),
    }


def _cpu_software(info: Dict[str, object]) -> Dict[str, object]:
    return {"blas_kernel": _kernel_name(info.get("blas_config", "")),
            "numpy_version": np.__version__, "numpy_blas": numpy_blas_name()}


def _cpu_state() -> Dict[str, object]:
    """The CPUs, the threads each BLAS library runs, and how busy the machine is right now."""
    return {"threads": _threads_summary(_loaded_blas_libraries()), "loadavg_start": loadavg(),
            "cpu_busy_start": cpu_busy_by_others()}


def _gpu_software() -> Dict[str, object]:
    """torch's current CUDA device, and the torch, CUDA and cuDNN versions."""
    import torch
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    device = {"index": index, "name": props.name, "capability": f"{props.major}.{props.minor}",
              "multiprocessors": props.multi_processor_count,
              "memory_bytes": props.total_memory,
              "l2_bytes": getattr(props, "L2_cache_size", None)}
    return {"device": device, "torch_version": torch.__version__,
            "torch_cuda": torch.version.cuda, "cudnn_version": torch.backends.cudnn.version(),
            "cudnn_enabled": bool(torch.backends.cudnn.enabled)}


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
        info.update(_openblas_threads(lib))
        libs.append(info)
    return libs


def _openblas_threads(lib) -> Dict[str, object]:
    """Thread count and core name of a loaded OpenBLAS, whichever symbol prefix it exports."""
    for prefix in ("scipy_openblas", "openblas"):
        for suffix in ("64_", ""):
            threads = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            if threads is None:
                continue
            threads.restype = ctypes.c_int
            out: Dict[str, object] = {"threads": int(threads())}
            core = getattr(lib, f"{prefix}_get_corename{suffix}", None)
            if core is not None:
                core.restype = ctypes.c_char_p
                value = core()
                out["core"] = value.decode() if value else None
            return out
    return {}


def numpy_blas_name() -> Optional[str]:
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


def loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# ---- GPU -----------------------------------------------------------------------------------

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
    why = fastrnn.cuda.unavailable_reason()
    if why is not None:
        reasons.append(f"fastrnn.cuda: {why}")
    if not reasons and not torch.backends.cudnn.is_available():
        reasons.append("torch has no cuDNN (torch.backends.cudnn.is_available() is False)")
    return "; ".join(reasons) or None


@contextlib.contextmanager
def tf32_off() -> Iterator[None]:
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


def tf32_state() -> Dict[str, bool]:
    import torch
    return {"matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn": bool(torch.backends.cudnn.allow_tf32)}
