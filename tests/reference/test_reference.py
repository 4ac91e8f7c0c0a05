"""Checks of the NumPy reference (fastrnn.reference) on its own.

- gradients of every input against central finite differences in float64;
- variable-length semantics (padded outputs, final states, reverse direction);
- float32 against float64;
- against torch.nn.RNN / LSTM / GRU when torch is importable.
"""

import numpy as np
import pytest

from conftest import TOLERANCES
from fastrnn import reference

MODES = reference.MODES
NAMES = ("x", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh")
GRAD_KEY = {"x": "input"}  # layer_backward's key for an input, where it differs from its name

# Problem size for the per-element checks, and lengths with distinct values including T and 1.
T, B, I, H = 4, 3, 5, 4
LENGTHS = np.array([2, 4, 1], dtype=np.int64)

# Tolerances live in the one table of conftest.py.
FD_EPS = 1e-6


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def make_arrays(mode, *, bias=True, dtype=np.float64, seed=0, t=T, b=B, i=I, h=H):
    """Random inputs for one layer: a dict keyed like layer_forward's arguments."""
    rng = np.random.default_rng(seed)
    g = reference.num_gates(mode)
    k = 1.0 / np.sqrt(h)  # torch's init range, widened a little to exercise the nonlinearities
    a = {
        "x": rng.standard_normal((t, b, i)),
        "h0": 0.5 * rng.standard_normal((b, h)),
        "c0": 0.5 * rng.standard_normal((b, h)) if mode == "lstm" else None,
        "weight_ih": rng.uniform(-2 * k, 2 * k, (g * h, i)),
        "weight_hh": rng.uniform(-2 * k, 2 * k, (g * h, h)),
        "bias_ih": rng.uniform(-k, k, g * h) if bias else None,
        "bias_hh": rng.uniform(-k, k, g * h) if bias else None,
    }
    return {n: (None if v is None else v.astype(dtype)) for n, v in a.items()}


def forward(mode, a, **kw):
    return reference.layer_forward(
        mode, a["x"], a["h0"], a["c0"],
        a["weight_ih"], a["weight_hh"], a["bias_ih"], a["bias_hh"], **kw
    )


def loss_weights(mode, a, seed=1):
    """Random weights of the linear loss L = sum(wy*y) + sum(wh*h_n) + sum(wc*c_n)."""
    rng = np.random.default_rng(seed)
    t, b, _ = a["x"].shape
    h = a["h0"].shape[1]
    dt = a["x"].dtype
    wy = rng.standard_normal((t, b, h)).astype(dt)
    wh = rng.standard_normal((b, h)).astype(dt)
    wc = rng.standard_normal((b, h)).astype(dt) if mode == "lstm" else None
    return wy, wh, wc


def linear_loss(y, h_n, c_n, wy, wh, wc):
    loss = np.sum(wy * y) + np.sum(wh * h_n)
    if c_n is not None:
        loss += np.sum(wc * c_n)
    return loss


def rel_err(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    if want.size == 0:
        return 0.0
    return float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))


def check_close(label, got, want, tol):
    err = rel_err(got, want)
    print(f"{label}: largest relative difference {err:.3e} (tolerance {tol:.0e})")
    assert err <= tol, f"{label}: {err:.3e} > {tol:.0e}"


def present(a):
    return [n for n in NAMES if a[n] is not None]


