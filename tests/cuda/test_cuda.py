"""fastrnn's CUDA backend: the extension ``fastrnn._cuda``, ``fastrnn.cuda``, the device-array path
of ``fastrnn.functional`` and ``fastrnn.torch`` on CUDA tensors.

Two kinds of test live here.

GPU tests, marked ``cuda`` (``pytest -m cuda`` runs only them). They need an NVIDIA GPU,
fastrnn's CUDA backend and PyTorch with CUDA, and skip with one reason where
``fastrnn.cuda_available()`` is False:

- the functional API on torch CUDA tensors against the float64 NumPy reference
  (``fastrnn.reference``) on the very same numbers (inputs rounded to the tested dtype first):
  every cell, dtype, direction, lengths, algo, bias or none, LSTM projection, awkward sizes,
  every output and every gradient;
- poisoned buffers (``fastrnn.cuda._set_poison``): every buffer fastrnn allocates is filled
  with NaN bytes first, so an element a kernel forgets to write, or scratch read before it is
  written, shows;
- ``fastrnn.torch`` modules on CUDA against ``torch.nn`` twins with the same weights (stacks,
  bidirection, batch_first, projection, PackedSequence, initial states), no fallback, the
  float64 fallback, a non-default stream, torch.compile;
- the DLPack path (arrays that only speak ``__dlpack__``; CuPy when installed), and errors.

CPU tests (unmarked), for machines without a GPU (CI): the build contains the backend when it
should, ``import fastrnn`` does not load it, its size arithmetic, and clean errors without a
device.

Every GPU comparison goes through :func:`assert_rel_close`: the relative error
``||actual - expected||_2 / ||expected||_2`` over a whole array, printed before it is asserted,
bounded by the one table :data:`TOLERANCES`; a NaN or an infinity never passes.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
import zlib

import numpy as np
import pytest

import fastrnn
from fastrnn import functional, reference
from conftest import random_lengths

try:
    import torch
except ImportError:  # the CPU tests below run without torch; the GPU tests need it
    torch = None

# ---------------------------------------------------------------------------------------------
# Tolerances: bounds on ||actual - expected||_2 / ||expected||_2 over one whole array, keyed by
# the dtype the GPU computed in; "output" for y, h_n, c_n, "grad" for every gradient.
#
# The expected values are float64 computed from exactly the numbers the GPU saw (inputs, weights
# and output gradients rounded to the dtype first), so the difference is the GPU's own rounding:
# - float32: GEMMs in float32 (TF32 off), pointwise math in float32 with accurate expf/tanhf;
#   expect 1e-7..1e-6.
# - tf32 (only where a test turns torch's TF32 switch on): the cuBLAS GEMMs round their inputs
#   to 10-bit mantissas (2^-11); an emulation of that on the tested layers gave up to 1e-3 for
#   outputs and 2e-3 for gradients.
# - float16 (unit roundoff 2^-11 = 4.9e-4) and bfloat16 (2^-8 = 3.9e-3): the pointwise math is
#   float32, but the state h is stored in the dtype every step and the error of each step is
#   carried through the next ones; the pre-activation gradients are stored in the dtype too.
#   A CPU emulation of exactly these roundings, run through this file's tests (same seeds,
#   sizes and modules), stayed within 0.35x of these bounds.
# - float64: torch.nn's own float64 implementation against itself (the fallback test).
# A wrong gate, sign, step, index or a missed element gives 1e-1 .. 1.
# ---------------------------------------------------------------------------------------------
TOLERANCES = {
    "float32": {"output": 1e-5, "grad": 1e-4},
    "tf32": {"output": 5e-3, "grad": 1e-2},
    "float16": {"output": 5e-3, "grad": 1e-2},
    "bfloat16": {"output": 1e-2, "grad": 2e-2},
    "float64": {"output": 1e-10, "grad": 1e-10},
}

MODES = ("rnn_tanh", "rnn_relu", "lstm", "gru")
DTYPES = ("float32", "float16", "bfloat16")
ALGOS = ("standard", "persistent", "auto")
GRAD_NAMES = ("input", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
CELL_CODES = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3}
DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
PERSISTENT_MAX_BATCH = 16  # fastrnn_cuda.h kPersistentMaxBatch


def _seed(*key) -> int:
    """A seed that depends on the test case only (stable across runs and processes)."""
    return zlib.crc32(repr(key).encode())


# ---------------------------------------------------------------------------------------------
# Which tests can run here
# ---------------------------------------------------------------------------------------------

def _gpu_skip_reason():
    """None where the GPU tests can run, else the one reason they skip."""
    if not fastrnn.cuda_available():
        return (f"needs an NVIDIA GPU and fastrnn's CUDA backend (fastrnn.cuda_available() is "
                f"False: {fastrnn.cuda.unavailable_reason()})")
    if torch is None:
        return "the GPU tests drive fastrnn with torch CUDA tensors, and torch is not installed"
    if not torch.cuda.is_available():
        return "torch cannot use the GPU (a CPU-only build of torch?)"
    return None


_GPU_SKIP = _gpu_skip_reason()
_HAS_GPU = fastrnn.cuda_available()
if _GPU_SKIP is None:
    import fastrnn.torch  # noqa: F401  (the module tests; on the CPU only where a test needs it)


def gpu(test):
    """A GPU test: marked ``cuda``, skipped with one reason where no GPU can run it (by the
    autouse fixture below, so that pytest's summary shows one line for all of them)."""
    return pytest.mark.cuda(test)


no_gpu = pytest.mark.skipif(_HAS_GPU, reason="checks how fastrnn behaves on a machine without a "
                                             "GPU, and this one has one")

if torch is not None:
    TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16,
                    "bfloat16": torch.bfloat16, "float64": torch.float64}


def _tf32_flags():
    """torch's TF32 switches, legacy (allow_tf32) and new (fp32_precision, torch >= 2.9, also
    per cuDNN operation)."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    objs = [matmul, cudnn] + ([cudnn.rnn] if hasattr(cudnn, "rnn") else [])
    return {(obj, name): getattr(obj, name)
            for obj in objs for name in ("allow_tf32", "fp32_precision") if hasattr(obj, name)}


def _restore_tf32(saved) -> None:
    # legacy switches first: setting them also moves fp32_precision, which comes back after
    for (obj, name), value in saved.items():
        if name == "allow_tf32":
            setattr(obj, name, value)
    for (obj, name), value in saved.items():
        if name != "allow_tf32":
            setattr(obj, name, value)


@pytest.fixture(autouse=True)
def _true_float32(request):
    """GPU tests compute true float32: TF32 off in torch.nn (cuDNN, matmul) and therefore in
    fastrnn's float32 GEMMs on torch tensors, which follow torch's matmul switch. Restored
    after. Skips the GPU tests where no GPU can run them."""
    if request.node.get_closest_marker("cuda") is not None and _GPU_SKIP is not None:
        pytest.skip(_GPU_SKIP)
    if request.node.get_closest_marker("cuda") is None or torch is None:
        yield
        return
    saved = _tf32_flags()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if hasattr(torch.backends.cudnn, "rnn") and hasattr(torch.backends.cudnn.rnn,
                                                         "fp32_precision"):
        torch.backends.cudnn.rnn.fp32_precision = "ieee"  # torch.nn's recurrent layers
    try:
        yield
    finally:
        _restore_tf32(saved)


@pytest.fixture
def tf32_on():
    """torch's TF32 switch for float32 matrix products on (restored after)."""
    saved = _tf32_flags()
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        _restore_tf32(saved)


@pytest.fixture
def poison():
    """Every buffer fastrnn allocates for a CUDA call is filled with 0xFF bytes (NaN) first."""
    fastrnn.cuda._set_poison(True)
    try:
        yield
    finally:
        fastrnn.cuda._set_poison(False)


# ---------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------

def _host64(a):
    """A float64 NumPy copy of a torch tensor, a CuPy array, any DLPack array or a NumPy array."""
    if a is None:
        return None
    if isinstance(a, np.ndarray):
        return a.astype(np.float64)
    if torch is not None and isinstance(a, torch.Tensor):
        return a.detach().to(torch.float64).cpu().numpy()
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy
        return cupy.asnumpy(a).astype(np.float64)
    return torch.from_dlpack(a).to(torch.float64).cpu().numpy()


