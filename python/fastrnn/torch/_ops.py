"""One layer and direction on fastrnn's kernels: the bridges, the custom operators, autograd.

:func:`layer` is what the modules call. It runs the bridge to the C++ core (:func:`_core_forward`,
which hands CUDA tensors to :func:`_cuda_forward`), directly in eager mode -- through
:class:`_LayerFunction` when a gradient is wanted or a torch.func transform runs -- and through
the custom operators ``fastrnn::layer_forward`` / ``fastrnn::layer_backward`` under torch.compile,
which keeps them as single nodes with shape functions, and wherever vmap batched the tensors (their
vmap rules: ``_batching``). Backward runs the core's BPTT; forward mode and the double backward
are the tangent recurrence of ``_tangent`` around the core's calls.

The bridges are looked up on the package (``fastrnn.torch._core_forward``, ...) at each call, so
that replacing them there takes effect: tests spy on them, or route the layer calls to the CUDA
functions over the CUDA emulator.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Tuple

import torch
from torch import Tensor

import fastrnn.torch as _package  # the package, for the bridges (see above); not PyTorch
from .. import _core
from .. import cuda as _cuda_api
from .._cells import CELLS, CELLS_BY_CODE
from . import _batching
from ._fallback import _in_onnx_export
from ._runtime import follow_torch_threads
from ._tangent import layer_tangent

_CUDA_DTYPE_CODES = {getattr(torch, name): _cuda_api.dtype_code(name) for name in _cuda_api.DTYPES}
ALGO_CODES = _cuda_api._ALGO_CODES  # the ``algo`` argument: a code of fastrnn.cuda.ALGOS


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


def _core_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, cell: int, reverse: bool,
                  save: bool, algo: int, resets=None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    if x.is_cuda:
        return _cuda_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, cell, reverse,
                             save, algo, resets)
    follow_torch_threads()
    y, h_n, c_n, reserve = _core.layer_forward(
        cell, _np(x), _np(h0), _np(c0), _np(w_ih), _np(w_hh), _np(b_ih), _np(b_hh), _np(w_hr),
        _np(lengths), reverse, save, _np(resets))
    return (torch.from_numpy(y), torch.from_numpy(h_n),
            x.new_empty(0) if c_n is None else torch.from_numpy(c_n),
            x.new_empty(0) if reserve is None else torch.from_numpy(reserve))


def _core_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reserve, dy, dh_n, dc_n,
                   cell: int, reverse: bool, algo: int, resets=None) -> List[Tensor]:
    if x.is_cuda:
        return _cuda_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reserve, dy,
                              dh_n, dc_n, cell, reverse, algo, resets)
    follow_torch_threads()
    grads = _core.layer_backward(
        cell, _np(x), _np(h0), _np(c0), _np(w_ih), _np(w_hh), _np(b_ih), _np(b_hh), _np(w_hr),
        _np(lengths), reverse, _np(reserve), _np(dy), _np(dh_n), _np(dc_n), False, _np(resets))
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
    H = w_hh.shape[0] // CELLS_BY_CODE[cell].gates
    P = w_hr.shape[0] if w_hr is not None else 0
    device = x.device.index if x.device.index is not None else torch.cuda.current_device()
    return (T, B, I, H, P), device, _CUDA_DTYPE_CODES[x.dtype]


def _cuda_resets(resets, device) -> dict:
    """The pointer of a reset mask as the CUDA kernels read it: (T, B) bytes on the device."""
    if resets is None:
        return {}
    return {"resets": resets.to(device, torch.uint8).contiguous()}


def _cuda_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, cell, reverse, save, algo,
                  resets=None):
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
    masks = _cuda_resets(resets, x.device)
    _cuda_api.forward(cell, dtype, shape, reverse, plan, _cuda_api.torch_allows_tf32(), device,
                      torch.cuda.current_stream(x.device).cuda_stream,
                      {"x": _addr(x), "h0": _addr(h0), "c0": _addr(c0), "w_ih": _addr(w_ih),
                       "w_hh": _addr(w_hh), "b_ih": _addr(b_ih), "b_hh": _addr(b_hh),
                       "w_hr": _addr(w_hr), "lengths": _addr(lengths_dev), "y": _addr(y),
                       "h_n": _addr(h_n), "c_n": _addr(c_n) if c0 is not None else 0,
                       "reserve": _addr(reserve) if save else 0, "workspace": _addr(workspace),
                       **{k: _addr(v) for k, v in masks.items()}})
    return y, h_n, c_n, reserve


def _cuda_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reserve, dy, dh_n, dc_n,
                   cell, reverse, algo, resets=None) -> List[Tensor]:
    shape, device, dtype = _cuda_problem(x, w_hh, w_hr, cell)
    T, B, I, H, P = shape
    plan = _cuda_api.plan(cell, dtype, T, B, I, H, P, _cuda_api.ALGOS[algo], device, True)
    inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    grads = [_cuda_empty(t.shape, x.dtype, x.device) if t is not None else None for t in inputs]
    workspace = _cuda_empty((plan.backward_scratch,), torch.uint8, x.device)
    lengths_dev = lengths.to(x.device, torch.int64) if lengths is not None else None
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = grads
    masks = _cuda_resets(resets, x.device)
    _cuda_api.backward(cell, dtype, shape, reverse, plan, _cuda_api.torch_allows_tf32(), device,
                       torch.cuda.current_stream(x.device).cuda_stream,
                       {"x": _addr(x), "h0": _addr(h0), "c0": _addr(c0), "w_ih": _addr(w_ih),
                        "w_hh": _addr(w_hh), "b_ih": _addr(b_ih), "b_hh": _addr(b_hh),
                        "w_hr": _addr(w_hr), "lengths": _addr(lengths_dev),
                        "reserve": _addr(reserve), "dy": _addr(dy), "dh_n": _addr(dh_n),
                        "dc_n": _addr(dc_n), "dx": _addr(dx), "dh0": _addr(dh0),
                        "dc0": _addr(dc0), "dw_ih": _addr(dw_ih), "dw_hh": _addr(dw_hh),
                        "db_ih": _addr(db_ih), "db_hh": _addr(db_hh), "dw_hr": _addr(dw_hr),
                        "workspace": _addr(workspace), **{k: _addr(v) for k, v in masks.items()}})
    return [x.new_empty(0) if g is None else g for g in grads]


# Custom operators: what torch.compile sees. Eager calls skip the dispatcher (it costs ~20 us per
# call with autograd) and go through _LayerFunction; both run the bridges above.

@torch.library.custom_op("fastrnn::layer_forward", mutates_args=())
def _layer_forward_op(x: Tensor, h0: Tensor, c0: Optional[Tensor], weight_ih: Tensor,
                      weight_hh: Tensor, bias_ih: Optional[Tensor], bias_hh: Optional[Tensor],
                      weight_hr: Optional[Tensor], lengths: Optional[Tensor], cell: int,
                      reverse: bool, save: bool, algo: int, resets: Optional[Tensor] = None
                      ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, h_n, c_n or empty, reserve or empty) of one layer and direction."""
    return _package._core_forward(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
                                  lengths, cell, reverse, save, algo, resets)