# --------------------------------------------------------------------------------------------
# finite differences
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode", MODES)
def test_gradients_match_finite_differences(mode, reverse, lengths, bias):
    a = make_arrays(mode, bias=bias)
    wy, wh, wc = loss_weights(mode, a)

    def loss():
        y, h_n, c_n, _ = forward(mode, a, lengths=lengths, reverse=reverse, training=False)
        return linear_loss(y, h_n, c_n, wy, wh, wc)

    y, h_n, c_n, saved = forward(mode, a, lengths=lengths, reverse=reverse)
    # The loss's gradients wrt the outputs: dy = wy, dh_n = wh (nonzero), dc_n = wc (nonzero).
    grads = reference.layer_backward(saved, wy, wh, wc)

    assert set(grads) == {"input", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh",
                          "weight_hr"}
    assert grads["weight_hr"] is None
    for name in NAMES:
        if a[name] is None:
            assert grads[GRAD_KEY.get(name, name)] is None, name
    for name in present(a):
        arr = a[name]
        numeric = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + FD_EPS
            up = loss()
            arr[idx] = old - FD_EPS
            down = loss()
            arr[idx] = old
            numeric[idx] = (up - down) / (2 * FD_EPS)
        analytic = grads[GRAD_KEY.get(name, name)]
        assert analytic.dtype == np.float64
        check_close(f"{mode} {name}", analytic, numeric, TOLERANCES["finite_difference_f64"])


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_lstm_projection_gradients_match_finite_differences(reverse, lengths):
    """LSTM with proj_size P: h = W_hr (o * tanh(c)); every input, weight_hr included."""
    rng = np.random.default_rng(5)
    P = 3
    k = 1.0 / np.sqrt(H)
    a = {
        "x": rng.standard_normal((T, B, I)),
        "h0": 0.5 * rng.standard_normal((B, P)),
        "c0": 0.5 * rng.standard_normal((B, H)),
        "weight_ih": rng.uniform(-2 * k, 2 * k, (4 * H, I)),
        "weight_hh": rng.uniform(-2 * k, 2 * k, (4 * H, P)),
        "bias_ih": rng.uniform(-k, k, 4 * H),
        "bias_hh": rng.uniform(-k, k, 4 * H),
        "weight_hr": rng.uniform(-2 * k, 2 * k, (P, H)),
    }
    wy, wh, wc = rng.standard_normal((T, B, P)), rng.standard_normal((B, P)), rng.standard_normal((B, H))

    def run(training):
        return reference.layer_forward("lstm", a["x"], a["h0"], a["c0"], a["weight_ih"],
                                       a["weight_hh"], a["bias_ih"], a["bias_hh"],
                                       weight_hr=a["weight_hr"], lengths=lengths,
                                       reverse=reverse, training=training)

    y, h_n, c_n, saved = run(True)
    assert y.shape == (T, B, P) and h_n.shape == (B, P) and c_n.shape == (B, H)
    grads = reference.layer_backward(saved, wy, wh, wc)
    for name, arr in a.items():
        numeric = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + FD_EPS
            up = linear_loss(*run(False)[:3], wy, wh, wc)
            arr[idx] = old - FD_EPS
            down = linear_loss(*run(False)[:3], wy, wh, wc)
            arr[idx] = old
            numeric[idx] = (up - down) / (2 * FD_EPS)
        check_close(f"proj {name}", grads[GRAD_KEY.get(name, name)], numeric,
                    TOLERANCES["finite_difference_f64"])


@pytest.mark.parametrize("mode", MODES)
def test_missing_final_state_gradients_mean_zeros(mode):
    a = make_arrays(mode)
    wy, _, _ = loss_weights(mode, a)
    *_, saved = forward(mode, a, lengths=LENGTHS)
    g_none = reference.layer_backward(saved, wy)
    zeros = np.zeros_like(a["h0"])
    g_zeros = reference.layer_backward(saved, wy, zeros, zeros if mode == "lstm" else None)
    for k, v in g_none.items():
        assert (v is None) == (g_zeros[k] is None), k
        if v is not None:
            np.testing.assert_array_equal(v, g_zeros[k], err_msg=k)


# --------------------------------------------------------------------------------------------
# variable lengths
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode", MODES)
def test_padded_outputs_are_exactly_zero(mode, reverse):
    a = make_arrays(mode)
    y, *_ = forward(mode, a, lengths=LENGTHS, reverse=reverse)
    for b, n in enumerate(LENGTHS):
        assert np.all(y[n:, b] == 0.0)
        if mode != "rnn_relu":  # relu outputs are legitimately 0 at valid steps
            assert np.all(y[:n, b] != 0.0)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode", MODES)
