"""Randomised checks of the module classes and of argument checking.

1. ``test_module_matches_reference`` (hypothesis): random *valid* configurations of
   ``fastrnn.RNN/LSTM/GRU`` (cell, nonlinearity, 1-3 layers, bidirectional, batch_first, bias,
   LSTM ``proj_size``, float32/float64, dropout, T 1-12, B 1-5, I/H 1-9, lengths of any order
   and integer form, initial states, unbatched 2-D input, non-contiguous / unaligned arrays)
   against ``fastrnn.reference`` with the same parameters, run in float64. Every output, final
   state and gradient of ``backward(dy, dh_n, dc_n)`` goes through ``conftest.assert_close``
   with the tolerance of the dtype fastrnn computed in; also checked: no argument is written to,
   a second ``backward`` and one after an ``eval()`` call raise ``RuntimeError``, and eval-mode
   outputs match too.

2. ``test_malformed_calls_raise``: random *malformed* calls of the module classes (input, hx,
   lengths, params, backward gradients, constructor arguments), of ``fastrnn.functional`` and of
   the raw extension ``fastrnn._core`` (bad cell codes, non-contiguous/unaligned/byte-swapped
   arrays, mismatched or tampered reserves), each with exactly one thing wrong, must raise the
   exception docs/errors.md documents for it (all within TypeError, ValueError, IndexError,
   KeyError, RuntimeError, MemoryError). The cases run in a child process so that a crash
   (segfault, abort) fails this test with the signal and the last case started, instead of
   ending the test run. Cases are drawn from a seeded NumPy generator, one generator per case.
   To rerun some of them by hand (from the repository root)::

       python tests/test_fuzz.py COUNT SEED FIRST      # cases FIRST .. FIRST+COUNT-1
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import sys
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastrnn
from fastrnn import _core, reference
from fastrnn import functional as F
if __name__ == "__main__":  # run as the fuzzing child: conftest lives in tests/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import assert_close, assert_fuzz_clean, run_fuzz_child  # noqa: E402

from fastrnn._cells import MODES, num_gates  # noqa: E402


def _classes(mode):
    """(fastrnn class, reference class, extra constructor arguments) of a cell."""
    if mode == "lstm":
        return fastrnn.LSTM, reference.LSTM, {}
    if mode == "gru":
        return fastrnn.GRU, reference.GRU, {}
    return fastrnn.RNN, reference.RNN, {"nonlinearity": mode[len("rnn_"):]}


# Memory layouts an array argument is passed in. All hold the same values; only "c" is a
# C-contiguous aligned array (where the shape allows: a transposed 1-D array is still "c").
LAYOUTS = ("c", "transposed", "reversed", "strided", "unaligned")


def relayout(a, how):
    """The values of ``a`` in layout ``how`` (a view; None stays None)."""
    if a is None or how == "c":
        return a
    if how == "transposed":  # Fortran order: the transpose of a C-contiguous array
        return np.ascontiguousarray(a.T).T
    if how == "reversed":  # negative strides on the first axis
        return np.ascontiguousarray(a[::-1])[::-1]
    if how == "strided":  # every other element of a wider buffer; the gaps hold NaN
        wide = np.full(a.shape[:-1] + (2 * a.shape[-1],), np.nan, a.dtype)
        wide[..., ::2] = a
        return wide[..., ::2]
    if how == "unaligned":  # the data start one byte into a buffer
        buf = np.zeros(a.nbytes + 1, np.uint8)
        out = buf[1:].view(a.dtype).reshape(a.shape)
        out[...] = a
        return out
    raise ValueError(how)


# =============================================================================================
# 1. Valid configurations: fastrnn against the NumPy reference
# =============================================================================================


@st.composite
def configurations(draw, mode):
    H = draw(st.integers(1, 9))
    T = draw(st.integers(1, 12))
    B = draw(st.integers(1, 5))
    unbatched = draw(st.booleans())
    lengths = None
    if not unbatched and draw(st.booleans()):
        lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    lstm = mode == "lstm"
    return dict(
        mode=mode, T=T, B=B, I=draw(st.integers(1, 9)), H=H,
        num_layers=draw(st.integers(1, 3)),
        bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bias=draw(st.booleans()),
        proj_size=draw(st.one_of(st.just(0), st.integers(1, H - 1))) if lstm and H > 1 else 0,
        dtype=draw(st.sampled_from(["float32", "float64"])),
        dropout=draw(st.sampled_from([0.0, 0.5])),  # 0.5: the float32 mask scale is exact
        unbatched=unbatched,
        lengths=lengths,
        lengths_form=draw(st.sampled_from(["int64", "int32", "uint8", "list", "strided"])),
        with_hx=draw(st.booleans()),
        with_dh_n=draw(st.booleans()),
        with_dc_n=lstm and draw(st.booleans()),
        x_layout=draw(st.sampled_from(LAYOUTS)),
        state_layout=draw(st.sampled_from(LAYOUTS)),
        grad_layout=draw(st.sampled_from(LAYOUTS)),
        param_layout=draw(st.sampled_from(LAYOUTS)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def _lengths_as(values, form):
    if values is None:
        return None
    if form == "list":
        return list(values)
    if form == "strided":
        return np.repeat(np.asarray(values, np.int64), 2)[::2]
    return np.asarray(values, dtype=form)


def _hx(h0, c0, lstm):
    if h0 is None:
        return None
    return (h0, c0) if lstm else h0


def _as_f64(a):
    return None if a is None else np.asarray(a, np.float64)


def _check_pair(fast, ref, dtype, what):
    """assert_close on every array of two (y, h_n) / (y, (h_n, c_n)) results."""
    y_f, s_f = fast
    y_r, s_r = ref
    states_f = s_f if isinstance(s_f, tuple) else (s_f,)
    states_r = s_r if isinstance(s_r, tuple) else (s_r,)
    for name, a, e in zip(("y", "h_n", "c_n"), (y_f,) + states_f, (y_r,) + states_r):
        assert isinstance(a, np.ndarray) and a.dtype == dtype, f"{what} {name}: {a!r:.80}"
        assert_close(a, e, dtype, f"{what} {name}")


def run_against_reference(c):
    mode, lstm = c["mode"], c["mode"] == "lstm"
    dtype = np.dtype(c["dtype"])
    T, B, I, H, L = c["T"], c["B"], c["I"], c["H"], c["num_layers"]
    D = 2 if c["bidirectional"] else 1
    R = c["proj_size"] or H
    fast_cls, ref_cls, extra = _classes(mode)
    kw = dict(num_layers=L, bias=c["bias"], batch_first=c["batch_first"], dropout=c["dropout"],
              bidirectional=c["bidirectional"], seed=c["seed"] % 1000, **extra)
    if lstm:
        kw["proj_size"] = c["proj_size"]
    fast = fast_cls(I, H, dtype=dtype, **kw)
    # Same seed: the same parameter draws, so both generators then give the same dropout masks.
    ref = ref_cls(I, H, dtype=np.float64, **kw)
    ref.params = {k: v.astype(np.float64) for k, v in fast.params.items()}
    fast.params = {k: relayout(v, c["param_layout"]) for k, v in fast.params.items()}

    if c["unbatched"]:
        x_shape, y_shape = (T, I), (T, D * R)
        state_shape = lambda size: (L * D, size)  # noqa: E731
    else:
        x_shape = (B, T, I) if c["batch_first"] else (T, B, I)
        y_shape = (B, T, D * R) if c["batch_first"] else (T, B, D * R)
        state_shape = lambda size: (L * D, B, size)  # noqa: E731
    rng = np.random.default_rng(c["seed"])

    def rand(shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    x = rand(x_shape)
    h0 = rand(state_shape(R), 0.5) if c["with_hx"] else None
    c0 = rand(state_shape(H), 0.5) if c["with_hx"] and lstm else None
    dy = rand(y_shape)
    dh_n = rand(state_shape(R)) if c["with_dh_n"] else None
    dc_n = rand(state_shape(H)) if c["with_dc_n"] else None

    # What fastrnn gets: these values in the drawn layouts.
    x_f = relayout(x, c["x_layout"])
    h0_f, c0_f = relayout(h0, c["state_layout"]), relayout(c0, c["state_layout"])
    dy_f = relayout(dy, c["grad_layout"])
    dh_f, dc_f = relayout(dh_n, c["grad_layout"]), relayout(dc_n, c["grad_layout"])
    lengths_f = _lengths_as(c["lengths"], c["lengths_form"])
    lengths_r = None if c["lengths"] is None else np.asarray(c["lengths"], np.int64)
    given_arrays = {"x": x_f, "h0": h0_f, "c0": c0_f, "dy": dy_f, "dh_n": dh_f, "dc_n": dc_f,
                    **{f"params[{k}]": v for k, v in fast.params.items()}}
    before = {k: v.copy() for k, v in given_arrays.items() if v is not None}

    out_f = fast(x_f, _hx(h0_f, c0_f, lstm), lengths=lengths_f)
    out_r = ref(_as_f64(x), _hx(_as_f64(h0), _as_f64(c0), lstm), lengths=lengths_r)
    _check_pair(out_f, out_r, dtype, "train")

    grad_args_f = (dy_f, dh_f, dc_f) if lstm else (dy_f, dh_f)
    g_f = fast.backward(*grad_args_f)
    g_r = ref.backward(_as_f64(dy), _as_f64(dh_n), _as_f64(dc_n))
    expected_keys = {"input", "h0"} | ({"c0"} if lstm else set()) | set(fast.params)
    assert set(g_f) == set(g_r) == expected_keys
    for name in sorted(g_r):
        assert isinstance(g_f[name], np.ndarray) and g_f[name].dtype == dtype, name
        assert_close(g_f[name], g_r[name], dtype, f"d{name}")
    with pytest.raises(RuntimeError):
        fast.backward(*grad_args_f)  # the saved state was consumed

    # Inference mode: same outputs (no dropout now), nothing saved.
    fast.eval()
    ref.eval()
    out_f = fast(x_f, _hx(h0_f, c0_f, lstm), lengths=lengths_f)
    out_r = ref(_as_f64(x), _hx(_as_f64(h0), _as_f64(c0), lstm), lengths=lengths_r)
    _check_pair(out_f, out_r, dtype, "eval")
    with pytest.raises(RuntimeError):
        fast.backward(*grad_args_f)

    for name, value in before.items():  # nothing fastrnn was given was written to
        np.testing.assert_array_equal(given_arrays[name], value, err_msg=name)


@pytest.mark.parametrize("mode", MODES)
@settings(derandomize=True, deadline=None, max_examples=500, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_module_matches_reference(mode, data):
    run_against_reference(data.draw(configurations(mode), label="configuration"))


# =============================================================================================
# 2. Malformed calls raise documented exceptions, never crash (run in a child process)
# =============================================================================================

ALLOWED = (TypeError, ValueError, IndexError, KeyError, RuntimeError, MemoryError)
DtypeError, LengthsError = fastrnn.DtypeError, fastrnn.LengthsError
FLOAT = (np.dtype(np.float32), np.dtype(np.float64))
BAD_DTYPES = ("float16", "int32", "int64", "uint8", "bool", "complex64", "complex128", "object",
              "longdouble", "datetime64[s]", "V4", "structured", "other float", "byte-swapped")


class Skip(Exception):
    """A generator could not make an invalid case from this draw; draw another."""


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _other_shape(rng, shape):
    """A shape different from ``shape``: one axis changed, one added or one dropped."""
    shape = tuple(shape)
    while True:
        s, kind = list(shape), int(rng.integers(3))
        if kind == 0 and s:
            ax = int(rng.integers(len(s)))
            s[ax] = max(0, s[ax] + int(_pick(rng, (-2, -1, 1, 2, 5))))
        elif kind == 1:
            s.insert(int(rng.integers(len(s) + 1)), int(rng.integers(1, 3)))
        elif s:
            del s[int(rng.integers(len(s)))]
        if tuple(s) != shape:
            return tuple(s)


def _with_dtype(a, name):
    """``a``'s values (or zeros) in a dtype other than its own (a float dtype)."""
    if name == "other float":
        return a.astype(np.float64 if a.dtype == np.float32 else np.float32)
    if name == "byte-swapped":
        return a.astype(a.dtype.newbyteorder())
    if name in ("datetime64[s]", "V4", "structured"):
        return np.zeros(a.shape, [("v", a.dtype)] if name == "structured" else name)
    if name == "longdouble" and np.dtype(np.longdouble) in FLOAT:
        name = "float16"  # platforms where long double is double
    with np.errstate(invalid="ignore", over="ignore"):  # a reserve may hold NaN
        return a.astype(name)


