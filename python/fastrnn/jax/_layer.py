"""``fastrnn.jax.layer``: one layer, one direction, as a JAX function with its own gradient and
batching rules around the XLA custom calls of :mod:`fastrnn.jax._ffi`.

- **Gradient**: a ``jax.custom_vjp`` whose forward is the core's training forward; its residual
  is the core's reserve (the saved states and activations), so the backward is one custom call,
  as in fastrnn.torch.
- **vmap**: each custom call is a ``jax.custom_batching.custom_vmap`` function. A vmapped axis on
  the data (x, states, lengths, resets, incoming gradients) folds into the batch: N problems of
  batch B are one call of batch N*B. The backward's weight gradients are then per problem: the
  core returns the pre-activation gradients (``gate_grads``) and each problem's weight gradients
  are formed from its own rows. The reserve of N folded problems is handed back per problem
  (``fastrnn._reserve``), so nested transforms compose. Vmapped *weights* (an ensemble) run as a
  ``lax.map`` of calls, one per member; so does everything on a GPU (the CUDA handlers have no
  gate gradients, and their reserve has another layout).
- **Forward mode and second order** are not supported: ``jax.jvp``/``jacfwd`` of the layer
  raise JAX's own TypeError for a ``custom_vjp`` function; ``hessian`` and grad of grad reach a
  custom call, which raises NotImplementedError saying so.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _cells, _reserve, _validate
from ..errors import DtypeError, LengthsError
from . import _ffi
from ._ffi import Layout

_WEIGHTS = slice(3, 8)  # w_ih, w_hh, b_ih, b_hh, w_hr among the calls' arguments


def layer(mode: str, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, *, weight_hr=None,
          lengths=None, resets=None, reverse: bool = False
          ) -> Tuple[jax.Array, jax.Array, Optional[jax.Array]]:
    """One recurrent layer in one direction over a whole sequence, as an XLA operation.

    Arguments and results are those of :func:`fastrnn.functional.layer_forward` (time-major
    ``x (T, B, I)``, ``h0 (B, R)``, ``c0 (B, H)`` for ``"lstm"`` else None, weights in torch.nn's
    layout and gate order, ``weight_hr (P, H)`` for an LSTM projection, ``lengths (B,)`` integers
    in [1, T], ``resets (T, B)`` bool), in float32 or float64 (``jax_enable_x64``). Returns
    ``(y (T, B, R), h_n (B, R), c_n (B, H) or None)``.

    Works under ``jax.jit``, ``jax.grad``/``jax.vjp`` (reverse mode, first order), ``jax.vmap``
    (any argument; data axes fold into the batch), ``lax.scan`` and ``jax.checkpoint``. Shapes
    and dtypes are checked at trace time; the values of ``lengths`` when they are known then, and
    otherwise by the CPU custom call when it runs (an ``XlaRuntimeError`` naming ``lengths``; the
    CUDA one does not check them, as that would synchronise the stream).
    """
    spec = _cells.cell(mode)
    x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr = (
        _as_jax(a, name) for a, name in zip(
            (x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr),
            ("x", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")))
    if x is None:
        raise ValueError("x: expected an array (T, B, I), got None")
    sizes = _validate.layer_arrays(mode, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh,
                                   weight_hr, float_dtypes=("float32", "float64"), nonempty=True)
    reverse = _validate.flag(reverse, "reverse")
    T, B = sizes.T, sizes.B
    layout = Layout(spec.code, T, B, sizes.I, sizes.H, sizes.P, np.dtype(x.dtype),
                    bias_ih is not None, reverse)
    absent = _ffi.absent(x.dtype)
    args = (x, h0, absent if c0 is None else c0, weight_ih, weight_hh,
            absent if bias_ih is None else bias_ih, absent if bias_hh is None else bias_hh,
            absent if weight_hr is None else weight_hr,
            _lengths(lengths, T, B), _resets(resets, T, B))
    _ffi.register_cuda_targets()
    y, h_n, c_n = _layer(layout, *args)
    return y, h_n, (c_n if spec.has_cell_state else None)


def _as_jax(value, name: str):
    """``value`` as a JAX array, refusing the silent cast JAX makes of float64 data without
    ``jax_enable_x64`` (to float32)."""
    if value is None:
        return None
    if str(getattr(value, "dtype", "")) == "float64" and not jax.config.jax_enable_x64:
        raise DtypeError(f"{name}: got dtype float64, which JAX casts to float32 unless "
                         "jax_enable_x64 is on; enable it, or pass float32")
    return jnp.asarray(value)


def _concrete(value) -> Optional[np.ndarray]:
    """``value``'s values when they are known now (not traced), else None."""
    try:
        return np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _lengths(value, T: int, B: int) -> jax.Array:
    if value is None:
        return _ffi.absent(jnp.int32)
    known = _concrete(value)
    if known is not None:  # known now: check the values too
        _validate.lengths(known, B, T)
    value = jnp.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.integer) or value.dtype == jnp.bool_:
        raise LengthsError(f"lengths: expected integers, got dtype {value.dtype}")
    if value.shape != (B,):
        raise LengthsError(f"lengths: expected shape ({B},), got {value.shape}")
    if value.dtype not in (jnp.int32, jnp.int64):
        value = value.astype(jnp.int32)
    return value


