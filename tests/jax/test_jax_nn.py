"""fastrnn.jax.nn (Flax NNX modules RNN / LSTM / GRU) and fastrnn.jax.convert (Flax's cells).

- The modules against fastrnn's NumPy reference modules (``fastrnn.reference.RNN/LSTM/GRU``, plain
  NumPy) on the same weights: outputs, final states and ``jax.grad`` of a weighted sum with
  respect to every parameter, the input and the initial states, over a table of configurations
  (every cell, 1-3 layers, directions, batch_first, unbatched input, proj_size, lengths, resets,
  bias, initial states or none, T=1 / B=1 / odd sizes), in float64 and float32, under
  ``nnx.jit``; ``jax.jit`` of a split module with traced lengths and resets; ``jax.vmap`` of a
  gradient (per-example gradients); unbatched input as a batch of one.
- torch.nn interop: a torch.nn module's ``state_dict()`` loads and the outputs and gradients
  are torch.nn's (packed sequences for lengths); ours loads into torch.nn.
- Dropout between layers in train and eval mode.
- Flax's cells (nnx ``OptimizedLSTMCell``, ``LSTMCell``, ``GRUCell``, ``SimpleCell``, in
  ``nnx.RNN``, ``nnx.Bidirectional``, stacks; linen's parameter dicts) against their converted
  fastrnn module under ``jax.jit``: outputs, carries and gradients w.r.t. the input and the
  (converted) parameters.
- Argument checks and their messages.

Everything but one test runs in JAX's 64-bit mode (the ``x64`` fixture), so that float64 gets
tight tolerances; the float32 cases set their dtypes explicitly.
"""
import numpy as np
import pytest

from conftest import assert_close, random_lengths

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
pytest.importorskip("fastrnn.jax")  # needs a build with the XLA FFI handlers
import jax.numpy as jnp  # noqa: E402

import fastrnn  # noqa: E402
from fastrnn import reference  # noqa: E402
from fastrnn.jax import nn as fnn  # noqa: E402

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
FORMS = ("time_major", "batch_first", "unbatched")


def enable_x64(on=True):
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(on)
    from jax import experimental  # jax < 0.6
    return experimental.enable_x64() if on else experimental.disable_x64()


@pytest.fixture(autouse=True)
def x64():
    with enable_x64(True):
        yield


def module_kwargs(cfg):
    kw = dict(num_layers=cfg["num_layers"], bias=cfg["bias"],
              batch_first=cfg["form"] == "batch_first", bidirectional=cfg["bidirectional"])
    if cfg["cell"].startswith("rnn"):
        kw["nonlinearity"] = cfg["cell"][4:]
    if cfg.get("proj_size"):
        kw["proj_size"] = cfg["proj_size"]
    return kw


def class_name(cell):
    return "RNN" if cell.startswith("rnn") else cell.upper()


def make_pair(cfg, dtype, seed=0):
    """(fastrnn.jax.nn module, fastrnn.reference module in float64) with the same weights."""
    kw = module_kwargs(cfg)
    ours = getattr(fnn, class_name(cfg["cell"]))(cfg["I"], cfg["H"], dtype=dtype,
                                                 rngs=nnx.Rngs(seed), **kw)
    ref = getattr(reference, class_name(cfg["cell"]))(cfg["I"], cfg["H"], dtype=np.float64, **kw)
    ref.load_state_dict({k: np.asarray(v, np.float64) for k, v in ours.state_dict().items()})
    return ours, ref


# (cell, I, H, num_layers, bidirectional, bias, form, T, B, proj_size, with_hx, lengths, resets):
# every cell in every form, 1-3 layers, both directions, with and without bias, projection,
# initial states, lengths and resets, T = 1, B = 1, sizes 1 and odd sizes.
CONFIGS_F64 = [
    ("rnn_tanh", 3, 7, 2, False, True, "time_major", 1, 1, 0, False, False, False),
    ("rnn_relu", 3, 3, 3, True, True, "time_major", 8, 3, 0, False, True, False),
    ("lstm", 2, 7, 1, False, False, "time_major", 2, 1, 0, True, True, True),
    ("gru", 1, 7, 1, False, False, "time_major", 8, 2, 0, False, True, False),
    ("lstm", 11, 13, 3, True, True, "time_major", 7, 5, 5, True, True, True),
    ("gru", 11, 13, 3, True, True, "batch_first", 7, 5, 0, True, True, True),
    ("rnn_tanh", 6, 5, 3, True, False, "batch_first", 8, 4, 0, False, True, True),
    ("lstm", 3, 4, 2, True, True, "batch_first", 5, 3, 2, True, False, True),
    ("rnn_relu", 6, 3, 3, False, True, "unbatched", 5, 1, 0, True, False, True),
    ("lstm", 2, 5, 2, True, True, "unbatched", 4, 1, 3, True, False, True),
    ("gru", 3, 1, 2, True, True, "unbatched", 5, 1, 0, False, False, False),
    ("rnn_tanh", 2, 5, 1, True, True, "unbatched", 1, 1, 0, True, False, False),
    ("gru", 2, 3, 2, False, True, "batch_first", 1, 4, 0, False, True, True),
    ("lstm", 1, 1, 1, True, True, "time_major", 6, 1, 0, True, True, False),
]
CONFIGS_F32 = [
    ("lstm", 4, 6, 2, True, True, "batch_first", 6, 3, 3, True, True, True),
    ("gru", 5, 4, 2, True, True, "time_major", 6, 3, 0, True, True, True),
    ("rnn_tanh", 3, 5, 2, False, True, "unbatched", 6, 1, 0, True, False, True),
    ("rnn_relu", 3, 5, 1, True, False, "time_major", 4, 2, 0, False, True, False),
]
_CONFIG_KEYS = ("cell", "I", "H", "num_layers", "bidirectional", "bias", "form", "T", "B",
                "proj_size", "with_hx", "lengths", "resets")


