"""Malformed input raises the documented Python exceptions, naming the argument; never a crash.

Covers the layer functions (fastrnn.functional), the module classes (fastrnn.RNN/LSTM/GRU) and
the raw extension (fastrnn._core). Also: non-contiguous inputs are accepted (copied) and give the
same results as contiguous copies.
"""
import pickle
import re

import numpy as np
import pytest

import fastrnn
from fastrnn import _core, functional
from conftest import assert_close, make_layer_inputs

from fastrnn._cells import MODES  # noqa: E402
T, B, I, H = 5, 3, 4, 6


def named(name: str) -> str:
    """A ``pytest.raises(match=...)`` pattern: the message starts with ``name:``.

    Anchored, so that e.g. ``x`` does not match the ``x`` inside ``expected``. ``name`` is taken
    literally unless it contains a regex group ``(``...``)``.
    """
    return "^" + (name if "(" in name else re.escape(name)) + ":"


def test_exception_hierarchy():
    assert issubclass(fastrnn.DtypeError, TypeError)
    assert issubclass(fastrnn.LengthsError, ValueError)
    assert issubclass(fastrnn.LengthsError, IndexError)
    # the extension raises the very same classes
    assert _core.DtypeError is fastrnn.DtypeError
    assert _core.LengthsError is fastrnn.LengthsError


# ---------------------------------------------------------------------------------------------
# fastrnn.functional
# ---------------------------------------------------------------------------------------------


def _args(mode, dtype=np.float64, bias=True):
    return make_layer_inputs(mode, T, B, I, H, bias=bias, dtype=dtype, seed=0)


def _fwd(mode, a, **kw):
    return functional.layer_forward(mode, a["x"], a["h0"], a["c0"], a["weight_ih"],
                                    a["weight_hh"], a["bias_ih"], a["bias_hh"], **kw)


def _with(a, **changes):
    b = dict(a)
    b.update(changes)
    return b


def _bad_shapes(mode):
    """(argument name, replacement, exception type, match) for every argument of a layer."""
    G = functional.num_gates(mode)
    f = np.float64
    cases = [
        ("x", np.zeros((T, I), f), ValueError, "x"),               # 2-D
        ("x", np.zeros((T, B, I, 1), f), ValueError, "x"),         # 4-D
        ("x", np.zeros((T, B, I + 1), f), ValueError, "weight_ih"),  # I disagrees with weight_ih
        ("h0", np.zeros((B + 1, H), f), ValueError, "h0"),
        ("h0", np.zeros((B, H + 1), f), ValueError, "h0"),
        ("h0", np.zeros((1, B, H), f), ValueError, "h0"),
        ("weight_ih", np.zeros((G * H, I + 1), f), ValueError, "weight_ih"),
        ("weight_ih", np.zeros((G * H + 1, I), f), ValueError, "weight_ih"),
        ("weight_ih", np.zeros((G * H * I,), f), ValueError, "weight_ih"),
        # H is read from weight_hh's columns, so the mismatch surfaces on weight_ih's rows
        # (G*(H+1) expected); either name is accurate for an inconsistent pair.
        ("weight_hh", np.zeros((G * H, H + 1), f), ValueError, "(weight_ih|weight_hh)"),
        ("weight_hh", np.zeros((G * H + 1, H), f), ValueError, "weight_hh"),
        ("weight_hh", np.zeros((G * H,), f), ValueError, "weight_hh"),
        ("weight_hh", np.zeros((G * H, H, 1), f), ValueError, "weight_hh"),
        ("bias_ih", np.zeros((G * H + 1,), f), ValueError, "bias_ih"),
        ("bias_ih", np.zeros((1, G * H), f), ValueError, "bias_ih"),
        ("bias_hh", np.zeros((G * H - 1,), f), ValueError, "bias_hh"),
        ("bias_hh", np.zeros((), f), ValueError, "bias_hh"),
    ]
    if mode == "lstm":
        cases += [("c0", np.zeros((B, H + 1), f), ValueError, "c0"),
                  ("c0", np.zeros((B,), f), ValueError, "c0"),
                  ("c0", None, ValueError, "c0")]
    else:
        cases += [("c0", np.zeros((B, H), f), ValueError, "c0")]  # only an LSTM has c
    return cases


_SHAPE_CASES = [(mode, *case) for mode in MODES for case in _bad_shapes(mode)]


@pytest.mark.parametrize("mode,name,value,exc,match", _SHAPE_CASES,
                         ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(_SHAPE_CASES)])
def test_functional_bad_shapes(mode, name, value, exc, match):
    a = _with(_args(mode), **{name: value})
    with pytest.raises(exc, match=named(match)):
        _fwd(mode, a)


@pytest.mark.parametrize("missing", ["bias_ih", "bias_hh"])
def test_functional_one_bias_only(missing):
    a = _with(_args("gru"), **{missing: None})
    with pytest.raises(ValueError, match=named("bias_ih, bias_hh")):
        _fwd("gru", a)


