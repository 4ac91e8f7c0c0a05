"""fastrnn.RNN / LSTM / GRU against torch.nn.RNN / LSTM / GRU loaded with the same weights.

Outputs, final states and every gradient (input, h0, c0, every parameter), float64 and float32,
over random configurations of layers, directions, batch_first, lengths (as a PackedSequence on the
torch side) and initial states.
"""
import numpy as np
import pytest

import fastrnn
from conftest import assert_close

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402



def build_pair(cell, nonlinearity, input_size, hidden, layers, bidirectional, batch_first, bias,
               dtype, seed):
    kwargs = dict(num_layers=layers, bias=bias, batch_first=batch_first,
                  bidirectional=bidirectional)
    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    if cell == "rnn":
        ours = fastrnn.RNN(input_size, hidden, nonlinearity=nonlinearity, dtype=dtype, seed=seed,
                           **kwargs)
        theirs = torch.nn.RNN(input_size, hidden, nonlinearity=nonlinearity, dtype=torch_dtype,
                              **kwargs)
    else:
        ours = getattr(fastrnn, cell.upper())(input_size, hidden, dtype=dtype, seed=seed, **kwargs)
        theirs = getattr(torch.nn, cell.upper())(input_size, hidden, dtype=torch_dtype, **kwargs)
    state = {k: torch.from_numpy(v.copy()) for k, v in ours.params.items()}
    theirs.load_state_dict(state, strict=True)
    return ours, theirs


def run_torch(module, x, hx, lengths, batch_first, T):
    x_t = torch.from_numpy(x).requires_grad_(True)
    hx_t = None
    if hx is not None:
        hx_t = tuple(torch.from_numpy(h).requires_grad_(True) for h in hx)
    arg = hx_t if (hx_t is None or len(hx_t) == 2) else hx_t[0]
    if lengths is not None:
        packed = pack_padded_sequence(x_t, torch.from_numpy(lengths), batch_first=batch_first,
                                      enforce_sorted=False)
        out, state = module(packed, arg)
        y, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    else:
        y, state = module(x_t, arg)
    return x_t, hx_t, y, state


def check_torch_grads(grads, x_t, hx_t, theirs, dtype):
    """Every gradient fastrnn returned against torch's: input, h0 (and c0), every parameter."""
    assert_close(grads["input"], x_t.grad.numpy(), dtype, "d input")
    if hx_t is not None:
        for name, h in zip(("h0", "c0"), hx_t):
            assert_close(grads[name], h.grad.numpy(), dtype, f"d {name}")
    for name, p in theirs.named_parameters():
        assert_close(grads[name], p.grad.numpy(), dtype, f"d {name}")
    assert set(grads) - {"input", "h0", "c0"} == {n for n, _ in theirs.named_parameters()}