def assert_rel_close(actual, expected, dtype: str, kind: str, what: str) -> None:
    """``actual`` (computed in ``dtype``) matches ``expected`` (float64) within
    ``TOLERANCES[dtype][kind]`` in relative error over the whole array; every element of
    ``actual`` finite. Prints the relative error and the largest difference first. ``None`` must
    match ``None``."""
    tol = TOLERANCES[dtype][kind]
    if actual is None or expected is None:
        print(f"{what}: actual {'None' if actual is None else 'array'}, expected "
              f"{'None' if expected is None else 'array'}")
        assert actual is None and expected is None, f"{what}: one of actual/expected is None"
        return
    a, e = _host64(actual), _host64(expected)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    assert np.all(np.isfinite(e)), f"{what}: the expected values are not all finite"
    finite = np.isfinite(a)
    diff = np.abs(np.where(finite, a, 0.0) - e)
    num = float(np.linalg.norm(diff)) if finite.all() else float("inf")
    den = float(np.linalg.norm(e))
    rel = num / den if den > 0 else (0.0 if num == 0 else float("inf"))
    max_abs = float(diff.max()) if diff.size else 0.0
    print(f"{what} [{dtype}]: relative error {rel:.3e} (tolerance {tol:.0e}), largest abs diff "
          f"{max_abs:.3e}, ||expected|| {den:.3e}")
    if not finite.all():
        idx = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise AssertionError(f"{what}: {int((~finite).sum())} of {a.size} elements are not "
                             f"finite, the first at {idx}: {a[idx]!r}")
    assert rel <= tol, (f"{what}: relative error {rel:.3e} > {tol:.0e} (largest abs diff "
                        f"{max_abs:.3e}, ||expected|| {den:.3e})")


# ---------------------------------------------------------------------------------------------
# Layer-level helpers: random inputs on the GPU, the same numbers in float64 for the reference
# ---------------------------------------------------------------------------------------------

def _host_inputs(mode, T, B, I, H, *, P=0, bias=True, seed=0, scale=2.0):
    """Random float64 arguments of one layer call (never zeros): x standard normal, h0/c0 normal
    with std 0.5, weights uniform in ``scale`` times PyTorch's init range +-1/sqrt(H), biases and
    the projection in that range."""
    rng = np.random.default_rng(seed)
    G, R, k = GATES[mode], P or H, 1.0 / np.sqrt(H)
    return {
        "x": rng.standard_normal((T, B, I)),
        "h0": 0.5 * rng.standard_normal((B, R)),
        "c0": 0.5 * rng.standard_normal((B, H)) if mode == "lstm" else None,
        "weight_ih": rng.uniform(-scale * k, scale * k, (G * H, I)),
        "weight_hh": rng.uniform(-scale * k, scale * k, (G * H, R)),
        "bias_ih": rng.uniform(-k, k, G * H) if bias else None,
        "bias_hh": rng.uniform(-k, k, G * H) if bias else None,
        "weight_hr": rng.uniform(-k, k, (P, H)) if P else None,
    }


def _to_device(v, dtype: str):
    if v is None:
        return None
    return torch.from_numpy(np.ascontiguousarray(v)).to(device="cuda",
                                                        dtype=TORCH_DTYPES[dtype])


def _scale_for(dtype: str) -> float:
    # float32 drives the gates hard (2x PyTorch's init range). In half precision the state is
    # rounded every step and carried through the recurrence with its gain: PyTorch's own range
    # keeps that gain below 1, so the tolerance measures the kernels, not the conditioning.
    return 2.0 if dtype == "float32" else 1.0


def _lengths(kind: str, T: int, B: int, seed: int):
    if kind == "none":
        return None
    return random_lengths(np.random.default_rng(seed + 7), T, B)  # unsorted, has 1 and T


def _gpu_forward(mode, d, *, lengths, reverse, algo, training=True):
    return functional.layer_forward(mode, d["x"], d["h0"], d["c0"], d["weight_ih"],
                                     d["weight_hh"], d["bias_ih"], d["bias_hh"],
                                     weight_hr=d["weight_hr"], lengths=lengths, reverse=reverse,
                                     training=training, algo=algo)


def _ref_forward(mode, a, *, lengths, reverse, training=True):
    return reference.layer_forward(mode, a["x"], a["h0"], a["c0"], a["weight_ih"],
                                   a["weight_hh"], a["bias_ih"], a["bias_hh"],
                                   weight_hr=a["weight_hr"], lengths=lengths, reverse=reverse,
                                   training=training)


def _align_relu_masks(mode, ref_state, y_gpu) -> None:
    """Make the reference's relu derivative use the GPU's active set.

    relu' jumps at 0: where a pre-activation lies within rounding of 0 the GPU and the float64
    reference may fall on different sides, and the whole gradient of that element flips (in
    float16/bfloat16 a fraction of a percent of all elements, a relative gradient error of
    several percent). Both sides agree on the forward value there (about 0); the backward is
    compared on the GPU's side: the reference's relu backward reads only ``h_new <= 0`` from its
    saved ``h_new`` (reference._rnn_relu_backward), replaced here by the GPU's y (= h_new at
    every valid step; padded steps are masked by the reference itself).
    """
    if mode != "rnn_relu":
        return
    y = _host64(y_gpu)
    assert len(ref_state.caches) == y.shape[0]
    for t in range(y.shape[0]):
        ref_state.caches[t] = np.where(y[t] > 0, 1.0, 0.0)


def _expected_plan_algo(algo, B, P):
    """0 standard, 1 persistent. Every size tested here fits the persistent kernel's shared
    memory, so auto picks it exactly when batch <= 16 and there is no projection."""
    if algo == "standard":
        return 0
    return 1 if B <= PERSISTENT_MAX_BATCH and P == 0 else 0


def _check_plan(mode, dtype, T, B, I, H, P, algo):
    device = torch.cuda.current_device()
    plan = fastrnn.cuda.plan(CELL_CODES[mode], DTYPE_CODES[dtype], T, B, I, H, P, algo, device,
                             True)
    assert plan.algo == _expected_plan_algo(algo, B, P), (algo, plan)
    assert plan.reserve_bytes > 0 and plan.forward_scratch > 0 and plan.backward_scratch > 0


def _check_outputs(label, dtype, mode, got, want, T, B, H, R, lengths):
    y, h_n, c_n = got
    tdt = TORCH_DTYPES[dtype]
    for name, t, shape in (("y", y, (T, B, R)), ("h_n", h_n, (B, R)),
                           ("c_n", c_n, (B, H) if mode == "lstm" else None)):
        if shape is None:
            assert t is None, f"{label}: {name} should be None for {mode}"
            continue
        assert isinstance(t, torch.Tensor) and t.is_cuda, (name, type(t))
        assert t.dtype == tdt and tuple(t.shape) == shape, (name, t.dtype, tuple(t.shape))
    for name, g, w in zip(("y", "h_n", "c_n"), got, want):
        assert_rel_close(g, w, dtype, "output", f"{label} {name}")
    if lengths is not None:
        padded = np.arange(T)[:, None] >= lengths[None, :]
        y64 = _host64(y)
        assert np.all(y64[padded] == 0), f"{label}: outputs at padded steps are not exactly 0"


