"""Subnormal numbers: fastrnn's CPU work flushes them to zero (FTZ/DAZ), on every thread.

Subnormal (denormal) values -- magnitudes below 2**-126 ~ 1.2e-38 in float32, 2**-1022 ~ 2.2e-308
in float64 -- among the inputs, the weights or any intermediate result count as zero in fastrnn's
CPU computations: the floating-point unit runs with flush-to-zero and denormals-are-zero on
every thread that does fastrnn's float work while it does it (the calling thread, the
recurrence's team, the threads that run the BLAS library's jobs, deterministic mode's blocks
and the bias gradients' column sums; csrc/cpu/denormals.h). Subnormal arithmetic is ~100x slower
on x86 and carries nothing an RNN needs. The NumPy reference does not flush, so the two differ by
at most a subnormal's magnitude times the weights it meets (~1e-36 in float32 at ordinary weight
scales): results agree with the reference within the usual float32/float64 tolerances
(conftest.TOLERANCES, "subnormals_f32"/"subnormals_f64").

What this checks:

- every thread flushes: with subnormal inputs (and h0 = 0, no bias) every layer's output and the
  input-weight gradient are exactly zero, at 1, 2 and 3 threads, in both modes, on fastrnn's own
  threads and on an OpenMP runtime's (a thread that did not flush would leave ~1e-36 there);
- deterministic mode stays bitwise identical at 1, 2 and 3 threads with subnormal inputs and
  weights (which thread computes which block must not decide whether a value is flushed);
- against the reference, within the documented tolerance.

The shapes are test_determinism.py's: every product spans several of deterministic mode's blocks
and the BLAS library's own split, and every path that calls BLAS is covered (separate and fused
input projection, batch-1 GEMV steps, LSTM with a projection).
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastrnn
from fastrnn import functional, reference
from conftest import (THREAD_PATH_CASES as CASES, THREAD_PATH_IDS as IDS, GRAD_NAMES as GRADS,
                      assert_close, assert_same_bits, make_layer_inputs, random_lengths)

# About 1e-39 (float32) and 1e-310 (float64): subnormal with room to spare, either sign.
SUBNORMAL = {np.float32: 1e-39, np.float64: 1e-310}


def _subnormals(rng, shape, dtype):
    """Subnormal values of either sign, magnitudes in [1, 2) x SUBNORMAL[dtype]."""
    values = SUBNORMAL[dtype] * rng.uniform(1.0, 2.0, shape) * rng.choice((-1.0, 1.0), shape)
    values = values.astype(dtype)
    assert np.all(values != 0) and np.all(np.abs(values) < np.finfo(dtype).tiny)
    return values


def _sprinkle(rng, a, dtype, fraction=0.3):
    """A copy of `a` with about `fraction` of its entries replaced by subnormal values."""
    out = a.copy()
    where = rng.random(a.shape) < fraction
    out[where] = _subnormals(rng, a.shape, dtype)[where]
    return out


def _projection_inputs(a, rng, case, dtype):
    mode, T, B, I, H, P = case
    if not P:
        return None
    a["h0"] = a["h0"][:, :P].copy()
    a["weight_hh"] = rng.uniform(-0.1, 0.1, (4 * H, P)).astype(dtype)
    return rng.uniform(-0.2, 0.2, (P, H)).astype(dtype)


def _run(case, a, weight_hr, lengths, dy, dh_n, backend=functional, reverse=False):
    mode = case[0]
    y, h_n, c_n, state = backend.layer_forward(
        mode, a["x"], a["h0"], a["c0"], a["weight_ih"], a["weight_hh"], a["bias_ih"],
        a["bias_hh"], weight_hr=weight_hr, lengths=lengths, reverse=reverse)
    grads = backend.layer_backward(state, dy, dh_n)
    return {"y": y, "h_n": h_n, "c_n": c_n, **{"d" + k: grads[k] for k in GRADS}}


def _large(rng, shape, dtype):
    """Input weights up to 100 in magnitude: W_ih times a subnormal x is then a normal number
    (~1e-36 in float32) unless the thread that computes it flushes x to zero. (W_hh keeps its
    ordinary scale, or the gradients would overflow over the sequence.)"""
    return rng.uniform(-100.0, 100.0, shape).astype(dtype)


def _all_subnormal_inputs(case, dtype, seed=0):
    """x entirely subnormal, h0 = c0 = 0, no bias, W_ih large enough (|w| up to 100) that a
    product of x with it is a normal number unless x is flushed: then every output is exactly
    0 (tanh(0) = relu(0) = 0; an LSTM's c and h and a GRU's n and h stay 0) and so is dW_ih."""
    mode, T, B, I, H, P = case
    rng = np.random.default_rng(seed)
    a = make_layer_inputs(mode, T, B, I, H, bias=False, dtype=dtype, seed=seed)
    a["weight_ih"] = _large(rng, a["weight_ih"].shape, dtype)
    a["x"] = _subnormals(rng, (T, B, I), dtype)
    a["h0"] = np.zeros_like(a["h0"])
    if a["c0"] is not None:
        a["c0"] = np.zeros_like(a["c0"])
    weight_hr = _projection_inputs(a, rng, case, dtype)
    R = P or H
    dy = rng.standard_normal((T, B, R)).astype(dtype)
    dh_n = rng.standard_normal((B, R)).astype(dtype)
    return a, weight_hr, dy, dh_n


def start_threads_without_flushing():
    """Start fastrnn's pool threads from a thread that does not flush (a bandwidth probe, as the
    benchmark runs): a thread inherits its creator's floating-point mode, so threads first
    started inside a fastrnn call would flush whether or not each piece of work sets the mode.
    Threads started elsewhere (by a probe, or by torch for its own work) must flush too."""
    threads = fastrnn.get_num_threads()
    fastrnn.set_num_threads(3)
    fastrnn._core.measure_read_gbs(1 << 16, 1)
    fastrnn.set_num_threads(threads)


def _assert_flushed(got, label):
    for name in ("y", "h_n", "c_n", "dweight_ih"):
        if got[name] is not None:
            nonzero = int(np.count_nonzero(got[name]))
            assert nonzero == 0, (f"{label}: {name} has {nonzero} nonzero entries (largest "
                                  f"{np.abs(got[name]).max():.3e}): a thread did not flush")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("deterministic", [False, True], ids=["default", "deterministic"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_subnormal_inputs_count_as_zero_on_every_thread(case, deterministic, dtype,
                                                        restore_settings):
    start_threads_without_flushing()
    fastrnn.set_deterministic(deterministic)
    a, weight_hr, dy, dh_n = _all_subnormal_inputs(case, dtype)
    for threads in (1, 2, 3):
        fastrnn.set_num_threads(threads)
        got = _run(case, a, weight_hr, None, dy, dh_n)
        _assert_flushed(got, f"{threads} threads")


def _mixed_inputs(case, dtype, seed):
    """Subnormal and normal values together: half the batch rows of x entirely subnormal (with
    the large W_ih of _all_subnormal_inputs, so that whether they are flushed shows), the other
    rows and h0, c0 and the weights with about 30% subnormal entries; lengths."""
    mode, T, B, I, H, P = case
    rng = np.random.default_rng(seed)
    a = make_layer_inputs(mode, T, B, I, H, bias=False, dtype=dtype, seed=seed)
    a["weight_ih"] = _large(rng, a["weight_ih"].shape, dtype)
    a["x"] = _sprinkle(rng, a["x"], dtype)
    a["x"][:, : (B + 1) // 2] = _subnormals(rng, (T, (B + 1) // 2, I), dtype)
    for name in ("h0", "c0", "weight_ih", "weight_hh"):
        if a[name] is not None:
            a[name] = _sprinkle(rng, a[name], dtype)
    weight_hr = _projection_inputs(a, rng, case, dtype)
    if weight_hr is not None:
        weight_hr = _sprinkle(rng, weight_hr, dtype)
    R = P or H
    dy = _sprinkle(rng, rng.standard_normal((T, B, R)).astype(dtype), dtype)
    dh_n = rng.standard_normal((B, R)).astype(dtype)
    return a, weight_hr, random_lengths(rng, T, B), dy, dh_n


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_deterministic_mode_is_bitwise_identical_with_subnormals(case, dtype, restore_settings):
    start_threads_without_flushing()
    fastrnn.set_deterministic(True)
    a, weight_hr, lengths, dy, dh_n = _mixed_inputs(case, dtype, seed=7)
    runs = {}
    for threads in (1, 2, 3):
        fastrnn.set_num_threads(threads)
        runs[threads] = _run(case, a, weight_hr, lengths, dy, dh_n, reverse=True)
    assert_same_bits(runs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_subnormal_data_matches_the_reference(case, dtype, restore_settings):
    """Ordinary data (make_layer_inputs' scales, with biases) with ~30% subnormal entries in
    every input and weight, against the NumPy reference (float64, which keeps the subnormals)."""
    mode, T, B, I, H, P = case
    fastrnn.set_num_threads(2)
    rng = np.random.default_rng(11)
    a = make_layer_inputs(mode, T, B, I, H, dtype=dtype, seed=11)
    a = {k: None if v is None else _sprinkle(rng, v, dtype) for k, v in a.items()}
    weight_hr = _projection_inputs(a, rng, case, dtype)
    if weight_hr is not None:
        weight_hr = _sprinkle(rng, weight_hr, dtype)
    R = P or H
    dy = _sprinkle(rng, rng.standard_normal((T, B, R)).astype(dtype), dtype)
    dh_n = _sprinkle(rng, rng.standard_normal((B, R)).astype(dtype), dtype)
    lengths = random_lengths(rng, T, B)
    got = _run(case, a, weight_hr, lengths, dy, dh_n)
    wide = {k: None if v is None else v.astype(np.float64) for k, v in a.items()}
    want = _run(case, wide, None if weight_hr is None else weight_hr.astype(np.float64),
                lengths, dy.astype(np.float64), dh_n.astype(np.float64), backend=reference)
    key = "subnormals_f32" if dtype == np.float32 else "subnormals_f64"
    for name in got:
        assert_close(got[name], want[name], dtype, name, tolerance_key=key)


def test_openmp_runtime_threads_flush_too():
    """The same as test_subnormal_inputs_count_as_zero_on_every_thread with fastrnn's threads on
    torch's OpenMP runtime (run_threads_on_openmp), in a process of its own, after torch has
    started that runtime's threads for its own work."""
    pytest.importorskip("torch")
    code = textwrap.dedent("""
        import os, sys
        import torch
        import numpy as np
        import fastrnn
        from fastrnn import _core
        sys.path.insert(0, {tests!r})
        sys.path.insert(0, {here!r})
        import test_subnormals as t
        with open("/proc/self/maps") as maps:
            paths = sorted({{line.split(None, 5)[5].strip() for line in maps
                             if len(line.split(None, 5)) == 6
                             and os.path.basename(line.split(None, 5)[5]).startswith("libgomp")}})
        if not paths:
            print("SKIP: torch has no libgomp here")
            raise SystemExit(0)
        _core.run_threads_on_openmp(paths[0])
        assert fastrnn.build_info()["thread_pool"].startswith("OpenMP"), fastrnn.build_info()
        torch.set_num_threads(3)
        torch.ones(1 << 22).sum()  # torch's pool threads, started outside fastrnn
        for deterministic in (False, True):
            fastrnn.set_deterministic(deterministic)
            for case in t.CASES[:3]:
                a, weight_hr, dy, dh_n = t._all_subnormal_inputs(case, np.float32)
                for threads in (2, 3):
                    fastrnn.set_num_threads(threads)
                    got = t._run(case, a, weight_hr, None, dy, dh_n)
                    t._assert_flushed(got, f"{{case}}, {{threads}} OpenMP threads")
        print("OK")
    """).format(tests=os.path.dirname(os.path.dirname(__file__)), here=os.path.dirname(__file__))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    if out.stdout.strip().startswith("SKIP"):
        pytest.skip(out.stdout.strip())
    assert out.stdout.strip().endswith("OK"), out.stdout + out.stderr