def test_each_sequence_matches_a_run_truncated_to_its_length(mode, reverse):
    a = make_arrays(mode)
    wy, wh, wc = loss_weights(mode, a)
    # Put garbage in dy at padded steps: it must be ignored.
    wy_padded = wy.copy()
    for b, n in enumerate(LENGTHS):
        wy_padded[n:, b] = 1e3
    y, h_n, c_n, saved = forward(mode, a, lengths=LENGTHS, reverse=reverse)
    g = reference.layer_backward(saved, wy_padded, wh, wc)
    tol = TOLERANCES["reference_truncated_f64"]
    for b, n in enumerate(LENGTHS):
        one = dict(a)
        one["x"] = a["x"][:n, b:b + 1]
        one["h0"] = a["h0"][b:b + 1]
        one["c0"] = None if a["c0"] is None else a["c0"][b:b + 1]
        y1, h1, c1, s1 = forward(mode, one, reverse=reverse)
        check_close(f"y[:{n}, {b}]", y[:n, b:b + 1], y1, tol)
        check_close(f"h_n[{b}]", h_n[b:b + 1], h1, tol)
        if mode == "lstm":
            check_close(f"c_n[{b}]", c_n[b:b + 1], c1, tol)
        # Backward: per-sequence gradients match; weight gradients add up over sequences.
        g1 = reference.layer_backward(
            s1, wy[:n, b:b + 1], wh[b:b + 1], None if wc is None else wc[b:b + 1]
        )
        check_close(f"dx[:{n}, {b}]", g["input"][:n, b:b + 1], g1["input"], tol)
        assert np.all(g["input"][n:, b] == 0.0)
        check_close(f"dh0[{b}]", g["h0"][b:b + 1], g1["h0"], tol)
        if mode == "lstm":
            check_close(f"dc0[{b}]", g["c0"][b:b + 1], g1["c0"], tol)
        if b == 0:
            summed = {k: g1[k] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        else:
            for k in summed:
                summed[k] = summed[k] + g1[k]
        if reverse:
            # The reverse direction is the forward direction over the flipped sequence.
            flipped = dict(one, x=one["x"][::-1])
            y2, h2, c2, _ = forward(mode, flipped, reverse=False, training=False)
            check_close(f"flipped y[:{n}, {b}]", y[:n, b:b + 1], y2[::-1], tol)
            check_close(f"flipped h_n[{b}]", h_n[b:b + 1], h2, tol)
            if mode == "lstm":
                check_close(f"flipped c_n[{b}]", c_n[b:b + 1], c2, tol)
    for k in summed:
        check_close(f"summed {k}", g[k], summed[k], tol)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode", MODES)
def test_lengths_all_T_is_identical_to_no_lengths(mode, reverse):
    a = make_arrays(mode)
    wy, wh, wc = loss_weights(mode, a)
    full = np.full(B, T, dtype=np.int64)
    y0, h0, c0, s0 = forward(mode, a, lengths=None, reverse=reverse)
    y1, h1, c1, s1 = forward(mode, a, lengths=full, reverse=reverse)
    np.testing.assert_array_equal(y0, y1)
    np.testing.assert_array_equal(h0, h1)
    if mode == "lstm":
        np.testing.assert_array_equal(c0, c1)
    g0 = reference.layer_backward(s0, wy, wh, wc)
    g1 = reference.layer_backward(s1, wy, wh, wc)
    for k in g0:
        if g0[k] is not None:
            np.testing.assert_array_equal(g0[k], g1[k], err_msg=k)


@pytest.mark.parametrize("mode", MODES)
def test_inference_mode_saves_nothing_and_gives_the_same_outputs(mode):
    a = make_arrays(mode)
    y0, h0, c0, s0 = forward(mode, a, lengths=LENGTHS)
    y1, h1, c1, s1 = forward(mode, a, lengths=LENGTHS, training=False)
    assert s0 is not None and s1 is None
    np.testing.assert_array_equal(y0, y1)
    np.testing.assert_array_equal(h0, h1)
    assert (c0 is None) == (c1 is None) == (mode != "lstm")
    if mode == "lstm":
        np.testing.assert_array_equal(c0, c1)


# --------------------------------------------------------------------------------------------
# float32
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode", MODES)
def test_float32_agrees_with_float64(mode, reverse):
    shape = dict(t=9, b=4, i=7, h=6)
    lengths = np.array([9, 3, 1, 6])
    a64 = make_arrays(mode, dtype=np.float64, **shape)
    a32 = make_arrays(mode, dtype=np.float32, **shape)
    w64 = loss_weights(mode, a64)
    w32 = loss_weights(mode, a32)
    y64, h64, c64, s64 = forward(mode, a64, lengths=lengths, reverse=reverse)
    y32, h32, c32, s32 = forward(mode, a32, lengths=lengths, reverse=reverse)
    g64 = reference.layer_backward(s64, *w64)
    g32 = reference.layer_backward(s32, *w32)
    tol = TOLERANCES["reference_f32_vs_f64"]
    outs = [("y", y32, y64), ("h_n", h32, h64), ("c_n", c32, c64)]
    outs += [(f"grad {k}", g32[k], g64[k]) for k in g64]
    for label, got, want in outs:
        if want is None:
            assert got is None, label
            continue
        assert got.dtype == np.float32, label
        check_close(f"{mode} {label}", got, want, tol)


# --------------------------------------------------------------------------------------------
# API details and argument validation
# --------------------------------------------------------------------------------------------


def test_modes_and_gate_counts():
    assert reference.MODES == ("rnn_tanh", "rnn_relu", "lstm", "gru")
    assert [reference.num_gates(m) for m in reference.MODES] == [1, 1, 4, 3]
    with pytest.raises(ValueError, match="mode"):
        reference.num_gates("lstmp")


@pytest.mark.parametrize(
    "mode, change, error, match",
    [
        ("lstm", {"c0": None}, ValueError, "c0"),
        ("gru", {"c0": np.zeros((B, H))}, ValueError, "c0"),
        ("rnn_tanh", {"bias_hh": None}, ValueError, "bias_ih, bias_hh"),
        ("rnn_tanh", {"weight_ih": np.zeros((H, I + 1))}, ValueError, "weight_ih"),
        ("gru", {"weight_hh": np.zeros((3 * H, H + 1))}, ValueError, "weight_hh"),
        ("lstm", {"h0": np.zeros((B + 1, H))}, ValueError, "h0"),
        ("lstm", {"bias_ih": np.zeros(4 * H + 1)}, ValueError, "bias_ih"),
        ("rnn_relu", {"x": np.zeros((T, B, I), dtype=np.int64)}, TypeError, "x"),
        ("rnn_relu", {"h0": np.zeros((B, H), dtype=np.float32)}, TypeError, "h0"),
        ("rnn_relu", {"lengths": np.array([1, 2, T + 1])}, ValueError, "lengths"),
        ("rnn_relu", {"lengths": np.array([1, 0, 2])}, ValueError, "lengths"),
        ("rnn_relu", {"lengths": np.array([1, 2])}, ValueError, "lengths"),
        ("rnn_relu", {"lengths": np.array([1.0, 2.0, 3.0])}, ValueError, "lengths"),
    ],
)
def test_forward_rejects_bad_arguments(mode, change, error, match):
    a = make_arrays(mode)
    lengths = change.pop("lengths", None)
    a.update(change)
    with pytest.raises(error, match=match):
        forward(mode, a, lengths=lengths)


def test_backward_rejects_bad_arguments():
    a = make_arrays("gru")
    y, *_, saved = forward("gru", a)
    with pytest.raises(TypeError, match="saved"):
        reference.layer_backward(None, y)
    with pytest.raises(ValueError, match="dy"):
        reference.layer_backward(saved, y[:-1])
    with pytest.raises(ValueError, match="dh_n"):
        reference.layer_backward(saved, y, np.zeros((B, H + 1)))
    with pytest.raises(ValueError, match="dc_n"):
        reference.layer_backward(saved, y, None, np.zeros((B, H)))


# --------------------------------------------------------------------------------------------
# against torch.nn
# --------------------------------------------------------------------------------------------


def _torch_module(torch, mode, bias):
    kw = dict(input_size=I, hidden_size=H, num_layers=1, bias=bias, bidirectional=True,
              dtype=torch.float64)
    if mode == "lstm":
        return torch.nn.LSTM(**kw)
    if mode == "gru":
        return torch.nn.GRU(**kw)
    return torch.nn.RNN(nonlinearity=mode[len("rnn_"):], **kw)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "packed"])
