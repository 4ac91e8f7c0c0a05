"""The C++ core (fastrnn.functional and the module classes) against the NumPy reference.

Layer level: ``fastrnn.functional.layer_forward/layer_backward`` against
``fastrnn.reference.layer_forward/layer_backward`` for every cell, both dtypes, both directions,
with and without lengths and bias, awkward sizes, inference mode, every output and every
gradient. float64 is compared in float64; float32 runs fastrnn in float32 against the reference
in float64 on the same numbers. Tolerances come from conftest.TOLERANCES.

Module level: ``fastrnn.LSTM/GRU/RNN`` against ``fastrnn.reference.LSTM/GRU/RNN`` (the same
classes over the reference backend) with identical parameters: stacks, bidirection,
batch_first, lengths, initial states, unbatched input, dropout with a shared seed.
"""
import zlib

import numpy as np
import pytest

import fastrnn
from fastrnn import functional, reference
from conftest import assert_close, cast_inputs, make_layer_inputs, random_lengths

from fastrnn._cells import MODES  # noqa: E402
DTYPES = (np.float32, np.float64)
GRAD_NAMES = ("input", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")

# (T, B, I, H): single step / single sequence / everything 1, primes, a long sequence, H = 64.
SIZES = [
    (1, 1, 1, 1),
    (1, 4, 3, 5),
    (6, 1, 2, 3),
    (7, 5, 3, 11),
    (13, 6, 8, 17),
    (200, 2, 3, 7),
    (40, 3, 9, 64),
]
SIZE_IDS = ["T%dB%dI%dH%d" % s for s in SIZES]


def _forward(backend, mode, a, **kw):
    return backend.layer_forward(mode, a["x"], a["h0"], a["c0"], a["weight_ih"], a["weight_hh"],
                                 a["bias_ih"], a["bias_hh"], **kw)


def _lengths(kind, T, B, seed):
    if kind == "none":
        return None
    if kind == "full":  # given, but every sequence is T long
        return np.full(B, T, dtype=np.int64)
    rng = np.random.default_rng(seed + 7)
    if kind == "short":  # every sequence ends before T (the last steps are all padding)
        return rng.integers(1, max(T - 1, 1) + 1, size=B).astype(np.int64)
    return random_lengths(rng, T, B)  # "mixed": unsorted, includes 1 and T


def _output_grads(mode, T, B, H, seed):
    rng = np.random.default_rng(seed + 11)
    dy = rng.standard_normal((T, B, H))
    dh_n = rng.standard_normal((B, H))
    dc_n = rng.standard_normal((B, H)) if mode == "lstm" else None
    return dy, dh_n, dc_n


def _cast(v, dtype):
    return None if v is None else v.astype(dtype)


def _check_forward(label, dtype, lengths, got, want):
    """y, h_n, c_n of fastrnn against the reference; padded outputs exactly zero."""
    for name, g, w in zip(("y", "h_n", "c_n"), got, want):
        assert_close(g, w, dtype, f"{label} {name}")
    if lengths is not None:
        y = got[0]
        padded = np.arange(y.shape[0])[:, None] >= lengths[None, :]
        assert np.all(y[padded] == 0), f"{label}: padded outputs are not exactly 0"


def _run_pair(mode, size, dtype, *, reverse, lengths_kind, bias, seed, final_grads=True):
    """Run fastrnn (in dtype) and the reference (in float64) on the same inputs; compare all."""
    T, B, I, H = size
    # relu over 200 steps with widened weights grows to ~1e13 (finite, but not a useful test).
    scale = 1.0 if mode == "rnn_relu" and T > 50 else 2.0
    a = make_layer_inputs(mode, T, B, I, H, bias=bias, dtype=dtype, seed=seed, weight_scale=scale)
    a64 = cast_inputs(a, np.float64)  # exactly the numbers fastrnn sees
    lengths = _lengths(lengths_kind, T, B, seed)
    # rounded to dtype first, so that both implementations see the very same numbers
    grads = _output_grads(mode, T, B, H, seed)
    dy, dh_n, dc_n = (_cast(_cast(v, dtype), np.float64) for v in grads)
    if not final_grads:
        dh_n = dc_n = None

    y, h_n, c_n, state = _forward(functional, mode, a, lengths=lengths, reverse=reverse)
    ry, rh_n, rc_n, rstate = _forward(reference, mode, a64, lengths=lengths, reverse=reverse)
    label = f"{mode} {np.dtype(dtype)} T={T} B={B} I={I} H={H} rev={reverse} {lengths_kind}"

    for name, arr, shape in (("y", y, (T, B, H)), ("h_n", h_n, (B, H))):
        assert arr.shape == shape and arr.dtype == dtype, (name, arr.shape, arr.dtype)
    _check_forward(label, dtype, lengths, (y, h_n, c_n), (ry, rh_n, rc_n))

    g = functional.layer_backward(state, _cast(dy, dtype), _cast(dh_n, dtype), _cast(dc_n, dtype))
    rg = reference.layer_backward(rstate, dy, dh_n, dc_n)
    assert set(g) == set(GRAD_NAMES)
    for name in GRAD_NAMES:
        if g[name] is not None:
            assert g[name].dtype == dtype, (name, g[name].dtype)
        assert_close(g[name], rg[name], dtype, f"{label} d{name}")
    if mode != "lstm":
        assert c_n is None and g["c0"] is None
    if not bias:
        assert g["bias_ih"] is None and g["bias_hh"] is None
    return a, lengths, (y, h_n, c_n), g


# ---------------------------------------------------------------------------------------------
# layer level
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths_kind", ["none", "full", "mixed", "short"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("mode", MODES)
def test_layer_matches_reference(mode, dtype, size, reverse, lengths_kind):
    seed = zlib.crc32(repr((mode, size, reverse, lengths_kind)).encode())  # stable per case
    _run_pair(mode, size, dtype, reverse=reverse, lengths_kind=lengths_kind, bias=True,
              seed=seed)


@pytest.mark.parametrize("lengths_kind", ["none", "mixed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("size", [(1, 1, 2, 3), (7, 5, 3, 11), (30, 2, 4, 16)],
                         ids=lambda s: "T%dB%dI%dH%d" % s)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("mode", MODES)
def test_layer_without_bias_matches_reference(mode, dtype, size, reverse, lengths_kind):
    _run_pair(mode, size, dtype, reverse=reverse, lengths_kind=lengths_kind, bias=False, seed=3)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("mode", MODES)
def test_missing_final_state_gradients(mode, dtype):
    """dh_n = dc_n = None means zeros, in both implementations."""
    _, _, _, g = _run_pair(mode, (9, 4, 5, 6), dtype, reverse=True, lengths_kind="mixed",
                           bias=True, seed=5, final_grads=False)
    # and it is the same as passing zeros
    a = make_layer_inputs(mode, 9, 4, 5, 6, dtype=dtype, seed=5)
    lengths = _lengths("mixed", 9, 4, 5)
    *_, state = _forward(functional, mode, a, lengths=lengths, reverse=True)
    dy, _, _ = _output_grads(mode, 9, 4, 6, 5)
    zeros = np.zeros((4, 6), dtype)
    gz = functional.layer_backward(state, dy.astype(dtype), zeros,
                                   zeros if mode == "lstm" else None)
    for name in GRAD_NAMES:
        assert_close(gz[name], g[name], dtype, f"{mode} zeros vs None d{name}")


@pytest.mark.parametrize("lengths_kind", ["none", "mixed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("mode", MODES)
def test_inference_mode(mode, dtype, reverse, lengths_kind):
    """training=False: the same y, h_n, c_n as training mode (and the reference), state None."""
    T, B, I, H = 11, 5, 4, 9
    a = make_layer_inputs(mode, T, B, I, H, dtype=dtype, seed=17)
    lengths = _lengths(lengths_kind, T, B, 17)
    ty, th, tc, tstate = _forward(functional, mode, a, lengths=lengths, reverse=reverse)
    y, h_n, c_n, state = _forward(functional, mode, a, lengths=lengths, reverse=reverse,
                                  training=False)
    ry, rh, rc, _ = _forward(reference, mode, cast_inputs(a, np.float64), lengths=lengths,
                             reverse=reverse, training=False)
    assert state is None and tstate is not None
    label = f"{mode} inference rev={reverse} {lengths_kind}"
    # Same code path apart from where states live: identical up to the dtype's tolerance.
    assert_close(y, ty, dtype, f"{label} y vs training")
    assert_close(h_n, th, dtype, f"{label} h_n vs training")
    assert_close(c_n, tc, dtype, f"{label} c_n vs training")
    assert_close(y, ry, dtype, f"{label} y vs reference")
    assert_close(h_n, rh, dtype, f"{label} h_n vs reference")
    assert_close(c_n, rc, dtype, f"{label} c_n vs reference")
    if lengths is not None:
        assert np.all(y[np.arange(T)[:, None] >= lengths[None, :]] == 0)


@pytest.mark.parametrize("mode", MODES)
def test_padded_dy_is_ignored(mode):
    """dy entries at padded steps do not change any gradient (those outputs are constant 0)."""
    T, B, I, H = 8, 4, 3, 5
    a = make_layer_inputs(mode, T, B, I, H, seed=21)
    lengths = np.array([3, 8, 1, 5], dtype=np.int64)
    padded = np.arange(T)[:, None] >= lengths[None, :]
    dy, dh_n, dc_n = _output_grads(mode, T, B, H, 21)
    dy_noisy = dy.copy()
    dy_noisy[padded] = 1e3 * np.random.default_rng(0).standard_normal(dy[padded].shape)
    for reverse in (False, True):
        *_, state = _forward(functional, mode, a, lengths=lengths, reverse=reverse)
        g = functional.layer_backward(state, dy, dh_n, dc_n)
        g_noisy = functional.layer_backward(state, dy_noisy, dh_n, dc_n)
        for name in GRAD_NAMES:
            assert_close(g_noisy[name], g[name], np.float64, f"{mode} rev={reverse} d{name}")


@pytest.mark.parametrize("mode", MODES)
def test_inputs_untouched_and_backward_repeatable(mode):
    """Forward and backward do not write to their inputs; the saved state can be reused."""
    T, B, I, H = 6, 3, 4, 5
    a = make_layer_inputs(mode, T, B, I, H, seed=4)
    before = cast_inputs(a, np.float64)
    lengths = np.array([6, 2, 4], dtype=np.int64)
    lengths_before = lengths.copy()
    dy, dh_n, dc_n = _output_grads(mode, T, B, H, 4)
    grads_before = (dy.copy(), dh_n.copy(), None if dc_n is None else dc_n.copy())
    *_, state = _forward(functional, mode, a, lengths=lengths, reverse=True)
    g1 = functional.layer_backward(state, dy, dh_n, dc_n)
    g2 = functional.layer_backward(state, dy, dh_n, dc_n)
    for name in GRAD_NAMES:
        assert_close(g2[name], g1[name], np.float64, f"{mode} second backward d{name}")
    for name, v in a.items():
        if v is not None:
            np.testing.assert_array_equal(v, before[name], err_msg=name)
    np.testing.assert_array_equal(lengths, lengths_before)
    for v, v0 in zip((dy, dh_n, dc_n), grads_before):
        if v is not None:
            np.testing.assert_array_equal(v, v0)


# ---------------------------------------------------------------------------------------------
# module level: fastrnn.{LSTM,GRU,RNN} against fastrnn.reference.{LSTM,GRU,RNN}
# ---------------------------------------------------------------------------------------------

CLASSES = {
    "lstm": ("LSTM", {}),
    "gru": ("GRU", {}),
    "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
}


def _module_pair(mode, dtype, **kw):
    """(fastrnn module in dtype, reference module in float64) with identical parameters."""
    cls_name, extra = CLASSES[mode]
    ref_cls = getattr(reference, cls_name)
    kw = {**extra, **kw}
    fast = getattr(fastrnn, cls_name)(dtype=dtype, **kw)
    ref = ref_cls(dtype=np.float64, **kw)
    # Widen the weights a little so the gates leave their linear range, then copy them over.
    rng = np.random.default_rng(99)
    for name, p in fast.params.items():
        fast.params[name] = (p * rng.uniform(1.0, 2.0, p.shape)).astype(dtype)
    ref.params = {name: p.astype(np.float64) for name, p in fast.params.items()}
    return fast, ref


def _module_inputs(mode, fast, T, B, *, batch_first, unbatched, with_states, dtype, seed):
    rng = np.random.default_rng(seed)
    LD = fast.num_layers * fast.num_directions
    H, I = fast.hidden_size, fast.input_size
    if unbatched:
        x = rng.standard_normal((T, I))
        state_shape = (LD, H)
    else:
        x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
        state_shape = (LD, B, H)
    x = x.astype(dtype)
    hx = None
    if with_states:
        h0 = (0.5 * rng.standard_normal(state_shape)).astype(dtype)
        hx = (h0, (0.5 * rng.standard_normal(state_shape)).astype(dtype)) if mode == "lstm" else h0
    return x, hx, state_shape


def _to64(hx):
    if hx is None:
        return None
    if isinstance(hx, tuple):
        return tuple(v.astype(np.float64) for v in hx)
    return hx.astype(np.float64)


def _compare_modules(mode, dtype, *, num_layers, bidirectional, batch_first=False, lengths=False,
                     with_states=True, unbatched=False, bias=True, dropout=0.0, T=7, B=4, I=5,
                     H=6, seed=0):
    fast, ref = _module_pair(mode, dtype, input_size=I, hidden_size=H, num_layers=num_layers,
                             bias=bias, batch_first=batch_first, dropout=dropout,
                             bidirectional=bidirectional, seed=seed)
    x, hx, state_shape = _module_inputs(mode, fast, T, B, batch_first=batch_first,
                                        unbatched=unbatched, with_states=with_states,
                                        dtype=dtype, seed=seed + 1)
    lens = random_lengths(np.random.default_rng(seed + 2), T, B) if lengths else None
    label = (f"{mode} {np.dtype(dtype)} L={num_layers} bidir={bidirectional} "
             f"batch_first={batch_first} lengths={lengths} states={with_states} "
             f"unbatched={unbatched} dropout={dropout}")

    out = fast(x, hx, lengths=lens)
    rout = ref(x.astype(np.float64), _to64(hx), lengths=lens)
    y, hn = out
    ry, rhn = rout
    assert y.dtype == dtype and y.shape == ry.shape
    assert_close(y, ry, dtype, f"{label} y")
    if mode == "lstm":
        (h_n, c_n), (rh_n, rc_n) = hn, rhn
        assert h_n.shape == state_shape and c_n.shape == state_shape
        assert_close(h_n, rh_n, dtype, f"{label} h_n")
        assert_close(c_n, rc_n, dtype, f"{label} c_n")
    else:
        assert hn.shape == state_shape
        assert_close(hn, rhn, dtype, f"{label} h_n")
    if lens is not None:
        steps = np.arange(T)
        padded = (steps[None, :] >= lens[:, None]) if batch_first else \
            (steps[:, None] >= lens[None, :])
        assert np.all(y[padded] == 0), f"{label}: padded outputs are not exactly 0"

    rng = np.random.default_rng(seed + 3)
    dy = rng.standard_normal(y.shape)
    dh_n = rng.standard_normal(state_shape)
    dc_n = rng.standard_normal(state_shape) if mode == "lstm" else None
    g = fast.backward(dy.astype(dtype), dh_n.astype(dtype),
                      None if dc_n is None else dc_n.astype(dtype))
    rg = ref.backward(dy, dh_n, dc_n)
    expected_keys = {"input", "h0"} | set(fast.params) | ({"c0"} if mode == "lstm" else set())
    assert set(g) == expected_keys and set(rg) == expected_keys
    for name in sorted(expected_keys):
        assert g[name].dtype == dtype, name
        assert_close(g[name], rg[name], dtype, f"{label} d{name}")
    return fast, (x, hx, lens), y


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bidir"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("mode", MODES)
def test_module_matches_reference(mode, num_layers, bidirectional, dtype):
    # lengths and initial states on; batch_first alternates with the depth to cover both.
    _compare_modules(mode, dtype, num_layers=num_layers, bidirectional=bidirectional,
                     batch_first=num_layers == 2, lengths=True, with_states=True,
                     seed=num_layers * 10 + bidirectional)


@pytest.mark.parametrize("with_states", [False, True], ids=["zero_states", "states"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("mode", MODES)
def test_module_options_match_reference(mode, batch_first, lengths, with_states):
    _compare_modules(mode, np.float64, num_layers=2, bidirectional=True, batch_first=batch_first,
                     lengths=lengths, with_states=with_states, T=5, B=3, I=4, H=3, seed=40)


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("with_states", [False, True], ids=["zero_states", "states"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("mode", MODES)
def test_module_unbatched_matches_reference(mode, dtype, with_states, batch_first):
    """2-D input (T, input_size), whatever batch_first says, as torch.nn does."""
    _compare_modules(mode, dtype, num_layers=2, bidirectional=True, unbatched=True,
                     batch_first=batch_first, with_states=with_states, T=6, I=3, H=4, seed=50)


@pytest.mark.parametrize("mode", MODES)
def test_module_unbatched_equals_batch_of_one(mode):
    """Unbatched input gives the batch-of-one results with the batch axis dropped."""
    fast, _ = _module_pair(mode, np.float64, input_size=3, hidden_size=4, num_layers=2,
                           bidirectional=True, seed=55)
    x, hx, _ = _module_inputs(mode, fast, 6, 1, batch_first=False, unbatched=True,
                              with_states=True, dtype=np.float64, seed=56)
    y, hn = fast(x, hx)
    dy = np.random.default_rng(57).standard_normal(y.shape)
    g = fast.backward(dy)
    hx1 = None if hx is None else (tuple(v[:, None] for v in hx) if mode == "lstm"
                                   else hx[:, None])
    y1, hn1 = fast(x[:, None], hx1)
    g1 = fast.backward(dy[:, None])
    assert_close(y, y1[:, 0], np.float64, f"{mode} unbatched y")
    for a, b in zip(hn if mode == "lstm" else (hn,), hn1 if mode == "lstm" else (hn1,)):
        assert_close(a, b[:, 0], np.float64, f"{mode} unbatched final state")
    for k in g:
        want = g1[k][:, 0] if k in ("input", "h0", "c0") else g1[k]
        assert_close(g[k], want, np.float64, f"{mode} unbatched d{k}")


@pytest.mark.parametrize("mode", MODES)
def test_module_without_bias_matches_reference(mode):
    _compare_modules(mode, np.float64, num_layers=2, bidirectional=True, bias=False,
                     lengths=True, seed=60)


@pytest.mark.parametrize("mode", MODES)
def test_module_long_sequence_matches_reference(mode):
    _compare_modules(mode, np.float32, num_layers=2, bidirectional=True, lengths=True,
                     T=120, B=3, I=4, H=16, seed=70)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("mode", MODES)
def test_module_dropout_same_seed_matches_reference(mode, dtype):
    """Both classes share the stacking code: one seed gives the same dropout masks."""
    fast, (x, hx, lens), y = _compare_modules(mode, dtype, num_layers=3, bidirectional=True,
                                              lengths=True, dropout=0.4, seed=80)
    # The masks really act: without dropout (eval mode) the same call gives other outputs.
    y_eval = fast.eval()(x, hx, lengths=lens)[0]
    assert not np.allclose(y_eval, y)


@pytest.mark.parametrize("mode", MODES)
def test_nan_and_inf_propagate_like_the_reference(mode):
    """A NaN or Inf in the input reaches the same outputs as in the reference."""
    from fastrnn import functional, reference

    rng = np.random.default_rng(11)
    T, B, I, H = 4, 3, 2, 5
    G = reference.num_gates(mode)
    x = rng.standard_normal((T, B, I))
    x[1, 0, 0] = np.nan
    x[2, 1, 1] = np.inf
    x[0, 2, 0] = -np.inf
    args = (x, rng.standard_normal((B, H)), rng.standard_normal((B, H)) if mode == "lstm" else None,
            rng.standard_normal((G * H, I)), rng.standard_normal((G * H, H)),
            rng.standard_normal(G * H), rng.standard_normal(G * H))
    with np.errstate(all="ignore"):
        got = functional.layer_forward(mode, *args, training=False)[:3]
        want = reference.layer_forward(mode, *args, training=False)[:3]
    for name, g, w in zip(("y", "h_n", "c_n"), got, want):
        if w is None:
            assert g is None
            continue
        print(name, "nan positions fastrnn", np.argwhere(np.isnan(g)).tolist(),
              "reference", np.argwhere(np.isnan(w)).tolist())
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=name)
        finite = np.isfinite(w)
        np.testing.assert_array_equal(np.isfinite(g), finite, err_msg=name)
        np.testing.assert_allclose(g[finite], w[finite], rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (3, 1, 1, 1), (1, 1, 5, 1), (2, 1, 3, 2),
                                     (1, 2, 1, 1)])
def test_degenerate_sizes_every_gemm_shape(mode, T, B, I, H):
    """Size-1 dimensions send single-row products to GEMV (csrc/cpu/blas.h): every branch."""
    from fastrnn import reference

    rng = np.random.default_rng(T * 1000 + B * 100 + I * 10 + H)
    kwargs = dict(num_layers=2, bidirectional=True, dtype=np.float64, seed=3)
    if mode.startswith("rnn_"):
        kwargs["nonlinearity"] = mode[4:]
    cls = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}[mode.split("_")[0]]
    fast, ref = getattr(fastrnn, cls)(I, H, **kwargs), getattr(reference, cls)(I, H, **kwargs)
    x = rng.standard_normal((T, B, I))
    y_fast, _ = fast(x)
    y_ref, _ = ref(x)
    assert_close(y_fast, y_ref, np.float64, "y")
    dy = rng.standard_normal(y_ref.shape)
    g_fast, g_ref = fast.backward(dy), ref.backward(dy)
    assert set(g_fast) == set(g_ref)
    for name in g_ref:
        assert_close(g_fast[name], g_ref[name], np.float64, name)


# ---------------------------------------------------------------------------------------------
# LSTM with a projection (proj_size): h = W_hr (o * tanh(c))
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths_kind", ["none", "mixed", "short"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("size", [(1, 1, 1, 2, 1), (7, 5, 3, 11, 4), (6, 3, 4, 8, 7),
                                  (60, 2, 5, 9, 3)], ids=lambda s: "T%dB%dI%dH%dP%d" % s)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_lstm_projection_matches_reference(dtype, size, reverse, lengths_kind, bias):
    T, B, I, H, P = size
    seed = zlib.crc32(repr((size, reverse, lengths_kind, bias)).encode())
    rng = np.random.default_rng(seed)
    k = 2.0 / np.sqrt(H)
    a64 = {
        "x": rng.standard_normal((T, B, I)),
        "h0": 0.5 * rng.standard_normal((B, P)),
        "c0": 0.5 * rng.standard_normal((B, H)),
        "weight_ih": rng.uniform(-k, k, (4 * H, I)),
        "weight_hh": rng.uniform(-k, k, (4 * H, P)),
        "bias_ih": rng.uniform(-k, k, 4 * H) if bias else None,
        "bias_hh": rng.uniform(-k, k, 4 * H) if bias else None,
        "weight_hr": rng.uniform(-k, k, (P, H)),
    }
    a = {n: _cast(v, dtype) for n, v in a64.items()}
    a64 = {n: _cast(v, np.float64) for n, v in a.items()}  # the very numbers fastrnn sees
    lengths = _lengths(lengths_kind, T, B, seed)
    dy = rng.standard_normal((T, B, P)).astype(dtype).astype(np.float64)
    dh_n = rng.standard_normal((B, P)).astype(dtype).astype(np.float64)
    dc_n = rng.standard_normal((B, H)).astype(dtype).astype(np.float64)

    def run(backend, arrays, cast):
        y, h_n, c_n, state = _forward(backend, "lstm", arrays, weight_hr=arrays["weight_hr"],
                                      lengths=lengths, reverse=reverse)
        g = backend.layer_backward(state, cast(dy), cast(dh_n), cast(dc_n))
        return y, h_n, c_n, g

    y, h_n, c_n, g = run(functional, a, lambda v: _cast(v, dtype))
    ry, rh_n, rc_n, rg = run(reference, a64, lambda v: v)
    label = f"proj {np.dtype(dtype)} T={T} B={B} I={I} H={H} P={P} rev={reverse} {lengths_kind}"
    assert y.shape == (T, B, P) and h_n.shape == (B, P) and c_n.shape == (B, H)
    _check_forward(label, dtype, lengths, (y, h_n, c_n), (ry, rh_n, rc_n))
    assert set(g) == set(GRAD_NAMES)
    for name in GRAD_NAMES:
        assert_close(g[name], rg[name], dtype, f"{label} d{name}")
    assert g["weight_hr"].shape == (P, H)
    # inference computes the same outputs and saves nothing
    yi, hi, ci, si = _forward(functional, "lstm", a, weight_hr=a["weight_hr"], lengths=lengths,
                              reverse=reverse, training=False)
    assert si is None
    np.testing.assert_array_equal(yi, y)
    np.testing.assert_array_equal(hi, h_n)
    np.testing.assert_array_equal(ci, c_n)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("layers,bidirectional,batch_first", [(1, False, False), (2, True, True),
                                                             (3, True, False)])
def test_lstm_proj_module_matches_reference(dtype, layers, bidirectional, batch_first):
    kwargs = dict(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
                  proj_size=3, dtype=dtype, seed=11, dropout=0.3)
    fast, ref = fastrnn.LSTM(4, 7, **kwargs), reference.LSTM(4, 7, **kwargs)
    rng = np.random.default_rng(layers)
    T, B, D = 6, 3, 2 if bidirectional else 1
    x = rng.standard_normal((B, T, 4) if batch_first else (T, B, 4)).astype(dtype)
    hx = (rng.standard_normal((layers * D, B, 3)).astype(dtype),
          rng.standard_normal((layers * D, B, 7)).astype(dtype))
    lengths = np.array([6, 1, 4])
    y, (h, c) = fast(x, hx, lengths=lengths)
    ry, (rh, rc) = ref(x, hx, lengths=lengths)
    for name, got, want in (("y", y, ry), ("h_n", h, rh), ("c_n", c, rc)):
        assert_close(got, want, dtype, name)
    dy = rng.standard_normal(y.shape).astype(dtype)
    g, rg = fast.backward(dy), ref.backward(dy)
    assert set(g) == set(rg) and any(k.startswith("weight_hr") for k in g)
    for name in rg:
        assert_close(g[name], rg[name], dtype, name)