CONFIGS = [
    # cell, nonlinearity, layers, bidirectional, batch_first, bias, lengths, with hx, T, B, I, H
    ("lstm", None, 1, False, False, True, False, False, 1, 1, 3, 5),
    ("lstm", None, 2, True, True, True, True, True, 7, 5, 3, 11),
    ("lstm", None, 3, True, False, False, True, True, 6, 4, 5, 7),
    ("gru", None, 1, True, False, True, True, False, 5, 3, 4, 6),
    ("gru", None, 2, False, True, True, True, True, 9, 2, 7, 13),
    ("gru", None, 3, True, True, False, False, True, 4, 1, 2, 3),
    ("rnn", "tanh", 2, True, False, True, True, True, 8, 6, 5, 9),
    ("rnn", "tanh", 1, False, True, False, False, False, 1, 3, 2, 2),
    ("rnn", "relu", 2, True, True, True, True, True, 6, 5, 3, 7),
    ("rnn", "relu", 3, False, False, True, True, False, 11, 3, 4, 5),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_matches_torch(config, dtype):
    cell, nonlin, layers, bidir, batch_first, bias, use_lengths, use_hx, T, B, I, H = config
    rng = np.random.default_rng(abs(hash(config)) % 2**32)
    ours, theirs = build_pair(cell, nonlin, I, H, layers, bidir, batch_first, bias, dtype,
                              seed=int(rng.integers(1 << 30)))
    D = 2 if bidir else 1
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    lengths = None
    if use_lengths:
        lengths = rng.integers(1, T + 1, size=B).astype(np.int64)
        lengths[rng.integers(B)] = T  # torch pads to the longest; keep one full-length
    hx = None
    if use_hx:
        n_states = 2 if cell == "lstm" else 1
        hx = tuple(rng.standard_normal((layers * D, B, H)).astype(dtype) for _ in range(n_states))

    y, state = ours(x, None if hx is None else (hx if cell == "lstm" else hx[0]), lengths=lengths)
    h_n, c_n = state if cell == "lstm" else (state, None)
    x_t, hx_t, y_t, state_t = run_torch(theirs, x, hx, lengths, batch_first, T)
    h_t, c_t = state_t if cell == "lstm" else (state_t, None)

    assert_close(y, y_t.detach().numpy(), dtype, "output")
    assert_close(h_n, h_t.detach().numpy(), dtype, "h_n")
    if cell == "lstm":
        assert_close(c_n, c_t.detach().numpy(), dtype, "c_n")

    dy = rng.standard_normal(y.shape).astype(dtype)
    dh = rng.standard_normal(h_n.shape).astype(dtype)
    dc = rng.standard_normal(h_n.shape).astype(dtype) if cell == "lstm" else None
    grads = ours.backward(dy, dh, dc)
    loss = (y_t * torch.from_numpy(dy)).sum() + (h_t * torch.from_numpy(dh)).sum()
    if cell == "lstm":
        loss = loss + (c_t * torch.from_numpy(dc)).sum()
    loss.backward()

    check_torch_grads(grads, x_t, hx_t, theirs, dtype)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_unbatched_matches_torch(cell):
    rng = np.random.default_rng(7)
    ours, theirs = build_pair(cell, "tanh", 4, 6, 2, True, False, True, np.float64, seed=3)
    x = rng.standard_normal((5, 4))
    y, state = ours(x)
    y_t, state_t = theirs(torch.from_numpy(x))
    assert_close(y, y_t.detach().numpy(), np.float64, "output")
    h_n = state[0] if cell == "lstm" else state
    h_t = state_t[0] if cell == "lstm" else state_t
    assert_close(h_n, h_t.detach().numpy(), np.float64, "h_n")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_default_init_matches_torch_distribution(cell):
    """PyTorch initialises every parameter uniformly in +-1/sqrt(hidden_size)."""
    H = 16
    ours = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU, "rnn": fastrnn.RNN}[cell](8, H, seed=1)
    theirs = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](8, H)
    bound = 1 / np.sqrt(H)
    for name, p in theirs.named_parameters():
        assert ours.params[name].shape == tuple(p.shape), name
        assert np.abs(ours.params[name]).max() <= bound
        assert np.abs(ours.params[name]).max() > 0.8 * bound  # spread over the whole range


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layers,bidirectional,batch_first,use_lengths,use_hx,T,B,I,H,P", [
    (1, False, False, False, False, 1, 1, 3, 5, 2),
    (2, True, True, True, True, 7, 5, 3, 11, 4),
    (3, True, False, True, False, 6, 4, 5, 7, 6),
    (2, False, True, False, True, 9, 2, 4, 8, 1),
])
def test_lstm_proj_size_matches_torch(dtype, layers, bidirectional, batch_first, use_lengths,
                                      use_hx, T, B, I, H, P):
    rng = np.random.default_rng(T * 100 + B * 10 + P)
    kwargs = dict(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
                  proj_size=P)
    ours = fastrnn.LSTM(I, H, dtype=dtype, seed=int(rng.integers(1 << 30)), **kwargs)
    theirs = torch.nn.LSTM(I, H, dtype=torch.float64 if dtype == np.float64 else torch.float32,
                           **kwargs)
    theirs.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.params.items()})
    D = 2 if bidirectional else 1
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    lengths = None
    if use_lengths:
        lengths = rng.integers(1, T + 1, size=B).astype(np.int64)
        lengths[rng.integers(B)] = T
    hx = None
    if use_hx:
        hx = (rng.standard_normal((layers * D, B, P)).astype(dtype),
              rng.standard_normal((layers * D, B, H)).astype(dtype))
    y, (h_n, c_n) = ours(x, hx, lengths=lengths)
    x_t, hx_t, y_t, (h_t, c_t) = run_torch(theirs, x, hx, lengths, batch_first, T)
    assert_close(y, y_t.detach().numpy(), dtype, "output")
    assert_close(h_n, h_t.detach().numpy(), dtype, "h_n")
    assert_close(c_n, c_t.detach().numpy(), dtype, "c_n")
    dy, dh, dc = (rng.standard_normal(a.shape).astype(dtype) for a in (y, h_n, c_n))
    grads = ours.backward(dy, dh, dc)
    ((y_t * torch.from_numpy(dy)).sum() + (h_t * torch.from_numpy(dh)).sum()
     + (c_t * torch.from_numpy(dc)).sum()).backward()
    check_torch_grads(grads, x_t, hx_t, theirs, dtype)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_load_state_dict_from_torch_and_back(cell):
    """Weights move both ways under the same names: torch -> fastrnn -> torch."""
    kwargs = dict(num_layers=2, bidirectional=True)
    if cell == "lstm":
        kwargs["proj_size"] = 3
    theirs = getattr(torch.nn, cell.upper() if cell != "rnn" else "RNN")(4, 6, dtype=torch.float64,
                                                                        **kwargs)
    ours = getattr(fastrnn, cell.upper() if cell != "rnn" else "RNN")(4, 6, dtype=np.float64,
                                                                      seed=1, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    x = np.random.default_rng(0).standard_normal((5, 2, 4))
    y, _ = ours(x)
    y_t, _ = theirs(torch.from_numpy(x))
    assert_close(y, y_t.detach().numpy(), np.float64, "output after load_state_dict")
    back = getattr(torch.nn, cell.upper() if cell != "rnn" else "RNN")(4, 6, dtype=torch.float64,
                                                                      **kwargs)
    back.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    for name, p in theirs.named_parameters():
        np.testing.assert_array_equal(dict(back.named_parameters())[name].detach().numpy(),
                                      p.detach().numpy())
    with pytest.raises(KeyError, match="state_dict"):
        ours.load_state_dict({})
    bad = ours.state_dict()
    bad["weight_ih_l0"] = bad["weight_ih_l0"][:, :2]
    with pytest.raises(ValueError, match="weight_ih_l0"):
        ours.load_state_dict(bad)
