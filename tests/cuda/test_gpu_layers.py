"""fastrnn's CUDA backend: the functional API on CUDA arrays against the float64 reference, and
poisoned buffers (every output and gradient element is written). GPU tests.

Shared helpers, the tolerances (from tests/conftest.py) and the fixtures live in cuda_helpers.py;
GPU tests are marked ``cuda`` and skip with one reason where no GPU can run them.
"""
from __future__ import annotations

import pytest

import fastrnn
from fastrnn import functional
from cuda_helpers import (  # noqa: F401 (fixtures are used by name)
    _all_finite,
    ALGOS, assert_rel_close, CELL_CODES, DTYPE_CODES, DTYPES, gpu, _gpu_forward, GRAD_NAMES,
    _host64, _host_inputs, MODES, PERSISTENT_MAX_BATCH, poison, _run_layer, _seed, tf32_on,
    _to_device, _true_float32, torch,
)


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


@gpu
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("algo", ["standard", "persistent"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_layer_with_resets_matches_reference(mode, dtype, algo, reverse):
    # a state reset mask (fastrnn.reference has the same rule), on the device or the host
    _run_layer(mode, dtype, (7, 5, 4, 9), reverse=reverse, lengths_kind="mixed", algo=algo,
               resets_kind="random", resets_on_device=dtype != "float16",
               check_training_free=dtype == "float32",
               seed=_seed("resets", mode, dtype, algo, reverse))


@gpu
@pytest.mark.parametrize("algo", ["standard", "persistent"])
@pytest.mark.parametrize("mode", MODES)
def test_layer_with_no_resets_is_bitwise_the_same_as_without(mode, algo):
    T, B, I, H = 6, 3, 4, 7
    d = {k: _to_device(v, "float32") for k, v in _host_inputs(mode, T, B, I, H).items()}
    runs = []
    for resets in (None, torch.zeros((T, B), dtype=torch.bool, device="cuda")):
        y, h_n, c_n, state = _gpu_forward(mode, d, lengths=[6, 2, 5], reverse=False, algo=algo,
                                          resets=resets)
        dy = torch.linspace(-1, 1, y.numel(), device="cuda").reshape(y.shape)
        g = functional.layer_backward(state, dy)
        runs.append([y, h_n, c_n] + [g[k] for k in GRAD_NAMES])
    for a, b in zip(*runs):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b)


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


