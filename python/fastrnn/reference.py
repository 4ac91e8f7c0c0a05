"""NumPy reference implementation of fastrnn's recurrent layers.

This module is the readable ground truth that the C++/CUDA core is tested against. It has
exactly the same layer functions and signatures as ``fastrnn.functional``, so the module
classes can run on either. Everything is plain NumPy and computes in the dtype of ``x``
(float32 or float64); float64 is what the finite-difference tests use.

Math and conventions are those of PyTorch's ``torch.nn.RNN`` / ``LSTM`` / ``GRU``
(see docs/design.md §1), so weights move across unchanged:

- ``rnn_tanh`` / ``rnn_relu``:  h' = act(W_ih x + b_ih + W_hh h + b_hh)
- ``lstm``, gate order i, f, g, o:
      i, f, o = sigmoid(.), g = tanh(.), c' = f*c + i*g, h' = o*tanh(c')
- ``gru``, gate order r, z, n, reset applied after the hidden matmul:
      r = sigmoid(W_ir x + b_ir + W_hr h + b_hr), z = sigmoid(...),
      n = tanh(W_in x + b_in + r*(W_hn h + b_hn)), h' = (1-z)*n + z*h

Shape legend: T steps, B batch, I input size, H hidden size, G gates (1, 1, 4, 3).

Layout of this file:
1. cells: one small forward step and one backward step per cell, nothing else;
2. the sequence loop (direction, variable lengths), written once for all cells;
3. argument validation.
"""

from collections import namedtuple

import numpy as np

from . import _cells, _step, _validate
from ._cells import MODES, num_gates

__all__ = ["MODES", "num_gates", "layer_forward", "layer_backward", "cell_forward",
           "cell_backward"]


# ---------------------------------------------------------------------------------------------
# 1. Cells
#
# A cell's forward step receives the two pre-activation halves of one step,
#     xp = W_ih x + b_ih   (B, G*H)      hp = W_hh h + b_hh   (B, G*H)
# and the previous state h (B, H), c (B, H) or None, and returns
#     (h_new, c_new or None, cache)
# where cache holds the activations its backward step needs.
#
# A cell's backward step receives (cache, dh, dc) -- the gradients of h_new and c_new (dc is
# None for cells without a c) -- and returns
#     (dxp, dhp, dh_direct, dc_prev)
# the gradients of xp and hp, the gradient of h through paths other than hp (only the GRU has
# one, through z*h; None otherwise) and the gradient of c (None for cells without a c).
# Derivatives are written from saved activations: tanh' = 1 - y^2, sigmoid' = s*(1 - s),
# relu' = (y > 0), applied as a select (see _rnn_relu_backward).
# ---------------------------------------------------------------------------------------------