@_layer_forward_op.register_fake
def _(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths, cell, reverse,
      save, algo, resets=None):
    T, B = x.shape[0], x.shape[1]
    H = weight_hh.shape[0] // CELLS_BY_CODE[cell].gates
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
                       reverse: bool, algo: int, resets: Optional[Tensor] = None) -> List[Tensor]:
    """Gradients (x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr); absent: empty."""
    return _package._core_backward(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
                                   lengths, reserve, dy, dh_n, dc_n, cell, reverse, algo, resets)


@_layer_backward_op.register_fake
def _(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths, reserve, dy, dh_n,
      dc_n, cell, reverse, algo, resets=None):
    return [torch.empty_like(t) if t is not None else x.new_empty(0)
            for t in (x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)]


_layer_forward_op.register_vmap(functools.partial(_batching.forward_rule, _layer_forward_op))
_layer_backward_op.register_vmap(functools.partial(_batching.backward_rule, _layer_backward_op))


# ---- autograd --------------------------------------------------------------------------------
# Eager calls go through two autograd.Functions, which torch.func's transforms understand
# (setup_context, generate_vmap_rule): _LayerFunction (the layer; its backward is the core's
# BPTT, its jvp the tangent recurrence of _tangent) and _LayerBackward (that backward as a
# differentiable operation, for create_graph=True). Plain tensors reach the bridges directly;
# tensors batched by vmap (torch.func.vmap, is_grads_batched, jacrev, ...) reach the custom
# operators, whose vmap rules (_batching) fold them into the batch.

