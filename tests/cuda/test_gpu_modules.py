"""fastrnn's CUDA backend: ``fastrnn.torch`` modules on CUDA against ``torch.nn`` twins with the
same weights (stacks, bidirection, batch_first, projection, PackedSequence, initial states), no
fallback, the float64 fallback, a non-default stream, torch.compile. GPU tests.

Shared helpers, the tolerances (from tests/conftest.py) and the fixtures live in cuda_helpers.py;
GPU tests are marked ``cuda`` and skip with one reason where no GPU can run them.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import fastrnn
from cuda_helpers import (  # noqa: F401 (fixtures are used by name)
    _all_finite, _late_copy_on,
    assert_rel_close, DTYPES, gpu, _host64, poison, _seed, TORCH_DTYPES, _true_float32, torch,
)


# ---------------------------------------------------------------------------------------------

MODULE_T, MODULE_I, MODULE_H = 9, 6, 16

# cell, nonlinearity, bidirectional, batch_first, packed, proj_size, with hx, batch
MODULE_CONFIGS = [
    ("lstm", None, False, False, False, 0, True, 5),
    ("lstm", None, True, True, True, 0, True, 5),
    ("lstm", None, True, False, True, 4, True, 5),
    ("lstm", None, False, True, False, 3, False, 20),   # batch > 16: standard under auto
    ("gru", None, True, False, True, 0, True, 5),
    ("gru", None, False, True, False, 0, False, 3),
    ("gru", None, True, True, True, 0, True, 18),
    ("rnn", "tanh", True, True, True, 0, True, 4),
    ("rnn", "tanh", False, False, False, 0, True, 2),
    ("rnn", "relu", False, False, True, 0, True, 5),
]
# relu's derivative jumps at 0, so two half-precision implementations may disagree on a whole
# gradient element (see _align_relu_masks): relu is compared in float32 only.
MODULE_CASES = [(c, dt) for c in MODULE_CONFIGS for dt in DTYPES
                if not (c[1] == "relu" and dt != "float32")]


def _module_kwargs(cell, nonlinearity, bidirectional, batch_first, proj):
    kw = dict(num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
    if cell == "lstm":
        kw["proj_size"] = proj
    if cell == "rnn":
        kw["nonlinearity"] = nonlinearity
    return kw


def _module_case(config, dtype, algo="auto", seed=0):
    """fastrnn.torch module in dtype on CUDA, torch.nn twins (same dtype on CUDA; float64 on
    the CPU) with its very weights, and random inputs (float64, rounded through dtype)."""
    cell, nonlin, bidir, batch_first, packed, proj, with_hx, B = config
    kw = _module_kwargs(cell, nonlin, bidir, batch_first, proj)
    torch.manual_seed(seed)
    ours = getattr(fastrnn.torch, cell.upper())(MODULE_I, MODULE_H, algo=algo, **kw)
    ours = ours.to("cuda", TORCH_DTYPES[dtype])
    twin = getattr(torch.nn, cell.upper())(MODULE_I, MODULE_H, **kw)
    twin.load_state_dict(ours.state_dict())
    twin = twin.to("cuda", TORCH_DTYPES[dtype])
    exact = getattr(torch.nn, cell.upper())(MODULE_I, MODULE_H, **kw).double()
    exact.load_state_dict({k: v.double().cpu() for k, v in ours.state_dict().items()})

    rng = np.random.default_rng(seed)
    T, D, L = MODULE_T, 2 if bidir else 1, 2
    R = proj or MODULE_H
    shape = (B, T) if batch_first else (T, B)
    lengths = None
    if packed:
        lengths = rng.integers(1, T + 1, size=B)
        lengths[rng.permutation(B)[:2]] = (T, 1)
    host = {"x": rng.standard_normal(shape + (MODULE_I,)),
            "dy": rng.standard_normal(shape + (D * R,)),
            "dh": rng.standard_normal((L * D, B, R))}
    if cell == "lstm":
        host["dc"] = rng.standard_normal((L * D, B, MODULE_H))
    if with_hx:
        host["h0"] = 0.5 * rng.standard_normal((L * D, B, R))
        if cell == "lstm":
            host["c0"] = 0.5 * rng.standard_normal((L * D, B, MODULE_H))
    inputs = {k: torch.from_numpy(v).to("cuda", TORCH_DTYPES[dtype]) for k, v in host.items()}
    exact_inputs = {k: v.double().cpu() for k, v in inputs.items()}
    return ours, twin, exact, inputs, exact_inputs, lengths, config


def _run_module(module, inputs, lengths, config):
    """Forward and backward of loss = <y, dy> + <h_n, dh> (+ <c_n, dc>); returns outputs and
    every gradient (input, h0, c0, each parameter by name)."""
    cell, _, _, batch_first, _, _, with_hx, _ = config
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    module.zero_grad(set_to_none=True)
    x = inputs["x"].detach().clone().requires_grad_(True)
    hx = None
    if with_hx:
        hx = tuple(inputs[k].detach().clone().requires_grad_(True)
                   for k in (("h0", "c0") if cell == "lstm" else ("h0",)))
    arg = None if hx is None else (hx if cell == "lstm" else hx[0])
    if lengths is not None:
        packed = pack_padded_sequence(x, torch.from_numpy(lengths), batch_first=batch_first,
                                      enforce_sorted=False)
        out, state = module(packed, arg)
        y, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=MODULE_T)
    else:
        y, state = module(x, arg)
    h_n, c_n = state if cell == "lstm" else (state, None)
    loss = (y * inputs["dy"]).sum() + (h_n * inputs["dh"]).sum()
    if c_n is not None:
        loss = loss + (c_n * inputs["dc"]).sum()
    loss.backward()
    outputs = {"output": y, "h_n": h_n, "c_n": c_n}
    grads = {"input": x.grad}
    if hx is not None:
        grads.update(zip(("h0", "c0"), (h.grad for h in hx)))
    grads.update({name: p.grad for name, p in module.named_parameters()})
    return outputs, grads


def _compare_module(got, want, dtype, label):
    outputs, grads = got
    w_outputs, w_grads = want
    assert set(grads) == set(w_grads), (sorted(grads), sorted(w_grads))
    for name in outputs:
        assert_rel_close(outputs[name], w_outputs[name], dtype, "output", f"{label} {name}")
    for name in grads:
        assert grads[name] is not None, f"{label}: no gradient for {name}"
        assert_rel_close(grads[name], w_grads[name], dtype, "grad", f"{label} d{name}")


def _print_torch_error(twin_result, exact_result, dtype, label):
    """torch.nn's own error in the same dtype, for scale (not asserted)."""
    (outputs, grads), (w_outputs, w_grads) = twin_result, exact_result
    for name, value in list(outputs.items()) + list(grads.items()):
        want = w_outputs[name] if name in w_outputs else w_grads[name]
        if value is None or want is None:
            continue
        a, e = _host64(value), _host64(want)
        print(f"{label} torch.nn {dtype} {name}: relative error "
              f"{np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-300):.3e}")


