"""fastrnn.torch under torch.func and higher-order autograd, on fastrnn's kernels.

gradcheck and gradgradcheck with PyTorch's defaults (batched gradients included) and PyTorch's own
module inputs for RNN/LSTM/GRU; ``is_grads_batched`` and ``jacobian(vectorize=True)``; vmap over
inputs and over stacked weights (ensembles); per-sample gradients; jvp, jacfwd, jacrev and
forward-mode AD; double backward (gradient penalties, Hessian-vector products) -- each against
torch.nn, with FallbackWarning an error and the core's entry points counted, so that a silent
fallback to torch.nn fails.
"""
import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_close

torch = pytest.importorskip("torch")
import fastrnn  # noqa: E402
import fastrnn.torch as ft  # noqa: E402
from torch.func import (functional_call, grad, jacfwd, jacrev, jvp, stack_module_state,  # noqa: E402
                        vjp, vmap)
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402
from torch_helpers import module_pair  # noqa: E402

pytestmark = pytest.mark.filterwarnings("error::fastrnn.torch.FallbackWarning")

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
VARIANTS = [(cell, {}) for cell in CELLS] + [("lstm", {"proj_size": 2})]
VARIANT_IDS = [cell + ("_proj" if kw else "") for cell, kw in VARIANTS]


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


def close(actual, expected, what):
    assert_close(actual.detach().numpy(), expected.detach().numpy(), np.float64, what)


def outputs_as_tuple(result):
    y, state = result
    y = y.data if isinstance(y, torch.nn.utils.rnn.PackedSequence) else y
    return (y,) + (state if isinstance(state, tuple) else (state,))


# ---- gradcheck / gradgradcheck with PyTorch's defaults ---------------------------------------

