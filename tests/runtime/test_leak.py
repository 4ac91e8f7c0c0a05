"""Memory: thousands of forward + backward calls (and calls that raise) leave resident memory flat.

Each workload runs in a fresh interpreter (this file run as a script), so the measurement sees
nothing of pytest or of the other tests, and a crash fails the test with its output. There it

1. runs the workload's warm-up calls (caches, allocator pools, per-thread scratch, lazy imports
   and first-call paths settle; torch needs ~1500 calls before its RSS stops moving), collects
   garbage and reads the resident set size (RSS) from /proc/self/statm;
2. makes the measured calls, reading RSS 16 times along the way, and collects garbage;
3. reports the growth from the first reading to the last, the trend (the median growth between
   two successive readings, times 16: a leak grows RSS at every step, while the allocator's
   one-off jumps, a new arena or thread stack, land in one or two steps), the change in the number
   of objects the garbage collector tracks, in the reference counts of the arrays every call
   reads (a reference leaked on an object that lives on shows in no RSS reading, so it is counted
   exactly), and in the number of threads of the process.

Every call gets fresh input arrays (and returns fresh outputs), so a reference leaked on any of
them keeps its buffer and header (some hundreds of bytes) alive per call.

Workloads: the module API (LSTM with proj_size 2 layers bidirectional, GRU batch_first float64,
RNN relu; lengths), the functional API (all four cells, float32 and float64, lengths, reverse,
dh_n/dc_n), the error paths (every exception the core translates: DtypeError, ValueError for
shapes and a missing c0, LengthsError for a value and for a dtype, the backward's reserve check,
MemoryError from the memory check, set_num_threads(0); the Python checks; backward after an
eval-mode forward and a second backward, all RuntimeError), fastrnn.torch forward + backward
(padded, batch_first float64, packed), fastrnn.torch's error paths (backward through outputs of a
forward under torch.inference_mode() or torch.no_grad(), input torch.nn refuses), and threads
that each make one call and end (the core's per-thread scratch, 80-95 KB here, must go with the
thread), on fastrnn's own pool and on torch's OpenMP pool.

Bounds, from measurements. Six runs of every workload on two busy cores (load average ~4), RSS
growth from the first reading to the last after warm-up, KiB:

    module_api       0 0 0 0 0 0          (20000 calls)
    functional_api   0 0 0 0 0 0          (20000 calls)
    error_paths      0 4 4 4 0 4          (20000 calls)
    torch_api        24 12 8 8 12 8       (8000 calls, after 2000 warm-up calls; after 300, up
                                           to 460 KiB in the first ~1500 calls, then flat)
    torch_error_paths 0 0 0 0 0 0         (8000 calls)
    short_lived_threads             88 0 0 68 228 472   (2000 threads; trend 0 in every run;
                                                         14 more runs: 0 to 1020)
    short_lived_threads_torch_pool  0 88 140 464 76 348 (2000 threads; trend 0 in every run)

so the call workloads get 512 KiB (a leak of 26 bytes per call fails over 20000 calls, of 66
bytes over 8000; 100 bytes per call gives 2 MB and 800 KB), and the thread workloads a trend
bound of 256 KiB (128 bytes per thread) and a total bound of 4 MiB (one-off jumps of up to
~1 MiB were seen; a lost scratch alone would be 160 MB). Checked by injecting leaks: a 105-byte object kept per call grew RSS by
2.2 MB over 20000 functional-API or error-path calls, and a 129-byte one per thread gave a trend of
288 KiB over 2000 threads; both fail.

Needs Linux (/proc/self/statm). Skipped under AddressSanitizer, whose quarantine keeps freed
memory resident.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

# name: (warm-up calls, measured calls, bound on the RSS growth over the measured calls, bound on
# the trend: the median growth between two successive readings times the number of intervals)
PLAN = {
    "module_api": (1000, 20000, 512 << 10, 512 << 10),
    "functional_api": (1000, 20000, 512 << 10, 512 << 10),
    "error_paths": (1000, 20000, 512 << 10, 512 << 10),
    "short_lived_threads": (400, 2000, 4 << 20, 256 << 10),
    "torch_api": (2000, 8000, 512 << 10, 512 << 10),
    "torch_error_paths": (1000, 8000, 512 << 10, 512 << 10),
    "short_lived_threads_torch_pool": (400, 2000, 4 << 20, 256 << 10),
}
CHECKPOINTS = 16                # RSS readings over the measured calls
GC_OBJECTS_BOUND = 50           # objects the garbage collector may gain over the measured calls
SANITIZED = "asan" in os.environ.get("LD_PRELOAD", "")


# ---------------------------------------------------------------------------------------------
# Measurement (in the child)
# ---------------------------------------------------------------------------------------------

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _threads_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1


def _measure(step, watched, calls, warmup):
    """Run step() warmup times, then `calls` times with RSS readings; return the numbers."""
    for _ in range(warmup):
        step()
    gc.collect()
    # By index: a zip() over `watched` would hold a reference of its own while counting.
    refs0 = [sys.getrefcount(watched[i]) for i in range(len(watched))]
    objects0 = len(gc.get_objects())
    threads0 = _threads_now()  # after the warm-up: pools are started by then
    readings = [_rss_bytes()]
    every = max(1, calls // CHECKPOINTS)
    t0 = time.perf_counter()
    for i in range(1, calls + 1):
        step()
        if i % every == 0:
            if i == calls:
                gc.collect()
            readings.append(_rss_bytes())
    seconds = time.perf_counter() - t0
    gc.collect()
    return {
        "calls": calls,
        "growth": readings[-1] - readings[0],
        "peak_above_first": max(readings) - readings[0],
        "readings_kib": [r // 1024 for r in readings],
        "gc_objects": len(gc.get_objects()) - objects0,
        "refcount_changes": [sys.getrefcount(watched[i]) - refs0[i] for i in range(len(watched))],
        "threads_left": _threads_now() - threads0,
        "seconds": round(seconds, 2),
    }


# ---------------------------------------------------------------------------------------------
# Workloads (in the child). Each returns (step, watched objects).
# ---------------------------------------------------------------------------------------------

def _rng():
    return np.random.default_rng(0)


def _module_api():
    import fastrnn

    modules = [
        (fastrnn.LSTM(6, 12, num_layers=2, bidirectional=True, proj_size=5, seed=0), np.float32),
        (fastrnn.GRU(6, 10, batch_first=True, dtype=np.float64, seed=1), np.float64),
        (fastrnn.RNN(6, 9, nonlinearity="relu", seed=2), np.float32),
    ]
    base = _rng().standard_normal((5, 3, 6))
    lengths = np.array([5, 2, 4])
    state = {"k": 0}

    def step():
        module, dtype = modules[state["k"] % len(modules)]
        state["k"] += 1
        x = base.astype(dtype)  # fresh every call
        if module.batch_first:
            x = np.ascontiguousarray(x.transpose(1, 0, 2))
        y, _ = module(x, lengths=lengths)
        g = module.backward(np.ones_like(y))
        assert g["input"].shape == x.shape

    watched = [m.params[n] for m, _ in modules for n in m.params] + [lengths]
    return step, watched


def _functional_api():
    from fastrnn import functional as F

    rng = _rng()
    T, B, I, H = 6, 4, 5, 8
    layers = []
    for mode, G in (("rnn_tanh", 1), ("rnn_relu", 1), ("lstm", 4), ("gru", 3)):
        for dtype in (np.float32, np.float64):
            w = {k: rng.uniform(-0.3, 0.3, shape).astype(dtype) for k, shape in
                 (("weight_ih", (G * H, I)), ("weight_hh", (G * H, H)), ("bias_ih", (G * H,)),
                  ("bias_hh", (G * H,)), ("h0", (B, H)), ("c0", (B, H)))}
            if mode != "lstm":
                w["c0"] = None
            layers.append((mode, dtype, w))
    base = rng.standard_normal((T, B, I))
    lengths = np.array([6, 1, 3, 5])
    state = {"k": 0}

    def step():
        mode, dtype, w = layers[state["k"] % len(layers)]
        state["k"] += 1
        x = base.astype(dtype)
        y, h_n, c_n, st = F.layer_forward(mode, x, w["h0"], w["c0"], w["weight_ih"],
                                          w["weight_hh"], w["bias_ih"], w["bias_hh"],
                                          lengths=lengths, reverse=state["k"] % 2 == 0)
        g = F.layer_backward(st, np.ones_like(y), np.ones_like(h_n),
                             None if c_n is None else np.ones_like(c_n))
        assert g["input"].shape == x.shape

    watched = [a for _, _, w in layers for a in w.values() if a is not None] + [lengths]
    return step, watched


def _torch_api():
    import torch
    import fastrnn.torch as ft
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(0)
    modules = [ft.LSTM(6, 12, num_layers=2, bidirectional=True, proj_size=5),
               ft.GRU(6, 10, batch_first=True).double(),
               ft.RNN(6, 9, nonlinearity="relu")]
    base = torch.randn(5, 3, 6)
    lengths = torch.tensor([5, 2, 4])
    state = {"k": 0}

    def step():
        k = state["k"] % len(modules)
        state["k"] += 1
        module = modules[k]
        module.zero_grad(set_to_none=True)
        x = base.clone().double() if k == 1 else base.clone()
        x.requires_grad_(True)
        if k == 2:
            y, _ = module(pack_padded_sequence(x, lengths, enforce_sorted=False))
            y = y.data
        else:
            y, _ = module(x)
        y.sum().backward()
        assert x.grad is not None

    watched = [p for m in modules for p in m.parameters()] + [lengths]
    return step, watched


def _error_paths():
    """Calls that raise, from every layer: the core's argument checks (each kind of exception
    it translates), its memory check, the Python checks, backward without a saved forward."""
    import fastrnn
    from fastrnn import _core, functional as F

    rng = _rng()
    T, B, I, H = 5, 3, 4, 6
    w32 = {k: rng.uniform(-0.3, 0.3, s).astype(np.float32) for k, s in
           (("w_ih", (4 * H, I)), ("w_hh", (4 * H, H)), ("b", (4 * H,)), ("h0", (B, H)))}
    w64 = {k: v.astype(np.float64) for k, v in w32.items()}
    base = rng.standard_normal((T, B, I))
    good_lengths = np.array([5, 1, 3])
    bad_lengths = np.array([5, 0, 3])
    lstm = fastrnn.LSTM(I, H, seed=0)
    frozen = fastrnn.GRU(I, H, seed=0).eval()

    # A call the memory check refuses before allocating: LSTM with proj_size 1, so the weights
    # are small while the saved state (T * B * H * ...) is far beyond any machine.
    big_H, big_T, big_B = 1 << 18, 10000, 64
    huge = {"x": np.zeros((big_T, big_B, 1), np.float32), "h0": np.zeros((big_B, 1), np.float32),
            "c0": np.zeros((big_B, big_H), np.float32),
            "w_ih": np.zeros((4 * big_H, 1), np.float32),
            "w_hh": np.zeros((4 * big_H, 1), np.float32),
            "w_hr": np.zeros((1, big_H), np.float32)}
    huge_bytes = 4 * _core.reserve_size(2, big_T, big_B, 1, big_H, 1)
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    memory_case = huge_bytes > 4 * physical  # else (a machine with > 1/4 of it): left out

    y_good, _, _, state_good = F.layer_forward("lstm", base.astype(np.float32), w32["h0"],
                                               w32["h0"], w32["w_ih"], w32["w_hh"], w32["b"],
                                               w32["b"])
    reserve = state_good.reserve

    def expect(exc, fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
        except exc:
            return
        raise AssertionError(f"{fn.__name__} did not raise {exc.__name__}")

    def second_backward(x):
        lstm(x)
        lstm.backward(np.ones((T, B, H), np.float32))
        expect(RuntimeError, lstm.backward, np.ones((T, B, H), np.float32))

    cases = [
        # the core (C++): dtype, shape, lengths value, lengths dtype, c0 missing, backward reserve
        lambda x: expect(fastrnn.DtypeError, _core.layer_forward, 2, x, w64["h0"], w64["h0"],
                         w64["w_ih"], w64["w_hh"], w64["b"], w64["b"], None, None, False, True),
        lambda x: expect(ValueError, _core.layer_forward, 2, x, w32["h0"][:2], w32["h0"],
                         w32["w_ih"], w32["w_hh"], w32["b"], w32["b"], None, None, False, True),
        lambda x: expect(fastrnn.LengthsError, _core.layer_forward, 2, x, w32["h0"], w32["h0"],
                         w32["w_ih"], w32["w_hh"], w32["b"], w32["b"], None, bad_lengths, False,
                         True),
        lambda x: expect(fastrnn.LengthsError, _core.layer_forward, 2, x, w32["h0"], w32["h0"],
                         w32["w_ih"], w32["w_hh"], w32["b"], w32["b"], None,
                         good_lengths.astype(np.int32), False, True),
        lambda x: expect(ValueError, _core.layer_forward, 2, x, w32["h0"], None, w32["w_ih"],
                         w32["w_hh"], w32["b"], w32["b"], None, None, False, True),
        lambda x: expect(ValueError, _core.layer_backward, 2, x, w32["h0"], w32["h0"],
                         w32["w_ih"], w32["w_hh"], w32["b"], w32["b"], None, None, False,
                         reserve[:-1], np.ones_like(y_good), None, None),
        lambda x: expect(ValueError, _core.set_num_threads, 0),
        # the Python layers
        lambda x: expect(fastrnn.LengthsError, F.layer_forward, "lstm", x, w32["h0"], w32["h0"],
                         w32["w_ih"], w32["w_hh"], w32["b"], w32["b"], lengths=bad_lengths),
        lambda x: expect(ValueError, F.layer_forward, "lstn", x, w32["h0"], w32["h0"],
                         w32["w_ih"], w32["w_hh"], w32["b"], w32["b"]),
        lambda x: expect(TypeError, F.layer_backward, None, np.ones_like(y_good)),
        lambda x: expect(fastrnn.DtypeError, lstm, x.astype(np.float64)),
        lambda x: expect(ValueError, lstm, x[:, :, :2]),
        # backward after an inference-mode (eval) forward, and a second backward
        lambda x: (frozen(x),
                   expect(RuntimeError, frozen.backward, np.ones((T, B, H), np.float32))),
        second_backward,
    ]
    if memory_case:
        cases.append(lambda x: expect(MemoryError, _core.layer_forward, 2, huge["x"], huge["h0"],
                                      huge["c0"], huge["w_ih"], huge["w_hh"], None, None,
                                      huge["w_hr"], None, False, True))
    state = {"k": 0}

    def step():
        case = cases[state["k"] % len(cases)]
        state["k"] += 1
        case(base.astype(np.float32))  # fresh input every call

    watched = list(w32.values()) + list(w64.values()) + [good_lengths, bad_lengths, reserve]
    watched += list(huge.values()) + [fastrnn.DtypeError, fastrnn.LengthsError]
    return step, watched


def _torch_error_paths():
    """fastrnn.torch: backward through outputs of a forward under torch.inference_mode() and
    under torch.no_grad() (nothing saved: both raise), and input torch.nn refuses."""
    import torch
    import fastrnn.torch as ft

    torch.manual_seed(0)
    lstm = ft.LSTM(4, 6)
    base = torch.randn(5, 3, 4)
    state = {"k": 0}

    def expect_raise(fn):
        try:
            fn()
        except RuntimeError:
            return
        raise AssertionError("no RuntimeError")

    def inference_then_backward():
        with torch.inference_mode():
            y, _ = lstm(base.clone())
        expect_raise(lambda: y.sum().backward())

    def no_grad_then_backward():
        with torch.no_grad():
            y, _ = lstm(base.clone().requires_grad_(True))
        expect_raise(lambda: y.sum().backward())

    def bad_input():
        expect_raise(lambda: lstm(base.clone()[:, :, :3]))

    cases = [inference_then_backward, no_grad_then_backward, bad_input]

    def step():
        cases[state["k"] % len(cases)]()
        state["k"] += 1

    return step, list(lstm.parameters())


def _short_lived_threads(torch_pool: bool):
    """Threads that each make one forward + backward and end. The core keeps each thread's
    scratch (here 80-95 KB: packed weights and workspace) for that thread's next call; it must go
    when the thread ends, and so must, on torch's OpenMP pool, the thread's OpenMP team. (The same
    with fastrnn.torch modules grows RSS by ~250 bytes per thread here, as much as with
    torch.nn's own modules: torch's per-thread state, not fastrnn's.)"""
    import fastrnn

    if torch_pool:
        import fastrnn.torch  # noqa: F401  (moves fastrnn's work onto torch's OpenMP pool)
        assert fastrnn.build_info()["thread_pool"].startswith("OpenMP")
    gru = fastrnn.GRU(16, 64, seed=0)
    base = _rng().standard_normal((10, 4, 16))
    errors = []

    def one_call():
        try:
            y, _ = gru(base.astype(np.float32))
            gru.backward(np.ones_like(y))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    def step():
        t = threading.Thread(target=one_call)
        t.start()
        t.join()
        assert not errors, errors

    return step, [gru.params[n] for n in gru.params]


WORKLOADS = {
    "module_api": _module_api,
    "functional_api": _functional_api,
    "error_paths": _error_paths,
    "short_lived_threads": lambda: _short_lived_threads(torch_pool=False),
    "torch_api": _torch_api,
    "torch_error_paths": _torch_error_paths,
    "short_lived_threads_torch_pool": lambda: _short_lived_threads(torch_pool=True),
}


def child(names):
    import fastrnn

    fastrnn.set_num_threads(2)  # the team and BLAS jobs run on other threads too
    results = {}
    for name in names:
        warmup, calls, _, _ = PLAN[name]
        step, watched = WORKLOADS[name]()
        results[name] = _measure(step, watched, calls=calls, warmup=warmup)
    print("RESULTS " + json.dumps(results))


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                       reason="reads resident memory from /proc/self/statm (Linux only)"),
    pytest.mark.skipif(SANITIZED, reason="AddressSanitizer's quarantine keeps freed memory "
                                         "resident: RSS cannot show a leak there"),
]