@gpu
@pytest.mark.parametrize("config,dtype", MODULE_CASES,
                         ids=["-".join(map(str, c)) + "-" + dt for c, dt in MODULE_CASES])
def test_module_matches_torch(config, dtype):
    """Outputs, final states and every gradient of a 2-layer fastrnn.torch module on CUDA.

    float32: against torch.nn in float32 on CUDA (TF32 off) and torch.nn in float64. float16
    and bfloat16 round differently in fastrnn and torch.nn, so fastrnn's error is bounded
    against torch.nn in float64 on the same rounded weights and inputs (torch.nn's own error in
    the dtype is printed beside it)."""
    ours, twin, exact, inputs, exact_inputs, lengths, config = _module_case(
        config, dtype, seed=_seed("module", config, dtype))
    label = f"{config[0]} {dtype}"
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastrnn.torch.FallbackWarning)
        got = _run_module(ours, inputs, lengths, config)
    want = _run_module(exact, exact_inputs, lengths, config)
    _compare_module(got, want, dtype, label + " vs torch.nn float64")
    if dtype == "float32":
        theirs = _run_module(twin, inputs, lengths, config)
        _compare_module(got, theirs, dtype, label + " vs torch.nn float32")
    else:
        try:  # for scale only: no assertion rests on torch.nn's half-precision kernels
            _print_torch_error(_run_module(twin, inputs, lengths, config), want, dtype, label)
        except RuntimeError as exc:
            print(f"{label}: torch.nn in {dtype} on CUDA failed: {exc}")