def _run_layer(mode, dtype, size, *, P=0, bias=True, reverse=False, lengths_kind="mixed",
               algo="auto", seed=0, final_grads=True, check_training_free=False):
    """fastrnn on the GPU (in ``dtype``, torch CUDA tensors) and the reference (float64, on the
    same rounded numbers): every output and every gradient compared. Returns what it ran."""
    T, B, I, H = size
    R = P or H
    host = _host_inputs(mode, T, B, I, H, P=P, bias=bias, seed=seed, scale=_scale_for(dtype))
    d = {k: _to_device(v, dtype) for k, v in host.items()}
    a = {k: _host64(v) for k, v in d.items()}  # exactly what the GPU sees
    lengths = _lengths(lengths_kind, T, B, seed)
    label = (f"{mode} {dtype} {algo} T={T} B={B} I={I} H={H} P={P} rev={reverse} "
             f"{lengths_kind} bias={bias}")
    _check_plan(mode, dtype, T, B, I, H, P, algo)

    y, h_n, c_n, state = _gpu_forward(mode, d, lengths=lengths, reverse=reverse, algo=algo)
    ry, rh_n, rc_n, rstate = _ref_forward(mode, a, lengths=lengths, reverse=reverse)
    assert state is not None
    _check_outputs(label, dtype, mode, (y, h_n, c_n), (ry, rh_n, rc_n), T, B, H, R, lengths)

    if check_training_free:  # inference mode: the same results, nothing saved
        iy, ih_n, ic_n, istate = _gpu_forward(mode, d, lengths=lengths, reverse=reverse,
                                              algo=algo, training=False)
        assert istate is None
        _check_outputs(label + " inference", dtype, mode, (iy, ih_n, ic_n), (ry, rh_n, rc_n),
                       T, B, H, R, lengths)

    rng = np.random.default_rng(seed + 11)
    gh = {"dy": rng.standard_normal((T, B, R)), "dh_n": rng.standard_normal((B, R)),
          "dc_n": rng.standard_normal((B, H)) if mode == "lstm" else None}
    if not final_grads:
        gh["dh_n"] = gh["dc_n"] = None
    gd = {k: _to_device(v, dtype) for k, v in gh.items()}
    g64 = {k: _host64(v) for k, v in gd.items()}
    _align_relu_masks(mode, rstate, y)
    g = functional.layer_backward(state, gd["dy"], gd["dh_n"], gd["dc_n"])
    rg = reference.layer_backward(rstate, g64["dy"], g64["dh_n"], g64["dc_n"])
    assert set(g) == set(GRAD_NAMES), sorted(g)
    for name in GRAD_NAMES:
        if g[name] is not None:
            src = d["x" if name == "input" else name]
            assert isinstance(g[name], torch.Tensor) and g[name].is_cuda, name
            assert g[name].dtype == TORCH_DTYPES[dtype] and g[name].shape == src.shape, name
        assert_rel_close(g[name], rg[name], dtype, "grad", f"{label} d{name}")
    return {"inputs": d, "lengths": lengths, "outputs": (y, h_n, c_n), "grads": g,
            "output_grads": gd}


# ---------------------------------------------------------------------------------------------
# GPU: the functional API against the float64 reference
# ---------------------------------------------------------------------------------------------

BASE_SIZE = (5, 3, 7, 13)  # T, B, I, H: small primes


