"""Drop-in replacements for ``torch.nn.RNN``, ``torch.nn.LSTM`` and ``torch.nn.GRU`` on the fastrnn core.

    import fastrnn.torch
    lstm = fastrnn.torch.LSTM(32, 64, num_layers=2, bidirectional=True)   # torch.nn.LSTM's arguments
    y, (h_n, c_n) = lstm(x)                                               # torch.nn.LSTM's results
    model = fastrnn.torch.convert(model)     # swap every torch.nn RNN/LSTM/GRU inside a model

The classes subclass torch.nn's (``isinstance(m, torch.nn.LSTM)`` holds), keep its parameters under
the same names, and return what it returns for every input form (padded, batch_first, unbatched,
``PackedSequence``, with or without ``hx``). Each layer and direction runs forward and BPTT backward
in the C++ core; stacking, bidirection and inter-layer dropout (torch's RNG, so the masks are
torch's) are torch operations around it.

Data movement: tensors reach the core as NumPy views of their storage and results come back the same
way (no copies of inputs, weights or results). The copies that remain are layout changes the core
needs: a ``batch_first`` input is made time-major once per layer (the output goes back as a
transposed view, as torch returns it); a ``PackedSequence`` is padded on the way in and packed on
the way out; a bidirectional layer's two outputs are concatenated; and in backward the gradient
of such a transposed, concatenated or packed output is made contiguous per direction.

CUDA tensors (float32, float16, bfloat16) run on fastrnn's CUDA backend (``fastrnn.cuda``) the same
way: the kernels read the tensors' storage and write outputs torch allocates, on torch's current
stream, with float32 products in TF32 only where torch allows it; the modules take one keyword
beyond torch.nn's, ``algo`` ("auto", "standard" or "persistent", the CUDA algorithm).

Where the core cannot run a call -- tensors on a device or with a dtype this build has no kernels for,
autocast, ``torch.func`` transforms, forward-mode AD, a double backward, ``torch.jit.trace`` and
ONNX export (so that the recorded graph holds torch's portable operators) -- the module runs
``torch.nn``'s own implementation instead and warns once, saying why. Calls torch.nn refuses go to
torch.nn too, so they raise exactly its errors; empty inputs (B = 0) give its empty results.
What torch.nn does not check, the module checks itself and refuses with a RuntimeError naming
it: parameters whose shapes no longer fit the module (replaced, or its attributes changed after
construction), and a ``PackedSequence`` whose batch sizes are not non-increasing and
non-negative, do not add up to its data's rows, or whose indices are no permutation (torch's
unpacking writes out of bounds, and its LSTM kernel reads past states and data it never
checks on packed input).

``torch.compile``: the layer kernels are registered as the custom operators
``fastrnn::layer_forward`` and ``fastrnn::layer_backward`` with shape functions, so compiled models
keep them as single nodes (``fullgraph=True`` works). TorchDynamo refuses to trace any
``torch.nn.RNN/LSTM/GRU`` instance unless ``torch._dynamo.config.allow_rnn`` is set; importing this
module sets it (when TorchDynamo is first imported), which also lets TorchDynamo trace torch.nn's own
recurrent modules.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import threading
import warnings
from typing import List, Optional, Tuple

import numpy as np

try:
    import torch
except ImportError as exc:  # torch is an optional dependency of fastrnn
    raise ImportError("fastrnn.torch needs PyTorch: pip install 'fastrnn[torch]' (or any torch "
                      ">= 2.4)") from exc
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _core
from . import cuda as _cuda_api
from .functional import MODES, num_gates

__all__ = ["RNN", "LSTM", "GRU", "convert", "FallbackWarning"]

_CELL_CODES = {mode: code for code, mode in enumerate(MODES)}
_TORCH_MODES = {"RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu", "LSTM": "lstm", "GRU": "gru"}
_CORE_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_ALGO_CODES = {name: code for code, name in enumerate(_cuda_api.ALGOS)}


class FallbackWarning(RuntimeWarning):
    """A fastrnn.torch module ran torch.nn's own implementation for a call (the message says why)."""


_warned: set = set()
_warned_lock = threading.Lock()


def _warn_once(reason: str) -> None:
    with _warned_lock:
        if reason in _warned:
            return
        _warned.add(reason)
    warnings.warn(f"fastrnn.torch: {reason}; running torch.nn's implementation instead "
                  f"(warned once)", FallbackWarning, stacklevel=4)


# ---- one layer, one direction, on the core ---------------------------------------------------
# Tensors cross as NumPy views of their storage (detach() only drops autograd; nothing is copied),
# results come back through torch.from_numpy. Absent outputs travel as empty tensors because a custom
# operator's outputs must all be tensors (each its own: outputs may not alias one another).

def _np(t: Optional[Tensor]):
    if t is None:
        return None
    if t.requires_grad:
        t = t.detach()
    try:
        return t.numpy()
    except RuntimeError:  # a negative-bit view (torch._neg_view) must be resolved first
        return t.resolve_neg().numpy()