def _bad_array(rng, a):
    """(description, replacement, expected exception) for an ndarray argument ``a``: another
    shape (ValueError), another dtype (DtypeError) or not an array (TypeError)."""
    kind = _pick(rng, ("shape", "dtype", "nonarray"))
    if kind == "shape":
        shape = _other_shape(rng, a.shape)
        return f"shape {shape}", _rand(rng, shape, a.dtype), ValueError
    if kind == "dtype":
        name = _pick(rng, BAD_DTYPES)
        return f"dtype {name}", _with_dtype(a, name), DtypeError
    choices = [a.tolist(), "array", 1.5, 7, {"a": 1}, (a,), b"\x00" * 8, object()]
    value = choices[int(rng.integers(len(choices)))]
    return f"non-array {type(value).__name__}", value, TypeError


def _bad_lengths(rng, B, T):
    """(description, lengths, expected exception) for malformed lengths of a (T, B) input."""
    valid = rng.integers(1, T + 1, size=B).astype(np.int64)
    kind = _pick(rng, ("float", "float list", "bool", "2-D", "count", "value", "uint64", "bigint",
                       "0-d", "string", "None items", "ragged", "complex", "dict", "timedelta"))
    if kind == "float":
        return kind, valid.astype(_pick(rng, ("float32", "float64"))), LengthsError
    if kind == "float list":
        return kind, [float(v) for v in valid], LengthsError
    if kind == "bool":
        return kind, np.ones(B, bool), LengthsError
    if kind == "2-D":
        return kind, _pick(rng, (valid[:, None], valid[None, :], np.stack([valid, valid]))), \
            LengthsError
    if kind == "count":
        n = B + int(_pick(rng, [k for k in (-B, -1, 1, 2, 7) if k and B + k >= 0]))
        return f"{n} values", rng.integers(1, T + 1, size=n), LengthsError
    if kind == "value":
        bad = int(_pick(rng, (0, -1, T + 1, T + 9, -2**31, 2**31, 2**62, 2**63 - 1, -2**63)))
        valid[int(rng.integers(B))] = bad
        return f"a value {bad}", valid, LengthsError
    if kind == "uint64":
        arr = valid.astype(np.uint64)
        arr[int(rng.integers(B))] = _pick(rng, (2**64 - 1, 2**63, T + 1, 0))
        return f"uint64 {arr}", arr, LengthsError
    if kind == "bigint":
        vals = [int(v) for v in valid]
        vals[int(rng.integers(B))] = _pick(rng, (2**70, -2**70, 2**64))
        return f"list {vals}", vals, LengthsError
    if kind == "0-d":
        return kind, _pick(rng, (T, np.int64(1), np.array(T))), LengthsError
    if kind == "string":
        return kind, _pick(rng, ("abc", ["1"] * B, np.array(["1"] * B))), LengthsError
    if kind == "None items":
        return kind, [None] * B, LengthsError
    if kind == "ragged":  # NumPy itself refuses to make an array of it (a ValueError)
        return kind, [[1]] + [[1, 1]] * B, ValueError
    if kind == "complex":
        return kind, valid.astype(np.complex128), LengthsError
    if kind == "timedelta":  # NumPy files timedelta64 under np.integer; it is not a count
        return kind, valid.astype("m8[s]"), LengthsError
    return kind, {"lengths": valid}, LengthsError