@pytest.mark.parametrize("name", ["x", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"])
@pytest.mark.parametrize("bad_dtype", [np.float16, np.int64, np.int32, np.complex128, np.float32],
                         ids=lambda d: np.dtype(d).name)
def test_functional_bad_dtype(name, bad_dtype):
    a = _args("lstm", np.float64)
    a[name] = a[name].astype(bad_dtype)
    # x's dtype picks the computation's; then the first other array is the one that disagrees
    blamed = "weight_ih" if name == "x" and bad_dtype == np.float32 else name
    with pytest.raises(fastrnn.DtypeError, match=named(blamed)):
        _fwd("lstm", a)


@pytest.mark.parametrize("name", ["h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"])
def test_functional_float64_into_float32(name):
    a = _args("lstm", np.float32)
    a[name] = a[name].astype(np.float64)
    with pytest.raises(TypeError, match=named(name)):  # DtypeError is a TypeError
        _fwd("lstm", a)


@pytest.mark.parametrize("name", ["x", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"])
def test_functional_list_input(name):
    a = _args("lstm")
    a[name] = a[name].tolist()
    with pytest.raises(TypeError, match=named(name)):
        _fwd("lstm", a)


@pytest.mark.parametrize("value", [None, "x", 3.0, object()], ids=["None", "str", "float", "obj"])
def test_functional_non_array_x(value):
    a = _with(_args("gru"), x=value)
    with pytest.raises(TypeError, match=named("x")):
        _fwd("gru", a)


@pytest.mark.parametrize("mode", ["lstm ", "LSTM", "rnn", "", None, 2])
def test_functional_bad_mode(mode):
    a = _args("lstm")
    with pytest.raises(ValueError, match=named("mode")):
        _fwd(mode, a)


@pytest.mark.parametrize("lengths", [
    [0, 1, 2], [1, T + 1, 2], [-1, 2, 3], [1, 2, -(2**40)], [T, T, 2**62], [1, 1, 2**64 - 1],
], ids=["zero", "T+1", "negative", "very-negative", "huge", "uint64-max"])
def test_functional_lengths_out_of_range(lengths):
    a = _args("rnn_tanh")
    arrays = [lengths]  # a list
    if max(lengths) < 2**63:
        arrays += [np.array(lengths), np.array(lengths, dtype=np.int64)]
    if min(lengths) >= 0:
        arrays.append(np.array(lengths, dtype=np.uint64))
    for arr in arrays:
        with pytest.raises(fastrnn.LengthsError, match=named("lengths")) as info:
            _fwd("rnn_tanh", a, lengths=arr)
        assert isinstance(info.value, ValueError) and isinstance(info.value, IndexError)


@pytest.mark.parametrize("lengths", [
    np.array([1, 2]), np.array([1, 2, 3, 4]), np.array([[1, 2, 3]]), np.array(3),
    np.array([1.0, 2.0, 3.0]), np.array([1, 2, 3], dtype=np.float32), np.array([True] * 3),
    np.array(["1", "2", "3"]), [1.5, 2, 3],
], ids=["short", "long", "2-D", "scalar", "float64", "float32", "bool", "str", "float-list"])
def test_functional_lengths_bad_shape_or_dtype(lengths):
    a = _args("lstm")
    with pytest.raises(fastrnn.LengthsError, match=named("lengths")):
        _fwd("lstm", a, lengths=lengths)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint64])
def test_functional_lengths_any_integer_dtype(dtype):
    a = _args("gru")
    lengths = np.array([5, 1, 3], dtype=dtype)
    y, *_ = _fwd("gru", a, lengths=lengths)
    y_ref, *_ = _fwd("gru", a, lengths=np.array([5, 1, 3]))
    np.testing.assert_array_equal(y, y_ref)


@pytest.mark.parametrize("shape", [(0, B, I), (T, 0, I), (0, 0, I), (T, B, 0)],
                         ids=["T0", "B0", "T0B0", "I0"])
def test_functional_empty_sizes(shape):
    G = functional.num_gates("rnn_tanh")
    Tn, Bn, In = shape
    x = np.zeros(shape)
    h0 = np.zeros((Bn, H))
    with pytest.raises(ValueError, match=named("x")):
        functional.layer_forward("rnn_tanh", x, h0, None, np.zeros((G * H, In)),
                                 np.zeros((G * H, H)), None, None)


def test_functional_zero_hidden_size():
    x = np.zeros((T, B, I))
    with pytest.raises(ValueError, match=named("weight_hh")):
        functional.layer_forward("rnn_tanh", x, np.zeros((B, 0)), None, np.zeros((0, I)),
                                 np.zeros((0, 0)), None, None)


def _state(mode, dtype=np.float64, **kw):
    *_, state = _fwd(mode, _args(mode, dtype), **kw)
    return state


@pytest.mark.parametrize("mode", MODES)
def test_functional_backward_bad_grads(mode):
    state = _state(mode)
    good_dy = np.ones((T, B, H))
    cases = [
        (dict(dy=np.ones((T, B, H + 1))), ValueError, "dy"),
        (dict(dy=np.ones((T + 1, B, H))), ValueError, "dy"),
        (dict(dy=np.ones((T, B))), ValueError, "dy"),
        (dict(dy=np.ones((T, B, H), np.float32)), fastrnn.DtypeError, "dy"),
        (dict(dy=np.ones((T, B, H), np.int64)), fastrnn.DtypeError, "dy"),
        (dict(dy=good_dy.tolist()), TypeError, "dy"),
        (dict(dy=None), TypeError, "dy"),
        (dict(dy=good_dy, dh_n=np.ones((B, H + 1))), ValueError, "dh_n"),
        (dict(dy=good_dy, dh_n=np.ones((1, B, H))), ValueError, "dh_n"),
        (dict(dy=good_dy, dh_n=np.ones((B, H), np.float16)), fastrnn.DtypeError, "dh_n"),
        (dict(dy=good_dy, dh_n=[[0.0] * H] * B), TypeError, "dh_n"),
    ]
    if mode == "lstm":
        cases += [(dict(dy=good_dy, dc_n=np.ones((B + 1, H))), ValueError, "dc_n"),
                  (dict(dy=good_dy, dc_n=np.ones((B, H), np.float32)), fastrnn.DtypeError,
                   "dc_n")]
    else:
        cases += [(dict(dy=good_dy, dc_n=np.ones((B, H))), ValueError, "dc_n")]
    for kwargs, exc, match in cases:
        with pytest.raises(exc, match=named(match)):
            functional.layer_backward(state, **kwargs)
    # the state survives failed calls
    g = functional.layer_backward(state, good_dy)
    assert g["input"].shape == (T, B, I)


@pytest.mark.parametrize("state", [None, "state", {}, ()], ids=["None", "str", "dict", "tuple"])
def test_functional_backward_bad_state(state):
    with pytest.raises(TypeError, match=named("state")):
        functional.layer_backward(state, np.ones((T, B, H)))


def test_functional_backward_after_inference_forward():
    state = _state("lstm", training=False)
    assert state is None
    with pytest.raises(TypeError, match=named("state")):
        functional.layer_backward(state, np.ones((T, B, H)))


def test_functional_reference_state_is_rejected():
    """A fastrnn.reference state is not a fastrnn.functional state (and vice versa)."""
    a = _args("gru")
    *_, ref_state = fastrnn.reference.layer_forward(
        "gru", a["x"], a["h0"], None, a["weight_ih"], a["weight_hh"], a["bias_ih"], a["bias_hh"])
    with pytest.raises(TypeError, match=named("state")):
        functional.layer_backward(ref_state, np.ones((T, B, H)))
    with pytest.raises(TypeError, match=named("saved")):
        fastrnn.reference.layer_backward(_state("gru"), np.ones((T, B, H)))


# ---------------------------------------------------------------------------------------------
# non-contiguous inputs are copied, not rejected
# ---------------------------------------------------------------------------------------------


def _strided(a):
    """The same values as ``a`` in a non-C-contiguous array."""
    if a.ndim == 2:
        out = np.asfortranarray(a)       # a transposed view of a C array
        assert not out.flags.c_contiguous or min(a.shape) == 1
        if out.flags.c_contiguous:
            out = np.repeat(a, 2, axis=1)[:, ::2]
    else:
        out = np.repeat(a, 2, axis=-1)[..., ::2]   # every other element
    assert not out.flags.c_contiguous
    np.testing.assert_array_equal(out, a)
    return out


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mode", MODES)
def test_functional_non_contiguous_inputs(mode, dtype, reverse):
    a = _args(mode, dtype)
    lengths = np.array([5, 5, 2, 2, 1, 1], dtype=np.int64)[::2]   # strided lengths, too
    rng = np.random.default_rng(1)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    dh_n = rng.standard_normal((B, H)).astype(dtype)
    dc_n = rng.standard_normal((B, H)).astype(dtype) if mode == "lstm" else None

    # x[::2] of a twice-as-long sequence; weights given as transposes of (in, out) arrays.
    x_long = np.repeat(a["x"], 2, axis=0)
    strided = {k: (None if v is None else _strided(v)) for k, v in a.items()}
    strided["x"] = x_long[::2]
    strided["weight_ih"] = np.ascontiguousarray(a["weight_ih"].T).T
    strided["weight_hh"] = np.ascontiguousarray(a["weight_hh"].T).T
    for k, v in strided.items():
        assert v is None or not v.flags.c_contiguous, k

    y, h, c, s = _fwd(mode, a, lengths=np.ascontiguousarray(lengths), reverse=reverse)
    sy, sh, sc, ss = _fwd(mode, strided, lengths=lengths, reverse=reverse)
    g = functional.layer_backward(s, dy, dh_n, dc_n)
    sg = functional.layer_backward(ss, _strided(dy), _strided(dh_n),
                                   None if dc_n is None else _strided(dc_n))
    for name, got, want in [("y", sy, y), ("h_n", sh, h), ("c_n", sc, c)] + \
            [("d" + k, sg[k], g[k]) for k in g]:
        assert_close(got, want, dtype, f"{mode} strided {name}")


@pytest.mark.parametrize("mode", MODES)
def test_module_non_contiguous_inputs(mode):
    cls, kw = {"lstm": (fastrnn.LSTM, {}), "gru": (fastrnn.GRU, {}),
               "rnn_tanh": (fastrnn.RNN, {}), "rnn_relu": (fastrnn.RNN, {"nonlinearity": "relu"})
               }[mode]
    m = cls(I, H, num_layers=2, bidirectional=True, batch_first=True, dtype=np.float64, seed=0,
            **kw)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, I))
    h0 = rng.standard_normal((4, B, H))
    hx = (h0, rng.standard_normal((4, B, H))) if mode == "lstm" else h0
    lengths = np.array([5, 2, 4])
    dy = rng.standard_normal((B, T, 2 * H))
    y, _ = m(x, hx, lengths=lengths)
    g = m.backward(dy)

    params = dict(m.params)
    m.params = {k: (np.asfortranarray(v) if v.ndim == 2 else np.repeat(v, 2)[::2])
                for k, v in params.items()}
    xs = np.repeat(x, 3, axis=1)[:, ::3]
    hxs = tuple(np.repeat(v, 2, axis=2)[..., ::2] for v in hx) if mode == "lstm" \
        else np.repeat(hx, 2, axis=2)[..., ::2]
    ys, _ = m(xs, hxs, lengths=np.repeat(lengths, 2)[::2])
    gs = m.backward(np.repeat(dy, 2, axis=0)[::2])
    assert_close(ys, y, np.float64, f"{mode} module strided y")
    for k in g:
        assert_close(gs[k], g[k], np.float64, f"{mode} module strided d{k}")