@gpu
@pytest.mark.parametrize("lengths_kind", ["none", "mixed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_layer_matches_reference(mode, dtype, algo, reverse, lengths_kind):
    _run_layer(mode, dtype, BASE_SIZE, reverse=reverse, lengths_kind=lengths_kind, algo=algo,
               seed=_seed(mode, dtype, algo, reverse, lengths_kind))


# (T, B, I, H): one step, one sequence, small hidden sizes, the persistent kernel's two batch
# instantiations (<= 4, <= 16) and a batch past it, a longer sequence, and a larger layer.
SIZES = [
    (1, 1, 7, 13),
    (1, 4, 3, 5),
    (6, 1, 3, 7),
    (6, 1, 2, 3),
    (9, 16, 5, 8),
    (4, 17, 5, 9),
    (40, 2, 3, 7),
    (20, 16, 64, 256),
]
# The 3-unit single sequence in float32 only: in half precision its few, partly cancelling
# elements (a handful of relu units near 0, say) make a relative error of the whole array
# measure that cancellation, not the kernels (an emulation of the GPU's roundings put it at up
# to 5x the tolerance there, and under half of it at every other size here).
SIZE_CASES = [(dt, s) for dt in DTYPES for s in SIZES if s[3] > 3 or dt == "float32"]


@gpu
@pytest.mark.parametrize("algo", ["standard", "persistent"])
@pytest.mark.parametrize("dtype,size", SIZE_CASES,
                         ids=["%s-T%dB%dI%dH%d" % ((dt,) + s) for dt, s in SIZE_CASES])
@pytest.mark.parametrize("mode", MODES)
def test_layer_sizes(mode, dtype, size, algo):
    T, B, I, H = size
    reverse = SIZES.index(size) % 2 == 1
    if algo == "persistent" and B > PERSISTENT_MAX_BATCH:
        d = {k: _to_device(v, dtype) for k, v in _host_inputs(mode, T, B, I, H).items()}
        with pytest.raises(ValueError, match="algo"):
            _gpu_forward(mode, d, lengths=None, reverse=reverse, algo=algo)
        return
    _run_layer(mode, dtype, size, reverse=reverse, lengths_kind="mixed", algo=algo,
               seed=_seed(mode, dtype, size, algo))


@gpu
@pytest.mark.parametrize("algo", ["standard", "persistent"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_layer_without_bias(mode, dtype, algo):
    _run_layer(mode, dtype, (7, 5, 4, 9), bias=False, reverse=True, lengths_kind="mixed",
               algo=algo, seed=_seed("nobias", mode, dtype, algo))


@gpu
@pytest.mark.parametrize("lengths_kind", ["none", "mixed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("algo", ["standard", "auto"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_projection(dtype, algo, reverse, lengths_kind):
    _run_layer("lstm", dtype, (6, 4, 5, 11), P=4, reverse=reverse, lengths_kind=lengths_kind,
               algo=algo, seed=_seed("proj", dtype, algo, reverse, lengths_kind))


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_projection_rejects_persistent(dtype):
    d = {k: _to_device(v, dtype) for k, v in _host_inputs("lstm", 3, 2, 4, 6, P=3).items()}
    with pytest.raises(ValueError, match="algo"):
        _gpu_forward("lstm", d, lengths=None, reverse=False, algo="persistent")
    with pytest.raises(ValueError, match="algo"):
        fastrnn.cuda.plan(CELL_CODES["lstm"], DTYPE_CODES[dtype], 3, 2, 4, 6, 3, "persistent",
                          torch.cuda.current_device(), True)


@gpu
@pytest.mark.parametrize("algo", ["standard", "persistent"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_inference_mode(mode, dtype, algo):
    """training=False: no state, the same outputs (inference keeps its state in scratch)."""
    _run_layer(mode, dtype, (8, 4, 5, 10), reverse=False, lengths_kind="mixed", algo=algo,
               seed=_seed("inference", mode, dtype, algo), check_training_free=True)


@gpu
@pytest.mark.parametrize("algo", ["standard", "persistent"])
@pytest.mark.parametrize("mode", MODES)
def test_missing_final_state_gradients(mode, algo):
    """dh_n = dc_n = None mean zeros (in both implementations), and the state can be used for
    backward twice."""
    run = _run_layer(mode, "float32", (6, 3, 4, 7), reverse=True, lengths_kind="mixed",
                     algo=algo, seed=_seed("nofinal", mode, algo), final_grads=False)
    *_, state = _gpu_forward(mode, run["inputs"], lengths=run["lengths"], reverse=True,
                             algo=algo)
    zeros = torch.zeros_like(run["inputs"]["h0"])
    zeros_c = torch.zeros_like(run["inputs"]["c0"]) if mode == "lstm" else None
    g1 = functional.layer_backward(state, run["output_grads"]["dy"], zeros, zeros_c)
    g2 = functional.layer_backward(state, run["output_grads"]["dy"], zeros, zeros_c)
    for name in GRAD_NAMES:
        expected = _host64(run["grads"][name])
        assert_rel_close(g1[name], expected, "float32", "grad", f"{mode} zeros vs None d{name}")
        assert_rel_close(g2[name], expected, "float32", "grad", f"{mode} second backward d{name}")


@gpu
@pytest.mark.parametrize("algo", ["standard", "persistent"])
@pytest.mark.parametrize("mode", MODES)
def test_tf32_follows_torch(mode, algo, tf32_on):
    """With torch's TF32 switch on, float32 GEMMs may use TF32: still close to the reference."""
    _run_layer(mode, "float32", BASE_SIZE, reverse=True, lengths_kind="mixed", algo=algo,
               seed=_seed("tf32", mode, algo))


@gpu
def test_plan_algos():
    """``plan`` resolves the algo: persistent runs where asked and it fits, auto picks it where
    it fits, and a layer whose W_hh cannot stay on chip is refused by persistent and runs
    standard under auto."""
    device = torch.cuda.current_device()
    lstm, f32 = CELL_CODES["lstm"], DTYPE_CODES["float32"]
    for cell in CELL_CODES.values():
        for dtype in DTYPE_CODES.values():
            assert fastrnn.cuda.plan(cell, dtype, 5, 3, 7, 13, 0, "persistent", device,
                                     True).algo == 1
            assert fastrnn.cuda.plan(cell, dtype, 5, 3, 7, 13, 0, "auto", device, True).algo == 1
            assert fastrnn.cuda.plan(cell, dtype, 5, 3, 7, 13, 0, "standard", device,
                                     True).algo == 0
            assert fastrnn.cuda.plan(cell, dtype, 5, 17, 7, 13, 0, "auto", device,
                                     True).algo == 0
    assert fastrnn.cuda.plan(lstm, f32, 5, 3, 7, 13, 5, "auto", device, True).algo == 0
    for B in (17, 64):
        with pytest.raises(ValueError, match="algo"):
            fastrnn.cuda.plan(lstm, f32, 5, B, 7, 13, 0, "persistent", device, True)
    # 4 gates x 4096 x 4096 float32 = 256 MiB of W_hh: no multiprocessor holds its share
    assert fastrnn.cuda.plan(lstm, f32, 2, 2, 8, 4096, 0, "auto", device, True).algo == 0
    with pytest.raises(ValueError, match="algo"):
        fastrnn.cuda.plan(lstm, f32, 2, 2, 8, 4096, 0, "persistent", device, True)
    with pytest.raises(ValueError, match="algo"):
        fastrnn.cuda.plan(lstm, f32, 2, 2, 8, 16, 0, "fast", device, True)
    # inference keeps nothing for backward
    assert fastrnn.cuda.plan(lstm, f32, 5, 3, 7, 13, 0, "auto", device, False).reserve_bytes == 0


@gpu
def test_device_queries():
    assert fastrnn.cuda.device_count() >= 1
    assert fastrnn.cuda.unavailable_reason() is None
    info = fastrnn.cuda.device_info(0)
    major, minor = info["compute_capability"]
    assert major >= 8 and info["multiprocessors"] > 0 and info["total_memory"] > 0, info
    assert info["name"] == torch.cuda.get_device_name(0)
    build = fastrnn.build_info()
    assert build["cuda"] and build["cuda_loadable"] and build["cuda_devices"] >= 1, build
    with pytest.raises(ValueError, match="device"):
        fastrnn.cuda.device_info(fastrnn.cuda.device_count())


# ---------------------------------------------------------------------------------------------
# GPU: poisoned buffers -- every output and gradient element is written
# ---------------------------------------------------------------------------------------------

def _all_finite(label, tensors):
    for name, t in tensors.items():
        if t is None:
            continue
        bad = int((~torch.isfinite(t)).sum())
        assert bad == 0, f"{label}: {bad} of {t.numel()} elements of {name} are not finite"


@gpu
@pytest.mark.parametrize("algo", ["standard", "persistent"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_poisoned_buffers_are_all_written(mode, dtype, algo, poison):
    assert fastrnn.cuda.poisoning()
    for reverse in (False, True):
        run = _run_layer(mode, dtype, (7, 5, 6, 9), reverse=reverse, lengths_kind="mixed",
                         algo=algo, seed=_seed("poison", mode, dtype, algo, reverse),
                         check_training_free=True)
        label = f"poisoned {mode} {dtype} {algo} rev={reverse}"
        _all_finite(label, dict(zip(("y", "h_n", "c_n"), run["outputs"])))
        _all_finite(label, run["grads"])
        # and the very same call without poison gives the same numbers
        fastrnn.cuda._set_poison(False)
        try:
            y, h_n, c_n, _ = _gpu_forward(mode, run["inputs"], lengths=run["lengths"],
                                          reverse=reverse, algo=algo)
        finally:
            fastrnn.cuda._set_poison(True)
        for name, clean, poisoned in zip(("y", "h_n", "c_n"), (y, h_n, c_n), run["outputs"]):
            assert_rel_close(poisoned, _host64(clean), dtype, "output",
                             f"{label} {name} poisoned vs clean")


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_poisoned_buffers_lstm_projection(dtype, poison):
    for reverse in (False, True):
        run = _run_layer("lstm", dtype, (6, 4, 5, 11), P=4, reverse=reverse,
                         lengths_kind="mixed", algo="standard",
                         seed=_seed("poison-proj", dtype, reverse), check_training_free=True)
        label = f"poisoned lstm proj {dtype} rev={reverse}"
        _all_finite(label, dict(zip(("y", "h_n", "c_n"), run["outputs"])))
        _all_finite(label, run["grads"])


# ---------------------------------------------------------------------------------------------
# GPU: the DLPack path
# ---------------------------------------------------------------------------------------------

class _DLPackOnly:
    """An array that speaks only DLPack (like a library fastrnn does not know)."""

    def __init__(self, tensor):
        self._tensor = tensor.detach()

    def __dlpack__(self, *args, **kwargs):
        return self._tensor.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._tensor.__dlpack_device__()


def _wrap(d):
    return {k: None if v is None else _DLPackOnly(v) for k, v in d.items()}


@gpu
@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dlpack_arrays_give_device_arrays(mode, dtype):
    from fastrnn import _cuda
    T, B, I, H = 6, 3, 5, 8
    run = _run_layer(mode, dtype, (T, B, I, H), reverse=True, lengths_kind="mixed", algo="auto",
                     seed=_seed("dlpack", mode, dtype))
    y, h_n, c_n, state = _gpu_forward(mode, _wrap(run["inputs"]), lengths=run["lengths"],
                                      reverse=True, algo="auto")
    for name, out, want in zip(("y", "h_n", "c_n"), (y, h_n, c_n), run["outputs"]):
        if want is None:
            assert out is None
            continue
        assert isinstance(out, _cuda.DeviceArray), (name, type(out))
        assert out.__dlpack_device__() == (2, torch.cuda.current_device())
        t = torch.from_dlpack(out)
        assert t.is_cuda and t.dtype == TORCH_DTYPES[dtype] and t.shape == want.shape
        assert_rel_close(t, _host64(want), dtype, "output", f"dlpack {name}")
    og = run["output_grads"]
    g = functional.layer_backward(state, _DLPackOnly(og["dy"]), _DLPackOnly(og["dh_n"]),
                                  _DLPackOnly(og["dc_n"]) if og["dc_n"] is not None else None)
    for name in GRAD_NAMES:
        want = run["grads"][name]
        if want is None:
            assert g[name] is None, name
            continue
        assert isinstance(g[name], _cuda.DeviceArray), (name, type(g[name]))
        t = torch.from_dlpack(g[name])
        assert t.dtype == TORCH_DTYPES[dtype] and t.shape == want.shape, name
        assert_rel_close(t, _host64(want), dtype, "grad", f"dlpack d{name}")


@gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cupy_arrays_give_cupy_arrays(dtype):
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (the CuPy path is tested "
                                              "only where it is)")
    mode, T, B, I, H = "lstm", 5, 3, 4, 6
    run = _run_layer(mode, dtype, (T, B, I, H), reverse=False, lengths_kind="mixed",
                     algo="auto", seed=_seed("cupy", dtype))
    c = {k: None if v is None else cupy.from_dlpack(v.detach())
         for k, v in run["inputs"].items()}
    torch.cuda.synchronize()
    y, h_n, c_n, state = _gpu_forward(mode, c, lengths=run["lengths"], reverse=False,
                                      algo="auto")
    for name, out, want in zip(("y", "h_n", "c_n"), (y, h_n, c_n), run["outputs"]):
        assert isinstance(out, cupy.ndarray), (name, type(out))
        assert_rel_close(cupy.asnumpy(out).astype(np.float64), _host64(want), dtype, "output",
                         f"cupy {name}")
    og = {k: None if v is None else cupy.from_dlpack(v) for k, v in run["output_grads"].items()}
    g = functional.layer_backward(state, og["dy"], og["dh_n"], og["dc_n"])
    cupy.cuda.get_current_stream().synchronize()
    for name in GRAD_NAMES:
        want = run["grads"][name]
        if want is None:
            assert g[name] is None
            continue
        assert isinstance(g[name], cupy.ndarray), (name, type(g[name]))
        assert_rel_close(cupy.asnumpy(g[name]).astype(np.float64), _host64(want), dtype, "grad",
                         f"cupy d{name}")


# ---------------------------------------------------------------------------------------------
# GPU: errors
# ---------------------------------------------------------------------------------------------

def _small(mode="lstm", dtype="float32", T=4, B=3, I=5, H=6):
    return {k: _to_device(v, dtype) for k, v in _host_inputs(mode, T, B, I, H, seed=1).items()}


def _call(mode, d, **kw):
    kw.setdefault("lengths", None)
    kw.setdefault("reverse", False)
    kw.setdefault("algo", "auto")
    return _gpu_forward(mode, d, **kw)


@gpu
def test_errors_mixed_devices():
    d = _small()
    for name in ("h0", "c0", "weight_ih", "weight_hh", "bias_hh"):
        bad = dict(d, **{name: d[name].cpu()})
        with pytest.raises(TypeError, match=name):
            _call("lstm", bad)
        bad = dict(d, **{name: d[name].cpu().numpy()})
        with pytest.raises(TypeError, match=name):
            _call("lstm", bad)
    if torch.cuda.device_count() >= 2:
        bad = dict(d, h0=d["h0"].to("cuda:1"))
        with pytest.raises(ValueError, match="h0"):
            _call("lstm", bad)


@gpu
def test_errors_dtypes():
    d = _small()
    for name in ("h0", "weight_hh", "bias_ih"):
        bad = dict(d, **{name: d[name].half()})
        with pytest.raises(fastrnn.DtypeError, match=name):
            _call("lstm", bad)
    with pytest.raises(fastrnn.DtypeError, match="x"):
        _call("lstm", {k: None if v is None else v.double() for k, v in d.items()})
    *_, state = _call("lstm", d)
    T, B, H = 4, 3, 6
    with pytest.raises(fastrnn.DtypeError, match="dy"):
        functional.layer_backward(state, torch.ones(T, B, H, device="cuda", dtype=torch.half))


@gpu
def test_errors_shapes():
    d = _small()
    T, B, I, H = 4, 3, 5, 6
    cases = {
        "h0": torch.ones(B + 1, H, device="cuda"),
        "c0": torch.ones(B, H + 1, device="cuda"),
        "weight_ih": torch.ones(4 * H, I + 1, device="cuda"),
        "weight_hh": torch.ones(4 * H + 1, H, device="cuda"),
        "bias_ih": torch.ones(4 * H - 1, device="cuda"),
        "x": torch.ones(T, B, device="cuda"),
    }
    for name, value in cases.items():
        with pytest.raises(ValueError, match=name):
            _call("lstm", dict(d, **{name: value}))
    with pytest.raises(ValueError, match="bias"):
        _call("lstm", dict(d, bias_hh=None))
    with pytest.raises(ValueError, match="c0"):
        _call("lstm", dict(d, c0=None))
    g = _small("gru")
    with pytest.raises(ValueError, match="c0"):
        _call("gru", dict(g, c0=torch.ones(B, H, device="cuda")))
    with pytest.raises(ValueError, match="weight_hr"):
        _call("gru", dict(g, weight_hr=torch.ones(3, H, device="cuda")))
    *_, state = _call("lstm", d)
    with pytest.raises(ValueError, match="dy"):
        functional.layer_backward(state, torch.ones(T, B + 1, H, device="cuda"))
    with pytest.raises(ValueError, match="dh_n"):
        functional.layer_backward(state, torch.ones(T, B, H, device="cuda"),
                                  torch.ones(B, H + 1, device="cuda"))
    *_, gstate = _call("gru", g)
    with pytest.raises(ValueError, match="dc_n"):
        functional.layer_backward(gstate, torch.ones(T, B, H, device="cuda"),
                                  torch.ones(B, H, device="cuda"),
                                  torch.ones(B, H, device="cuda"))
    with pytest.raises(TypeError, match="state"):
        functional.layer_backward(None, torch.ones(T, B, H, device="cuda"))


@gpu
def test_errors_algo_and_lengths():
    d = _small()
    T = 4
    for algo in ("bogus", "fast", "", "Standard"):
        with pytest.raises(ValueError, match="algo"):
            _call("lstm", d, algo=algo)
    for bad in ([0, 1, 2], [1, 2, T + 1], [-1, 2, 3]):
        with pytest.raises(fastrnn.LengthsError, match="lengths"):
            _call("lstm", d, lengths=np.array(bad, dtype=np.int64))
    with pytest.raises(fastrnn.LengthsError, match="lengths"):
        _call("lstm", d, lengths=np.array([1, 2], dtype=np.int64))
    with pytest.raises(fastrnn.LengthsError, match="lengths"):
        _call("lstm", d, lengths=np.array([1.0, 2.0, 3.0]))
    with pytest.raises(fastrnn.LengthsError, match="lengths"):
        _call("lstm", d, lengths=torch.tensor([1, 2, T + 1], device="cuda"))
    # lengths as a CUDA tensor, a CPU tensor or a list: the same results as NumPy lengths
    want = _call("lstm", d, lengths=np.array([2, T, 1]))
    for lengths in (torch.tensor([2, T, 1], device="cuda"), torch.tensor([2, T, 1]), [2, T, 1]):
        got = _call("lstm", d, lengths=lengths)
        for name, g, w in zip(("y", "h_n", "c_n"), got[:3], want[:3]):
            assert_rel_close(g, _host64(w), "float32", "output", f"lengths {type(lengths)} {name}")


@gpu
@pytest.mark.parametrize("algo", ["standard", "persistent"])
def test_non_contiguous_inputs(algo):
    """Strided torch tensors are made contiguous: the same results as contiguous copies."""
    mode, T, B, I, H = "gru", 5, 3, 4, 6
    d = _small(mode, T=T, B=B, I=I, H=H)
    strided = dict(d)
    strided["x"] = d["x"].transpose(0, 1).contiguous().transpose(0, 1)   # batch-first storage
    strided["weight_ih"] = d["weight_ih"].t().contiguous().t()
    strided["h0"] = torch.stack([d["h0"], d["h0"]], 2)[:, :, 0]           # every other element
    strided["bias_hh"] = torch.stack([d["bias_hh"], d["bias_hh"]], 1)[:, 1]
    assert not any(strided[k].is_contiguous() for k in ("x", "weight_ih", "h0", "bias_hh"))
    want = _call(mode, d, algo=algo)
    got = _call(mode, strided, algo=algo)
    for name, g, w in zip(("y", "h_n"), got[:2], want[:2]):
        assert_rel_close(g, _host64(w), "float32", "output", f"strided {name}")
    dy = torch.randn(B, T, H, device="cuda").transpose(0, 1)  # non-contiguous dy too
    gw = functional.layer_backward(want[3], dy.contiguous())
    gg = functional.layer_backward(got[3], dy)
    for name in GRAD_NAMES:
        assert_rel_close(gg[name], _host64(gw[name]), "float32", "grad", f"strided d{name}")


# ---------------------------------------------------------------------------------------------
# GPU: streams
# ---------------------------------------------------------------------------------------------

def _late_copy_on(stream, src):
    """``src`` copied into a NaN-filled tensor on ``stream`` after ~10 ms of GPU sleep: work on any
    other stream that does not wait for ``stream`` reads NaN."""
    with torch.cuda.stream(stream):
        out = torch.full_like(src, float("nan"))
        if hasattr(torch.cuda, "_sleep"):
            torch.cuda._sleep(20_000_000)
        out.copy_(src)
    return out


@gpu
@pytest.mark.parametrize("algo", ["standard", "persistent"])
def test_functional_runs_on_current_stream(algo):
    mode, T, B, I, H = "lstm", 12, 4, 16, 32
    host = _host_inputs(mode, T, B, I, H, seed=5)
    d = {k: _to_device(v, "float32") for k, v in host.items()}
    lengths = np.array([T, 3, 1, 7])
    dy = torch.randn(T, B, H, device="cuda")
    y0, h0, c0, s0 = _gpu_forward(mode, d, lengths=lengths, reverse=True, algo=algo)
    g0 = functional.layer_backward(s0, dy)
    torch.cuda.synchronize()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    ds = {k: None if v is None else _late_copy_on(side, v) for k, v in d.items()}
    dys = _late_copy_on(side, dy)
    with torch.cuda.stream(side):
        y1, h1, c1, s1 = _gpu_forward(mode, ds, lengths=lengths, reverse=True, algo=algo)
        g1 = functional.layer_backward(s1, dys)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    for name, a, b in zip(("y", "h_n", "c_n"), (y1, h1, c1), (y0, h0, c0)):
        assert_rel_close(a, _host64(b), "float32", "output", f"side stream {name}")
    for name in GRAD_NAMES:
        assert_rel_close(g1[name], _host64(g0[name]), "float32", "grad", f"side stream d{name}")


# ---------------------------------------------------------------------------------------------
# GPU: fastrnn.torch modules against torch.nn
# ---------------------------------------------------------------------------------------------

MODULE_T, MODULE_I, MODULE_H = 9, 6, 16

# cell, nonlinearity, bidirectional, batch_first, packed, proj_size, with hx, batch
MODULE_CONFIGS = [
    ("lstm", None, False, False, False, 0, True, 5),
    ("lstm", None, True, True, True, 0, True, 5),
    ("lstm", None, True, False, True, 4, True, 5),
    ("lstm", None, False, True, False, 3, False, 20),   # batch > 16: standard under auto
    ("gru", None, True, False, True, 0, True, 5),
    ("gru", None, False, True, False, 0, False, 3),
    ("gru", None, True, True, True, 0, True, 18),
    ("rnn", "tanh", True, True, True, 0, True, 4),
    ("rnn", "tanh", False, False, False, 0, True, 2),
    ("rnn", "relu", False, False, True, 0, True, 5),
]
# relu's derivative jumps at 0, so two half-precision implementations may disagree on a whole
# gradient element (see _align_relu_masks): relu is compared in float32 only.
MODULE_CASES = [(c, dt) for c in MODULE_CONFIGS for dt in DTYPES
                if not (c[1] == "relu" and dt != "float32")]


def _module_kwargs(cell, nonlinearity, bidirectional, batch_first, proj):
    kw = dict(num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
    if cell == "lstm":
        kw["proj_size"] = proj
    if cell == "rnn":
        kw["nonlinearity"] = nonlinearity
    return kw


def _module_case(config, dtype, algo="auto", seed=0):
    """fastrnn.torch module in dtype on CUDA, torch.nn twins (same dtype on CUDA; float64 on
    the CPU) with its very weights, and random inputs (float64, rounded through dtype)."""
    cell, nonlin, bidir, batch_first, packed, proj, with_hx, B = config
    kw = _module_kwargs(cell, nonlin, bidir, batch_first, proj)
    torch.manual_seed(seed)
    ours = getattr(fastrnn.torch, cell.upper())(MODULE_I, MODULE_H, algo=algo, **kw)
    ours = ours.to("cuda", TORCH_DTYPES[dtype])
    twin = getattr(torch.nn, cell.upper())(MODULE_I, MODULE_H, **kw)
    twin.load_state_dict(ours.state_dict())
    twin = twin.to("cuda", TORCH_DTYPES[dtype])
    exact = getattr(torch.nn, cell.upper())(MODULE_I, MODULE_H, **kw).double()
    exact.load_state_dict({k: v.double().cpu() for k, v in ours.state_dict().items()})

    rng = np.random.default_rng(seed)
    T, D, L = MODULE_T, 2 if bidir else 1, 2
    R = proj or MODULE_H
    shape = (B, T) if batch_first else (T, B)
    lengths = None
    if packed:
        lengths = rng.integers(1, T + 1, size=B)
        lengths[rng.permutation(B)[:2]] = (T, 1)
    host = {"x": rng.standard_normal(shape + (MODULE_I,)),
            "dy": rng.standard_normal(shape + (D * R,)),
            "dh": rng.standard_normal((L * D, B, R))}
    if cell == "lstm":
        host["dc"] = rng.standard_normal((L * D, B, MODULE_H))
    if with_hx:
        host["h0"] = 0.5 * rng.standard_normal((L * D, B, R))
        if cell == "lstm":
            host["c0"] = 0.5 * rng.standard_normal((L * D, B, MODULE_H))
    inputs = {k: torch.from_numpy(v).to("cuda", TORCH_DTYPES[dtype]) for k, v in host.items()}
    exact_inputs = {k: v.double().cpu() for k, v in inputs.items()}
    return ours, twin, exact, inputs, exact_inputs, lengths, config


def _run_module(module, inputs, lengths, config):
    """Forward and backward of loss = <y, dy> + <h_n, dh> (+ <c_n, dc>); returns outputs and
    every gradient (input, h0, c0, each parameter by name)."""
    cell, _, _, batch_first, _, _, with_hx, _ = config
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    module.zero_grad(set_to_none=True)
    x = inputs["x"].detach().clone().requires_grad_(True)
    hx = None
    if with_hx:
        hx = tuple(inputs[k].detach().clone().requires_grad_(True)
                   for k in (("h0", "c0") if cell == "lstm" else ("h0",)))
    arg = None if hx is None else (hx if cell == "lstm" else hx[0])
    if lengths is not None:
        packed = pack_padded_sequence(x, torch.from_numpy(lengths), batch_first=batch_first,
                                      enforce_sorted=False)
        out, state = module(packed, arg)
        y, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=MODULE_T)
    else:
        y, state = module(x, arg)
    h_n, c_n = state if cell == "lstm" else (state, None)
    loss = (y * inputs["dy"]).sum() + (h_n * inputs["dh"]).sum()
    if c_n is not None:
        loss = loss + (c_n * inputs["dc"]).sum()
    loss.backward()
    outputs = {"output": y, "h_n": h_n, "c_n": c_n}
    grads = {"input": x.grad}
    if hx is not None:
        grads.update(zip(("h0", "c0"), (h.grad for h in hx)))
    grads.update({name: p.grad for name, p in module.named_parameters()})
    return outputs, grads


def _compare_module(got, want, dtype, label):
    outputs, grads = got
    w_outputs, w_grads = want
    assert set(grads) == set(w_grads), (sorted(grads), sorted(w_grads))
    for name in outputs:
        assert_rel_close(outputs[name], w_outputs[name], dtype, "output", f"{label} {name}")
    for name in grads:
        assert grads[name] is not None, f"{label}: no gradient for {name}"
        assert_rel_close(grads[name], w_grads[name], dtype, "grad", f"{label} d{name}")


def _print_torch_error(twin_result, exact_result, dtype, label):
    """torch.nn's own error in the same dtype, for scale (not asserted)."""
    (outputs, grads), (w_outputs, w_grads) = twin_result, exact_result
    for name, value in list(outputs.items()) + list(grads.items()):
        want = w_outputs[name] if name in w_outputs else w_grads[name]
        if value is None or want is None:
            continue
        a, e = _host64(value), _host64(want)
        print(f"{label} torch.nn {dtype} {name}: relative error "
              f"{np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-300):.3e}")


@gpu
@pytest.mark.parametrize("config,dtype", MODULE_CASES,
                         ids=["-".join(map(str, c)) + "-" + dt for c, dt in MODULE_CASES])
def test_module_matches_torch(config, dtype):
    """Outputs, final states and every gradient of a 2-layer fastrnn.torch module on CUDA.

    float32: against torch.nn in float32 on CUDA (TF32 off) and torch.nn in float64. float16
    and bfloat16 round differently in fastrnn and torch.nn, so fastrnn's error is bounded
    against torch.nn in float64 on the same rounded weights and inputs (torch.nn's own error in
    the dtype is printed beside it)."""
    ours, twin, exact, inputs, exact_inputs, lengths, config = _module_case(
        config, dtype, seed=_seed("module", config, dtype))
    label = f"{config[0]} {dtype}"
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastrnn.torch.FallbackWarning)
        got = _run_module(ours, inputs, lengths, config)
    want = _run_module(exact, exact_inputs, lengths, config)
    _compare_module(got, want, dtype, label + " vs torch.nn float64")
    if dtype == "float32":
        theirs = _run_module(twin, inputs, lengths, config)
        _compare_module(got, theirs, dtype, label + " vs torch.nn float32")
    else:
        try:  # for scale only: no assertion rests on torch.nn's half-precision kernels
            _print_torch_error(_run_module(twin, inputs, lengths, config), want, dtype, label)
        except RuntimeError as exc:
            print(f"{label}: torch.nn in {dtype} on CUDA failed: {exc}")


@gpu
@pytest.mark.parametrize("algo", ["standard", "persistent"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_module_algos(cell, dtype, algo):
    config = (cell, "tanh" if cell == "rnn" else None, True, False, True, 0, True, 5)
    ours, _, exact, inputs, exact_inputs, lengths, config = _module_case(
        config, dtype, algo=algo, seed=_seed("module-algo", cell, dtype, algo))
    assert ours.algo == algo
    got = _run_module(ours, inputs, lengths, config)
    want = _run_module(exact, exact_inputs, lengths, config)
    _compare_module(got, want, dtype, f"{cell} {dtype} {algo}")


def _count_kernel_calls(monkeypatch):
    """Counts of fastrnn.cuda.forward / backward calls (each queues one layer and direction)."""
    calls = {"forward": 0, "backward": 0}
    for name in calls:
        real = getattr(fastrnn.cuda, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(fastrnn.cuda, name, counted)
    return calls


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_module_runs_fastrnn_kernels(cell, dtype, monkeypatch):
    """No FallbackWarning, no call of torch.nn's own forward, and fastrnn's kernels queued once
    per layer and direction, forward and backward."""
    fastrnn.torch._warned.clear()  # so that a fallback warns even if it warned before

    def torch_forward(*args, **kwargs):
        raise AssertionError("torch.nn's own forward ran")

    monkeypatch.setattr(getattr(torch.nn, cell.upper()), "forward", torch_forward)
    calls = _count_kernel_calls(monkeypatch)
    config = (cell, "tanh" if cell == "rnn" else None, True, True, True, 0, True, 5)
    ours, _, exact, inputs, exact_inputs, lengths, config = _module_case(
        config, dtype, seed=_seed("kernels", cell, dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastrnn.torch.FallbackWarning)
        got = _run_module(ours, inputs, lengths, config)
    assert calls == {"forward": 4, "backward": 4}, calls  # 2 layers x 2 directions
    monkeypatch.undo()
    _compare_module(got, _run_module(exact, exact_inputs, lengths, config), dtype,
                    f"{cell} {dtype}")


@gpu
@pytest.mark.parametrize("algo", ["standard", "persistent"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_module_poisoned_buffers(cell, algo, poison):
    config = (cell, None, True, False, True, 0, True, 5)
    ours, _, exact, inputs, exact_inputs, lengths, config = _module_case(
        config, "float32", algo=algo, seed=_seed("module-poison", cell, algo))
    got = _run_module(ours, inputs, lengths, config)
    _all_finite(f"poisoned module {cell} {algo}", {**got[0], **got[1]})
    _compare_module(got, _run_module(exact, exact_inputs, lengths, config), "float32",
                    f"poisoned module {cell} {algo}")


@gpu
def test_module_float64_falls_back_to_torch():
    """float64 has no CUDA kernels: torch.nn's implementation runs, with a FallbackWarning."""
    config = ("lstm", None, True, False, True, 0, True, 5)
    ours, _, _, _, _, lengths, config = _module_case(config, "float32", seed=3)
    ours = ours.double()
    twin = torch.nn.LSTM(MODULE_I, MODULE_H, **_module_kwargs("lstm", None, True, False, 0))
    twin = twin.to("cuda", torch.float64)
    twin.load_state_dict(ours.state_dict())
    rng = np.random.default_rng(3)
    host = {"x": rng.standard_normal((MODULE_T, 5, MODULE_I)),
            "dy": rng.standard_normal((MODULE_T, 5, 2 * MODULE_H))}
    for name in ("dh", "dc", "h0", "c0"):
        host[name] = rng.standard_normal((4, 5, MODULE_H))  # 2 layers x 2 directions
    inputs = {k: torch.from_numpy(v).cuda() for k, v in host.items()}
    fastrnn.torch._warned.clear()
    with pytest.warns(fastrnn.torch.FallbackWarning):
        got = _run_module(ours, inputs, lengths, config)
    _compare_module(got, _run_module(twin, inputs, lengths, config), "float64", "float64 fallback")


@gpu
def test_module_runs_on_current_stream():
    config = ("lstm", None, True, False, False, 0, True, 8)
    ours, _, _, inputs, _, lengths, config = _module_case(config, "float32", seed=9)
    want = _run_module(ours, inputs, lengths, config)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    late = {k: _late_copy_on(side, v) for k, v in inputs.items()}
    with torch.cuda.stream(side):
        got = _run_module(ours, late, lengths, config)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    _compare_module(got, want, "float32", "side stream module")


@gpu
def test_module_torch_compile(monkeypatch):
    """torch.compile(fullgraph=True) on CUDA: fastrnn's kernels run (no fallback), and forward
    and backward match eager."""
    import torch._dynamo
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = fastrnn.torch.LSTM(MODULE_I, MODULE_H, num_layers=2, bidirectional=True,
                               batch_first=True).cuda()
    x = torch.randn(5, MODULE_T, MODULE_I, device="cuda")
    dy = torch.randn(5, MODULE_T, 2 * MODULE_H, device="cuda")

    def step(module):
        model.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_(True)
        y, (h_n, c_n) = module(xx)
        ((y * dy).sum() + h_n.sum() + c_n.sum()).backward()
        return ({"output": y, "h_n": h_n, "c_n": c_n},
                {"input": xx.grad, **{n: p.grad for n, p in model.named_parameters()}})

    fastrnn.torch._warned.clear()
    calls = _count_kernel_calls(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", fastrnn.torch.FallbackWarning)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        got = step(compiled)
    fallbacks = [w for w in caught if issubclass(w.category, fastrnn.torch.FallbackWarning)]
    assert not fallbacks, [str(w.message) for w in fallbacks]
    assert calls == {"forward": 4, "backward": 4}, calls  # 2 layers x 2 directions
    monkeypatch.undo()
    want = step(model)
    _compare_module(got, want, "float32", "compiled")
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------
# CPU: what a machine without a GPU can check
# ---------------------------------------------------------------------------------------------

def test_build_info_reports_cuda():
    info = fastrnn.build_info()
    assert info["cuda"] is fastrnn.cuda.is_compiled()
    if not info["cuda"]:
        assert fastrnn.cuda_available() is False
        assert fastrnn.cuda.device_count() == 0
        return
    assert isinstance(info["cuda_loadable"], bool)
    if info["cuda_loadable"]:
        assert "sm_80" in info["cuda_architectures"] and "sm_90" in info["cuda_architectures"]
        assert info["cuda_runtime"] > 0 and info["cublas"]
        assert info["cuda_devices"] == fastrnn.cuda.device_count()
    else:
        assert isinstance(info["cuda_error"], str) and info["cuda_error"]


def test_ci_requires_the_cuda_build():
    """CI sets FASTRNN_REQUIRE_CUDA_BUILD=1: there the CUDA backend must have been built."""
    if os.environ.get("FASTRNN_REQUIRE_CUDA_BUILD") != "1":
        pytest.skip("FASTRNN_REQUIRE_CUDA_BUILD=1 is not set")
    assert fastrnn.cuda.is_compiled(), (
        "FASTRNN_REQUIRE_CUDA_BUILD=1 but this build of fastrnn has no CUDA backend "
        "(fastrnn._cuda): the build did not find nvcc or cuBLAS")


@no_gpu
def test_no_gpu_here_is_reported_cleanly():
    assert fastrnn.cuda_available() is False
    reason = fastrnn.cuda.unavailable_reason()
    assert isinstance(reason, str) and reason
    assert fastrnn.cuda.device_count() == 0
    with pytest.raises(RuntimeError, match="CUDA"):
        fastrnn.cuda.device_info(0)
    with pytest.raises(RuntimeError, match="CUDA"):
        fastrnn.cuda.plan(2, 0, 5, 3, 7, 13, 0, "auto", 0, True)


_NO_CUDA_IMPORT = textwrap.dedent("""
    import sys
    import numpy as np
    import fastrnn
    assert 'fastrnn._cuda' not in sys.modules, 'import fastrnn loaded fastrnn._cuda'
    fastrnn.cuda.is_compiled()
    lstm = fastrnn.LSTM(3, 5, num_layers=2, bidirectional=True, seed=0)
    y, _ = lstm(np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32))
    lstm.backward(np.ones_like(y))
    a = np.ones((2, 1, 3), np.float32)
    fastrnn.functional.layer_forward('gru', a, np.zeros((1, 4), np.float32), None,
                                     np.ones((12, 3), np.float32), np.ones((12, 4), np.float32),
                                     None, None, algo='standard')
    assert 'fastrnn._cuda' not in sys.modules, 'a CPU call loaded fastrnn._cuda'
""")


def test_import_does_not_load_the_cuda_extension():
    subprocess.run([sys.executable, "-c", _NO_CUDA_IMPORT], check=True, timeout=120)


def test_torch_cpu_use_does_not_load_the_cuda_extension():
    pytest.importorskip("torch")
    code = textwrap.dedent("""
        import sys, torch
        import fastrnn.torch
        m = fastrnn.torch.GRU(3, 4, num_layers=2, bidirectional=True)
        y, h = m(torch.randn(5, 2, 3))
        (y.sum() + h.sum()).backward()
        assert 'fastrnn._cuda' not in sys.modules, 'fastrnn.torch on the CPU loaded fastrnn._cuda'
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


@pytest.fixture
def cuda_ext():
    """The extension module fastrnn._cuda, where this build has it and it loads. Under
    FASTRNN_REQUIRE_CUDA_BUILD=1 (CI, whose test extra installs cuBLAS) it must do both."""
    required = os.environ.get("FASTRNN_REQUIRE_CUDA_BUILD") == "1"
    if not fastrnn.cuda.is_compiled():
        (pytest.fail if required else pytest.skip)("this build of fastrnn has no CUDA backend")
    info = fastrnn.build_info()
    if not info.get("cuda_loadable"):
        (pytest.fail if required else pytest.skip)(
            f"the CUDA backend is built but does not load here: {info.get('cuda_error')}")
    from fastrnn import _cuda
    return _cuda


def test_extension_architectures(cuda_ext):
    archs = list(cuda_ext.compiled_architectures())
    assert "sm_80" in archs and "sm_90" in archs, archs
    assert isinstance(cuda_ext.cublas_version(), str)


@no_gpu
def test_extension_without_device(cuda_ext):
    assert cuda_ext.device_count() == 0
    assert cuda_ext.driver_version() == 0  # no driver here (0 rather than an error)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_reserve_widths_follow_the_layout(cuda_ext, mode, dtype):
    """csrc/cuda/layout.cuh: the reserve holds, per (T+1)*B slots, the float cell state (LSTM)
    and the state h in the dtype; per T*B steps, 4 saved float activations per unit (LSTM,
    GRU) and, with a projection, o*tanh(c) in the dtype."""
    es = ITEMSIZE[dtype]
    for H in (1, 13, 256):
        for P in ((0, 1, H - 1) if mode == "lstm" and H > 2 else (0,)):
            R = P or H
            per_slot = (4 * H if mode == "lstm" else 0) + R * es
            per_step = (4 * 4 * H if mode in ("lstm", "gru") else 0) + (H * es if P else 0)
            got = tuple(cuda_ext.reserve_widths(CELL_CODES[mode], H, P, DTYPE_CODES[dtype]))
            assert got == (per_slot, per_step), (mode, dtype, H, P, got)
    with pytest.raises(ValueError, match="dtype"):
        cuda_ext.reserve_widths(CELL_CODES[mode], 4, 0, 3)
    with pytest.raises(ValueError, match="cell"):
        cuda_ext.reserve_widths(4, 4, 0, DTYPE_CODES[dtype])


@pytest.mark.parametrize("algo", [0, 1])
@pytest.mark.parametrize("mode", MODES)
def test_workspace_bytes_grow_with_steps(cuda_ext, mode, algo):
    cell = CELL_CODES[mode]
    for dtype in DTYPE_CODES.values():
        P = 3 if mode == "lstm" and algo == 0 else 0
        sizes = [cuda_ext.workspace_bytes(cell, dtype, T, 4, 7, 13, P, True, algo)
                 for T in (1, 10, 100, 1000)]
        for (fwd, bwd), (fwd2, bwd2) in zip(sizes, sizes[1:]):
            assert 0 < fwd < fwd2 and 0 < bwd < bwd2, sizes
        fwd, bwd = cuda_ext.workspace_bytes(cell, dtype, 10, 4, 7, 13, P, False, algo)
        assert fwd > 0 and bwd == 0
    with pytest.raises(ValueError, match="algo"):
        cuda_ext.workspace_bytes(cell, 0, 5, 3, 7, 13, 0, True, 2)  # auto: not resolved
    with pytest.raises(ValueError):
        cuda_ext.workspace_bytes(cell, 0, 0, 3, 7, 13, 0, True, 0)


def test_check_algo():
    for algo in ALGOS:
        assert fastrnn.cuda.check_algo(algo) == algo
    assert tuple(fastrnn.cuda.ALGOS) == ALGOS
    for bad in ("fast", "Standard", "", "cudnn"):
        with pytest.raises(ValueError, match="algo"):
            fastrnn.cuda.check_algo(bad)


class _FakeCudaArray:
    """Claims to live on CUDA device 0 through DLPack, and is nothing."""

    def __dlpack__(self, *args, **kwargs):
        return object()

    def __dlpack_device__(self):
        return (2, 0)


@no_gpu
def test_cuda_array_without_a_device_raises():
    """An array on a CUDA device where there is none: a RuntimeError naming CUDA, no crash."""
    host = _host_inputs("lstm", 3, 2, 4, 5)
    a = {k: None if v is None else v.astype(np.float32) for k, v in host.items()}
    a["x"] = _FakeCudaArray()
    with pytest.raises(RuntimeError, match="CUDA"):
        functional.layer_forward("lstm", a["x"], a["h0"], a["c0"], a["weight_ih"],
                                 a["weight_hh"], a["bias_ih"], a["bias_hh"])
    # every argument on the fake device, and backward's too
    fake = {k: None if v is None else _FakeCudaArray() for k, v in a.items()}
    with pytest.raises(RuntimeError, match="CUDA"):
        functional.layer_forward("gru", fake["x"], fake["h0"], None, fake["weight_ih"],
                                 fake["weight_hh"], None, None, algo="persistent")


def test_numpy_arrays_refuse_gpu_algos():
    host = _host_inputs("lstm", 3, 2, 4, 5)
    a = {k: None if v is None else v.astype(np.float32) for k, v in host.items()}
    args = ("lstm", a["x"], a["h0"], a["c0"], a["weight_ih"], a["weight_hh"], a["bias_ih"],
            a["bias_hh"])
    with pytest.raises(ValueError, match="algo"):
        functional.layer_forward(*args, algo="persistent")
    for bad in ("bogus", "", "Auto"):
        with pytest.raises(ValueError, match="algo"):
            functional.layer_forward(*args, algo=bad)
    y_auto = functional.layer_forward(*args, algo="auto")[0]
    y_std = functional.layer_forward(*args, algo="standard")[0]
    np.testing.assert_array_equal(y_auto, y_std)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_torch_cpu_modules_take_algo(cell):
    """fastrnn.torch on CPU tensors is unaffected by the ``algo`` keyword (the CPU core has one
    algorithm): a module built with algo="standard" matches torch.nn; a bad algo is refused."""
    pytest.importorskip("torch")
    import fastrnn.torch
    cls = getattr(fastrnn.torch, cell.upper())
    kw = dict(num_layers=2, bidirectional=True, batch_first=True)
    torch.manual_seed(0)
    ours = cls(4, 6, algo="standard", **kw)
    assert ours.algo == "standard"
    twin = getattr(torch.nn, cell.upper())(4, 6, **kw)
    twin.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, 4)
    results = []
    for module in (ours, twin):
        xx = x.clone().requires_grad_(True)
        y, state = module(xx)
        h_n = state[0] if cell == "lstm" else state
        (y.square().sum() + h_n.sum()).backward()
        results.append((y, h_n, xx.grad, [p.grad for p in module.parameters()]))
    (y, h_n, dx, dps), (ty, th_n, tdx, tdps) = results
    assert_rel_close(y, ty, "float32", "output", f"{cell} cpu algo=standard y")
    assert_rel_close(h_n, th_n, "float32", "output", f"{cell} cpu algo=standard h_n")
    assert_rel_close(dx, tdx, "float32", "grad", f"{cell} cpu algo=standard dx")
    for i, (dp, tdp) in enumerate(zip(dps, tdps)):
        assert_rel_close(dp, tdp, "float32", "grad", f"{cell} cpu algo=standard dparam{i}")
    assert cls(4, 6).algo == "auto"
    with pytest.raises(ValueError, match="algo"):
        cls(4, 6, algo="bogus")(torch.randn(5, 2, 4))