def config(row):
    return dict(zip(_CONFIG_KEYS, row))


def config_id(row):
    c = config(row)
    return (f"{c['cell']}-L{c['num_layers']}{'-bi' if c['bidirectional'] else ''}-{c['form']}"
            f"-T{c['T']}B{c['B']}I{c['I']}H{c['H']}" + (f"P{c['proj_size']}" if c['proj_size']
                                                        else "")
            + ("-nobias" if not c["bias"] else "") + ("-hx" if c["with_hx"] else "")
            + ("-lengths" if c["lengths"] else "") + ("-resets" if c["resets"] else ""))


def call_args(cfg, dtype, seed):
    """x, h0, c0, lengths, resets and the loss weights (wy, wh, wc) of one call, NumPy arrays of
    ``dtype`` (values drawn in float64, so float32 inputs are the same numbers rounded)."""
    rng = np.random.default_rng(1000 + seed)
    T, B, I, H = cfg["T"], cfg["B"], cfg["I"], cfg["H"]
    R = cfg.get("proj_size") or H
    LD = cfg["num_layers"] * (2 if cfg["bidirectional"] else 1)
    unbatched = cfg["form"] == "unbatched"
    x_shape = (T, I) if unbatched else ((B, T, I) if cfg["form"] == "batch_first" else (T, B, I))
    state = (lambda n: (LD, n)) if unbatched else (lambda n: (LD, B, n))
    a = dict(x=rng.standard_normal(x_shape), h0=None, c0=None, lengths=None, resets=None)
    if cfg["with_hx"]:
        a["h0"] = 0.5 * rng.standard_normal(state(R))
        if cfg["cell"] == "lstm":
            a["c0"] = 0.5 * rng.standard_normal(state(H))
    if cfg["lengths"]:
        a["lengths"] = random_lengths(rng, T, B)
    if cfg["resets"]:
        r = rng.random((T, B)) < 0.3
        a["resets"] = r[:, 0] if unbatched else (r.T.copy() if cfg["form"] == "batch_first" else r)
    D = 2 if cfg["bidirectional"] else 1
    out_shape = x_shape[:-1] + (D * R,)
    a["wy"] = rng.standard_normal(out_shape)
    a["wh"] = rng.standard_normal(state(R))
    a["wc"] = rng.standard_normal(state(H)) if cfg["cell"] == "lstm" else None
    return {k: v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype == np.float64 else v
            for k, v in a.items()}


def hx_of(cfg, h0, c0):
    if cfg["cell"] == "lstm":
        return None if h0 is None else (h0, c0)
    return h0


def split_state(cfg, state):
    return state if cfg["cell"] == "lstm" else (state, None)


def check_against_reference(cfg, dtype, seed, *, jit=True):
    ours, ref = make_pair(cfg, dtype, seed)
    a = call_args(cfg, dtype, seed)
    lstm = cfg["cell"] == "lstm"

    # the initial states are differentiated where given; else the module's default zeros
    states = () if a["h0"] is None else ((a["h0"], a["c0"]) if lstm else (a["h0"],))

    def loss(model, x, *states):
        hx = hx_of(cfg, states[0], states[1] if lstm else None) if states else None
        y, state = model(x, hx,
                         lengths=a["lengths"], resets=a["resets"])
        h, c = split_state(cfg, state)
        total = jnp.sum(y * a["wy"]) + jnp.sum(h * a["wh"])
        if lstm:
            total = total + jnp.sum(c * a["wc"])
        return total, (y, h, c)

    grad_fn = nnx.grad(loss, argnums=tuple(range(2 + len(states))), has_aux=True)
    if jit:
        grad_fn = nnx.jit(grad_fn)
    grads, (y, h, c) = grad_fn(ours, a["x"], *states)

    f64 = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype == dtype else v)
           for k, v in a.items()}
    y_ref, state_ref = ref(f64["x"], hx_of(cfg, f64["h0"], f64["c0"]), lengths=a["lengths"],
                           resets=a["resets"])
    h_ref, c_ref = split_state(cfg, state_ref)
    g_ref = ref.backward(f64["wy"], f64["wh"], f64["wc"])

    assert_close(np.asarray(y), y_ref, dtype, "y")
    assert_close(np.asarray(h), h_ref, dtype, "h_n")
    assert_close(None if c is None else np.asarray(c), c_ref, dtype, "c_n")
    g_params = nnx.to_pure_dict(grads[0])
    assert sorted(g_params) == sorted(ours.state_dict())
    for name, value in g_params.items():
        assert_close(np.asarray(value), g_ref[name], dtype, f"d {name}")
    assert_close(np.asarray(grads[1]), g_ref["input"], dtype, "d input")
    if states:
        assert_close(np.asarray(grads[2]), g_ref["h0"], dtype, "d h0")
    if states and lstm:
        assert_close(np.asarray(grads[3]), g_ref["c0"], dtype, "d c0")