# ---- the module classes ---------------------------------------------------------------------


def _module_setup(rng):
    mode = _pick(rng, MODES)
    cls, _, extra = _classes(mode)
    s = types.SimpleNamespace(mode=mode, lstm=mode == "lstm")
    s.T, s.B, s.I, s.H = (int(rng.integers(1, 5)), int(rng.integers(1, 4)),
                          int(rng.integers(1, 5)), int(rng.integers(2, 6)))
    s.L, s.D = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    s.batch_first, s.bias = bool(rng.integers(2)), bool(rng.integers(2))
    s.proj = int(rng.integers(1, s.H)) if s.lstm and rng.random() < 0.4 else 0
    s.R = s.proj or s.H
    s.dtype = np.dtype(_pick(rng, ("float32", "float64")))
    kw = dict(num_layers=s.L, bias=s.bias, batch_first=s.batch_first, bidirectional=s.D == 2,
              dtype=s.dtype, seed=0, **extra)
    if s.proj:
        kw["proj_size"] = s.proj
    s.m = cls(s.I, s.H, **kw)
    s.unbatched = rng.random() < 0.25
    if s.unbatched:
        x_shape, s.y_shape = (s.T, s.I), (s.T, s.D * s.R)
        s.state = lambda size: (s.L * s.D, size)
    else:
        x_shape = (s.B, s.T, s.I) if s.batch_first else (s.T, s.B, s.I)
        s.y_shape = (s.B, s.T, s.D * s.R) if s.batch_first else (s.T, s.B, s.D * s.R)
        s.state = lambda size: (s.L * s.D, s.B, size)
    s.x = _rand(rng, x_shape, s.dtype)
    s.h0 = _rand(rng, s.state(s.R), s.dtype)
    s.c0 = _rand(rng, s.state(s.H), s.dtype) if s.lstm else None
    s.hx = None if rng.random() < 0.3 else _hx(s.h0, s.c0, s.lstm)
    s.lengths = None
    if not s.unbatched and rng.random() < 0.5:
        s.lengths = rng.integers(1, s.T + 1, size=s.B)
    s.desc = (f"{type(s.m).__name__}(I={s.I}, H={s.H}, L={s.L}, D={s.D}, proj={s.proj}, "
              f"mode={mode}, bias={s.bias}, batch_first={s.batch_first}, {s.dtype}) "
              f"x{x_shape} hx={'given' if s.hx is not None else 'None'} "
              f"lengths={None if s.lengths is None else s.lengths.tolist()}")
    return s


