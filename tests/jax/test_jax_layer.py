"""``fastrnn.jax.layer``: the XLA custom calls against the NumPy reference, and JAX's transforms.

1. Every cell, both directions, lengths, resets, projection, no bias, awkward sizes, float32 and
   float64: every output and every gradient (``jax.vjp`` with random incoming gradients) against
   ``fastrnn.reference``, under ``jax.jit``.
2. ``jax.test_util.check_grads`` (reverse mode) in float64.
3. vmap: a vmapped data axis (folded into the batch), per-example weight gradients, vmapped
   weights (an ensemble), nested vmap, ``jacrev``; ``lax.scan`` over chunks of a sequence and
   ``jax.checkpoint``; a layer stack with a batch sharded over two devices (a subprocess with
   ``--xla_force_host_platform_device_count=2``).
4. Malformed arguments raise at trace time naming the argument; lengths out of range raise when
   known, and from the custom call under jit; forward mode and second order raise saying so.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")
fj = pytest.importorskip("fastrnn.jax")  # skips where fastrnn was built without the handlers
import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

from fastrnn import reference  # noqa: E402
from fastrnn._cells import MODES  # noqa: E402
from fastrnn.errors import DtypeError, LengthsError  # noqa: E402
from conftest import assert_close, make_layer_inputs, random_lengths  # noqa: E402

ARG_NAMES = ("x", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh")
GRAD_NAMES = ("input", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def x64(dtype):
    """float64 arrays need jax_enable_x64: on for the test's duration."""
    if np.dtype(dtype) != np.float64:
        return contextlib.nullcontext()
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    return jax.experimental.enable_x64()  # jax < 0.6


def inputs(mode, T, B, I, H, *, dtype, seed, proj=0, bias=True, lengths=False, resets=False):
    a = make_layer_inputs(mode, T, B, I, H, dtype=dtype, seed=seed, bias=bias)
    rng = np.random.default_rng(seed + 7)
    kw = {}
    if proj:
        a["weight_hr"] = rng.uniform(-0.5, 0.5, (proj, H)).astype(dtype)
        a["h0"] = a["h0"][:, :proj].copy()
        a["weight_hh"] = a["weight_hh"][:, :proj].copy()
        kw["weight_hr"] = a["weight_hr"]
    if lengths:
        kw["lengths"] = random_lengths(rng, T, B)
    if resets:
        kw["resets"] = rng.random((T, B)) < 0.3
    return a, kw


def run_both(mode, a, kw, *, reverse, dtype, seed):
    """(fastrnn.jax's outputs and gradients, the reference's), with the same random dy."""
    args = [a[n] for n in ARG_NAMES]
    T, B, _ = a["x"].shape
    R = a["h0"].shape[1]
    H = a["weight_ih"].shape[0] // {"lstm": 4, "gru": 3}.get(mode, 1)
    rng = np.random.default_rng(seed + 13)
    dy = rng.standard_normal((T, B, R)).astype(dtype)
    dh_n = rng.standard_normal((B, R)).astype(dtype)
    dc_n = rng.standard_normal((B, H)).astype(dtype) if mode == "lstm" else None
    if "lengths" in kw:  # the reference ignores dy at padded steps; so must the comparison
        dy = dy * (np.arange(T)[:, None] < kw["lengths"][None, :])[:, :, None].astype(dtype)

    diff = [i for i, v in enumerate(args) if v is not None]
    w_hr = kw.get("weight_hr")

    def f(*d):
        full = list(args)
        for i, v in zip(diff, d[:len(diff)]):
            full[i] = v
        hr = d[-1] if w_hr is not None else None
        return fj.layer(mode, *full, weight_hr=hr, lengths=kw.get("lengths"),
                        resets=kw.get("resets"), reverse=reverse)

    primals = [args[i] for i in diff] + ([w_hr] if w_hr is not None else [])
    out, vjp = jax.vjp(jax.jit(f), *primals)
    cot = (dy, dh_n, dc_n)
    grads = vjp(cot)
    mine = {"y": out[0], "h_n": out[1], "c_n": out[2]}
    names = [GRAD_NAMES[i] for i in diff] + (["weight_hr"] if w_hr is not None else [])
    mine.update({"d_" + n: g for n, g in zip(names, grads)})

    r64 = {k: None if v is None else np.asarray(v, np.float64) for k, v in a.items()}
    y, h_n, c_n, saved = reference.layer_forward(
        mode, *[r64[n] for n in ARG_NAMES], weight_hr=r64.get("weight_hr"),
        lengths=kw.get("lengths"), resets=kw.get("resets"), reverse=reverse, training=True)
    g = reference.layer_backward(saved, dy.astype(np.float64), dh_n.astype(np.float64),
                                 None if dc_n is None else dc_n.astype(np.float64))
    ref = {"y": y, "h_n": h_n, "c_n": c_n}
    ref.update({"d_" + n: g[n] for n in names})
    return mine, ref