_threads_lock = threading.Lock()


def _follow_torch_threads() -> None:
    """Use as many threads as torch does (the pool is shared, see _share_torch_thread_pool).

    The count is process-wide in OpenBLAS but per thread in torch: change torch's thread count
    only while no fastrnn call runs in another thread."""
    n = torch.get_num_threads()
    if n != _core.get_num_threads():
        with _threads_lock:
            _core.set_num_threads(n)


def _core_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, cell: int, reverse: bool,
                  save: bool, algo: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    if x.is_cuda:
        return _cuda_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, cell, reverse,
                             save, algo)
    _follow_torch_threads()
    y, h_n, c_n, reserve = _core.layer_forward(
        cell, _np(x), _np(h0), _np(c0), _np(w_ih), _np(w_hh), _np(b_ih), _np(b_hh), _np(w_hr),
        _np(lengths), reverse, save)
    return (torch.from_numpy(y), torch.from_numpy(h_n),
            x.new_empty(0) if c_n is None else torch.from_numpy(c_n),
            x.new_empty(0) if reserve is None else torch.from_numpy(reserve))


def _core_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reserve, dy, dh_n, dc_n,
                   cell: int, reverse: bool, algo: int) -> List[Tensor]:
    if x.is_cuda:
        return _cuda_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reserve, dy,
                              dh_n, dc_n, cell, reverse, algo)
    _follow_torch_threads()
    grads = _core.layer_backward(
        cell, _np(x), _np(h0), _np(c0), _np(w_ih), _np(w_hh), _np(b_ih), _np(b_hh), _np(w_hr),
        _np(lengths), reverse, _np(reserve), _np(dy), _np(dh_n), _np(dc_n))
    return [x.new_empty(0) if g is None else torch.from_numpy(g) for g in grads]


# ---- the same on CUDA tensors: fastrnn's CUDA kernels (fastrnn.cuda) --------------------------
# Zero-copy: the kernels read the tensors' storage and write outputs torch allocated, all on
# torch's current stream of the tensors' device; float32 GEMMs use TF32 only when torch allows it.
# The reserve is raw bytes (uint8); scratch comes from torch's caching allocator for each call.

def _cuda_empty(shape, dtype, device) -> Tensor:
    t = torch.empty(shape, dtype=dtype, device=device)
    if _cuda_api.poisoning() and t.numel():  # tests: unwritten elements show as NaN
        t.view(torch.uint8).fill_(0xFF)
    return t


def _addr(t: Optional[Tensor]) -> int:
    return 0 if t is None else int(t.data_ptr())


def _cuda_problem(x, w_hh, w_hr, cell: int):
    T, B, I = x.shape
    H = w_hh.shape[0] // num_gates(MODES[cell])
    P = w_hr.shape[0] if w_hr is not None else 0
    device = x.device.index if x.device.index is not None else torch.cuda.current_device()
    return (T, B, I, H, P), device, _CUDA_DTYPE_CODES[x.dtype]


def _cuda_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, cell, reverse, save, algo):
    shape, device, dtype = _cuda_problem(x, w_hh, w_hr, cell)
    T, B, I, H, P = shape
    R = P if P else H
    plan = _cuda_api.plan(cell, dtype, T, B, I, H, P, _cuda_api.ALGOS[algo], device, save)
    y = _cuda_empty((T, B, R), x.dtype, x.device)
    h_n = _cuda_empty((B, R), x.dtype, x.device)
    c_n = _cuda_empty((B, H), x.dtype, x.device) if c0 is not None else x.new_empty(0)
    reserve = (_cuda_empty((plan.reserve_bytes,), torch.uint8, x.device) if save
               else x.new_empty(0))
    workspace = _cuda_empty((plan.forward_scratch,), torch.uint8, x.device)
    lengths_dev = lengths.to(x.device, torch.int64) if lengths is not None else None
    _cuda_api.forward(cell, dtype, shape, reverse, plan, _cuda_api.torch_allows_tf32(), device,
                      torch.cuda.current_stream(x.device).cuda_stream,
                      {"x": _addr(x), "h0": _addr(h0), "c0": _addr(c0), "w_ih": _addr(w_ih),
                       "w_hh": _addr(w_hh), "b_ih": _addr(b_ih), "b_hh": _addr(b_hh),
                       "w_hr": _addr(w_hr), "lengths": _addr(lengths_dev), "y": _addr(y),
                       "h_n": _addr(h_n), "c_n": _addr(c_n) if c0 is not None else 0,
                       "reserve": _addr(reserve) if save else 0, "workspace": _addr(workspace)})
    return y, h_n, c_n, reserve