def _unaligned(a):
    """A C-contiguous copy of ``a`` whose data pointer is not aligned to its item size."""
    buf = np.zeros(a.nbytes + 1, np.uint8)
    u = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    u[...] = a
    assert not u.flags.aligned and u.flags.c_contiguous
    return u


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mode", MODES)
def test_functional_unaligned_inputs(mode, dtype):
    """Misaligned (but contiguous) buffers, e.g. from np.frombuffer at an offset, work."""
    a = _args(mode, dtype)
    lengths = np.array([5, 2, 4], dtype=np.int64)
    y, h, c, s = _fwd(mode, a, lengths=lengths)
    dy = np.random.default_rng(2).standard_normal((T, B, H)).astype(dtype)
    g = functional.layer_backward(s, dy)
    u = {k: None if v is None else _unaligned(v) for k, v in a.items()}
    uy, uh, uc, us = _fwd(mode, u, lengths=_unaligned(lengths))
    ug = functional.layer_backward(us, _unaligned(dy))
    for name, got, want in [("y", uy, y), ("h_n", uh, h), ("c_n", uc, c)] + \
            [("d" + k, ug[k], g[k]) for k in g]:
        assert_close(got, want, dtype, f"{mode} unaligned {name}")


@pytest.mark.parametrize("name", ["x", "h0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"])
def test_functional_byteswapped_rejected(name):
    """Non-native byte order is a different dtype: rejected, never read as garbage."""
    a = _args("gru")
    a[name] = a[name].astype(a[name].dtype.newbyteorder())
    with pytest.raises(fastrnn.DtypeError, match=named(name)):
        _fwd("gru", a)