@pytest.mark.parametrize("mode", MODES)
def test_matches_torch(mode, lengths, bias):
    torch = pytest.importorskip("torch")
    # One bidirectional torch layer = our forward direction + our reverse direction.
    fw = make_arrays(mode, bias=bias, seed=10)
    bw = make_arrays(mode, bias=bias, seed=11)
    bw["x"] = fw["x"]
    wy_f, wh_f, wc_f = loss_weights(mode, fw, seed=12)
    wy_b, wh_b, wc_b = loss_weights(mode, fw, seed=13)

    m = _torch_module(torch, mode, bias)
    params = {}
    for suffix, a in (("_l0", fw), ("_l0_reverse", bw)):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            if a[name] is not None:
                p = getattr(m, name + suffix)
                with torch.no_grad():
                    p.copy_(torch.from_numpy(a[name]))
                params[(suffix, name)] = p

    def leaf(*arrays):
        return torch.from_numpy(np.stack(arrays)).requires_grad_(True)

    tx = torch.from_numpy(fw["x"]).requires_grad_(True)
    th0 = leaf(fw["h0"], bw["h0"])
    tc0 = leaf(fw["c0"], bw["c0"]) if mode == "lstm" else None
    state = (th0, tc0) if mode == "lstm" else th0
    if lengths is None:
        ty, tstate = m(tx, state)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            tx, torch.from_numpy(lengths), enforce_sorted=False
        )
        ty, tstate = m(packed, state)
        ty, _ = torch.nn.utils.rnn.pad_packed_sequence(ty, total_length=T)
    th_n, tc_n = tstate if mode == "lstm" else (tstate, None)
    tloss = (ty * torch.from_numpy(np.concatenate([wy_f, wy_b], axis=2))).sum()
    tloss = tloss + (th_n * torch.from_numpy(np.stack([wh_f, wh_b]))).sum()
    if mode == "lstm":
        tloss = tloss + (tc_n * torch.from_numpy(np.stack([wc_f, wc_b]))).sum()
    tloss.backward()

    yf, hf, cf, sf = forward(mode, fw, lengths=lengths, reverse=False)
    yb, hb, cb, sb = forward(mode, bw, lengths=lengths, reverse=True)
    gf = reference.layer_backward(sf, wy_f, wh_f, wc_f)
    gb = reference.layer_backward(sb, wy_b, wh_b, wc_b)

    tol = TOLERANCES["reference_torch_f64"]
    check_close("y", np.concatenate([yf, yb], axis=2), ty.detach().numpy(), tol)
    check_close("h_n", np.stack([hf, hb]), th_n.detach().numpy(), tol)
    if mode == "lstm":
        check_close("c_n", np.stack([cf, cb]), tc_n.detach().numpy(), tol)
    check_close("grad x", gf["input"] + gb["input"], tx.grad.numpy(), tol)
    check_close("grad h0", np.stack([gf["h0"], gb["h0"]]), th0.grad.numpy(), tol)
    if mode == "lstm":
        check_close("grad c0", np.stack([gf["c0"], gb["c0"]]), tc0.grad.numpy(), tol)
    for (suffix, name), p in params.items():
        g = gf if suffix == "_l0" else gb
        check_close(f"grad {name}{suffix}", g[name], p.grad.numpy(), tol)
    if not bias:
        for g in (gf, gb):
            assert g["bias_ih"] is None and g["bias_hh"] is None