def compare(mine, ref, dtype):
    for k, expected in ref.items():
        if expected is None:
            assert mine[k] is None, k
            continue
        assert_close(np.asarray(mine[k]), expected, dtype, k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("extras", ["plain", "lengths", "resets", "lengths+resets"])
@pytest.mark.parametrize("mode", MODES)
def test_layer_against_reference(mode, extras, reverse, dtype):
    seed = hash((mode, extras, reverse)) % 1000
    with x64(dtype):
        a, kw = inputs(mode, 7, 5, 3, 11, dtype=dtype, seed=seed, lengths="lengths" in extras,
                       resets="resets" in extras)
        mine, ref = run_both(mode, a, kw, reverse=reverse, dtype=dtype, seed=seed)
        compare(mine, ref, dtype)


@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (1, 3, 2, 5), (13, 1, 7, 3), (4, 2, 17, 31)])
@pytest.mark.parametrize("mode", MODES)
def test_awkward_sizes(mode, T, B, I, H):
    with x64(np.float64):
        a, kw = inputs(mode, T, B, I, H, dtype=np.float64, seed=T * 100 + H,
                       lengths=B > 1, resets=T > 1)
        mine, ref = run_both(mode, a, kw, reverse=bool(T % 2), dtype=np.float64, seed=3)
        compare(mine, ref, np.float64)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_projection(dtype, reverse):
    with x64(dtype):
        a, kw = inputs("lstm", 6, 4, 5, 9, dtype=dtype, seed=5, proj=4, lengths=True,
                       resets=True)
        mine, ref = run_both("lstm", a, kw, reverse=reverse, dtype=dtype, seed=5)
        compare(mine, ref, dtype)


@pytest.mark.parametrize("mode", MODES)
def test_without_bias(mode):
    a, kw = inputs(mode, 5, 3, 4, 6, dtype=np.float32, seed=9, bias=False, lengths=True)
    mine, ref = run_both(mode, a, kw, reverse=False, dtype=np.float32, seed=9)
    compare(mine, ref, np.float32)


@pytest.mark.parametrize("mode", MODES)
def test_check_grads_float64(mode):
    """Reverse-mode gradients against JAX's own finite differences, in float64."""
    with x64(np.float64):
        a, kw = inputs(mode, 4, 3, 2, 3, dtype=np.float64, seed=21, lengths=True, resets=True)
        c0 = a["c0"]

        def f(x, h0, w_ih, w_hh, b_ih, b_hh, *c):
            y, h_n, c_n = fj.layer(mode, x, h0, c[0] if c else None, w_ih, w_hh, b_ih, b_hh,
                                   lengths=kw["lengths"], resets=kw["resets"], reverse=True)
            out = jnp.sum(jnp.sin(y)) + jnp.sum(h_n ** 2)
            return out + (jnp.sum(c_n) if c_n is not None else 0.0)

        args = [a[n] for n in ("x", "h0", "weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        check_grads(f, args + ([c0] if c0 is not None else []), order=1, modes=["rev"],
                    atol=1e-6, rtol=1e-6)


def test_all_false_resets_are_bitwise_none():
    a, _ = inputs("gru", 6, 4, 3, 8, dtype=np.float32, seed=2)
    args = [a[n] for n in ARG_NAMES]
    none = fj.layer("gru", *args)
    false = fj.layer("gru", *args, resets=np.zeros((6, 4), bool))
    for u, v in zip(none[:2], false[:2]):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


# ---- transforms -------------------------------------------------------------------------------

def _lstm(seed=0, T=5, B=3, I=4, H=6, dtype=np.float32):
    a, _ = inputs("lstm", T, B, I, H, dtype=dtype, seed=seed)
    return [a[n] for n in ARG_NAMES]


def _loss(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=None, resets=None):
    y, h_n, c_n = fj.layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=lengths,
                           resets=resets)
    return jnp.sum(y ** 2) + jnp.sum(h_n) + jnp.sum(jnp.cos(c_n))


