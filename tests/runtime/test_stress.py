"""Thread stress: many Python threads calling fastrnn at once get exactly the serial results.

The core releases the GIL around its native work, so calls from several Python threads really run
at the same time and meet in the shared machinery: the process-wide thread pool (one caller at a
time gets the team, the others run alone), OpenBLAS (one copy of the library for the process, its
parallel jobs handed to fastrnn's threads through its threads callback), the per-thread scratch
buffers, the thread count (``set_num_threads``) and, after ``import fastrnn.torch``, torch's OpenMP
runtime in place of the pool. ``tests/test_runtime.py::test_concurrent_calls_match_serial_calls``
covers 8 threads on one small module each; this file pushes further:

* 12 threads at once, each looping over the same mix of calls (every cell, float32 and float64,
  lengths, reverse, no bias, ``proj_size``, batch 1..33, hidden 3..400, the functional API and
  multi-layer bidirectional modules) large enough to run the multi-threaded team recurrence, the
  fused input projection, the BLAS GEMMs and GEMVs and the per-step BLAS paths, and small ones
  that never leave the calling thread. Every result of every call (outputs, final states, every
  gradient) is compared with the serial result bit for bit, not only the last one.
* The same with another thread changing ``fastrnn.set_num_threads`` (1, 2, 3) the whole time.
* ``fastrnn.torch`` modules in threads (forward + autograd backward), next to NumPy-API calls, on
  torch's OpenMP pool, compared bit for bit with serial runs.
* The smallest mix that gave wrong results when this file was written, on its own: batch-1 calls
  whose steps run as BLAS GEMVs next to calls running BLAS GEMMs (OpenBLAS 0.3.34's threaded
  GEMV and GEMM, both handed to the threads callback from two threads at once, corrupt each
  other's results; the same happens in plain C with any callback that runs every job on a thread
  of its own, and not when the callback runs one call's jobs at a time).

Why the thread count is held fixed for the bitwise comparisons: the recurrence is bitwise the same
for any thread count (threads split the hidden units, never a sum), and a caller that finds the
pool busy runs its team alone and hands OpenBLAS's jobs to threads of their own (the split stays
OpenBLAS's, by its thread count), so at one thread count every call must give the serial bits,
whatever the other threads do. But OpenBLAS itself picks a different blocking of the summed
dimension for some GEMMs with one thread than with several (docs/threads.md),
so while the count changes under a call, results that pass through a GEMM may
differ in the last bits: the churn test compares those with a tolerance (conftest's TOLERANCES,
meant for summation-order differences), and asserts bitwise equality only where no BLAS call is
involved (the forward of batch >= 8 without projection: input projection and recurrence both run
in fastrnn's own kernels), plus bitwise equality of a serial re-run at the fixed count afterwards.

Each scenario runs in a fresh interpreter (this file run as a script): a crash or a deadlock in
one thread then fails the test with its output (and a timeout) instead of taking pytest down, and
which thread pool runs the calls does not depend on whether another test file imported
``fastrnn.torch`` first. The whole file takes 25-35 s on two busy cores (load average 4).
"""
from __future__ import annotations

import copy
import itertools
import os
import subprocess
import sys
import threading
import time
import traceback

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

# Under the AddressSanitizer build (.ci/run preloads the runtime) everything runs several times
# slower: fewer rounds there, same coverage.
SANITIZED = "asan" in os.environ.get("LD_PRELOAD", "")
ROUNDS = 2 if SANITIZED else 4          # passes over the job list per worker thread
TORCH_ROUNDS = 1 if SANITIZED else 2    # the same with the torch jobs added
WORKERS = 12                            # Python threads calling fastrnn at once
FIXED_THREADS = 2                       # fastrnn.set_num_threads for the bitwise scenarios
SCENARIO_TIMEOUT_S = 600 if SANITIZED else 180   # a deadlock fails the test after this