@gpu
@pytest.mark.parametrize("algo", ["standard", "persistent"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_module_algos(cell, dtype, algo):
    config = (cell, "tanh" if cell == "rnn" else None, True, False, True, 0, True, 5)
    ours, _, exact, inputs, exact_inputs, lengths, config = _module_case(
        config, dtype, algo=algo, seed=_seed("module-algo", cell, dtype, algo))
    assert ours.algo == algo
    got = _run_module(ours, inputs, lengths, config)
    want = _run_module(exact, exact_inputs, lengths, config)
    _compare_module(got, want, dtype, f"{cell} {dtype} {algo}")


def _count_kernel_calls(monkeypatch):
    """Counts of fastrnn.cuda.forward / backward calls (each queues one layer and direction)."""
    calls = {"forward": 0, "backward": 0}
    for name in calls:
        real = getattr(fastrnn.cuda, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(fastrnn.cuda, name, counted)
    return calls


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_module_runs_fastrnn_kernels(cell, dtype, monkeypatch):
    """No FallbackWarning, no call of torch.nn's own forward, and fastrnn's kernels queued once
    per layer and direction, forward and backward."""
    fastrnn.torch._warned.clear()  # so that a fallback warns even if it warned before

    def torch_forward(*args, **kwargs):
        raise AssertionError("torch.nn's own forward ran")

    monkeypatch.setattr(getattr(torch.nn, cell.upper()), "forward", torch_forward)
    calls = _count_kernel_calls(monkeypatch)
    config = (cell, "tanh" if cell == "rnn" else None, True, True, True, 0, True, 5)
    ours, _, exact, inputs, exact_inputs, lengths, config = _module_case(
        config, dtype, seed=_seed("kernels", cell, dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastrnn.torch.FallbackWarning)
        got = _run_module(ours, inputs, lengths, config)
    assert calls == {"forward": 4, "backward": 4}, calls  # 2 layers x 2 directions
    monkeypatch.undo()
    _compare_module(got, _run_module(exact, exact_inputs, lengths, config), dtype,
                    f"{cell} {dtype}")


@gpu
@pytest.mark.parametrize("algo", ["standard", "persistent"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_module_poisoned_buffers(cell, algo, poison):
    config = (cell, None, True, False, True, 0, True, 5)
    ours, _, exact, inputs, exact_inputs, lengths, config = _module_case(
        config, "float32", algo=algo, seed=_seed("module-poison", cell, algo))
    got = _run_module(ours, inputs, lengths, config)
    _all_finite(f"poisoned module {cell} {algo}", {**got[0], **got[1]})
    _compare_module(got, _run_module(exact, exact_inputs, lengths, config), "float32",
                    f"poisoned module {cell} {algo}")


@gpu
def test_module_float64_falls_back_to_torch():
    """float64 has no CUDA kernels: torch.nn's implementation runs, with a FallbackWarning."""
    config = ("lstm", None, True, False, True, 0, True, 5)
    ours, _, _, _, _, lengths, config = _module_case(config, "float32", seed=3)
    ours = ours.double()
    twin = torch.nn.LSTM(MODULE_I, MODULE_H, **_module_kwargs("lstm", None, True, False, 0))
    twin = twin.to("cuda", torch.float64)
    twin.load_state_dict(ours.state_dict())
    rng = np.random.default_rng(3)
    host = {"x": rng.standard_normal((MODULE_T, 5, MODULE_I)),
            "dy": rng.standard_normal((MODULE_T, 5, 2 * MODULE_H))}
    for name in ("dh", "dc", "h0", "c0"):
        host[name] = rng.standard_normal((4, 5, MODULE_H))  # 2 layers x 2 directions
    inputs = {k: torch.from_numpy(v).cuda() for k, v in host.items()}
    fastrnn.torch._warned.clear()
    with pytest.warns(fastrnn.torch.FallbackWarning):
        got = _run_module(ours, inputs, lengths, config)
    _compare_module(got, _run_module(twin, inputs, lengths, config), "float64", "float64 fallback")


@gpu
def test_module_runs_on_current_stream():
    config = ("lstm", None, True, False, False, 0, True, 8)
    ours, _, _, inputs, _, lengths, config = _module_case(config, "float32", seed=9)
    want = _run_module(ours, inputs, lengths, config)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    late = {k: _late_copy_on(side, v) for k, v in inputs.items()}
    with torch.cuda.stream(side):
        got = _run_module(ours, late, lengths, config)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    _compare_module(got, want, "float32", "side stream module")


@gpu
def test_module_torch_compile(monkeypatch):
    """torch.compile(fullgraph=True) on CUDA: fastrnn's kernels run (no fallback), and forward
    and backward match eager."""
    import torch._dynamo
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = fastrnn.torch.LSTM(MODULE_I, MODULE_H, num_layers=2, bidirectional=True,
                               batch_first=True).cuda()
    x = torch.randn(5, MODULE_T, MODULE_I, device="cuda")
    dy = torch.randn(5, MODULE_T, 2 * MODULE_H, device="cuda")

    def step(module):
        model.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_(True)
        y, (h_n, c_n) = module(xx)
        ((y * dy).sum() + h_n.sum() + c_n.sum()).backward()
        return ({"output": y, "h_n": h_n, "c_n": c_n},
                {"input": xx.grad, **{n: p.grad for n, p in model.named_parameters()}})

    fastrnn.torch._warned.clear()
    calls = _count_kernel_calls(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", fastrnn.torch.FallbackWarning)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        got = step(compiled)
    fallbacks = [w for w in caught if issubclass(w.category, fastrnn.torch.FallbackWarning)]
    assert not fallbacks, [str(w.message) for w in fallbacks]
    assert calls == {"forward": 4, "backward": 4}, calls  # 2 layers x 2 directions
    monkeypatch.undo()
    want = step(model)
    _compare_module(got, want, "float32", "compiled")
    torch._dynamo.reset()


