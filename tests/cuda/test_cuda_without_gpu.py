"""fastrnn's CUDA backend: what a machine without a GPU can check: the build contains the backend
when it should, ``import fastrnn`` does not load it, its size arithmetic, and clean errors
without a device.

Shared helpers, the tolerances (from tests/conftest.py) and the fixtures live in cuda_helpers.py;
GPU tests are marked ``cuda`` and skip with one reason where no GPU can run them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastrnn
from fastrnn import functional
from cuda_helpers import (  # noqa: F401 (fixtures are used by name)
    ALGOS, assert_rel_close, CELL_CODES, DTYPE_CODES, DTYPES, _host_inputs, ITEMSIZE, MODES,
    no_gpu, torch,
)


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