@pytest.mark.parametrize("row", CONFIGS_F64, ids=[config_id(r) for r in CONFIGS_F64])
def test_against_reference_float64(row):
    check_against_reference(config(row), np.float64, CONFIGS_F64.index(row))


@pytest.mark.parametrize("row", CONFIGS_F32, ids=[config_id(r) for r in CONFIGS_F32])
def test_against_reference_float32(row):
    check_against_reference(config(row), np.float32, 100 + CONFIGS_F32.index(row))


def test_unbatched_is_batch_of_one():
    m = fnn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    h0, c0 = (rng.standard_normal((4, n)).astype(np.float32) for n in (2, 4))
    resets = np.array([False, True, False, False, True])
    y, (h, c) = m(x, (h0, c0), resets=resets)
    yb, (hb, cb) = m(x[:, None], (h0[:, None], c0[:, None]), resets=resets[:, None])
    assert y.shape == (5, 4) and h.shape == (4, 2) and c.shape == (4, 4)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(yb[:, 0]))
    np.testing.assert_array_equal(np.asarray(h), np.asarray(hb[:, 0]))
    np.testing.assert_array_equal(np.asarray(c), np.asarray(cb[:, 0]))


def test_jit_of_split_module_traced_lengths_and_resets():
    m = fnn.GRU(4, 6, num_layers=2, bidirectional=True, batch_first=True, rngs=nnx.Rngs(2))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((3, 7, 4)), jnp.float32)
    lengths = jnp.asarray([7, 2, 5], jnp.int32)
    resets = jnp.asarray(rng.random((3, 7)) < 0.3)
    eager = m(x, lengths=lengths, resets=resets)
    graphdef, state = nnx.split(m)

    @jax.jit
    def run(state, x, lengths, resets):
        return nnx.merge(graphdef, state)(x, lengths=lengths, resets=resets)

    jitted = run(state, x, lengths, resets)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        assert_close(np.asarray(b), np.asarray(a), np.float32, "jit vs eager")
    assert np.all(np.asarray(jitted[0])[1, 2:] == 0)  # padded steps are zeros
    with pytest.raises(fastrnn.LengthsError, match="lengths: expected integers"):
        jax.jit(lambda s, l: nnx.merge(graphdef, s)(x, lengths=l))(state, lengths * 1.0)


def test_vmap_per_example_gradients():
    """vmap over the data (x, lengths, resets) of a split module's gradient: per-example
    parameter gradients, equal to one gradient per example."""
    m = fnn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, dtype=jnp.float64,
                 rngs=nnx.Rngs(3))
    graphdef, params = nnx.split(m)
    rng = np.random.default_rng(2)
    xs = jnp.asarray(rng.standard_normal((3, 5, 2, 3)))
    lengths = jnp.asarray([[5, 2], [1, 5], [3, 4]])
    resets = jnp.asarray(rng.random((3, 5, 2)) < 0.3)

    def loss(params, x, lengths, resets):
        y, (h, c) = nnx.merge(graphdef, params)(x, lengths=lengths, resets=resets)
        return jnp.sum(y ** 2) + jnp.sum(h * c[..., :2]), y

    grad = jax.grad(loss, has_aux=True)
    batched, ys = jax.jit(jax.vmap(grad, in_axes=(None, 0, 0, 0)))(params, xs, lengths, resets)
    for i in range(3):
        one, y = grad(params, xs[i], lengths[i], resets[i])
        assert_close(np.asarray(ys[i]), np.asarray(y), np.float64, f"y[{i}]")
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(batched),
                                jax.tree.leaves(one)):
            assert_close(np.asarray(a[i]), np.asarray(b), np.float64,
                         f"d {jax.tree_util.keystr(path)}[{i}]")


