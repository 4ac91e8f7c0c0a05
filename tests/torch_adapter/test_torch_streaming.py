"""Streaming: a multi-layer module called once per step with its carried state, under no_grad
(the inference path of fastrnn.torch's modules), against one whole-sequence call and torch.nn."""
import pytest

torch = pytest.importorskip("torch")

import fastrnn.torch as ftorch  # noqa: E402

CASES = [("LSTM", {}), ("GRU", {}), ("RNN", {}), ("RNN", {"nonlinearity": "relu"}),
         ("LSTM", {"proj_size": 3}), ("GRU", {"batch_first": True}), ("LSTM", {"bias": False})]
IDS = ["lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_proj", "gru_batch_first", "lstm_nobias"]


def pair(name, *args, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(*args, **kw).to(dtype)
    ours = getattr(ftorch, name)(*args, **kw).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def flat(h):
    return list(h) if isinstance(h, tuple) else [h]


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_step_by_step_equals_one_sequence_call(name, kw, dtype):
    T, B, I, H = 7, 3, 5, 6
    ours, ref = pair(name, I, H, num_layers=3, dtype=dtype, **kw)
    bf = kw.get("batch_first", False)
    x = torch.randn(B, T, I, dtype=dtype) if bf else torch.randn(T, B, I, dtype=dtype)
    with torch.no_grad():
        y_all, h_all = ours(x)
        y_ref, h_ref = ref(x)
        hx, ys = None, []
        for t in range(T):
            step = x[:, t:t + 1] if bf else x[t:t + 1]
            y, hx = ours(step, hx)
            assert y.grad_fn is None
            ys.append(y)
    y_steps = torch.cat(ys, 1 if bf else 0)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y_steps, y_all, **tol)
    for a, b in zip(flat(hx), flat(h_all)):
        torch.testing.assert_close(a, b, **tol)
    tol_ref = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(y_all, y_ref, **tol_ref)
    for a, b in zip(flat(h_all), flat(h_ref)):
        torch.testing.assert_close(a, b, **tol_ref)


def test_inference_path_runs_one_core_call_per_layer_and_saves_nothing(monkeypatch):
    calls = []
    real = ftorch._core.layer_forward

    def spy(*args, **kwargs):
        calls.append(args[11])  # training
        return real(*args, **kwargs)

    monkeypatch.setattr(ftorch._core, "layer_forward", spy)
    lstm = ftorch.LSTM(4, 5, num_layers=2)
    x = torch.randn(1, 2, 4)
    with torch.no_grad():
        y, (h, c) = lstm(x)
    assert calls == [False, False] and y.grad_fn is None and h.shape == (2, 2, 5)


def test_inference_path_keeps_torch_nn_errors():
    ours, ref = pair("GRU", 4, 5, num_layers=2)
    x = torch.randn(1, 3, 4)
    bad_hx = torch.zeros(2, 2, 5)  # batch 2 for an input of batch 3
    with torch.no_grad():
        with pytest.raises(RuntimeError) as theirs:
            ref(x, bad_hx)
        with pytest.raises(RuntimeError) as mine:
            ours(x, bad_hx)
    assert str(mine.value) == str(theirs.value)


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("name,kw", [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {}),
                                     ("RNNCell", {"nonlinearity": "relu"}),
                                     ("GRUCell", {"bias": False})],
                         ids=["lstm", "gru", "rnn_tanh", "rnn_relu", "gru_nobias"])
def test_cells_without_gradient_equal_torch_nn(name, kw, with_hx, batched):
    ours, ref = pair(name, 5, 7, dtype=torch.float64, **kw)
    x = torch.randn(3, 5, dtype=torch.float64) if batched else torch.randn(5, dtype=torch.float64)
    shape = (3, 7) if batched else (7,)
    hx = None
    if with_hx:
        hx = torch.randn(*shape, dtype=torch.float64)
        if name == "LSTMCell":
            hx = (hx, torch.randn(*shape, dtype=torch.float64))
    with torch.no_grad():
        got, want = ours(x, hx), ref(x, hx)
    for a, b in zip(flat(got), flat(want)):
        assert a.grad_fn is None and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_inference_path_keeps_torch_nn_input_size_error():
    ours, ref = pair("LSTM", 4, 5, num_layers=2)
    x = torch.randn(1, 3, 6)  # input size 6 for a module of input size 4
    with torch.no_grad():
        with pytest.raises(RuntimeError) as theirs:
            ref(x)
        with pytest.raises(RuntimeError) as mine:
            ours(x)
    assert str(mine.value) == str(theirs.value)
