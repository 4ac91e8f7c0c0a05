"""fastrnn's CUDA backend: the DLPack path (arrays that only speak ``__dlpack__``; CuPy when
installed), errors, and streams. GPU tests.

Shared helpers, the tolerances (from tests/conftest.py) and the fixtures live in cuda_helpers.py;
GPU tests are marked ``cuda`` and skip with one reason where no GPU can run them.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import functional
from cuda_helpers import (  # noqa: F401 (fixtures are used by name)
    _late_copy_on,
    assert_rel_close, DTYPES, gpu, _gpu_forward, GRAD_NAMES, _host64, _host_inputs, _run_layer,
    _seed, _to_device, TORCH_DTYPES, _true_float32, torch,
)


# ---------------------------------------------------------------------------------------------

class _DLPackOnly:
    """An array that speaks only DLPack (like a library fastrnn does not know)."""

    def __init__(self, tensor):
        self._tensor = tensor.detach()

    def __dlpack__(self, *args, **kwargs):
        return self._tensor.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._tensor.__dlpack_device__()


def _wrap(d):
    return {k: None if v is None else _DLPackOnly(v) for k, v in d.items()}


@gpu
@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dlpack_arrays_give_device_arrays(mode, dtype):
    from fastrnn import _cuda
    T, B, I, H = 6, 3, 5, 8
    run = _run_layer(mode, dtype, (T, B, I, H), reverse=True, lengths_kind="mixed", algo="auto",
                     seed=_seed("dlpack", mode, dtype))
    y, h_n, c_n, state = _gpu_forward(mode, _wrap(run["inputs"]), lengths=run["lengths"],
                                      reverse=True, algo="auto")
    for name, out, want in zip(("y", "h_n", "c_n"), (y, h_n, c_n), run["outputs"]):
        if want is None:
            assert out is None
            continue
        assert isinstance(out, _cuda.DeviceArray), (name, type(out))
        assert out.__dlpack_device__() == (2, torch.cuda.current_device())
        t = torch.from_dlpack(out)
        assert t.is_cuda and t.dtype == TORCH_DTYPES[dtype] and t.shape == want.shape
        assert_rel_close(t, _host64(want), dtype, "output", f"dlpack {name}")
    og = run["output_grads"]
    g = functional.layer_backward(state, _DLPackOnly(og["dy"]), _DLPackOnly(og["dh_n"]),
                                  _DLPackOnly(og["dc_n"]) if og["dc_n"] is not None else None)
    for name in GRAD_NAMES:
        want = run["grads"][name]
        if want is None:
            assert g[name] is None, name
            continue
        assert isinstance(g[name], _cuda.DeviceArray), (name, type(g[name]))
        t = torch.from_dlpack(g[name])
        assert t.dtype == TORCH_DTYPES[dtype] and t.shape == want.shape, name
        assert_rel_close(t, _host64(want), dtype, "grad", f"dlpack d{name}")


@gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cupy_arrays_give_cupy_arrays(dtype):
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (the CuPy path is tested "
                                              "only where it is)")
    mode, T, B, I, H = "lstm", 5, 3, 4, 6
    run = _run_layer(mode, dtype, (T, B, I, H), reverse=False, lengths_kind="mixed",
                     algo="auto", seed=_seed("cupy", dtype))
    c = {k: None if v is None else cupy.from_dlpack(v.detach())
         for k, v in run["inputs"].items()}
    torch.cuda.synchronize()
    y, h_n, c_n, state = _gpu_forward(mode, c, lengths=run["lengths"], reverse=False,
                                      algo="auto")
    for name, out, want in zip(("y", "h_n", "c_n"), (y, h_n, c_n), run["outputs"]):
        assert isinstance(out, cupy.ndarray), (name, type(out))
        assert_rel_close(cupy.asnumpy(out).astype(np.float64), _host64(want), dtype, "output",
                         f"cupy {name}")
    og = {k: None if v is None else cupy.from_dlpack(v) for k, v in run["output_grads"].items()}
    g = functional.layer_backward(state, og["dy"], og["dh_n"], og["dc_n"])
    cupy.cuda.get_current_stream().synchronize()
    for name in GRAD_NAMES:
        want = run["grads"][name]
        if want is None:
            assert g[name] is None
            continue
        assert isinstance(g[name], cupy.ndarray), (name, type(g[name]))
        assert_rel_close(cupy.asnumpy(g[name]).astype(np.float64), _host64(want), dtype, "grad",
                         f"cupy d{name}")


# ---------------------------------------------------------------------------------------------
# GPU: errors
# ---------------------------------------------------------------------------------------------

def _small(mode="lstm", dtype="float32", T=4, B=3, I=5, H=6):
    return {k: _to_device(v, dtype) for k, v in _host_inputs(mode, T, B, I, H, seed=1).items()}


def _call(mode, d, **kw):
    kw.setdefault("lengths", None)
    kw.setdefault("reverse", False)
    kw.setdefault("algo", "auto")
    return _gpu_forward(mode, d, **kw)


@gpu
def test_errors_mixed_devices():
    d = _small()
    for name in ("h0", "c0", "weight_ih", "weight_hh", "bias_hh"):
        bad = dict(d, **{name: d[name].cpu()})
        with pytest.raises(TypeError, match=name):
            _call("lstm", bad)
        bad = dict(d, **{name: d[name].cpu().numpy()})
        with pytest.raises(TypeError, match=name):
            _call("lstm", bad)
    if torch.cuda.device_count() >= 2:
        bad = dict(d, h0=d["h0"].to("cuda:1"))
        with pytest.raises(ValueError, match="h0"):
            _call("lstm", bad)


@gpu
def test_errors_dtypes():
    d = _small()
    for name in ("h0", "weight_hh", "bias_ih"):
        bad = dict(d, **{name: d[name].half()})
        with pytest.raises(fastrnn.DtypeError, match=name):
            _call("lstm", bad)
    with pytest.raises(fastrnn.DtypeError, match="x"):
        _call("lstm", {k: None if v is None else v.double() for k, v in d.items()})
    *_, state = _call("lstm", d)
    T, B, H = 4, 3, 6
    with pytest.raises(fastrnn.DtypeError, match="dy"):
        functional.layer_backward(state, torch.ones(T, B, H, device="cuda", dtype=torch.half))


@gpu
def test_errors_shapes():
    d = _small()
    T, B, I, H = 4, 3, 5, 6
    cases = {
        "h0": torch.ones(B + 1, H, device="cuda"),
        "c0": torch.ones(B, H + 1, device="cuda"),
        "weight_ih": torch.ones(4 * H, I + 1, device="cuda"),
        "weight_hh": torch.ones(4 * H + 1, H, device="cuda"),
        "bias_ih": torch.ones(4 * H - 1, device="cuda"),
        "x": torch.ones(T, B, device="cuda"),
    }
    for name, value in cases.items():
        with pytest.raises(ValueError, match=name):
            _call("lstm", dict(d, **{name: value}))
    with pytest.raises(ValueError, match="bias"):
        _call("lstm", dict(d, bias_hh=None))
    with pytest.raises(ValueError, match="c0"):
        _call("lstm", dict(d, c0=None))
    g = _small("gru")
    with pytest.raises(ValueError, match="c0"):
        _call("gru", dict(g, c0=torch.ones(B, H, device="cuda")))
    with pytest.raises(ValueError, match="weight_hr"):
        _call("gru", dict(g, weight_hr=torch.ones(3, H, device="cuda")))
    *_, state = _call("lstm", d)
    with pytest.raises(ValueError, match="dy"):
        functional.layer_backward(state, torch.ones(T, B + 1, H, device="cuda"))
    with pytest.raises(ValueError, match="dh_n"):
        functional.layer_backward(state, torch.ones(T, B, H, device="cuda"),
                                  torch.ones(B, H + 1, device="cuda"))
    *_, gstate = _call("gru", g)
    with pytest.raises(ValueError, match="dc_n"):
        functional.layer_backward(gstate, torch.ones(T, B, H, device="cuda"),
                                  torch.ones(B, H, device="cuda"),
                                  torch.ones(B, H, device="cuda"))
    with pytest.raises(TypeError, match="state"):
        functional.layer_backward(None, torch.ones(T, B, H, device="cuda"))


@gpu
def test_errors_algo_and_lengths():
    d = _small()
    T = 4
    for algo in ("bogus", "fast", "", "Standard"):
        with pytest.raises(ValueError, match="algo"):
            _call("lstm", d, algo=algo)
    for bad in ([0, 1, 2], [1, 2, T + 1], [-1, 2, 3]):
        with pytest.raises(fastrnn.LengthsError, match="lengths"):
            _call("lstm", d, lengths=np.array(bad, dtype=np.int64))
    with pytest.raises(fastrnn.LengthsError, match="lengths"):
        _call("lstm", d, lengths=np.array([1, 2], dtype=np.int64))
    with pytest.raises(fastrnn.LengthsError, match="lengths"):
        _call("lstm", d, lengths=np.array([1.0, 2.0, 3.0]))
    with pytest.raises(fastrnn.LengthsError, match="lengths"):
        _call("lstm", d, lengths=torch.tensor([1, 2, T + 1], device="cuda"))
    # lengths as a CUDA tensor, a CPU tensor or a list: the same results as NumPy lengths
    want = _call("lstm", d, lengths=np.array([2, T, 1]))
    for lengths in (torch.tensor([2, T, 1], device="cuda"), torch.tensor([2, T, 1]), [2, T, 1]):
        got = _call("lstm", d, lengths=lengths)
        for name, g, w in zip(("y", "h_n", "c_n"), got[:3], want[:3]):
            assert_rel_close(g, _host64(w), "float32", "output", f"lengths {type(lengths)} {name}")


@gpu
@pytest.mark.parametrize("algo", ["standard", "persistent"])
def test_non_contiguous_inputs(algo):
    """Strided torch tensors are made contiguous: the same results as contiguous copies."""
    mode, T, B, I, H = "gru", 5, 3, 4, 6
    d = _small(mode, T=T, B=B, I=I, H=H)
    strided = dict(d)
    strided["x"] = d["x"].transpose(0, 1).contiguous().transpose(0, 1)   # batch-first storage
    strided["weight_ih"] = d["weight_ih"].t().contiguous().t()
    strided["h0"] = torch.stack([d["h0"], d["h0"]], 2)[:, :, 0]           # every other element
    strided["bias_hh"] = torch.stack([d["bias_hh"], d["bias_hh"]], 1)[:, 1]
    assert not any(strided[k].is_contiguous() for k in ("x", "weight_ih", "h0", "bias_hh"))
    want = _call(mode, d, algo=algo)
    got = _call(mode, strided, algo=algo)
    for name, g, w in zip(("y", "h_n"), got[:2], want[:2]):
        assert_rel_close(g, _host64(w), "float32", "output", f"strided {name}")
    dy = torch.randn(B, T, H, device="cuda").transpose(0, 1)  # non-contiguous dy too
    gw = functional.layer_backward(want[3], dy.contiguous())
    gg = functional.layer_backward(got[3], dy)
    for name in GRAD_NAMES:
        assert_rel_close(gg[name], _host64(gw[name]), "float32", "grad", f"strided d{name}")


# ---------------------------------------------------------------------------------------------
# GPU: streams
# ---------------------------------------------------------------------------------------------



@gpu
@pytest.mark.parametrize("algo", ["standard", "persistent"])
def test_functional_runs_on_current_stream(algo):
    mode, T, B, I, H = "lstm", 12, 4, 16, 32
    host = _host_inputs(mode, T, B, I, H, seed=5)
    d = {k: _to_device(v, "float32") for k, v in host.items()}
    lengths = np.array([T, 3, 1, 7])
    dy = torch.randn(T, B, H, device="cuda")
    y0, h0, c0, s0 = _gpu_forward(mode, d, lengths=lengths, reverse=True, algo=algo)
    g0 = functional.layer_backward(s0, dy)
    torch.cuda.synchronize()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    ds = {k: None if v is None else _late_copy_on(side, v) for k, v in d.items()}
    dys = _late_copy_on(side, dy)
    with torch.cuda.stream(side):
        y1, h1, c1, s1 = _gpu_forward(mode, ds, lengths=lengths, reverse=True, algo=algo)
        g1 = functional.layer_backward(s1, dys)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    for name, a, b in zip(("y", "h_n", "c_n"), (y1, h1, c1), (y0, h0, c0)):
        assert_rel_close(a, _host64(b), "float32", "output", f"side stream {name}")
    for name in GRAD_NAMES:
        assert_rel_close(g1[name], _host64(g0[name]), "float32", "grad", f"side stream d{name}")