def _batched(tensors) -> bool:
    """Some tensor is batched by torch.func's vmap."""
    return any(t is not None and torch._C._functorch.is_batchedtensor(t) for t in tensors)


def _legacy_batched(tensors) -> bool:
    """Some tensor is batched by torch.autograd's older vmap (is_grads_batched, ...)."""
    return any(t is not None and torch._C._functorch.is_legacy_batchedtensor(t) for t in tensors)


def _transforms_active() -> bool:
    """A torch.func transform or forward-mode AD is active: the call needs the autograd.Function
    even without a gradient to save (vmap, jvp)."""
    return (torch._C._functorch.maybe_current_level() is not None
            or torch.autograd.forward_ad._current_level >= 0)


CORE_DTYPES = (torch.float32, torch.float64)  # what the CPU core computes in


def plain_cpu_call(input) -> bool:
    """``input`` is a plain CPU tensor of a dtype the core computes in, wanting no gradient, and
    no transform, compilation, trace or autocast is running: a call the modules' and cells'
    inference paths may take straight to the core (they check the rest of the call)."""
    return (type(input) is Tensor and input.device.type == "cpu" and not input.requires_grad
            and input.dtype in CORE_DTYPES and not torch.is_grad_enabled()
            and not _transforms_active() and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing() and not _in_onnx_export()
            and not torch.is_autocast_enabled("cpu"))


def _run_forward(tensors, lengths, cell, reverse, save, algo, resets):
    if torch.compiler.is_compiling() or _batched((*tensors, lengths, resets)):
        return _layer_forward_op(*tensors, lengths, cell, reverse, save, algo, resets)
    return _package._core_forward(*tensors, lengths, cell, reverse, save, algo, resets)


def _run_backward(saved, reserve, dy, dh_n, dc_n, cell, reverse, algo, resets) -> List[Tensor]:
    tensors = (*saved, reserve, dy, dh_n, dc_n)
    if _legacy_batched(tensors):
        return _batching.legacy_backward(_layer_backward_op, tensors, (cell, reverse, algo),
                                         resets)
    if torch.compiler.is_compiling() or _batched((*tensors, resets)):
        return _layer_backward_op(*saved, reserve, dy, dh_n, dc_n, cell, reverse, algo, resets)
    return _package._core_backward(*saved, reserve, dy, dh_n, dc_n, cell, reverse, algo, resets)


def _layer_grads(saved: Tuple, reserve: Tensor, cell: int, reverse: bool, algo: int, dy, dh_n,
                 dc_n, needs_grad, resets) -> List[Optional[Tensor]]:
    """Gradients of the nine tensor inputs of a layer call (None where not needed or absent)."""
    x, h0, c0 = saved[:3]
    dy = x.new_zeros(x.shape[0], x.shape[1], h0.shape[1]) if dy is None else dy.contiguous()
    dh_n = torch.zeros_like(h0) if dh_n is None else dh_n.contiguous()
    if c0 is not None:
        dc_n = torch.zeros_like(c0) if dc_n is None else dc_n.contiguous()
    else:
        dc_n = None
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():  # create_graph=True
        grads = _LayerBackward.apply(*saved, reserve, dy, dh_n, dc_n, cell, reverse, algo, resets)
    else:
        grads = _run_backward(saved, reserve, dy, dh_n, dc_n, cell, reverse, algo, resets)
    return [g if (t is not None and need) else None
            for g, t, need in zip(grads, saved[:8], needs_grad)] + [None]