def _cuda_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reserve, dy, dh_n, dc_n,
                   cell, reverse, algo) -> List[Tensor]:
    shape, device, dtype = _cuda_problem(x, w_hh, w_hr, cell)
    T, B, I, H, P = shape
    plan = _cuda_api.plan(cell, dtype, T, B, I, H, P, _cuda_api.ALGOS[algo], device, True)
    inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    grads = [_cuda_empty(t.shape, x.dtype, x.device) if t is not None else None for t in inputs]
    workspace = _cuda_empty((plan.backward_scratch,), torch.uint8, x.device)
    lengths_dev = lengths.to(x.device, torch.int64) if lengths is not None else None
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = grads
    _cuda_api.backward(cell, dtype, shape, reverse, plan, _cuda_api.torch_allows_tf32(), device,
                       torch.cuda.current_stream(x.device).cuda_stream,
                       {"x": _addr(x), "h0": _addr(h0), "c0": _addr(c0), "w_ih": _addr(w_ih),
                        "w_hh": _addr(w_hh), "b_ih": _addr(b_ih), "b_hh": _addr(b_hh),
                        "w_hr": _addr(w_hr), "lengths": _addr(lengths_dev),
                        "reserve": _addr(reserve), "dy": _addr(dy), "dh_n": _addr(dh_n),
                        "dc_n": _addr(dc_n), "dx": _addr(dx), "dh0": _addr(dh0),
                        "dc0": _addr(dc0), "dw_ih": _addr(dw_ih), "dw_hh": _addr(dw_hh),
                        "db_ih": _addr(db_ih), "db_hh": _addr(db_hh), "dw_hr": _addr(dw_hr),
                        "workspace": _addr(workspace)})
    return [x.new_empty(0) if g is None else g for g in grads]


# Custom operators: what torch.compile sees. Eager calls skip the dispatcher (it costs ~20 us per
# call with autograd) and go through _LayerFunction; both run the functions above.

@torch.library.custom_op("fastrnn::layer_forward", mutates_args=())
def _layer_forward_op(x: Tensor, h0: Tensor, c0: Optional[Tensor], weight_ih: Tensor,
                      weight_hh: Tensor, bias_ih: Optional[Tensor], bias_hh: Optional[Tensor],
                      weight_hr: Optional[Tensor], lengths: Optional[Tensor], cell: int,
                      reverse: bool, save: bool, algo: int
                      ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, h_n, c_n or empty, reserve or empty) of one layer and direction."""
    return _core_forward(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths,
                         cell, reverse, save, algo)


@_layer_forward_op.register_fake
def _(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths, cell, reverse,
      save, algo):
    T, B = x.shape[0], x.shape[1]
    H = weight_hh.shape[0] // num_gates(MODES[cell])
    R = weight_hh.shape[1]
    P = weight_hr.shape[0] if weight_hr is not None else 0
    c_n = x.new_empty((B, H)) if c0 is not None else x.new_empty(0)
    if save and x.device.type == "cuda":  # bytes (the CUDA reserve mixes float and the dtype)
        per_slot, per_step = _cuda_api.reserve_widths(cell, H, P, _CUDA_DTYPE_CODES[x.dtype])
        reserve = x.new_empty(((T + 1) * B * per_slot + T * B * per_step,), dtype=torch.uint8)
    elif save:
        per_slot, per_step = _core.reserve_widths(cell, H, P)
        reserve = x.new_empty(((T + 1) * B * per_slot + T * B * per_step,))
    else:
        reserve = x.new_empty(0)
    return x.new_empty((T, B, R)), x.new_empty((B, R)), c_n, reserve


@torch.library.custom_op("fastrnn::layer_backward", mutates_args=())
def _layer_backward_op(x: Tensor, h0: Tensor, c0: Optional[Tensor], weight_ih: Tensor,
                       weight_hh: Tensor, bias_ih: Optional[Tensor], bias_hh: Optional[Tensor],
                       weight_hr: Optional[Tensor], lengths: Optional[Tensor], reserve: Tensor,
                       dy: Tensor, dh_n: Tensor, dc_n: Optional[Tensor], cell: int,
                       reverse: bool, algo: int) -> List[Tensor]:
    """Gradients (x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr); absent: empty."""
    return _core_backward(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths,
                          reserve, dy, dh_n, dc_n, cell, reverse, algo)


@_layer_backward_op.register_fake
def _(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths, reserve, dy, dh_n,
      dc_n, cell, reverse, algo):
    return [torch.empty_like(t) if t is not None else x.new_empty(0)
            for t in (x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)]


# ---- autograd --------------------------------------------------------------------------------
_NUM_TENSOR_INPUTS = 9  # x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths


def _layer_grads(saved: Tuple, reserve: Tensor, cell: int, reverse: bool, algo: int, dy, dh_n,
                 dc_n, needs_grad) -> List[Optional[Tensor]]:
    """Gradients of the nine tensor inputs of a layer call (None where not needed or absent)."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths = saved
    if torch.is_grad_enabled():  # create_graph=True: the core's backward is not differentiable
        _warn_once("double backward (create_graph=True) is not in the core")
        return _torch_layer_grads(saved, MODES[cell], reverse, dy, dh_n, dc_n, needs_grad)
    dy = x.new_zeros(x.shape[0], x.shape[1], h0.shape[1]) if dy is None else dy.contiguous()
    dh_n = torch.zeros_like(h0) if dh_n is None else dh_n.contiguous()
    if c0 is not None:
        dc_n = torch.zeros_like(c0) if dc_n is None else dc_n.contiguous()
    else:
        dc_n = None
    if torch.compiler.is_compiling():
        grads = _layer_backward_op(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reserve,
                                   dy, dh_n, dc_n, cell, reverse, algo)
    else:
        grads = _core_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reserve, dy,
                               dh_n, dc_n, cell, reverse, algo)
    inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    return [g if (t is not None and need) else None
            for g, t, need in zip(grads, inputs, needs_grad)] + [None]


