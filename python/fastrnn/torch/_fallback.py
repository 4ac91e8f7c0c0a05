"""Where fastrnn.torch runs torch's own implementation instead of fastrnn's kernels.

Two cases. A whole call the kernels cannot run (:func:`fallback_reason` says why: a device or
dtype without kernels, autocast, ``torch.func``, forward-mode AD, tracing for TorchScript or
ONNX) runs ``torch.nn``'s forward, warning once per reason (:class:`FallbackWarning`). A double
backward (``create_graph=True``) recomputes one layer and direction with torch's own kernels
(:func:`torch_layer_grads`), whose graph torch can differentiate again.
"""
from __future__ import annotations

import sys
import threading
import warnings
from typing import List, Optional

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from .. import cuda as _cuda_api
from .._cells import MODES, has_cell_state
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
    if not torch.compiler.is_compiling():
        if torch._C._functorch.maybe_current_level() is not None:
            return "torch.func transforms (grad, vmap, jacrev, ...) are not in the core"
        if torch.autograd.forward_ad._current_level >= 0 and any(
                torch.autograd.forward_ad.unpack_dual(t).tangent is not None
                for t in [data, *weights] + _state_tensors(hx)):
            return "forward-mode AD (dual tensors) is not in the core"
    return None


# ---- torch's own single layer (the double-backward path) ---------------------------------------
_VF_LAYERS = {mode: getattr(torch._VF, mode) for mode in MODES}  # torch names them as we do


def _reverse_valid_steps(seq: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """Reverse each sequence's first lengths[b] steps in time (padding stays where it is)."""
    if lengths is None:
        return seq.flip(0)
    T = seq.shape[0]
    t = torch.arange(T, device=lengths.device).unsqueeze(1)
    index = torch.where(t < lengths, lengths - 1 - t, t).to(seq.device)  # (T, B)
    return seq.gather(0, index.unsqueeze(2).expand_as(seq))


def torch_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse):
    """One layer and direction with torch's kernels, the core's conventions (lengths, reverse)."""
    has_bias = b_ih is not None
    params = [w_ih, w_hh] + ([b_ih, b_hh] if has_bias else []) + ([w_hr] if w_hr is not None else [])
    if reverse:
        x = _reverse_valid_steps(x, lengths)
    order = torch.arange(x.shape[1])
    if lengths is not None:  # packed input wants lengths sorted in decreasing order
        sorted_lengths, order = torch.sort(lengths, descending=True)
        x, h0 = x[:, order], h0[order]
        c0 = c0[order] if c0 is not None else None
    hx = (h0.unsqueeze(0), c0.unsqueeze(0)) if has_cell_state(mode) else h0.unsqueeze(0)
    vf = _VF_LAYERS[mode]
    if lengths is None:
        out = vf(x, hx, params, has_bias, 1, 0.0, False, False, False)
        y = out[0]
    else:
        data, batch_sizes = torch._VF._pack_padded_sequence(x, sorted_lengths, False)
        out = vf(data, batch_sizes, hx, params, has_bias, 1, 0.0, False, False)
        y = torch._VF._pad_packed_sequence(out[0], batch_sizes, False, 0.0, x.shape[0])[0]
        inverse = torch.argsort(order)
        y = y[:, inverse]
        out = (y,) + tuple(state[:, inverse] for state in out[1:])
    if reverse:
        y = _reverse_valid_steps(y, lengths)
    states = tuple(state[0] for state in out[1:])
    return (y,) + states


def torch_layer_grads(saved, mode: str, reverse: bool, dy, dh_n, dc_n, needs_grad):
    """Differentiable gradients for a double backward: torch's own layer, recomputed, then
    torch.autograd.grad with create_graph=True. ``saved``: the nine tensor inputs of a layer
    call (x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths)."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths = saved
    outputs = torch_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
    grad_outputs = (dy, dh_n, dc_n)[:len(outputs)]
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None]
    wanted = [i for i, (t, need) in enumerate(zip(saved[:8], needs_grad)) if t is not None and need]
    result: List[Optional[Tensor]] = [None] * len(saved)
    if pairs and wanted:
        grads = torch.autograd.grad([o for o, _ in pairs], [saved[i] for i in wanted],
                                    [g for _, g in pairs], create_graph=True, allow_unused=True)
        for i, g in zip(wanted, grads):
            result[i] = g
    return result