# ---------------------------------------------------------------------------------------------
# The calls: one layer through fastrnn.functional, or a whole module through fastrnn.RNN/LSTM/GRU.
# Sizes are chosen to reach each code path (csrc/cpu/layer_impl.h, recurrence.h):
#   B >= 8, no projection: the team recurrence with the input projection fused (no BLAS forward);
#   B < 8: one BLAS GEMM for the input projection; backward: BLAS GEMMs for dx, dW_ih, dW_hh;
#   proj_size: the per-step BLAS path; B = 1 with W_hh over 2^19 weights and T < 128: per-step GEMV;
#   H >= ~100 with enough work per step: more than one team member; tiny sizes: one member.
# ---------------------------------------------------------------------------------------------
from fastrnn._cells import num_gates  # noqa: E402

# (mode, T, B, I, H, P, dtype, reverse, with lengths, bias)
LAYER_JOBS = [
    ("lstm", 8, 16, 64, 256, 0, np.float32, False, True, True),
    ("gru", 6, 33, 96, 257, 0, np.float64, True, True, True),
    ("rnn_relu", 16, 1, 48, 96, 0, np.float32, True, False, True),
    ("rnn_tanh", 20, 5, 30, 128, 0, np.float64, False, True, True),
    ("lstm", 9, 7, 40, 130, 64, np.float32, True, True, True),
    ("lstm", 8, 1, 32, 400, 0, np.float32, False, False, True),
    ("gru", 6, 3, 5, 9, 0, np.float64, False, True, True),
    ("lstm", 4, 2, 3, 4, 0, np.float32, True, False, False),
    ("rnn_tanh", 3, 2, 2, 3, 0, np.float64, True, True, True),
    ("rnn_relu", 7, 9, 11, 100, 0, np.float64, True, True, False),
]

# (class name, constructor kwargs, T, B, with lengths)
MODULE_JOBS = [
    ("LSTM", dict(input_size=24, hidden_size=100, num_layers=2, bidirectional=True,
                  batch_first=True, dtype=np.float64), 11, 9, True),
    ("GRU", dict(input_size=16, hidden_size=96, num_layers=2, bidirectional=True,
                 dtype=np.float32), 8, 4, True),
    ("RNN", dict(input_size=10, hidden_size=120, num_layers=3, nonlinearity="relu",
                 dtype=np.float32), 10, 12, False),
    ("LSTM", dict(input_size=20, hidden_size=80, proj_size=30, num_layers=2, bidirectional=True,
                  dtype=np.float32), 7, 6, True),
]


def _layer_job(index):
    """A callable running forward + backward of LAYER_JOBS[index]; returns [(name, array)]."""
    import fastrnn.functional as F

    mode, T, B, I, H, P, dtype, reverse, with_lengths, bias = LAYER_JOBS[index]
    rng = np.random.default_rng(100 + index)
    R, GH, k = P or H, num_gates(mode) * H, 1.0 / np.sqrt(H)

    def arr(*shape, scale=1.0):
        return (scale * rng.uniform(-1, 1, shape)).astype(dtype)

    x, h0 = arr(T, B, I), arr(B, R, scale=0.5)
    c0 = arr(B, H, scale=0.5) if mode == "lstm" else None
    w_ih, w_hh = arr(GH, I, scale=k), arr(GH, R, scale=k)
    b_ih, b_hh = (arr(GH, scale=k), arr(GH, scale=k)) if bias else (None, None)
    w_hr = arr(P, H, scale=k) if P else None
    lengths = rng.integers(1, T + 1, B) if with_lengths else None
    dy, dh_n = arr(T, B, R), arr(B, R)
    dc_n = arr(B, H) if mode == "lstm" else None

    def run():
        y, h_n, c_n, state = F.layer_forward(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                             weight_hr=w_hr, lengths=lengths, reverse=reverse,
                                             training=True)
        g = F.layer_backward(state, dy, dh_n, dc_n)
        return [("y", y), ("h_n", h_n), ("c_n", c_n)] + sorted(g.items())

    # Forward outputs that involve no BLAS call: bitwise across thread counts too.
    blas_free_forward = B >= 8 and P == 0
    return run, dtype, blas_free_forward


