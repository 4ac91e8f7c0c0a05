"""fastrnn.jax's CUDA platform targets: the CUDA backend's XLA FFI handlers in ``fastrnn._cuda``
(csrc/bindings/jax_ffi_cuda.cpp), registered under the names of the CPU core's.

Without a GPU (CI): a CUDA build made with jaxlib present exposes them (the CPU handlers' target
names, as PyCapsules of other handlers, built against the same FFI API version); the float32
reserve of the CUDA layout has the CPU's size in bytes, so one ffi_call's result shapes serve
both platforms, and the half types' sizes are whole elements; registering them with JAX for the
CUDA platform is harmless on a machine without one. Their argument checks are the CPU handlers'
own code (jax_ffi_checks.h), tested through the CPU platform in tests/jax/.

On a GPU (marked ``cuda``; they need fastrnn's CUDA backend and jax with a CUDA plugin):
``fastrnn.jax.layer`` on the GPU against the same on the CPU, every output and gradient, with
int32 lengths (widened on the device), resets and a projection; the raw custom calls in float16
and bfloat16 against the CPU's float32; the errors a GPU call reports.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest

import fastrnn
from fastrnn import _core
from cuda_helpers import CELL_CODES, ITEMSIZE, assert_rel_close

FORWARD, BACKWARD = "fastrnn_layer_forward", "fastrnn_layer_backward"


def _cuda_module():
    """fastrnn._cuda, or a skip saying why it cannot be had here."""
    if not fastrnn.cuda.is_compiled():
        if os.environ.get("FASTRNN_REQUIRE_CUDA_BUILD") == "1":
            pytest.fail("FASTRNN_REQUIRE_CUDA_BUILD=1 but this build has no fastrnn._cuda")
        pytest.skip("this build of fastrnn has no CUDA backend")
    module = fastrnn.cuda._load()
    if module is None:
        pytest.skip(f"fastrnn._cuda does not load here: {fastrnn.cuda.unavailable_reason()}")
    return module


def _capsule_pointer(capsule) -> int:
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get(capsule, None)


def test_cuda_build_exposes_the_jax_targets():
    if not hasattr(_core, "jax_ffi_targets"):
        pytest.skip("fastrnn was built without jaxlib: no XLA FFI handlers on either platform")
    cuda = _cuda_module()
    assert hasattr(cuda, "jax_ffi_targets"), (
        "_core has the XLA FFI handlers but _cuda has not: the CUDA build did not compile "
        "csrc/bindings/jax_ffi_cuda.cpp (CMakeLists.txt, FASTRNN_JAX_FFI on _cuda)")
    cpu_targets, cuda_targets = _core.jax_ffi_targets(), cuda.jax_ffi_targets()
    assert set(cuda_targets) == set(cpu_targets) == {FORWARD, BACKWARD}
    for name, capsule in cuda_targets.items():
        assert type(capsule).__name__ == "PyCapsule", name
        assert _capsule_pointer(capsule), name
        assert _capsule_pointer(capsule) != _capsule_pointer(cpu_targets[name]), name
    assert _capsule_pointer(cuda_targets[FORWARD]) != _capsule_pointer(cuda_targets[BACKWARD])
    assert tuple(cuda.JAX_FFI_API_VERSION) == tuple(_core.JAX_FFI_API_VERSION)
    assert getattr(cuda, "JAX_FFI_BUILT_WITH_JAXLIB", None) == \
        getattr(_core, "JAX_FFI_BUILT_WITH_JAXLIB", None)


@pytest.mark.parametrize("mode", sorted(CELL_CODES))
def test_float32_reserve_is_the_cpu_reserve_in_bytes(mode):
    """The CUDA handlers take a reserve of any element type with reserve_bytes() bytes: for
    float32 the CPU's (float32, reserve_elements()) holds exactly that many, so fastrnn.jax's
    result shapes do not depend on the platform; the half types' widths are whole elements."""
    cuda = _cuda_module()
    cell = CELL_CODES[mode]
    for H in (1, 2, 7, 64):
        for P in ((0, 1, H - 1) if mode == "lstm" and H > 2 else (0,)):
            per_slot, per_step = _core.reserve_widths(cell, H, P)
            assert tuple(cuda.reserve_widths(cell, H, P, 0)) == (4 * per_slot, 4 * per_step), \
                (mode, H, P)
            for code, dtype in ((1, "float16"), (2, "bfloat16")):
                widths = cuda.reserve_widths(cell, H, P, code)
                assert all(w % ITEMSIZE[dtype] == 0 for w in widths), (mode, H, P, dtype)


