"""Threads, determinism and concurrent calls."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastrnn


@pytest.fixture
def restore_threads():
    before = fastrnn.get_num_threads()
    yield
    fastrnn.set_num_threads(before)


def _train_step(model, x, lengths):
    y, state = model(x, lengths=lengths)
    return y, model.backward(np.ones_like(y))


def test_set_and_get_num_threads(restore_threads):
    fastrnn.set_num_threads(1)
    assert fastrnn.get_num_threads() == 1
    assert fastrnn.build_info()["num_threads"] == 1
    fastrnn.set_num_threads(2)
    assert fastrnn.get_num_threads() == 2
    for bad, exc in ((0, ValueError), (-3, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(exc, match="^n:"):
            fastrnn.set_num_threads(bad)


@pytest.mark.parametrize("count", ["1", "3"])
def test_omp_num_threads_is_honoured(count):
    env = dict(os.environ, OMP_NUM_THREADS=count)
    env.pop("OPENBLAS_NUM_THREADS", None)
    code = ("import fastrnn, numpy as np; print(fastrnn.get_num_threads()); "
            "y, _ = fastrnn.GRU(8, 300, seed=0).eval()(np.ones((4, 2, 8), np.float32)); "
            "assert np.isfinite(y).all()")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == count


@pytest.mark.parametrize("threads", [1, 2])
def test_repeated_calls_are_bitwise_identical(threads, restore_threads):
    fastrnn.set_num_threads(threads)
    rng = np.random.default_rng(0)
    model = fastrnn.LSTM(24, 40, num_layers=2, bidirectional=True, seed=0)
    x = rng.standard_normal((30, 9, 24)).astype(np.float32)
    lengths = rng.integers(1, 31, 9)
    y0, g0 = _train_step(model, x, lengths)
    for _ in range(3):
        y, g = _train_step(model, x, lengths)
        np.testing.assert_array_equal(y, y0)
        for name in g0:
            np.testing.assert_array_equal(g[name], g0[name], err_msg=name)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_concurrent_calls_match_serial_calls(cell):
    """The GIL is released in the core; eight threads at once give the serial results exactly."""
    rng = np.random.default_rng(1)
    jobs = []
    for k in range(8):
        model = getattr(fastrnn, cell)(6, 11, num_layers=2, bidirectional=k % 2 == 0,
                                       dtype=np.float64, seed=k)
        x = rng.standard_normal((17, 4, 6))
        jobs.append((model, x, rng.integers(1, 18, 4)))
    serial = [_train_step(m, x, lengths) for m, x, lengths in jobs]
    results = [None] * len(jobs)
    errors = []

    def work(i):
        try:
            m, x, lengths = jobs[i]
            for _ in range(5):
                results[i] = _train_step(m, x, lengths)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (y, g), (ys, gs) in zip(results, serial):
        np.testing.assert_array_equal(y, ys)
        for name in gs:
            np.testing.assert_array_equal(g[name], gs[name], err_msg=name)


def _blas_config(env_updates):
    env = dict(os.environ)
    for name, value in env_updates.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    code = ("import os, fastrnn; print(fastrnn.build_info()['blas_config']); "
            "print(os.environ.get('OPENBLAS_CORETYPE'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    config, coretype = out.stdout.strip().splitlines()
    return config, coretype


def test_openblas_coretype_meant_for_other_blas_copies_is_ignored():
    """OPENBLAS_CORETYPE (set for NumPy's OpenBLAS) does not lower fastrnn's own copy, and stays
    set for the rest of the process; FASTRNN_OPENBLAS_CORETYPE chooses fastrnn's kernel."""
    best, _ = _blas_config({"OPENBLAS_CORETYPE": None, "FASTRNN_OPENBLAS_CORETYPE": None})
    config, coretype = _blas_config({"OPENBLAS_CORETYPE": "Haswell",
                                     "FASTRNN_OPENBLAS_CORETYPE": None})
    assert config == best and coretype == "Haswell"
    forced, _ = _blas_config({"OPENBLAS_CORETYPE": None, "FASTRNN_OPENBLAS_CORETYPE": "Haswell"})
    assert "(kernel: Haswell)" in forced