def test_parameters_names_shapes_init():
    m = fnn.LSTM(3, 8, num_layers=2, bidirectional=True, proj_size=4, rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(m, nnx.Param))
    sd = m.state_dict()
    assert list(sd)[:5] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                            "weight_hr_l0"]
    assert sorted(params) == sorted(sd) and len(sd) == 20
    assert sd["weight_ih_l1_reverse"].shape == (32, 8) and sd["weight_hh_l0"].shape == (32, 4)
    assert sd["weight_hr_l1"].shape == (4, 8)
    for name, v in sd.items():
        assert v.dtype == jnp.float32, name
        assert np.abs(np.asarray(v)).max() <= 1 / np.sqrt(8), name
    firsts = {float(np.asarray(v).ravel()[0]) for v in sd.values()}
    assert len(firsts) == len(sd)  # independent draws
    g = fnn.GRU(2, 3, bias=False, rngs=nnx.Rngs(0))
    assert list(g.state_dict()) == ["weight_ih_l0", "weight_hh_l0"]
    assert m.num_directions == 2 and m.state_size == 4 and m.training


# ---- torch.nn interop ---------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_torch_state_dict_round_trip(cell):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch.manual_seed(0)
    kw = dict(num_layers=2, bidirectional=True, batch_first=True)
    if cell.startswith("rnn"):
        kw["nonlinearity"] = cell[4:]
    if cell == "lstm":
        kw["proj_size"] = 3
    theirs = getattr(torch.nn, class_name(cell))(4, 5, dtype=torch.float64, **kw)
    ours = getattr(fnn, class_name(cell))(4, 5, dtype=jnp.float64, rngs=nnx.Rngs(5), **kw)
    ours.load_state_dict(theirs.state_dict())
    for name, value in ours.state_dict().items():
        np.testing.assert_array_equal(np.asarray(value), theirs.state_dict()[name].numpy())

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 6, 4))
    lengths = np.array([6, 2, 4])
    wy = rng.standard_normal((3, 6, 2 * (3 if cell == "lstm" else 5)))
    xt = torch.tensor(x, requires_grad=True)
    packed = pack_padded_sequence(xt, torch.tensor(lengths), batch_first=True,
                                  enforce_sorted=False)
    out, state = theirs(packed)
    yt, _ = pad_packed_sequence(out, batch_first=True, total_length=6)
    ht = state[0] if cell == "lstm" else state
    (yt * torch.tensor(wy)).sum().add(ht.sum()).backward()

    def loss(model, x):
        y, state = model(x, lengths=lengths)
        h = state[0] if cell == "lstm" else state
        return jnp.sum(y * wy) + jnp.sum(h), y

    (dm, dx), y = nnx.jit(nnx.grad(loss, argnums=(0, 1), has_aux=True))(ours, x)
    assert_close(np.asarray(y), yt.detach().numpy(), np.float64, "y")
    assert_close(np.asarray(dx), xt.grad.numpy(), np.float64, "d input")
    for name, p in theirs.named_parameters():
        assert_close(np.asarray(dm[name][...]), p.grad.numpy(), np.float64, f"d {name}")

    # ours into torch.nn (float32 both ways: torch casts in its load_state_dict)
    ours32 = getattr(fnn, class_name(cell))(4, 5, rngs=nnx.Rngs(6), **kw)
    back = getattr(torch.nn, class_name(cell))(4, 5, **kw)
    back.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours32.state_dict().items()})
    x32 = x.astype(np.float32)
    y32, _ = ours32(x32)
    assert_close(np.asarray(y32), back(torch.from_numpy(x32))[0].detach().numpy().astype(
        np.float64), np.float32, "y float32 vs torch.nn")


def test_load_state_dict_checks():
    m = fnn.GRU(3, 4, rngs=nnx.Rngs(0))
    sd = {k: np.asarray(v) for k, v in m.state_dict().items()}
    with pytest.raises(KeyError, match=r"missing \['bias_hh_l0'\], unexpected \['extra'\]"):
        m.load_state_dict({**{k: v for k, v in sd.items() if k != "bias_hh_l0"}, "extra": 1})
    with pytest.raises(ValueError, match=r"state_dict\['weight_hh_l0'\]: expected shape "
                                         r"\(12, 4\), got \(12, 3\)"):
        m.load_state_dict({**sd, "weight_hh_l0": np.zeros((12, 3))})
    with pytest.raises(fastrnn.DtypeError, match=r"state_dict\['bias_ih_l0'\]: expected a "
                                                 r"floating dtype"):
        m.load_state_dict({**sd, "bias_ih_l0": np.zeros(12, np.int32)})
    with pytest.raises(TypeError, match="state_dict: expected a mapping"):
        m.load_state_dict([1, 2])
    before = m.state_dict()["weight_ih_l0"]
    m.load_state_dict({"bias_ih_l0": jnp.ones(12, jnp.float64)}, strict=False)  # cast, partial
    assert m.state_dict()["bias_ih_l0"].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(m.state_dict()["bias_ih_l0"]), np.ones(12))
    np.testing.assert_array_equal(np.asarray(m.state_dict()["weight_ih_l0"]), np.asarray(before))
    # a parameter whose shape was changed behind the module's back is named at the call
    m.weight_hh_l0.set_value(jnp.zeros((12, 5), jnp.float32))
    with pytest.raises(ValueError, match=r"weight_hh_l0: expected shape \(12, 4\)"):
        m(np.zeros((2, 1, 3), np.float32))