@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("cell,extra", VARIANTS, ids=VARIANT_IDS)
def test_gradcheck_and_gradgradcheck_defaults(cell, extra, packed, core_calls):
    """Batched gradients (check_batched_grad, gradcheck's default) and second derivatives through
    the kernels, with lengths, both directions and the projection."""
    torch.manual_seed(0)
    _, m = module_pair(cell, torch.float64, input_size=2, hidden_size=3, bidirectional=True,
                       **extra)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    T, B, R = 3, 3, extra.get("proj_size", 3)
    x = torch.randn(T, B, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, B, R, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, B, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([2, 3, 1])

    def f(x, h0, c0, *ps):
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        hx = (h0, c0) if cell == "lstm" else h0
        return outputs_as_tuple(functional_call(m, dict(zip(names, ps)), (inp, hx)))

    inputs = (x, h0, c0, *params)
    # torch has no forward-mode AD for pack_padded_sequence: forward mode on padded input only
    assert torch.autograd.gradcheck(f, inputs, check_batched_grad=True,
                                    check_forward_ad=not packed)
    assert torch.autograd.gradgradcheck(f, inputs, check_batched_grad=True)
    assert core_calls["forward"] and core_calls["backward"]


_MODULE_INPUTS = """
import sys, torch
from torch.testing._internal import common_modules  # needs expecttest (the test extra)
info = next(i for i in common_modules.module_db if i.module_cls is getattr(torch.nn, sys.argv[1]))
cases = info.module_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=True,
                                training=True)
torch.save([(c.constructor_input.args, c.constructor_input.kwargs, c.forward_input.args)
            for c in cases], sys.argv[2])
"""


def pytorch_module_inputs(name, tmp_path):
    """PyTorch's own test inputs for torch.nn.RNN/LSTM/GRU (torch.testing's module_db): made in
    a child process, because importing torch.testing._internal changes the process (it locks
    torch.backends' flags)."""
    path = str(tmp_path / f"{name}.pt")
    subprocess.run([sys.executable, "-c", _MODULE_INPUTS, name, path], check=True, timeout=300)
    return torch.load(path)


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_pytorch_module_inputs_gradcheck(name, core_calls, tmp_path):
    """PyTorch's module tests' gradient checks (test_grad, test_gradgrad), on PyTorch's inputs
    for the torch.nn class, with the fastrnn.torch class in its place."""
    for ctor_args, ctor_kwargs, args in pytorch_module_inputs(name, tmp_path)[::7]:
        torch.manual_seed(0)
        m = getattr(ft, name)(*ctor_args, **ctor_kwargs).to(torch.float64)
        params = dict(m.named_parameters())
        flat, spec = torch.utils._pytree.tree_flatten(args)
        flat = [t.detach().requires_grad_() for t in flat]
        n_inputs = len(flat)

        def f(*flat_and_params, spec=spec, m=m, params=params):
            call_args = torch.utils._pytree.tree_unflatten(list(flat_and_params[:n_inputs]), spec)
            new = dict(zip(params, flat_and_params[n_inputs:]))
            return tuple(torch.utils._pytree.tree_leaves(functional_call(m, new, call_args)))

        inputs = tuple(flat) + tuple(params.values())
        assert torch.autograd.gradcheck(f, inputs, check_batched_grad=True)
        assert torch.autograd.gradgradcheck(f, inputs, check_batched_grad=True)
    assert core_calls["forward"] and core_calls["backward"]


# ---- batched incoming gradients --------------------------------------------------------------

@pytest.mark.parametrize("cell,extra", VARIANTS, ids=VARIANT_IDS)
def test_is_grads_batched_equals_a_loop(cell, extra, core_calls):
    torch.manual_seed(1)
    _, m = module_pair(cell, torch.float64, input_size=3, hidden_size=4, num_layers=2, **extra)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    y, _ = m(x)
    cotangents = torch.randn(7, *y.shape, dtype=torch.float64)
    wanted = [x, *m.parameters()]
    batched = torch.autograd.grad(y, wanted, cotangents, is_grads_batched=True,
                                  retain_graph=True)
    for n in range(cotangents.shape[0]):
        one = torch.autograd.grad(y, wanted, cotangents[n], retain_graph=True)
        for a, e in zip(batched, one):
            close(a[n], e, f"cotangent {n}")
    assert core_calls["backward"] >= 1


def test_vectorized_jacobian_equals_torch_nn(core_calls):
    torch.manual_seed(2)
    theirs, ours = module_pair("gru", torch.float64, input_size=3, hidden_size=4,
                               bidirectional=True)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    a = torch.autograd.functional.jacobian(lambda x: ours(x)[0], x, vectorize=True)
    e = torch.autograd.functional.jacobian(lambda x: theirs(x)[0], x)
    close(a, e, "jacobian")
    assert core_calls["backward"] >= 1


# ---- vmap -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cell,extra", VARIANTS, ids=VARIANT_IDS)
def test_vmap_over_inputs_and_states(cell, extra, core_calls):
    torch.manual_seed(3)
    theirs, ours = module_pair(cell, torch.float64, input_size=3, hidden_size=5, num_layers=2,
                               bidirectional=True, batch_first=True, **extra)
    N, B, T, R = 4, 2, 6, extra.get("proj_size", 5)
    xs = torch.randn(N, B, T, 3, dtype=torch.float64)
    h0 = torch.randn(N, 4, B, R, dtype=torch.float64)
    c0 = torch.randn(4, B, 5, dtype=torch.float64)  # not vmapped

    def run(m):
        def one(x, h):
            return outputs_as_tuple(m(x, (h, c0) if cell == "lstm" else h))
        return one

    got = vmap(run(ours))(xs, h0)
    for n in range(N):
        for a, e in zip(got, run(theirs)(xs[n], h0[n])):
            close(a[n], e, f"sample {n}")
    assert core_calls["forward"] == 4  # one call per layer and direction: the samples folded


@pytest.mark.parametrize("cell,extra", VARIANTS, ids=VARIANT_IDS)
def test_per_sample_gradients_equal_a_loop(cell, extra, core_calls):
    torch.manual_seed(4)
    theirs, ours = module_pair(cell, torch.float64, input_size=3, hidden_size=4, num_layers=2,
                               bidirectional=True, **extra)
    params = {k: v.detach() for k, v in ours.named_parameters()}
    samples = torch.randn(6, 5, 3, dtype=torch.float64)  # (N, T, I): one sequence each
    targets = torch.randn(6, 5, 2 * extra.get("proj_size", 4), dtype=torch.float64)

    def loss(m):
        def f(p, x, target):
            y, _ = functional_call(m, p, (x.unsqueeze(1),))
            return (y.squeeze(1) - target).pow(2).mean()
        return f

    per_sample = vmap(grad(loss(ours)), in_dims=(None, 0, 0))(params, samples, targets)
    assert core_calls == {"forward": 4, "backward": 4}
    for n in range(samples.shape[0]):
        expected = grad(loss(theirs))(params, samples[n], targets[n])
        for k in params:
            close(per_sample[k][n], expected[k], f"{k}, sample {n}")


@pytest.mark.parametrize("cell,extra", VARIANTS, ids=VARIANT_IDS)
def test_ensemble_of_stacked_weights(cell, extra, core_calls):
    torch.manual_seed(5)
    pairs = [module_pair(cell, torch.float64, input_size=3, hidden_size=4, **extra)
             for _ in range(3)]
    params, buffers = stack_module_state([ours for _, ours in pairs])
    base = pairs[0][1]
    x = torch.randn(5, 2, 3, dtype=torch.float64)

    def forward(p, b):
        return functional_call(base, (p, b), (x,))[0]

    ys = vmap(forward)(params, buffers)
    grads = vmap(grad(lambda p, b: forward(p, b).pow(2).sum()))(params, buffers)
    assert core_calls["forward"] >= 3 and core_calls["backward"] >= 3
    for n, (theirs, _) in enumerate(pairs):
        y = theirs(x)[0]
        close(ys[n], y, f"member {n}")
        expected = torch.autograd.grad(y.pow(2).sum(), list(theirs.parameters()))
        for (k, _), e in zip(theirs.named_parameters(), expected):
            close(grads[k][n], e, f"member {n} {k}")


def test_vjp_and_jacrev_equal_torch_nn(core_calls):
    torch.manual_seed(6)
    theirs, ours = module_pair("lstm", torch.float64, input_size=3, hidden_size=4,
                               num_layers=2)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    h0, c0 = torch.randn(2, 2, 2, 4, dtype=torch.float64)
    close(jacrev(lambda h: ours(x, (h, c0))[0].sum(0))(h0),
          jacrev(lambda h: theirs(x, (h, c0))[0].sum(0))(h0), "jacrev")
    u = torch.randn(5, 2, 4, dtype=torch.float64)
    (_, pull_a), (_, pull_e) = (vjp(lambda x: m(x)[0], x) for m in (ours, theirs))
    close(pull_a(u)[0], pull_e(u)[0], "vjp")
    assert core_calls["backward"] >= 2


# ---- forward mode ---------------------------------------------------------------------------

@pytest.mark.parametrize("cell,extra", VARIANTS, ids=VARIANT_IDS)
def test_jvp_and_jacfwd_equal_torch_nn(cell, extra, core_calls):
    torch.manual_seed(7)
    theirs, ours = module_pair(cell, torch.float64, input_size=3, hidden_size=4, num_layers=2,
                               bidirectional=True, **extra)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    v = torch.randn_like(x)
    params = {k: p.detach() for k, p in theirs.named_parameters()}
    tangents = {k: torch.randn_like(p) for k, p in params.items()}
    for what, fn, primals, tans in (
            ("input", lambda m: lambda x: outputs_as_tuple(m(x)), (x,), (v,)),
            ("weights", lambda m: lambda p: outputs_as_tuple(functional_call(m, p, (x,))),
             (params,), (tangents,))):
        _, got = jvp(fn(ours), primals, tans)
        _, expected = jvp(fn(theirs), primals, tans)
        for a, e in zip(got, expected):
            close(a, e, f"jvp over the {what}")
    small = x[:3]
    close(jacfwd(lambda x: ours(x)[0])(small), jacrev(lambda x: theirs(x)[0])(small), "jacfwd")
    assert core_calls["forward"] >= 1 and core_calls["backward"] == 0  # jvp: no backward


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell,extra", VARIANTS, ids=VARIANT_IDS)
def test_forward_mode_ad_with_lengths(cell, extra, reverse):
    """Forward mode of one layer with lengths (torch.nn has none: pack_padded_sequence has no
    forward-mode AD) against J v from the reverse mode, which the tests above check against
    torch.nn, for a tangent on every input."""
    import torch.autograd.forward_ad as fwAD
    from fastrnn.torch._ops import layer

    torch.manual_seed(8)
    theirs, _ = module_pair(cell, torch.float64, input_size=3, hidden_size=4, **extra)
    T, B, R = 6, 3, extra.get("proj_size", 4)
    w = [p.detach() for p in theirs.parameters()]
    primals = [torch.randn(T, B, 3, dtype=torch.float64), torch.randn(B, R, dtype=torch.float64),
               torch.randn(B, 4, dtype=torch.float64) if cell == "lstm" else None,
               w[0], w[1], w[2], w[3], w[4] if extra else None]
    tangents = [None if p is None else torch.randn_like(p) for p in primals]
    lengths = torch.tensor([6, 2, 4])

    def run(*args):
        return tuple(o for o in layer(cell, *args, lengths, reverse) if o is not None)

    with fwAD.dual_level():
        duals = [None if p is None else fwAD.make_dual(p, t) for p, t in zip(primals, tangents)]
        got = [fwAD.unpack_dual(o).tangent for o in run(*duals)]
    present = [i for i, p in enumerate(primals) if p is not None]

    def of_present(*values):
        args = list(primals)
        for i, v in zip(present, values):
            args[i] = v
        return run(*args)
    jacobians = torch.autograd.functional.jacobian(of_present, tuple(primals[i] for i in present))
    for out, tangent, jac_row in zip(run(*primals), got, jacobians):
        expected = sum((j.reshape(out.numel(), -1) @ tangents[i].reshape(-1)).reshape(out.shape)
                       for i, j in zip(present, jac_row))
        close(tangent, expected, "tangent")


# ---- double backward ------------------------------------------------------------------------

@pytest.mark.parametrize("cell,extra", VARIANTS, ids=VARIANT_IDS)
def test_gradient_penalty_and_hessian_vector_product(cell, extra, core_calls):
    torch.manual_seed(9)
    theirs, ours = module_pair(cell, torch.float64, input_size=3, hidden_size=4, num_layers=2,
                               bidirectional=True, **extra)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([5, 1, 3])
    results = []
    for m in (theirs, ours):
        xi = x.clone().requires_grad_()
        y = m(pack_padded_sequence(xi, lengths, enforce_sorted=False))[0].data
        g_x, g_w = torch.autograd.grad(y.pow(2).sum(), (xi, m.weight_hh_l0), create_graph=True)
        # a gradient penalty: its gradient for every parameter and the input
        penalty = g_x.pow(2).sum() + g_w.pow(2).sum()
        second = torch.autograd.grad(penalty, [xi, *m.parameters()], retain_graph=True)
        # a Hessian-vector product of the loss with respect to weight_hh_l0
        v = torch.ones_like(g_w)
        hvp, = torch.autograd.grad(g_w, m.weight_hh_l0, v, retain_graph=True)
        results.append([g_x, g_w, *second, hvp])
    for a, e in zip(*results):
        close(a, e, "double backward")
    assert core_calls["backward"] >= 8  # first backward: 4; the second: the core again


@pytest.mark.parametrize("cell", CELLS)
def test_third_order_derivative(cell):
    """The incoming gradient depends on the input too (y**3): each path counted once."""
    torch.manual_seed(10)
    theirs, ours = module_pair(cell, torch.float64, input_size=2, hidden_size=3)
    x = torch.randn(3, 1, 2, dtype=torch.float64)
    results = []
    for m in (theirs, ours):
        xi = x.clone().requires_grad_()
        g, = torch.autograd.grad(m(xi)[0].pow(3).sum(), xi, create_graph=True)
        gg, = torch.autograd.grad(g.pow(2).sum(), xi, create_graph=True)
        ggg, = torch.autograd.grad(gg.sum(), xi)
        results.append([g, gg, ggg])
    for a, e in zip(*results):
        close(a, e, "derivatives of order 1 to 3")


def test_torch_compile_of_a_vmapped_per_sample_gradient_step(core_calls):
    """torch.compile traces torch.func transforms of the custom operators (their vmap rules and
    autograd), so a compiled per-sample-gradient step runs the kernels."""
    torch.manual_seed(11)
    theirs, ours = module_pair("lstm", torch.float32, input_size=3, hidden_size=4)
    params = {k: v.detach() for k, v in ours.named_parameters()}
    samples = torch.randn(4, 5, 3)

    def loss(m):
        return lambda p, x: functional_call(m, p, (x.unsqueeze(1),))[0].pow(2).sum()

    step = torch.compile(vmap(grad(loss(ours)), in_dims=(None, 0)), fullgraph=False)
    got = step(params, samples)
    for n in range(samples.shape[0]):
        expected = grad(loss(theirs))(params, samples[n])
        for k in params:
            assert_close(got[k][n].numpy(), expected[k].numpy(), np.float32, k)
    assert core_calls["forward"] and core_calls["backward"]
