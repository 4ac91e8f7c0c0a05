"""vmap rules of the custom operators ``fastrnn::layer_forward`` / ``fastrnn::layer_backward``.

What ``torch.func.vmap`` (and ``is_grads_batched``, ``jacobian(vectorize=True)``, gradcheck's
batched-gradient check, ``jacrev``, per-sample gradients) turns a layer call into:

- **A vmapped dimension on the data** (inputs, states, lengths, resets, incoming gradients) **folds into
  the batch**: N problems of batch B are one core call of batch N*B. The backward's weight
  gradients are then per problem: the core returns the pre-activation gradients
  (``layer_backward(..., gate_grads=True)``) and each problem's weight gradients are formed from
  its own rows (one batched GEMM per weight) -- the layer's backward is linear in its incoming
  gradients, so N of them cost one backward over N*B rows.
- **Vmapped weights** (an ensemble, ``stack_module_state`` + ``functional_call``) run as a loop of
  core calls, one per member (the core has no grouped weights; measured in bench/RESULTS.md).
- The reserve of N folded problems is handed back per problem (``(N, reserve_size(B))``, each row
  one problem's reserve), so that every output is truly batched and nested transforms compose.
  The core's reserve is a sequence of sections, each ``(slots, B, width)`` (``ReserveLayout`` in
  csrc/cpu/step.h); :func:`fastrnn._reserve.sections` lists them.

CUDA tensors loop over the vmapped dimension (their reserve is raw bytes of another layout).

torch.autograd's ``is_grads_batched``, ``jacobian(vectorize=True)`` and gradcheck's batched-gradient
check use an older vmap (``torch._vmap_internals``) whose batched tensors reach no vmap rule
registered in Python; :func:`legacy_backward` takes them apart itself and applies the same rule.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _core
from .._cells import CELLS_BY_CODE
from .._reserve import sections as reserve_sections
from ._runtime import follow_torch_threads
from ._tangent import fresh_steps

_WEIGHTS = slice(3, 8)  # w_ih, w_hh, b_ih, b_hh, w_hr among the operators' tensor arguments


def _fold_reserve(reserve: Tensor, dim: Optional[int], N: int, B: int,
                  sections) -> Tensor:
    """One folded problem's reserve (batch N*B) from N problems' reserves, (N, L) at ``dim``,
    or one reserve shared by all (``dim`` None)."""
    parts, at = [], 0
    batched = reserve.movedim(dim, 0) if dim is not None else reserve
    for slots, width in sections:
        n = slots * B * width
        if dim is None:
            part = batched[at:at + n].view(slots, 1, B, width).expand(slots, N, B, width)
        else:
            part = batched[:, at:at + n].reshape(N, slots, B, width).transpose(0, 1)
        parts.append(part.reshape(-1))
        at += n
    return torch.cat(parts)


def _unfold_reserve(folded: Tensor, N: int, B: int, sections) -> Tensor:
    """N problems' reserves, (N, L), from the folded problem's (batch N*B)."""
    parts, at = [], 0
    for slots, width in sections:
        n = slots * N * B * width
        parts.append(folded[at:at + n].view(slots, N, B, width).transpose(0, 1)
                     .reshape(N, slots * B * width))
        at += n
    return torch.cat(parts, 1)


def _fold_seq(t: Optional[Tensor], dim: Optional[int], N: int) -> Optional[Tensor]:
    """(T, B, *) per problem -> (T, N*B, *)."""
    if t is None:
        return None
    if dim is None:
        return t.unsqueeze(1).expand(t.shape[0], N, *t.shape[1:]).reshape(
            t.shape[0], N * t.shape[1], *t.shape[2:]).contiguous()
    t = t.movedim(dim, 1)
    return t.reshape(t.shape[0], N * t.shape[2], *t.shape[3:]).contiguous()


def _fold_rows(t: Optional[Tensor], dim: Optional[int], N: int) -> Optional[Tensor]:
    """(B, *) per problem -> (N*B, *)."""
    if t is None:
        return None
    t = t.movedim(dim, 0) if dim is not None else t.expand(N, *t.shape)
    return t.reshape(N * t.shape[1], *t.shape[2:]).contiguous()


def _member(args: Sequence, in_dims: Sequence[Optional[int]], n: int) -> list:
    return [a.select(d, n).contiguous() if (d is not None and a is not None) else a
            for a, d in zip(args, in_dims)]


def _loop(op, info, in_dims, tensors, flags, resets, resets_dim):
    """The operator once per vmapped index, results stacked (every output batched at 0)."""
    outs = [op(*_member(tensors, in_dims, n), *flags, *_member([resets], [resets_dim], n))
            for n in range(info.batch_size)]
    stacked = [torch.stack(list(parts)) for parts in zip(*outs)]
    return stacked, [0] * len(stacked)


def _weights_batched(in_dims) -> bool:
    return any(d is not None for d in in_dims[_WEIGHTS])


def forward_rule(op, info, in_dims, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, cell,
                 reverse, save, algo, resets=None):
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths)
    flags = (cell, reverse, save, algo)
    dims = in_dims[:9]
    resets_dim = in_dims[13] if len(in_dims) > 13 else None
    if _weights_batched(dims) or x.is_cuda:
        return tuple(_loop(op, info, dims, tensors, flags, resets, resets_dim)[0]), (0, 0, 0, 0)
    N = info.batch_size
    X = _fold_seq(x, dims[0], N)
    folded = (X, _fold_rows(h0, dims[1], N), _fold_rows(c0, dims[2], N), w_ih, w_hh, b_ih, b_hh,
              w_hr, _fold_rows(lengths, dims[8], N))
    y, h_n, c_n, reserve = op(*folded, *flags, _fold_seq(resets, resets_dim, N))
    T, B = X.shape[0], X.shape[1] // N
    y = y.view(T, N, B, y.shape[-1])
    h_n = h_n.view(N, B, h_n.shape[-1])
    c_n = c_n.view(N, B, c_n.shape[-1]) if c0 is not None else c_n
    if save:
        R, H = h_n.shape[-1], w_hh.shape[0] // CELLS_BY_CODE[cell].gates
        P = w_hr.shape[0] if w_hr is not None else 0
        reserve = _unfold_reserve(reserve, N, B, reserve_sections(cell, T, H, R, P))
    return (y, h_n, c_n, reserve), (1, 0, 0 if c0 is not None else None, 0 if save else None)


def backward_rule(op, info, in_dims, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reserve,
                  dy, dh_n, dc_n, cell, reverse, algo, resets=None):
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reserve, dy, dh_n, dc_n)
    flags = (cell, reverse, algo)
    resets_dim = in_dims[16] if len(in_dims) > 16 else None
    if _weights_batched(in_dims) or x.is_cuda:
        grads, dims = _loop(op, info, in_dims[:13], tensors, flags, resets, resets_dim)
        return grads, dims
    N = info.batch_size
    X = _fold_seq(x, in_dims[0], N)
    T, B = X.shape[0], X.shape[1] // N
    R, H = h0.shape[-1], w_hh.shape[0] // CELLS_BY_CODE[cell].gates
    P = w_hr.shape[0] if w_hr is not None else 0
    sections = reserve_sections(cell, T, H, R, P)
    folded_reserve = _fold_reserve(reserve, in_dims[9], N, B, sections)
    h0f, c0f = _fold_rows(h0, in_dims[1], N), _fold_rows(c0, in_dims[2], N)
    lengths_f, resets_f = _fold_rows(lengths, in_dims[8], N), _fold_seq(resets, resets_dim, N)
    follow_torch_threads()
    dx, dh0, dc0, dgates, dgates_h, dh_proj = (
        None if g is None else torch.from_numpy(g) for g in _core.layer_backward(
            cell, _np(X), _np(h0f), _np(c0f), _np(w_ih), _np(w_hh), _np(b_ih), _np(b_hh),
            _np(w_hr), _np(lengths_f), reverse, _np(folded_reserve),
            _np(_fold_seq(dy, in_dims[10], N)), _np(_fold_rows(dh_n, in_dims[11], N)),
            _np(_fold_rows(dc_n, in_dims[12], N)), gate_grads=True, resets=_np(resets_f)))
    fresh = fresh_steps(resets_f, lengths_f, reverse)
    weight_grads = _weight_grads(dgates, dgates_h, dh_proj, X, folded_reserve, sections, N, B,
                                 reverse, has_bias=b_ih is not None, fresh=fresh)
    empty = x.new_empty(0)
    grads = [dx.view(T, N, B, dx.shape[-1]), dh0.view(N, B, R),
             dc0.view(N, B, H) if dc0 is not None else empty, *weight_grads]
    dims = [1, 0, 0 if dc0 is not None else None] + [
        0 if g.numel() else None for g in weight_grads]
    return grads, dims


def _np(t: Optional[Tensor]):
    return None if t is None else t.detach().resolve_neg().contiguous().numpy()


def _weight_grads(dgates, dgates_h, dh_proj, X, reserve, sections, N, B, reverse, has_bias,
                  fresh=None):
    """Each problem's (dW_ih, dW_hh, db_ih, db_hh, dW_hr) from its rows of the pre-activation
    gradients: sums over its steps and batch rows, as the core forms them for one problem.
    ``fresh`` (T, N*B) or None: steps whose entering state a reset replaced by zeros."""
    T = X.shape[0]
    G = dgates.view(T, N, B, -1)
    slots, R = sections[0]
    hs = reserve[:slots * N * B * R].view(slots, N, B, R)
    h_prev = hs[1:] if reverse else hs[:-1]  # the state each step read (SlotOrder::prev)
    if fresh is not None:  # the reserve keeps the carried state; those steps read zeros
        h_prev = h_prev.masked_fill(fresh.view(T, N, B, 1), 0)
    G_h = G
    if dgates_h is not None:  # the scaled gate's rows of dW_hh, db_hh (BackwardArgs::dgates_h)
        H = dgates_h.shape[-1]
        G_h = torch.cat([G[..., :-H], dgates_h.view(T, N, B, H)], -1)
    x = X.view(T, N, B, -1)
    empty = X.new_empty(0)
    dw_ih = torch.einsum("tnbg,tnbi->ngi", G, x)
    dw_hh = torch.einsum("tnbg,tnbr->ngr", G_h, h_prev)
    db_ih = G.sum((0, 2)) if has_bias else empty
    db_hh = G_h.sum((0, 2)) if has_bias else empty
    dw_hr = empty
    if dh_proj is not None:
        m_slots, H = sections[-1]
        ms = reserve[-m_slots * N * B * H:].view(m_slots, N, B, H)
        dw_hr = torch.einsum("tnbr,tnbh->nrh", dh_proj.view(T, N, B, -1), ms)
    return [dw_ih, dw_hh, db_ih, db_hh, dw_hr]


# ---- the older vmap of torch.autograd (is_grads_batched) ---------------------------------------

def _legacy_level() -> int:
    """The innermost level of torch._vmap_internals' vmap now running."""
    level = torch._C._vmapmode_increment_nesting()
    torch._C._vmapmode_decrement_nesting()
    return level - 1


def legacy_backward(op, tensors, flags, resets=None) -> List[Tensor]:
    """``op`` (the backward operator) on tensors some of which are batched by the older vmap
    (one level of it: what torch.autograd creates): unwrapped, :func:`backward_rule`, wrapped.
    ``resets`` is never batched (it is no gradient)."""
    level = _legacy_level()
    is_legacy = torch._C._functorch.is_legacy_batchedtensor
    dims = [0 if (t is not None and is_legacy(t)) else None for t in tensors]
    plain = [torch._remove_batch_dim(t, level, 1, 0) if d is not None else t
             for t, d in zip(tensors, dims)]
    N = next(t.shape[0] for t, d in zip(plain, dims) if d is not None)
    grads, out_dims = backward_rule(op, SimpleNamespace(batch_size=N), dims, *plain, *flags,
                                    resets)
    return [torch._add_batch_dim(g.movedim(d, 0), 0, level) if d is not None else g
            for g, d in zip(grads, out_dims)]