# ---- dropout --------------------------------------------------------------------------------------

def test_dropout_train_and_eval():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    m = fnn.LSTM(4, 6, num_layers=2, dropout=0.5, rngs=nnx.Rngs(0, dropout=1))
    plain = fastrnn.LSTM(4, 6, num_layers=2)  # the NumPy module: no dropout
    plain.load_state_dict({k: np.asarray(v) for k, v in m.state_dict().items()})
    y_plain, _ = plain.eval()(x)
    step = nnx.jit(lambda m, x: m(x)[0])

    assert m.training
    y1, y2 = np.asarray(step(m, x)), np.asarray(step(m, x))
    assert not np.allclose(y1, y2)  # a new mask per call: the rng state advances under jit
    assert not np.allclose(y1, y_plain)

    m.eval()
    assert not m.training and m.layer_dropout.deterministic
    assert_close(np.asarray(step(m, x)), y_plain, np.float32, "eval output")
    m.train()
    assert m.training
    assert not np.allclose(np.asarray(m(x)[0]), y_plain)  # eager, training again


def test_dropout_one_drops_whole_layer_but_not_after_last():
    # p = 1: the second layer sees zeros, as torch.nn; no dropout after the last layer
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    m = fnn.GRU(3, 5, num_layers=2, bidirectional=True, dropout=1.0, rngs=nnx.Rngs(0))
    top = fnn.GRU(10, 5, bidirectional=True, rngs=nnx.Rngs(1))
    top.load_state_dict({k.replace("_l1", "_l0"): v for k, v in m.state_dict().items()
                         if "_l1" in k})
    y, h = m(x)
    y_top, h_top = top(np.zeros((4, 2, 10), np.float32))
    assert_close(np.asarray(y), np.asarray(y_top), np.float32, "y")
    assert_close(np.asarray(h[2:]), np.asarray(h_top), np.float32, "h_n of the top layer")
    assert np.abs(np.asarray(y)).min() > 0


def test_float32_without_x64():
    with enable_x64(False):
        with pytest.raises(fastrnn.DtypeError, match="dtype: float64 needs JAX's 64-bit mode"):
            fnn.GRU(2, 3, dtype=jnp.float64, rngs=nnx.Rngs(0))
        cfg = dict(cell="lstm", I=3, H=4, num_layers=2, bidirectional=True, bias=True,
                   form="batch_first", T=5, B=2, proj_size=0, with_hx=True, lengths=True,
                   resets=True)
        check_against_reference(cfg, np.float32, 11, jit=True)


# ---- argument checks ------------------------------------------------------------------------------

def test_constructor_checks():
    r = nnx.Rngs(0)
    with pytest.raises(ValueError, match="nonlinearity: expected 'tanh' or 'relu'"):
        fnn.RNN(2, 3, nonlinearity="sigmoid", rngs=r)
    with pytest.raises(ValueError, match="hidden_size: expected an int >= 1, got 0"):
        fnn.GRU(2, 0, rngs=r)
    with pytest.raises(TypeError, match="input_size: expected an int"):
        fnn.GRU(2.0, 3, rngs=r)
    with pytest.raises(ValueError, match="proj_size: expected 0 <= proj_size < hidden_size=3"):
        fnn.LSTM(2, 3, proj_size=3, rngs=r)
    with pytest.raises(ValueError, match=r"dropout: expected a number in \[0, 1\]"):
        fnn.LSTM(2, 3, dropout=1.5, rngs=r)
    with pytest.raises(fastrnn.DtypeError, match="dtype: expected float32 or float64"):
        fnn.LSTM(2, 3, dtype=jnp.float16, rngs=r)
    with pytest.raises(TypeError, match="rngs: expected a flax.nnx.Rngs"):
        fnn.LSTM(2, 3, rngs=0)
    with pytest.raises(TypeError, match="batch_first: expected a bool"):
        fnn.LSTM(2, 3, batch_first="yes", rngs=r)