def _sigmoid(a):
    """Logistic function, without overflow for large |a|."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _rnn_tanh_forward(xp, hp, h, c):
    h_new = np.tanh(xp + hp)
    return h_new, None, h_new


def _rnn_tanh_backward(cache, dh, dc):
    h_new = cache
    da = dh * (1 - h_new * h_new)
    return da, da, None, None


def _rnn_relu_forward(xp, hp, h, c):
    h_new = np.maximum(xp + hp, 0)
    return h_new, None, h_new


def _rnn_relu_backward(cache, dh, dc):
    h_new = cache
    # A select, as torch applies relu's derivative: exactly 0 where h_new <= 0 (no 0 * Inf = NaN),
    # dh elsewhere, at a NaN h_new too.
    da = np.where(h_new <= 0, np.zeros_like(dh), dh)
    return da, da, None, None


def _lstm_forward(xp, hp, h, c):
    a_i, a_f, a_g, a_o = np.split(xp + hp, 4, axis=1)
    i = _sigmoid(a_i)
    f = _sigmoid(a_f)
    g = np.tanh(a_g)
    o = _sigmoid(a_o)
    c_new = f * c + i * g
    tanh_c = np.tanh(c_new)
    h_new = o * tanh_c
    return h_new, c_new, (i, f, g, o, c, tanh_c)


def _lstm_backward(cache, dh, dc):
    i, f, g, o, c, tanh_c = cache
    dc = dc + dh * o * (1 - tanh_c * tanh_c)  # total gradient of c_new
    do = dh * tanh_c
    di = dc * g
    df = dc * c
    dg = dc * i
    da = np.concatenate(
        [di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)], axis=1
    )
    return da, da, None, dc * f


def _gru_forward(xp, hp, h, c):
    x_r, x_z, x_n = np.split(xp, 3, axis=1)
    h_r, h_z, h_n = np.split(hp, 3, axis=1)
    r = _sigmoid(x_r + h_r)
    z = _sigmoid(x_z + h_z)
    n = np.tanh(x_n + r * h_n)
    h_new = (1 - z) * n + z * h
    return h_new, None, (r, z, n, h_n, h)


def _gru_backward(cache, dh, dc):
    r, z, n, h_n, h = cache
    dn = dh * (1 - z)
    dz = dh * (h - n)
    da_n = dn * (1 - n * n)  # gradient of x_n + r*h_n
    da_r = da_n * h_n * r * (1 - r)
    da_z = dz * z * (1 - z)
    dxp = np.concatenate([da_r, da_z, da_n], axis=1)
    dhp = np.concatenate([da_r, da_z, da_n * r], axis=1)
    return dxp, dhp, dh * z, None


_CellSteps = namedtuple("_CellSteps", ["gates", "has_c", "forward", "backward"])

# This file's math for each cell of fastrnn._cells (which gives gates and has_c).
_STEPS = {
    "rnn_tanh": (_rnn_tanh_forward, _rnn_tanh_backward),
    "rnn_relu": (_rnn_relu_forward, _rnn_relu_backward),
    "lstm": (_lstm_forward, _lstm_backward),
    "gru": (_gru_forward, _gru_backward),
}


def _get_cell(mode):
    spec = _cells.cell(mode)
    return _CellSteps(spec.gates, spec.has_cell_state, *_STEPS[spec.mode])


# ---------------------------------------------------------------------------------------------
# 2. The sequence loop, generic over the cell
# ---------------------------------------------------------------------------------------------


class _Saved:
    """What layer_backward needs from a training-mode layer_forward. Opaque to callers.

    It holds references to (not copies of) x, weight_ih and weight_hh: do not modify those in
    place between layer_forward and layer_backward.
    """

    __slots__ = (
        "mode", "reverse", "x", "weight_ih", "weight_hh", "weight_hr", "has_bias", "valid", "fresh",
        "h_prev", "caches", "cell_out",
    )

    def __init__(self, **fields):
        for name in self.__slots__:
            setattr(self, name, fields.pop(name))
        assert not fields, fields

    def __repr__(self):
        T, B, _ = self.x.shape
        return (f"<fastrnn.reference saved state: mode={self.mode!r} T={T} B={B} "
                f"reverse={self.reverse}>")


def _time_order(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def _valid_mask(lengths, T, B):
    """(T, B, 1) bool: valid[t, b] is True when step t is inside sequence b."""
    if lengths is None:
        return np.ones((T, B, 1), dtype=bool)
    return (np.arange(T)[:, None] < lengths[None, :])[:, :, None]


def _fresh_mask(resets, valid, reverse):
    """(T, B, 1) bool or None: the state entering step t of row b is replaced by zeros. Forward:
    where resets[t, b]. Reverse (t = T-1 .. 0): where resets[t+1, b], i.e. where the later step
    began a segment, so each segment's reverse walk starts from zeros. Resets flagged at padded
    steps are ignored."""
    if resets is None:
        return None
    marked = resets[:, :, None] & valid
    if not reverse:
        return marked
    fresh = np.zeros_like(marked)
    fresh[:-1] = marked[1:]
    return fresh


def layer_forward(mode, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, *,
                  weight_hr=None, lengths=None, resets=None, reverse=False, training=True):
    """One layer, one direction, whole sequence.

    x (T, B, I); h0 (B, H) (required: pass zeros for a zero initial state); c0 (B, H) for
    'lstm', otherwise None; weight_ih (G*H, I); weight_hh (G*H, H); bias_ih and bias_hh (G*H,)
    or both None (a layer without bias). All arrays share one float dtype, which is the dtype
    of the computation.

    lengths: None (every sequence is T long) or an integer array (B,) with
    1 <= lengths[b] <= T, in any order. Steps t >= lengths[b] leave the state untouched and
    write zeros to y. reverse=True processes t = T-1 .. 0, so for sequence b the reverse
    direction effectively starts at t = lengths[b]-1 from h0.

    resets: None or a bool array (T, B). resets[t, b] splits sequence b before step t: the state
    entering step t (h0 and c0 at t = 0) is replaced by zeros, so no gradient reaches the state it
    replaced; in the reverse direction each segment starts from zeros at its last step (the last
    segment from h0). Resets at padded steps are ignored.

    weight_hr: None, or for 'lstm' with a projection (proj_size P > 0) an array (P, H): the
    state and output become h = weight_hr @ (o * tanh(c)), of size P, and weight_hh is (4H, P),
    h0 (B, P).

    Returns (y (T, B, R), h_n (B, R), c_n (B, H) or None, saved), R = P or H. h_n and c_n are each
    sequence's state after its own last valid step (what torch returns for a PackedSequence).
    saved is None when training=False, otherwise an opaque object for layer_backward.
    """
    cell = _get_cell(mode)
    x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths = _check_forward_args(
        mode, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths
    )
    T, B, _ = x.shape
    R = h0.shape[1]  # state and output size: H, or P with a projection
    H = weight_ih.shape[0] // cell.gates
    valid = _valid_mask(lengths, T, B)
    fresh = _fresh_mask(_validate.resets(resets, T, B), valid, reverse)

    # The input half of every step's pre-activations at once: one large matmul.
    xp = x @ weight_ih.T
    if bias_ih is not None:
        xp = xp + bias_ih

    y = np.zeros((T, B, R), dtype=x.dtype)
    h, c = h0, c0
    h_prev = np.empty((T, B, R), dtype=x.dtype) if training else None
    cell_out = np.zeros((T, B, H), dtype=x.dtype) if training and weight_hr is not None else None
    caches = [None] * T
    for t in _time_order(T, reverse):
        if fresh is not None:  # a segment starts here: from zeros
            h = np.where(fresh[t], 0, h).astype(x.dtype)
            if cell.has_c:
                c = np.where(fresh[t], 0, c).astype(x.dtype)
        hp = h @ weight_hh.T
        if bias_hh is not None:
            hp = hp + bias_hh
        h_new, c_new, cache = cell.forward(xp[t], hp, h, c)
        if weight_hr is not None:  # LSTM projection of the cell output o * tanh(c)
            if training:
                cell_out[t] = np.where(valid[t], h_new, 0)
            h_new = h_new @ weight_hr.T
        if training:
            h_prev[t] = h
            caches[t] = cache
        # Rows past their sequence's end: output 0, state unchanged.
        m = valid[t]
        y[t] = np.where(m, h_new, 0)
        h = np.where(m, h_new, h)
        if cell.has_c:
            c = np.where(m, c_new, c)

    saved = None
    if training:
        saved = _Saved(
            mode=mode, reverse=reverse, x=x, weight_ih=weight_ih, weight_hh=weight_hh,
            weight_hr=weight_hr, has_bias=bias_ih is not None, valid=valid, fresh=fresh,
            h_prev=h_prev, caches=caches, cell_out=cell_out,
        )
    return y, h, c, saved


def layer_backward(saved, dy, dh_n=None, dc_n=None):
    """Backward through time of one layer_forward call (made with training=True).

    dy (T, B, R): gradient of y (entries at padded steps are ignored: y is constant 0 there);
    dh_n (B, R), dc_n (B, H) or None (= zeros); dc_n must be None unless the mode is 'lstm'.
    R is the state size (H, or P with a projection).

    Returns a dict with keys 'input' (T, B, I), 'h0' (B, R), 'c0' (B, H) or None for non-LSTM,
    'weight_ih', 'weight_hh', 'bias_ih', 'bias_hh' (the bias entries are None when the forward
    had no bias), 'weight_hr' (None without a projection).
    """
    if not isinstance(saved, _Saved):
        raise TypeError(
            "saved: expected the saved object returned by fastrnn.reference.layer_forward("
            f"..., training=True), got {type(saved).__name__}"
        )
    s = saved
    cell = _get_cell(s.mode)
    T, B, I = s.x.shape
    R = s.weight_hh.shape[1]
    H = s.weight_ih.shape[0] // cell.gates
    dtype = s.x.dtype
    _validate.final_state_grads(s.mode, _validate.LayerSizes(T, B, I, H, R if R != H else 0),
                                *(None if a is None else np.asarray(a) for a in (dy, dh_n, dc_n)),
                                dtype=str(dtype))
    dy = np.asarray(dy)
    dh = np.zeros((B, R), dtype) if dh_n is None else np.asarray(dh_n)
    dc = (np.zeros((B, H), dtype) if dc_n is None else np.asarray(dc_n)) if cell.has_c else None

    dxp_all = np.zeros((T, B, cell.gates * H), dtype)
    dhp_all = np.zeros((T, B, cell.gates * H), dtype)
    dweight_hr = np.zeros_like(s.weight_hr) if s.weight_hr is not None else None
    for t in reversed(_time_order(T, s.reverse)):
        m = s.valid[t]
        dh = dh + np.where(m, dy[t], 0)
        # Rows past their sequence's end did not go through the cell: give it zero gradient
        # there (the cell backward is linear in dh, dc, so dxp, dhp come out zero) and pass
        # their dh, dc straight through to the previous step.
        dh_cell = np.where(m, dh, 0)
        if s.weight_hr is not None:  # back through the projection h = W_hr (o * tanh(c))
            dweight_hr += dh_cell.T @ s.cell_out[t]
            dh_cell = dh_cell @ s.weight_hr
        dxp, dhp, dh_direct, dc_prev = cell.backward(
            s.caches[t], dh_cell, np.where(m, dc, 0) if cell.has_c else None
        )
        dxp_all[t] = dxp
        dhp_all[t] = dhp
        dh_prev = dhp @ s.weight_hh
        if dh_direct is not None:
            dh_prev = dh_prev + dh_direct
        dh = np.where(m, dh_prev, dh)
        if cell.has_c:
            dc = np.where(m, dc_prev, dc)
        if s.fresh is not None:  # the state was replaced by zeros: nothing flows into it
            dh = np.where(s.fresh[t], 0, dh).astype(dtype)
            if cell.has_c:
                dc = np.where(s.fresh[t], 0, dc).astype(dtype)

    # Weight gradients as large matmuls over all steps at once.
    dxp_rows = dxp_all.reshape(T * B, -1)
    dhp_rows = dhp_all.reshape(T * B, -1)
    return {
        "input": dxp_all @ s.weight_ih,
        "h0": dh,
        "c0": dc,
        "weight_ih": dxp_rows.T @ s.x.reshape(T * B, I),
        "weight_hh": dhp_rows.T @ s.h_prev.reshape(T * B, R),
        "bias_ih": dxp_rows.sum(axis=0) if s.has_bias else None,
        "bias_hh": dhp_rows.sum(axis=0) if s.has_bias else None,
        "weight_hr": dweight_hr,
    }


def cell_forward(mode, x, h, c, weight_ih, weight_hh, bias_ih, bias_hh, *, training=True):
    """One step of a cell (what ``torch.nn.LSTMCell`` and the others compute): ``x (B, I)``,
    ``h (B, H)``, ``c (B, H)`` for an LSTM else None, weights as for :func:`layer_forward`.
    Returns ``(h_new, c_new or None, state)``; ``state`` (None unless ``training``) goes to
    :func:`cell_backward`. One call of :func:`layer_forward` with ``T = 1``."""
    return _step.step_forward(layer_forward, mode, x, h, c, weight_ih, weight_hh, bias_ih,
                              bias_hh, training=training)


def cell_backward(state, dh, dc=None):
    """Gradients of a :func:`cell_forward` step from ``dh (B, H)`` (the new state's gradient)
    and ``dc (B, H)`` (LSTM; None for zeros): a dict with ``input``, ``h``, ``c`` (None unless
    LSTM), ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` (None without bias)."""
    return _step.step_backward(layer_backward, state, dh, dc)


# ---------------------------------------------------------------------------------------------
# 3. Argument validation
# ---------------------------------------------------------------------------------------------

def _check_forward_args(mode, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
                        lengths):
    """The arrays as ndarrays, checked by fastrnn._validate (the checks every entry point
    shares); the reference also runs empty batches (B = 0)."""
    arrays = [None if a is None else np.asarray(a)
              for a in (x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)]
    sizes = _validate.layer_arrays(mode, *arrays, float_dtypes=("float32", "float64"),
                                   nonempty=False)
    lengths = _validate.lengths(lengths, sizes.B, sizes.T)
    return (*arrays, lengths)


# ---------------------------------------------------------------------------------------------
# 4. Module classes: fastrnn.RNN / LSTM / GRU with this file's layer functions as the backend.
#    Stacking, bidirection and dropout are the shared code of fastrnn.modules.
# ---------------------------------------------------------------------------------------------
import sys as _sys  # noqa: E402

from . import modules as _modules  # noqa: E402

_this_module = _sys.modules[__name__]


class RNN(_modules.RNN):
    """``fastrnn.RNN`` computed by this NumPy reference."""
    _backend = _this_module


class LSTM(_modules.LSTM):
    """``fastrnn.LSTM`` computed by this NumPy reference."""
    _backend = _this_module


class GRU(_modules.GRU):
    """``fastrnn.GRU`` computed by this NumPy reference."""
    _backend = _this_module


__all__ += ["RNN", "LSTM", "GRU"]