def _nothing_saved(m):
    """A post-condition: the module has nothing saved for backward (a failed call clears it)."""
    def check():
        try:
            m.backward(np.zeros(1, m.dtype))
        except RuntimeError:
            return None
        except BaseException as e:  # noqa: BLE001
            return f"backward after the failed call raised {e!r}, expected RuntimeError"
        return "backward after the failed call returned: an older call's state was kept"
    return check


def case_module_forward(rng):
    s = _module_setup(rng)
    s.m(s.x, s.hx, lengths=s.lengths)  # a valid training call first: the failed one must clear it
    x, hx, lengths = s.x, s.hx, s.lengths
    what = _pick(rng, ("input", "input", "hx", "hx", "lengths", "lengths", "params", "params"))
    if what == "input":
        kind = _pick(rng, ("ndim", "last dim", "empty", "dtype", "nonarray", "huge"))
        if kind == "ndim":  # 2-D and 3-D are both valid forms
            ndim = int(_pick(rng, (0, 1, 4, 5)))
            shape = tuple(int(v) for v in rng.integers(1, 3, size=ndim))
            shape = shape[:-1] + (s.I,) if ndim else shape
            x, expect = _rand(rng, shape, s.dtype), ValueError
        elif kind == "last dim":
            shape = x.shape[:-1] + (max(0, s.I + int(_pick(rng, (-1, 1, 3)))),)
            x, expect = _rand(rng, shape, s.dtype), ValueError
        elif kind == "empty":  # T = 0 or B = 0, perhaps with a huge other axis (no data)
            shape = list(x.shape)
            ax = int(rng.integers(len(shape) - 1))
            shape[ax] = 0
            if len(shape) == 3 and rng.random() < 0.3:
                shape[1 - ax] = 2**40
            x, expect = np.zeros(shape, s.dtype), ValueError
        elif kind == "huge":  # a broadcast view the module must copy: 2^46 steps
            shape = (1, 2**46, s.I) if s.batch_first else (2**46, 1, s.I)
            x, hx, lengths = np.broadcast_to(np.zeros(1, s.dtype), shape), None, None
            expect = MemoryError
        elif kind == "dtype":
            name = _pick(rng, BAD_DTYPES)
            x, expect, kind = _with_dtype(x, name), DtypeError, f"dtype {name}"
        else:
            x = _pick(rng, [None, x.tolist(), "x", 3.0, {"x": x}, (x,)])
            kind, expect = f"non-array {type(x).__name__}", TypeError
        detail = f"input {kind} {getattr(x, 'shape', '')}"
    elif what == "hx":
        if not s.lstm:
            kind, bad, expect = _bad_array(rng, s.h0)
            hx, detail = bad, f"h0 {kind}"
        else:
            kind = _pick(rng, ("h0", "c0", "not a pair", "a None", "swapped"))
            h0, c0 = s.h0, s.c0
            if kind in ("h0", "c0"):
                sub, bad, expect = _bad_array(rng, h0 if kind == "h0" else c0)
                hx = (bad, c0) if kind == "h0" else (h0, bad)
                detail = f"hx {kind} {sub}"
            elif kind == "not a pair":
                hx = _pick(rng, [h0, (h0,), (h0, c0, c0), [h0], "hx", 5, {"h0": h0}])
                expect, detail = TypeError, f"hx not a pair: {type(hx).__name__}"
            elif kind == "a None":
                hx, expect, detail = _pick(rng, [(None, c0), (h0, None)]), TypeError, "hx a None"
            else:
                if not s.proj:
                    raise Skip  # h0 and c0 have the same shape without a projection
                hx, expect, detail = (c0, h0), ValueError, "hx (c0, h0)"
    elif what == "lengths":
        if s.unbatched:
            lengths, expect, detail = [s.T], ValueError, "lengths with unbatched input"
        else:
            kind, lengths, expect = _bad_lengths(rng, s.B, s.T)
            detail = f"lengths {kind}"
    else:
        names = sorted(s.m.params)
        name = _pick(rng, names)
        kind = _pick(rng, ("bad", "bad", "bad", "None", "missing", "extra", "container"))
        if kind == "bad":
            sub, bad, expect = _bad_array(rng, s.m.params[name])
            s.m.params[name] = bad
            detail = f"params[{name!r}] {sub}"
        elif kind == "None":
            s.m.params[name], expect, detail = None, TypeError, f"params[{name!r}] = None"
        elif kind == "container":  # params itself replaced by something that is not a dict
            s.m.params = _pick(rng, [None, list(s.m.params), tuple(s.m.params.values()), "p"])
            expect, detail = (TypeError, KeyError), f"params = {type(s.m.params).__name__}"
        elif kind == "missing":
            del s.m.params[name]
            expect, detail = KeyError, f"params without {name!r}"
        else:
            extra = [n for n in ("weight_ih_l2", "weight_hr_l0", "bias_ih_l0",
                                 "weight_ih_l0_reverse", "weight", "") if n not in s.m.params]
            name = _pick(rng, extra)
            s.m.params[name] = np.zeros((1, 1), s.dtype)
            expect, detail = KeyError, f"params with extra {name!r}"
    return (f"module call {s.desc}: {detail}", lambda: s.m(x, hx, lengths=lengths), expect,
            _nothing_saved(s.m))