def test_call_checks():
    lstm = fnn.LSTM(3, 4, num_layers=2, rngs=nnx.Rngs(0))
    gru = fnn.GRU(3, 4, batch_first=True, rngs=nnx.Rngs(0))
    x = np.zeros((5, 2, 3), np.float32)
    cases = [
        (fastrnn.DtypeError, "input: expected dtype float32", lambda: gru(x.astype(np.float64))),
        (TypeError, "input: expected a jax.Array or numpy.ndarray", lambda: gru(x.tolist())),
        (ValueError, "input: expected a 3-D array \\(B, T, input_size\\)", lambda: gru(x[0, 0])),
        (ValueError, "input: expected last dimension input_size=3", lambda: gru(x[..., :2])),
        (ValueError, "input: expected at least one step", lambda: gru(x[:0])),
        (ValueError, "h0: expected shape \\(1, 5, 4\\), got \\(1, 2, 4\\)",
         lambda: gru(x, np.zeros((1, 2, 4), np.float32))),
        (fastrnn.DtypeError, "h0: expected dtype float32",
         lambda: gru(x, np.zeros((1, 5, 4), np.float64))),
        (TypeError, "hx: expected a tuple \\(h0, c0\\)",
         lambda: lstm(x, np.zeros((2, 2, 4), np.float32))),
        (TypeError, "hx: expected both h0 and c0",
         lambda: lstm(x, (np.zeros((2, 2, 4), np.float32), None))),
        (ValueError, "c0: expected shape \\(2, 2, 4\\)",
         lambda: lstm(x, (np.zeros((2, 2, 4), np.float32), np.zeros((2, 2, 3), np.float32)))),
        (fastrnn.LengthsError, "lengths: expected every value in \\[1, T=5\\], got lengths\\[1\\] = 6",
         lambda: lstm(x, lengths=[5, 6])),
        (fastrnn.LengthsError, "lengths: expected shape \\(2,\\)", lambda: lstm(x, lengths=[5])),
        (ValueError, "lengths: not supported for unbatched", lambda: lstm(x[:, 0], lengths=[5])),
        (fastrnn.DtypeError, "resets: expected dtype bool",
         lambda: lstm(x, resets=np.zeros((5, 2)))),
        (ValueError, "resets: expected shape \\(B, T\\) = \\(5, 2\\)",
         lambda: gru(x, resets=np.zeros((2, 5), bool))),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()
    # traced resets of the wrong layout are refused at trace time too
    with pytest.raises(ValueError, match="resets: expected shape \\(T, B\\) = \\(5, 2\\)"):
        nnx.jit(lambda m, r: m(x, resets=r))(lstm, jnp.zeros((2, 5), bool))


# ---- Flax's cells ---------------------------------------------------------------------------------

def flax_cell(kind, I, H, seed, dtype=jnp.float64):
    cls = {"optimized_lstm": nnx.OptimizedLSTMCell, "lstm": nnx.LSTMCell, "gru": nnx.GRUCell,
           "simple": nnx.SimpleCell}[kind]
    # non-zero biases (Flax initialises them to zero), so that their mapping is tested
    return cls(I, H, bias_init=nnx.initializers.normal(0.5), param_dtype=dtype, dtype=dtype,
               rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("kind", ["optimized_lstm", "lstm", "gru"])
def test_flax_cell_outputs_and_grads(kind):
    B, T, I, H = 3, 6, 4, 5
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.standard_normal((B, T, I)))
    lstm = kind in ("optimized_lstm", "lstm")
    rnn = nnx.RNN(flax_cell(kind, I, H, 10), return_carry=True)
    if lstm:
        carry = (jnp.asarray(rng.standard_normal((B, H))), jnp.asarray(rng.standard_normal((B, H))))
    else:
        carry = jnp.asarray(rng.standard_normal((B, H)))
    wy = jnp.asarray(rng.standard_normal((B, T, H)))

    ours = fnn.from_flax(rnn)
    assert isinstance(ours, fnn.LSTM if lstm else fnn.GRU)
    assert ours.batch_first and ours.dtype == np.float64 and ours.bias

    def flax_loss(rnn, x, carry):
        carry_n, y = rnn(x, initial_carry=carry)
        h_n = carry_n[1] if lstm else carry_n
        return jnp.sum(y * wy) + jnp.sum(h_n ** 2), (y, carry_n)

    def our_loss(model, x, carry):
        hx = (carry[1][None], carry[0][None]) if lstm else carry[None]  # Flax's (c, h)
        y, state = model(x, hx)
        h_n = state[0][0] if lstm else state[0]
        return jnp.sum(y * wy) + jnp.sum(h_n ** 2), (y, state)

    (g_flax, dx_flax, dcarry_flax), (y_flax, carry_flax) = nnx.jit(
        nnx.grad(flax_loss, argnums=(0, 1, 2), has_aux=True))(rnn, x, carry)
    (g_ours, dx_ours, dcarry_ours), (y_ours, state) = nnx.jit(
        nnx.grad(our_loss, argnums=(0, 1, 2), has_aux=True))(ours, x, carry)

    f64 = np.float64
    assert_close(np.asarray(y_ours), np.asarray(y_flax), f64, "y")
    if lstm:
        assert_close(np.asarray(state[0][0]), np.asarray(carry_flax[1]), f64, "h_n")
        assert_close(np.asarray(state[1][0]), np.asarray(carry_flax[0]), f64, "c_n")
    else:
        assert_close(np.asarray(state[0]), np.asarray(carry_flax), f64, "h_n")
    assert_close(np.asarray(dx_ours), np.asarray(dx_flax), f64, "d input")
    for a, b in zip(jax.tree.leaves(dcarry_ours), jax.tree.leaves(dcarry_flax)):
        assert_close(np.asarray(a), np.asarray(b), f64, "d carry")

    # Flax's parameter gradients, converted as the parameters are, are ours where Flax has the
    # parameter; a bias Flax lacks gets the gradient of the pre-activation it would add to.
    graphdef, _, rest = nnx.split(rnn, nnx.Param, ...)
    converted = fnn.flax_state_dict(nnx.merge(graphdef, g_flax, rest))
    ours_g = {k: np.asarray(v) for k, v in nnx.to_pure_dict(g_ours).items()}
    assert_close(ours_g["weight_ih_l0"], converted["weight_ih_l0"], f64, "d weight_ih")
    assert_close(ours_g["weight_hh_l0"], converted["weight_hh_l0"], f64, "d weight_hh")
    if lstm:  # Flax's one bias is the hidden one; the input bias adds to the same sum
        assert_close(ours_g["bias_hh_l0"], converted["bias_hh_l0"], f64, "d bias_hh")
        assert_close(ours_g["bias_ih_l0"], converted["bias_hh_l0"], f64, "d bias_ih")
    else:  # GRU: the input bias (nnx's GRU has no hidden bias at all)
        assert_close(ours_g["bias_ih_l0"], converted["bias_ih_l0"], f64, "d bias_ih")
        assert not np.any(converted["bias_hh_l0"])


def test_flax_bidirectional_stack_with_lengths():
    B, T, I, H = 4, 7, 3, 5
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal((B, T, I)))
    lengths = np.array([7, 1, 4, 6])
    layers = [nnx.Bidirectional(nnx.RNN(flax_cell("optimized_lstm", I, H, 1)),
                                nnx.RNN(flax_cell("lstm", I, H, 2))),
              nnx.Bidirectional(nnx.RNN(flax_cell("optimized_lstm", 2 * H, H, 3)),
                                nnx.RNN(flax_cell("optimized_lstm", 2 * H, H, 4)))]

    @nnx.jit
    def flax_stack(layers, x):
        carries = []
        for layer in layers:
            (fwd, bwd), x = layer(x, seq_lengths=jnp.asarray(lengths), return_carry=True)
            carries += [fwd, bwd]
        return x, carries

    y_flax, carries = flax_stack(layers, x)
    ours = fnn.from_flax(layers)
    assert ours.num_layers == 2 and ours.bidirectional
    y, (h_n, c_n) = nnx.jit(lambda m, x: m(x, lengths=lengths))(ours, x)
    valid = (np.arange(T)[None, :] < lengths[:, None])[..., None]
    # Flax runs its cells over the padding; fastrnn writes zeros there
    assert_close(np.asarray(y) * valid, np.asarray(y_flax) * valid, np.float64, "y")
    assert np.all(np.asarray(y)[~valid[..., 0]] == 0)
    for i, (c, h) in enumerate(carries):
        assert_close(np.asarray(h_n[i]), np.asarray(h), np.float64, f"h_n[{i}]")
        assert_close(np.asarray(c_n[i]), np.asarray(c), np.float64, f"c_n[{i}]")
    # the same as a tuple pair per layer, and as torch-named arrays for the NumPy modules
    pairs = [(layer.forward_rnn.cell, layer.backward_rnn) for layer in layers]
    sd = fnn.flax_state_dict(pairs)
    for name, value in ours.state_dict().items():
        np.testing.assert_array_equal(np.asarray(value), sd[name])