def _resets(value, T: int, B: int) -> jax.Array:
    if value is None:
        return _ffi.absent(jnp.bool_)
    value = jnp.asarray(value)
    if value.dtype != jnp.bool_:
        raise DtypeError(f"resets: expected dtype bool, got {value.dtype}")
    if value.shape != (T, B):
        raise ValueError(f"resets: expected shape (T, B) = {(T, B)}, got {value.shape}")
    return value


# ---- gradient ---------------------------------------------------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _layer(layout: Layout, *args):
    y, h_n, c_n, _ = _forward(layout, False)(*args)
    return y, h_n, c_n


def _layer_fwd(layout: Layout, *args):
    y, h_n, c_n, reserve = _forward(layout, True)(*args)
    return (y, h_n, c_n), (args, reserve)


def _layer_bwd(layout: Layout, residuals, cotangents):
    args, reserve = residuals
    dy, dh_n, dc_n = cotangents
    grads = _backward(layout, False)(*args, reserve, dy, dh_n, dc_n)
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = grads[:8]
    # No gradient for absent arguments (zero-size placeholders), lengths or resets.
    return (dx, dh0, dc0 if _ffi.present(args[2]) else None, dw_ih, dw_hh,
            db_ih if layout.has_bias else None, db_hh if layout.has_bias else None,
            dw_hr if layout.P else None, None, None)


_layer.defvjp(_layer_fwd, _layer_bwd)


# ---- the custom calls with their batching rules -----------------------------------------------

@functools.lru_cache(maxsize=None)
def _forward(layout: Layout, training: bool):
    """The forward custom call of ``layout``, with its vmap rule."""

    @jax.custom_batching.custom_vmap
    def call(*args):
        return _ffi.forward(layout, training, *args)

    @call.def_vmap
    def rule(N, in_batched, *args):
        if any(in_batched[_WEIGHTS]) or not _ffi.on_cpu():
            return _sequential(call, N, in_batched, args)
        B = layout.B
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, resets = args
        bx, bh0, bc0, *_, blen, bres = in_batched
        y, h_n, c_n, reserve = _forward(layout.with_batch(N * B), training)(
            _fold_seq(x, bx, N), _fold_rows(h0, bh0, N), _fold_rows(c0, bc0, N), w_ih, w_hh,
            b_ih, b_hh, w_hr, _fold_rows(lengths, blen, N), _fold_seq(resets, bres, N))
        lstm = layout.spec.has_cell_state
        outs = (_unfold_seq(y, N), _unfold_rows(h_n, N), _unfold_rows(c_n, N) if lstm else c_n,
                _unfold_reserve(layout, reserve, N) if training else reserve)
        return outs, (True, True, lstm, training)

    return _without_derivatives(call)


