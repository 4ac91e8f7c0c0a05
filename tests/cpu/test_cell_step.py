"""One step of a cell at the NumPy level: ``fastrnn.functional.cell_forward/cell_backward`` (the
core) against ``fastrnn.reference``'s, and a loop of steps against one whole-sequence layer call
(outputs, and the chained step gradients against BPTT)."""
import numpy as np
import pytest

from fastrnn import functional, reference
from fastrnn._cells import MODES
from conftest import assert_close, make_layer_inputs

NAMES = ("input", "h", "c", "weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _step_args(a, t):
    return (a["x"][t], a["h0"], a["c0"], a["weight_ih"], a["weight_hh"], a["bias_ih"],
            a["bias_hh"])


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("size", [(1, 1, 1), (1, 3, 5), (7, 2, 13), (16, 9, 31)],
                         ids=lambda s: "B%dI%dH%d" % s)
@pytest.mark.parametrize("mode", MODES)
def test_cell_step_matches_reference(mode, size, bias):
    B, I, H = size
    a = make_layer_inputs(mode, 1, B, I, H, bias=bias, seed=B + H)
    rng = np.random.default_rng(H)
    dh = rng.standard_normal((B, H))
    dc = rng.standard_normal((B, H)) if mode == "lstm" else None
    want_h, want_c, want_state = reference.cell_forward(mode, *_step_args(a, 0))
    want = reference.cell_backward(want_state, dh, dc)
    for dtype in (np.float64, np.float32):
        args = [None if v is None else v.astype(dtype) for v in _step_args(a, 0)]
        h, c, state = functional.cell_forward(mode, *args)
        assert_close(h, want_h, dtype, f"{mode} h")
        assert_close(c, want_c, dtype, f"{mode} c")
        got = functional.cell_backward(state, dh.astype(dtype),
                                       None if dc is None else dc.astype(dtype))
        for name in NAMES:
            assert_close(got[name], want[name], dtype, f"{mode} d{name}")
        h2, c2, none = functional.cell_forward(mode, *args, training=False)
        assert none is None and np.array_equal(h, h2)


@pytest.mark.parametrize("mode", MODES)
def test_a_loop_of_steps_is_the_layer(mode):
    T, B, I, H = 6, 4, 3, 7
    a = make_layer_inputs(mode, T, B, I, H, seed=3)
    y, h_n, c_n, layer_state = functional.layer_forward(
        mode, a["x"], a["h0"], a["c0"], a["weight_ih"], a["weight_hh"], a["bias_ih"],
        a["bias_hh"])
    h, c, states = a["h0"], a["c0"], []
    for t in range(T):
        h, c, s = functional.cell_forward(mode, a["x"][t], h, c, a["weight_ih"], a["weight_hh"],
                                          a["bias_ih"], a["bias_hh"])
        states.append(s)
        np.testing.assert_allclose(h, y[t], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(h, h_n, rtol=1e-13, atol=1e-13)
    # BPTT by hand through the steps equals the layer's backward
    rng = np.random.default_rng(0)
    dy = rng.standard_normal((T, B, H))
    want = functional.layer_backward(layer_state, dy)
    dh, dc = np.zeros((B, H)), (np.zeros((B, H)) if mode == "lstm" else None)
    dw = 0
    for t in reversed(range(T)):
        g = functional.cell_backward(states[t], dh + dy[t], dc)
        np.testing.assert_allclose(g["input"], want["input"][t], rtol=1e-11, atol=1e-11)
        dh, dc = g["h"], g["c"]
        dw = dw + g["weight_hh"]
    np.testing.assert_allclose(dh, want["h0"], rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(dw, want["weight_hh"], rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("backend", [functional, reference], ids=["core", "reference"])
def test_cell_step_refuses_a_sequence(backend):
    a = make_layer_inputs("gru", 2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"x: expected a 2-D array \(B, I\) \(one step\), got "
                                         r"shape \(2, 3, 4\)"):
        backend.cell_forward("gru", a["x"], a["h0"], None, a["weight_ih"], a["weight_hh"],
                             a["bias_ih"], a["bias_hh"])
    _, _, state = backend.cell_forward("gru", a["x"][0], a["h0"], None, a["weight_ih"],
                                       a["weight_hh"], a["bias_ih"], a["bias_hh"])
    with pytest.raises(ValueError, match=r"dh: expected a 2-D array \(B, H\)"):
        backend.cell_backward(state, np.zeros(5))