def _torch_layer_grads(saved, mode: str, reverse: bool, dy, dh_n, dc_n, needs_grad):
    """Differentiable gradients for a double backward: torch's own layer, recomputed, then
    torch.autograd.grad with create_graph=True."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths = saved
    outputs = _torch_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
    grad_outputs = (dy, dh_n, dc_n)[:len(outputs)]
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None]
    wanted = [i for i, (t, need) in enumerate(zip(saved[:8], needs_grad)) if t is not None and need]
    result: List[Optional[Tensor]] = [None] * _NUM_TENSOR_INPUTS
    if pairs and wanted:
        grads = torch.autograd.grad([o for o, _ in pairs], [saved[i] for i in wanted],
                                    [g for _, g in pairs], create_graph=True, allow_unused=True)
        for i, g in zip(wanted, grads):
            result[i] = g
    return result


class _LayerFunction(torch.autograd.Function):
    """Eager autograd node of one layer and direction (the custom operator's twin)."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, cell, reverse, save,
                algo):
        y, h_n, c_n, reserve = _core_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths,
                                             cell, reverse, save, algo)
        ctx.saved = save
        if save:  # the reserve too, so that saved-tensor hooks (checkpoint, offload) see it
            ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reserve)
            ctx.cell, ctx.reverse, ctx.algo = cell, reverse, algo
        if c0 is None:
            ctx.mark_non_differentiable(c_n)
        return y, h_n, c_n

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n):
        if not ctx.saved:
            raise RuntimeError("fastrnn.torch: this layer ran without saving for backward")
        *saved, reserve = ctx.saved_tensors
        grads = _layer_grads(tuple(saved), reserve, ctx.cell, ctx.reverse, ctx.algo, dy, dh_n,
                             dc_n, ctx.needs_input_grad[:8])
        return (*grads, None, None, None, None)


def _op_setup_context(ctx, inputs, output):
    *tensors, cell, reverse, save, algo = inputs
    ctx.cell, ctx.reverse, ctx.algo = cell, reverse, algo
    ctx.save_for_backward(*tensors, output[3])
    ctx.has_cell = tensors[2] is not None


def _op_backward(ctx, dy, dh_n, dc_n, d_reserve):
    *saved, reserve = ctx.saved_tensors
    grads = _layer_grads(tuple(saved), reserve, ctx.cell, ctx.reverse, ctx.algo, dy, dh_n,
                         dc_n if ctx.has_cell else None, ctx.needs_input_grad[:8])
    return (*grads, None, None, None, None)


_layer_forward_op.register_autograd(_op_backward, setup_context=_op_setup_context)


def _layer(mode: str, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse: bool,
           algo: int = _ALGO_CODES["auto"]):
    """One layer and direction through the core: (y (T,B,R), h_n (B,R), c_n (B,H) or None).
    ``algo`` (a code of fastrnn.cuda.ALGOS) matters on CUDA only."""
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    args = tuple(t.contiguous() if t is not None else None for t in tensors)
    cell = _CELL_CODES[mode]
    if torch.compiler.is_compiling():
        y, h_n, c_n, _ = _layer_forward_op(*args, lengths, cell, reverse, save, algo)
    elif save:
        y, h_n, c_n = _LayerFunction.apply(*args, lengths, cell, reverse, save, algo)
    else:  # no gradient wanted: no autograd node either
        y, h_n, c_n, _ = _core_forward(*args, lengths, cell, reverse, save, algo)
    return y, h_n, (c_n if c0 is not None else None)


# ---- torch's own single layer (the double-backward path) ---------------------------------------
_VF_LAYERS = {"rnn_tanh": torch._VF.rnn_tanh, "rnn_relu": torch._VF.rnn_relu,
              "lstm": torch._VF.lstm, "gru": torch._VF.gru}


def _reverse_valid_steps(seq: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """Reverse each sequence's first lengths[b] steps in time (padding stays where it is)."""
    if lengths is None:
        return seq.flip(0)
    T = seq.shape[0]
    t = torch.arange(T, device=lengths.device).unsqueeze(1)
    index = torch.where(t < lengths, lengths - 1 - t, t).to(seq.device)  # (T, B)
    return seq.gather(0, index.unsqueeze(2).expand_as(seq))


def _torch_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse):
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
    hx = (h0.unsqueeze(0), c0.unsqueeze(0)) if mode == "lstm" else h0.unsqueeze(0)
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


