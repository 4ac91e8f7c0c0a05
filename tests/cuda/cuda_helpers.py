"""Shared by the tests of fastrnn's CUDA backend (tests/cuda/test_gpu_*.py and
test_cuda_without_gpu.py): which tests can run here, fixtures, comparison, layer helpers.

Two kinds of test use these helpers.

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

import zlib

import numpy as np
import pytest

import fastrnn
from fastrnn import functional, reference
from conftest import GPU_TOLERANCES, random_lengths
from fastrnn._cells import CELLS, MODES, num_gates  # noqa: F401 (MODES: for the tests)

try:
    import torch
except ImportError:  # the CPU tests below run without torch; the GPU tests need it
    torch = None

TOLERANCES = GPU_TOLERANCES  # tests/conftest.py, the one table

DTYPES = fastrnn.cuda.DTYPES
ALGOS = fastrnn.cuda.ALGOS
GRAD_NAMES = ("input", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
CELL_CODES = {mode: spec.code for mode, spec in CELLS.items()}
DTYPE_CODES = {name: code for code, name in enumerate(fastrnn.cuda.DTYPES)}
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
    G, R, k = num_gates(mode), P or H, 1.0 / np.sqrt(H)
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


def _gpu_forward(mode, d, *, lengths, reverse, algo, training=True, resets=None):
    extra = {} if resets is None else {"resets": resets}
    return functional.layer_forward(mode, d["x"], d["h0"], d["c0"], d["weight_ih"],
                                     d["weight_hh"], d["bias_ih"], d["bias_hh"],
                                     weight_hr=d["weight_hr"], lengths=lengths, reverse=reverse,
                                     training=training, algo=algo, **extra)


def _ref_forward(mode, a, *, lengths, reverse, training=True, resets=None):
    extra = {} if resets is None else {"resets": resets}
    return reference.layer_forward(mode, a["x"], a["h0"], a["c0"], a["weight_ih"],
                                   a["weight_hh"], a["bias_ih"], a["bias_hh"],
                                   weight_hr=a["weight_hr"], lengths=lengths, reverse=reverse,
                                   training=training, **extra)


def _resets(kind: str, T: int, B: int, seed: int):
    """A state reset mask (T, B) bool, or None: "random" resets about a third of the steps, and
    always row 0 at t = 0 and row 1 at two consecutive steps."""
    if kind == "none":
        return None
    r = np.random.default_rng(seed + 13).random((T, B)) < 0.3
    r[0, 0] = True
    if B > 1 and T > 2:
        r[1:3, 1] = True
    return r


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
               algo="auto", seed=0, final_grads=True, check_training_free=False,
               resets_kind="none", resets_on_device=True):
    """fastrnn on the GPU (in ``dtype``, torch CUDA tensors) and the reference (float64, on the
    same rounded numbers): every output and every gradient compared. Returns what it ran.
    ``resets_kind``: "none" or "random" (:func:`_resets`), given to fastrnn as a CUDA bool tensor
    or (``resets_on_device=False``) a NumPy array."""
    T, B, I, H = size
    R = P or H
    host = _host_inputs(mode, T, B, I, H, P=P, bias=bias, seed=seed, scale=_scale_for(dtype))
    d = {k: _to_device(v, dtype) for k, v in host.items()}
    a = {k: _host64(v) for k, v in d.items()}  # exactly what the GPU sees
    lengths = _lengths(lengths_kind, T, B, seed)
    resets = _resets(resets_kind, T, B, seed)
    gpu_resets = resets
    if resets is not None and resets_on_device:
        gpu_resets = torch.from_numpy(resets).to("cuda")
    label = (f"{mode} {dtype} {algo} T={T} B={B} I={I} H={H} P={P} rev={reverse} "
             f"{lengths_kind} bias={bias} resets={resets_kind}")
    _check_plan(mode, dtype, T, B, I, H, P, algo)

    y, h_n, c_n, state = _gpu_forward(mode, d, lengths=lengths, reverse=reverse, algo=algo,
                                      resets=gpu_resets)
    ry, rh_n, rc_n, rstate = _ref_forward(mode, a, lengths=lengths, reverse=reverse,
                                          resets=resets)
    assert state is not None
    _check_outputs(label, dtype, mode, (y, h_n, c_n), (ry, rh_n, rc_n), T, B, H, R, lengths)

    if check_training_free:  # inference mode: the same results, nothing saved
        iy, ih_n, ic_n, istate = _gpu_forward(mode, d, lengths=lengths, reverse=reverse,
                                              algo=algo, training=False, resets=gpu_resets)
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


def _all_finite(label, tensors):
    for name, t in tensors.items():
        if t is None:
            continue
        bad = int((~torch.isfinite(t)).sum())
        assert bad == 0, f"{label}: {bad} of {t.numel()} elements of {name} are not finite"


def _late_copy_on(stream, src):
    """``src`` copied into a NaN-filled tensor on ``stream`` after ~10 ms of GPU sleep: work on any
    other stream that does not wait for ``stream`` reads NaN."""
    with torch.cuda.stream(stream):
        out = torch.full_like(src, float("nan"))
        if hasattr(torch.cuda, "_sleep"):
            torch.cuda._sleep(20_000_000)
        out.copy_(src)
    return out
