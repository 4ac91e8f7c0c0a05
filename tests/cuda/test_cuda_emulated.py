"""The CUDA backend's kernels and driver, run by host emulation, against the float64 reference.

The module ``_cuda_emulated`` is csrc/cuda compiled by the host compiler against
csrc/cuda/emulation/host_emulation.h (see csrc/cuda/platform.cuh): the very same kernels --
standard step kernels, persistent cooperative kernels -- and the same driver (layouts, slots,
lengths, state resets, reverse, projection, the GEMMs' shapes and transpositions, the half
types) run on CPU threads, one per CUDA thread, with barriers for __syncthreads, warp shuffles
and grid.sync.
"Device pointers" are host addresses, so NumPy arrays serve as device memory. This checks the
logic of the CUDA code on machines without a GPU; the GPU itself (its memory model, cuBLAS's
real arithmetic, speed) is tests/cuda/test_cuda.py's job.

Build it and point the tests at it (.ci/run does this):

    cmake -S . -B build/emu -DFASTRNN_CUDA=OFF -DFASTRNN_CUDA_EMULATION=ON
    cmake --build build/emu --target _cuda_emulated
    FASTRNN_CUDA_EMULATOR=build/emu python -m pytest tests/cuda/test_cuda_emulated.py

Without FASTRNN_CUDA_EMULATOR the tests skip, unless FASTRNN_REQUIRE_CUDA_EMULATOR=1.
"""
from __future__ import annotations

import glob
import importlib.util
import inspect
import os
import threading
import warnings
import zlib

import numpy as np
import pytest

import fastrnn.cuda
from conftest import EMULATED_GPU_TOLERANCES
from fastrnn import reference
from fastrnn._cells import CELLS, MODES, num_gates

_DIR = os.environ.get("FASTRNN_CUDA_EMULATOR", "")
_REQUIRED = os.environ.get("FASTRNN_REQUIRE_CUDA_EMULATOR") == "1"