# ---- the modules -------------------------------------------------------------------------------

class _FastRNNMixin:
    """The forward of RNN, LSTM and GRU: torch.nn's checks and input handling, fastrnn's kernels.

    Mixed in before the torch.nn class, so ``super().forward`` is torch's implementation (the
    fallback) and everything else (parameters, state_dict, ``_apply``, repr) is torch's.

    One argument beyond torch.nn's: ``algo`` (keyword; also a plain attribute, so it can be set
    later, and absent from modules made by :func:`convert`, which run ``"auto"``): the CUDA
    algorithm, ``"auto"``, ``"standard"`` or ``"persistent"`` (see ``fastrnn.cuda``). The CPU
    core has one algorithm and ignores it.
    """

    def __init__(self, *args, algo: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.algo = _cuda_api.check_algo(algo)

    def _fallback_reason(self, data, hx) -> Optional[str]:
        """Why the core cannot run this call (None: it can). Calls that torch itself would refuse
        (mismatched dtypes or devices, wrong types) also go to torch, silently, for its error."""
        tensors = [data, *self._flat_weights]
        if not isinstance(data, Tensor):
            return ""
        dtype, device = data.dtype, data.device
        strided = torch.strided  # not sparse or mkldnn: those get torch's result or error
        for w in self._flat_weights:
            if (not isinstance(w, Tensor) or w.dtype != dtype or w.device != device
                    or w.layout != strided):
                return ""
        for t in [data] + _state_tensors(hx):
            if t.layout != strided or t.is_nested:
                return ""
        if data.device.type == "cuda":
            # Under torch.compile the backend's check (an import, a lock, a driver query) is not
            # traced: a CUDA tensor means a device, and a build without the backend raises its
            # reason from the operator instead of falling back.
            why_not = None if torch.compiler.is_compiling() else _cuda_api.unavailable_reason()
            if why_not is not None:
                return f"no CUDA kernels here ({why_not})"
            if data.dtype not in _CUDA_DTYPE_CODES:
                return (f"no CUDA kernels for dtype {data.dtype} (float32, float16 and bfloat16 "
                        f"only)")
        elif data.device.type != "cpu":
            return f"no kernels for device '{data.device.type}' in this build"
        elif data.dtype not in _CORE_DTYPES:
            return f"no kernels for dtype {data.dtype} (float32 and float64 only)"
        if torch.is_autocast_enabled(data.device.type):
            return "autocast is enabled (the core computes in the tensors' own dtype)"
        if torch.jit.is_tracing() or _in_onnx_export():
            return "torch.jit.trace and ONNX export record torch.nn's own operators"
        if not torch.compiler.is_compiling():
            if torch._C._functorch.maybe_current_level() is not None:
                return "torch.func transforms (grad, vmap, jacrev, ...) are not in the core"
            if torch.autograd.forward_ad._current_level >= 0 and any(
                    torch.autograd.forward_ad.unpack_dual(t).tangent is not None
                    for t in tensors + _state_tensors(hx)):
                return "forward-mode AD (dual tensors) is not in the core"
        return None

    def forward(self, input, hx=None):
        self._update_flat_weights()
        mode = _TORCH_MODES.get(self.mode)
        if mode not in self._cells:  # a mode attribute changed after construction: torch.nn's
            return super().forward(input, hx)  # forward decides (by the class, or it refuses)
        packed = isinstance(input, PackedSequence)
        reason = self._fallback_reason(input.data if packed else input, hx)
        if reason is not None:
            if reason:
                _warn_once(reason)
            return super().forward(input, hx)
        orig_input, orig_hx = input, hx

        # torch.nn's input handling and checks. Malformed calls go to torch.nn itself, so that
        # they raise exactly what it raises.
        is_lstm = mode == "lstm"
        D = 2 if self.bidirectional else 1
        sorted_indices = unsorted_indices = batch_sizes = None
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch_size = batch_sizes[0]
            if hx is not None and not _well_formed_hx(hx, is_lstm, rank=3):
                if is_lstm and _well_formed_hx(hx, True, rank=None):
                    # torch.nn's LSTM checks no packed call: its kernel reads past such states
                    raise RuntimeError(f"{type(self).__name__}: for a PackedSequence input, hx "
                                       f"and cx should be 3-D but got ({hx[0].dim()}-D, "
                                       f"{hx[1].dim()}-D) tensors")
                return super().forward(orig_input, orig_hx)
        else:
            if input.dim() not in (2, 3) or input.numel() == 0:  # torch errors, or empty results
                return super().forward(orig_input, orig_hx)
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            data = input if is_batched else input.unsqueeze(batch_dim)
            max_batch_size = data.size(0) if self.batch_first else data.size(1)
            if hx is not None:
                if not _well_formed_hx(hx, is_lstm, rank=3 if is_batched else 2):
                    return super().forward(orig_input, orig_hx)
                if not is_batched:
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1)) if is_lstm else hx.unsqueeze(1)
        if hx is None:
            shape = (self.num_layers * D, max_batch_size)
            state_size = self.proj_size if self.proj_size > 0 else self.hidden_size
            h0 = torch.zeros(*shape, state_size, dtype=data.dtype, device=data.device)
            hx = (h0, torch.zeros(*shape, self.hidden_size, dtype=data.dtype,
                                  device=data.device)) if is_lstm else h0
        else:
            hx = self.permute_hidden(hx, sorted_indices)
        if packed and is_lstm:  # torch.nn's LSTM checks no packed call: this comes first
            self._check_packed(input)
        self.check_forward_args(data, hx, batch_sizes)
        if packed and not is_lstm:  # after torch.nn's checks, which RNN and GRU make
            self._check_packed(input)
        if packed and batch_sizes[0] == 0:  # no sequences at all: torch.nn's empty results
            return super().forward(orig_input, orig_hx)
        states = hx if is_lstm else (hx,)
        if not all(h.dtype == data.dtype and h.device == data.device for h in states):
            return super().forward(orig_input, orig_hx)  # torch raises its own error for this
        self._check_weights(mode)

        # Time-major padded input for the core.
        lengths = None
        if packed:
            x, lengths = _packed_to_padded(data, batch_sizes)
        else:
            x = data.transpose(0, 1) if self.batch_first else data
        y, h_n, c_n = self._run_layers(mode, x, states[0], states[1] if is_lstm else None,
                                       lengths, batch_sizes)

        hidden = (h_n, c_n) if is_lstm else h_n
        if packed:
            y_data = _padded_to_packed(y, lengths)
            return (PackedSequence(y_data, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden(hidden, unsorted_indices))
        if self.batch_first:
            y = y.transpose(0, 1)
        if not is_batched:
            y = y.squeeze(batch_dim)
            hidden = (h_n.squeeze(1), c_n.squeeze(1)) if is_lstm else h_n.squeeze(1)
        return y, hidden

    def _check_packed(self, packed: PackedSequence) -> None:
        problem = _packed_problem(*packed)
        if problem:  # torch's unpacking writes out of bounds for some of them
            raise RuntimeError(f"{type(self).__name__}: PackedSequence: {problem}")

    def _check_weights(self, mode: str) -> None:
        """The parameters fit the module's sizes. torch.nn does not check them (its kernels
        raise, broadcast a bias, or read past a weight), so neither would the fallback: a
        RuntimeError, as torch's kernels raise, naming the first parameter that does not fit."""
        D = 2 if self.bidirectional else 1
        H, P = self.hidden_size, self.proj_size
        R = P if P > 0 else H
        GH = num_gates(mode) * H
        per = 2 + (2 if self.bias else 0) + (1 if P > 0 else 0)  # tensors per layer, direction
        weights, names = self._flat_weights, self._flat_weights_names
        if len(weights) != self.num_layers * D * per:
            raise RuntimeError(
                f"{type(self).__name__}: the module has the parameters {names}, but its "
                f"attributes (num_layers={self.num_layers}, bidirectional={self.bidirectional}, "
                f"bias={self.bias}, proj_size={P}) want {self.num_layers * D * per}; were they "
                f"changed after construction?")
        for i, w in enumerate(weights):  # in torch.nn's order: ih, hh, [b_ih, b_hh], [hr]
            k = i % per
            if k == 0:
                shape = (GH, self.input_size if i < D * per else R * D)
            elif k == 1:
                shape = (GH, R)
            elif P > 0 and k == per - 1:
                shape = (P, H)
            else:
                shape = (GH,)
            if w.shape != shape:
                raise RuntimeError(
                    f"{type(self).__name__}: parameter {names[i]}: expected shape {shape} "
                    f"(input_size={self.input_size}, hidden_size={H}, proj_size={P}, "
                    f"num_layers={self.num_layers}, bidirectional={self.bidirectional}), "
                    f"got {tuple(w.shape)}")

    def _run_layers(self, mode, x, h0, c0, lengths, batch_sizes):
        """Every layer and direction, time-major; dropout between layers as torch applies it
        (on the packed data when the input was packed, so the masks are torch's)."""
        D = 2 if self.bidirectional else 1
        if self.training and self.num_layers > 1 and self.dropout != 0 \
                and not 0 <= self.dropout <= 1:  # an attribute changed after construction
            raise RuntimeError(f"{type(self).__name__}: dropout probability has to be between 0 "
                               f"and 1, but got {self.dropout}")
        weights = self._flat_weights
        per_direction = len(weights) // (self.num_layers * D)
        algo = _ALGO_CODES[_cuda_api.check_algo(getattr(self, "algo", "auto"))]
        layer_input = x
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            layer_input = layer_input.contiguous()  # once for both directions (batch_first input)
            outputs = []
            for direction in range(D):
                idx = layer * D + direction
                w = weights[idx * per_direction:(idx + 1) * per_direction]
                w_ih, w_hh = w[0], w[1]
                b_ih, b_hh = (w[2], w[3]) if self.bias else (None, None)
                w_hr = w[-1] if self.proj_size > 0 else None
                y, h, c = _layer(mode, layer_input, h0[idx], c0[idx] if c0 is not None else None,
                                 w_ih, w_hh, b_ih, b_hh, w_hr, lengths, direction == 1, algo)
                outputs.append(y)
                h_n.append(h)
                if c is not None:
                    c_n.append(c)
            layer_output = outputs[0] if D == 1 else torch.cat(outputs, 2)
            if self.dropout != 0 and self.training and layer < self.num_layers - 1:
                if batch_sizes is None:
                    layer_output = torch.nn.functional.dropout(layer_output, self.dropout, True)
                else:
                    data = _padded_to_packed(layer_output, lengths)
                    data = torch.nn.functional.dropout(data, self.dropout, True)
                    layer_output = _packed_to_padded(data, batch_sizes)[0]
            layer_input = layer_output
        return layer_input, torch.stack(h_n), (torch.stack(c_n) if c_n else None)


# Packing and unpacking read the batch sizes' values, which torch.compile cannot trace (their
# shapes are data). torch's own pad_packed_sequence / pack_padded_sequence are functions TorchDynamo
# never traces, so under torch.compile each such call runs eagerly between compiled regions.
def _packed_to_padded(data: Tensor, batch_sizes: Tensor) -> Tuple[Tensor, Tensor]:
    """(padded (T, B, *) in the packed (sorted) batch order, lengths (B,) int64)."""
    return pad_packed_sequence(PackedSequence(data, batch_sizes), total_length=batch_sizes.size(0))


def _padded_to_packed(padded: Tensor, lengths: Tensor) -> Tensor:
    """The packed data of a padded (T, B, *) batch whose lengths are sorted, longest first."""
    return pack_padded_sequence(padded, lengths, enforce_sorted=True).data


def _packed_problem(data: Tensor, batch_sizes: Tensor, sorted_indices: Optional[Tensor],
                    unsorted_indices: Optional[Tensor]) -> str:
    """What is wrong with a PackedSequence ('' if nothing) that torch.nn's packed path does not
    check: batch_sizes a 1-D CPU int64 tensor of non-increasing, non-negative sizes (as
    pack_padded_sequence makes them) that add up to the rows of data; sorted_indices and
    unsorted_indices (each may be None) permutations of the batch, and one the other's inverse
    when both are given (PackedSequence inverts whatever it is given, leaving entries of a
    non-permutation uninitialised)."""
    if (batch_sizes.dtype != torch.int64 or batch_sizes.dim() != 1
            or batch_sizes.device.type != "cpu" or batch_sizes.layout != torch.strided):
        return (f"batch_sizes: expected a 1-D CPU int64 tensor, got a {batch_sizes.dim()}-D "
                f"{batch_sizes.device.type} {batch_sizes.dtype} tensor")
    sizes = _np(batch_sizes)  # NumPy's small-array operations cost less than torch's
    if sizes[-1] < 0 or (sizes[1:] > sizes[:-1]).any():
        return (f"batch_sizes: expected non-increasing, non-negative sizes, got "
                f"{sizes[:10].tolist()}{' ...' if sizes.size > 10 else ''}")
    total = int(sizes.sum())
    if data.dim() == 2 and data.size(0) != total:  # another rank: check_forward_args says so
        return f"data has {data.size(0)} rows, but batch_sizes add up to {total}"
    B = int(sizes[0])
    given = {}  # torch.nn accepts either index tensor alone (a PackedSequence may hold only one)
    for name, t in (("sorted_indices", sorted_indices), ("unsorted_indices", unsorted_indices)):
        if t is None:
            continue
        if (not isinstance(t, Tensor) or t.dtype != torch.int64 or t.shape != (B,)
                or t.device.type != "cpu" or t.layout != torch.strided):
            got = (f"a {tuple(t.shape)} {t.dtype} tensor on {t.device}"
                   if isinstance(t, Tensor) else type(t).__name__)
            return f"{name}: expected a ({B},) CPU int64 tensor (B = batch_sizes[0]), got {got}"
        given[name] = _np(t)
        if not np.array_equal(np.sort(given[name]), np.arange(B)):
            return (f"{name}: expected a permutation of the batch, got "
                    f"{given[name][:10].tolist()}{' ...' if B > 10 else ''}")
    if len(given) == 2:
        order, inverse = given["sorted_indices"], given["unsorted_indices"]
        if not (inverse[order] == np.arange(B)).all():
            return ("unsorted_indices: expected the inverse of sorted_indices, got "
                    f"{inverse[:10].tolist()} for {order[:10].tolist()}")
    return ""


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


def _well_formed_hx(hx, is_lstm: bool, rank: Optional[int]) -> bool:
    """hx is what torch.nn accepts: a tensor of the given rank (None: any), or for an LSTM a
    pair of them."""
    if is_lstm:
        return (isinstance(hx, (tuple, list)) and len(hx) == 2
                and all(isinstance(h, Tensor) and rank in (None, h.dim()) for h in hx))
    return isinstance(hx, Tensor) and rank in (None, hx.dim())


class RNN(_FastRNNMixin, torch.nn.RNN):
    """``torch.nn.RNN`` (tanh or relu) with fastrnn's kernels; same arguments and results."""

    _cells = ("rnn_tanh", "rnn_relu")  # the modes this class runs in the core


class LSTM(_FastRNNMixin, torch.nn.LSTM):
    """``torch.nn.LSTM`` (``proj_size`` included) with fastrnn's kernels; same arguments and results."""

    _cells = ("lstm",)


class GRU(_FastRNNMixin, torch.nn.GRU):
    """``torch.nn.GRU`` with fastrnn's kernels; same arguments and results."""

    _cells = ("gru",)


_TWINS = {torch.nn.RNN: RNN, torch.nn.LSTM: LSTM, torch.nn.GRU: GRU}


def _twin_class(cls: type) -> Optional[type]:
    """The fastrnn.torch class for a module of class ``cls``, or None to leave it alone.

    The exact torch.nn classes map to their twins. torch.nn.utils.parametrize gives each
    parametrized module a class of its own (``ParametrizedLSTM``: a direct subclass of the torch
    class holding the parametrized attributes as properties); its twin is the same class on the
    fastrnn.torch base, so that adding and removing parametrizations keeps working (removing the
    last one leaves a fastrnn.torch.LSTM). Other subclasses may override forward: left alone.
    """
    if cls in _TWINS:
        return _TWINS[cls]
    if (len(cls.__bases__) == 1 and cls.__bases__[0] in _TWINS
            and cls.__name__ == "Parametrized" + cls.__bases__[0].__name__):
        namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
        return type(cls.__name__, (_TWINS[cls.__bases__[0]],), namespace)
    return None


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Turn, in place, every ``torch.nn.RNN/LSTM/GRU`` inside ``model`` (``model`` itself
    included) into its fastrnn.torch twin, and return ``model``.

    The modules change class only (the twins add no state), so they keep everything else: the
    very same parameter objects (optimizers built before keep working), training mode, hooks,
    pruning and parametrizations, and a module registered under two names stays one module.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        twin = _twin_class(type(module))
        if twin is not None:
            module.__class__ = twin
    return model


# ---- one thread pool for torch and fastrnn -------------------------------------------------------

def _torch_openmp_runtime() -> Optional[str]:
    """Path of the OpenMP runtime that runs torch's CPU parallelism, if one is loaded (Linux)."""
    if not torch.backends.openmp.is_available():
        return None
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(None, 5)[5].strip() for line in maps if line.count(" ") >= 5
                     and len(line.split(None, 5)) == 6}
    except OSError:
        return None
    runtimes = sorted(p for p in paths
                      if os.path.basename(p).startswith(("libgomp", "libiomp", "libomp"))
                      and ".so" in os.path.basename(p) and os.path.exists(p))
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    own = [p for p in runtimes if os.path.abspath(p).startswith(torch_dir + os.sep)]
    if own:
        return own[0]
    return runtimes[0] if len(runtimes) == 1 else None