def case_module_backward(rng):
    s = _module_setup(rng)
    s.m(s.x, s.hx, lengths=s.lengths)
    dy = np.zeros(s.y_shape, s.dtype)
    dh_n = np.zeros(s.state(s.R), s.dtype)
    dc_n = np.zeros(s.state(s.H), s.dtype) if s.lstm else None
    what = _pick(rng, ("dy", "dy", "dh_n", "dc_n", "nothing saved"))
    if what == "dy":
        kind, bad, expect = _bad_array(rng, dy)
        args, detail = (bad,), f"dy {kind}"
    elif what == "dh_n":
        kind, bad, expect = _bad_array(rng, dh_n)
        args, detail = (dy, bad), f"dh_n {kind}"
    elif what == "dc_n":
        if s.lstm:
            kind, bad, expect = _bad_array(rng, dc_n)
            args, detail = (dy, dh_n, bad), f"dc_n {kind}"
        else:
            args, expect, detail = (dy, dh_n, dh_n), ValueError, "dc_n for a cell without c"
    else:
        how = _pick(rng, ("twice", "after eval", "fresh module"))
        m = s.m
        if how == "twice":
            m.backward(dy)
        elif how == "after eval":
            m.eval()
            m(s.x, s.hx, lengths=s.lengths)
        else:
            m = type(s.m)(s.I, s.H, dtype=s.dtype, **({"proj_size": s.proj} if s.proj else {}))
        return (f"module backward {s.desc}: nothing saved ({how})", lambda: m.backward(dy),
                RuntimeError, None)
    return f"module backward {s.desc}: {detail}", lambda: s.m.backward(*args), expect, None


def case_module_constructor(rng):
    cls = _pick(rng, (fastrnn.RNN, fastrnn.LSTM, fastrnn.GRU))
    kw = dict(input_size=3, hidden_size=4)
    arg = _pick(rng, ("input_size", "hidden_size", "num_layers", "proj_size", "dropout", "dtype",
                      "nonlinearity", "bias", "batch_first", "bidirectional"))
    if arg in ("input_size", "hidden_size", "num_layers"):
        value = _pick(rng, [0, -1, -2**40, 1.5, "3", None, True, np.float64(2), [2]])
    elif arg == "proj_size":
        value = _pick(rng, [4, 5, -1, 1.5, True, "1", None] + ([1, 2] if cls is not fastrnn.LSTM
                                                             else []))
    elif arg == "dropout":
        value = _pick(rng, [-0.1, 1.5, float("nan"), float("inf"), "0.5", True, None, [0.1]])
    elif arg == "dtype":
        value = _pick(rng, ["int32", np.int64, "float16", "no such type", object, np.complex64,
                            "bool", np.dtype(">f4")])
    elif arg == "nonlinearity":
        if cls is not fastrnn.RNN:
            raise Skip
        value = _pick(rng, ["sigmoid", "", "TANH", None, 1])
    else:
        value = _pick(rng, [2, -1, "yes", None, 0.5, [True]])
    kw[arg] = value
    expect = DtypeError if arg == "dtype" else (TypeError, ValueError)
    return f"{cls.__name__}(**{kw!r})", lambda: cls(**kw), expect, None


# ---- fastrnn.functional and fastrnn._core ---------------------------------------------------


def _layer_setup(rng):
    mode = _pick(rng, MODES)
    s = types.SimpleNamespace(mode=mode, code=MODES.index(mode), lstm=mode == "lstm")
    s.T, s.B, s.I, s.H = (int(rng.integers(1, 5)), int(rng.integers(1, 4)),
                          int(rng.integers(1, 5)), int(rng.integers(2, 6)))
    s.P = int(rng.integers(1, s.H)) if s.lstm and rng.random() < 0.4 else 0
    R, GH = s.P or s.H, num_gates(mode) * s.H
    s.dtype = np.dtype(_pick(rng, ("float32", "float64")))
    bias = bool(rng.integers(2))
    shapes = dict(x=(s.T, s.B, s.I), h0=(s.B, R), c0=(s.B, s.H) if s.lstm else None,
                  weight_ih=(GH, s.I), weight_hh=(GH, R), bias_ih=(GH,) if bias else None,
                  bias_hh=(GH,) if bias else None, weight_hr=(s.P, s.H) if s.P else None)
    s.a = {k: None if v is None else 0.5 * _rand(rng, v, s.dtype) for k, v in shapes.items()}
    s.lengths = rng.integers(1, s.T + 1, size=s.B) if rng.random() < 0.5 else None
    s.reverse = bool(rng.integers(2))
    s.dy_shape, s.dh_shape = (s.T, s.B, R), (s.B, R)
    s.desc = (f"mode={mode} T={s.T} B={s.B} I={s.I} H={s.H} P={s.P} bias={bias} {s.dtype} "
              f"reverse={s.reverse} lengths={None if s.lengths is None else s.lengths.tolist()}")
    return s


_SAME = object()  # "as in the setup" (None is a value the cases pass)


def _functional_forward(s, a=None, lengths=_SAME, reverse=_SAME, training=True, mode=_SAME):
    a = s.a if a is None else a
    return F.layer_forward(s.mode if mode is _SAME else mode, a["x"], a["h0"], a["c0"],
                           a["weight_ih"], a["weight_hh"], a["bias_ih"], a["bias_hh"],
                           weight_hr=a["weight_hr"],
                           lengths=s.lengths if lengths is _SAME else lengths,
                           reverse=s.reverse if reverse is _SAME else reverse, training=training)