def test_registering_the_cuda_targets_is_harmless_without_a_gpu():
    """fastrnn.jax registers _cuda's handlers for the CUDA platform where the build has them;
    on a machine without a GPU that changes nothing for the CPU platform."""
    jax = pytest.importorskip("jax")
    fj = pytest.importorskip("fastrnn.jax")
    cuda = _cuda_module()
    if not hasattr(cuda, "jax_ffi_targets"):
        pytest.skip("this CUDA build has no XLA FFI handlers")
    # registering here (fastrnn.jax does it at its first trace where JAX has a GPU): no error
    for name, capsule in cuda.jax_ffi_targets().items():
        jax.ffi.register_ffi_target(name, capsule, platform="CUDA")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    w_ih = rng.standard_normal((15, 4)).astype(np.float32) * 0.3
    w_hh = rng.standard_normal((15, 5)).astype(np.float32) * 0.3
    h0 = np.zeros((2, 5), np.float32)
    y, h_n, _ = jax.jit(lambda *a: fj.layer("gru", *a, None, None))(x, h0, None, w_ih, w_hh)
    want = fastrnn.functional.layer_forward("gru", x, h0, None, w_ih, w_hh, None, None)
    np.testing.assert_allclose(np.asarray(y), want[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# On a GPU
# ---------------------------------------------------------------------------------------------

def _devices():
    """(the jax GPU device, the jax CPU device), or a skip saying why there is no GPU."""
    if not fastrnn.cuda_available():
        pytest.skip(f"needs an NVIDIA GPU and fastrnn's CUDA backend "
                    f"({fastrnn.cuda.unavailable_reason()})")
    jax = pytest.importorskip("jax")
    pytest.importorskip("fastrnn.jax")
    if not hasattr(_cuda_module(), "jax_ffi_targets"):
        pytest.fail("a GPU and the CUDA backend, but _cuda has no XLA FFI handlers")
    try:
        gpu = jax.devices("cuda")[0]
    except RuntimeError as exc:
        pytest.skip(f"jax has no CUDA device here (install jax's CUDA plugin): {exc}")
    return gpu, jax.devices("cpu")[0]


def _inputs(mode, T, B, I, H, P, seed):
    rng = np.random.default_rng(seed)
    G = {"lstm": 4, "gru": 3}.get(mode, 1)
    R = P or H
    k = 1.0 / np.sqrt(H)

    def u(*shape):
        return rng.uniform(-2 * k, 2 * k, shape).astype(np.float32)

    args = {"x": rng.standard_normal((T, B, I)).astype(np.float32),
            "h0": (0.5 * rng.standard_normal((B, R))).astype(np.float32),
            "c0": (0.5 * rng.standard_normal((B, H))).astype(np.float32) if mode == "lstm"
            else None,
            "weight_ih": u(G * H, I), "weight_hh": u(G * H, R), "bias_ih": u(G * H),
            "bias_hh": u(G * H)}
    lengths = rng.integers(1, T + 1, size=B).astype(np.int32)
    lengths[:2] = (T, 1)
    kw = {"lengths": lengths, "resets": rng.random((T, B)) < 0.2,
          "weight_hr": u(P, H) if P else None}
    return args, kw


def _run(device, mode, args, kw, reverse, cotangent_seed):
    """fastrnn.jax.layer's outputs and the gradients of every float argument, on `device`."""
    import jax
    import fastrnn.jax as fj

    names = [n for n, v in args.items() if v is not None]
    with jax.default_device(device):
        put = {n: jax.device_put(v, device) for n, v in args.items() if v is not None}
        weight_hr = None if kw["weight_hr"] is None else jax.device_put(kw["weight_hr"], device)
        lengths = jax.device_put(kw["lengths"], device)
        resets = jax.device_put(kw["resets"], device)

        def f(*diff):
            d = dict(zip(names, diff))
            y, h_n, c_n = fj.layer(mode, d["x"], d["h0"], d.get("c0"), d["weight_ih"],
                                   d["weight_hh"], d["bias_ih"], d["bias_hh"],
                                   weight_hr=d.get("weight_hr"), lengths=lengths, resets=resets,
                                   reverse=reverse)
            return (y, h_n) if c_n is None else (y, h_n, c_n)

        if weight_hr is not None:
            names.append("weight_hr")
            put["weight_hr"] = weight_hr
        outs, vjp = jax.vjp(jax.jit(f), *[put[n] for n in names])
        rng = np.random.default_rng(cotangent_seed)
        cts = [jax.device_put(rng.standard_normal(o.shape).astype(np.float32), device)
               for o in outs]
        grads = vjp(tuple(cts))
        assert all(d == device for o in outs for d in o.devices())
    return [np.asarray(o) for o in outs], dict(zip(names, (np.asarray(g) for g in grads)))


@pytest.mark.cuda
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mode,P", [("rnn_tanh", 0), ("rnn_relu", 0), ("lstm", 0), ("lstm", 3),
                                    ("gru", 0)])