def test_vmap_over_data_folds_and_matches_a_loop():
    x, h0, c0, *w = _lstm()
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((3, *x.shape)).astype(np.float32)
    h0s = rng.standard_normal((3, *h0.shape)).astype(np.float32)
    lengths = np.array([[5, 1, 3], [2, 5, 4], [1, 1, 5]])
    resets = rng.random((3, 5, 3)) < 0.3
    f = jax.jit(jax.vmap(lambda x, h, ln, r: fj.layer("lstm", x, h, c0, *w, lengths=ln,
                                                      resets=r)))
    got = f(xs, h0s, lengths, resets)
    for n in range(3):
        one = fj.layer("lstm", xs[n], h0s[n], c0, *w, lengths=lengths[n], resets=resets[n])
        for u, v in zip(got, one):
            assert_close(np.asarray(u[n]), np.asarray(v), np.float32, "vmapped output")


def test_per_example_gradients():
    """vmap(grad): every weight gradient per problem, from the folded backward's gate grads."""
    x, h0, c0, *w = _lstm(seed=3)
    rng = np.random.default_rng(2)
    xs = rng.standard_normal((4, *x.shape)).astype(np.float32)
    resets = rng.random((4, 5, 3)) < 0.3
    grad = jax.grad(_loss, argnums=(0, 1, 2, 3, 4, 5, 6))
    got = jax.jit(jax.vmap(lambda x, r: grad(x, h0, c0, *w, resets=r)))(xs, resets)
    for n in range(4):
        one = grad(xs[n], h0, c0, *w, resets=resets[n])
        for i, (u, v) in enumerate(zip(got, one)):
            assert_close(np.asarray(u[n]), np.asarray(v), np.float32, f"grad {i}")


@pytest.mark.parametrize("mode", ["gru", "rnn_relu"])
def test_per_example_gradients_other_cells(mode):
    a, _ = inputs(mode, 6, 2, 3, 5, dtype=np.float32, seed=4)
    x, h0, _, *w = [a[n] for n in ARG_NAMES]
    xs = np.random.default_rng(5).standard_normal((3, *x.shape)).astype(np.float32)
    lengths = np.array([[6, 2], [3, 6], [1, 4]])

    def loss(x, ln, w_ih, w_hh, b_ih, b_hh):
        y, h_n, _ = fj.layer(mode, x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths=ln, reverse=True)
        return jnp.sum(jnp.tanh(y)) + jnp.sum(h_n ** 2)

    grad = jax.grad(loss, argnums=(0, 2, 3, 4, 5))
    got = jax.vmap(lambda x, ln: grad(x, ln, *w))(xs, lengths)
    for n in range(3):
        for u, v in zip(got, grad(xs[n], lengths[n], *w)):
            assert_close(np.asarray(u[n]), np.asarray(v), np.float32, mode)


def test_per_example_gradients_with_projection():
    a, kw = inputs("lstm", 5, 2, 3, 7, dtype=np.float32, seed=6, proj=3)
    x, h0, c0, *w = [a[n] for n in ARG_NAMES]
    xs = np.random.default_rng(6).standard_normal((2, *x.shape)).astype(np.float32)

    def loss(x, w_hr, w_hh):
        y, h_n, c_n = fj.layer("lstm", x, h0, c0, w[0], w_hh, *w[2:], weight_hr=w_hr)
        return jnp.sum(y ** 2) + jnp.sum(c_n)

    grad = jax.grad(loss, argnums=(0, 1, 2))
    got = jax.vmap(lambda x: grad(x, kw["weight_hr"], w[1]))(xs)
    for n in range(2):
        for u, v in zip(got, grad(xs[n], kw["weight_hr"], w[1])):
            assert_close(np.asarray(u[n]), np.asarray(v), np.float32, "proj")


def test_vmapped_weights_run_per_member():
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _lstm(seed=7)
    rng = np.random.default_rng(7)
    w_hhs = w_hh[None] * rng.uniform(0.5, 1.5, (3, 1, 1)).astype(np.float32)
    grad = jax.grad(lambda w_hh, x: _loss(x, h0, c0, w_ih, w_hh, b_ih, b_hh), argnums=(0, 1))
    got = jax.vmap(grad, in_axes=(0, None))(w_hhs, x)
    for n in range(3):
        for u, v in zip(got, grad(w_hhs[n], x)):
            assert_close(np.asarray(u[n]), np.asarray(v), np.float32, "ensemble")


