"""fastrnn's CUDA backend from Python: availability, devices, and the layer calls on device arrays.

The kernels live in the extension module ``fastrnn._cuda``, built when the build machine had a
CUDA compiler and cuBLAS (``build_info()["cuda"]``). It is imported only when a GPU is used, so
``import fastrnn`` never needs a GPU, a driver or cuBLAS; :func:`is_available` (also
``fastrnn.cuda_available()``) says whether this machine can run it.

Two ways in:

- ``fastrnn.torch`` modules on CUDA tensors (float32, float16, bfloat16), zero-copy, on torch's
  current stream;
- ``fastrnn.functional.layer_forward`` / ``layer_backward`` on any arrays exposing ``__dlpack__``
  on a CUDA device (torch, CuPy, ...): results come back as arrays of the same library on the same
  device (torch tensors for torch, CuPy arrays for CuPy, else :class:`fastrnn._cuda.DeviceArray`,
  which any library takes through ``from_dlpack``).

``algo``: ``"standard"`` (cuBLAS GEMM per step + fused pointwise kernel), ``"persistent"`` (one
cooperative kernel holding W_hh in shared memory for all steps; batch <= 16, no projection, W_hh
must fit on chip) or ``"auto"`` (persistent where it fits, else standard).
"""
from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["is_available", "is_compiled", "device_count", "device_info", "unavailable_reason",
           "ALGOS", "DTYPES", "ALGO_CODES", "DTYPE_CODES"]

ALGOS = ("standard", "persistent", "auto")
DTYPES = ("float32", "float16", "bfloat16")  # codes 0, 1, 2 of the extension
ALGO_CODES = {name: code for code, name in enumerate(ALGOS)}    # the extension's codes
DTYPE_CODES = {name: code for code, name in enumerate(DTYPES)}
_ALGO_CODES, _DTYPE_CODES = ALGO_CODES, DTYPE_CODES  # their former names (fastrnn.torch uses them)

_lock = threading.Lock()
_module: Any = None
_load_error: Optional[str] = None


def is_compiled() -> bool:
    """Whether this build of fastrnn contains the CUDA backend (whatever this machine has)."""
    return importlib.util.find_spec("fastrnn._cuda") is not None


def _preload_cublas() -> None:
    """Make cuBLAS loadable for the extension: a copy already in the process (torch's) serves;
    else the nvidia-cublas wheel's, from site-packages (the extension's RPATH points there too)."""
    try:
        import nvidia  # namespace package of NVIDIA's wheels
    except ImportError:
        return
    for root in getattr(nvidia, "__path__", []):
        for sub in ("cu13", "cublas", "cu12"):
            lib_dir = os.path.join(root, sub, "lib")
            lt = sorted(glob.glob(os.path.join(lib_dir, "libcublasLt.so.*")))
            blas = sorted(glob.glob(os.path.join(lib_dir, "libcublas.so.*")))
            if lt and blas:
                try:
                    ctypes.CDLL(lt[0], mode=ctypes.RTLD_GLOBAL)
                    ctypes.CDLL(blas[0], mode=ctypes.RTLD_GLOBAL)
                except OSError:
                    continue
                return


def _load():
    """The extension module, imported once; None when it cannot be (see unavailable_reason)."""
    global _module, _load_error
    with _lock:
        if _module is not None or _load_error is not None:
            return _module
        if not is_compiled():
            _load_error = "this build of fastrnn has no CUDA backend (built without nvcc or cuBLAS)"
            return None
        _preload_cublas()
        try:
            from . import _cuda  # noqa: PLC0415  (loaded on first use, never at import)
        except ImportError as exc:
            _load_error = f"the CUDA backend could not be loaded: {exc}"
            return None
        _module = _cuda
        return _module


_UNKNOWN = "?"
_reason: Optional[str] = _UNKNOWN  # decided once per process: devices do not come and go


def unavailable_reason() -> Optional[str]:
    """Why :func:`is_available` is False (None when it is True)."""
    global _reason
    if _reason is _UNKNOWN:  # after the first call, a plain read (cheap; traceable by Dynamo)
        module = _load()
        if module is None:
            _reason = _load_error
        elif module.device_count() == 0:
            _reason = "no CUDA device (or no NVIDIA driver) on this machine"
        else:
            _reason = None
    return _reason


def is_available() -> bool:
    """Whether fastrnn can run on a GPU here: the backend is built, loads, and sees a device."""
    return unavailable_reason() is None


def device_count() -> int:
    """CUDA devices visible to fastrnn (0 without the backend, a driver or a device)."""
    module = _load()
    return 0 if module is None else int(module.device_count())


def device_info(device: int = 0) -> Dict[str, Any]:
    """Properties of one device: name, compute capability, multiprocessors, memory sizes."""
    return dict(_require().device_info(device))


def _require():
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"fastrnn CUDA: {reason}")
    return _module