def _load():
    if not _DIR:
        return None, "FASTRNN_CUDA_EMULATOR is not set (the module's build directory)"
    found = sorted(glob.glob(os.path.join(_DIR, "_cuda_emulated*.so")))
    if not found:
        return None, f"no _cuda_emulated*.so in FASTRNN_CUDA_EMULATOR={_DIR!r}"
    spec = importlib.util.spec_from_file_location("_cuda_emulated", found[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module, None


emu, _why_not = _load()


@pytest.fixture(autouse=True)
def _need_emulator():
    if emu is None:
        if _REQUIRED:
            pytest.fail(f"FASTRNN_REQUIRE_CUDA_EMULATOR=1 but {_why_not}")
        pytest.skip(_why_not)


CELL = {mode: spec.code for mode, spec in CELLS.items()}
DTYPE_CODE = fastrnn.cuda.DTYPE_CODES
STANDARD, PERSISTENT, AUTO = (fastrnn.cuda.ALGO_CODES[a] for a in ("standard", "persistent", "auto"))
GRADIENTS = ("input", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def _bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even."""
    bits = np.ascontiguousarray(a, np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def _bf16_value(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


class Buffers:
    """Arrays in one dtype as the kernels see them (device = host here), and their float64
    values for the reference."""

    def __init__(self, dtype: str):
        self.dtype = dtype

    def make(self, values: np.ndarray) -> np.ndarray:
        if self.dtype == "float32":
            return np.ascontiguousarray(values, np.float32)
        if self.dtype == "float16":
            return np.ascontiguousarray(values, np.float16)
        return _bf16_bits(values)

    def poisoned(self, shape) -> np.ndarray:
        width = {"float32": np.uint32, "float16": np.uint16, "bfloat16": np.uint16}[self.dtype]
        raw = np.full(shape, np.iinfo(width).max, width)  # all ones: NaN in every float type
        return raw if self.dtype == "bfloat16" else raw.view(
            np.float32 if self.dtype == "float32" else np.float16)

    def value(self, a: np.ndarray) -> np.ndarray:
        return (_bf16_value(a) if self.dtype == "bfloat16" else a).astype(np.float64)


def _addr(a) -> int:
    return 0 if a is None else a.ctypes.data


def _rel(out: np.ndarray, ref: np.ndarray) -> float:
    if not np.all(np.isfinite(out)):
        return float("nan")
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


def run_layer(*args, **kwargs):
    """Forward (and backward when training) through the emulated CUDA code and the reference;
    returns the algo that ran and {name: relative error} for every output and gradient."""
    return _finish(layer_calls(*args, **kwargs))


def _finish(calls):
    """Runs what is left of a layer_calls generator; returns its result."""
    try:
        while True:
            next(calls)
    except StopIteration as done:
        return done.value


def layer_calls(mode, dtype, T, B, I, H, *, P=0, reverse=False, lengths=None, algo=STANDARD,
                bias=True, training=True, seed=0, stream=0, resets=None, keep=None):
    """run_layer as a generator that pauses after the forward call, so that tests can interleave
    the calls of several layers; `stream` is the stream handle that the calls pass. `resets`: a
    bool array (T, B) or None; `keep`: a dict that receives the raw results (y, h_n, c_n and the
    gradients, as the kernels wrote them)."""
    rng = np.random.default_rng(seed)
    buf, G, R = Buffers(dtype), num_gates(mode), P or H
    cell, dcode = CELL[mode], DTYPE_CODE[dtype]

    def rand(*shape):
        return buf.make(rng.standard_normal(shape) * 0.5)

    x, h0 = rand(T, B, I), rand(B, R)
    c0 = rand(B, H) if mode == "lstm" else None
    w_ih, w_hh = rand(G * H, I), rand(G * H, R)
    b_ih, b_hh = (rand(G * H), rand(G * H)) if bias else (None, None)
    w_hr = rand(P, H) if P else None
    lengths_arr = None if lengths is None else np.asarray(lengths, np.int64)
    resets_u8 = None if resets is None else np.ascontiguousarray(resets, np.uint8)

    code = emu.resolve_algo(cell, dcode, T, B, I, H, P, algo, 0)
    fwd_bytes, bwd_bytes = emu.workspace_bytes(cell, dcode, T, B, I, H, P, training, code)
    per_slot, per_step = emu.reserve_widths(cell, H, P, dcode)
    reserve = np.full((T + 1) * B * per_slot + T * B * per_step, 0xFF, np.uint8) if training else None
    workspace = np.full(max(fwd_bytes, 1), 0xFF, np.uint8)
    y, h_n = buf.poisoned((T, B, R)), buf.poisoned((B, R))
    c_n = buf.poisoned((B, H)) if mode == "lstm" else None
    emu.layer_forward(cell, dcode, T, B, I, H, P, reverse, code, False, 0, stream, _addr(x),
                      _addr(h0), _addr(c0), _addr(w_ih), _addr(w_hh), _addr(b_ih), _addr(b_hh),
                      _addr(w_hr), _addr(lengths_arr), _addr(y), _addr(h_n), _addr(c_n),
                      _addr(reserve), _addr(workspace), resets=_addr(resets_u8))
    yield
    if keep is not None:
        keep.update(y=y, h_n=h_n, c_n=c_n)

    v = (lambda a: None if a is None else buf.value(a))
    ry, rh, rc, ref_backward = reference_layer(
        mode, dict(x=v(x), h0=v(h0), c0=v(c0), weight_ih=v(w_ih), weight_hh=v(w_hh),
                   bias_ih=v(b_ih), bias_hh=v(b_hh), weight_hr=v(w_hr)),
        lengths=lengths_arr, resets=resets, reverse=reverse)
    errors = {"y": _rel(v(y), ry), "h_n": _rel(v(h_n), rh)}
    if c_n is not None:
        errors["c_n"] = _rel(v(c_n), rc)
    if lengths_arr is not None:  # padded steps give exact zeros
        t = np.arange(T)[:, None]
        assert np.all(v(y)[t >= lengths_arr[None, :]] == 0.0)
    if not training:
        return code, errors

    dy, dh_n = rand(T, B, R), rand(B, R)
    dc_n = rand(B, H) if mode == "lstm" else None
    inputs = dict(input=x, h0=h0, c0=c0, weight_ih=w_ih, weight_hh=w_hh, bias_ih=b_ih,
                  bias_hh=b_hh, weight_hr=w_hr)
    grads = {k: None if a is None else buf.poisoned(a.shape) for k, a in inputs.items()}
    workspace = np.full(max(bwd_bytes, 1), 0xFF, np.uint8)
    emu.layer_backward(cell, dcode, T, B, I, H, P, reverse, code, False, 0, stream, _addr(x),
                       _addr(h0), _addr(c0), _addr(w_ih), _addr(w_hh), _addr(b_ih), _addr(b_hh),
                       _addr(w_hr), _addr(lengths_arr), _addr(reserve), _addr(dy), _addr(dh_n),
                       _addr(dc_n), *[_addr(grads[k]) for k in GRADIENTS], _addr(workspace),
                       resets=_addr(resets_u8))
    if keep is not None:
        keep.update(grads)
    ref_grads = ref_backward(v(dy), v(dh_n), v(dc_n))
    for k in GRADIENTS:
        if grads[k] is not None:
            errors["d" + k] = _rel(v(grads[k]), ref_grads[k])
    return code, errors


# ---- the float64 reference, with state resets -------------------------------------------------

# fastrnn.reference takes `resets` (the CPU side's work); until it does, the tests use the local
# reference below, which knows the rule only as its meaning: a reset splits a sequence into
# segments that run as sequences of their own.
REFERENCE_HAS_RESETS = "resets" in inspect.signature(reference.layer_forward).parameters


def reference_layer(mode, a, *, lengths, resets, reverse, local=None):
    """The float64 reference of one layer call on `a` (x, h0, c0, weight_ih, weight_hh, bias_ih,
    bias_hh, weight_hr): (y, h_n, c_n, backward), backward(dy, dh_n, dc_n) giving the gradients
    by name. `local`: True forces the segment reference below, False fastrnn.reference, None
    takes fastrnn.reference wherever it can."""
    if local is None:
        local = resets is not None and not REFERENCE_HAS_RESETS
    if local:
        return _segment_reference(mode, a, lengths=lengths, resets=resets, reverse=reverse)
    extra = {} if resets is None else {"resets": np.asarray(resets, bool)}
    y, h_n, c_n, saved = reference.layer_forward(
        mode, a["x"], a["h0"], a["c0"], a["weight_ih"], a["weight_hh"], a["bias_ih"],
        a["bias_hh"], weight_hr=a["weight_hr"], lengths=lengths, reverse=reverse,
        training=True, **extra)
    return y, h_n, c_n, lambda dy, dh_n, dc_n: reference.layer_backward(saved, dy, dh_n, dc_n)


def _segments(L, marks, reverse):
    """[(start, end, from_initial_state)] of one row of valid length L: resets at 0 < t < L split
    it before step t; each segment runs as a sequence of its own. The forward walk's first
    segment starts from h0 (from zeros when resets[0]), the reverse walk's last one (from its own
    last step); every other segment starts from zeros."""
    bounds = [0] + [t for t in range(1, L) if marks[t]] + [L]
    spans = list(zip(bounds[:-1], bounds[1:]))
    first = len(spans) - 1 if reverse else 0
    return [(s, e, k == first and (reverse or not marks[0])) for k, (s, e) in enumerate(spans)]


def _segment_reference(mode, a, *, lengths, resets, reverse):
    """fastrnn.reference run on every segment of every row (B = 1, no lengths, no resets), put
    together: outputs and input gradients by step, weight gradients summed, the initial state's
    gradient from the segment that starts from it, the final state from (and its gradient into)
    the segment the walk ends with."""
    x = a["x"]
    T, B, _ = x.shape
    R, H = a["h0"].shape[1], a["weight_ih"].shape[0] // num_gates(mode)
    lstm = mode == "lstm"
    marks = np.zeros((T, B), bool) if resets is None else np.asarray(resets, bool)
    y = np.zeros((T, B, R))
    h_n, c_n = np.zeros((B, R)), np.zeros((B, H)) if lstm else None
    runs = []  # (b, start, end, from_initial, ends_the_walk, saved)
    for b in range(B):
        L = T if lengths is None else int(lengths[b])
        segments = _segments(L, marks[:, b], reverse)
        last = segments[0] if reverse else segments[-1]
        for s, e, from_initial in segments:
            h0 = a["h0"][b:b + 1] if from_initial else np.zeros((1, R))
            c0 = None if not lstm else a["c0"][b:b + 1] if from_initial else np.zeros((1, H))
            ys, hs, cs, saved = reference.layer_forward(
                mode, x[s:e, b:b + 1], h0, c0, a["weight_ih"], a["weight_hh"], a["bias_ih"],
                a["bias_hh"], weight_hr=a["weight_hr"], reverse=reverse, training=True)
            y[s:e, b] = ys[:, 0]
            ends = (s, e) == last[:2]
            if ends:
                h_n[b] = hs[0]
                if lstm:
                    c_n[b] = cs[0]
            runs.append((b, s, e, from_initial, ends, saved))

    def backward(dy, dh_n, dc_n):
        g = {"input": np.zeros_like(x), "h0": np.zeros_like(a["h0"]),
             "c0": None if not lstm else np.zeros_like(a["c0"])}
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"):
            g[name] = None if a[name] is None else np.zeros_like(a[name])
        for b, s, e, from_initial, ends, saved in runs:
            gs = reference.layer_backward(
                saved, dy[s:e, b:b + 1],
                dh_n[b:b + 1] if ends and dh_n is not None else None,
                dc_n[b:b + 1] if ends and dc_n is not None else None)
            g["input"][s:e, b] = gs["input"][:, 0]
            if from_initial:
                g["h0"][b] = gs["h0"][0]
                if lstm:
                    g["c0"][b] = gs["c0"][0]
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"):
                if g[name] is not None:
                    g[name] += gs[name]
        return g

    return y, h_n, c_n, backward


def _check(errors, dtype):
    out_tol, grad_tol = (EMULATED_GPU_TOLERANCES[dtype][k] for k in ("output", "grad"))
    bad = {k: e for k, e in errors.items()
           if not e <= (grad_tol if k.startswith("d") else out_tol)}
    assert not bad, f"relative errors over tolerance ({dtype}): {bad}"


def _seed(*key) -> int:
    return zlib.crc32(repr(key).encode())


@pytest.mark.parametrize("algo", [STANDARD, PERSISTENT])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_float32_every_cell_direction_and_algo_with_lengths(mode, reverse, algo):
    code, errors = run_layer(mode, "float32", 6, 3, 7, 13, lengths=[6, 2, 5], reverse=reverse,
                             algo=algo, seed=_seed(mode, reverse, algo))
    assert code == algo  # persistent fits this size: it really ran
    _check(errors, "float32")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("algo", [STANDARD, PERSISTENT])
@pytest.mark.parametrize("mode", ["rnn_tanh", "lstm", "gru"])
def test_half_types(mode, algo, dtype):
    # relu is left to float32: its derivative jumps at 0, where half rounding may land an
    # activation on the other side of the reference's
    code, errors = run_layer(mode, dtype, 5, 3, 6, 9, lengths=[3, 5, 1], reverse=algo == 1,
                             algo=algo, seed=_seed(mode, algo, dtype))
    assert code == algo
    _check(errors, dtype)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lstm_projection(reverse, dtype):
    code, errors = run_layer("lstm", dtype, 5, 3, 6, 11, P=4, lengths=[5, 1, 3],
                             reverse=reverse, algo=AUTO, seed=_seed(reverse, dtype))
    assert code == STANDARD  # the persistent kernel has no projection
    _check(errors, dtype)


def test_persistent_refuses_a_projection():
    with pytest.raises(ValueError, match="algo"):
        emu.resolve_algo(CELL["lstm"], 0, 5, 3, 6, 11, 4, PERSISTENT, 0)


@pytest.mark.parametrize("algo", [STANDARD, PERSISTENT])
@pytest.mark.parametrize("mode", ["rnn_relu", "gru"])
def test_without_bias(mode, algo):
    _, errors = run_layer(mode, "float32", 4, 2, 5, 7, bias=False, algo=algo,
                          seed=_seed(mode, algo))
    _check(errors, "float32")


@pytest.mark.parametrize("algo", [STANDARD, PERSISTENT])
@pytest.mark.parametrize("T, B, I, H", [(1, 1, 1, 1), (1, 5, 3, 2), (7, 1, 2, 5), (3, 16, 4, 6)])
def test_awkward_sizes(T, B, I, H, algo):
    mode = ("lstm", "gru", "rnn_tanh", "lstm")[(T + B + I + H) % 4]
    _, errors = run_layer(mode, "float32", T, B, I, H, algo=algo, reverse=bool(B % 2),
                          seed=_seed(T, B, I, H, algo))
    _check(errors, "float32")


@pytest.mark.parametrize("algo", [STANDARD, PERSISTENT])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_inference_mode(mode, algo):
    # inference keeps the state in a ring of two buffers instead of the reserve
    _, errors = run_layer(mode, "float32", 6, 2, 5, 9, lengths=[6, 3], reverse=True, algo=algo,
                          training=False, seed=_seed(mode, algo))
    _check(errors, "float32")


def test_auto_takes_the_persistent_kernel_where_it_fits_and_standard_beyond():
    assert emu.resolve_algo(CELL["gru"], 0, 5, 16, 8, 32, 0, AUTO, 0) == PERSISTENT
    assert emu.resolve_algo(CELL["gru"], 0, 5, 17, 8, 32, 0, AUTO, 0) == STANDARD  # batch > 16
    with pytest.raises(ValueError, match="algo"):
        emu.resolve_algo(CELL["gru"], 0, 5, 17, 8, 32, 0, PERSISTENT, 0)
    # W_hh too large for the emulated device's shared memory (4 multiprocessors x 227 KiB)
    assert emu.resolve_algo(CELL["lstm"], 0, 5, 2, 8, 1024, 0, AUTO, 0) == STANDARD


def test_more_units_than_multiprocessors_and_a_batch_of_16():
    # 4 emulated multiprocessors: 5 units per block over 4 blocks, the last one short
    code, errors = run_layer("lstm", "float32", 4, 16, 3, 17, lengths=list(range(1, 5)) * 4,
                             algo=PERSISTENT, seed=_seed("wide"))
    assert code == PERSISTENT
    _check(errors, "float32")


# ---- state resets (ForwardPtrs::resets, common/resets.h) ----------------------------------------
# A reset at (t, b) restarts row b from zeros before step t (in the reverse walk: each segment
# from zeros at its last step). The kernels keep the true states in the reserve and read zeros
# for a fresh row; the reference's meaning is the segments' (see _segment_reference).

def _reset_pattern(T, B, lengths):
    """A mask with every case: a reset at t = 0, consecutive resets, a reset at a row's last valid
    step and at padded steps (ignored), a row with none; T >= 6, B >= 4."""
    r = np.zeros((T, B), bool)
    r[[0, 2, 3, T - 1], 0] = True                           # t = 0, consecutive, the last step
    L1 = T if lengths is None else lengths[1]
    r[L1 - 1, 1] = True                                     # row 1's last valid step
    r[min(L1 + 1, T - 1), 1] = r[T - 1, 1] = True           # padded steps where row 1 is short
    r[1, 2] = r[T // 2, 2] = True
    # row 3: none
    return r


RESET_SHAPES = dict(T=7, B=4, I=5, H=9, lengths=[7, 3, 5, 7])


@pytest.mark.parametrize("algo", [STANDARD, PERSISTENT])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_resets_every_cell_direction_and_algo_with_lengths(mode, reverse, algo):
    T, B, I, H, lengths = (RESET_SHAPES[k] for k in ("T", "B", "I", "H", "lengths"))
    code, errors = run_layer(mode, "float32", T, B, I, H, lengths=lengths, reverse=reverse,
                             algo=algo, resets=_reset_pattern(T, B, lengths),
                             seed=_seed("resets", mode, reverse, algo))
    assert code == algo
    _check(errors, "float32")


@pytest.mark.parametrize("algo", [STANDARD, PERSISTENT])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_resets_everywhere(mode, reverse, algo):
    # every step starts from zeros: no gradient reaches h0/c0 (forward walk) or crosses a step
    T, B, I, H = 4, 3, 3, 5
    keep = {}
    code, errors = run_layer(mode, "float32", T, B, I, H, lengths=[4, 1, 3], reverse=reverse,
                             algo=algo, resets=np.ones((T, B), bool), keep=keep,
                             seed=_seed("all resets", mode, reverse, algo))
    assert code == algo
    _check(errors, "float32")
    if not reverse:
        assert np.all(keep["h0"] == 0)
        if mode == "lstm":
            assert np.all(keep["c0"] == 0)


@pytest.mark.parametrize("algo", [STANDARD, PERSISTENT])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_no_resets_mask_is_bitwise_the_same_as_none(mode, reverse, algo):
    T, B, I, H = 5, 3, 4, 6
    runs = []
    for resets in (None, np.zeros((T, B), bool)):
        keep = {}
        run_layer(mode, "float32", T, B, I, H, lengths=[5, 2, 4], reverse=reverse, algo=algo,
                  resets=resets, keep=keep, seed=_seed("no resets", mode, reverse, algo))
        runs.append(keep)
    assert runs[0].keys() == runs[1].keys()
    for name, a in runs[0].items():
        if a is None:
            assert runs[1][name] is None, name
        else:
            assert a.tobytes() == runs[1][name].tobytes(), f"{name} differs"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("algo", [STANDARD, PERSISTENT])
@pytest.mark.parametrize("mode", ["rnn_tanh", "lstm", "gru"])
def test_resets_half_types(mode, algo, dtype):
    T, B, I, H, lengths = (RESET_SHAPES[k] for k in ("T", "B", "I", "H", "lengths"))
    code, errors = run_layer(mode, dtype, T, B, I, H, lengths=lengths, reverse=algo == 1,
                             algo=algo, resets=_reset_pattern(T, B, lengths),
                             seed=_seed("resets", mode, algo, dtype))
    assert code == algo
    _check(errors, dtype)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_resets_lstm_projection(reverse, dtype):
    T, B, I, H, lengths = (RESET_SHAPES[k] for k in ("T", "B", "I", "H", "lengths"))
    code, errors = run_layer("lstm", dtype, T, B, I, H, P=4, lengths=lengths, reverse=reverse,
                             algo=AUTO, resets=_reset_pattern(T, B, lengths),
                             seed=_seed("resets proj", reverse, dtype))
    assert code == STANDARD
    _check(errors, dtype)


@pytest.mark.parametrize("algo", [STANDARD, PERSISTENT])
@pytest.mark.parametrize("mode", ["rnn_relu", "gru"])
def test_resets_without_bias(mode, algo):
    # a fresh row's recurrent pre-activation is b_hh alone: here nothing
    T, B = 6, 4
    _, errors = run_layer(mode, "float32", T, B, 5, 7, bias=False, algo=algo,
                          resets=_reset_pattern(T, B, None), seed=_seed("resets", mode, algo))
    _check(errors, "float32")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("algo", [STANDARD, PERSISTENT])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_resets_inference_mode(mode, algo, reverse):
    T, B, I, H, lengths = (RESET_SHAPES[k] for k in ("T", "B", "I", "H", "lengths"))
    _, errors = run_layer(mode, "float32", T, B, I, H, lengths=lengths, reverse=reverse,
                          algo=algo, training=False, resets=_reset_pattern(T, B, lengths),
                          seed=_seed("resets inference", mode, algo, reverse))
    _check(errors, "float32")


@pytest.mark.parametrize("reverse", [False, True])
def test_resets_more_units_than_multiprocessors_and_a_batch_of_16(reverse):
    # several blocks, each skipping the fresh rows of its units in the backward's W_hh product
    rng = np.random.default_rng(_seed("wide resets", reverse))
    lengths = list(range(1, 6)) * 3 + [6]
    code, errors = run_layer("gru", "float32", 6, 16, 3, 17, lengths=lengths, reverse=reverse,
                             algo=PERSISTENT, resets=rng.random((6, 16)) < 0.3,
                             seed=_seed("wide resets", reverse))
    assert code == PERSISTENT
    _check(errors, "float32")


@pytest.mark.skipif(not REFERENCE_HAS_RESETS,
                    reason="fastrnn.reference.layer_forward has no resets yet")
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_segment_reference_agrees_with_fastrnn_reference(mode, reverse):
    T, B, I, H, lengths = (RESET_SHAPES[k] for k in ("T", "B", "I", "H", "lengths"))
    rng = np.random.default_rng(_seed("references", mode, reverse))
    G = num_gates(mode)
    a = dict(x=rng.standard_normal((T, B, I)), h0=rng.standard_normal((B, H)),
             c0=rng.standard_normal((B, H)) if mode == "lstm" else None,
             weight_ih=rng.standard_normal((G * H, I)) * 0.4,
             weight_hh=rng.standard_normal((G * H, H)) * 0.4,
             bias_ih=rng.standard_normal(G * H), bias_hh=rng.standard_normal(G * H),
             weight_hr=None)
    dy, dh_n = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))
    dc_n = rng.standard_normal((B, H)) if mode == "lstm" else None
    lengths, resets = np.array(lengths), _reset_pattern(T, B, lengths)
    results = []
    for local in (True, False):
        y, h_n, c_n, backward = reference_layer(mode, a, lengths=lengths, resets=resets,
                                                reverse=reverse, local=local)
        results.append(dict(y=y, h_n=h_n, c_n=c_n, **backward(dy, dh_n, dc_n)))
    for name, want in results[0].items():
        got = results[1][name]
        if want is None:
            assert got is None, name
        else:
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=name)


# ---- cuBLAS handles and workspaces per stream (csrc/cuda/gemm.cu) ------------------------------
# On a GPU the GEMMs that one thread queues on two streams run at the same time: they must never
# share a cuBLAS workspace. The emulation runs everything in order, but its cuBLAS keeps each
# handle's stream and workspace as cuBLAS does and logs them per GEMM (emulation/gemm_log.h).
# Stream handles here are made-up addresses: the emulation never dereferences them.

def _workspaces_by_stream(log, streams):
    assert log, "no GEMM was logged"
    assert {stream for _, stream, _ in log} == set(streams), \
        "every GEMM runs on the stream that its call named"
    return {s: {ws for _, stream, ws in log if stream == s} for s in streams}


@pytest.mark.parametrize("algo", [STANDARD, PERSISTENT])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_gemms_on_two_streams_from_one_thread_never_share_a_workspace(mode, algo):
    streams = (0x51000 + 16 * algo, 0x52000 + 16 * algo)
    emu.start_gemm_log()
    try:
        calls = {s: layer_calls(mode, "float32", 5, 3, 4, 6, lengths=[5, 2, 4], algo=algo,
                                reverse=s == streams[1], stream=s, seed=_seed("streams", mode, s))
                 for s in streams}
        for c in calls.values():  # forward on the first stream, then on the second
            next(c)
        results = {s: _finish(c) for s, c in calls.items()}  # backward likewise
    finally:
        log = emu.take_gemm_log()
    for code, errors in results.values():
        assert code == algo
        _check(errors, "float32")
    used = _workspaces_by_stream(log, streams)
    shared = used[streams[0]] & used[streams[1]]
    assert not shared, f"GEMMs on two streams used the same cuBLAS workspace(s) {shared}"


def test_a_handle_left_by_an_exited_thread_serves_only_its_own_stream():
    # A thread's handles go back to a pool when it exits, while their GEMMs may still run on the
    # GPU: a later thread on another stream must not be handed one of them.
    streams = (0x61000, 0x62000)
    results = []
    emu.start_gemm_log()
    try:
        for k, s in enumerate(streams * 3):
            worker = threading.Thread(target=lambda s=s, k=k: results.append(run_layer(
                "gru", "float32", 4, 2, 3, 5, algo=STANDARD, stream=s, seed=_seed("pool", k))))
            worker.start()
            worker.join()
    finally:
        log = emu.take_gemm_log()
    assert len(results) == 6
    for _, errors in results:
        _check(errors, "float32")
    used = _workspaces_by_stream(log, streams)
    shared = used[streams[0]] & used[streams[1]]
    assert not shared, f"GEMMs on two streams used the same cuBLAS workspace(s) {shared}"


# ---- the NumPy-level API's GPU path (fastrnn/_device_arrays.py) over the emulated module --------
# "Device" arrays here are NumPy arrays presenting themselves as CUDA arrays (__dlpack_device__
# says CUDA device 0); fastrnn.cuda is pointed at the emulated module, so functional.layer_forward
# and layer_backward run their whole GPU path: argument checks, DLPack, allocation of fastrnn's
# own DeviceArray results, lengths upload, the algo plan, the kernels.

class FakeCudaArray:
    def __init__(self, array: np.ndarray):
        self.array = array

    def __dlpack__(self, stream=None, max_version=None, dl_device=None, copy=None):
        return self.array.__dlpack__()

    def __dlpack_device__(self):
        return (2, 0)


@pytest.fixture
def emulated_backend(monkeypatch):
    import fastrnn.cuda as fc
    monkeypatch.setattr(fc, "_module", emu)
    monkeypatch.setattr(fc, "_reason", None)
    fc._set_poison(True)
    yield fc
    fc._set_poison(False)


def _read(device_array, dtype=np.float32) -> np.ndarray:
    import ctypes
    n = int(np.prod(device_array.shape))
    raw = (ctypes.c_uint8 * (n * np.dtype(dtype).itemsize)).from_address(device_array.data_ptr)
    return np.frombuffer(raw, dtype).reshape(device_array.shape).copy()


@pytest.mark.parametrize("algo", ["standard", "persistent"])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_functional_api_on_dlpack_device_arrays(emulated_backend, mode, algo):
    import fastrnn
    rng = np.random.default_rng(_seed("dlpack", mode, algo))
    T, B, I, H, G = 5, 3, 4, 6, num_gates(mode)
    host = {name: (rng.standard_normal(shape) * 0.5).astype(np.float32) for name, shape in (
        ("x", (T, B, I)), ("h0", (B, H)), ("c0", (B, H)), ("w_ih", (G * H, I)),
        ("w_hh", (G * H, H)), ("b_ih", (G * H,)), ("b_hh", (G * H,)))}
    if mode != "lstm":
        del host["c0"]
    dev = {k: FakeCudaArray(v) for k, v in host.items()}
    lengths = [5, 2, 4]
    y, h_n, c_n, state = fastrnn.functional.layer_forward(
        mode, dev["x"], dev["h0"], dev.get("c0"), dev["w_ih"], dev["w_hh"], dev["b_ih"],
        dev["b_hh"], lengths=lengths, reverse=True, algo=algo)
    assert type(y).__name__ == "DeviceArray" and y.shape == (T, B, H)
    d = {k: v.astype(np.float64) for k, v in host.items()}
    ry, rh, rc, saved = reference.layer_forward(
        mode, d["x"], d["h0"], d.get("c0"), d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"],
        lengths=np.array(lengths), reverse=True)
    errors = {"y": _rel(_read(y), ry), "h_n": _rel(_read(h_n), rh)}
    if mode == "lstm":
        errors["c_n"] = _rel(_read(c_n), rc)
    dy = (rng.standard_normal((T, B, H)) * 0.5).astype(np.float32)
    grads = fastrnn.functional.layer_backward(state, FakeCudaArray(dy))
    ref_grads = reference.layer_backward(saved, dy.astype(np.float64))
    for k in ("input", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        if ref_grads[k] is not None:
            errors["d" + k] = _rel(_read(grads[k]), ref_grads[k])
    _check(errors, "float32")


def test_functional_api_device_argument_errors(emulated_backend):
    import fastrnn
    rng = np.random.default_rng(3)

    def arr(*shape, dtype=np.float32):
        return FakeCudaArray(rng.standard_normal(shape).astype(dtype))

    T, B, I, H = 4, 2, 3, 5
    good = dict(x=arr(T, B, I), h0=arr(B, H), c0=None, weight_ih=arr(3 * H, I),
                weight_hh=arr(3 * H, H), bias_ih=arr(3 * H), bias_hh=arr(3 * H))

    def call(**changes):
        kw = {**good, **changes}
        return fastrnn.functional.layer_forward(
            "gru", kw["x"], kw["h0"], kw["c0"], kw["weight_ih"], kw["weight_hh"],
            kw["bias_ih"], kw["bias_hh"], **{k: v for k, v in changes.items() if k not in good})

    with pytest.raises(ValueError, match="weight_ih"):
        call(weight_ih=arr(3 * H, I + 1))
    with pytest.raises(ValueError, match="h0"):
        call(h0=arr(B + 1, H))
    with pytest.raises(fastrnn.DtypeError, match="bias_hh"):
        call(bias_hh=arr(3 * H, dtype=np.float64))
    with pytest.raises(TypeError, match="h0"):
        call(h0=np.zeros((B, H), np.float32))  # host memory next to device arrays
    with pytest.raises(fastrnn.LengthsError, match="lengths"):
        call(lengths=[T + 1, 1])
    with pytest.raises(ValueError, match="algo"):
        call(algo="fastest")
    with pytest.raises(ValueError, match="c0"):
        call(c0=arr(B, H))


@pytest.mark.parametrize("where", ["host", "device"])
@pytest.mark.parametrize("algo", ["standard", "persistent"])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_functional_api_resets_on_device_arrays(emulated_backend, mode, algo, where):
    # resets as a host bool array (uploaded) or a device one (used in place), kept for backward
    from fastrnn import functional
    rng = np.random.default_rng(_seed("dlpack resets", mode, algo, where))
    T, B, I, H, G = 6, 4, 4, 5, num_gates(mode)
    host = {name: (rng.standard_normal(shape) * 0.5).astype(np.float32) for name, shape in (
        ("x", (T, B, I)), ("h0", (B, H)), ("c0", (B, H)), ("weight_ih", (G * H, I)),
        ("weight_hh", (G * H, H)), ("bias_ih", (G * H,)), ("bias_hh", (G * H,)))}
    if mode != "lstm":
        host["c0"] = None
    dev = {k: None if v is None else FakeCudaArray(v) for k, v in host.items()}
    lengths = [6, 2, 5, 6]
    resets = _reset_pattern(T, B, lengths)
    given = resets if where == "host" else FakeCudaArray(resets.copy())
    for reverse in (False, True):
        y, h_n, c_n, state = functional.layer_forward(
            mode, dev["x"], dev["h0"], dev["c0"], dev["weight_ih"], dev["weight_hh"],
            dev["bias_ih"], dev["bias_hh"], weight_hr=None, lengths=lengths, resets=given,
            reverse=reverse, training=True, algo=algo)
        d = {k: None if v is None else v.astype(np.float64) for k, v in host.items()}
        d["weight_hr"] = None
        ry, rh, rc, ref_backward = reference_layer(mode, d, lengths=np.array(lengths),
                                                   resets=resets, reverse=reverse)
        errors = {"y": _rel(_read(y), ry), "h_n": _rel(_read(h_n), rh)}
        if mode == "lstm":
            errors["c_n"] = _rel(_read(c_n), rc)
        dy = (rng.standard_normal((T, B, H)) * 0.5).astype(np.float32)
        grads = functional.layer_backward(state, FakeCudaArray(dy))
        ref_grads = ref_backward(dy.astype(np.float64), None, None)
        for k in ("input", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            if ref_grads[k] is not None:
                errors["d" + k] = _rel(_read(grads[k]), ref_grads[k])
        _check(errors, "float32")


def test_functional_api_resets_errors_on_device_arrays(emulated_backend):
    import fastrnn
    rng = np.random.default_rng(4)
    T, B, I, H = 5, 3, 2, 4

    def arr(*shape):
        return FakeCudaArray(rng.standard_normal(shape).astype(np.float32))

    def call(resets):
        return fastrnn.functional.layer_forward(
            "gru", arr(T, B, I), arr(B, H), None, arr(3 * H, I), arr(3 * H, H), None, None,
            resets=resets, training=False, algo="standard")

    for bad in (np.zeros((B, T), bool), np.zeros(T, bool), FakeCudaArray(np.zeros((B, T), bool))):
        with pytest.raises(ValueError, match=r"resets: expected shape \(T, B\) = \(5, 3\)"):
            call(bad)
    for bad in (np.zeros((T, B), np.uint8), FakeCudaArray(np.zeros((T, B), np.uint8)),
                FakeCudaArray(np.zeros((T, B), np.float32))):
        with pytest.raises(fastrnn.DtypeError, match="resets: expected dtype bool"):
            call(bad)
    call(np.zeros((T, B), bool))  # and a good one runs


# ---- fastrnn.torch's CUDA path (torch.py: _cuda_forward / _cuda_backward) over the emulator ----
# CPU tensors stand in for CUDA tensors (host memory is the emulator's device memory): the
# module's layer calls are routed to its CUDA functions, which allocate with torch, pass the
# storage addresses and the stream to the kernels and hand back the gradients; the results are
# compared with torch.nn on the same CPU tensors. (Device checks and streams themselves need a
# GPU: tests/cuda/test_cuda.py.)

@pytest.fixture
def torch_on_emulated_cuda(emulated_backend, monkeypatch):
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft

    class DefaultStream:
        cuda_stream = 0

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: DefaultStream())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(ft, "_core_forward", ft._cuda_forward)
    monkeypatch.setattr(ft, "_core_backward", ft._cuda_backward)
    return torch, ft


@pytest.mark.parametrize("kind, algo", [
    (kind, algo) for kind in ("lstm-proj-bidirectional", "gru-packed", "rnn-relu-batch-first")
    for algo in ("standard", "persistent", "auto")
    if not (kind.startswith("lstm") and algo == "persistent")])  # no projection in persistent
def test_fastrnn_torch_cuda_path_matches_torch_nn(torch_on_emulated_cuda, kind, algo):
    torch, ft = torch_on_emulated_cuda
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch.manual_seed(_seed("torch", kind, algo))
    T, B, I, H = 5, 3, 4, 6
    if kind.startswith("lstm"):
        args = dict(input_size=I, hidden_size=H, num_layers=2, bidirectional=True, proj_size=3)
        ref, mine = torch.nn.LSTM(**args), ft.LSTM(**args, algo=algo)
    elif kind.startswith("gru"):
        args = dict(input_size=I, hidden_size=H, num_layers=2)
        ref, mine = torch.nn.GRU(**args), ft.GRU(**args, algo=algo)
    else:
        args = dict(input_size=I, hidden_size=H, nonlinearity="relu", batch_first=True)
        ref, mine = torch.nn.RNN(**args), ft.RNN(**args, algo=algo)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(B, T, I) if kind.endswith("batch-first") else torch.randn(T, B, I)

    def run(module):
        xi = x.clone().requires_grad_(True)
        inp = xi
        if kind == "gru-packed":
            inp = pack_padded_sequence(xi, torch.tensor([5, 2, 4]), enforce_sorted=False)
        out, hidden = module(inp)
        if kind == "gru-packed":
            out = pad_packed_sequence(out)[0]
        states = hidden if isinstance(hidden, tuple) else (hidden,)
        loss = (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum() + \
            sum((s * s).sum() for s in states)
        loss.backward()
        return [out.detach(), *[s.detach() for s in states], xi.grad] + \
            [p.grad for p in module.parameters()]

    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.FallbackWarning)  # it must run the kernels
        got = run(mine)
    want = run(ref)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        err = _rel(g.double().numpy(), w.double().numpy())
        assert err <= 1e-5, f"result {i}: relative error {err}"


@pytest.mark.parametrize("kind, algo", [("lstm-bidirectional", "standard"),
                                        ("gru-bidirectional", "persistent"),
                                        ("rnn-tanh-batch-first", "auto")])
def test_fastrnn_torch_cuda_path_with_resets_matches_its_cpu_path(emulated_backend, monkeypatch,
                                                                   kind, algo):
    # The module's resets reach the kernels (fastrnn.torch's _cuda_forward/_cuda_backward): the
    # same module, inputs and mask through the emulated CUDA path and through the CPU core.
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft
    torch.manual_seed(_seed("torch resets", kind, algo))
    T, B, I, H = 6, 3, 4, 5
    batch_first = kind.endswith("batch-first")
    if kind.startswith("lstm"):
        module = ft.LSTM(I, H, num_layers=2, bidirectional=True, algo=algo)
    elif kind.startswith("gru"):
        module = ft.GRU(I, H, num_layers=2, bidirectional=True, algo=algo)
    else:
        module = ft.RNN(I, H, batch_first=True, algo=algo)
    x = torch.randn(B, T, I) if batch_first else torch.randn(T, B, I)
    resets = torch.rand(T, B) < 0.3
    resets[0, 0] = True
    resets[2:4, 1] = True
    if batch_first:
        resets = resets.T.contiguous()

    def run():
        module.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        out, hidden = module(xi, resets=resets)
        states = hidden if isinstance(hidden, tuple) else (hidden,)
        loss = (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum() + \
            sum((s * s).sum() for s in states)
        loss.backward()
        return [out.detach(), *[s.detach() for s in states], xi.grad] + \
            [p.grad for p in module.parameters()]

    want = run()  # the CPU core

    class DefaultStream:
        cuda_stream = 0

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: DefaultStream())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(ft, "_core_forward", ft._cuda_forward)
    monkeypatch.setattr(ft, "_core_backward", ft._cuda_backward)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.FallbackWarning)  # it must run the kernels
        got = run()
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        err = _rel(g.double().numpy(), w.double().numpy())
        assert err <= 1e-5, f"result {i}: relative error {err}"