@functools.lru_cache(maxsize=None)
def _backward(layout: Layout, gate_grads: bool):
    """The backward custom call of ``layout`` (``gate_grads``: the weight gradients' factors
    instead of them), with its vmap rule."""

    @jax.custom_batching.custom_vmap
    def call(*args):
        return _ffi.backward(layout, gate_grads, *args)

    @call.def_vmap
    def rule(N, in_batched, *args):
        if any(in_batched[_WEIGHTS]) or not _ffi.on_cpu():
            return _sequential(call, N, in_batched, args)
        L, B = layout, layout.B
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, resets, reserve, dy, dh_n, dc_n = args
        bx, bh0, bc0, *_, blen, bres, bres_, bdy, bdh, bdc = in_batched
        lstm, gru = L.spec.has_cell_state, L.spec.mode == "gru"
        X, lengths_f, resets_f = _fold_seq(x, bx, N), _fold_rows(lengths, blen, N), \
            _fold_seq(resets, bres, N)
        grads = _backward(L.with_batch(N * B), True)(
            X, _fold_rows(h0, bh0, N), _fold_rows(c0, bc0, N), w_ih, w_hh, b_ih, b_hh, w_hr,
            lengths_f, resets_f, _fold_reserve(L, reserve, bres_, N), _fold_seq(dy, bdy, N),
            _fold_rows(dh_n, bdh, N), _fold_rows(dc_n, bdc, N))
        dx, dh0, dc0, *_, dgates, dgates_h, dh_proj = grads
        head = [_unfold_seq(dx, N), _unfold_rows(dh0, N), _unfold_rows(dc0, N) if lstm else dc0]
        if gate_grads:  # every result is per row
            tail = [*grads[3:8], _unfold_seq(dgates, N),
                    _unfold_seq(dgates_h, N) if gru else dgates_h,
                    _unfold_seq(dh_proj, N) if L.P else dh_proj]
            return tuple(head + tail), (True, True, lstm, False, False, False, False, False,
                                        True, gru, bool(L.P))
        weights = _weight_grads(L, N, X, _fold_reserve(L, reserve, bres_, N), dgates, dgates_h,
                                dh_proj, _fresh_steps(resets_f, lengths_f, L.reverse))
        unused = list(grads[8:])
        return tuple(head + weights + unused), (True, True, lstm, True, True, L.has_bias,
                                                L.has_bias, bool(L.P), False, False, False)

    return _without_derivatives(call)


def _without_derivatives(call):
    """``call`` refusing to be differentiated itself, with a clear error: the layer's gradient
    is its custom_vjp; what would differentiate the custom calls is forward mode (jvp, jacfwd)
    or a gradient of the gradient."""

    @jax.custom_jvp
    def refusing(*args):
        return call(*args)

    @refusing.defjvp
    def _refuse(primals, tangents):
        raise NotImplementedError(
            "fastrnn.jax.layer supports first-order reverse mode only (jax.grad, jax.vjp, "
            "jacrev): forward mode (jax.jvp, jacfwd, jax.hessian) and gradients of its gradient "
            "are not implemented")

    return refusing


def _sequential(call, N: int, in_batched: Sequence[bool], args: Sequence[Any]):
    """``call`` once per vmapped index (``lax.map``), for vmapped weights."""
    batched = [a for a, b in zip(args, in_batched) if b]

    def one(members):
        it = iter(members)
        return call(*(next(it) if b else a for a, b in zip(args, in_batched)))

    outs = jax.lax.map(one, batched)
    return tuple(outs), (True,) * len(outs)


# ---- folding N problems into one batch --------------------------------------------------------

def _fold_seq(a, batched: bool, N: int):
    """(N, T, B, *) or a shared (T, B, *) -> (T, N*B, *); placeholders stay as they are."""
    if a.size == 0 and not batched:
        return a
    if not batched:
        a = jnp.broadcast_to(a[None], (N, *a.shape))
    a = jnp.moveaxis(a, 0, 1)
    return a.reshape(a.shape[0], N * a.shape[2], *a.shape[3:])


def _fold_rows(a, batched: bool, N: int):
    """(N, B, *) or a shared (B, *) -> (N*B, *); placeholders stay as they are."""
    if a.size == 0 and not batched:
        return a
    if not batched:
        a = jnp.broadcast_to(a[None], (N, *a.shape))
    return a.reshape(N * a.shape[1], *a.shape[2:])