def _share_torch_thread_pool() -> None:
    """Run fastrnn's parallel work on torch's OpenMP pool: two pools on the same cores slow each
    other down (each one's idle workers spin while the other works), one shared pool does not.
    Set FASTRNN_SHARE_TORCH_THREADS=0 to keep fastrnn's own threads."""
    if os.environ.get("FASTRNN_SHARE_TORCH_THREADS", "1") == "0":
        return
    path = _torch_openmp_runtime()
    if path is not None:
        _core.run_threads_on_openmp(path)


_share_torch_thread_pool()


# ---- TorchDynamo: let it trace modules that are instances of torch.nn.RNN/LSTM/GRU --------------

class _AllowRnnOnDynamoImport(importlib.abc.MetaPathFinder):
    """Sets ``torch._dynamo.config.allow_rnn`` when TorchDynamo's config is first imported, so that
    importing fastrnn.torch does not pay TorchDynamo's import time (about 1.5 s) up front."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "torch._dynamo.config":
            return None
        sys.meta_path.remove(self)  # one shot; the lookup below then uses the other finders
        try:
            spec = importlib.util.find_spec(fullname)
        except Exception:  # noqa: BLE001 - let the normal import report it
            return None
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_allow(module):
            exec_module(module)
            module.allow_rnn = True

        spec.loader.exec_module = exec_then_allow
        return spec


def _allow_dynamo_to_trace_rnn_modules() -> None:
    config = sys.modules.get("torch._dynamo.config")
    if config is not None:
        config.allow_rnn = True
    elif not any(isinstance(f, _AllowRnnOnDynamoImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AllowRnnOnDynamoImport())


_allow_dynamo_to_trace_rnn_modules()
