"""``resets`` on the fastrnn.torch modules against torch.nn.

torch.nn has no reset mask, so the reference is built from torch.nn two ways:
- the loop a recurrent-PPO implementation runs: one step at a time through ``nn.LSTM``/``nn.GRU``,
  the carried state multiplied by ``1 - resets[t]`` before each step (unidirectional stacks);
- each segment between resets run alone through the torch.nn module (any stack, bidirectional,
  lengths): the definition of the semantics.
Every output, final state and gradient (input, initial state, every parameter), float32 and
float64; gradcheck and gradgradcheck in float64; torch.func and torch.compile with resets;
malformed masks.
"""
import copy

import pytest

torch = pytest.importorskip("torch")

import fastrnn.torch as ftorch  # noqa: E402

CLASSES = {"RNN": torch.nn.RNN, "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=2e-4, atol=2e-5)}


def pair(name, *args, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    ref = CLASSES[name](*args, **kw).to(dtype)
    ours = getattr(ftorch, name)(*args, **kw).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def random_resets(T, B, p=0.25, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(T, B, generator=g) < p
    r[0, 0] = True
    if T > 3:
        r[2:4, B - 1] = True  # consecutive
    return r


def step_loop(ref, x, hx, resets):
    """The Python loop of recurrent-PPO code: state * (1 - reset) before each one-step call."""
    is_lstm = isinstance(ref, torch.nn.LSTM)
    h = hx
    ys = []
    for t in range(x.shape[0]):
        keep = (~resets[t]).to(x.dtype).view(1, -1, 1)
        h = (h[0] * keep, h[1] * keep) if is_lstm else h * keep
        y, h = ref(x[t:t + 1], h)
        ys.append(y)
    return torch.cat(ys), h


def segment_reference(ref, x, hx, resets, lengths=None):
    """Each sequence cut into segments at its resets, each segment run alone through torch.nn:
    the forward directions start from zeros unless the segment is the first (and there is no
    reset at t = 0), the reverse directions from zeros unless it is the last."""
    is_lstm = isinstance(ref, torch.nn.LSTM)
    T, B = x.shape[0], x.shape[1]
    D = 2 if ref.bidirectional else 1
    h0, c0 = hx if is_lstm else (hx, None)
    out_size = D * (ref.proj_size or ref.hidden_size)
    y = x.new_zeros(T, B, out_size)
    h_n, c_n = [None] * B, [None] * B
    rows = []
    for b in range(B):
        n = int(lengths[b]) if lengths is not None else T
        starts = [0] + [t for t in range(1, n) if resets[t, b]]
        segs = list(zip(starts, starts[1:] + [n]))
        h_parts, c_parts = [], []
        for k, (s, e) in enumerate(segs):
            first = k == 0 and not resets[0, b]
            last = k == len(segs) - 1
            keep = torch.tensor([first if d == 0 else last for _ in range(ref.num_layers)
                                 for d in range(D)], dtype=x.dtype).view(-1, 1, 1)
            h = h0[:, b:b + 1] * keep
            hx_seg = (h, c0[:, b:b + 1] * keep) if is_lstm else h
            ys, hs = ref(x[s:e, b:b + 1], hx_seg)
            rows.append((s, e, b, ys))
            h_parts.append(hs[0] if is_lstm else hs)
            if is_lstm:
                c_parts.append(hs[1])
        # final states: forward directions from the last segment, reverse from the first
        pick = torch.tensor([0 if d == 0 else 1 for _ in range(ref.num_layers) for d in range(D)])
        h_n[b] = torch.where((pick == 0).view(-1, 1, 1), h_parts[-1], h_parts[0])
        if is_lstm:
            c_n[b] = torch.where((pick == 0).view(-1, 1, 1), c_parts[-1], c_parts[0])
    for s, e, b, ys in rows:
        y = y.index_put((torch.arange(s, e), torch.tensor([b])), ys[:, 0])
    h_n = torch.cat(h_n, 1)
    return y, ((h_n, torch.cat(c_n, 1)) if is_lstm else h_n)


def initial_state(module, B, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    D = 2 if module.bidirectional else 1
    R = module.proj_size or module.hidden_size
    h = torch.randn(module.num_layers * D, B, R, generator=g, dtype=dtype)
    if isinstance(module, torch.nn.LSTM):
        return h, torch.randn(module.num_layers * D, B, module.hidden_size, generator=g,
                              dtype=dtype)
    return h


def leaves(hx):
    if isinstance(hx, tuple):
        return tuple(t.detach().clone().requires_grad_() for t in hx)
    return hx.detach().clone().requires_grad_()


def flat(hx):
    return list(hx) if isinstance(hx, tuple) else [hx]


def compare(ours, ref, x, hx, got, want, dtype):
    """Outputs, final states and the gradients of a random linear loss of both."""
    (y, h), (y_ref, h_ref) = got, want
    torch.testing.assert_close(y, y_ref, **TOL[dtype])
    for a, b in zip(flat(h), flat(h_ref)):
        torch.testing.assert_close(a, b, **TOL[dtype])
    g = torch.Generator().manual_seed(5)
    wy = torch.randn(y.shape, generator=g, dtype=dtype)
    wh = [torch.randn(t.shape, generator=g, dtype=dtype) for t in flat(h)]

    def loss(y, h):
        return (y * wy).sum() + sum((a * w).sum() for a, w in zip(flat(h), wh))

    inputs_ours = [x[0]] + flat(hx[0]) + list(ours.parameters())
    inputs_ref = [x[1]] + flat(hx[1]) + list(ref.parameters())
    g_ours = torch.autograd.grad(loss(y, h), inputs_ours)
    g_ref = torch.autograd.grad(loss(y_ref, h_ref), inputs_ref)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, **TOL[dtype])


# torch.nn's own float32 LSTM with a projection warns that oneDNN cannot run it (the reference's
# warning, not fastrnn's)
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("name,kw", [("LSTM", {}), ("GRU", {}), ("RNN", {}),
                                     ("RNN", {"nonlinearity": "relu"}),
                                     ("LSTM", {"proj_size": 3})],
                         ids=["lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_proj"])
def test_resets_equal_the_python_step_loop(name, kw, num_layers, dtype):
    T, B, I, H = 13, 5, 4, 7
    ours, ref = pair(name, I, H, num_layers=num_layers, dtype=dtype, **kw)
    resets = random_resets(T, B, seed=num_layers)
    x = torch.randn(T, B, I, dtype=dtype)
    hx = initial_state(ref, B, dtype)
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    ho, hr = leaves(hx), leaves(hx)
    compare(ours, ref, (xo, xr), (ho, hr), ours(xo, ho, resets=resets),
            step_loop(ref, xr, hr, resets), dtype)


@pytest.mark.parametrize("mask", ["random", "all", "first_only", "none_set"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_bidirectional_stacks_with_lengths_equal_segments_run_alone(name, batch_first, mask):
    T, B, I, H = 9, 4, 3, 5
    dtype = torch.float64
    ours, ref = pair(name, I, H, num_layers=2, bidirectional=True, dtype=dtype)
    resets = {"random": random_resets(T, B, seed=3), "all": torch.ones(T, B, dtype=torch.bool),
              "first_only": torch.zeros(T, B, dtype=torch.bool).index_fill(0, torch.tensor([0]),
                                                                            True),
              "none_set": torch.zeros(T, B, dtype=torch.bool)}[mask]
    lengths = torch.tensor([9, 4, 7, 1])
    x = torch.randn(T, B, I, dtype=dtype)
    hx = initial_state(ref, B, dtype)
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    ho, hr = leaves(hx), leaves(hx)
    packed = torch.nn.utils.rnn.pack_padded_sequence(xo, lengths, enforce_sorted=False)
    y_packed, h = ours(packed, ho, resets=resets)
    y = torch.nn.utils.rnn.pad_packed_sequence(y_packed, total_length=T)[0]
    want = segment_reference(ref, xr, hr, resets, lengths)
    compare(ours, ref, (xo, xr), (ho, hr), (y, h), want, dtype)
    # the same on padded input without lengths (each sequence T long), in the caller's layout
    xo2, xr2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    ho, hr = leaves(hx), leaves(hx)
    if batch_first:
        ours.batch_first = True
        y, h = ours(xo2.transpose(0, 1), ho, resets=resets.t().contiguous())
        y = y.transpose(0, 1)
    else:
        y, h = ours(xo2, ho, resets=resets)
    compare(ours, ref, (xo2, xr2), (ho, hr), (y, h), segment_reference(ref, xr2, hr, resets),
            dtype)


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_unbatched_input_takes_a_mask_of_shape_T(name):
    T, I, H = 6, 3, 4
    ours, ref = pair(name, I, H, num_layers=2)
    resets = torch.tensor([False, False, True, False, True, True])
    x = torch.randn(T, I, dtype=torch.float64)
    y, h = ours(x, resets=resets)
    y_ref, h_ref = ours(x.unsqueeze(1), resets=resets.unsqueeze(1))
    torch.testing.assert_close(y, y_ref.squeeze(1))
    for a, b in zip(flat(h), flat(h_ref)):
        torch.testing.assert_close(a, b.squeeze(1))


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_all_false_mask_is_bitwise_no_mask(name):
    ours, _ = pair(name, 5, 8, num_layers=2, bidirectional=True, dtype=torch.float32)
    x = torch.randn(7, 3, 5, requires_grad=True)
    y0, h0 = ours(x)
    g0 = torch.autograd.grad(y0.sum() + flat(h0)[0].sum(), [x, *ours.parameters()])
    y1, h1 = ours(x, resets=torch.zeros(7, 3, dtype=torch.bool))
    g1 = torch.autograd.grad(y1.sum() + flat(h1)[0].sum(), [x, *ours.parameters()])
    assert torch.equal(y0, y1)
    for a, b in zip(list(g0) + flat(h0), list(g1) + flat(h1)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_gradcheck_and_gradgradcheck_with_resets(name):
    kw = {"proj_size": 2} if name == "LSTM" else {}
    ours, _ = pair(name, 3, 4, num_layers=2, bidirectional=True, **kw)
    resets = random_resets(5, 3, seed=2)
    lengths = torch.tensor([5, 3, 4])
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    hx = leaves(initial_state(ours, 3, torch.float64))
    params = list(ours.parameters())

    def f(x, *state_and_params):
        n = len(flat(hx))
        state = tuple(state_and_params[:n]) if n == 2 else state_and_params[0]
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        y, h = torch.func.functional_call(
            ours, dict(zip([k for k, _ in ours.named_parameters()], state_and_params[n:])),
            (packed, state), {"resets": resets})
        return (torch.nn.utils.rnn.pad_packed_sequence(y)[0], *flat(h))

    inputs = (x, *flat(hx), *params)
    assert torch.autograd.gradcheck(f, inputs, check_batched_grad=True)
    assert torch.autograd.gradgradcheck(f, inputs)


# torch.nn's forward-mode rule for its one-step LSTM scripts a decomposition (its warning)
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torch_func_per_sample_gradients_and_jvp_with_resets():
    T, B, I, H = 6, 4, 3, 5
    ours, ref = pair("LSTM", I, H, num_layers=2)
    resets = random_resets(T, B, seed=4)
    x = torch.randn(T, B, I, dtype=torch.float64)
    params = {k: v.detach() for k, v in ours.named_parameters()}

    def loss(p, x_b, r_b):  # one sample: (T, I), (T,)
        y, _ = torch.func.functional_call(ours, p, (x_b,), {"resets": r_b})
        return (y ** 2).sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 1, 1))(params, x, resets)
    for b in range(B):
        want = torch.func.grad(loss)(params, x[:, b], resets[:, b])
        for k in params:
            torch.testing.assert_close(per_sample[k][b], want[k])

    # jvp on the input against the step loop of torch.nn
    v = torch.randn_like(x)
    hx = initial_state(ref, B, torch.float64)
    _, t_ours = torch.func.jvp(lambda x: ours(x, hx, resets=resets)[0], (x,), (v,))
    _, t_ref = torch.func.jvp(lambda x: step_loop(ref, x, hx, resets)[0], (x,), (v,))
    torch.testing.assert_close(t_ours, t_ref)


def test_torch_compile_fullgraph_with_resets():
    ours, ref = pair("GRU", 3, 6, num_layers=2, dtype=torch.float32)
    resets = random_resets(8, 2, seed=6)
    x = torch.randn(8, 2, 3, requires_grad=True)
    compiled = torch.compile(lambda x, r: ours(x, resets=r)[0], fullgraph=True,
                             backend="aot_eager")
    y = compiled(x, resets)
    want, _ = step_loop(ref, x, torch.zeros(2, 2, 6), resets)
    torch.testing.assert_close(y, want, **TOL[torch.float32])
    g, = torch.autograd.grad(y.sum(), x)
    g_ref, = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(g, g_ref, **TOL[torch.float32])


def test_malformed_masks_raise_naming_resets():
    lstm = ftorch.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match=r"resets: expected shape \(T, B\) = \(5, 2\), got \(2, 5\)"):
        lstm(x, resets=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="resets: expected dtype torch.bool, got torch.float32"):
        lstm(x, resets=torch.zeros(5, 2))
    with pytest.raises(TypeError, match="resets: expected a bool tensor"):
        lstm(x, resets=[[True, False]] * 5)
    bf = ftorch.GRU(3, 4, batch_first=True)
    with pytest.raises(ValueError, match=r"resets: expected shape \(B, T\) = \(2, 5\)"):
        bf(x.transpose(0, 1), resets=torch.zeros(5, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"resets: expected shape \(T,\) = \(5,\)"):
        ftorch.GRU(3, 4)(x[:, 0], resets=torch.zeros(5, 1, dtype=torch.bool))
    # where the kernels cannot run (here: float16), torch.nn cannot take resets either
    half = copy.deepcopy(lstm).half()
    with pytest.warns(ftorch.FallbackWarning), pytest.raises(RuntimeError, match="resets"):
        half(x.half(), resets=torch.zeros(5, 2, dtype=torch.bool))