def _module_job(index):
    """A factory of callables running MODULE_JOBS[index] on a module of their own (a module keeps
    its last forward for backward, so it must not be shared between threads)."""
    import fastrnn

    cls_name, kwargs, T, B, with_lengths = MODULE_JOBS[index]
    dtype = kwargs["dtype"]
    template = getattr(fastrnn, cls_name)(seed=200 + index, **kwargs)
    rng = np.random.default_rng(300 + index)
    I = kwargs["input_size"]
    shape = (B, T, I) if kwargs.get("batch_first") else (T, B, I)
    x = rng.standard_normal(shape).astype(dtype)
    lengths = rng.integers(1, T + 1, B) if with_lengths else None
    y_probe, _ = copy.deepcopy(template).eval()(x, lengths=lengths)
    dy = rng.standard_normal(y_probe.shape).astype(dtype)

    def make_runner():
        module = copy.deepcopy(template)

        def run():
            y, state = module(x, lengths=lengths)
            states = state if isinstance(state, tuple) else (state,)
            g = module.backward(dy)
            return ([("y", y)] + [(f"state{i}", s) for i, s in enumerate(states)]
                    + sorted(g.items()))
        return run

    blas_free_forward = False  # modules concatenate layers; not used for the churn exemption
    return make_runner, dtype, blas_free_forward


def _numpy_jobs():
    """[(label, make_runner, dtype, blas_free_forward)] for every LAYER_JOB and MODULE_JOB."""
    jobs = []
    for i in range(len(LAYER_JOBS)):
        run, dtype, free = _layer_job(i)
        jobs.append((f"layer{i}:{LAYER_JOBS[i][0]}", (lambda run=run: run), dtype, free))
    for i in range(len(MODULE_JOBS)):
        make_runner, dtype, free = _module_job(i)
        jobs.append((f"module{i}:{MODULE_JOBS[i][0]}", make_runner, dtype, free))
    return jobs


# ---------------------------------------------------------------------------------------------
# fastrnn.torch jobs: forward + autograd backward of a weighted sum of every output.
# ---------------------------------------------------------------------------------------------

def _torch_jobs():
    import torch
    import fastrnn.torch as ft
    from torch.nn.utils.rnn import pack_padded_sequence

    specs = [  # (class, kwargs, dtype, T, B, form)
        ("LSTM", dict(input_size=16, hidden_size=96, num_layers=2, bidirectional=True,
                      batch_first=True), torch.float32, 6, 5, "batch_first"),
        ("GRU", dict(input_size=12, hidden_size=130), torch.float64, 5, 17, "hx"),
        ("RNN", dict(input_size=8, hidden_size=257, nonlinearity="relu"), torch.float32, 4, 1,
         "unbatched"),
        ("LSTM", dict(input_size=10, hidden_size=64, proj_size=24), torch.float64, 8, 6,
         "packed"),
        ("LSTM", dict(input_size=3, hidden_size=4, num_layers=2), torch.float32, 3, 2, "padded"),
    ]
    jobs = []
    for index, (cls_name, kwargs, dtype, T, B, form) in enumerate(specs):
        torch.manual_seed(400 + index)
        template = getattr(ft, cls_name)(dtype=dtype, **kwargs)
        g = torch.Generator().manual_seed(500 + index)
        x0 = torch.randn(T, B, kwargs["input_size"], generator=g, dtype=dtype)
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T
        D = 2 if kwargs.get("bidirectional") else 1
        L = kwargs.get("num_layers", 1)
        R = kwargs.get("proj_size", 0) or kwargs["hidden_size"]
        h0 = torch.randn(L * D, B, R, generator=g, dtype=dtype)
        weights = torch.randn(3, T * B * D * R + L * D * B * kwargs["hidden_size"], generator=g,
                              dtype=dtype)

        def make_runner(template=template, x0=x0, lengths=lengths, h0=h0, weights=weights,
                        form=form):
            module = copy.deepcopy(template)

            def run():
                module.zero_grad(set_to_none=True)
                x = x0.clone().requires_grad_(True)
                hx = None
                if form == "batch_first":
                    inp = x.transpose(0, 1)
                elif form == "unbatched":
                    inp = x[:, 0]
                elif form == "packed":
                    inp = pack_padded_sequence(x, lengths, enforce_sorted=False)
                else:
                    inp = x
                if form == "hx":
                    hx = h0.clone().requires_grad_(True)
                y, state = module(inp, hx)
                y = y.data if form == "packed" else y
                outs = (y,) + (state if isinstance(state, tuple) else (state,))
                loss = sum((o * w[:o.numel()].view_as(o)).sum() for o, w in zip(outs, weights))
                loss.backward()
                result = [(f"out{i}", o.detach().numpy().copy()) for i, o in enumerate(outs)]
                result.append(("grad_input", x.grad.numpy().copy()))
                if hx is not None:
                    result.append(("grad_hx", hx.grad.numpy().copy()))
                result += [(f"grad_{n}", p.grad.numpy().copy())
                           for n, p in module.named_parameters()]
                return result
            return run

        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        jobs.append((f"torch{index}:{cls_name}:{form}", make_runner, np_dtype, False))
    return jobs


