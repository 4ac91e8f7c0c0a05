"""State resets (``resets``) in the C++ core and the NumPy reference.

The semantics (docs/design.md, "State resets"): ``resets[t, b]`` splits sequence b before step t;
each segment runs as a sequence of its own from zeros (the reverse walk of a segment starts from
zeros at its last step, the last segment from h0); resets at padded steps are ignored.

1. The reference against that definition taken literally: every segment run alone through the
   reference without resets (outputs), and the gradients of the reference against finite
   differences in float64.
2. The core (``fastrnn.functional``) against the reference: every cell, both directions, lengths,
   projection, float32 and float64, masks with a reset at t = 0, consecutive resets, all true,
   every output, final state and gradient.
3. An all-false mask gives bitwise the results of no mask; malformed masks raise naming ``resets``.
4. The NumPy modules (stacks, bidirectional, batch_first, unbatched) against the reference modules.
"""
import numpy as np
import pytest

import fastrnn
from fastrnn import functional, reference
from fastrnn._cells import MODES
from conftest import assert_close, make_layer_inputs, random_lengths

GRAD_NAMES = ("input", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
MASKS = ("random", "first", "consecutive", "all", "last")


def make_resets(kind, T, B, seed):
    rng = np.random.default_rng(seed + 101)
    if kind == "random":
        return rng.random((T, B)) < 0.3
    m = np.zeros((T, B), dtype=bool)
    if kind == "first":  # at t = 0 (replaces h0), and one more inside
        m[0] = True
        m[T // 2, ::2] = True
    elif kind == "consecutive":
        m[1:4, :] = True
    elif kind == "all":
        m[:] = True
    elif kind == "last":
        m[T - 1] = True
    return m


def _forward(backend, mode, a, **kw):
    return backend.layer_forward(mode, a["x"], a["h0"], a["c0"], a["weight_ih"], a["weight_hh"],
                                 a["bias_ih"], a["bias_hh"], **kw)


def _inputs(mode, T, B, I, H, dtype, seed, proj=0):
    a = make_layer_inputs(mode, T, B, I, H, dtype=np.float64, seed=seed)
    if proj:
        rng = np.random.default_rng(seed + 3)
        a["weight_hr"] = rng.uniform(-0.5, 0.5, (proj, H))
        a["weight_hh"] = rng.uniform(-0.5, 0.5, (4 * H, proj))
        a["h0"] = rng.standard_normal((B, proj)) * 0.5
    return {k: None if v is None else v.astype(dtype) for k, v in a.items()}


def _grads(mode, T, B, R, H, seed):
    rng = np.random.default_rng(seed + 11)
    return (rng.standard_normal((T, B, R)), rng.standard_normal((B, R)),
            rng.standard_normal((B, H)) if mode == "lstm" else None)


# ---- 1. the reference against the definition ---------------------------------------------------

def _segments(resets_col, length):
    """[(start, end)) of each segment of one sequence of `length` valid steps."""
    starts = [0] + [t for t in range(1, length) if resets_col[t]]
    return list(zip(starts, starts[1:] + [length]))


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode", MODES)
def test_reference_runs_each_segment_as_its_own_sequence(mode, reverse):
    T, B, I, H = 11, 4, 3, 5
    a = _inputs(mode, T, B, I, H, np.float64, seed=1)
    resets = make_resets("random", T, B, seed=1)
    resets[0, 1] = True
    lengths = random_lengths(np.random.default_rng(2), T, B)
    y, h_n, c_n, _ = _forward(reference, mode, a, lengths=lengths, resets=resets,
                              reverse=reverse, training=False)
    for b in range(B):
        segs = _segments(resets[:, b], lengths[b])
        for k, (s, e) in enumerate(segs):
            # forward: a segment starts from zeros unless it is the first one without a reset at
            # t = 0; reverse: from zeros unless it is the last one
            given = (k == len(segs) - 1) if reverse else (k == 0 and not resets[0, b])
            h0 = a["h0"][b:b + 1] if given else np.zeros_like(a["h0"][b:b + 1])
            c0 = None
            if mode == "lstm":
                c0 = a["c0"][b:b + 1] if given else np.zeros_like(a["c0"][b:b + 1])
            ys, hs, cs, _ = reference.layer_forward(
                mode, a["x"][s:e, b:b + 1], h0, c0, a["weight_ih"], a["weight_hh"],
                a["bias_ih"], a["bias_hh"], reverse=reverse, training=False)
            np.testing.assert_allclose(y[s:e, b:b + 1], ys, rtol=1e-12, atol=1e-12)
            final = k == 0 if reverse else k == len(segs) - 1
            if final:
                np.testing.assert_allclose(h_n[b:b + 1], hs, rtol=1e-12, atol=1e-12)
                if mode == "lstm":
                    np.testing.assert_allclose(c_n[b:b + 1], cs, rtol=1e-12, atol=1e-12)
        assert np.all(y[lengths[b]:, b] == 0)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode", MODES)
def test_reference_gradients_with_resets_match_finite_differences(mode, reverse):
    T, B, I, H = 6, 3, 2, 3
    a = _inputs(mode, T, B, I, H, np.float64, seed=4)
    resets = np.zeros((T, B), dtype=bool)
    resets[0, 0] = resets[2, 1] = resets[3, 1] = resets[4, 2] = True
    lengths = np.array([6, 5, 4], dtype=np.int64)
    dy, dh_n, dc_n = _grads(mode, T, B, H, H, seed=4)

    def loss(arrays):
        y, h, c, _ = _forward(reference, mode, arrays, lengths=lengths, resets=resets,
                              reverse=reverse, training=False)
        total = np.sum(y * dy) + np.sum(h * dh_n)
        return total + (np.sum(c * dc_n) if c is not None else 0.0)

    _, _, _, saved = _forward(reference, mode, a, lengths=lengths, resets=resets, reverse=reverse)
    grads = reference.layer_backward(saved, dy, dh_n, dc_n)
    names = {"input": "x", "h0": "h0", "c0": "c0", "weight_ih": "weight_ih",
             "weight_hh": "weight_hh", "bias_ih": "bias_ih", "bias_hh": "bias_hh"}
    eps = 1e-6
    for gname, aname in names.items():
        if a.get(aname) is None:
            continue
        numeric = np.zeros_like(a[aname])
        for idx in np.ndindex(a[aname].shape):
            plus = {k: (v.copy() if v is not None else None) for k, v in a.items()}
            minus = {k: (v.copy() if v is not None else None) for k, v in a.items()}
            plus[aname][idx] += eps
            minus[aname][idx] -= eps
            numeric[idx] = (loss(plus) - loss(minus)) / (2 * eps)
        err = np.max(np.abs(grads[gname] - numeric)) / max(1.0, np.max(np.abs(numeric)))
        assert err < 1e-6, f"{gname}: {err}"
    if not reverse:  # a reset at t = 0 cuts h0 (and c0) off
        assert np.all(grads["h0"][0] == 0)
        if mode == "lstm":
            assert np.all(grads["c0"][0] == 0)


# ---- 2. the core against the reference ---------------------------------------------------------

SIZES = [(1, 1, 1, 1), (1, 3, 2, 5), (7, 5, 3, 11), (13, 6, 8, 17), (40, 3, 9, 64),
         (9, 16, 5, 33)]


def _compare(mode, size, dtype, *, reverse, mask, lengths_kind, seed, proj=0):
    T, B, I, H = size
    a = _inputs(mode, T, B, I, H, np.float64, seed, proj=proj)
    resets = make_resets(mask, T, B, seed)
    lengths = (random_lengths(np.random.default_rng(seed), T, B) if lengths_kind == "mixed"
               else None)
    R = proj or H
    kw = dict(lengths=lengths, resets=resets, reverse=reverse)
    if proj:
        kw["weight_hr"] = a["weight_hr"]
    want = _forward(reference, mode, a, **kw)
    mine = {k: None if v is None else v.astype(dtype) for k, v in a.items()}
    if proj:
        kw["weight_hr"] = mine["weight_hr"]
    got = _forward(functional, mode, mine, **kw)
    label = f"{mode} {size} {np.dtype(dtype).name} rev={reverse} {mask} {lengths_kind}"
    for name, g, w in zip(("y", "h_n", "c_n"), got[:3], want[:3]):
        assert_close(g, w, dtype, f"{label} {name}")
    dy, dh_n, dc_n = _grads(mode, T, B, R, H, seed)
    gw = reference.layer_backward(want[3], dy, dh_n, dc_n)
    gg = functional.layer_backward(got[3], dy.astype(dtype), dh_n.astype(dtype),
                                   None if dc_n is None else dc_n.astype(dtype))
    for name in GRAD_NAMES:
        assert_close(gg[name], gw[name], dtype, f"{label} d{name}")


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode", MODES)
def test_core_matches_reference_with_resets(mode, reverse, mask):
    for i, size in enumerate(SIZES):
        for dtype in (np.float64, np.float32):
            _compare(mode, size, dtype, reverse=reverse, mask=mask, lengths_kind="none",
                     seed=i)
        _compare(mode, size, np.float64, reverse=reverse, mask=mask, lengths_kind="mixed",
                 seed=10 + i)


@pytest.mark.parametrize("mask", ["random", "first", "all"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_core_matches_reference_with_resets_and_projection(reverse, mask):
    for i, size in enumerate([(7, 5, 3, 11), (1, 2, 3, 4), (20, 9, 4, 16)]):
        for dtype in (np.float64, np.float32):
            for lengths_kind in ("none", "mixed"):
                _compare("lstm", size, dtype, reverse=reverse, mask=mask,
                         lengths_kind=lengths_kind, seed=i, proj=size[3] // 2 + 1 if size[3] > 2
                         else 1)


@pytest.mark.parametrize("mode", MODES)
def test_core_matches_reference_at_batch_one_with_large_weights(mode):
    # B = 1 with a large W_hh and a short sequence runs the per-step BLAS path (GEMV)
    _compare(mode, (5, 1, 7, 300), np.float64, reverse=False, mask="first", lengths_kind="none",
             seed=5)
    _compare(mode, (5, 1, 7, 300), np.float64, reverse=True, mask="random", lengths_kind="none",
             seed=6)


# ---- 3. all-false masks and malformed masks ----------------------------------------------------

@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode", MODES)
def test_all_false_mask_is_bitwise_no_mask(mode, reverse):
    T, B, I, H = 9, 5, 4, 13
    a = _inputs(mode, T, B, I, H, np.float32, seed=3)
    lengths = random_lengths(np.random.default_rng(3), T, B)
    none = _forward(functional, mode, a, lengths=lengths, reverse=reverse)
    false = _forward(functional, mode, a, lengths=lengths, reverse=reverse,
                     resets=np.zeros((T, B), dtype=bool))
    # resets only at padded steps, or at t = 0 of the reverse walk, change nothing either
    ignored = np.zeros((T, B), dtype=bool)
    for b in range(B):
        ignored[lengths[b]:, b] = True
    if reverse:
        ignored[0] = True
    padded = _forward(functional, mode, a, lengths=lengths, reverse=reverse, resets=ignored)
    for other in (false, padded):
        for g, w in zip(other[:3], none[:3]):
            assert (g is None and w is None) or np.array_equal(g, w)
        dy, dh_n, dc_n = (v if v is None else v.astype(np.float32)
                          for v in _grads(mode, T, B, H, H, 3))
        gn = functional.layer_backward(none[3], dy, dh_n, dc_n)
        go = functional.layer_backward(other[3], dy, dh_n, dc_n)
        for name in GRAD_NAMES:
            assert (gn[name] is None and go[name] is None) or np.array_equal(gn[name], go[name])


@pytest.mark.parametrize("backend", [functional, reference], ids=["core", "reference"])
def test_malformed_masks_raise_naming_resets(backend):
    a = _inputs("gru", 4, 3, 2, 5, np.float32, seed=0)
    with pytest.raises(ValueError, match=r"resets: expected shape \(T, B\) = \(4, 3\), got"):
        _forward(backend, "gru", a, resets=np.zeros((3, 4), dtype=bool))
    with pytest.raises(TypeError, match="resets: expected dtype bool, got int64"):
        _forward(backend, "gru", a, resets=np.zeros((4, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="resets: expected dtype bool, got float32"):
        _forward(backend, "gru", a, resets=np.zeros((4, 3), dtype=np.float32))


def test_core_rejects_malformed_masks_itself():
    a = _inputs("lstm", 4, 3, 2, 5, np.float32, seed=0)
    args = (fastrnn._cells.cell("lstm").code, a["x"], a["h0"], a["c0"], a["weight_ih"],
            a["weight_hh"], a["bias_ih"], a["bias_hh"], None, None, False, True)
    with pytest.raises(ValueError, match=r"resets: expected shape \(T, B\) = \(4, 3\), got \(4,\)"):
        fastrnn._core.layer_forward(*args, resets=np.zeros(4, dtype=bool))
    with pytest.raises(TypeError, match="resets: expected dtype bool, got uint8"):
        fastrnn._core.layer_forward(*args, resets=np.zeros((4, 3), dtype=np.uint8))
    with pytest.raises(TypeError, match="resets: expected a numpy.ndarray, got list"):
        fastrnn._core.layer_forward(*args, resets=[[True] * 3] * 4)


# ---- 4. the NumPy modules ----------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
@pytest.mark.parametrize("cls", ["RNN", "LSTM", "GRU"])
def test_modules_with_resets_match_reference_modules(cls, layout):
    T, B, I, H = 8, 4, 3, 6
    kw = dict(num_layers=3, bidirectional=True, batch_first=layout == "batch_first",
              dtype=np.float64, seed=7)
    ours = getattr(fastrnn, cls)(I, H, **kw)
    ref = getattr(reference, cls)(I, H, **kw)
    ref.load_state_dict(ours.state_dict())
    rng = np.random.default_rng(0)
    resets = rng.random((T, B)) < 0.25
    resets[0, 0] = True
    x = rng.standard_normal((T, B, I))
    lengths = random_lengths(rng, T, B)
    if layout == "batch_first":
        x, resets = x.transpose(1, 0, 2).copy(), resets.T.copy()
    if layout == "unbatched":
        x, resets, lengths = x[:, 0], resets[:, 0], None
    y, h = ours(x, lengths=lengths, resets=resets)
    y_ref, h_ref = ref(x, lengths=lengths, resets=resets)
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(h if cls == "LSTM" else (h,), h_ref if cls == "LSTM" else (h_ref,)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    dy = rng.standard_normal(y.shape)
    g = ours.backward(dy)
    g_ref = ref.backward(dy)
    for name in g:
        if g[name] is not None:
            np.testing.assert_allclose(g[name], g_ref[name], rtol=1e-9, atol=1e-9,
                                       err_msg=name)
    with pytest.raises(ValueError, match="resets: expected shape"):
        ours(x, resets=resets[..., None])