def _unfold_seq(a, N: int):
    """(T, N*B, *) -> (N, T, B, *)."""
    return jnp.moveaxis(a.reshape(a.shape[0], N, a.shape[1] // N, *a.shape[2:]), 1, 0)


def _unfold_rows(a, N: int):
    """(N*B, *) -> (N, B, *)."""
    return a.reshape(N, a.shape[0] // N, *a.shape[1:])


def _sections(layout: Layout):
    L = layout
    return _reserve.sections(L.cell, L.T, L.H, L.R, L.P)


def _unfold_reserve(layout: Layout, folded, N: int):
    """N problems' reserves (N, size(B)) from the folded problem's (batch N*B)."""
    parts, at, B = [], 0, layout.B
    for slots, width in _sections(layout):
        n = slots * N * B * width
        part = folded[at:at + n].reshape(slots, N, B, width)
        parts.append(jnp.moveaxis(part, 1, 0).reshape(N, slots * B * width))
        at += n
    return jnp.concatenate(parts, axis=1)


def _fold_reserve(layout: Layout, reserve, batched: bool, N: int):
    """The folded problem's reserve (batch N*B) from N problems' (N, size(B)), or from one
    reserve all share."""
    parts, at, B = [], 0, layout.B
    for slots, width in _sections(layout):
        n = slots * B * width
        if batched:
            part = jnp.moveaxis(reserve[:, at:at + n].reshape(N, slots, B, width), 0, 1)
        else:
            part = jnp.broadcast_to(reserve[at:at + n].reshape(slots, 1, B, width),
                                    (slots, N, B, width))
        parts.append(part.reshape(-1))
        at += n
    return jnp.concatenate(parts)


def _fresh_steps(resets, lengths, reverse: bool):
    """(T, N*B) bool or None: the steps whose entering state a reset replaced by zeros, in time
    order (the rule of csrc/common/resets.h)."""
    if resets.size == 0:
        return None
    marked = resets
    if lengths.size:
        marked = marked & (jnp.arange(resets.shape[0])[:, None] < lengths[None, :])
    if not reverse:
        return marked
    return jnp.concatenate([marked[1:], jnp.zeros_like(marked[:1])])


def _weight_grads(layout: Layout, N: int, X, reserve, dgates, dgates_h, dh_proj, fresh):
    """Each problem's (dW_ih, dW_hh, db_ih, db_hh, dW_hr) from its rows of the pre-activation
    gradients, as the core forms them for one problem; absent ones are placeholders."""
    L = layout
    T, B, H = L.T, L.B, L.H
    G = dgates.reshape(T, N, B, -1)
    sections = _sections(L)
    slots, R = sections[0]
    hs = reserve[:slots * N * B * R].reshape(slots, N, B, R)
    h_prev = hs[1:] if L.reverse else hs[:-1]  # the state each step read
    if fresh is not None:  # the reserve keeps the carried state; those steps read zeros
        h_prev = jnp.where(fresh.reshape(T, N, B, 1), 0, h_prev)
    G_h = G
    if dgates_h.size:  # GRU: the scaled gate's rows of dW_hh and db_hh
        G_h = jnp.concatenate([G[..., :-H], dgates_h.reshape(T, N, B, H)], -1)
    x = X.reshape(T, N, B, -1)
    precision = jax.lax.Precision.HIGHEST
    placeholder = _ffi.absent(X.dtype)
    dw_ih = jnp.einsum("tnbg,tnbi->ngi", G, x, precision=precision)
    dw_hh = jnp.einsum("tnbg,tnbr->ngr", G_h, h_prev, precision=precision)
    db_ih = G.sum((0, 2)) if L.has_bias else placeholder
    db_hh = G_h.sum((0, 2)) if L.has_bias else placeholder
    dw_hr = placeholder
    if L.P:
        m_slots, _ = sections[-1]
        ms = reserve[-m_slots * N * B * H:].reshape(m_slots, N, B, H)
        dw_hr = jnp.einsum("tnbr,tnbh->nrh", dh_proj.reshape(T, N, B, -1), ms,
                           precision=precision)
    return [dw_ih, dw_hh, db_ih, db_hh, dw_hr]