# ---------------------------------------------------------------------------------------------
# The harness
# ---------------------------------------------------------------------------------------------

def _bits_equal(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _close(actual, expected, dtype) -> bool:
    """conftest's tolerance: |a - e| <= atol * max(1, max|e|) + rtol * |e|."""
    if actual is None or expected is None:
        return actual is None and expected is None
    from conftest import tolerance
    tol = tolerance(dtype)
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    if a.shape != e.shape or not np.all(np.isfinite(a)):
        return False
    scale = max(1.0, float(np.max(np.abs(e)))) if e.size else 1.0
    return bool(np.all(np.abs(a - e) <= tol["atol"] * scale + tol["rtol"] * np.abs(e)))


def _describe(name, got, want):
    if got is None or want is None:
        return f"{name}: got {type(got).__name__}, want {type(want).__name__}"
    if got.shape != want.shape:
        return f"{name}: shape {got.shape} != {want.shape}"
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    return (f"{name}: {int(np.count_nonzero(got != want))} of {got.size} elements differ, "
            f"largest by {float(np.nanmax(diff)):.3e}")


def _serial_references(jobs):
    """One serial run of every job, on the calling thread, with nothing else running."""
    return [make_runner()() for _, make_runner, _, _ in jobs]


def _hammer(jobs, references, *, exact, rounds=ROUNDS, workers=WORKERS, background=None):
    """`workers` threads, each with runners of its own for every job, loop `rounds` times over
    the jobs (each thread in its own order) and compare every result with its reference.

    exact=True: every array bit for bit. exact=False: within conftest's tolerance, and bit for
    bit for a job's forward outputs when the job says they involve no BLAS call.
    `background(stop_event)` runs in one more thread until the workers are done.
    Returns the number of calls made; raises AssertionError listing the mismatches.
    """
    runners = [[make_runner() for _, make_runner, _, _ in jobs] for _ in range(workers)]
    problems, errors, calls, bad_jobs = [], [], [0] * workers, {}
    record = threading.Lock()
    start = threading.Barrier(workers + (background is not None))
    stop = threading.Event()

    def check(w, r, j, result):
        label, _, dtype, blas_free_forward = jobs[j]
        want = references[j]
        if [n for n, _ in result] != [n for n, _ in want]:
            with record:
                bad_jobs[label] = bad_jobs.get(label, 0) + 1
                problems.append(f"{label} thread {w} round {r}: results {[n for n, _ in result]}")
            return
        for (name, got), (_, expected) in zip(result, want):
            bitwise = exact or (blas_free_forward and name in ("y", "h_n", "c_n"))
            ok = _bits_equal(got, expected) if bitwise else _close(got, expected, dtype)
            if not ok:
                with record:
                    bad_jobs[label] = bad_jobs.get(label, 0) + 1
                    if len(problems) < 30:  # the first ones in full; the rest only counted
                        problems.append(f"{label} thread {w} round {r} "
                                        f"({'bitwise' if bitwise else 'tolerance'}): "
                                        f"{_describe(name, got, expected)}")

    def work(w):
        try:
            start.wait()
            rng = np.random.default_rng(w)
            for r in range(rounds):
                for j in rng.permutation(len(jobs)):
                    check(w, r, j, runners[w][j]())
                    calls[w] += 1
        except BaseException:  # noqa: BLE001 - reported below
            errors.append(f"thread {w}:\n{traceback.format_exc()}")

    def run_background():
        try:
            start.wait()
            background(stop)
        except BaseException:  # noqa: BLE001
            errors.append(f"background:\n{traceback.format_exc()}")

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(workers)]
    helper = threading.Thread(target=run_background, daemon=True) if background else None
    for t in threads + ([helper] if helper else []):
        t.start()
    for t in threads:
        t.join()
    stop.set()
    if helper:
        helper.join()
    assert not errors, "\n".join(errors)
    assert not problems, (f"{sum(bad_jobs.values())} arrays differ from the serial results "
                          f"(arrays per job: {bad_jobs}); the first ones:\n"
                          + "\n".join(problems))
    return sum(calls)


