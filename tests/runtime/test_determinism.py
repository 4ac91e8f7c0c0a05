"""Deterministic mode (``fastrnn.set_deterministic``): results bitwise identical for any thread
count, and still right.

Without it, the kernels' own work is already thread-count independent, but the BLAS library's
products are not (measured at 1, 2 and 3 threads: the input gradient of a GRU at B = 3, and every
output of a batch-1 LSTM with H = 512 that runs its steps on GEMV). In the mode, csrc/cpu/blas.h
cuts every product into a fixed grid of 256 x 512 blocks computed by single-threaded BLAS calls.
The sizes below make each product span several blocks in each direction (T*B > 256 rows; I, G*H
> 512 columns) and leave partial edge blocks, for every path that calls BLAS: the separate input
projection (B < 8), the fused one (B >= 8; only the backward GEMMs then), batch-1 GEMV steps, and
LSTM with a projection (per-step BLAS products).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import functional, reference
from conftest import (THREAD_PATH_CASES as CASES, THREAD_PATH_IDS as IDS, GRAD_NAMES as GRADS,
                      assert_close, assert_same_bits, make_layer_inputs, random_lengths)



def _layer(backend, case, dtype, seed):
    mode, T, B, I, H, P = case
    a = make_layer_inputs(mode, T, B, I, H, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 1)
    R = P or H
    weight_hr = None
    if P:
        weight_hr = rng.uniform(-0.2, 0.2, (P, H)).astype(dtype)
        a["h0"] = a["h0"][:, :P].copy()
        a["weight_hh"] = rng.uniform(-0.1, 0.1, (4 * H, P)).astype(dtype)
    lengths = random_lengths(rng, T, B)
    y, h_n, c_n, state = backend.layer_forward(
        mode, a["x"], a["h0"], a["c0"], a["weight_ih"], a["weight_hh"], a["bias_ih"],
        a["bias_hh"], weight_hr=weight_hr, lengths=lengths, reverse=seed % 2 == 1)
    dy = rng.standard_normal((T, B, R)).astype(dtype)
    dh_n = rng.standard_normal((B, R)).astype(dtype)
    grads = backend.layer_backward(state, dy, dh_n)
    return {"y": y, "h_n": h_n, "c_n": c_n, **{"d" + k: grads[k] for k in GRADS}}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bitwise_identical_across_thread_counts(case, restore_settings):
    fastrnn.set_deterministic(True)
    runs = {}
    for threads in (1, 2, 3):
        fastrnn.set_num_threads(threads)
        runs[threads] = _layer(functional, case, np.float32, seed=7)
    assert_same_bits(runs)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("threads", [1, 3])
def test_matches_reference(case, threads, restore_settings):
    """The blocked products compute the same thing (float64 against the NumPy reference)."""
    fastrnn.set_deterministic(True)
    fastrnn.set_num_threads(threads)
    got = _layer(functional, case, np.float64, seed=4)
    want = _layer(reference, case, np.float64, seed=4)
    for name in got:
        assert_close(got[name], want[name], np.float64, name)


def test_module_training_step_is_identical(restore_settings):
    """Through the module API: a 2-layer bidirectional GRU, forward and backward."""
    fastrnn.set_deterministic(True)
    x = np.random.default_rng(0).standard_normal((30, 10, 300)).astype(np.float32)
    results = []
    for threads in (1, 2):
        fastrnn.set_num_threads(threads)
        gru = fastrnn.GRU(300, 200, num_layers=2, bidirectional=True, seed=3)
        y, h_n = gru(x)
        grads = gru.backward(np.ones_like(y), np.ones_like(h_n))
        results.append((y, h_n, grads))
    (y1, h1, g1), (y2, h2, g2) = results
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(h1, h2)
    for name in g1:
        np.testing.assert_array_equal(g1[name], g2[name], err_msg=name)


def test_setting(restore_settings):
    if os.environ.get("FASTRNN_DETERMINISTIC", "") in ("", "0"):
        assert fastrnn.get_deterministic() is False  # the default
    fastrnn.set_deterministic(True)
    assert fastrnn.get_deterministic() is True
    assert fastrnn.build_info()["deterministic"] is True
    fastrnn.set_num_threads(3)  # keeps the mode
    assert fastrnn.get_deterministic() is True and fastrnn.get_num_threads() == 3
    fastrnn.set_deterministic(np.bool_(False))
    assert fastrnn.get_deterministic() is False
    for bad in (1, "yes", None):
        with pytest.raises(TypeError, match="enabled: expected a bool"):
            fastrnn.set_deterministic(bad)


@pytest.mark.parametrize("value, expected", [("1", "True"), ("0", "False"), ("", "False"),
                                             ("yes", "False")])
def test_environment_variable(value, expected):
    env = dict(os.environ, FASTRNN_DETERMINISTIC=value)
    out = subprocess.run([sys.executable, "-c",
                          "import fastrnn; print(fastrnn.get_deterministic())"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
    assert ("is not 0 or 1; ignored" in out.stderr) == (value == "yes")


def test_torch_adapter_is_identical_across_thread_counts(restore_settings):
    """fastrnn.torch modules run the same core calls (with torch's thread count)."""
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ftorch

    fastrnn.set_deterministic(True)
    torch_threads = torch.get_num_threads()
    x = torch.randn(25, 11, 300, generator=torch.Generator().manual_seed(0))
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.manual_seed(5)
            lstm = ftorch.LSTM(300, 150, num_layers=2)
            xi = x.clone().requires_grad_()
            y, (h_n, c_n) = lstm(xi)
            (y.sum() + h_n.sum()).backward()
            results.append([y.detach(), xi.grad] + [p.grad for p in lstm.parameters()])
    finally:
        torch.set_num_threads(torch_threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)