def test_module_byteswapped_rejected():
    m = _module("gru")
    x = _x()
    with pytest.raises(fastrnn.DtypeError, match=named("input")):
        m(x.astype(x.dtype.newbyteorder()))
    p = m.params["weight_hh_l0"]
    m.params["weight_hh_l0"] = p.astype(p.dtype.newbyteorder())
    with pytest.raises(fastrnn.DtypeError, match=named("params['weight_hh_l0']")):
        m(x)


# ---------------------------------------------------------------------------------------------
# arrays whose dtype equals numpy's builtin float dtype without being the same object (pickle)
# ---------------------------------------------------------------------------------------------


def test_functional_accepts_unpickled_arrays():
    a = _args("lstm")
    y, *_ = _fwd("lstm", a)
    a2 = {k: pickle.loads(pickle.dumps(v)) for k, v in a.items()}
    assert a2["x"].dtype == np.float64
    y2, *_ = _fwd("lstm", a2)
    np.testing.assert_array_equal(y2, y)


def test_module_survives_pickle():
    m = fastrnn.GRU(I, H, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, I))
    y, _ = m(x)
    m2 = pickle.loads(pickle.dumps(m))
    y2, _ = m2(x)
    np.testing.assert_array_equal(y2, y)


# ---------------------------------------------------------------------------------------------
# fastrnn.RNN / LSTM / GRU
# ---------------------------------------------------------------------------------------------


def _module(mode, **kw):
    kw.setdefault("dtype", np.float64)
    kw.setdefault("seed", 0)
    if mode == "lstm":
        return fastrnn.LSTM(I, H, **kw)
    if mode == "gru":
        return fastrnn.GRU(I, H, **kw)
    return fastrnn.RNN(I, H, nonlinearity=mode[4:], **kw)


def _x(dtype=np.float64, shape=(T, B, I)):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("mode", MODES)
def test_module_bad_input(mode):
    m = _module(mode, num_layers=2)
    cases = [
        (np.zeros((I,)), ValueError, "input"),
        (np.zeros((T, B, 1, I)), ValueError, "input"),
        (np.zeros((T, B, I + 1)), ValueError, "input"),
        (np.zeros((T, I + 1)), ValueError, "input"),
        (np.zeros((0, B, I)), ValueError, "input"),
        (np.zeros((T, 0, I)), ValueError, "input"),
        (np.zeros((0, I)), ValueError, "input"),
        (np.zeros((T, B, I), np.float32), fastrnn.DtypeError, "input"),
        (np.zeros((T, B, I), np.float16), fastrnn.DtypeError, "input"),
        (np.zeros((T, B, I), np.int64), fastrnn.DtypeError, "input"),
        (np.zeros((T, B, I)).tolist(), TypeError, "input"),
        (None, TypeError, "input"),
    ]
    for x, exc, match in cases:
        with pytest.raises(exc, match=named(match)):
            m(x)


def test_module_float64_input_to_float32_module():
    m = _module("gru", dtype=np.float32)
    with pytest.raises(fastrnn.DtypeError, match=named("input")):
        m(_x(np.float64))
    m(_x(np.float32))  # fine


@pytest.mark.parametrize("mode", MODES)
def test_module_bad_initial_states(mode):
    m = _module(mode, num_layers=2, bidirectional=True)
    x = _x()
    good = np.zeros((4, B, H))
    bad = [
        (np.zeros((2, B, H)), ValueError),
        (np.zeros((4, B + 1, H)), ValueError),
        (np.zeros((4, B, H + 1)), ValueError),
        (np.zeros((4, H)), ValueError),          # unbatched shape for batched input
        (np.zeros((4, B, H), np.float32), fastrnn.DtypeError),
        (np.zeros((4, B, H), np.int32), fastrnn.DtypeError),
        (good.tolist(), TypeError),
    ]
    for value, exc in bad:
        hx = (value, good) if mode == "lstm" else value
        with pytest.raises(exc, match=named("h0")):
            m(x, hx)
        if mode == "lstm":
            with pytest.raises(exc, match=named("c0")):
                m(x, (good, value))
    # unbatched input wants (L*D, H) states
    with pytest.raises(ValueError, match=named("h0")):
        m(_x(shape=(T, I)), (good, good[:, 0]) if mode == "lstm" else good)


@pytest.mark.parametrize("hx", [np.zeros((1, B, H)), (np.zeros((1, B, H)),), [None], "h"],
                         ids=["array", "1-tuple", "list1", "str"])
def test_lstm_hx_must_be_a_pair(hx):
    with pytest.raises(TypeError, match=named("hx")):
        _module("lstm")(_x(), hx)


@pytest.mark.parametrize("mode", ["gru", "rnn_tanh"])
def test_non_lstm_rejects_a_state_pair(mode):
    with pytest.raises(TypeError, match=named("h0")):
        _module(mode)(_x(), (np.zeros((1, B, H)), np.zeros((1, B, H))))


