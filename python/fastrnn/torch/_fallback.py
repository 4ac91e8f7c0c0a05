"""Where fastrnn.torch runs torch's own implementation instead of fastrnn's kernels.

A whole call the kernels cannot run (:func:`fallback_reason` says why: a device or dtype without
kernels, autocast, tracing for TorchScript or ONNX) runs ``torch.nn``'s forward, warning once per
reason (:class:`FallbackWarning`). Everything else runs on the kernels: torch.func transforms,
forward-mode AD and double backward included (``_ops``, ``_batching``, ``_tangent``).
"""
from __future__ import annotations

import sys
import threading
import warnings
from typing import Optional

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from .. import cuda as _cuda_api
from .._validate import FLOAT_DTYPES

# The dtypes each backend has kernels for: the C++ core's float types, and fastrnn.cuda's.
CORE_DTYPES = tuple(getattr(torch, dt.name) for dt in FLOAT_DTYPES)
CUDA_DTYPES = tuple(getattr(torch, name) for name in _cuda_api.DTYPES)


class FallbackWarning(RuntimeWarning):
    """A fastrnn.torch module ran torch.nn's own implementation for a call (the message says why)."""


_warned: set = set()
_warned_lock = threading.Lock()


def _warn_once(reason: str) -> None:
    with _warned_lock:
        if reason in _warned:
            return
        _warned.add(reason)
    # stacklevel: this function, its caller (a module's forward or a layer's backward), then
    # torch's frames that called it.
    warnings.warn(f"fastrnn.torch: {reason}; running torch.nn's implementation instead "
                  f"(warned once)", FallbackWarning, stacklevel=4)


# ---- whole calls: why the kernels cannot run one ---------------------------------------------

def _dtype_names(dtypes) -> str:
    names = [str(d).replace("torch.", "") for d in dtypes]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def _in_onnx_export() -> bool:
    onnx = sys.modules.get("torch.onnx")  # never imported by us: it costs time
    return onnx is not None and onnx.is_in_onnx_export()


def _state_tensors(hx) -> list:
    """The tensors of an hx argument (a tensor, a pair, or None)."""
    if hx is None:
        return []
    if isinstance(hx, Tensor):
        return [hx]
    return [h for h in hx if isinstance(h, Tensor)] if isinstance(hx, (tuple, list)) else []


def _torch_would_refuse(data, hx, weights) -> bool:
    """Calls torch itself refuses (mismatched dtypes or devices, wrong types, sparse or nested
    tensors): they go to torch, silently, for its result or error."""
    if not isinstance(data, Tensor):
        return True
    strided = torch.strided  # not sparse or mkldnn
    for w in weights:
        if (not isinstance(w, Tensor) or w.dtype != data.dtype or w.device != data.device
                or w.layout != strided):
            return True
    return any(t.layout != strided or t.is_nested for t in [data] + _state_tensors(hx))


def _no_kernels(data: Tensor) -> Optional[str]:
    """Why no backend has kernels for ``data``'s device and dtype (None: one has)."""
    if data.device.type == "cuda":
        # Under torch.compile the backend's check (an import, a lock, a driver query) is not
        # traced: a CUDA tensor means a device, and a build without the backend raises its
        # reason from the operator instead of falling back.
        why_not = None if torch.compiler.is_compiling() else _cuda_api.unavailable_reason()
        if why_not is not None:
            return f"no CUDA kernels here ({why_not})"
        if data.dtype not in CUDA_DTYPES:
            return f"no CUDA kernels for dtype {data.dtype} ({_dtype_names(CUDA_DTYPES)} only)"
    elif data.device.type != "cpu":
        return f"no kernels for device '{data.device.type}' in this build"
    elif data.dtype not in CORE_DTYPES:
        return f"no kernels for dtype {data.dtype} ({_dtype_names(CORE_DTYPES)} only)"
    return None


def fallback_reason(input, hx, weights) -> Optional[str]:
    """Why the kernels cannot run this call of a module with parameters ``weights`` (None: they
    can; "": torch refuses the call, see :func:`_torch_would_refuse`)."""
    data = input.data if isinstance(input, PackedSequence) else input
    if _torch_would_refuse(data, hx, weights):
        return ""
    reason = _no_kernels(data)
    if reason is not None:
        return reason
    if torch.is_autocast_enabled(data.device.type):
        return "autocast is enabled (the core computes in the tensors' own dtype)"
    if torch.jit.is_tracing() or _in_onnx_export():
        return "torch.jit.trace and ONNX export record torch.nn's own operators"
    return None


# ---- the valid steps of padded sequences, reversed (the reverse direction) ----------------

def reverse_valid_steps(seq: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """Reverse each sequence's first lengths[b] steps in time (padding stays where it is)."""
    if lengths is None:
        return seq.flip(0)
    T = seq.shape[0]
    t = torch.arange(T, device=lengths.device).unsqueeze(1)
    index = torch.where(t < lengths, lengths - 1 - t, t).to(seq.device)  # (T, B)
    return seq.gather(0, index.unsqueeze(2).expand_as(seq))