def _bad_layer_arg(rng, s, core):
    """Replace one array argument of a layer call: (description, new dict, expected)."""
    a = dict(s.a)
    name = _pick(rng, ("x", "x", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh",
                       "weight_hr"))
    if a[name] is None:  # an array where the call takes none
        if name == "c0":
            a["c0"] = np.zeros((s.B, s.H), s.dtype)
        elif name == "weight_hr":
            if s.lstm:
                raise Skip  # adding a projection to an LSTM layer changes which shapes are valid
            a["weight_hr"] = np.zeros((1, s.H), s.dtype)
        else:  # one bias only
            a[name] = np.zeros(a["weight_ih"].shape[0], s.dtype)
        return f"{name} given where None is expected", a, ValueError
    kinds = ["bad", "bad", "None"] + (["non-contiguous", "unaligned"] if core else [])
    kind = _pick(rng, kinds)
    if kind == "None":
        a[name] = None  # TypeError for a required array, ValueError for c0/one bias/weight_hr
        return f"{name} None", a, (TypeError, ValueError)
    if kind in ("non-contiguous", "unaligned"):
        view = relayout(a[name], _pick(rng, ("transposed", "reversed", "strided"))
                        if kind == "non-contiguous" else "unaligned")
        if view.flags.c_contiguous and view.flags.aligned:
            raise Skip
        a[name] = view
        return f"{name} {kind}", a, ValueError
    if name == "x" and rng.random() < 0.7:  # a shape change that matters (T alone does not)
        shape = list(a["x"].shape)
        if rng.random() < 0.3:
            shape = [int(v) for v in rng.integers(1, 3, size=_pick(rng, (0, 1, 2, 4)))]
        else:
            ax = int(_pick(rng, (1, 2)))
            shape[ax] = max(0, shape[ax] + int(_pick(rng, (-1, 1, 2))))
        a["x"] = _rand(rng, shape, s.dtype)
        return f"x shape {tuple(shape)}", a, ValueError
    kind, a[name], expect = _bad_array(rng, a[name])
    if name == "x" and isinstance(a["x"], np.ndarray) and a["x"].ndim == 3 \
            and a["x"].shape[1:] == (s.B, s.I):
        raise Skip  # only T changed: still a valid call
    return f"{name} {kind}", a, expect


def case_functional_forward(rng):
    s = _layer_setup(rng)
    what = _pick(rng, ("array", "array", "array", "lengths", "mode", "flag", "empty", "projection"))
    if what == "array":
        detail, a, expect = _bad_layer_arg(rng, s, core=False)
        call = lambda: _functional_forward(s, a)  # noqa: E731
    elif what == "lengths":
        detail, lengths, expect = _bad_lengths(rng, s.B, s.T)
        call = lambda: _functional_forward(s, lengths=lengths)  # noqa: E731
    elif what == "mode":
        mode = _pick(rng, ["lstm ", "LSTM", "", "rnn", 2, None, ["lstm"], b"gru"])
        detail, expect = f"mode {mode!r}", (ValueError, TypeError)
        call = lambda: _functional_forward(s, mode=mode)  # noqa: E731
    elif what == "flag":
        flag = _pick(rng, [2, -1, "yes", None, 0.5, [], np.float64(1)])
        which = _pick(rng, ("reverse", "training"))
        detail, expect = f"{which}={flag!r}", TypeError
        kw = {which: flag}
        call = lambda: _functional_forward(s, **kw)  # noqa: E731
    elif what == "empty":  # T = 0, B = 0 or I = 0 with every other shape consistent
        ax = int(rng.integers(3))
        a = dict(s.a)
        shape = [0 if i == ax else n for i, n in enumerate(a["x"].shape)]
        if rng.random() < 0.3:  # a huge other axis: no data, but a naive size would be huge
            shape[(ax + 1) % 3] = 2**40
        a["x"] = np.zeros(shape, s.dtype)
        if ax == 1:
            a["h0"] = a["h0"][:0]
            a["c0"] = None if a["c0"] is None else a["c0"][:0]
        if ax == 2:
            a["weight_ih"] = a["weight_ih"][:, :0]
        lengths = None if ax == 1 else s.lengths  # lengths with T = 0 are out of range anyway
        detail, expect = f"x shape {a['x'].shape}", ValueError
        call = lambda: _functional_forward(s, a, lengths=lengths)  # noqa: E731
    else:  # a weight_hr of a size that cannot be a projection
        if not s.lstm:
            raise Skip
        P = int(_pick(rng, (0, s.H, s.H + 1)))
        a = dict(s.a, weight_hr=np.zeros((P, s.H), s.dtype),
                 weight_hh=np.zeros((4 * s.H, max(P, 1)), s.dtype),
                 h0=np.zeros((s.B, max(P, 1)), s.dtype))
        detail, expect = f"weight_hr ({P}, H)", ValueError
        call = lambda: _functional_forward(s, a)  # noqa: E731
    return f"functional.layer_forward {s.desc}: {detail}", call, expect, None


def _other_reserve(rng, s, reserve):
    """A reserve array that does not fit this layer call: (description, value, expected)."""
    kind = _pick(rng, ("size", "other call", "dtype", "2-D", "non-contiguous", "unaligned",
                       "None", "list"))
    n = reserve.shape[0]
    if kind == "size":
        m = max(0, n + int(_pick(rng, (-n, -1, 1, 64))))
        return f"reserve of {m} elements (want {n})", np.zeros(m, s.dtype), ValueError
    if kind == "other call":  # the reserve of another layer call with a different size
        T2 = s.T + int(rng.integers(1, 4))
        m = _core.reserve_size(s.code, T2, s.B, s.I, s.H, s.P)
        if m == n:
            raise Skip
        return f"reserve of a T={T2} call", np.zeros(m, s.dtype), ValueError
    if kind == "dtype":
        name = _pick(rng, BAD_DTYPES)
        return f"reserve dtype {name}", _with_dtype(reserve, name), DtypeError
    if kind == "2-D":
        return "reserve 2-D", reserve.reshape(n, 1), ValueError
    if kind in ("non-contiguous", "unaligned"):
        view = relayout(reserve, "reversed" if kind == "non-contiguous" else "unaligned")
        if view.flags.c_contiguous and view.flags.aligned:
            raise Skip
        return f"reserve {kind}", view, ValueError
    if kind == "None":
        return "reserve None", None, TypeError
    return "reserve as a list", reserve.tolist(), TypeError


