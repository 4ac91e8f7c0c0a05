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

from .._cells import CELLS
from ._fallback import reverse_valid_steps


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


def _gates(mode: str, gi: Tensor, gh: Tensor) -> Tuple[Tensor, ...]:
    """The activated gates of every step at once, from the input and recurrent pre-activations."""
    if mode == "lstm":
        i, f, g, o = (gi + gh).chunk(4, -1)
        return torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    if mode == "gru":
        gi_r, gi_z, gi_n = gi.chunk(3, -1)
        gh_r, gh_z, gh_n = gh.chunk(3, -1)
        r, z = torch.sigmoid(gi_r + gh_r), torch.sigmoid(gi_z + gh_z)
        return r, z, torch.tanh(gi_n + r * gh_n), gh_n
    z = gi + gh
    return (torch.tanh(z),) if mode == "rnn_tanh" else ((z > 0).to(z.dtype),)


def layer_tangent(mode: str, primals: Sequence[Optional[Tensor]], y: Tensor,
                  lengths: Optional[Tensor], reverse: bool,
                  tangents: Sequence[Optional[Tensor]]
                  ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """(dy, dh_n, dc_n or None): the layer's outputs' tangents for the inputs' ``tangents``.

    ``primals`` and ``tangents``: (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr), None where absent
    (a tangent: zero). ``y``: the layer's output at ``primals``."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = primals
    tx, th0, tc0, tw_ih, tw_hh, tb_ih, tb_hh, tw_hr = tangents
    T, B = x.shape[0], x.shape[1]
    if reverse:  # each sequence's valid steps reversed: a forward-direction problem
        x, y = reverse_valid_steps(x, lengths), reverse_valid_steps(y, lengths)
        tx = reverse_valid_steps(tx, lengths) if tx is not None else None
    h_prev = torch.cat([h0.unsqueeze(0), y[:-1]])  # h_{t-1} at every valid step
    gh = F.linear(h_prev, w_hh, b_hh)
    gates = _gates(mode, F.linear(x, w_ih, b_ih), gh)
    # The parts of dz that do not depend on the state's tangent, all steps at once.
    dgi = _add(_linear(tx, w_ih) if tx is not None else None, _linear(x, tw_ih, tb_ih))
    dgh_fixed = _linear(h_prev, tw_hh, tb_hh)
    valid = None
    if lengths is not None:
        steps = torch.arange(T, device=lengths.device).unsqueeze(1)
        valid = (steps < lengths.unsqueeze(0)).to(x.device).unsqueeze(2)  # (T, B, 1)

    dh = th0 if th0 is not None else h0.new_zeros(h0.shape)
    c = c0
    dc = (tc0 if tc0 is not None else c0.new_zeros(c0.shape)) if c0 is not None else None
    dys: List[Tensor] = []
    for t in range(T):
        dgi_t = dgi[t] if dgi is not None else None
        dgh_t = _add(dgh_fixed[t] if dgh_fixed is not None else None, F.linear(dh, w_hh))
        gates_t = tuple(g[t] for g in gates)
        c_new = new_dc = None
        if mode == "lstm":
            new_dh, c_new, new_dc = _lstm_step(gates_t, _add(dgi_t, dgh_t), c, dc, w_hr, tw_hr)
        elif mode == "gru":
            new_dh = _gru_step(gates_t, dgi_t, dgh_t, h_prev[t], dh)
        else:  # tanh: 1 - h^2; relu: the saved step (z > 0)
            slope = gates_t[0] if mode == "rnn_relu" else 1 - gates_t[0] ** 2
            new_dh = slope * _add(dgi_t, dgh_t)
        if valid is None:
            dh, dy_t = new_dh, new_dh
            c, dc = c_new, new_dc
        else:  # padded steps: no output, the state passes through
            v = valid[t]
            dy_t = torch.where(v, new_dh, torch.zeros_like(new_dh))
            dh = torch.where(v, new_dh, dh)
            if c is not None:
                c, dc = torch.where(v, c_new, c), torch.where(v, new_dc, dc)
        dys.append(dy_t)
    dy = torch.stack(dys)
    if reverse:
        dy = reverse_valid_steps(dy, lengths)
    return dy, dh, dc


def _lstm_step(gates, dz, c_prev, dc_prev, w_hr, tw_hr):
    """One LSTM step: (dh, c, dc), the state's tangent and the primal cell state."""
    i, f, g, o = gates
    dzi, dzf, dzg, dzo = dz.chunk(4, -1)
    di, df, dg, do = i * (1 - i) * dzi, f * (1 - f) * dzf, (1 - g * g) * dzg, o * (1 - o) * dzo
    c = f * c_prev + i * g
    dc = df * c_prev + f * dc_prev + di * g + i * dg
    tanh_c = torch.tanh(c)
    dm = do * tanh_c + o * (1 - tanh_c * tanh_c) * dc
    if w_hr is None:
        return dm, c, dc
    return _add(F.linear(dm, w_hr), _linear(o * tanh_c, tw_hr)), c, dc


def _gru_step(gates, dgi, dgh, h_prev, dh_prev):
    """One GRU step's tangent; n = tanh(gi_n + r * gh_n) needs the two sides apart."""
    r, z, n, gh_n = gates
    dgh_r, dgh_z, dgh_n = dgh.chunk(3, -1)
    if dgi is not None:
        dgi_r, dgi_z, dgi_n = dgi.chunk(3, -1)
        dgh_r, dgh_z = dgh_r + dgi_r, dgh_z + dgi_z
    else:
        dgi_n = None
    dr, dz = r * (1 - r) * dgh_r, z * (1 - z) * dgh_z
    dn = (1 - n * n) * _add(dgi_n, dr * gh_n, r * dgh_n)
    return (h_prev - n) * dz + (1 - z) * dn + z * dh_prev
