"""fastrnn.torch's single-step cells (RNNCell, LSTMCell, GRUCell) against torch.nn's.

Outputs and every gradient, batched and unbatched, with and without hx, with and without biases;
gradcheck and gradgradcheck; a Python loop of steps; torch.func (vmap, per-sample gradients,
jvp); torch.compile(fullgraph=True); pickling, copies, convert and patch; fallbacks and torch's
errors. FallbackWarning is an error and the core's entry points are counted, so that a silent
fallback to torch.nn fails.
"""
import copy
import io
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import assert_close

torch = pytest.importorskip("torch")
import fastrnn  # noqa: E402
import fastrnn.torch as ft  # noqa: E402
from torch.func import functional_call, grad, jvp, vmap  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("error::fastrnn.torch.FallbackWarning"),
    # torch's own: forward-mode AD first loads its jvp decompositions through torch.jit.script
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
DTYPES = (torch.float32, torch.float64)
CLASS_NAMES = {"rnn_tanh": "RNNCell", "rnn_relu": "RNNCell", "lstm": "LSTMCell",
               "gru": "GRUCell"}


def cell_pair(cell, dtype=torch.float64, input_size=5, hidden_size=7, **kwargs):
    """(torch.nn cell, fastrnn.torch cell) with the torch cell's random weights in both."""
    if cell.startswith("rnn"):
        kwargs["nonlinearity"] = cell[4:]
    name = CLASS_NAMES[cell]
    theirs = getattr(torch.nn, name)(input_size, hidden_size, dtype=dtype, **kwargs)
    ours = getattr(ft, name)(input_size, hidden_size, dtype=dtype, **kwargs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def random_hx(cell, shape, dtype, requires_grad=False):
    """A random hx for the cell: a tensor, or (h, c) for an LSTM cell."""
    def one():
        return torch.randn(*shape, dtype=dtype, requires_grad=requires_grad)
    return (one(), one()) if cell == "lstm" else one()


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def hx_tensors(hx):
    return [] if hx is None else list(as_tuple(hx))


def close(actual, expected, what, dtype=torch.float64):
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert_close(actual.detach().numpy(), expected.detach().numpy(), np_dtype, what)


@pytest.fixture
def core_calls(monkeypatch):
    """Counts of the C++ core's layer calls ({"forward": n, "backward": n})."""
    counts = {"forward": 0, "backward": 0}
    for name in counts:
        real = getattr(fastrnn._core, "layer_" + name)

        def spy(*args, _real=real, _name=name, **kwargs):
            counts[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(fastrnn._core, "layer_" + name, spy)
    return counts


def _error_of(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the type and message are what is compared
        return type(e), str(e)
    return None


# ---- the same results and gradients as torch.nn -------------------------------------------

@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
def test_outputs_and_every_gradient_match_torch_nn(cell, dtype, batched, with_hx, bias,
                                                   core_calls):
    torch.manual_seed(0)
    for B, I, H in ((1, 1, 1), (7, 5, 13), (3, 11, 2)):
        theirs, ours = cell_pair(cell, dtype, I, H, bias=bias)
        lead = (B,) if batched else ()
        x = torch.randn(*lead, I, dtype=dtype, requires_grad=True)
        hx = random_hx(cell, (*lead, H), dtype, requires_grad=True) if with_hx else None
        before = dict(core_calls)
        got, expected = as_tuple(ours(x, hx)), as_tuple(theirs(x, hx))
        assert core_calls["forward"] == before["forward"] + 1
        assert len(got) == len(expected)
        for n, (a, e) in enumerate(zip(got, expected)):
            close(a, e, f"output {n} (B={B}, I={I}, H={H})", dtype)
        cotangents = [torch.randn_like(e) for e in expected]
        leaves = [x, *hx_tensors(hx)]
        names = ["input"] + [f"hx[{i}]" for i in range(len(leaves) - 1)]
        ours_params, theirs_params = list(ours.parameters()), list(theirs.parameters())
        names += [n for n, _ in ours.named_parameters()]
        grads_ours = torch.autograd.grad(got, leaves + ours_params, cotangents)
        grads_theirs = torch.autograd.grad(expected, leaves + theirs_params, cotangents)
        assert core_calls["backward"] == before["backward"] + 1
        for name, a, e in zip(names, grads_ours, grads_theirs):
            close(a, e, f"d {name} (B={B}, I={I}, H={H})", dtype)


def test_is_a_torch_cell_with_torch_parameters():
    for cell in CELLS:
        theirs, ours = cell_pair(cell, torch.float32, 3, 4)
        assert isinstance(ours, type(theirs))
        assert repr(ours) == repr(theirs)
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        assert [n for n, _ in ours.named_parameters()] == [n for n, _ in
                                                            theirs.named_parameters()]
    assert ft.LSTMCell(3, 4, algo="standard").algo == "standard"
    with pytest.raises(ValueError, match="algo"):
        ft.GRUCell(3, 4, algo="fastest")
    positional = ft.RNNCell(3, 4, False, "relu")
    assert positional.bias_ih is None and positional.nonlinearity == "relu"


def test_no_grad_saves_nothing_and_runs_on_the_core(core_calls):
    _, ours = cell_pair("lstm", torch.float32)
    with torch.no_grad():
        h, c = ours(torch.randn(4, 5))
    assert core_calls == {"forward": 1, "backward": 0}
    assert h.grad_fn is None and c.grad_fn is None


@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_and_gradgradcheck(cell, core_calls):
    torch.manual_seed(1)
    _, ours = cell_pair(cell, torch.float64, 3, 2)
    names = [n for n, _ in ours.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in ours.parameters()]
    x = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    hx = random_hx(cell, (3, 2), torch.float64, requires_grad=True)
    n_hx = len(hx_tensors(hx))

    def f(x, *rest):
        state, ps = rest[:n_hx], rest[n_hx:]
        out = functional_call(ours, dict(zip(names, ps)),
                              (x, tuple(state) if cell == "lstm" else state[0]))
        return as_tuple(out)

    inputs = (x, *hx_tensors(hx), *params)
    assert torch.autograd.gradcheck(f, inputs, check_batched_grad=True, check_forward_ad=True)
    assert torch.autograd.gradgradcheck(f, inputs, check_batched_grad=True)
    assert core_calls["forward"] and core_calls["backward"]


# ---- a loop of steps --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
def test_a_loop_of_steps_equals_torch_nn(cell, dtype, core_calls):
    torch.manual_seed(2)
    T, B, I, H = 20, 3, 4, 5
    theirs, ours = cell_pair(cell, dtype, I, H)
    xs = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    hx = random_hx(cell, (B, H), dtype, requires_grad=True)
    targets = torch.randn(T, B, H, dtype=dtype)

    def run(m):
        state, loss = hx, 0
        for t in range(T):
            state = m(xs[t], state)
            h = state[0] if cell == "lstm" else state
            loss = loss + (h * targets[t]).sum()
        if cell == "lstm":
            loss = loss + state[1].pow(2).sum()
        return loss, state

    leaves = [xs, *hx_tensors(hx)]
    loss_a, state_a = run(ours)
    loss_e, state_e = run(theirs)
    assert core_calls["forward"] == T
    for a, e in zip(as_tuple(state_a), as_tuple(state_e)):
        close(a, e, "final state", dtype)
    close(loss_a, loss_e, "loss", dtype)
    grads_a = torch.autograd.grad(loss_a, leaves + list(ours.parameters()))
    grads_e = torch.autograd.grad(loss_e, leaves + list(theirs.parameters()))
    assert core_calls["backward"] == T
    names = ["xs", "hx", "cx"][:len(leaves)] + [n for n, _ in ours.named_parameters()]
    for name, a, e in zip(names, grads_a, grads_e):
        close(a, e, f"d {name} through {T} steps", dtype)


# ---- torch.func -------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", CELLS)
def test_vmap_over_a_batch_of_inputs(cell, core_calls):
    torch.manual_seed(3)
    theirs, ours = cell_pair(cell, torch.float64, 3, 5)
    N, B = 4, 3
    xs = torch.randn(N, B, 3, dtype=torch.float64)
    hx = random_hx(cell, (N, B, 5), torch.float64)
    got = vmap(lambda x, h: as_tuple(ours(x, h)))(xs, hx)
    assert core_calls["forward"] == 1  # the vmapped dimension folded into the batch
    for n in range(N):
        h_n = tuple(h[n] for h in hx) if cell == "lstm" else hx[n]
        for a, e in zip(got, as_tuple(theirs(xs[n], h_n))):
            close(a[n], e, f"sample {n}")
    # unbatched samples, the state not vmapped
    h0 = random_hx(cell, (5,), torch.float64)
    got = vmap(lambda x: as_tuple(ours(x, h0)))(xs[0])
    for a, e in zip(got, as_tuple(theirs(xs[0], tuple(h.expand(B, 5) for h in h0)
                                                if cell == "lstm" else h0.expand(B, 5)))):
        close(a, e, "unbatched samples")


@pytest.mark.parametrize("cell", CELLS)
def test_per_sample_gradients_equal_a_loop(cell, core_calls):
    torch.manual_seed(4)
    theirs, ours = cell_pair(cell, torch.float64, 3, 4)
    params = {k: v.detach() for k, v in ours.named_parameters()}
    N = 6
    samples = torch.randn(N, 3, dtype=torch.float64)
    states = random_hx(cell, (N, 4), torch.float64)
    targets = torch.randn(N, 4, dtype=torch.float64)

    def loss(m):
        def f(p, x, h, target):
            out = as_tuple(functional_call(m, p, (x, h)))
            return (out[0] - target).pow(2).mean() + out[-1].sum()
        return f

    per_sample = vmap(grad(loss(ours)), in_dims=(None, 0, 0, 0))(params, samples, states,
                                                                 targets)
    assert core_calls == {"forward": 1, "backward": 1}
    for n in range(N):
        state = tuple(s[n] for s in states) if cell == "lstm" else states[n]
        expected = grad(loss(theirs))(params, samples[n], state, targets[n])
        for k in params:
            close(per_sample[k][n], expected[k], f"{k}, sample {n}")


@pytest.mark.parametrize("cell", CELLS)
def test_jvp_equals_torch_nn(cell, core_calls):
    torch.manual_seed(5)
    theirs, ours = cell_pair(cell, torch.float64, 3, 4)
    x = torch.randn(2, 3, dtype=torch.float64)
    hx = random_hx(cell, (2, 4), torch.float64)
    params = {k: p.detach() for k, p in theirs.named_parameters()}
    tangents = (torch.randn_like(x), tuple(torch.randn_like(h) for h in hx_tensors(hx)),
                {k: torch.randn_like(p) for k, p in params.items()})

    def fn(m):
        def f(x, state, p):
            return as_tuple(functional_call(m, p, (x, state if cell == "lstm" else state[0])))
        return f

    primals = (x, tuple(hx_tensors(hx)), params)
    out_a, got = jvp(fn(ours), primals, tangents)
    out_e, expected = jvp(fn(theirs), primals, tangents)
    for a, e in zip(out_a + got, out_e + expected):
        close(a, e, "jvp")
    assert core_calls["forward"] >= 1 and core_calls["backward"] == 0


def test_double_backward_of_a_gradient_penalty(core_calls):
    torch.manual_seed(6)
    for cell in CELLS:
        theirs, ours = cell_pair(cell, torch.float64, 3, 4)
        x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)

        def penalty(m, x=x):
            g, = torch.autograd.grad(as_tuple(m(x))[0].pow(2).sum(), x, create_graph=True)
            return torch.autograd.grad(g.pow(2).sum(), list(m.parameters()))

        for a, e in zip(penalty(ours), penalty(theirs)):
            close(a, e, f"{cell}: gradient of a gradient penalty")
    assert core_calls["backward"] >= 4


# ---- torch.compile ----------------------------------------------------------------------------

def test_torch_compile_fullgraph_keeps_the_custom_operators(monkeypatch):
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    torch.manual_seed(7)
    codes = []

    def record(gm, _example_inputs):
        codes.append(gm.code)
        return make_boxed_func(gm.forward)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = ft.LSTMCell(4, 6)
            self.gru = ft.GRUCell(6, 5)
            self.head = torch.nn.Linear(5, 1)

        def forward(self, xs):
            state, h = None, None
            for t in range(xs.shape[0]):
                state = self.lstm(xs[t], state)
                h = self.gru(state[0], h)
            return self.head(h).sum() + state[1].sum()

    model = Model()
    xs = torch.randn(3, 2, 4)
    compiled = torch.compile(model, fullgraph=True,
                             backend=aot_autograd(fw_compiler=record, bw_compiler=record))
    out_c = compiled(xs)
    out_c.backward()
    grads_c = [p.grad.clone() for p in model.parameters()]
    forward_code, backward_code = codes
    assert forward_code.count("fastrnn.layer_forward") == 6
    assert backward_code.count("fastrnn.layer_backward") == 6
    model.zero_grad()
    out_e = model(xs)
    out_e.backward()
    close(out_c, out_e, "compiled output", torch.float32)
    for gc, p in zip(grads_c, model.parameters()):
        close(gc, p.grad, "compiled grad", torch.float32)


# ---- pickling, copies, convert, patch ---------------------------------------------------------

@pytest.fixture
def unpatched():
    yield
    ft.unpatch()


@pytest.mark.parametrize("cell", ["rnn_relu", "lstm", "gru"])
def test_a_pickled_cell_is_the_torch_nn_cell(cell):
    theirs, ours = cell_pair(cell, torch.float32, 3, 4)
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    assert b"fastrnn" not in buffer.getvalue()
    buffer.seek(0)
    with torch.serialization.safe_globals([type(theirs)]):
        loaded = torch.load(buffer)  # torch.load's defaults: weights_only=True
    assert type(loaded) is type(theirs)
    assert repr(loaded) == repr(theirs)
    x = torch.randn(2, 3)
    for a, e in zip(as_tuple(loaded(x)), as_tuple(ours(x))):
        close(a, e, "reloaded", torch.float32)
    assert type(pickle.loads(pickle.dumps(ours))) is type(theirs)
    assert loaded.state_dict().keys() == ours.state_dict().keys()


def test_a_pickled_cell_loads_without_fastrnn(tmp_path):
    _, ours = cell_pair("lstm", torch.float32, 3, 4)
    path = tmp_path / "cell.pt"
    torch.save(ours, path)
    code = ("import sys; sys.modules['fastrnn'] = None  # as if not installed\n"
            "import torch\n"
            "torch.serialization.add_safe_globals([torch.nn.LSTMCell])\n"
            f"m = torch.load({str(path)!r})\n"
            "h, c = m(torch.randn(2, 3))\n"
            "print(type(m).__module__, type(m).__name__, tuple(h.shape))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["torch.nn.modules.rnn", "LSTMCell", "(2,", "4)"]


def test_copies_keep_the_fastrnn_class():
    _, ours = cell_pair("gru", torch.float32, 3, 4)
    deep, shallow = copy.deepcopy(ours), copy.copy(ours)
    assert type(deep) is ft.GRUCell and type(shallow) is ft.GRUCell
    assert deep.weight_hh is not ours.weight_hh and shallow.weight_hh is ours.weight_hh
    x = torch.randn(2, 3)
    assert torch.equal(deep(x), ours(x))


def test_convert_turns_the_cells_in_place():
    from torch.nn.utils import parametrize

    torch.manual_seed(8)
    model = torch.nn.ModuleDict({"rnn": torch.nn.RNNCell(3, 4, nonlinearity="relu"),
                                 "lstm": torch.nn.LSTMCell(4, 5),
                                 "seq": torch.nn.Sequential(torch.nn.GRUCell(5, 2)),
                                 "layer": torch.nn.GRU(2, 2)})
    x = torch.randn(6, 3)

    def run():
        h = model["rnn"](x)
        h, _ = model["lstm"](h)
        return model["seq"][0](h)

    before = run()
    weight = model["lstm"].weight_hh
    assert ft.convert(model) is model
    assert (type(model["rnn"]), type(model["lstm"]), type(model["seq"][0]),
            type(model["layer"])) == (ft.RNNCell, ft.LSTMCell, ft.GRUCell, ft.GRU)
    assert model["lstm"].weight_hh is weight
    close(run(), before, "converted", torch.float32)

    class Scale(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    normed = torch.nn.GRUCell(3, 4)
    parametrize.register_parametrization(normed, "weight_ih", Scale())
    ft.convert(normed)
    assert isinstance(normed, ft.GRUCell) and type(normed).__name__ == "ParametrizedGRUCell"
    parametrize.remove_parametrizations(normed, "weight_ih")
    assert type(normed) is ft.GRUCell


def test_patch_swaps_the_cell_classes_and_unpatch_restores_them(unpatched):
    names = ("RNNCell", "LSTMCell", "GRUCell")
    originals = tuple(getattr(torch.nn, n) for n in names)
    base = torch.nn.modules.rnn.RNNCellBase
    assert "__setstate__" not in base.__dict__
    ft.patch()
    assert tuple(getattr(torch.nn, n) for n in names) == (ft.RNNCell, ft.LSTMCell, ft.GRUCell)
    assert torch.nn.modules.LSTMCell is ft.LSTMCell
    assert torch.nn.modules.rnn.LSTMCell is originals[1]  # what pickles name stays torch's
    m = torch.nn.GRUCell(3, 4)
    assert type(m) is ft.GRUCell and isinstance(m, originals[2])
    ft.unpatch()
    assert tuple(getattr(torch.nn, n) for n in names) == originals
    assert "__setstate__" not in base.__dict__  # RNNCellBase as it was
    assert type(torch.nn.LSTMCell(3, 4)) is originals[1]
    assert type(m) is ft.GRUCell  # made while patched: stays fastrnn's


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_unpickled_while_patched_becomes_fastrnn(cell, unpatched):
    theirs, _ = cell_pair(cell, torch.float32, 3, 4)
    blob, buffer = pickle.dumps(theirs), io.BytesIO()
    torch.save(theirs, buffer)
    ours_class = getattr(ft, CLASS_NAMES[cell])
    ft.patch()
    assert type(pickle.loads(blob)) is ours_class
    buffer.seek(0)
    with torch.serialization.safe_globals([type(theirs)]):
        loaded = torch.load(buffer)
    assert type(loaded) is ours_class
    x = torch.randn(2, 3)
    for a, e in zip(as_tuple(loaded(x)), as_tuple(theirs(x))):
        close(a, e, "loaded while patched", torch.float32)
    ft.unpatch()
    assert type(pickle.loads(blob)) is type(theirs)


# ---- fallbacks and torch's errors -------------------------------------------------------------

@pytest.mark.parametrize("cell", CELLS)
def test_float16_falls_back_with_one_warning(cell, core_calls):
    torch.manual_seed(9)
    theirs, ours = cell_pair(cell, torch.float16, 3, 4)
    x = torch.randn(2, 3, dtype=torch.float16)
    ft._warned.clear()
    with pytest.warns(ft.FallbackWarning, match="dtype torch.float16"):
        got = ours(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours(x)  # warned once only
    for a, e in zip(as_tuple(got), as_tuple(theirs(x))):
        assert torch.equal(a, e)
    assert core_calls["forward"] == 0


def test_autocast_falls_back(core_calls):
    torch.manual_seed(10)
    theirs, ours = cell_pair("lstm", torch.float32, 3, 4)
    x = torch.randn(2, 3)
    ft._warned.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.warns(ft.FallbackWarning, match="autocast"):
            got = ours(x)
        expected = theirs(x)
    for a, e in zip(got, expected):
        assert a.dtype == e.dtype and torch.equal(a, e)
    assert core_calls["forward"] == 0


@pytest.mark.filterwarnings("ignore:`torch.jit.trace.*` is deprecated:DeprecationWarning")
def test_jit_trace_records_torch_operators():
    torch.manual_seed(11)
    theirs, ours = cell_pair("gru", torch.float32, 3, 4)
    x = torch.randn(2, 3)
    ft._warned.clear()
    with pytest.warns(ft.FallbackWarning, match="torch.jit.trace"):
        traced = torch.jit.trace(ours, (x,))
    traced_torch = torch.jit.trace(theirs, (x,))
    assert ([n.kind() for n in traced.graph.nodes()]
            == [n.kind() for n in traced_torch.graph.nodes()])  # torch's operators, no fastrnn's
    x2 = torch.randn(2, 3)
    close(traced(x2), theirs(x2), "traced", torch.float32)


MALFORMED = {
    "input_3d": lambda h: (torch.randn(1, 2, 3), None),
    "input_0d": lambda h: (torch.tensor(1.0), None),
    "input_size": lambda h: (torch.randn(2, 6), None),
    "hx_batch": lambda h: (torch.randn(2, 3), h(3, 4)),
    "hx_size": lambda h: (torch.randn(2, 3), h(2, 5)),
    "hx_3d": lambda h: (torch.randn(2, 3), h(1, 2, 4)),
    "batched_input_1d_hx": lambda h: (torch.randn(2, 3), h(4)),
    "unbatched_input_2d_hx": lambda h: (torch.randn(3), h(1, 4)),
    "input_dtype": lambda h: (torch.randn(2, 3, dtype=torch.float64), None),
    "hx_dtype": lambda h: (torch.randn(2, 3), h(2, 4, dtype=torch.float64)),
    "input_not_a_tensor": lambda h: ([[0.0] * 3] * 2, None),
    "empty_batch": lambda h: (torch.randn(0, 3), None),
    "empty_batch_hx": lambda h: (torch.randn(0, 3), h(0, 4)),
}


@pytest.mark.parametrize("case", list(MALFORMED))
@pytest.mark.parametrize("cell", CELLS)
def test_malformed_calls_do_what_torch_does(cell, case):
    theirs, ours = cell_pair(cell, torch.float32, 3, 4)

    def hx(*shape, dtype=torch.float32):
        h = torch.zeros(*shape, dtype=dtype)
        return (h, torch.zeros(*shape, dtype=dtype)) if cell == "lstm" else h

    args = MALFORMED[case](hx)
    expected = _error_of(lambda: theirs(*args))
    assert _error_of(lambda: ours(*args)) == expected
    if expected is None:  # torch.nn's results (empty batches)
        for a, e in zip(as_tuple(ours(*args)), as_tuple(theirs(*args))):
            assert a.shape == e.shape


@pytest.mark.parametrize("hx_kind", ["tensor", "triple", "single", "list"])
def test_malformed_lstm_hx_does_what_torch_does(hx_kind):
    theirs, ours = cell_pair("lstm", torch.float32, 3, 4)
    x, h = torch.randn(2, 3), torch.zeros(2, 4)
    hx = {"tensor": h, "triple": (h, h, h), "single": (h,), "list": [h, h]}[hx_kind]
    expected = _error_of(lambda: theirs(x, hx))
    assert _error_of(lambda: ours(x, hx)) == expected
    if expected is None:
        for a, e in zip(ours(x, hx), theirs(x, hx)):
            close(a, e, "list hx", torch.float32)


def test_changed_attributes_and_parameters_do_what_torch_does():
    theirs, ours = cell_pair("rnn_tanh", torch.float32, 3, 4)
    x = torch.randn(2, 3)
    for m in (theirs, ours):
        m.nonlinearity = "sigmoid"
    assert _error_of(lambda: ours(x)) == _error_of(lambda: theirs(x)) is not None
    theirs, ours = cell_pair("gru", torch.float32, 3, 4)
    for m in (theirs, ours):
        m.bias_ih = None  # one bias left: torch.nn's forward runs it
    close(ours(x), theirs(x), "one bias", torch.float32)
    for m in (theirs, ours):
        m.weight_hh = torch.nn.Parameter(torch.randn(12, 5))
    assert _error_of(lambda: ours(x)) == _error_of(lambda: theirs(x)) is not None