@pytest.mark.parametrize("lengths,exc", [
    (np.array([0, 1, 2]), fastrnn.LengthsError),
    (np.array([1, T + 1, 2]), fastrnn.LengthsError),
    (np.array([-3, 1, 2]), fastrnn.LengthsError),
    (np.array([1, 2]), fastrnn.LengthsError),
    (np.array([[1, 2, 3]]), fastrnn.LengthsError),
    (np.array([1.0, 2.0, 3.0]), fastrnn.LengthsError),
    ([1, 2, 3.5], fastrnn.LengthsError),
], ids=["zero", "T+1", "negative", "short", "2-D", "float", "float-list"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
def test_module_bad_lengths(lengths, exc, batch_first):
    m = _module("lstm", batch_first=batch_first)
    x = _x(shape=(B, T, I) if batch_first else (T, B, I))
    with pytest.raises(exc, match=named("lengths")) as info:
        m(x, lengths=lengths)
    assert isinstance(info.value, ValueError) and isinstance(info.value, IndexError)


def test_module_lengths_with_unbatched_input():
    with pytest.raises(ValueError, match=named("lengths")):
        _module("gru")(_x(shape=(T, I)), lengths=np.array([T]))


@pytest.mark.parametrize("mode", MODES)
def test_module_params_wrong_shape_or_dtype(mode):
    x = _x()
    for name in ("weight_ih_l1", "weight_hh_l0_reverse", "bias_ih_l0", "bias_hh_l1_reverse"):
        m = _module(mode, num_layers=2, bidirectional=True)
        p = m.params[name]
        for value, exc in [
            (np.zeros(p.shape[:-1] + (p.shape[-1] + 1,)), ValueError),
            (np.zeros((1,) + p.shape), ValueError),
            (p.reshape(-1)[:-1], ValueError),
            (p.astype(np.float32), fastrnn.DtypeError),
            (p.astype(np.int64), fastrnn.DtypeError),
            (p.tolist(), TypeError),
            (None, TypeError),
        ]:
            m.params[name] = value
            with pytest.raises(exc, match=named(f"params['{name}']")):
                m(x)
        m.params[name] = p
        m(x)  # restored: works again


def test_module_params_missing_or_extra():
    m = _module("lstm", num_layers=2)
    x = _x()
    p = m.params.pop("weight_hh_l1")
    with pytest.raises(KeyError, match="weight_hh_l1"):
        m(x)
    m.params["weight_hh_l1"] = p
    m.params["weight_hh_l2"] = p
    with pytest.raises(KeyError, match="weight_hh_l2"):
        m(x)
    del m.params["weight_hh_l2"]
    m(x)
    m_nobias = _module("lstm", bias=False)
    m_nobias.params["bias_ih_l0"] = np.zeros(4 * H)
    with pytest.raises(KeyError, match="bias_ih_l0"):
        m_nobias(x)


@pytest.mark.parametrize("mode", MODES)
def test_module_backward_needs_a_training_forward(mode):
    m = _module(mode, num_layers=2)
    x = _x()
    dy = np.ones((T, B, H))
    with pytest.raises(RuntimeError, match=named("backward")):
        m.backward(dy)                      # before any forward
    m(x)
    m.backward(dy)
    with pytest.raises(RuntimeError, match=named("backward")):
        m.backward(dy)                      # twice
    m.eval()
    m(x)
    with pytest.raises(RuntimeError, match=named("backward")):
        m.backward(dy)                      # after an eval() forward
    m.train()
    m(x)
    m.eval()(x)                             # an eval() forward drops what training saved
    with pytest.raises(RuntimeError, match=named("backward")):
        m.backward(dy)


@pytest.mark.parametrize("mode", MODES)
def test_module_backward_bad_grads(mode):
    m = _module(mode, num_layers=2, bidirectional=True, batch_first=True)
    x = _x(shape=(B, T, I))
    good_dy = np.ones((B, T, 2 * H))
    cases = [
        (dict(dy=np.ones((T, B, 2 * H))), ValueError, "dy"),   # time-major for batch_first
        (dict(dy=np.ones((B, T, H))), ValueError, "dy"),
        (dict(dy=np.ones((B, T, 2 * H), np.float32)), fastrnn.DtypeError, "dy"),
        (dict(dy=good_dy.tolist()), TypeError, "dy"),
        (dict(dy=good_dy, dh_n=np.ones((2, B, H))), ValueError, "dh_n"),
        (dict(dy=good_dy, dh_n=np.ones((4, B, H), np.float32)), fastrnn.DtypeError, "dh_n"),
    ]
    if mode == "lstm":
        cases.append((dict(dy=good_dy, dc_n=np.ones((4, B + 1, H))), ValueError, "dc_n"))
    else:
        cases.append((dict(dy=good_dy, dc_n=np.ones((4, B, H))), ValueError, "dc_n"))
    m(x)
    for kwargs, exc, match in cases:
        with pytest.raises(exc, match=named(match)):
            m.backward(**kwargs)
    g = m.backward(good_dy)  # failed calls consumed nothing
    assert g["input"].shape == x.shape


_CONSTRUCTOR_CASES = [
    (dict(hidden_size=0), ValueError, "hidden_size"),
    (dict(hidden_size=-4), ValueError, "hidden_size"),
    (dict(hidden_size=2.5), TypeError, "hidden_size"),
    (dict(hidden_size=True), TypeError, "hidden_size"),
    (dict(hidden_size="8"), TypeError, "hidden_size"),
    (dict(input_size=0), ValueError, "input_size"),
    (dict(input_size=None), TypeError, "input_size"),
    (dict(num_layers=0), ValueError, "num_layers"),
    (dict(num_layers=1.0), TypeError, "num_layers"),
    (dict(dropout=1.5), ValueError, "dropout"),
    (dict(dropout=-0.1), ValueError, "dropout"),
    (dict(dropout="0.1"), ValueError, "dropout"),
    (dict(dropout=float("nan")), ValueError, "dropout"),
    (dict(dtype=np.int32), TypeError, "dtype"),
    (dict(dtype=np.float16), TypeError, "dtype"),
    (dict(dtype="complex128"), TypeError, "dtype"),
    (dict(dtype="not-a-dtype"), TypeError, "dtype"),
    (dict(bias="yes"), TypeError, "bias"),
    (dict(batch_first=2), TypeError, "batch_first"),
    (dict(bidirectional="yes"), TypeError, "bidirectional"),
    (dict(bidirectional=None), TypeError, "bidirectional"),
]


@pytest.mark.parametrize("kwargs,exc,match", _CONSTRUCTOR_CASES,
                         ids=["-".join(f"{k}={v!r}" for k, v in c[0].items())
                              for c in _CONSTRUCTOR_CASES])
@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_module_constructor_arguments(cls, kwargs, exc, match):
    args = dict(input_size=I, hidden_size=H)
    args.update(kwargs)
    with pytest.raises(exc, match=named(match)):
        getattr(fastrnn, cls)(**args)


@pytest.mark.parametrize("nonlinearity", ["sigmoid", "Tanh", "", None])
def test_rnn_nonlinearity(nonlinearity):
    with pytest.raises(ValueError, match=named("nonlinearity")):
        fastrnn.RNN(I, H, nonlinearity=nonlinearity)


def test_module_dtype_error_is_dtype_error():
    with pytest.raises(fastrnn.DtypeError, match=named("dtype")):
        fastrnn.LSTM(I, H, dtype=np.int32)


# ---------------------------------------------------------------------------------------------
# the raw extension, fastrnn._core
# ---------------------------------------------------------------------------------------------

CELL = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3}


def _core_args(mode, dtype=np.float64):
    a = _args(mode, dtype)
    return dict(cell=CELL[mode], x=a["x"], h0=a["h0"], c0=a["c0"], weight_ih=a["weight_ih"],
                weight_hh=a["weight_hh"], bias_ih=a["bias_ih"], bias_hh=a["bias_hh"],
                weight_hr=None, lengths=None, reverse=False)


def _core_backward_args(mode, dtype=np.float64):
    kw = _core_args(mode, dtype)
    _, _, _, reserve = _core.layer_forward(training=True, **kw)
    kw.update(reserve=reserve, dy=np.ones((T, B, H), dtype), dh_n=None, dc_n=None)
    return kw


@pytest.mark.parametrize("mode", MODES)
def test_core_good_call(mode):
    kw = _core_backward_args(mode)
    assert kw["reserve"].shape == (_core.reserve_size(CELL[mode], T, B, I, H),)
    out = _core.layer_backward(**kw)
    assert len(out) == 8 and out[7] is None  # no weight_hr gradient without a projection
    y, h_n, c_n, reserve = _core.layer_forward(training=False, **_core_args(mode))
    assert reserve is None and (c_n is None) == (mode != "lstm")


@pytest.mark.parametrize("cell", [-1, 4, 100, 2**31 - 1])
def test_core_bad_cell_code(cell):
    kw = _core_args("rnn_tanh")
    kw["cell"] = cell
    with pytest.raises(ValueError, match=named("cell")):
        _core.layer_forward(training=True, **kw)
    kwb = _core_backward_args("rnn_tanh")
    kwb["cell"] = cell
    with pytest.raises(ValueError, match=named("cell")):
        _core.layer_backward(**kwb)
    with pytest.raises(ValueError, match=named("cell")):
        _core.reserve_size(cell, T, B, I, H)


@pytest.mark.parametrize("cell", ["lstm", 2.0, None, 2**70])
def test_core_cell_code_of_wrong_type(cell):
    kw = _core_args("lstm")
    kw["cell"] = cell
    with pytest.raises(TypeError):
        _core.layer_forward(training=True, **kw)


@pytest.mark.parametrize("mode", MODES)
def test_core_bad_reserve(mode):
    kw = _core_backward_args(mode)
    reserve = kw["reserve"]
    for value, exc in [
        (reserve[:-1], ValueError),
        (np.concatenate([reserve, reserve[:1]]), ValueError),
        (reserve.reshape(1, -1), ValueError),
        (reserve.astype(np.float32), fastrnn.DtypeError),
        (np.repeat(reserve, 2)[::2], ValueError),     # not contiguous
        (None, TypeError),
        (reserve.tolist(), TypeError),
    ]:
        kw["reserve"] = value
        with pytest.raises(exc, match=named("reserve")):
            _core.layer_backward(**kw)


@pytest.mark.parametrize("mode", ["gru", "rnn_tanh", "rnn_relu"])
def test_core_c0_for_a_cell_without_one(mode):
    kw = _core_args(mode)
    kw["c0"] = np.zeros((B, H))
    with pytest.raises(ValueError, match=named("c0")):
        _core.layer_forward(training=True, **kw)
    kwb = _core_backward_args(mode)
    kwb["c0"] = np.zeros((B, H))
    with pytest.raises(ValueError, match=named("c0")):
        _core.layer_backward(**kwb)
    kwb = _core_backward_args(mode)
    kwb["dc_n"] = np.zeros((B, H))
    with pytest.raises(ValueError, match=named("dc_n")):
        _core.layer_backward(**kwb)


def test_core_lstm_without_c0():
    kw = _core_args("lstm")
    kw["c0"] = None
    with pytest.raises(ValueError, match=named("c0")):
        _core.layer_forward(training=True, **kw)


@pytest.mark.parametrize("which", ["bias_ih", "bias_hh"])
def test_core_one_bias_only(which):
    kw = _core_args("lstm")
    kw[which] = None
    with pytest.raises(ValueError, match=named("bias_ih, bias_hh")):
        _core.layer_forward(training=True, **kw)


@pytest.mark.parametrize("name", ["x", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"])
def test_core_rejects_non_contiguous(name):
    kw = _core_args("lstm")
    kw[name] = np.repeat(kw[name], 2, axis=-1)[..., ::2]
    with pytest.raises(ValueError, match=named(name)):
        _core.layer_forward(training=True, **kw)


@pytest.mark.parametrize("name", ["x", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"])
def test_core_dtype_mismatch(name):
    kw = _core_args("lstm", np.float32)
    kw[name] = kw[name].astype(np.float64 if name != "x" else np.float16)
    with pytest.raises(fastrnn.DtypeError, match=named(name)):
        _core.layer_forward(training=True, **kw)


@pytest.mark.parametrize("name", ["x", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"])
def test_core_non_array(name):
    kw = _core_args("lstm")
    kw[name] = kw[name].tolist()
    with pytest.raises(TypeError, match=named(name)):
        _core.layer_forward(training=True, **kw)


@pytest.mark.parametrize("lengths,exc", [
    (np.array([1, 2, 3], dtype=np.int32), fastrnn.LengthsError),
    (np.array([1.0, 2.0, 3.0]), fastrnn.LengthsError),
    (np.array([1, 2], dtype=np.int64), fastrnn.LengthsError),
    (np.array([[1, 2, 3]], dtype=np.int64), fastrnn.LengthsError),
    (np.array([0, 2, 3], dtype=np.int64), fastrnn.LengthsError),
    (np.array([1, 2, T + 1], dtype=np.int64), fastrnn.LengthsError),
    (np.array([1, -2, 3], dtype=np.int64), fastrnn.LengthsError),
    ([1, 2, 3], TypeError),
], ids=["int32", "float", "short", "2-D", "zero", "T+1", "negative", "list"])
def test_core_bad_lengths(lengths, exc):
    kw = _core_args("gru")
    kw["lengths"] = lengths
    with pytest.raises(exc, match=named("lengths")):
        _core.layer_forward(training=True, **kw)


def test_core_strided_lengths_are_read_correctly():
    kw = _core_args("gru")
    kw["lengths"] = np.array([5, 9, 1, 9, 3, 9], dtype=np.int64)[::2]
    y, *_ = _core.layer_forward(training=False, **kw)
    kw["lengths"] = np.array([5, 1, 3], dtype=np.int64)
    y2, *_ = _core.layer_forward(training=False, **kw)
    np.testing.assert_array_equal(y, y2)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_core_backward_bad_grads(mode):
    for key, value, exc in [
        ("dy", np.ones((T, B, H + 1)), ValueError),
        ("dy", np.ones((T, B, H), np.float32), fastrnn.DtypeError),
        ("dy", np.repeat(np.ones((T, B, H)), 2, axis=2)[..., ::2], ValueError),
        ("dy", None, TypeError),
        ("dh_n", np.ones((B + 1, H)), ValueError),
        ("dh_n", np.ones((B, H), np.float32), fastrnn.DtypeError),
    ] + ([("dc_n", np.ones((B, H + 1)), ValueError)] if mode == "lstm" else []):
        kw = _core_backward_args(mode)
        kw[key] = value
        with pytest.raises(exc, match=named(key)):
            _core.layer_backward(**kw)


def test_core_backward_shape_must_match_forward():
    """A reserve from a different T, B or H is rejected by its size, not read out of bounds."""
    kw = _core_backward_args("lstm")
    kw["x"] = np.concatenate([kw["x"], kw["x"]])        # T doubled
    kw["dy"] = np.ones((2 * T, B, H))
    with pytest.raises(ValueError, match=named("reserve")):
        _core.layer_backward(**kw)


def test_core_missing_arguments():
    kw = _core_args("gru")
    with pytest.raises(TypeError):
        _core.layer_forward(**kw)   # no training flag
    with pytest.raises(TypeError):
        _core.layer_forward(kw["cell"], kw["x"])


# ---------------------------------------------------------------------------------------------
# the caller's state survives
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_floating_point_environment_restored(mode):
    """The core flushes denormals inside its kernels only: afterwards the calling thread
    computes with denormals again (the MXCSR it changed is restored)."""
    def denormals_survive():
        return (np.array([1e-310]) * 1.0)[0] != 0 and \
            (np.array([1e-40], np.float32) * np.float32(1))[0] != 0
    assert denormals_survive()
    for dtype in (np.float32, np.float64):
        *_, state = _fwd(mode, _args(mode, dtype))
        assert denormals_survive()
        functional.layer_backward(state, np.ones((T, B, H), dtype))
        assert denormals_survive()


# ---------------------------------------------------------------------------------------------
# LSTM projection (proj_size / weight_hr)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("proj_size,error", [(-1, ValueError), (H, ValueError), (H + 3, ValueError),
                                             (1.5, TypeError), (True, TypeError)])
def test_lstm_bad_proj_size(proj_size, error):
    with pytest.raises(error, match=named("proj_size")):
        fastrnn.LSTM(I, H, proj_size=proj_size)


def test_proj_size_only_for_lstm():
    from fastrnn.modules import _RNNBase
    with pytest.raises(ValueError, match=named("proj_size")):
        _RNNBase("gru", I, H, proj_size=2)


def test_functional_weight_hr_checks():
    a = _args("lstm")
    P = 2
    rng = np.random.default_rng(0)
    w_hr = rng.standard_normal((P, H))
    w_hh = rng.standard_normal((4 * H, P))
    h0 = np.zeros((B, P))
    call = lambda **kw: functional.layer_forward(  # noqa: E731
        "lstm", a["x"], kw.get("h0", h0), a["c0"], a["weight_ih"], kw.get("w_hh", w_hh),
        a["bias_ih"], a["bias_hh"], weight_hr=kw.get("w_hr", w_hr))
    y, h_n, c_n, _ = call()
    assert y.shape == (T, B, P) and h_n.shape == (B, P) and c_n.shape == (B, H)
    with pytest.raises(ValueError, match=named("weight_hr")):
        call(w_hr=rng.standard_normal((H, H)))          # P must be < H
    with pytest.raises(ValueError, match=named("weight_hr")):
        call(w_hr=rng.standard_normal((P, H + 1)))      # columns must be H
    with pytest.raises(ValueError, match=named("weight_hh")):
        call(w_hh=rng.standard_normal((4 * H, H)))      # with a projection, W_hh is (4H, P)
    with pytest.raises(ValueError, match=named("h0")):
        call(h0=np.zeros((B, H)))                       # and h0 is (B, P)
    with pytest.raises(fastrnn.DtypeError, match=named("weight_hr")):
        call(w_hr=w_hr.astype(np.float32))
    g = _args("gru")
    with pytest.raises(ValueError, match=named("weight_hr")):
        functional.layer_forward("gru", g["x"], g["h0"], None, g["weight_ih"], g["weight_hh"],
                                 g["bias_ih"], g["bias_hh"], weight_hr=np.zeros((1, H)))


def test_lstm_proj_module_state_shapes():
    m = fastrnn.LSTM(I, H, num_layers=2, proj_size=2, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, I))
    with pytest.raises(ValueError, match=named("h0")):
        m(x, (np.zeros((2, B, H)), np.zeros((2, B, H))))   # h0 must be (L, B, P)
    with pytest.raises(ValueError, match=named("c0")):
        m(x, (np.zeros((2, B, 2)), np.zeros((2, B, 2))))   # c0 stays (L, B, H)
    y, (h, c) = m(x, (np.zeros((2, B, 2)), np.zeros((2, B, H))))
    assert y.shape == (T, B, 2) and h.shape == (2, B, 2) and c.shape == (2, B, H)
    m.params["weight_hr_l1"] = np.zeros((H, H))
    with pytest.raises(ValueError, match=named("params['weight_hr_l1']")):
        m(x)


def test_core_rejects_unaligned_buffers_and_functional_copies_them():
    kw = _core_args("lstm")
    raw = np.zeros(kw["x"].nbytes + 1, np.uint8)
    unaligned = np.frombuffer(raw.data, dtype=np.float64, count=kw["x"].size, offset=1)
    unaligned = unaligned.reshape(kw["x"].shape)
    unaligned[...] = kw["x"]
    assert not unaligned.flags.aligned and unaligned.flags.c_contiguous
    bad = dict(kw, x=unaligned)
    with pytest.raises(ValueError, match=named("x")):
        _core.layer_forward(training=False, **bad)
    want, *_ = _core.layer_forward(training=False, **kw)
    a = _args("lstm")
    got, *_ = functional.layer_forward("lstm", unaligned, a["h0"], a["c0"], a["weight_ih"],
                                       a["weight_hh"], a["bias_ih"], a["bias_hh"], training=False)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("args", [(2, 0, 3, 1, 4), (2, 5, -1, 1, 4), (2, 5, 3, 1, 0),
                                  (2, 2**40, 2**40, 1, 2**40), (2, 5, 3, 1, 4, 4)])
def test_core_reserve_size_checks_its_arguments(args):
    with pytest.raises(ValueError):
        _core.reserve_size(*args)


def test_lstm_hx_needs_both_states():
    m = fastrnn.LSTM(I, H, dtype=np.float64, seed=0)
    x = np.zeros((T, B, I))
    with pytest.raises(TypeError, match=named("hx")):
        m(x, (np.zeros((1, B, H)), None))


def test_torch_style_flag_and_dropout_values_are_accepted():
    m = fastrnn.GRU(I, H, num_layers=2, bias=1, batch_first=0, dropout=np.float32(0.25))
    assert m.bias is True and m.batch_first is False and m.dropout == 0.25


def test_unknown_isa_setting_warns():
    import subprocess
    import sys
    env = dict(__import__("os").environ, FASTRNN_ISA="avx-2")
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", "import fastrnn"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "FASTRNN_ISA" in proc.stderr


def test_core_rejects_unaligned_lengths():
    kw = _core_args("gru")
    raw = np.zeros(B * 8 + 1, np.uint8)
    lengths = np.frombuffer(raw.data, dtype=np.int64, count=B, offset=1)
    lengths[...] = T
    assert not lengths.flags.aligned
    with pytest.raises(fastrnn.LengthsError, match=named("lengths")):
        _core.layer_forward(training=False, **dict(kw, lengths=lengths))


def test_core_reserve_size_projection_only_for_lstm():
    assert _core.reserve_size(2, 5, 3, 1, 4, 3) > _core.reserve_size(2, 5, 3, 1, 4, 0)
    with pytest.raises(ValueError, match=named("P")):
        _core.reserve_size(0, 5, 3, 1, 4, 3)
    with pytest.raises(ValueError):
        _core.reserve_size(2, 1_300_000_000, 1, 1, 2**30, 2**30 - 1)


@pytest.mark.parametrize("mode", MODES)
def test_read_only_arrays_are_accepted_and_outputs_are_fresh(mode):
    """fastrnn takes no output buffers: it never writes into an argument, so read-only inputs,
    parameters, gradients and reserves work, and every result is a new writable array."""
    def frozen(a):
        a = a.copy()
        a.setflags(write=False)
        return a

    a = {k: None if v is None else frozen(v) for k, v in
         make_layer_inputs(mode, T, B, I, H, dtype=np.float32, seed=3).items()}
    y, h_n, c_n, state = functional.layer_forward(
        mode, a["x"], a["h0"], a["c0"], a["weight_ih"], a["weight_hh"], a["bias_ih"], a["bias_hh"])
    state.reserve.setflags(write=False)
    grads = functional.layer_backward(state, frozen(np.ones_like(y)), frozen(np.ones_like(h_n)))
    for out in [y, h_n, c_n] + list(grads.values()):
        assert out is None or out.flags.writeable
    core = _core_backward_args(mode)
    core = {k: frozen(v) if isinstance(v, np.ndarray) else v for k, v in core.items()}
    assert all(g is None or g.flags.writeable for g in _core.layer_backward(**core))
    cls = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU}.get(mode)
    model = cls(I, H) if cls else fastrnn.RNN(I, H, nonlinearity=mode[4:])
    for name in model.params:
        model.params[name] = frozen(model.params[name])
    out = model(a["x"])
    y = out[0]
    grads = model.backward(frozen(np.ones_like(y)))
    assert all(g.flags.writeable for g in grads.values())


@pytest.mark.parametrize("what", ["x: T*B", "x: I"])
def test_core_refuses_sizes_beyond_32_bit_blas_indices(what):
    """Sizes the BLAS library's 32-bit indices cannot address: a ValueError naming them, before
    anything is allocated. The input is an untouched zero-filled mapping (no memory used)."""
    shape = (2**16, 2**15 + 1, 1) if what == "x: T*B" else (1, 1, 2**31)
    x = np.zeros(shape, np.float32)
    I = shape[2]
    with pytest.raises(ValueError, match=re.escape(what) + r" = \d+ exceeds the BLAS library"):
        _core.layer_forward(0, x, np.zeros((shape[1], 1), np.float32), None,
                            np.zeros((1, I), np.float32), np.zeros((1, 1), np.float32), None, None,
                            None, None, False, False)