def _check_serial_again(jobs, references):
    """A serial re-run still gives the references bit for bit (no state left corrupted)."""
    again = _serial_references(jobs)
    bad = [f"{label}: {_describe(n, g, w)}"
           for (label, _, _, _), result, ref in zip(jobs, again, references)
           for (n, g), (_, w) in zip(result, ref) if not _bits_equal(g, w)]
    assert not bad, "serial re-run differs:\n" + "\n".join(bad)


# ---------------------------------------------------------------------------------------------
# Scenarios (each runs in a fresh interpreter: `python test_stress.py NAME`)
# ---------------------------------------------------------------------------------------------

def scenario_numpy_fixed_threads():
    """fastrnn's own pool (torch never imported), thread count fixed: bitwise."""
    import fastrnn

    assert "torch" not in sys.modules
    fastrnn.set_num_threads(FIXED_THREADS)
    assert fastrnn.build_info()["thread_pool"] == "fastrnn"
    jobs = _numpy_jobs()
    references = _serial_references(jobs)
    t0 = time.perf_counter()
    calls = _hammer(jobs, references, exact=True)
    print(f"{calls} concurrent calls in {time.perf_counter() - t0:.1f} s, all bitwise equal")
    _check_serial_again(jobs, references)


def _thread_count_churn(deterministic):
    """fastrnn's own pool; one more thread sets 1, 3, 2 threads back and forth meanwhile. In
    deterministic mode every result must stay bitwise the serial one; otherwise within
    summation-order tolerance (bitwise where no BLAS is involved)."""
    import fastrnn

    assert "torch" not in sys.modules
    fastrnn.set_deterministic(deterministic)
    fastrnn.set_num_threads(FIXED_THREADS)
    jobs = _numpy_jobs()
    references = _serial_references(jobs)
    changes = [0]

    def churn(stop):
        for n in itertools.cycle((1, 3, 2)):
            if stop.is_set():
                return
            fastrnn.set_num_threads(n)
            assert 1 <= fastrnn.get_num_threads() <= 3
            changes[0] += 1
            time.sleep(0.0005)

    t0 = time.perf_counter()
    calls = _hammer(jobs, references, exact=deterministic, background=churn)
    print(f"{calls} concurrent calls, {changes[0]} thread-count changes, "
          f"{time.perf_counter() - t0:.1f} s")
    assert changes[0] > 10, "the churn thread hardly ran"
    fastrnn.set_num_threads(FIXED_THREADS)
    _check_serial_again(jobs, references)


def scenario_numpy_thread_count_churn():
    _thread_count_churn(deterministic=False)


def scenario_deterministic_thread_count_churn():
    _thread_count_churn(deterministic=True)


def scenario_torch_and_numpy():
    """After `import fastrnn.torch` (torch's OpenMP pool runs fastrnn's work): fastrnn.torch
    modules forward + backward and NumPy-API calls, all at once, bitwise against serial runs."""
    import torch
    import fastrnn
    import fastrnn.torch  # noqa: F401  (moves fastrnn's work onto torch's OpenMP pool)

    torch.set_num_threads(FIXED_THREADS)  # fastrnn.torch follows torch's count
    fastrnn.set_num_threads(FIXED_THREADS)
    pool = fastrnn.build_info()["thread_pool"]
    print("thread pool:", pool)
    jobs = _torch_jobs() + _numpy_jobs()
    references = _serial_references(jobs)
    t0 = time.perf_counter()
    calls = _hammer(jobs, references, exact=True, rounds=TORCH_ROUNDS)
    print(f"{calls} concurrent calls in {time.perf_counter() - t0:.1f} s, all bitwise equal")
    _check_serial_again(jobs, references)