def case_functional_backward(rng):
    s = _layer_setup(rng)
    _, _, _, state = _functional_forward(s)
    dy = np.zeros(s.dy_shape, s.dtype)
    dh_n = np.zeros(s.dh_shape, s.dtype)
    dc_n = np.zeros((s.B, s.H), s.dtype) if s.lstm else None
    what = _pick(rng, ("state", "dy", "dh_n", "dc_n", "reserve", "reserve", "tampered"))
    grads = [dy, None, None]
    if what == "state":
        if rng.random() < 0.5:
            ref_a = {k: None if v is None else v.astype(np.float64) for k, v in s.a.items()}
            bad = reference.layer_forward(s.mode, *[ref_a[k] for k in (
                "x", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh")],
                weight_hr=ref_a["weight_hr"], lengths=s.lengths, training=True)[3]
        else:
            bad = _pick(rng, [None, {}, (state,), "state", dataclasses.asdict(state)])
        detail, expect, state = f"state {type(bad).__name__}", TypeError, bad
    elif what in ("dy", "dh_n"):
        i = 0 if what == "dy" else 1
        kind, grads[i], expect = _bad_array(rng, (dy, dh_n)[i])
        detail = f"{what} {kind}"
    elif what == "dc_n":
        if s.lstm:
            kind, grads[2], expect = _bad_array(rng, dc_n)
            detail = f"dc_n {kind}"
        else:
            grads[2], expect, detail = dh_n, ValueError, "dc_n for a cell without c"
    elif what == "reserve":
        detail, reserve, expect = _other_reserve(rng, s, state.reserve)
        state = dataclasses.replace(state, reserve=reserve)
    else:  # other fields of the opaque state changed
        field = _pick(rng, ("x", "mode", "lengths", "reverse"))
        if field == "x":
            kind = _pick(rng, ("I", "dtype", "non-contiguous"))
            if kind == "I":
                x = np.zeros(s.a["x"].shape[:2] + (s.I + 1,), s.dtype)
                expect = ValueError
            elif kind == "dtype":
                x, expect = _with_dtype(state.x, "other float"), DtypeError
            else:
                x = relayout(state.x, _pick(rng, ("reversed", "strided")))
                if x.flags.c_contiguous:
                    raise Skip
                expect = ValueError
            state, detail = dataclasses.replace(state, x=x), f"state.x {kind}"
        elif field == "mode":
            other = [m for m in MODES + ("lstm2", "") if m in ("lstm2", "")
                     or num_gates(m) != num_gates(s.mode)]
            mode = _pick(rng, other)
            state = dataclasses.replace(state, mode=mode)
            detail, expect = f"state.mode {mode!r}", (KeyError, ValueError)
        elif field == "lengths":
            kind, lengths = _pick(rng, [
                ("int32", rng.integers(1, s.T + 1, size=s.B).astype(np.int32)),
                ("out of range", np.full(s.B, _pick(rng, (0, s.T + 1, -2**63)), np.int64)),
                ("wrong count", np.ones(s.B + 1, np.int64))])
            state = dataclasses.replace(state, lengths=lengths)
            detail, expect = f"state.lengths {kind}", LengthsError
        else:
            state = dataclasses.replace(state, reverse="yes")
            detail, expect = "state.reverse 'yes'", TypeError
    return (f"functional.layer_backward {s.desc}: {detail}",
            lambda: F.layer_backward(state, *grads), expect, None)


def _core_args(s):
    a = s.a
    lengths = None if s.lengths is None else np.asarray(s.lengths, np.int64)
    return [s.code, a["x"], a["h0"], a["c0"], a["weight_ih"], a["weight_hh"], a["bias_ih"],
            a["bias_hh"], a["weight_hr"], lengths, s.reverse]


_CORE_ARRAYS = ("x", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def case_core(rng):
    s = _layer_setup(rng)
    backward = rng.random() < 0.5
    args = _core_args(s)
    tail = [True]  # training
    if backward:
        _, _, _, reserve = _core.layer_forward(*args, True)
        dc_n = np.zeros((s.B, s.H), s.dtype) if s.lstm else None
        tail = [reserve, np.zeros(s.dy_shape, s.dtype), np.zeros(s.dh_shape, s.dtype), dc_n]
    what = _pick(rng, ("array", "array", "array", "cell", "lengths", "flag", "arity") +
                 (("reserve", "reserve", "grad") if backward else ()))
    if what == "array":
        detail, a, expect = _bad_layer_arg(rng, s, core=True)
        for i, name in enumerate(_CORE_ARRAYS):
            args[1 + i] = a[name]
    elif what == "cell":
        args[0] = _pick(rng, [-1, 4, 2**31 - 1, -2**31, 2**40, 2**70, "lstm", 1.5, None, [2]])
        detail, expect = f"cell {args[0]!r}", (ValueError, TypeError)
    elif what == "lengths":
        valid = rng.integers(1, s.T + 1, size=s.B).astype(np.int64)
        kind, args[9], expect = _pick(rng, [
            ("int32", valid.astype(np.int32), LengthsError),
            ("float", valid.astype(np.float64), LengthsError),
            ("list", valid.tolist(), TypeError),
            ("unaligned", relayout(valid, "unaligned"), LengthsError),
            ("byte-swapped", valid.astype(">i8"), LengthsError),
            ("uint64", valid.astype(np.uint64), LengthsError),
            ("2-D", valid[None, :], LengthsError),
            ("out of range", np.where(np.arange(s.B) == 0, _pick(rng, (0, -1, s.T + 1, 2**62)),
                                      valid), LengthsError)])
        detail = f"lengths {kind}"
    elif what == "flag":
        i = _pick(rng, [10] + ([] if backward else [11]))
        value = _pick(rng, ["yes", [], {}, object(), b"1"])
        if i == 10:
            args[10] = value
        else:
            tail[0] = value
        detail, expect = f"{'reverse' if i == 10 else 'training'}={value!r}", TypeError
    elif what == "arity":
        if rng.random() < 0.5:
            tail = tail[:-1] if tail else tail
            if not backward and rng.random() < 0.5:
                args = args[:int(rng.integers(len(args)))]
        else:  # one beyond every parameter (the optional resets included)
            tail = tail + [None, None]
        detail, expect = f"{len(args) + len(tail)} arguments", TypeError
    elif what == "reserve":
        detail, tail[0], expect = _other_reserve(rng, s, tail[0])
    else:
        i = int(rng.integers(1, 4))
        name = ("dy", "dh_n", "dc_n")[i - 1]
        if tail[i] is None:
            tail[i], expect, detail = np.zeros(s.dh_shape, s.dtype), ValueError, \
                "dc_n for a cell without c"
        else:
            kind = _pick(rng, ("bad", "non-contiguous"))
            if kind == "bad":
                detail, tail[i], expect = _bad_array(rng, tail[i])
            else:
                tail[i] = relayout(tail[i], _pick(rng, ("reversed", "strided", "unaligned")))
                if tail[i].flags.c_contiguous and tail[i].flags.aligned:
                    raise Skip
                detail, expect = "non-contiguous or unaligned", ValueError
            detail = f"{name} {detail}"
    fn = _core.layer_backward if backward else _core.layer_forward
    return (f"_core.{fn.__name__} {s.desc}: {detail}", lambda: fn(*args, *tail), expect, None)


def case_core_helpers(rng):
    if rng.random() < 0.5:
        args = [int(v) for v in (rng.integers(0, 4), 3, 2, 4, 5, 0)]
        i = int(rng.integers(6))
        args[i] = _pick(rng, {0: [-1, 4, 2**40, "lstm"], 5: [-1, 5, 6, 2**31]}.get(
            i, [0, -1, 2**31, 2**62, 2**70, 1.5, None]))
        if i == 5 and args[5] in (5, 6) and rng.random() < 0.5:
            args[0] = 2  # P >= H for an LSTM
        return f"_core.reserve_size{tuple(args)}", lambda: _core.reserve_size(*args), \
            (ValueError, TypeError), None
    x = rng.standard_normal(6)
    kind, kw, expect = _pick(rng, [
        ("kind", dict(kind="relu", x=x), ValueError),
        ("list", dict(kind="tanh", x=x.tolist()), TypeError),
        ("int", dict(kind="sigmoid", x=np.arange(6)), DtypeError),
        ("non-contiguous", dict(kind="tanh", x=x[::2]), ValueError),
        ("kind type", dict(kind=3, x=x), TypeError)])
    return f"_core.activation: {kind}", lambda: _core.activation(**kw), expect, None


GENERATORS = ((case_module_forward, 6), (case_module_backward, 3), (case_module_constructor, 1),
              (case_functional_forward, 4), (case_functional_backward, 4), (case_core, 6),
              (case_core_helpers, 1))


def case_oversized(rng):
    """A layer call whose output alone needs 4 TiB: MemoryError before anything is allocated.
    Its inputs are zero-filled by the OS on first touch, so they cost no memory here."""
    T, H = 2**27, 2**13
    x = np.zeros((T, 1, 1), np.float32)
    w_ih, w_hh = np.zeros((H, 1), np.float32), np.zeros((H, H), np.float32)
    return ("functional.layer_forward with a 4 TiB output",
            lambda: F.layer_forward("rnn_tanh", x, np.zeros((1, H), np.float32), None, w_ih,
                                    w_hh, None, None, training=False), MemoryError, None)


def make_case(index, seed):
    """Case ``index`` of a run: (description, call, expected exception, post-check or None)."""
    rng = np.random.default_rng([seed, index])
    if index == 0:
        return case_oversized(rng)
    weights = np.array([w for _, w in GENERATORS], float)
    while True:
        gen = GENERATORS[int(rng.choice(len(GENERATORS), p=weights / weights.sum()))][0]
        try:
            return gen(rng)
        except Skip:
            continue


def _sanity(seed):
    """After all the malformed calls, a valid call still gives the reference's results."""
    with contextlib.redirect_stdout(io.StringIO()):  # assert_close's report lines
        run_against_reference(dict(
            mode="lstm", T=5, B=3, I=4, H=6, num_layers=2, bidirectional=True, batch_first=True,
            bias=True, proj_size=3, dtype="float32", dropout=0.0, unbatched=False,
            lengths=[5, 1, 3], lengths_form="int64", with_hx=True, with_dh_n=True,
            with_dc_n=True, x_layout="c", state_layout="c", grad_layout="c", param_layout="c",
            seed=seed))


def run_malformed(count, seed, first=0, out=sys.stdout):
    """Runs cases ``first .. first+count-1``; prints one line per case before calling it (so a
    crash shows which), then one ``FUZZ-SUMMARY {json}`` line."""
    results = dict(cases=0, by_exception={}, not_raised=[], disallowed=[], wrong_kind=[],
                   post_check=[])
    for i in range(first, first + count):
        desc, call, expect, after = make_case(i, seed)
        print(f"case {i}: {desc}", file=out, flush=True)
        results["cases"] += 1
        tag = f"case {i}: {desc}"
        try:
            call()
        except ALLOWED as e:
            name = type(e).__name__
            results["by_exception"][name] = results["by_exception"].get(name, 0) + 1
            if not isinstance(e, expect):
                want = expect.__name__ if isinstance(expect, type) else \
                    " or ".join(t.__name__ for t in expect)
                results["wrong_kind"].append(f"{tag}: raised {name}({e}), expected {want}")
        except BaseException as e:  # noqa: BLE001
            results["disallowed"].append(f"{tag}: raised {type(e).__name__}({e})")
        else:
            results["not_raised"].append(f"{tag}: returned without an exception")
        if after is not None:
            problem = after()
            if problem:
                results["post_check"].append(f"{tag}: {problem}")
    _sanity(seed)
    print("FUZZ-SUMMARY " + json.dumps(results), file=out, flush=True)
    return results


MALFORMED_CASES = 10000
MALFORMED_SEED = 20240


def test_malformed_calls_raise():
    summary = run_fuzz_child(__file__, MALFORMED_CASES, MALFORMED_SEED)
    print(json.dumps(summary["by_exception"]))
    problems = (summary["not_raised"] + summary["disallowed"] + summary["wrong_kind"]
                + summary["post_check"])
    assert_fuzz_clean(summary, problems, MALFORMED_CASES)


if __name__ == "__main__":
    import faulthandler

    faulthandler.enable()  # a crash prints the Python stack too
    _count, _seed = int(sys.argv[1]), int(sys.argv[2])
    _first = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    _res = run_malformed(_count, _seed, _first)
    for _key in ("not_raised", "disallowed", "wrong_kind", "post_check"):
        for _line in _res[_key]:
            print(f"{_key}: {_line}", file=sys.stderr)