def test_nested_vmap_and_jacrev():
    x, h0, c0, *w = _lstm(seed=8, T=3, B=2, I=2, H=3)
    xs = np.random.default_rng(8).standard_normal((2, 3, *x.shape)).astype(np.float32)
    grad = jax.grad(lambda x, w_ih: _loss(x, h0, c0, w_ih, *w[1:]), argnums=(0, 1))
    got = jax.vmap(jax.vmap(grad, in_axes=(0, None)), in_axes=(0, None))(xs, w[0])
    for i in range(2):
        for j in range(3):
            for u, v in zip(got, grad(xs[i, j], w[0])):
                assert_close(np.asarray(u[i, j]), np.asarray(v), np.float32, "nested")
    # jacrev: vmap over the cotangents of one forward (its reserve is shared, not batched)
    f = lambda x: fj.layer("lstm", x, h0, c0, *w)[1]  # noqa: E731
    J = jax.jacrev(f)(x)
    _, vjp = jax.vjp(f, x)
    for b in range(2):
        for r in range(3):
            e = np.zeros((2, 3), np.float32)
            e[b, r] = 1
            assert_close(np.asarray(J[b, r]), np.asarray(vjp(e)[0]), np.float32, "jacrev")


def test_scan_over_chunks_and_checkpoint():
    """A sequence in chunks through lax.scan (the carry is the state) equals one call; so does
    the gradient, with and without jax.checkpoint."""
    x, h0, c0, *w = _lstm(seed=9, T=12, B=3)
    chunks = x.reshape(4, 3, *x.shape[1:])

    def whole(x, w_hh):
        y, h_n, c_n = fj.layer("lstm", x, h0, c0, w[0], w_hh, *w[2:])
        return jnp.sum(y ** 2) + jnp.sum(h_n)

    def scanned(x, w_hh, remat):
        def step(carry, xc):
            y, h, c = fj.layer("lstm", xc, *carry, w[0], w_hh, *w[2:])
            return (h, c), jnp.sum(y ** 2)
        body = jax.checkpoint(step) if remat else step
        (h, _), parts = jax.lax.scan(body, (h0, c0), x.reshape(4, 3, *x.shape[1:]))
        return jnp.sum(parts) + jnp.sum(h)

    ref = jax.value_and_grad(whole, argnums=(0, 1))(x, w[1])
    for remat in (False, True):
        got = jax.jit(jax.value_and_grad(lambda x, w: scanned(x, w, remat), argnums=(0, 1)))(
            x, w[1])
        assert_close(np.asarray(got[0]), np.asarray(ref[0]), np.float32, "loss")
        for u, v in zip(got[1], ref[1]):
            assert_close(np.asarray(u), np.asarray(v), np.float32, "grad")
    assert chunks.shape[0] == 4


SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import numpy as np, jax, jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as Pspec
    import fastrnn.jax as fj
    assert jax.device_count() == 2, jax.devices()
    rng = np.random.default_rng(0)
    T, B, I, H = 6, 8, 5, 7
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    w = [rng.uniform(-.4, .4, s).astype(np.float32) for s in ((3 * H, I), (3 * H, H), (3 * H,),
                                                               (3 * H,))]
    w2 = [rng.uniform(-.4, .4, s).astype(np.float32) for s in ((3 * H, H), (3 * H, H), (3 * H,),
                                                                (3 * H,))]
    lengths = rng.integers(1, T + 1, B).astype(np.int32)

    def loss(params, x, h0, lengths):
        y, _, _ = fj.layer("gru", x, h0, None, *params[0], lengths=lengths)
        y, h, _ = fj.layer("gru", y, h0, None, *params[1], lengths=lengths, reverse=True)
        return jnp.sum(y ** 2) + jnp.sum(h)

    grad = jax.jit(jax.value_and_grad(loss))
    one = grad((w, w2), x, h0, lengths)

    mesh = Mesh(np.array(jax.devices()), ("batch",))
    # 1. jit with the batch sharded over both devices (sharding annotations)
    xs = jax.device_put(x, NamedSharding(mesh, Pspec(None, "batch")))
    hs = jax.device_put(h0, NamedSharding(mesh, Pspec("batch")))
    ls = jax.device_put(lengths, NamedSharding(mesh, Pspec("batch")))
    sharded = grad((w, w2), xs, hs, ls)
    # 2. shard_map: each device runs the custom calls on its own rows, weight grads psum'd
    # (custom calls carry no varying-axes types: check_vma=False, as JAX's docs say for them)
    if hasattr(jax, "shard_map"):
        shard_map, unchecked = jax.shard_map, {"check_vma": False}
    else:  # jax < 0.7
        from jax.experimental.shard_map import shard_map
        unchecked = {"check_rep": False}
    def local(params, x, h0, lengths):
        v, g = jax.value_and_grad(loss)(params, x, h0, lengths)
        return jax.lax.psum(v, "batch"), jax.lax.psum(g, "batch")
    mapped = jax.jit(shard_map(local, mesh=mesh,
                               in_specs=(Pspec(), Pspec(None, "batch"), Pspec("batch"),
                                         Pspec("batch")),
                               out_specs=(Pspec(), Pspec()), **unchecked))((w, w2), xs, hs, ls)
    for name, got in (("jit-sharded", sharded), ("shard_map", mapped)):
        np.testing.assert_allclose(got[0], one[0], rtol=2e-5, err_msg=name)
        for u, v in zip(jax.tree_util.tree_leaves(got[1]), jax.tree_util.tree_leaves(one[1])):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=1e-5,
                                       err_msg=name)
    print("SHARDED OK")