@pytest.mark.parametrize("B", [3, 40])  # the persistent kernel (B <= 16) and the standard path
def test_layer_on_the_gpu_matches_the_cpu(mode, P, reverse, B):
    gpu, cpu = _devices()
    args, kw = _inputs(mode, 9, B, 5, 8, P, seed=B + 10 * P)
    got_out, got_grads = _run(gpu, mode, args, kw, reverse, cotangent_seed=1)
    want_out, want_grads = _run(cpu, mode, args, kw, reverse, cotangent_seed=1)
    for name, g, w in zip(("y", "h_n", "c_n"), got_out, want_out):
        assert_rel_close(g, w.astype(np.float64), "float32", "output", name)
    for name in want_grads:
        assert_rel_close(got_grads[name], want_grads[name].astype(np.float64), "float32", "grad",
                         "d" + name)


def _raw_call(device, mode, dtype, args, lengths, reverse):
    """The raw custom calls in `dtype` on `device`: (y, h_n, c_n), then the gradients for dy =
    ones, dh_n = dc_n = 0, with the CUDA reserve (uint8, reserve_widths' bytes)."""
    import jax
    import jax.numpy as jnp

    cuda = _cuda_module()
    T, B, I = args["x"].shape
    GH, R = args["weight_hh"].shape
    cell = CELL_CODES[mode]
    H = GH // {"lstm": 4, "gru": 3}.get(mode, 1)
    lstm = mode == "lstm"
    code = {"float16": 1, "bfloat16": 2}[dtype]
    per_slot, per_step = cuda.reserve_widths(cell, H, 0, code)
    reserve_bytes = (T + 1) * B * per_slot + T * B * per_step
    jdt = jnp.dtype(dtype)

    def s(shape, present=True, dt=jdt):
        return jax.ShapeDtypeStruct(shape if present else (0,), dt)

    with jax.default_device(device):
        a = {n: jnp.asarray(v, jdt) if v is not None else jnp.zeros((0,), jdt)
             for n, v in args.items()}
        ln = jnp.asarray(lengths)
        none_b = jnp.zeros((0,), jnp.bool_)
        ins = (a["x"], a["h0"], a["c0"], a["weight_ih"], a["weight_hh"], a["bias_ih"],
               a["bias_hh"], jnp.zeros((0,), jdt), ln, none_b)
        y, h_n, c_n, reserve = jax.ffi.ffi_call(FORWARD, (
            s((T, B, R)), s((B, R)), s((B, H), lstm), s((reserve_bytes,), dt=jnp.uint8)))(
            *ins, cell=np.int64(cell), reverse=np.int64(reverse), training=np.int64(1))
        grads = jax.ffi.ffi_call(BACKWARD, (
            s((T, B, I)), s((B, R)), s((B, H), lstm), s((GH, I)), s((GH, R)), s((GH,)),
            s((GH,)), s((0,)), s((0,)), s((0,)), s((0,))))(
            *ins, reserve, jnp.ones((T, B, R), jdt), jnp.zeros((B, R), jdt),
            jnp.zeros((B, H), jdt) if lstm else jnp.zeros((0,), jdt),
            cell=np.int64(cell), reverse=np.int64(reverse), gate_grads=np.int64(0))
    outs = [y, h_n] + ([c_n] if lstm else [])
    return [np.asarray(o, np.float64) for o in outs], [np.asarray(g, np.float64)
                                                       for g in grads[:7] if g.size]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_half_types_on_the_gpu(mode, dtype):
    """The raw calls in a half type (fastrnn.jax.layer takes float32/float64 only) against the
    CPU handlers' float32 on the same rounded numbers."""
    import jax.numpy as jnp

    gpu, cpu = _devices()
    args, kw = _inputs(mode, 7, 5, 6, 8, 0, seed=3)
    rounded = {n: None if v is None else np.asarray(jnp.asarray(v, dtype), np.float32)
               for n, v in args.items()}
    mask = (np.arange(7)[:, None] < kw["lengths"][None, :])
    got_out, got_grads = _raw_call(gpu, mode, dtype, rounded, kw["lengths"], False)

    import jax
    import fastrnn.jax as fj

    with jax.default_device(cpu):
        names = [n for n, v in rounded.items() if v is not None]

        def f(*d):
            d = dict(zip(names, d))
            y, h_n, c_n = fj.layer(mode, d["x"], d["h0"], d.get("c0"), d["weight_ih"],
                                   d["weight_hh"], d["bias_ih"], d["bias_hh"],
                                   lengths=kw["lengths"])
            return (y, h_n) if c_n is None else (y, h_n, c_n)

        outs, vjp = jax.vjp(f, *[rounded[n] for n in names])
        cts = [np.ones(outs[0].shape, np.float32) * mask[:, :, None].astype(np.float32)] + \
            [np.zeros(o.shape, np.float32) for o in outs[1:]]
        want_grads = vjp(tuple(cts))
    for name, g, w in zip(("y", "h_n", "c_n"), got_out, outs):
        assert_rel_close(g, np.asarray(w, np.float64), dtype, "output", name)
    for name, g, w in zip(names, got_grads, want_grads):
        assert_rel_close(g, np.asarray(w, np.float64), dtype, "grad", "d" + name)


