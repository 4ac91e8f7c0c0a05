"""Shared test helpers: the tolerance tables, ``assert_close`` and random layer inputs.

Where a test goes (the folders mirror the architecture; docs/design.md §2):

- ``reference/``: the NumPy reference on its own (finite differences in float64, torch.nn).
- ``cpu/``: the C++ core against the reference: every cell, direction, size, ISA variant, the
  team recurrence, workspace sizes.
- ``api/``: the Python API's contracts: argument validation and its messages, typing, fuzzing
  with malformed and random calls.
- ``runtime/``: threads, determinism, concurrency, memory, subnormals, leaks, stress.
- ``torch_adapter/``: ``fastrnn.torch`` against ``torch.nn`` (modules, parity, malformed input).
- ``cuda/``: the CUDA backend: GPU tests (marked ``cuda``), what a machine without a GPU can check,
  and the host emulation of the kernels; shared helpers in ``cuda/cuda_helpers.py``.
- ``tools/``: the benchmark CLI, the examples, the README's and the docs' code.

A new cell needs no new test file: the cell lists come from ``fastrnn._cells``. Test files have
unique names across folders (the folders are not packages). Every comparison between two
implementations goes through :func:`assert_close` (or ``cuda_helpers.assert_rel_close``), which
prints the largest difference before it asserts (docs/design.md §8), with a tolerance from the
tables below: :data:`TOLERANCES` (CPU, keyed by the dtype of the computation) and
:data:`GPU_TOLERANCES` (the CUDA backend, relative error over a whole array).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

# The torch comparisons skip where torch is absent (it is an optional extra); CI sets this so that
# a broken torch install fails the run instead of turning those tests into skips.
if os.environ.get("FASTRNN_REQUIRE_TORCH") == "1":
    import torch  # noqa: F401
# The same for JAX (fastrnn.jax, its Flax modules, the jax bench peers): jax and flax are in the
# test extra, and fastrnn.jax needs the build's XLA FFI handlers.
if os.environ.get("FASTRNN_REQUIRE_JAX") == "1":
    import flax  # noqa: F401
    import jax  # noqa: F401

    import fastrnn.jax  # noqa: F401


def pytest_report_header(config):
    import fastrnn
    return f"fastrnn {fastrnn.__version__} from {os.path.dirname(fastrnn.__file__)}"


def pytest_sessionstart(session):
    """With FASTRNN_TEST_INSTALLED_WHEEL=1 (.ci/run's wheel stage), make sure the suite runs
    against an installed manylinux wheel, not a source tree or a local build."""
    if os.environ.get("FASTRNN_TEST_INSTALLED_WHEEL") != "1":
        return
    import sys
    from importlib import metadata

    import fastrnn
    where = os.path.realpath(fastrnn.__file__)
    assert where.startswith(os.path.realpath(sys.prefix)), f"fastrnn imported from {where}"
    wheel_info = metadata.distribution("fastrnn").read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel_info.splitlines()
            if line.startswith("Tag:")]
    assert tags and all("manylinux" in tag for tag in tags), f"installed wheel's tags: {tags}"

# ---------------------------------------------------------------------------------------------
# Tolerances, keyed by the dtype the implementation under test computed in.
#
# An element passes when   |actual - expected| <= atol * scale + rtol * |expected|
# with scale = max(1, max|expected|) over the whole array. The atol term is relative to the
# array's magnitude ("relative-ish"): a weight gradient sums T*B products, so one of its entries
# can sit near zero by cancellation while its neighbours are in the hundreds, and no purely
# elementwise relative bound is meaningful there.
#
# float64: fastrnn float64 against the reference in float64. Only summation order differs
#   (BLAS blocking, bias folded into the input GEMM, column sums), so differences are a few ulps
#   of the array's scale: measured worst 1.7e-15 of scale over tests/test_core_vs_reference.py.
#   1e-12 leaves ~500x margin and still catches any real bug.
# float32: fastrnn float32 against the reference in float64 on the same (float32-representable)
#   inputs, so the difference is fastrnn's own float32 rounding accumulated through the
#   recurrence. Measured over tests/test_core_vs_reference.py (T up to 200, H up to 64, all four
#   cells, both directions, lengths, weights up to 2x PyTorch's init range) and over T=200,
#   H=16..64 sweeps: worst 1.0e-6 of scale (LSTM dW_ih, T=200, reverse, mixed lengths); an
#   earlier run with rnn_relu exploding to 1e13 over 200 steps stayed at 1.3e-6 of scale.
#   rtol = atol = 2e-5 is ~15-20x above that; a wrong gate, sign, step or index gives differences
#   of order 1e-2..1 of scale.
# ---------------------------------------------------------------------------------------------
TOLERANCES = {
    np.dtype(np.float64): {"rtol": 1e-12, "atol": 1e-12},
    np.dtype(np.float32): {"rtol": 2e-5, "atol": 2e-5},
    # Checks of the reference on its own (tests/test_reference.py), as a bound on
    # max|got - want| / max(1, max|want|):
    # central differences with step 1e-6 in float64: truncation ~eps^2, rounding ~1e-16/eps.
    "finite_difference_f64": 1e-6,
    # the reference in float32 against itself in float64 on a short sequence.
    "reference_f32_vs_f64": 1e-5,
    # the reference against torch.nn in float64: only summation order differs.
    "reference_torch_f64": 1e-10,
    # one sequence run alone against the same sequence inside a padded batch.
    "reference_truncated_f64": 1e-12,
    # fastrnn (CPU) on data with subnormal values -- below 2**-126 ~ 1.2e-38 in float32,
    # 2**-1022 ~ 2.2e-308 in float64 -- in the inputs and weights, against the reference
    # (tests/runtime/test_subnormals.py), {"rtol", "atol"} as for the dtypes above. fastrnn counts
    # subnormals as zero (flush-to-zero and denormals-are-zero on every thread of its CPU work,
    # csrc/cpu/denormals.h); the NumPy reference keeps them. Flushing a value v changes a result
    # by at most |v| times the weights it meets: ~1e-36 of the results' scale in float32,
    # ~1e-306 in float64, far below the rounding that the dtype's own rows already allow, so the
    # rows are the same (measured with ~30% subnormal entries in every input and weight, the
    # test_determinism shapes: worst 2.1e-6 of scale in float32, 3.9e-15 in float64). A result
    # that is itself subnormal reads as 0 against the reference's subnormal: within atol * scale.
    "subnormals_f32": {"rtol": 2e-5, "atol": 2e-5},
    "subnormals_f64": {"rtol": 1e-12, "atol": 1e-12},
}


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
GPU_TOLERANCES = {
    "float32": {"output": 1e-5, "grad": 1e-4},
    "tf32": {"output": 5e-3, "grad": 1e-2},
    "float16": {"output": 5e-3, "grad": 1e-2},
    "bfloat16": {"output": 1e-2, "grad": 2e-2},
    "float64": {"output": 1e-10, "grad": 1e-10},
}
# The CUDA kernels run by host emulation (tests/cuda/test_cuda_emulated.py): the same measure,
# against float64 on the same (rounded) inputs, with the bounds that test has used since it
# landed (bfloat16 at twice GPU_TOLERANCES' bounds).
EMULATED_GPU_TOLERANCES = {
    "float32": {"output": 1e-5, "grad": 1e-4},
    "float16": {"output": 5e-3, "grad": 1e-2},
    "bfloat16": {"output": 2e-2, "grad": 4e-2},
}


def tolerance(dtype, key=None) -> dict:
    """The ``{"rtol", "atol"}`` entry of :data:`TOLERANCES` for ``dtype``, or the entry ``key``."""
    return TOLERANCES[key] if key is not None else TOLERANCES[np.dtype(dtype)]


def assert_close(actual, expected, dtype, what: str, *, tolerance_key=None) -> None:
    """Assert ``actual`` matches ``expected`` within the tolerance of ``dtype``.

    ``dtype`` is the dtype the tested implementation computed in (it picks the row of
    :data:`TOLERANCES`, unless ``tolerance_key`` names another ``{"rtol", "atol"}`` row);
    ``expected`` may be of a wider dtype (float64 reference). Prints the largest absolute and
    relative difference first, so ``pytest -s`` (or a failure) shows them.
    ``None`` must match ``None``.
    """
    if expected is None or actual is None:
        print(f"{what}: actual {'None' if actual is None else 'array'}, "
              f"expected {'None' if expected is None else 'array'}")
        assert actual is None and expected is None, f"{what}: one of actual/expected is None"
        return
    assert isinstance(actual, np.ndarray), f"{what}: expected an ndarray, got {type(actual)}"
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    a, e = np.atleast_1d(a), np.atleast_1d(e)  # 0-d (a loss, say) as one element
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    tol = tolerance(dtype, tolerance_key)
    if e.size == 0:
        print(f"{what}: empty")
        return
    assert np.all(np.isfinite(e)), f"{what}: the expected values are not all finite"
    diff = np.abs(a - e)
    diff[np.isnan(diff)] = np.inf
    scale = max(1.0, float(np.max(np.abs(e))))
    max_abs = float(np.max(diff))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(e))
    max_rel = float(np.max(rel))
    allowed = tol["atol"] * scale + tol["rtol"] * np.abs(e)
    bad = diff > allowed
    print(f"{what} [{np.dtype(dtype)}]: largest abs diff {max_abs:.3e}, largest rel diff "
          f"{max_rel:.3e}, abs diff / scale {max_abs / scale:.3e} (scale {scale:.3e}; "
          f"rtol {tol['rtol']:.0e}, atol {tol['atol']:.0e} x scale)")
    if bad.any():
        idx = np.unravel_index(int(np.argmax(diff - allowed)), diff.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} elements differ beyond tolerance; worst at "
            f"{tuple(int(i) for i in idx)}: actual {a[idx]!r}, expected {e[idx]!r} "
            f"(largest abs diff {max_abs:.3e}, largest rel diff {max_rel:.3e})")


# ---------------------------------------------------------------------------------------------
# Random inputs
# ---------------------------------------------------------------------------------------------

LAYER_ARG_NAMES = ("x", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh")
_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


def make_layer_inputs(mode: str, T: int, B: int, I: int, H: int, *, bias: bool = True,
                      dtype=np.float64, seed: int = 0, weight_scale: float = 2.0) -> dict:
    """Random arguments of one ``layer_forward`` call, keyed by :data:`LAYER_ARG_NAMES`.

    Weights are uniform in ``weight_scale`` times PyTorch's init range ``±1/sqrt(H)`` (wider than
    the default, to drive the gates into their nonlinear range), biases in that range, ``x``
    standard normal, ``h0``/``c0`` normal with std 0.5. ``c0`` is None unless ``mode == "lstm"``,
    the biases are None when ``bias=False``. Values are drawn in float64 and cast to ``dtype``,
    so the float32 and float64 inputs of one seed hold the same numbers up to rounding.
    """
    rng = np.random.default_rng(seed)
    gh = _GATES[mode] * H
    k = 1.0 / np.sqrt(H)
    a = {
        "x": rng.standard_normal((T, B, I)),
        "h0": 0.5 * rng.standard_normal((B, H)),
        "c0": 0.5 * rng.standard_normal((B, H)) if mode == "lstm" else None,
        "weight_ih": rng.uniform(-weight_scale * k, weight_scale * k, (gh, I)),
        "weight_hh": rng.uniform(-weight_scale * k, weight_scale * k, (gh, H)),
        "bias_ih": rng.uniform(-k, k, gh) if bias else None,
        "bias_hh": rng.uniform(-k, k, gh) if bias else None,
    }
    return cast_inputs(a, dtype)


def cast_inputs(arrays: dict, dtype) -> dict:
    """A copy of a dict of arrays (or None) with every array cast to ``dtype``."""
    return {k: None if v is None else np.array(v, dtype=dtype) for k, v in arrays.items()}


def random_lengths(rng: np.random.Generator, T: int, B: int) -> np.ndarray:
    """Unsorted int64 lengths in [1, T] that include both 1 and T whenever B >= 2."""
    lengths = rng.integers(1, T + 1, size=B)
    if B >= 2:
        lengths[rng.permutation(B)[:2]] = (1, T)
    return lengths.astype(np.int64)


# The gradients layer_backward returns, by name.
GRAD_NAMES = ("input", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")

# Layers that take each threaded path of the CPU core once (runtime/test_determinism.py,
# runtime/test_subnormals.py): (mode, T, B, I, H, P).
THREAD_PATH_CASES = [
    ("gru", 37, 7, 520, 190, 0),      # separate input projection, M = T*B = 259, G*H = 570
    ("lstm", 41, 9, 515, 131, 0),     # fused projection; backward GEMMs over 369 rows
    ("rnn_tanh", 29, 11, 600, 530, 0),
    ("rnn_relu", 5, 3, 7, 9, 0),      # one block each
    ("lstm", 20, 1, 33, 400, 0),      # batch 1: forward steps on GEMV (4*400*400 > 2^19)
    ("lstm", 23, 5, 21, 150, 37),     # projection: per-step BLAS products
]
THREAD_PATH_IDS = ["%s-T%dB%dI%dH%dP%d" % c for c in THREAD_PATH_CASES]


def assert_same_bits(runs: dict) -> None:
    """``runs[threads]`` (dicts of arrays or None, one per thread count): every run bit for bit
    the first one's."""
    first_threads, first = next(iter(runs.items()))
    for threads, run in runs.items():
        for name, value in first.items():
            if value is None:
                assert run[name] is None, name
            else:
                np.testing.assert_array_equal(run[name], value,
                                              err_msg=f"{name}, {threads} threads vs {first_threads}")