@pytest.mark.parametrize("kind", ["optimized_lstm", "gru"])
def test_flax_linen_params(kind):
    import flax.linen as linen
    B, T, I, H = 2, 5, 3, 4
    cls = {"optimized_lstm": linen.OptimizedLSTMCell, "gru": linen.GRUCell}[kind]
    rnn = linen.RNN(cls(H, bias_init=jax.nn.initializers.normal(0.5), param_dtype=jnp.float64,
                        dtype=jnp.float64))
    x = jnp.asarray(np.random.default_rng(8).standard_normal((B, T, I)))
    variables = rnn.init(jax.random.key(0), x)
    y_flax = jax.jit(rnn.apply)(variables, x)
    ours = fnn.from_flax(variables)
    y, _ = jax.jit(lambda x: ours(x))(x)
    assert_close(np.asarray(y), np.asarray(y_flax), np.float64, "y")
    if kind == "gru":  # linen's GRU: the candidate's hidden product has a bias
        b = np.asarray(ours.state_dict()["bias_hh_l0"])
        assert not b[:2 * H].any() and b[2 * H:].all()


def test_flax_conversion_refusals():
    I, H = 3, 4
    gru, gru2 = nnx.GRUCell(I, H, rngs=nnx.Rngs(0)), nnx.GRUCell(I, H, rngs=nnx.Rngs(1))
    lstm, lstm2 = nnx.LSTMCell(I, H, rngs=nnx.Rngs(0)), nnx.LSTMCell(I, H, rngs=nnx.Rngs(1))
    simple = nnx.SimpleCell(I, H, rngs=nnx.Rngs(0))
    cases = [
        (ValueError, "layers: gate_fn must be sigmoid", gru, dict(gate_fn=jax.nn.hard_sigmoid)),
        (ValueError, "activation_fn must be tanh", lstm, dict(activation_fn=jax.nn.relu)),
        (ValueError, "residual=True", simple, dict(residual=True)),
    ]
    for error, message, cell, attributes in cases:
        saved = {k: getattr(cell, k) for k in attributes}
        for k, v in attributes.items():
            setattr(cell, k, v)
        with pytest.raises(error, match=message):
            fnn.from_flax(cell)
        for k, v in saved.items():
            setattr(cell, k, v)
    simple.activation_fn = jax.nn.relu
    assert fnn.from_flax(simple).mode == "rnn_relu"
    with pytest.raises(ValueError, match="reverse=True converts only as the backward half"):
        fnn.from_flax(nnx.RNN(gru, reverse=True))
    with pytest.raises(ValueError, match=r"layers\[1\]: a gru cell in a stack of lstm cells"):
        fnn.from_flax([lstm, nnx.GRUCell(H, H, rngs=nnx.Rngs(0))])
    with pytest.raises(ValueError, match=r"layers\[1\]: weight_ih \(torch layout\) has shape "
                                         r"\(16, 3\), expected \(16, 4\)"):
        fnn.from_flax([lstm, lstm2])
    with pytest.raises(ValueError, match=r"layers\[1\]: has 1 direction\(s\), layers\[0\] 2"):
        fnn.from_flax([(gru, gru2), nnx.GRUCell(2 * H, H, rngs=nnx.Rngs(0))])
    with pytest.raises(TypeError, match="expected a flax.nnx OptimizedLSTMCell"):
        fnn.from_flax(nnx.Linear(I, H, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="expected the parameters of a flax.linen"):
        fnn.from_flax({"kernel": np.zeros((3, 4))})
    bad_merge = nnx.Bidirectional(nnx.RNN(gru), nnx.RNN(gru2), merge_fn=lambda a, b: a + b)
    with pytest.raises(ValueError, match="default merge_fn"):
        fnn.from_flax(bad_merge)
    assert not fnn.from_flax(nnx.RNN(gru, time_major=True)).batch_first
    assert fnn.from_flax(nnx.RNN(gru)).batch_first
    assert not fnn.from_flax(gru, batch_first=False).batch_first
    bi = fnn.from_flax([(gru, gru2)])
    assert bi.bidirectional and bi.num_layers == 1
    np.testing.assert_array_equal(np.asarray(bi.weight_hh_l0_reverse[...]),
                                  np.asarray(gru2.dense_h.kernel[...]).T)


def test_flax_simple_cells_and_linen_lstm_names():
    """SimpleCell (nnx, linen) and linen's LSTMCell names map as documented, without running."""
    cell = nnx.SimpleCell(3, 4, bias_init=nnx.initializers.normal(0.5), rngs=nnx.Rngs(0))
    sd = fnn.flax_state_dict(cell)
    np.testing.assert_array_equal(sd["weight_ih_l0"], np.asarray(cell.dense_i.kernel[...]).T)
    np.testing.assert_array_equal(sd["weight_hh_l0"], np.asarray(cell.dense_h.kernel[...]).T)
    np.testing.assert_array_equal(sd["bias_ih_l0"], np.asarray(cell.dense_i.bias[...]))
    assert sd["bias_hh_l0"].shape == (4,) and not sd["bias_hh_l0"].any()
    assert fnn.from_flax(cell).mode == "rnn_tanh"
    rng = np.random.default_rng(9)
    linen_simple = {"params": {"cell": {"i": {"kernel": rng.random((3, 4)), "bias": rng.random(4)},
                                        "h": {"kernel": rng.random((4, 4))}}}}
    relu = fnn.from_flax(linen_simple, nonlinearity="relu", batch_first=False)
    assert relu.mode == "rnn_relu" and not relu.batch_first and relu.dtype == np.float64
    np.testing.assert_array_equal(np.asarray(relu.weight_hh_l0[...]),
                                  linen_simple["params"]["cell"]["h"]["kernel"].T)
    # linen's LSTMCell: one kernel per gate, i, f, g, o, the bias on the hidden side
    gates = {f"{side}{g}": {"kernel": rng.random((3 if side == "i" else 2, 2))}
             for side in "ih" for g in "ifgo"}
    for g in "ifgo":
        gates[f"h{g}"]["bias"] = rng.random(2)
    sd = fnn.flax_state_dict(gates)
    np.testing.assert_array_equal(sd["weight_ih_l0"][2:4], gates["if"]["kernel"].T)
    np.testing.assert_array_equal(sd["weight_hh_l0"][6:8], gates["ho"]["kernel"].T)
    np.testing.assert_array_equal(sd["bias_hh_l0"][4:6], gates["hg"]["bias"])
    assert not sd["bias_ih_l0"].any()
