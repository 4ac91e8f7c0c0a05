"""fastrnn.torch.RNN / LSTM / GRU against torch.nn.RNN / LSTM / GRU built from the same state_dict.

Every output, final state and gradient (input, h0, c0, every parameter) over random configurations
of cell, layers, directions, batch_first, input form (padded, unbatched, PackedSequence sorted and
unsorted), initial states, bias and proj_size, in float64 and float32; plus gradcheck, dropout
masks, the torch-fallback paths, errors, convert, torch.compile and DistributedDataParallel.
"""
import os
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import assert_close

torch = pytest.importorskip("torch")
import fastrnn.torch as ft  # noqa: E402
from torch_helpers import module_pair  # noqa: E402
from torch.nn.utils import parametrize, prune  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
FORMS = ("padded", "batch_first", "unbatched", "packed_sorted", "packed_unsorted")


def random_config(seed):
    rng = np.random.default_rng(seed)
    cell = CELLS[seed % 4]
    layers = int(rng.integers(1, 4))
    hidden = int(rng.choice([1, 2, 3, 5, 7, 13]))
    config = dict(cell=cell, input_size=int(rng.choice([1, 2, 3, 6, 11])), hidden_size=hidden,
                  num_layers=layers, bidirectional=bool(rng.integers(2)),
                  bias=bool(rng.random() < 0.8), form=FORMS[(seed // 4) % len(FORMS)],
                  with_hx=bool(rng.integers(2)), T=int(rng.choice([1, 2, 5, 9])),
                  B=int(rng.choice([1, 2, 3, 7])),
                  proj_size=int(rng.integers(1, hidden)) if cell == "lstm" and hidden > 1
                  and rng.random() < 0.5 else 0)
    if config["form"] == "unbatched":
        config["B"] = 1
    # batch_first only changes padded batched input; for the other forms it must change nothing
    config["batch_first"] = config["form"] == "batch_first" or (
        config["form"] != "padded" and bool(rng.integers(2)))
    return config


def run_module(module, config, x, lengths, hx, weights):
    """Forward + backward of a weighted sum of every output; returns outputs and gradients."""
    form = config["form"]
    x = x.clone().requires_grad_(True)
    hx = tuple(h.clone().requires_grad_(True) for h in hx) if hx is not None else None
    inp = x
    if form == "unbatched":
        inp = x[:, 0]
    elif form == "batch_first":
        inp = x.transpose(0, 1)
    elif form.startswith("packed"):
        inp = pack_padded_sequence(x, lengths, enforce_sorted=form == "packed_sorted")
    arg = None
    if hx is not None:
        arg = tuple(h[:, 0] for h in hx) if form == "unbatched" else hx
        arg = arg if config["cell"] == "lstm" else arg[0]
    y, state = module(inp, arg)
    y = y.data if form.startswith("packed") else y
    states = state if isinstance(state, tuple) else (state,)
    outs = (y,) + states
    loss = sum((o * w[: o.numel()].view_as(o)).sum() for o, w in zip(outs, weights))
    loss.backward()
    grads = {"input": x.grad}
    if hx is not None:
        grads.update(zip(("h0", "c0"), (h.grad for h in hx)))
    grads.update((n, p.grad) for n, p in module.named_parameters())
    return outs, grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("seed", range(40))
def test_matches_torch_nn(seed, dtype):
    c = random_config(seed)
    print(c)
    torch.manual_seed(seed)
    kwargs = dict(input_size=c["input_size"], hidden_size=c["hidden_size"],
                  num_layers=c["num_layers"], bias=c["bias"], bidirectional=c["bidirectional"],
                  batch_first=c["batch_first"])
    if c["proj_size"]:
        kwargs["proj_size"] = c["proj_size"]
    theirs, ours = module_pair(c["cell"], dtype, **kwargs)
    T, B = c["T"], c["B"]
    x = torch.randn(T, B, c["input_size"], dtype=dtype)
    if c["form"] == "packed_sorted":
        lengths = torch.sort(torch.randint(1, T + 1, (B,)), descending=True)[0]
        lengths[0] = T
    else:
        lengths = torch.randint(1, T + 1, (B,))
        lengths[torch.randint(0, B, ())] = T
    D = 2 if c["bidirectional"] else 1
    hx = None
    if c["with_hx"]:
        hx = (torch.randn(c["num_layers"] * D, B, c["proj_size"] or c["hidden_size"],
                          dtype=dtype),)
        if c["cell"] == "lstm":
            hx += (torch.randn(c["num_layers"] * D, B, c["hidden_size"], dtype=dtype),)
    weights = [torch.randn(T * B * D * c["hidden_size"] * c["num_layers"] + 1, dtype=dtype)
               for _ in range(3)]
    outs_t, grads_t = run_module(theirs, c, x, lengths, hx, weights)
    outs_f, grads_f = run_module(ours, c, x, lengths, hx, weights)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    for i, (a, e) in enumerate(zip(outs_f, outs_t)):
        assert a.dtype == e.dtype and a.shape == e.shape
        assert_close(a.detach().numpy(), e.detach().numpy(), np_dtype, f"output {i}")
    assert set(grads_f) == set(grads_t)
    for name in grads_t:
        assert_close(grads_f[name].numpy(), grads_t[name].numpy(), np_dtype, f"d {name}")


def test_is_a_torch_module_with_torch_parameters():
    for name, kwargs in [("RNN", dict(nonlinearity="relu")), ("LSTM", dict(proj_size=3)),
                         ("GRU", {})]:
        torch.manual_seed(0)
        theirs = getattr(torch.nn, name)(5, 7, 2, bidirectional=True, **kwargs)
        torch.manual_seed(0)
        ours = getattr(ft, name)(5, 7, 2, bidirectional=True, **kwargs)
        assert isinstance(ours, getattr(torch.nn, name))
        assert repr(ours) == repr(theirs)
        assert [(n, p.shape) for n, p in ours.named_parameters()] == \
               [(n, p.shape) for n, p in theirs.named_parameters()]
        for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
            assert torch.equal(p, q), n  # same default initialisation from the same RNG
        # load_state_dict both ways, strict
        back = getattr(torch.nn, name)(5, 7, 2, bidirectional=True, **kwargs)
        back.load_state_dict(ours.state_dict(), strict=True)
        ours.load_state_dict(back.state_dict(), strict=True)


def test_positional_arguments_as_torch():
    rnn = ft.RNN(3, 4, 2, "relu", False, True)
    assert (rnn.num_layers, rnn.nonlinearity, rnn.bias, rnn.batch_first) == (2, "relu", False, True)
    with pytest.raises(ValueError, match="proj_size"):
        ft.GRU(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="nonlinearity"):
        ft.RNN(3, 4, nonlinearity="sigmoid")


@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_float64_lengths_bidirectional(cell):
    torch.manual_seed(0)
    kwargs = dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    if cell == "lstm":
        kwargs["proj_size"] = 2
    _, m = module_pair(cell, torch.float64, **kwargs)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in m.parameters()]
    T, B = 5, 3
    x = torch.randn(T, B, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([3, 5, 1])
    R = 2 if cell == "lstm" else 4
    h0 = torch.randn(4, B, R, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, B, 4, dtype=torch.float64, requires_grad=True)

    def f(x, h0, c0, *ps):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        hx = (h0, c0) if cell == "lstm" else h0
        y, state = torch.func.functional_call(m, dict(zip(names, ps)), (packed, hx))
        states = state if isinstance(state, tuple) else (state,)
        return (y.data,) + states

    assert torch.autograd.gradcheck(f, (x, h0, c0, *params), eps=1e-6, atol=1e-7)


def test_nothing_saved_without_grad(monkeypatch):
    calls = []
    real = ft._core.layer_forward

    def spy(*args, **kwargs):  # every path ends in the core: `training` is its 12th argument
        calls.append(args[11])
        return real(*args, **kwargs)

    monkeypatch.setattr(ft._core, "layer_forward", spy)
    m = ft.LSTM(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        y, _ = m(x)
    assert y.grad_fn is None and calls == [False, False]
    calls.clear()
    m.requires_grad_(False)
    m.eval()
    with torch.inference_mode():
        m(x)
    m(x)
    assert calls == [False] * 4
    calls.clear()
    m.requires_grad_(True)
    y, _ = m(x)
    assert y.grad_fn is not None and calls == [True, True]


def test_zero_copy_weights_and_inputs(monkeypatch):
    seen = {}
    real = ft._core.layer_forward

    def spy(cell, x, h0, c0, w_ih, w_hh, *rest):
        seen["x"], seen["w_ih"], seen["w_hh"] = (a.__array_interface__["data"][0]
                                                  for a in (x, w_ih, w_hh))
        return real(cell, x, h0, c0, w_ih, w_hh, *rest)

    monkeypatch.setattr(ft._core, "layer_forward", spy)
    m = ft.GRU(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    m(x)
    assert seen == {"x": x.data_ptr(), "w_ih": m.weight_ih_l0.data_ptr(),
                    "w_hh": m.weight_hh_l0.data_ptr()}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True])
def test_dropout_masks_are_torchs(cell, packed):
    torch.manual_seed(0)
    theirs, ours = module_pair(cell, torch.float64, input_size=4, hidden_size=6, num_layers=3,
                               dropout=0.4, bidirectional=True)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    inp = pack_padded_sequence(x, torch.tensor([2, 5, 4]), enforce_sorted=False) if packed else x
    outs = []
    for m in (theirs, ours):
        torch.manual_seed(123)
        y, _ = m(inp)
        outs.append(y.data if packed else y)
    assert_close(outs[1].detach().numpy(), outs[0].detach().numpy(), np.float64, "y with dropout")
    ours.eval()
    theirs.eval()
    assert_close(ours(inp)[0].data.detach().numpy(), theirs(inp)[0].data.detach().numpy(),
                 np.float64, "eval: no dropout")


def test_unsupported_dtype_falls_back_with_one_warning():
    torch.manual_seed(0)
    theirs, ours = module_pair("gru", torch.bfloat16, input_size=3, hidden_size=4)
    x = torch.randn(5, 2, 3, dtype=torch.bfloat16)
    ft._warned.clear()
    with pytest.warns(ft.FallbackWarning, match="dtype torch.bfloat16"):
        y, h = ours(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours(x)  # warned once only
    y_t, h_t = theirs(x)
    assert torch.equal(y, y_t) and torch.equal(h, h_t)


def test_unsupported_device_falls_back():
    m = ft.LSTM(3, 4, num_layers=2, device="meta")
    ft._warned.clear()
    with pytest.warns(ft.FallbackWarning, match="device 'meta'"):
        y, (h, c) = m(torch.empty(5, 2, 3, device="meta"))
    assert y.shape == (5, 2, 4) and h.shape == (2, 2, 4) and y.device.type == "meta"


def _error_of(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the type and message are what is compared
        return type(e), str(e)
    return None


@pytest.mark.parametrize("case", ["input_4d", "input_size", "hx_shape", "hx_rank", "dtype",
                                  "hx_dtype", "unbatched_hx_rank"])
@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_bad_input_raises_what_torch_raises(name, case):
    theirs = getattr(torch.nn, name)(3, 4, 2)
    ours = getattr(ft, name)(3, 4, 2)
    x = torch.randn(5, 2, 3)
    lstm = name == "LSTM"

    def hx(*shape, dtype=torch.float32):
        h = torch.zeros(*shape, dtype=dtype)
        return (h, torch.zeros(*shape, dtype=dtype)) if lstm else h

    args = {"input_4d": (x[None], None), "input_size": (torch.randn(5, 2, 6), None),
            "hx_shape": (x, hx(2, 3, 4)), "hx_rank": (x, hx(2, 4)),
            "dtype": (x.double(), None), "hx_dtype": (x, hx(2, 2, 4, dtype=torch.float64)),
            "unbatched_hx_rank": (x[:, 0], hx(2, 1, 4))}[case]
    expected = _error_of(lambda: theirs(*args))
    assert expected is not None
    assert _error_of(lambda: ours(*args)) == expected


def test_convert_replaces_every_rnn_in_place():
    torch.manual_seed(0)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(20, 6)
            self.lstm = torch.nn.LSTM(6, 8, num_layers=2, batch_first=True, proj_size=5)
            self.blocks = torch.nn.ModuleList([torch.nn.GRU(5, 7, bidirectional=True,
                                                            batch_first=True),
                                               torch.nn.Sequential(torch.nn.RNN(14, 3,
                                                                                nonlinearity="relu",
                                                                                batch_first=True))])
            self.head = torch.nn.Linear(3, 2)

        def forward(self, tokens):
            y, _ = self.lstm(self.embed(tokens))
            y, _ = self.blocks[0](y)
            y, _ = self.blocks[1][0](y)
            return self.head(y)

    model = Model()
    model.blocks[0].eval()
    tokens = torch.randint(0, 20, (3, 9))
    before = model(tokens)
    params_before = list(model.parameters())
    assert ft.convert(model) is model
    assert type(model.lstm) is ft.LSTM and type(model.blocks[0]) is ft.GRU
    assert type(model.blocks[1][0]) is ft.RNN and model.blocks[1][0].nonlinearity == "relu"
    assert type(model.head) is torch.nn.Linear
    assert all(a is b for a, b in zip(model.parameters(), params_before))  # optimizers keep working
    assert not model.blocks[0].training and model.lstm.training
    after = model(tokens)
    assert_close(after.detach().numpy(), before.detach().numpy(), np.float32, "converted model")
    lone = torch.nn.GRU(3, 4)
    assert ft.convert(lone) is lone and type(lone) is ft.GRU
    with pytest.raises(TypeError, match="model"):
        ft.convert("not a module")


def test_convert_keeps_hooks_sharing_pruning_and_parametrizations():
    torch.manual_seed(0)
    shared = torch.nn.LSTM(3, 4)
    pruned = torch.nn.GRU(4, 5)
    prune.l1_unstructured(pruned, "weight_hh_l0", amount=0.5)
    normed = torch.nn.utils.parametrizations.weight_norm(torch.nn.RNN(5, 6), "weight_ih_l0")
    model = torch.nn.ModuleDict({"a": shared, "b": shared, "pruned": pruned, "normed": normed})
    calls = []
    shared.register_forward_hook(lambda m, args, out: calls.append(type(m).__name__))
    x = torch.randn(7, 2, 3)

    def run():
        y, _ = model["a"](x)
        y, _ = model["pruned"](y)
        return model["normed"](y)[0]

    before = run()
    ft.convert(model)
    assert model["a"] is model["b"] is shared and type(shared) is ft.LSTM
    assert isinstance(pruned, ft.GRU) and isinstance(normed, ft.RNN)
    assert isinstance(normed, torch.nn.RNN) and type(normed).__name__ == "ParametrizedRNN"
    after = run()
    assert calls == ["LSTM", "LSTM"]
    assert_close(after.detach().numpy(), before.detach().numpy(), np.float32, "converted")
    parametrize.remove_parametrizations(normed, "weight_ih_l0")
    assert type(normed) is ft.RNN


def test_jit_trace_records_torch_operators():
    torch.manual_seed(0)
    theirs, ours = module_pair("lstm", torch.float32, input_size=3, hidden_size=4)
    x = torch.randn(5, 2, 3)
    ft._warned.clear()
    with pytest.warns(ft.FallbackWarning, match="torch.jit.trace"):
        traced = torch.jit.trace(ours, (x,))
    assert "lstm" in str(traced.graph)
    x2 = torch.randn(5, 2, 3)
    assert_close(traced(x2)[0].detach().numpy(), theirs(x2)[0].detach().numpy(), np.float32,
                 "traced")


@pytest.mark.parametrize("shape", [(5, 0, 3), (0, 2, 3)], ids=["B=0", "T=0"])
@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_empty_input_as_torch(name, shape):
    theirs = getattr(torch.nn, name)(3, 4)
    ours = getattr(ft, name)(3, 4)
    ours.load_state_dict(theirs.state_dict())
    x = torch.zeros(shape)
    expected, got = _error_of(lambda: theirs(x)), _error_of(lambda: ours(x))
    assert got == expected
    if expected is None:
        y_t, y_f = theirs(x)[0], ours(x)[0]
        assert y_t.shape == y_f.shape


@pytest.mark.parametrize("hx_kind", ["tensor", "triple", "single"])
def test_malformed_lstm_hx_raises_what_torch_raises(hx_kind):
    theirs, ours = torch.nn.LSTM(3, 4), ft.LSTM(3, 4)
    x, h = torch.randn(5, 2, 3), torch.zeros(1, 2, 4)
    hx = {"tensor": h, "triple": (h, h, h), "single": (h,)}[hx_kind]
    expected = _error_of(lambda: theirs(x, hx))
    assert expected is not None and _error_of(lambda: ours(x, hx)) == expected


def test_saved_tensor_hooks_see_the_reserve():
    m = ft.LSTM(8, 16)
    x = torch.randn(10, 4, 8, requires_grad=True)
    packed = []

    def pack(t):
        packed.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, _ = m(x)
    reserve = ft._core.reserve_size(2, 10, 4, 8, 16)
    assert reserve in packed
    y.sum().backward()
    assert x.grad is not None


FORK_SCRIPT = r"""
import os, numpy as np, torch, fastrnn, fastrnn.torch as ft
m = ft.GRU(64, 64)
m(torch.randn(20, 16, 64))                  # the parent has used torch's pool
assert fastrnn.build_info()["thread_pool"].startswith("OpenMP")
pid = os.fork()
if pid == 0:                                 # the child: fastrnn on its own threads
    ok = fastrnn.build_info()["thread_pool"] == "fastrnn"
    y, _ = fastrnn.GRU(64, 64, seed=0).eval()(np.ones((20, 16, 64), np.float32))
    os._exit(0 if ok and np.isfinite(y).all() else 1)
_, status = os.waitpid(pid, 0)
raise SystemExit(os.waitstatus_to_exitcode(status))
"""


FORK_BEFORE_ANY_CALL_SCRIPT = r"""
import os, numpy as np, torch, fastrnn, fastrnn.torch as ft  # torch's pool chosen
torch.mm(torch.randn(512, 512), torch.randn(512, 512))    # torch's pool has run; fastrnn not yet
assert fastrnn.build_info()["thread_pool"].startswith("OpenMP")
pid = os.fork()
if pid == 0:
    ok = fastrnn.build_info()["thread_pool"] == "fastrnn"
    y, _ = fastrnn.GRU(64, 300, seed=0).eval()(np.ones((20, 16, 64), np.float32))
    os._exit(0 if ok and np.isfinite(y).all() else 1)
_, status = os.waitpid(pid, 0)
raise SystemExit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize("script_text", [FORK_SCRIPT, FORK_BEFORE_ANY_CALL_SCRIPT],
                         ids=["after-calls", "before-any-call"])
def test_forked_child_runs_on_fastrnn_threads(tmp_path, script_text):
    """A forked child has none of the parent's OpenMP threads: it runs on fastrnn's own pool,
    whether or not the parent had used torch's pool before forking."""
    script = tmp_path / "fork.py"
    script.write_text(script_text)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_import_defers_torch_dynamo_and_then_allows_rnn_modules():
    code = ("import sys, fastrnn.torch\n"
            "assert 'torch._dynamo' not in sys.modules\n"
            "import torch._dynamo\n"
            "assert torch._dynamo.config.allow_rnn\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_torch_compile_fullgraph(monkeypatch):
    torch.manual_seed(0)
    calls = []
    for name in ("_core_forward", "_core_backward"):
        real = getattr(ft, name)
        monkeypatch.setattr(ft, name, lambda *a, _real=real, _name=name: (calls.append(_name),
                                                                          _real(*a))[1])

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = ft.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True)
            self.gru = ft.GRU(12, 5)
            self.head = torch.nn.Linear(5, 1)

        def forward(self, x):
            y, _ = self.lstm(x)
            y, h = self.gru(y.transpose(0, 1))
            return self.head(y).sum() + h.sum()

    model = Model()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(3, 7, 4)
    out_c = compiled(x)
    out_c.backward()
    assert calls.count("_core_forward") == 5 and calls.count("_core_backward") == 5  # 2x2 + 1
    grads_c = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out_e = model(x)
    out_e.backward()
    assert_close(out_c.detach().numpy(), out_e.detach().numpy(), np.float32, "compiled output")
    for gc, p in zip(grads_c, model.parameters()):
        assert_close(gc.numpy(), p.grad.numpy(), np.float32, "compiled grad")


def test_torch_compile_packed_input_with_graph_breaks():
    """A PackedSequence's batch sizes are data, so fullgraph is impossible (for torch.nn too);
    without fullgraph the packed call compiles with graph breaks and gives the eager results."""
    torch.manual_seed(0)
    theirs, ours = module_pair("gru", torch.float32, input_size=4, hidden_size=6, num_layers=2,
                               bidirectional=True)
    compiled = torch.compile(ours, backend="aot_eager")
    x = torch.randn(5, 3, 4)
    packed = pack_padded_sequence(x, torch.tensor([5, 2, 3]), enforce_sorted=False)
    y, h = compiled(packed)
    y_t, h_t = theirs(packed)
    assert_close(y.data.detach().numpy(), y_t.data.detach().numpy(), np.float32, "packed y")
    assert_close(h.detach().numpy(), h_t.detach().numpy(), np.float32, "packed h_n")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_SCRIPT = r"""
import gc, os, sys, torch, torch.distributed as dist
import fastrnn.torch as ft
rank = int(sys.argv[1])
dist.init_process_group("gloo", rank=rank, world_size=2)
class Net(torch.nn.Module):
    def __init__(self, namespace):
        super().__init__()
        torch.manual_seed(0)                  # the same weights on every rank and both namespaces
        self.lstm = namespace.LSTM(3, 5, num_layers=2, bidirectional=True)
        self.gru = namespace.GRU(10, 4)
    def forward(self, x):
        y, _ = self.lstm(x)
        y, h = self.gru(y)
        return y.pow(2).mean() + h.sum()
def gradients_after_one_step(namespace):
    net = torch.nn.parallel.DistributedDataParallel(Net(namespace))
    torch.manual_seed(100 + rank)             # each rank its own batch
    net(torch.randn(6, 4, 3)).backward()      # DDP all-reduces the gradients
    assert type(net.module.lstm) is namespace.LSTM
    return {n: p.grad.clone() for n, p in net.named_parameters()}
results = [gradients_after_one_step(namespace) for namespace in (torch.nn, ft)]
worst = max((results[0][n] - results[1][n]).abs().max().item() for n in results[0])
print(f"rank {rank} worst grad diff {worst:.3e}")
assert worst < 1e-5, worst
# Drop every DDP object first, so that destroying the process group joins gloo's threads now:
# left to interpreter shutdown, torch's gloo threads can abort the process while Python finalizes.
gc.collect()
dist.destroy_process_group()
"""


def test_distributed_data_parallel_gloo(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(rank)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        print(out)
        assert p.returncode == 0, out


SHARED_POOL_SCRIPT = r"""
import sys, torch, numpy as np, fastrnn, fastrnn.torch as ft
torch.manual_seed(0)
m = ft.LSTM(64, 96, num_layers=2, bidirectional=True)
x = torch.randn(20, 33, 64, requires_grad=True)
y, _ = m(x)
y.pow(2).sum().backward()
np.save(sys.argv[1], np.concatenate([y.detach().numpy().ravel(), x.grad.numpy().ravel()]
                                    + [p.grad.numpy().ravel() for p in m.parameters()]))
print(fastrnn.build_info()["thread_pool"])
"""


def test_shared_torch_thread_pool_gives_identical_results(tmp_path):
    """fastrnn.torch runs its parallel work on torch's OpenMP pool; the results are bitwise those
    of fastrnn's own threads (same partition of the work, other threads)."""
    script = tmp_path / "pool.py"
    script.write_text(SHARED_POOL_SCRIPT)
    outputs = {}
    for share in ("1", "0"):
        env = dict(os.environ, FASTRNN_SHARE_TORCH_THREADS=share, OMP_NUM_THREADS="2")
        path = tmp_path / f"out{share}.npy"
        proc = subprocess.run([sys.executable, str(script), str(path)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outputs[share] = (np.load(path), proc.stdout.strip())
    assert outputs["1"][1].startswith("OpenMP runtime") and outputs["0"][1] == "fastrnn"
    assert np.array_equal(outputs["1"][0], outputs["0"][0])


def test_concurrent_calls_on_the_shared_pool():
    """Python threads calling fastrnn.torch at once (each its own OpenMP team) get the serial
    results."""
    import concurrent.futures

    torch.manual_seed(0)
    modules = [ft.GRU(40, 50, num_layers=2) for _ in range(4)]
    inputs = [torch.randn(15, 9, 40) for _ in range(4)]

    def run(i):
        x = inputs[i].clone().requires_grad_(True)
        y, h = modules[i](x)
        (y.sum() + h.sum()).backward()
        return y.detach(), x.grad

    serial = [run(i) for i in range(4)]
    for m in modules:
        m.zero_grad()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(run, range(4)))
    for (y0, g0), (y1, g1) in zip(serial, parallel):
        assert torch.equal(y0, y1) and torch.equal(g0, g1)