def assert_fuzz_clean(summary: dict, problems: list, count: int) -> None:
    """A malformed-call fuzzing run (:func:`run_fuzz_child`) found no misbehaving call."""
    assert not problems, (f"{len(problems)} of {count} malformed calls misbehaved "
                          f"(rerun one with: {summary['rerun']}):\n" + "\n".join(problems[:30]))


@pytest.fixture
def restore_settings():
    """fastrnn's process-wide settings (threads, deterministic mode) put back after the test."""
    import fastrnn
    threads, deterministic = fastrnn.get_num_threads(), fastrnn.get_deterministic()
    yield
    fastrnn.set_num_threads(threads)
    fastrnn.set_deterministic(deterministic)


@pytest.fixture
def layer_inputs():
    """The :func:`make_layer_inputs` factory, as a fixture."""
    return make_layer_inputs


# ---------------------------------------------------------------------------------------------
# Malformed-call fuzzing in a child process (test_fuzz.py, test_torch_malformed.py)
# ---------------------------------------------------------------------------------------------

def run_fuzz_child(script: str, count: int, seed: int, timeout: float = 600) -> dict:
    """Runs ``python script COUNT SEED`` -- a fuzzing script that prints each case before calling
    it and ends with one ``FUZZ-SUMMARY {json}`` line -- and returns the summary. A crash fails
    the calling test with the signal and the last case printed, instead of ending the run."""
    import json
    import subprocess
    import sys

    env = dict(os.environ)
    # Under AddressSanitizer (CI preloads it), let a failed huge malloc return NULL, as glibc's
    # does, so that the allocation raises MemoryError instead of ASan aborting the process.
    env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"),
                                                 "allocator_may_return_null=1"]))
    proc = subprocess.run([sys.executable, os.path.abspath(script), str(count), str(seed)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    tail = "\n".join(proc.stdout.splitlines()[-20:] + proc.stderr.splitlines()[-40:])
    rerun = f"python {os.path.relpath(script)} 1 {seed} CASE"
    if proc.returncode < 0:
        pytest.fail(f"the fuzzing process was killed by signal {-proc.returncode} during the "
                    f"last case it printed (rerun one with: {rerun}; a heap corruption can "
                    f"abort a few cases after the one that caused it: then rerun the cases "
                    f"before it, COUNT > 1):\n{tail}")
    assert proc.returncode == 0, f"the fuzzing process exited with {proc.returncode}:\n{tail}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("FUZZ-SUMMARY ")]
    assert lines, f"no summary line:\n{tail}"
    summary = json.loads(lines[-1][len("FUZZ-SUMMARY "):])
    assert summary["cases"] == count
    summary["rerun"] = rerun
    return summary