def scenario_gemv_next_to_gemm():
    """A batch-1 LSTM layer whose W_hh holds more than 2^19 weights over a short sequence (its
    steps run as BLAS GEMVs) in two threads, next to two threads running a batch-5 layer (BLAS
    GEMMs only). Each must give its serial bits."""
    import fastrnn

    fastrnn.set_num_threads(FIXED_THREADS)
    gemv = next(i for i, j in enumerate(LAYER_JOBS)
                if j[2] == 1 and num_gates(j[0]) * j[4] ** 2 > 1 << 19 and j[1] < 128)
    gemm = next(i for i, j in enumerate(LAYER_JOBS)
                if 1 < j[2] < 8 and j[5] == 0 and j[4] >= 96)
    jobs = []
    for i in (gemv, gemm):
        run, dtype, free = _layer_job(i)
        jobs.append((f"layer{i}:{LAYER_JOBS[i][0]}", (lambda run=run: run), dtype, free))
    references = _serial_references(jobs)
    calls = _hammer(jobs, references, exact=True, rounds=4 * ROUNDS, workers=4)
    print(f"{calls} concurrent calls, all bitwise equal")


SCENARIOS = {f.__name__[len("scenario_"):]: f for f in (
    scenario_numpy_fixed_threads, scenario_numpy_thread_count_churn,
    scenario_deterministic_thread_count_churn, scenario_torch_and_numpy,
    scenario_gemv_next_to_gemm)}


def _run_scenario(name):
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    env["PYTHONFAULTHANDLER"] = "1"  # a crash prints every thread's Python stack
    cmd = [sys.executable, os.path.abspath(__file__), name]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE,
                              timeout=SCENARIO_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"scenario {name} did not finish in {SCENARIO_TIMEOUT_S} s (deadlock?)\n"
                    f"stdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    print(proc.stdout)
    assert proc.returncode == 0, (f"scenario {name} exited with {proc.returncode}"
                                  f"{' (killed by a signal)' if proc.returncode < 0 else ''}\n"
                                  f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-20000:]}")


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------

def test_threads_match_serial_bitwise_on_fastrnn_pool():
    """12 threads x (10 layer calls + 4 module calls) x 4 rounds at a fixed thread count: every
    output, state and gradient equals the serial result bit for bit."""
    _run_scenario("numpy_fixed_threads")


def test_batch1_gemv_steps_next_to_gemms_match_serial_bitwise():
    """Per-step BLAS GEMVs (batch 1, large W_hh, short sequence) in two threads while two other
    threads run BLAS GEMMs: every result bitwise the serial one."""
    _run_scenario("gemv_next_to_gemm")


def test_threads_with_thread_count_changing_underneath():
    """The same while another thread switches set_num_threads between 1, 2 and 3: results stay
    within summation-order tolerance (bitwise where no BLAS is involved), nothing crashes or
    hangs, and a serial re-run afterwards gives the original bits."""
    _run_scenario("numpy_thread_count_churn")


def test_deterministic_mode_with_thread_count_changing_underneath_is_bitwise():
    """In deterministic mode the thread count changing between and during calls changes no bit:
    every concurrent result equals the serial one exactly."""
    _run_scenario("deterministic_thread_count_churn")


def test_torch_modules_and_numpy_calls_in_threads_match_serial_bitwise():
    """fastrnn.torch modules (padded, batch_first, unbatched, packed, hx, proj_size) forward +
    backward in threads next to NumPy-API calls, on torch's OpenMP pool: bitwise the serial
    results."""
    pytest.importorskip("torch")
    _run_scenario("torch_and_numpy")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(HERE))  # tests/, for conftest's tolerance table
    SCENARIOS[sys.argv[1]]()
