"""The core's backward with ``gate_grads=True`` (BackwardArgs::dgates): the pre-activation
gradients instead of the weight gradients, from which a caller with several problems folded into
one batch forms each problem's weight gradients (fastrnn.torch's vmap rules). Checked against the
ordinary backward: dx, dh0, dc0 bitwise the same, and the weight gradients formed from the
returned factors equal to the core's own, on both recurrence paths (team and per-step BLAS),
both directions, with lengths, and with a projection."""
import numpy as np
import pytest

from fastrnn import _core
from fastrnn._cells import CELLS, MODES
from conftest import assert_close, make_layer_inputs, random_lengths

# (T, B, I, H): a single step, primes, batch >= 8 (the team fuses the input projection there)
SIZES = [(1, 1, 2, 3), (7, 5, 3, 11), (20, 9, 6, 16)]


def _args(mode, T, B, I, H, P, seed):
    a = make_layer_inputs(mode, T, B, I, H, seed=seed)
    rng = np.random.default_rng(seed)
    w_hr = rng.uniform(-0.5, 0.5, (P, H)) if P else None
    h0 = a["h0"][:, :P] if P else a["h0"]
    w_hh = np.ascontiguousarray(a["weight_hh"][:, :P]) if P else a["weight_hh"]
    return [a["x"], np.ascontiguousarray(h0), a["c0"], a["weight_ih"], w_hh, a["bias_ih"],
            a["bias_hh"], w_hr], rng


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("size", SIZES, ids=["T%dB%dI%dH%d" % s for s in SIZES])
@pytest.mark.parametrize("mode,P", [(m, 0) for m in MODES] + [("lstm", 2)],
                         ids=list(MODES) + ["lstm_proj"])
def test_weight_gradients_from_the_gate_gradients(mode, P, size, with_lengths, reverse):
    T, B, I, H = size
    inputs, rng = _args(mode, T, B, I, H, P, seed=T * 100 + B)
    lengths = random_lengths(rng, T, B) if with_lengths else None
    cell = CELLS[mode].code
    y, h_n, c_n, reserve = _core.layer_forward(cell, *inputs, lengths, reverse, True)
    dy = rng.standard_normal(y.shape)
    dh_n = rng.standard_normal(h_n.shape)
    dc_n = rng.standard_normal(c_n.shape) if c_n is not None else None
    args = (cell, *inputs, lengths, reverse, reserve, dy, dh_n, dc_n)
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = _core.layer_backward(*args)
    gx, gh0, gc0, dgates, dgates_h, dh_proj = _core.layer_backward(*args, gate_grads=True)

    np.testing.assert_array_equal(gx, dx)
    np.testing.assert_array_equal(gh0, dh0)
    if dc0 is not None:
        np.testing.assert_array_equal(gc0, dc0)
    assert (dgates_h is not None) == (mode == "gru")
    assert (dh_proj is not None) == (P > 0)
    if lengths is not None:  # padded steps contribute nothing
        padded = np.arange(T)[:, None] >= lengths[None, :]
        assert not dgates[padded].any()

    R = P or H
    hs = reserve[:(T + 1) * B * R].reshape(T + 1, B, R)
    h_prev = hs[1:] if reverse else hs[:-1]
    g_h = dgates.copy()
    if dgates_h is not None:
        g_h[..., -H:] = dgates_h
    x = inputs[0]
    expected = {"weight_ih": (np.einsum("tbg,tbi->gi", dgates, x), dw_ih),
                "weight_hh": (np.einsum("tbg,tbr->gr", g_h, h_prev), dw_hh),
                "bias_ih": (dgates.sum((0, 1)), db_ih),
                "bias_hh": (g_h.sum((0, 1)), db_hh)}
    if P:
        ms = reserve[-T * B * H:].reshape(T, B, H)
        expected["weight_hr"] = (np.einsum("tbr,tbh->rh", dh_proj, ms), dw_hr)
    for name, (formed, core) in expected.items():
        assert_close(formed, core, np.float64, name)