class _LayerFunction(torch.autograd.Function):
    """Autograd node of one layer and direction (eager; the custom operator's twin)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, cell, reverse, save, algo,
                resets):
        return _run_forward((x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr), lengths, cell, reverse,
                            save, algo, resets)

    @staticmethod
    def setup_context(ctx, inputs, output):
        *tensors, cell, reverse, save, algo, resets = inputs
        y, _, c_n, reserve = output
        ctx.cell, ctx.reverse, ctx.algo, ctx.saved = cell, reverse, algo, save
        ctx.has_cell = tensors[2] is not None
        if save:  # the reserve too, so that saved-tensor hooks (checkpoint, offload) see it
            ctx.save_for_backward(*tensors, reserve, resets)
        if _transforms_active():  # for jvp; unsaved otherwise (it would hold the output)
            ctx.save_for_forward(*tensors, resets, y)
        # one call: each call replaces the previous one's list
        ctx.mark_non_differentiable(*([reserve] if ctx.has_cell else [reserve, c_n]))

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n, _d_reserve):
        if not ctx.saved:
            raise RuntimeError("fastrnn.torch: this layer ran without saving for backward")
        *saved, reserve, resets = ctx.saved_tensors
        grads = _layer_grads(tuple(saved), reserve, ctx.cell, ctx.reverse, ctx.algo, dy, dh_n,
                             dc_n if ctx.has_cell else None, ctx.needs_input_grad[:8], resets)
        return (*grads, None, None, None, None, None)

    @staticmethod
    def jvp(ctx, *tangents):
        *primals, lengths, resets, y = ctx.saved_tensors
        dy, dh_n, dc_n = layer_tangent(CELLS_BY_CODE[ctx.cell].mode, primals[:8], y, lengths,
                                       ctx.reverse, tangents[:8], resets)
        return dy, dh_n, dc_n, None


class _LayerBackward(torch.autograd.Function):
    """The core's backward of one layer and direction as a differentiable operation.

    Its inputs: the layer's (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths), the reserve and
    the incoming gradients u = (dy, dh_n, dc_n); its outputs g = J^T u, the eight gradients. Its
    own backward, for cotangents w of g: d<w, g>/du = J w (the tangent for w), and
    d<w, g>/dtheta = d<u, J w>/dtheta, by autograd through the tangent recurrence and, for its
    use of the layer's output, the core's backward again (_tangent's docstring)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reserve, dy, dh_n, dc_n, cell,
                reverse, algo, resets):
        return tuple(_run_backward((x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths), reserve,
                                   dy, dh_n, dc_n, cell, reverse, algo, resets))

    @staticmethod
    def setup_context(ctx, inputs, output):
        *tensors, cell, reverse, algo, resets = inputs
        ctx.cell, ctx.reverse, ctx.algo = cell, reverse, algo
        ctx.save_for_backward(*tensors[:9], *tensors[10:], resets)

    @staticmethod
    def backward(ctx, *cotangents):
        *theta, lengths, dy, dh_n, dc_n, resets = ctx.saved_tensors
        needs = ctx.needs_input_grad
        mode = CELLS_BY_CODE[ctx.cell].mode
        tangents = [w if (t is not None and w is not None and w.numel()) else None
                    for t, w in zip(theta, cotangents)]
        wanted = [i for i, t in enumerate(theta) if t is not None and needs[i]]

        def tangent_at(*values):  # J(theta) w as a function of the wanted inputs
            at = list(theta)
            for i, v in zip(wanted, values):
                at[i] = v
            y = layer(mode, *at, lengths, ctx.reverse, ctx.algo, resets)[0]
            return tuple(t for t in layer_tangent(mode, at, y, lengths, ctx.reverse, tangents,
                                                  resets) if t is not None)

        u = tuple(t for t in (dy, dh_n, dc_n) if t is not None)
        if _batched(cotangents) or _legacy_batched(cotangents):
            # torch.func.vjp: autograd.grad refuses batched outputs inside vmap
            jw, pullback = torch.func.vjp(tangent_at, *[theta[i] for i in wanted])
            found = pullback(u) if wanted else ()
        else:  # autograd.grad: the same, without torch.func's cost per operation
            jw, found = _tangent_and_grads(tangent_at, theta, wanted, u)
        grads: List[Optional[Tensor]] = [None] * 8
        for i, g in zip(wanted, found):
            grads[i] = g
        d_u = list(jw) + [None] * (3 - len(jw))
        d_u = [d if need else None for d, need in zip(d_u, needs[10:13])]
        return (*grads, None, None, *d_u, None, None, None, None)


