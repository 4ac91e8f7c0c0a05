"""The team-parallel recurrence (csrc/cpu/recurrence.h) at sizes where it splits the hidden units
across several threads, against the NumPy reference, and across thread counts.

The sizes in test_core_vs_reference.py are small enough that most run on one thread. Here H is
large enough for every thread count to get work (several tile groups per thread, and a partial
last group: H = 100 and the prime 257 are not multiples of the 16-unit panels), and B covers
both forward paths: B < 8 reads a separately computed input projection, B >= 8 computes it
inside the tiles; B = 13 and 64 also leave partial row tiles. Long enough sequences run backward
in several chunks.
"""
import zlib

import numpy as np
import pytest

import fastrnn
from fastrnn import functional, reference
from conftest import assert_close, make_layer_inputs, random_lengths

from fastrnn._cells import MODES  # noqa: E402
GRADS = ("input", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh")
# (T, B, I, H)
# The last two run backward in several chunks of steps (layer_impl.h: backward_chunk_steps),
# the last chunk shorter, with an odd number of steps.
# At batch 1 with more than 2^19 recurrent weights, a short sequence runs forward step by step
# through BLAS GEMV and a long one on the team (layer_impl.h: forward_uses_team): (5, 1, 7, 520)
# and (130, 1, 3, 520) check both for LSTM and GRU.
SIZES = [(4, 1, 9, 257), (3, 7, 33, 100), (3, 8, 17, 100), (3, 13, 20, 257), (2, 64, 8, 129),
         (91, 13, 5, 40), (37, 64, 4, 33), (5, 1, 7, 520), (130, 1, 3, 520)]


@pytest.fixture
def threads():
    """Restores the thread count after a test that changes it."""
    before = fastrnn.get_num_threads()
    yield
    fastrnn.set_num_threads(before)


def _run(backend, mode, a, lengths, reverse, dy, dh_n):
    y, h_n, c_n, state = backend.layer_forward(
        mode, a["x"], a["h0"], a["c0"], a["weight_ih"], a["weight_hh"], a["bias_ih"],
        a["bias_hh"], lengths=lengths, reverse=reverse)
    grads = backend.layer_backward(state, dy, dh_n)
    y_eval, h_eval, _, _ = backend.layer_forward(
        mode, a["x"], a["h0"], a["c0"], a["weight_ih"], a["weight_hh"], a["bias_ih"],
        a["bias_hh"], lengths=lengths, reverse=reverse, training=False)
    out = {"y": y, "h_n": h_n, "c_n": c_n, "y_inference": y_eval, "h_n_inference": h_eval}
    out.update({"d" + k: grads[k] for k in GRADS})
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("size", SIZES, ids=["T%dB%dI%dH%d" % s for s in SIZES])
@pytest.mark.parametrize("mode", MODES)
def test_team_matches_reference(mode, size, dtype, threads):
    T, B, I, H = size
    seed = zlib.crc32(f"{mode}{size}".encode()) % 1000
    a = make_layer_inputs(mode, T, B, I, H, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)
    lengths = random_lengths(rng, T, B) if B > 1 else None
    reverse = bool(seed % 2)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    dh_n = rng.standard_normal((B, H)).astype(dtype)
    want = _run(reference, mode, make_layer_inputs(mode, T, B, I, H, seed=seed), lengths,
                reverse, dy.astype(np.float64), dh_n.astype(np.float64))
    for n in (1, 2, 3):
        fastrnn.set_num_threads(n)
        got = _run(functional, mode, a, lengths, reverse, dy, dh_n)
        for name, value in got.items():
            if want[name] is None:
                assert value is None, name
                continue
            assert_close(value, want[name], dtype, f"{mode} {size} threads={n} {name}")


@pytest.mark.parametrize("mode", MODES)
def test_recurrence_is_bitwise_independent_of_thread_count(mode, threads):
    """Threads split hidden units, never a sum: every output and state gradient is bitwise the same
    for 1, 2 and 3 threads. (dx, dW and db come from BLAS GEMMs over all steps, whose summation
    order OpenBLAS may choose by thread count; docs/threads.md says so.)"""
    T, B, I, H = 5, 13, 24, 257
    a = make_layer_inputs(mode, T, B, I, H, dtype=np.float32, seed=3)
    rng = np.random.default_rng(4)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    dh_n = rng.standard_normal((B, H)).astype(np.float32)
    results = []
    for n in (1, 2, 3):
        fastrnn.set_num_threads(n)
        results.append(_run(functional, mode, a, None, False, dy, dh_n))
    for name in ("y", "h_n", "c_n", "y_inference", "dh0", "dc0"):
        if results[0][name] is None:
            continue
        for other in results[1:]:
            assert np.array_equal(results[0][name], other[name]), name