NUMPY_WORKLOADS = ["module_api", "functional_api", "error_paths", "short_lived_threads"]
TORCH_WORKLOADS = ["torch_api", "torch_error_paths", "short_lived_threads_torch_pool"]


def _run_child(names):
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *names], capture_output=True,
                          text=True, env=env, cwd=HERE, timeout=300)
    assert proc.returncode == 0, (f"child exited with {proc.returncode}"
                                  f"{' (killed by a signal)' if proc.returncode < 0 else ''}\n"
                                  f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-20000:]}")
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULTS "))
    return json.loads(line[len("RESULTS "):])


@pytest.fixture(scope="module")
def numpy_results():
    return _run_child(NUMPY_WORKLOADS)


@pytest.fixture(scope="module")
def torch_results():
    pytest.importorskip("torch")
    return _run_child(TORCH_WORKLOADS)


def _check(name, r):
    print(f"{name}: {r}")
    _, calls, bound, trend_bound = PLAN[name]
    steps = np.diff(np.array(r["readings_kib"]) * 1024)
    trend = float(np.median(steps)) * len(steps)
    assert r["growth"] <= bound, (
        f"{name}: RSS grew by {r['growth']} bytes over {calls} calls "
        f"({r['growth'] / calls:.0f} bytes per call; bound {bound}); readings (KiB): "
        f"{r['readings_kib']}")
    assert trend <= trend_bound, (
        f"{name}: RSS grows steadily: median step {trend / len(steps):.0f} bytes per "
        f"{calls // len(steps)} calls ({trend / calls:.0f} bytes per call; bound "
        f"{trend_bound / calls:.0f}); readings (KiB): {r['readings_kib']}")
    assert r["gc_objects"] <= GC_OBJECTS_BOUND, (
        f"{name}: {r['gc_objects']} more objects tracked by the garbage collector after "
        f"{calls} calls")
    assert not any(r["refcount_changes"]), (
        f"{name}: reference counts of arrays every call reads changed: {r['refcount_changes']}")
    assert r["threads_left"] <= 0, f"{name}: {r['threads_left']} more threads than before"


@pytest.mark.parametrize("name", NUMPY_WORKLOADS)
def test_no_growth_numpy(numpy_results, name):
    _check(name, numpy_results[name])


@pytest.mark.parametrize("name", TORCH_WORKLOADS)
def test_no_growth_torch(torch_results, name):
    _check(name, torch_results[name])


if __name__ == "__main__":
    child(sys.argv[1:])