""")


def test_sharded_batch_equals_one_device():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0 and "SHARDED OK" in out.stdout, out.stdout + out.stderr


# ---- errors -----------------------------------------------------------------------------------

def test_malformed_arguments_raise_at_trace_time_naming_them():
    x, h0, c0, *w = _lstm()
    cases = [
        (dict(x=x[0]), ValueError, "x:"),
        (dict(x=x.astype(np.int32)), DtypeError, "x:"),
        (dict(h0=h0[:, :2]), ValueError, "h0:"),
        (dict(c0=None), ValueError, "c0:"),
        (dict(w_ih=w[0][:, :2]), ValueError, "weight_ih:"),
        (dict(w_hh=w[1].astype(np.float16)), DtypeError, "weight_hh:"),
        (dict(b_hh=None), ValueError, "bias_ih, bias_hh:"),
        (dict(lengths=np.array([1, 2])), LengthsError, "lengths:"),
        (dict(lengths=np.array([1.0, 2.0, 3.0])), LengthsError, "lengths:"),
        (dict(lengths=np.array([0, 2, 3])), LengthsError, "lengths:"),
        (dict(resets=np.zeros((5, 2), bool)), ValueError, "resets:"),
        (dict(resets=np.zeros((5, 3), np.int32)), DtypeError, "resets:"),
    ]
    for change, error, name in cases:
        kw = dict(x=x, h0=h0, c0=c0, w_ih=w[0], w_hh=w[1], b_ih=w[2], b_hh=w[3], lengths=None,
                  resets=None)
        kw.update(change)

        def f():
            return fj.layer("lstm", kw["x"], kw["h0"], kw["c0"], kw["w_ih"], kw["w_hh"],
                            kw["b_ih"], kw["b_hh"], lengths=kw["lengths"], resets=kw["resets"])
        with pytest.raises(error, match=name):
            jax.eval_shape(f)
    with pytest.raises(ValueError, match="mode"):
        fj.layer("lsmt", x, h0, c0, *w)
    with pytest.raises(DtypeError, match="x: got dtype float64, .*jax_enable_x64"):
        fj.layer("lstm", x.astype(np.float64), h0, c0, *w)  # JAX would make it float32
    with pytest.raises(TypeError, match="reverse"):
        fj.layer("lstm", x, h0, c0, *w, reverse="yes")


def test_lengths_out_of_range_under_jit_raise_from_the_custom_call():
    x, h0, c0, *w = _lstm()
    f = jax.jit(lambda ln: fj.layer("lstm", x, h0, c0, *w, lengths=ln)[0])
    with pytest.raises(Exception, match=r"lengths: expected every value in \[1, T=5\]"):
        jax.block_until_ready(f(np.array([1, 6, 2], np.int32)))


def test_forward_mode_and_second_order_raise_clearly():
    x, h0, c0, *w = _lstm()
    f = lambda x: jnp.sum(fj.layer("lstm", x, h0, c0, *w)[0])  # noqa: E731
    with pytest.raises(TypeError, match="forward-mode"):  # JAX's own, for any custom_vjp
        jax.jacfwd(f)(x)
    for transform in (jax.hessian, lambda g: jax.grad(lambda x: jnp.sum(jax.grad(g)(x)))):
        with pytest.raises(NotImplementedError, match="first-order reverse mode only"):
            transform(f)(x)