def _tangent_and_grads(tangent_at, theta, wanted, u):
    """(J w, d<u, J w>/dtheta[wanted]) by autograd.grad; with grad mode on (create_graph), both
    stay differentiable with respect to the inputs themselves."""
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        # Each input through a view of its own: the gradient counts only the paths through these
        # uses (u may depend on the same input; autograd adds that path through d_u).
        leaves = [theta[i].view_as(theta[i]) if (create_graph and theta[i].requires_grad)
                  else theta[i].detach().requires_grad_() for i in wanted]
        jw = tangent_at(*leaves)
        inner = sum((a * b).sum() for a, b in zip(u, jw))
        found = torch.autograd.grad(inner, leaves, allow_unused=True,
                                    create_graph=create_graph) if wanted else ()
    found = [g if g is not None else torch.zeros_like(t) for g, t in zip(found, leaves)]
    return (jw if create_graph else tuple(t.detach() for t in jw)), found


def _op_setup_context(ctx, inputs, output):
    *tensors, cell, reverse, save, algo, resets = inputs
    ctx.cell, ctx.reverse, ctx.algo = cell, reverse, algo
    ctx.save_for_backward(*tensors, output[3], resets)
    ctx.has_cell = tensors[2] is not None


def _op_backward(ctx, dy, dh_n, dc_n, d_reserve):
    *saved, reserve, resets = ctx.saved_tensors
    grads = _layer_grads(tuple(saved), reserve, ctx.cell, ctx.reverse, ctx.algo, dy, dh_n,
                         dc_n if ctx.has_cell else None, ctx.needs_input_grad[:8], resets)
    return (*grads, None, None, None, None, None)


_layer_forward_op.register_autograd(_op_backward, setup_context=_op_setup_context)


def layer(mode: str, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse: bool,
          algo: int = ALGO_CODES["auto"], resets: Optional[Tensor] = None):
    """One layer and direction through the core: (y (T,B,R), h_n (B,R), c_n (B,H) or None).
    ``algo`` (a code of fastrnn.cuda.ALGOS) matters on CUDA only; ``resets``: None or a bool
    tensor (T, B), the state reset mask (fastrnn.functional.layer_forward)."""
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    args = tuple(t.contiguous() if t is not None else None for t in tensors)
    cell = CELLS[mode].code
    if _transforms_active():  # torch.func (also traced by torch.compile) or forward-mode AD
        y, h_n, c_n, _ = _LayerFunction.apply(*args, lengths, cell, reverse, save, algo, resets)
    elif torch.compiler.is_compiling():
        y, h_n, c_n, _ = _layer_forward_op(*args, lengths, cell, reverse, save, algo, resets)
    elif save:
        y, h_n, c_n, _ = _LayerFunction.apply(*args, lengths, cell, reverse, save, algo, resets)
    else:  # no gradient wanted: no autograd node either
        y, h_n, c_n, _ = _package._core_forward(*args, lengths, cell, reverse, save, algo,
                                                resets)
    return y, h_n, (c_n if c0 is not None else None)
