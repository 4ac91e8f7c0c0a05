"""Forward-mode derivatives of one layer and direction, and the double backward built on them.

The tangent of a recurrence is a linear recurrence over the same activations: for each step,
``dz_t = (dW_ih x_t + W_ih dx_t + db_ih) + (dW_hh h_{t-1} + W_hh dh_{t-1} + db_hh)``, then the
cell's derivative at the step's gates. :func:`layer_tangent` computes it from the primal output
``y`` (the core's forward; ``y_t`` is the state ``h_t`` at every valid step) with torch
operations: every step's gates at once (two GEMMs over all steps), then per step one product with
``W_hh`` and a few pointwise operations. It is differentiable, so it also gives the double
backward (:class:`LayerBackward`): the backward computes ``g = J(theta)^T u`` in the core, and the
derivative of ``<w, g>`` is ``J(theta) w`` for ``u`` (a tangent) and ``d/dtheta <u, J(theta) w>``
for ``theta`` (autograd through the tangent, whose dependence on ``y`` goes back through the
core's backward).

This is the one place of each cell's derivative math in torch; the cells' own math is the
C++ core's, and ``fastrnn.reference``'s in NumPy.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._fallback import reverse_valid_steps


def fresh_steps(resets: Optional[Tensor], lengths: Optional[Tensor],
                reverse: bool) -> Optional[Tensor]:
    """(T, B) bool, or None: the steps whose entering state a reset replaces by zeros, in time
    order, for the walk's direction (the rule of csrc/common/resets.h): forward where resets[t];
    reverse where resets[t+1] (the later step began a segment); never at padded steps."""
    if resets is None:
        return None
    marked = resets.to(torch.bool)
    if lengths is not None:
        T = resets.shape[0]
        steps = torch.arange(T, device=lengths.device).unsqueeze(1)
        marked = marked & (steps < lengths.unsqueeze(0)).to(marked.device)
    if not reverse:
        return marked
    return torch.cat([marked[1:], torch.zeros_like(marked[:1])])


def _linear(x: Tensor, w: Optional[Tensor], b: Optional[Tensor] = None) -> Optional[Tensor]:
    """x w^T + b, None when both w and b are absent (a zero tangent)."""
    if w is None:
        return None if b is None else b.expand(*x.shape[:-1], b.shape[0])
    return F.linear(x, w, b)


def _add(*terms: Optional[Tensor]) -> Optional[Tensor]:
    present = [t for t in terms if t is not None]
    if not present:
        return None
    total = present[0]
    for t in present[1:]:
        total = total + t
    return total


class _LstmTangent:
    """LSTM: i, f, g, o and the cell state c of every step, then one step's tangent."""

    def __init__(self, gi, gh, h_prev, c0, valid, w_hr, tw_hr, fresh):
        i, f, g, o = (gi + gh).chunk(4, -1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        slope = torch.cat([i * (1 - i), f * (1 - f), 1 - g * g, o * (1 - o)], -1)
        # the primal cell state: a recurrence of its own (padded steps keep it; a step starting
        # a segment reads zeros)
        c_ins, c_outs, c = [], [], c0
        for t, (f_t, i_t, g_t) in enumerate(zip(f.unbind(0), i.unbind(0), g.unbind(0))):
            c_in = c if fresh is None else c.masked_fill(fresh[t], 0)
            c_new = torch.addcmul(f_t * c_in, i_t, g_t)
            c = c_new if valid is None else torch.where(valid[t], c_new, c_in)
            c_ins.append(c_in)
            c_outs.append(c)
        tanh_c = torch.tanh(torch.stack(c_outs))
        self.w_hr, self.tw_hr = w_hr, tw_hr
        self.steps = list(zip(*(v.unbind(0) for v in (
            slope, torch.stack(c_ins), f, i, g, tanh_c, o * (1 - tanh_c * tanh_c), o * tanh_c))))

    def step(self, t, dz, dh, dc):
        slope, c_prev, f, i, g, tanh_c, o_dtanh, m = self.steps[t]
        di, df, dg, do = (slope * dz).chunk(4, -1)
        dc = torch.addcmul(torch.addcmul(torch.addcmul(df * c_prev, f, dc), di, g), i, dg)
        dm = torch.addcmul(do * tanh_c, o_dtanh, dc)
        if self.w_hr is None:
            return dm, dc
        return _add(F.linear(dm, self.w_hr), _linear(m, self.tw_hr)), dc


class _GruTangent:
    """GRU: r, z, n of every step, then one step's tangent; n = tanh(gi_n + r * gh_n) needs the
    input and recurrent sides apart."""

    def __init__(self, gi, gh, h_prev, c0, valid, w_hr, tw_hr, fresh):
        gi_r, gi_z, gi_n = gi.chunk(3, -1)
        gh_r, gh_z, gh_n = gh.chunk(3, -1)
        r, z = torch.sigmoid(gi_r + gh_r), torch.sigmoid(gi_z + gh_z)
        n = torch.tanh(gi_n + r * gh_n)
        slope_rz = torch.cat([r * (1 - r), z * (1 - z)], -1)
        self.steps = list(zip(*(v.unbind(0) for v in (
            slope_rz, 1 - n * n, r, gh_n, z, 1 - z, h_prev - n))))

    def step(self, t, dgi, dgh, dh):
        slope_rz, slope_n, r, gh_n, z, one_minus_z, h_minus_n = self.steps[t]
        H = r.shape[-1]
        rz = dgh[..., :2 * H] if dgi is None else dgh[..., :2 * H] + dgi[..., :2 * H]
        dr, dz = (slope_rz * rz).chunk(2, -1)
        dn = torch.addcmul(dr * gh_n, r, dgh[..., 2 * H:])
        if dgi is not None:
            dn = dn + dgi[..., 2 * H:]
        dn = slope_n * dn
        return torch.addcmul(torch.addcmul(h_minus_n * dz, one_minus_z, dn), z, dh)


class _VanillaTangent:
    """tanh: 1 - h^2; relu: the step function (z > 0)."""

    def __init__(self, mode, gi, gh):
        pre = gi + gh
        h = torch.tanh(pre) if mode == "rnn_tanh" else None
        self.slopes = (1 - h * h if h is not None else (pre > 0).to(pre.dtype)).unbind(0)

    def step(self, t, dz):
        return self.slopes[t] * dz


def layer_tangent(mode: str, primals: Sequence[Optional[Tensor]], y: Tensor,
                  lengths: Optional[Tensor], reverse: bool,
                  tangents: Sequence[Optional[Tensor]], resets: Optional[Tensor] = None
                  ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """(dy, dh_n, dc_n or None): the layer's outputs' tangents for the inputs' ``tangents``.

    ``primals`` and ``tangents``: (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr), None where absent
    (a tangent: zero). ``y``: the layer's output at ``primals``. Everything that does not depend
    on the state's tangent is computed for all steps at once; the loop over steps holds one
    product with ``W_hh`` and a few fused pointwise operations. ``resets``: the reset mask, or
    None; a step starting a segment reads zeros for the state and its tangent."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = primals
    tx, th0, tc0, tw_ih, tw_hh, tb_ih, tb_hh, tw_hr = tangents
    T = x.shape[0]
    fresh = fresh_steps(resets, lengths, reverse)
    if reverse:  # each sequence's valid steps reversed: a forward-direction problem
        x, y = reverse_valid_steps(x, lengths), reverse_valid_steps(y, lengths)
        tx = reverse_valid_steps(tx, lengths) if tx is not None else None
        if fresh is not None:
            fresh = reverse_valid_steps(fresh.unsqueeze(2), lengths).squeeze(2)
    valid = None
    if lengths is not None:
        steps = torch.arange(T, device=lengths.device).unsqueeze(1)
        valid = (steps < lengths.unsqueeze(0)).to(x.device).unsqueeze(2).unbind(0)  # (B, 1) each
    h_prev = torch.cat([h0.unsqueeze(0), y[:-1]])  # h_{t-1} at every valid step
    fresh_steps_ = None
    if fresh is not None:  # the state a step read: zeros where a segment starts
        fresh = fresh.to(x.device).unsqueeze(2)
        h_prev = h_prev.masked_fill(fresh, 0)
        fresh_steps_ = fresh.unbind(0)
    gi, gh = F.linear(x, w_ih, b_ih), F.linear(h_prev, w_hh, b_hh)
    # The parts of dz that do not depend on the state's tangent, all steps at once.
    dgi = _add(_linear(tx, w_ih) if tx is not None else None, _linear(x, tw_ih, tb_ih))
    dgh_fixed = _linear(h_prev, tw_hh, tb_hh)
    if mode == "lstm":
        cell = _LstmTangent(gi, gh, h_prev, c0, valid, w_hr, tw_hr, fresh_steps_)
    elif mode == "gru":
        cell = _GruTangent(gi, gh, h_prev, c0, valid, w_hr, tw_hr, fresh_steps_)
    else:
        cell = _VanillaTangent(mode, gi, gh)
    # Per-step views by unbind, once: indexing t would cost a full-size gradient per step in a
    # backward through this function (the double backward).
    if mode == "gru":
        dgi_steps = dgi.unbind(0) if dgi is not None else None
        fixed = dgh_fixed
    else:  # the input side joins the fixed part
        dgi_steps, fixed = None, _add(dgi, dgh_fixed)
    fixed_steps = fixed.unbind(0) if fixed is not None else None

    dh = th0 if th0 is not None else h0.new_zeros(h0.shape)
    dc = (tc0 if tc0 is not None else c0.new_zeros(c0.shape)) if c0 is not None else None
    w_hh_t = w_hh.t()
    dys: List[Tensor] = []
    for t in range(T):
        if fresh_steps_ is not None:  # a segment starts: the state's tangent is zero too
            dh = dh.masked_fill(fresh_steps_[t], 0)
            if dc is not None:
                dc = dc.masked_fill(fresh_steps_[t], 0)
        dz = (torch.addmm(fixed_steps[t], dh, w_hh_t) if fixed_steps is not None
              else dh @ w_hh_t)
        new_dc = None
        if mode == "lstm":
            new_dh, new_dc = cell.step(t, dz, dh, dc)
        elif mode == "gru":
            new_dh = cell.step(t, dgi_steps[t] if dgi_steps is not None else None, dz, dh)
        else:
            new_dh = cell.step(t, dz)
        if valid is None:
            dh, dy_t, dc = new_dh, new_dh, new_dc
        else:  # padded steps: no output, the state passes through
            v = valid[t]
            dy_t = torch.where(v, new_dh, torch.zeros_like(new_dh))
            dh = torch.where(v, new_dh, dh)
            if dc is not None:
                dc = torch.where(v, new_dc, dc)
        dys.append(dy_t)
    dy = torch.stack(dys)
    if reverse:
        dy = reverse_valid_steps(dy, lengths)
    return dy, dh, dc