def build_details() -> Dict[str, Any]:
    """What the CUDA part of ``fastrnn.build_info()`` reports (loads the backend if built)."""
    if not is_compiled():
        return {"cuda": False}
    module = _load()
    if module is None:
        return {"cuda": True, "cuda_loadable": False, "cuda_error": _load_error}
    return {"cuda": True, "cuda_loadable": True,
            "cuda_architectures": list(module.compiled_architectures()),
            "cuda_runtime": module.runtime_version(), "cuda_driver": module.driver_version(),
            "cublas": module.cublas_version(), "cuda_devices": int(module.device_count())}


def torch_allows_tf32() -> bool:
    """torch's switch for TF32 in float32 matrix products (``allow_tf32``, or its successor
    ``fp32_precision``), which fastrnn's float32 GEMMs follow for torch tensors."""
    import torch
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    if precision == "tf32":
        return True
    if precision == "ieee":
        return False
    return bool(matmul.allow_tf32)


# ---- what one layer call needs -------------------------------------------------------------------

def check_algo(algo: str) -> str:
    if algo not in ALGO_CODES:
        raise ValueError(f"algo: expected one of {ALGOS}, got {algo!r}")
    return algo


def dtype_code(dtype_name: str, argument: str = "x") -> int:
    if dtype_name not in DTYPE_CODES:
        from .errors import DtypeError
        raise DtypeError(f"{argument}: expected dtype float32, float16 or bfloat16 on CUDA, got "
                         f"{dtype_name}")
    return DTYPE_CODES[dtype_name]


@dataclass(frozen=True)
class Plan:
    """Sizes of one layer call on the GPU: the algo it runs with and the bytes it needs."""
    algo: int              # 0 standard, 1 persistent
    reserve_bytes: int
    forward_scratch: int
    backward_scratch: int


def plan(cell: int, dtype: int, T: int, B: int, I: int, H: int, P: int, algo: str,
         device: int, training: bool) -> Plan:
    module = _require()
    code = module.resolve_algo(cell, dtype, T, B, I, H, P, ALGO_CODES[check_algo(algo)], device)
    fwd, bwd = module.workspace_bytes(cell, dtype, T, B, I, H, P, training, code)
    per_slot, per_step = module.reserve_widths(cell, H, P, dtype)
    reserve = (T + 1) * B * per_slot + T * B * per_step if training else 0
    return Plan(code, reserve, fwd, bwd)


def reserve_widths(cell: int, H: int, P: int, dtype: int) -> Tuple[int, int]:
    """(per_slot, per_step) bytes of the reserve: (T+1)*B*per_slot + T*B*per_step (arithmetic:
    needs the backend, not a device)."""
    module = _load()
    if module is None:
        raise RuntimeError(f"fastrnn CUDA: {_load_error}")
    return tuple(module.reserve_widths(cell, H, P, dtype))  # type: ignore[return-value]


# Tests set this: every buffer fastrnn allocates for a CUDA call (outputs, reserve, scratch) is
# filled with 0xFF bytes -- NaN in every float type -- before the kernels run, so an element a
# kernel forgets to write shows as NaN, and scratch read before it is written poisons the result.
_poison = False


def _set_poison(enabled: bool) -> None:
    global _poison
    _poison = bool(enabled)


def poisoning() -> bool:
    return _poison


def forward(cell: int, dtype: int, shape: Tuple[int, int, int, int, int], reverse: bool,
            plan_: Plan, allow_tf32: bool, device: int, stream: int, ptrs: Dict[str, int]) -> None:
    """Queue one layer's forward. ``shape`` is (T, B, I, H, P); ``ptrs`` maps x, h0, c0, w_ih,
    w_hh, b_ih, b_hh, w_hr, lengths, y, h_n, c_n, reserve, workspace and optionally resets ((T, B)
    bytes 0/1 where the state restarts from zeros) to device addresses (0: absent)."""
    T, B, I, H, P = shape
    _require().layer_forward(cell, dtype, T, B, I, H, P, reverse, plan_.algo, allow_tf32, device,
                             stream, **ptrs)


def backward(cell: int, dtype: int, shape: Tuple[int, int, int, int, int], reverse: bool,
             plan_: Plan, allow_tf32: bool, device: int, stream: int,
             ptrs: Dict[str, int]) -> None:
    """Queue one layer's backward; ``ptrs`` as for :func:`forward` without y, h_n, c_n (resets,
    when given, the forward's), plus dy, dh_n, dc_n and the gradients dx, dh0, dc0, dw_ih, dw_hh,
    db_ih, db_hh, dw_hr."""
    T, B, I, H, P = shape
    _require().layer_backward(cell, dtype, T, B, I, H, P, reverse, plan_.algo, allow_tf32,
                              device, stream, **ptrs)


def gradient_names() -> List[str]:
    return ["dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh", "dw_hr"]