@pytest.mark.cuda
def test_gpu_call_errors_name_the_argument():
    """What a malformed raw call reports on the GPU: the reserve's byte count, and gate_grads
    (the CUDA backend has no gate gradients)."""
    import jax
    import jax.numpy as jnp

    gpu, _ = _devices()
    T, B, I, H = 3, 2, 4, 5
    with jax.default_device(gpu):
        f32 = jnp.float32
        x, h0 = jnp.ones((T, B, I), f32), jnp.zeros((B, H), f32)
        w_ih, w_hh = jnp.ones((3 * H, I), f32), jnp.ones((3 * H, H), f32)
        none = jnp.zeros((0,), f32)
        ins = (x, h0, none, w_ih, w_hh, none, none, none, jnp.zeros((0,), jnp.int32),
               jnp.zeros((0,), jnp.bool_))

        def fwd(reserve_len):
            return jax.ffi.ffi_call(FORWARD, (
                jax.ShapeDtypeStruct((T, B, H), f32), jax.ShapeDtypeStruct((B, H), f32),
                jax.ShapeDtypeStruct((0,), f32), jax.ShapeDtypeStruct((reserve_len,), f32)))(
                *ins, cell=np.int64(CELL_CODES["gru"]), reverse=np.int64(0),
                training=np.int64(1))

        with pytest.raises(Exception, match="reserve: expected"):
            jax.block_until_ready(fwd(7))
        per_slot, per_step = _core.reserve_widths(CELL_CODES["gru"], H, 0)
        _, _, _, reserve = fwd((T + 1) * B * per_slot + T * B * per_step)
        with pytest.raises(Exception, match="gate_grads"):
            jax.block_until_ready(jax.ffi.ffi_call(BACKWARD, tuple(
                jax.ShapeDtypeStruct(s, f32) for s in
                ((T, B, I), (B, H), (0,), (0,), (0,), (0,), (0,), (0,), (T, B, 3 * H),
                 (T, B, H), (0,))))(
                *ins, reserve, jnp.ones((T, B, H), f32), jnp.zeros((B, H), f32), none,
                cell=np.int64(CELL_CODES["gru"]), reverse=np.int64(0), gate_grads=np.int64(1)))
