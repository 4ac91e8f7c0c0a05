"""Randomised malformed calls of ``fastrnn.torch.RNN/LSTM/GRU``, judged against ``torch.nn``.

``test_malformed_torch_calls`` runs random cases, each a module call with exactly one thing wrong
(or one odd-but-valid form), in a child process so that a crash (segfault, abort) fails the test
with the case that caused it instead of ending the test run. Each case builds a ``torch.nn``
module and its ``fastrnn.torch`` twin from the same ``state_dict``, applies the same change to
both, and makes the same call on both:

- input: wrong rank or feature size, another dtype than the parameters (float64 into float32,
  integer, half, bfloat16, bool, complex), not a tensor, empty (B = 0, T = 0, I = 0), sparse,
  mkldnn, a negative-bit view, non-contiguous, expanded or offset views;
- hx: wrong shape in each axis, wrong rank, dtype, the meta device, sparse, a NumPy array, a
  list or tuple where a tensor is wanted, an LSTM ``hx`` that is not a pair, ``(None, c0)``,
  ``(c0, h0)`` with a projection, expanded and negative-bit views;
- ``PackedSequence``: batch sizes increasing, zero, negative, of another dtype or rank, empty,
  summing to more or fewer rows than the data; bad ``sorted_indices``; ``pack_padded_sequence``
  with lengths outside ``[1, T]``;
- parameters: replaced by a ``torch.nn.Parameter`` or through ``.data`` with a wrong shape,
  another dtype, a non-contiguous / expanded / offset view, ``None``; ``load_state_dict`` with
  ``strict=False`` and a wrong shape; attributes changed after construction (``num_layers``,
  ``bidirectional``, ``bias``, ``proj_size``, ``hidden_size``, ``input_size``, ``mode``,
  ``dropout``);
- backward: twice without ``retain_graph``, three times with it, a gradient of the wrong shape
  or dtype, after ``torch.no_grad()``, after an in-place change of a saved tensor;
- non-finite values (NaN, +-Inf, 1e30) in the input, the initial state, a parameter or the
  output gradient: these must not raise, and must give torch.nn's outputs, NaN and +-Inf
  positions included;
- huge sizes (expanded views of 2^40 steps or sequences, packed data of 2^40 rows, a 4 TiB
  output): MemoryError, RuntimeError or ValueError, never a crash or a hang.

The verdict of a case is torch.nn's own outcome on the same call ("the oracle"): where torch.nn
raises, fastrnn.torch must raise the same exception type (or a subclass); where it returns,
fastrnn.torch must return the same structure with the same values (float32: 1e-4, float64: 1e-9
of the array's scale), the same NaN and +-Inf positions, and the same gradients. Gradients
through non-finite values are compared where both are finite (where they are not depends on how
a formula is arranged). Where torch.nn
silently accepts something malformed (a parameter of a wrong shape that its kernels broadcast or
read past, batch sizes that do not add up to the packed data's rows, sorted_indices that are no
permutation, an in-place change its graph does not notice), fastrnn.torch may instead raise an
error whose message names it. Where running torch.nn is unsafe or pointless, the case has a
fixed expectation instead: the huge ones; wrong-shape parameters and attributes (torch.nn's
oneDNN LSTM reads past them); and a packed LSTM call with a state, data or feature size torch.nn
never checks (its LSTM checks nothing on packed input and can segfault), which fastrnn.torch must
refuse as torch.nn refuses the padded call.

Cases are drawn from a seeded NumPy generator, one generator per case (``[seed, index]``), and
torch's RNG is seeded from it too. To rerun some of them by hand (from the repository root)::

    python tests/test_torch_malformed.py COUNT SEED FIRST     # cases FIRST .. FIRST+COUNT-1
"""
from __future__ import annotations

import json
import os
import sys
import types
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastrnn.torch as ft  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402
if __name__ == "__main__":  # run as the fuzzing child: conftest lives in tests/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import assert_fuzz_clean, run_fuzz_child  # noqa: E402

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
RAISED_BY_FASTRNN = (RuntimeError, ValueError, TypeError)  # where torch.nn silently accepts
HUGE = (MemoryError, RuntimeError, ValueError)


class Skip(Exception):
    """A generator could not make its case from this draw; draw another."""


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


# ---- the module pair and its inputs -----------------------------------------------------------


def _setup(rng):
    """A random valid configuration: sizes, input form, and the input values (as NumPy)."""
    s = types.SimpleNamespace()
    s.cell = _pick(rng, CELLS)
    s.lstm = s.cell == "lstm"
    s.I, s.H = int(rng.integers(1, 5)), int(rng.integers(2, 6))
    s.L, s.D = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    s.bias, s.batch_first = bool(rng.random() < 0.8), bool(rng.integers(2))
    s.proj = int(rng.integers(1, s.H)) if s.lstm and rng.random() < 0.4 else 0
    s.R = s.proj or s.H
    s.dtype = _pick(rng, (torch.float32, torch.float64))
    s.form = _pick(rng, ("padded", "padded", "unbatched", "packed_sorted", "packed_unsorted"))
    s.T, s.B = int(rng.integers(1, 5)), 1 if s.form == "unbatched" else int(rng.integers(1, 4))
    s.with_hx = bool(rng.random() < 0.5)
    s.training = bool(rng.random() < 0.7)
    s.dropout = 0.5 if s.L == 2 and rng.random() < 0.3 else 0.0
    s.x_grad = bool(rng.random() < 0.5)
    s.seed = int(rng.integers(2**31))
    s.x = rng.standard_normal((s.T, s.B, s.I))
    s.h0 = 0.5 * rng.standard_normal((s.L * s.D, s.B, s.R))
    s.c0 = 0.5 * rng.standard_normal((s.L * s.D, s.B, s.H))
    lengths = rng.integers(1, s.T + 1, size=s.B)
    lengths[int(rng.integers(s.B))] = s.T
    if s.form == "packed_sorted":
        lengths = np.sort(lengths)[::-1].copy()
    s.lengths = lengths
    s.loss_w = rng.standard_normal(4096)  # weights of the loss over every output
    return s


def _describe(s):
    return (f"{s.cell} I={s.I} H={s.H} L={s.L} D={s.D} proj={s.proj} bias={s.bias} "
            f"batch_first={s.batch_first} {str(s.dtype)[6:]} {s.form} T={s.T} B={s.B} "
            f"hx={'given' if s.with_hx else 'None'} "
            f"{'train' if s.training else 'eval'} dropout={s.dropout} x_grad={s.x_grad}")


def _kwargs(s):
    kw = dict(input_size=s.I, hidden_size=s.H, num_layers=s.L, bias=s.bias,
              batch_first=s.batch_first, dropout=s.dropout, bidirectional=s.D == 2,
              dtype=s.dtype)
    if s.lstm:
        kw["proj_size"] = s.proj
    elif s.cell.startswith("rnn"):
        kw["nonlinearity"] = s.cell[4:]
    return kw


def _make(s, lib):
    """The module of ``lib`` (torch.nn or fastrnn.torch), with the seed's parameters."""
    torch.manual_seed(s.seed)
    name = "RNN" if s.cell.startswith("rnn") else s.cell.upper()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropout with num_layers=1 after a mutation, ...
        m = getattr(lib, name)(**_kwargs(s))
    m.train(s.training)
    return m


def _tensor(s, a, grad=False):
    t = torch.tensor(a, dtype=s.dtype)
    return t.requires_grad_(True) if grad else t


class Call:
    """The tensors of one call of a module (fresh for each of the two modules)."""

    def __init__(self, s, x=None, h0=None, c0=None):
        x = s.x if x is None else x
        self.x = _tensor(s, x, grad=s.x_grad)
        self.h0 = _tensor(s, s.h0 if h0 is None else h0, grad=s.training)
        self.c0 = _tensor(s, s.c0 if c0 is None else c0, grad=s.training)
        self.leaves = [self.x] + ([self.h0] + ([self.c0] if s.lstm else [])
                                  if s.with_hx else [])

    def input(self, s, x=None):
        """The input argument in the configuration's form (from ``x``, (T, B, I), if given)."""
        x = self.x if x is None else x
        if s.form == "unbatched":
            return x[:, 0]
        if s.form.startswith("packed"):
            return pack_padded_sequence(x, torch.tensor(s.lengths),
                                        enforce_sorted=s.form == "packed_sorted")
        return x.transpose(0, 1) if s.batch_first else x

    def hx(self, s, h0=None, c0=None):
        if not s.with_hx:
            return None
        h0 = self.h0 if h0 is None else h0
        c0 = self.c0 if c0 is None else c0
        if s.form == "unbatched":
            h0, c0 = h0[:, 0], c0[:, 0]
        return (h0, c0) if s.lstm else h0


def _loss(s, out):
    """A weighted sum of every floating output (fixed weights: each gradient is exercised)."""
    total, k = 0, 0
    for t in _flatten(out):
        if t.is_floating_point() and t.requires_grad:
            n = t.numel()
            w = torch.tensor(s.loss_w[k:k + n], dtype=t.dtype).reshape(t.shape)
            total = total + (t * w).sum()
            k += n
    return total


def _flatten(out):
    if out is None:
        return []
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, PackedSequence):
        return [out.data, out.batch_sizes] + [t for t in (out.sorted_indices,
                                                           out.unsorted_indices) if t is not None]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    raise TypeError(f"unexpected result of type {type(out).__name__}")


def _grads(m, call):
    return ([t.grad for t in call.leaves if t.requires_grad]
            + [p.grad for _, p in sorted(m.named_parameters())])


def _results(s, m, call, out):
    """(outputs, gradients): after a backward of a weighted sum of the outputs where anything
    needs a gradient, the gradients of the inputs and of every parameter."""
    loss = _loss(s, out) if torch.is_grad_enabled() else 0
    if not isinstance(loss, torch.Tensor):
        return [t.detach() for t in _flatten(out)], []
    loss.backward()
    return [t.detach() for t in _flatten(out)], _grads(m, call)


def standard(s, m, call=None, x=None):
    """The usual call: forward in the configuration's form, then backward."""
    call = call or Call(s)
    out = m(call.input(s, x), call.hx(s))
    return _results(s, m, call, out)


# ---- comparing results ------------------------------------------------------------------------


def _compare(got, want, dtype, what, finite_only=False):
    """None, or what differs between fastrnn.torch's results and torch.nn's. finite_only: only
    where both are finite (the NaN/Inf positions of a gradient through non-finite values depend
    on how its formula is arranged: torch.nn's GRU gives inf - inf = NaN where fastrnn gives
    Inf)."""
    if len(got) != len(want):
        return f"{len(got)} {what}, torch.nn gives {len(want)}"
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    for i, (a, e) in enumerate(zip(got, want)):
        i = f"{what} {i}"
        if (a is None) != (e is None):
            return f"{i}: {'None' if a is None else 'a tensor'}, torch.nn: " \
                   f"{'None' if e is None else 'a tensor'}"
        if a is None:
            continue
        if a.shape != e.shape or a.dtype != e.dtype:
            return f"{i}: {a.dtype} {tuple(a.shape)}, torch.nn: {e.dtype} {tuple(e.shape)}"
        if not e.is_floating_point():
            if not torch.equal(a, e):
                return f"{i}: {a.tolist()}, torch.nn: {e.tolist()}"
            continue
        a, e = a.double(), e.double()
        for name, fn in (("NaN", torch.isnan), ("+Inf", torch.isposinf),
                         ("-Inf", torch.isneginf)):
            if not finite_only and not torch.equal(fn(a), fn(e)):
                return (f"{i}: {name} at {fn(a).nonzero().tolist()[:6]}, torch.nn at "
                        f"{fn(e).nonzero().tolist()[:6]}")
        finite = torch.isfinite(e) & torch.isfinite(a)
        if finite.any():
            a_f, e_f = a[finite], e[finite]
            scale = max(1.0, float(e_f.abs().max()))
            err = (a_f - e_f).abs() - tol * (scale + e_f.abs())
            if float(err.max()) > 0:
                worst = int(err.argmax())
                return (f"{i} {tuple(e.shape)}: {float(a_f[worst])!r}, torch.nn "
                        f"{float(e_f[worst])!r} (max abs diff "
                        f"{float((a_f - e_f).abs().max()):.3g}, scale {scale:.3g})")
    return None


# ---- the case generators ----------------------------------------------------------------------
# Each returns (setup, detail, act, expect): act(module) makes the call on a module (mutations
# included) and returns its (outputs, gradients); expect is "oracle" (torch.nn decides),
# ("oracle", names[, gradients]) (torch.nn decides, but where it returns, fastrnn.torch may
# raise naming one of names; gradients "finite" compares gradients only where both are finite), or
# (exception types, names) without running torch.nn.


def _other_shape(rng, shape):
    shape = tuple(shape)
    while True:
        s, kind = list(shape), int(rng.integers(3))
        if kind == 0 and s:
            ax = int(rng.integers(len(s)))
            s[ax] = max(0, s[ax] + int(_pick(rng, (-2, -1, 1, 2))))
        elif kind == 1:
            s.insert(int(rng.integers(len(s) + 1)), int(rng.integers(1, 3)))
        elif s:
            del s[int(rng.integers(len(s)))]
        if tuple(s) != shape:
            return tuple(s)


OTHER_DTYPES = (torch.float16, torch.bfloat16, torch.int32, torch.int64, torch.bool,
                torch.complex64, torch.uint8)


def _other_dtype(rng, dtype):
    return _pick(rng, [d for d in (torch.float32, torch.float64) if d != dtype]
                 + list(OTHER_DTYPES))


def case_input(rng):
    s = _setup(rng)
    kind = _pick(rng, ("ndim", "features", "dtype", "dtype", "not a tensor", "empty", "layout",
                       "view", "view", "neg"))
    if kind == "ndim":
        shape = tuple(int(v) for v in rng.integers(1, 3, size=int(_pick(rng, (0, 1, 4)))))
        detail = f"input of shape {shape}"

        def act(m):
            call = Call(s)
            return _results(s, m, call, m(_tensor(s, np.zeros(shape)), call.hx(s)))
    elif kind == "features":
        I = max(1 if s.form.startswith("packed") else 0, s.I + int(_pick(rng, (-1, 1, 2))))
        if I == s.I:
            raise Skip
        detail = f"input with {I} features (input_size={s.I})"

        def act(m):
            return standard(s, m, Call(s, x=np.zeros((s.T, s.B, I))))
        if s.lstm and s.form.startswith("packed"):  # torch.nn's LSTM checks no packed call:
            # its oneDNN kernel reads past the data (a segfault), so torch.nn is no judge;
            # fastrnn.torch checks it as torch.nn checks a padded call
            return s, detail, act, ((RuntimeError,), ("input_size", "input.size"))
    elif kind == "dtype":
        dtype = _other_dtype(rng, s.dtype)
        detail = f"input of dtype {dtype}"

        def act(m):
            call = Call(s)
            x = call.x.detach().to(dtype)
            return _results(s, m, call, m(call.input(s, x), call.hx(s)))
    elif kind == "not a tensor":
        which = _pick(rng, ("numpy", "list", "None", "float", "tuple", "str"))
        detail = f"input a {which}"

        def act(m):
            call = Call(s)
            x = call.input(s)
            x = {"numpy": lambda: s.x, "list": lambda: s.x.tolist(), "None": lambda: None,
                 "float": lambda: 1.5, "tuple": lambda: (x,), "str": lambda: "x"}[which]()
            return _results(s, m, call, m(x, call.hx(s)))
    elif kind == "empty":
        if s.form.startswith("packed"):
            raise Skip
        ax = int(rng.integers(3 if s.form != "unbatched" else 2))
        shape = [s.T, s.B, s.I]
        if s.form == "unbatched" and ax == 1:
            ax = 2
        shape[ax] = 0
        detail = f"input with {('T', 'B', 'I')[ax]} = 0"
        hx_b = 0 if ax == 1 else s.B

        def act(m):
            call = Call(s, x=np.zeros(shape), h0=s.h0[:, :hx_b], c0=s.c0[:, :hx_b])
            return _results(s, m, call, m(call.input(s), call.hx(s)))
    elif kind == "layout":
        how = _pick(rng, ("sparse", "mkldnn", "sparse_csr"))
        detail = f"input as a {how} tensor"
        if how == "mkldnn" and s.dtype != torch.float32:
            raise Skip

        def act(m):
            call = Call(s)
            x = call.input(s, call.x.detach())
            if isinstance(x, PackedSequence):
                x = x.data
            x = {"sparse": x.to_sparse, "mkldnn": x.to_mkldnn,
                 "sparse_csr": lambda: x.reshape(-1, x.shape[-1]).to_sparse_csr()}[how]()
            return _results(s, m, call, m(x, call.hx(s)))
    elif kind == "view":  # valid: the same values in another layout
        how = _pick(rng, ("transposed", "strided", "offset", "expanded"))
        detail = f"input as a {how} view"

        def act(m):
            call = Call(s)
            x = call.x
            if how == "transposed":
                x = x.permute(2, 1, 0).contiguous().permute(2, 1, 0)
            elif how == "strided":
                x = torch.repeat_interleave(x, 2, dim=2)[:, :, ::2]
            elif how == "offset":
                x = torch.cat([x.reshape(-1), x.reshape(-1)])[x.numel():].view_as(x)
            else:
                x = x[:1].expand(s.T, s.B, s.I)
            return _results(s, m, call, m(call.input(s, x), call.hx(s)))
    else:  # a negative-bit view: torch.nn reads its values as they are
        detail = "input a negative-bit view"

        def act(m):
            call = Call(s, x=-s.x)
            return _results(s, m, call, m(call.input(s, torch._neg_view(call.x)), call.hx(s)))
    return s, detail, act, "oracle"


def case_hx(rng):
    s = _setup(rng)
    s.with_hx = True
    batched = s.form != "unbatched"
    which = _pick(rng, ("h0", "c0") if s.lstm else ("h0",))
    kind = _pick(rng, ("shape", "shape", "dtype", "meta", "sparse", "numpy", "container", "view",
                       "neg") + (("not a pair", "a None", "swapped") if s.lstm else ()))
    detail = f"{which} {kind}"

    def act(m):
        call = Call(s)
        hx = list(call.hx(s)) if s.lstm else [call.hx(s)]
        i = 0 if which == "h0" else 1
        h = hx[i]
        if kind == "shape":
            h = torch.zeros(shape, dtype=s.dtype)
        elif kind == "dtype":
            h = h.detach().to(dtype)
        elif kind == "meta":
            h = h.detach().to("meta")
        elif kind == "sparse":
            h = h.detach().to_sparse()
        elif kind == "numpy":
            h = h.detach().numpy()
        elif kind == "view":
            h = h.detach()[..., :1].expand(h.shape) if view == "expanded" else \
                torch.repeat_interleave(h.detach(), 2, dim=-1)[..., ::2]
        elif kind == "neg":
            h = torch._neg_view(-h.detach())
        hx[i] = h
        if kind == "container":
            arg = (hx[0],) if not s.lstm else container(hx)
        elif kind == "not a pair":
            arg = pair_form(hx)
        elif kind == "a None":
            arg = (None, hx[1]) if which == "h0" else (hx[0], None)
        elif kind == "swapped":
            arg = (hx[1], hx[0])
        else:
            arg = tuple(hx) if s.lstm else hx[0]
        return _results(s, m, call, m(call.input(s), arg))

    shape = dtype = view = container = pair_form = None
    if kind == "shape":
        base = (s.L * s.D, s.B, s.R if which == "h0" else s.H)
        if not batched:
            base = (base[0], base[2])
        shape = _other_shape(rng, base)
        detail += f" {shape}"
    elif kind == "dtype":
        dtype = _other_dtype(rng, s.dtype)
        detail += f" {dtype}"
    elif kind == "view":
        view = _pick(rng, ("expanded", "strided"))
        detail += f" {view}"
    elif kind == "container":
        if s.lstm:
            form = _pick(rng, ("list", "triple", "single", "nested"))
            container = {"list": list, "triple": lambda hx: (hx[0], hx[1], hx[1]),
                         "single": lambda hx: (hx[0],),
                         "nested": lambda hx: ((hx[0], hx[1]),)}[form]
        else:
            form = "a 1-tuple"
        detail += f" {form}"
    elif kind == "not a pair":
        form = _pick(rng, ("tensor", "stacked", "str", "dict"))
        pair_form = {"tensor": lambda hx: hx[0], "stacked": lambda hx: torch.stack(hx),
                     "str": lambda hx: "hx", "dict": lambda hx: {"h0": hx[0], "c0": hx[1]}}[form]
        detail += f" {form}"
    elif kind == "swapped" and not s.proj:
        raise Skip  # h0 and c0 have the same shape without a projection
    if kind in ("shape", "swapped") and s.lstm and s.form.startswith("packed"):
        # torch.nn's LSTM checks no packed call (with a projection its kernel reads past a
        # state of another size or rank: a segfault), so torch.nn is no judge: fastrnn.torch
        # checks it as torch.nn checks a padded call (the permutation of an unsorted batch may
        # fail first, as in torch.nn). A state with more sequences is no error there: the
        # permutation picks the batch's own.
        picked = (kind == "shape" and s.form == "packed_unsorted" and len(shape) == 3
                  and shape[0] == s.L * s.D and shape[1] >= s.B
                  and shape[2] == (s.R if which == "h0" else s.H))
        if not picked:
            return s, detail, act, ((RuntimeError, IndexError), ())
    return s, detail, act, "oracle"


def case_packed(rng):
    s = _setup(rng)
    if not s.form.startswith("packed"):
        s.form = _pick(rng, ("packed_sorted", "packed_unsorted"))
        s.lengths = np.sort(s.lengths)[::-1].copy()
    kind = _pick(rng, ("batch_sizes", "batch_sizes", "batch_sizes", "batch_sizes dtype", "rows",
                       "sorted_indices", "lengths", "data ndim"))
    # Where torch.nn accepts a malformed PackedSequence (batch sizes as a (N, 1) column or
    # adding up to other than the rows of data, sorted_indices that are no permutation, whose
    # inverse PackedSequence leaves partly uninitialised), fastrnn.torch may refuse it, naming
    # what is wrong.
    expect = ("oracle", ("batch_sizes", "rows", "sorted_indices"))

    def packed_parts(call):
        p = call.input(s)
        return p.data, p.batch_sizes, p.sorted_indices, p.unsorted_indices

    if kind == "batch_sizes":
        n = int(rng.integers(1, 6))
        sizes = rng.integers(-1, 5, size=n)
        if rng.random() < 0.5:  # keep the data consistent with the positive sizes
            rows = int(sizes[sizes > 0].sum())
        else:
            rows = max(0, int(sizes[sizes > 0].sum()) + int(rng.integers(-2, 3)))
        detail = f"PackedSequence(data with {rows} rows, batch_sizes={sizes.tolist()})"
        data = rng.standard_normal((rows, s.I))

        def act(m):
            call = Call(s)
            d = _tensor(s, data, grad=s.x_grad)
            call.leaves[0] = d
            hx = call.hx(s)
            if hx is not None:  # fit the initial state to batch_sizes[0] (torch.nn's LSTM
                # reads past a state it is not)
                b = max(0, int(sizes[0]))
                hx = tuple(h[:, :1].expand(h.shape[0], b, h.shape[2]) for h in hx) \
                    if s.lstm else hx[:, :1].expand(hx.shape[0], b, hx.shape[2])
            return _results(s, m, call, m(PackedSequence(d, torch.tensor(sizes)), hx))
    elif kind == "batch_sizes dtype":
        how = _pick(rng, ("int32", "float", "2-D", "empty", "column"))
        detail = f"batch_sizes {how}"

        def act(m):
            call = Call(s)
            d, b, si, ui = packed_parts(call)
            b = {"int32": lambda: b.int(), "float": lambda: b.double(),
                 "2-D": lambda: b[None], "empty": lambda: b[:0],
                 "column": lambda: b[:, None]}[how]()
            return _results(s, m, call, m(PackedSequence(d, b, si, ui), call.hx(s)))
    elif kind == "rows":
        k = int(_pick(rng, (-2, -1, 1, 3)))
        detail = f"packed data with {k:+d} rows"

        def act(m):
            call = Call(s)
            d, b, si, ui = packed_parts(call)
            d = d[:k] if k < 0 else torch.cat([d, torch.zeros(k, s.I, dtype=s.dtype)])
            return _results(s, m, call, m(PackedSequence(d, b, si, ui), call.hx(s)))
    elif kind == "sorted_indices":
        how = _pick(rng, ("out of range", "short", "long", "float", "negative", "repeated"))
        detail = f"sorted_indices {how}"

        def act(m):
            call = Call(s)
            d, b, si, ui = packed_parts(call)
            si = torch.arange(s.B) if si is None else si
            si = {"out of range": lambda: si + s.B, "short": lambda: si[:-1],
                  "long": lambda: torch.cat([si, si[:1]]), "float": lambda: si.double(),
                  "negative": lambda: si - s.B - 1, "repeated": lambda: si * 0}[how]()
            return _results(s, m, call, m(PackedSequence(d, b, si, None), call.hx(s)))
    elif kind == "lengths":  # torch's pack_padded_sequence refuses them, before any module
        bad = int(_pick(rng, (0, -1, s.T + 1, s.T + 5)))
        detail = f"pack_padded_sequence with a length {bad} (T={s.T})"
        b_i = int(rng.integers(s.B))

        def act(m):
            call = Call(s)
            lengths = torch.tensor(s.lengths)
            lengths[b_i] = bad
            p = pack_padded_sequence(call.x, lengths, enforce_sorted=False)
            return _results(s, m, call, m(p, call.hx(s)))
    else:
        shape = _pick(rng, ((5,), (2, 2, s.I), ()))
        detail = f"packed data of shape {shape}"

        def act(m):
            call = Call(s)
            _, b, si, ui = packed_parts(call)
            d = torch.zeros(shape, dtype=s.dtype)
            return _results(s, m, call, m(PackedSequence(d, b, si, ui), call.hx(s)))
        if s.lstm:  # torch.nn's LSTM checks no packed call (it fails by chance, or reads past
            # the data): fastrnn.torch checks it as torch.nn checks a padded call
            expect = ((RuntimeError,), ("dimensions",))
    return s, detail, act, expect


def _param_names(s):
    names = []
    for layer in range(s.L):
        for suffix in ("", "_reverse")[:s.D]:
            names += [f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}"]
            if s.bias:
                names += [f"bias_ih_l{layer}{suffix}", f"bias_hh_l{layer}{suffix}"]
            if s.proj:
                names.append(f"weight_hr_l{layer}{suffix}")
    return names


def case_params(rng):
    s = _setup(rng)
    name = _pick(rng, _param_names(s))
    kind = _pick(rng, ("shape parameter", "shape data", "shape data", "dtype", "layout",
                       "layout", "None", "load_state_dict", "not a parameter"))
    expect = "oracle"
    if kind.startswith("shape"):
        shape = _other_shape(rng, getattr(_make(s, torch.nn), name).shape)
        detail = f"{name} {kind[6:]} replaced with shape {shape}"

        def mutate(m):
            if kind == "shape parameter":
                setattr(m, name, torch.nn.Parameter(torch.randn(shape, dtype=s.dtype)))
            else:
                getattr(m, name).data = torch.randn(shape, dtype=s.dtype)
        # torch.nn's oneDNN LSTM reads past a smaller weight (and its other kernels broadcast a
        # bias): torch.nn is no judge here. fastrnn.torch must refuse it, naming the parameter.
        expect = ((RuntimeError,), (name,))
    elif kind == "dtype":
        dtype = _other_dtype(rng, s.dtype)
        via = _pick(rng, ("data", "parameter"))
        detail = f"{name} of dtype {dtype} (via {via})"
        if via == "parameter" and not (dtype.is_floating_point or dtype.is_complex):
            raise Skip  # only floating and complex tensors can require gradients

        def mutate(m):
            w = getattr(m, name).detach().to(dtype)
            if via == "data":
                getattr(m, name).data = w
            else:
                setattr(m, name, torch.nn.Parameter(w))
    elif kind == "layout":  # valid: the same values in another memory layout
        how = _pick(rng, ("transposed", "strided", "offset", "expanded", "neg"))
        detail = f"{name}.data = a {how} view"

        def mutate(m):
            p = getattr(m, name)
            w = p.detach()
            if how == "transposed":
                v = w.t().contiguous().t() if w.dim() == 2 else w.flip(0).contiguous().flip(0)
            elif how == "strided":
                v = torch.repeat_interleave(w, 2, dim=-1)[..., ::2]
            elif how == "offset":
                v = torch.cat([w.reshape(-1), w.reshape(-1)])[w.numel():].view_as(w)
            elif how == "expanded":
                v = w[:1].expand(w.shape)
            else:
                v = torch._neg_view(-w)
            p.data = v
    elif kind == "None":
        detail = f"{name} = None"

        def mutate(m):
            setattr(m, name, None)
    elif kind == "load_state_dict":
        shape = _other_shape(rng, getattr(_make(s, torch.nn), name).shape)
        detail = f"load_state_dict(strict=False) with {name} of shape {shape}"

        def mutate(m):
            m.load_state_dict({name: torch.zeros(shape, dtype=s.dtype)}, strict=False)
    else:
        detail = f"{name} = a plain tensor"

        def mutate(m):
            setattr(m, name, getattr(m, name).detach().clone())

    def act(m):
        mutate(m)
        return standard(s, m)
    return s, detail, act, expect


def case_attributes(rng):
    s = _setup(rng)
    attr = _pick(rng, ("num_layers", "bidirectional", "bias", "proj_size", "hidden_size",
                       "input_size", "mode", "dropout"))
    if attr == "num_layers":
        value = _pick(rng, [v for v in (0, 1, 2, 3) if v != s.L])
    elif attr == "bidirectional":
        value = s.D == 1
    elif attr == "bias":
        value = not s.bias
    elif attr == "proj_size":
        value = _pick(rng, [v for v in (0, 1, s.H - 1, s.H, -1) if v != s.proj])
    elif attr == "hidden_size":
        value = _pick(rng, [v for v in (1, s.H - 1, s.H + 1) if v != s.H])
    elif attr == "input_size":
        value = s.I + 1
    elif attr == "mode":
        value = _pick(rng, ("RNN_TANH", "RNN_RELU", "LSTM", "GRU", "foo"))
    else:
        if s.L != 2 or not s.training:
            raise Skip  # dropout only acts between layers in training
        value = _pick(rng, (-0.5, 1.5, float("nan"), 1.0, 0.0))
    detail = f"module.{attr} = {value!r} after construction"
    unchanged = (attr == "proj_size" and value <= 0 and s.proj == 0)
    if attr in ("mode", "dropout") or unchanged:
        expect = "oracle"
    else:  # its parameters no longer fit: torch.nn's kernels read past them or raise
        expect = ((RuntimeError,), ("weight", "bias", "parameter", "hidden"))

    def act(m):
        setattr(m, attr, value)
        x = None
        if attr == "input_size":
            x = torch.tensor(np.concatenate([s.x, s.x[..., :1]], axis=2), dtype=s.dtype)
        return standard(s, m, x=x)
    return s, detail, act, expect


def case_backward(rng):
    s = _setup(rng)
    s.training = True
    kind = _pick(rng, ("twice", "retain_graph", "grad shape", "grad dtype", "no_grad",
                       "inplace", "grad layout"))
    detail = f"backward: {kind}"
    which = _pick(rng, ("weight", "input", "h0"))
    expect = "oracle"
    if kind == "inplace":
        detail += f" ({which} changed in place before backward)"
        # torch.nn's graph does not always hold the tensor itself (its GRU saves a transposed
        # weight): where torch.nn misses the change, autograd's own error is right too
        expect = ("oracle", ("modified by an inplace operation",))
    shape_delta = int(_pick(rng, (-1, 1)))
    grad_dtype = _other_dtype(rng, s.dtype)

    def act(m):
        call = Call(s)
        if kind == "no_grad":
            with torch.no_grad():
                out = m(call.input(s), call.hx(s))
            _flatten(out)[0].sum().backward()  # nothing needs a gradient: torch refuses
            return _results(s, m, call, out)
        out = m(call.input(s), call.hx(s))
        y = _flatten(out)[0]
        if kind == "twice":
            _loss(s, out).backward()
            _loss(s, out).backward()
        elif kind == "retain_graph":
            for _ in range(3):
                _loss(s, out).backward(retain_graph=True)
        elif kind == "grad shape":
            shape = list(y.shape)
            shape[-1] += shape_delta
            y.backward(torch.ones(shape, dtype=s.dtype))
        elif kind == "grad dtype":
            y.backward(torch.ones(y.shape, dtype=grad_dtype))
        elif kind == "inplace":
            with torch.no_grad():
                if which == "weight":
                    m.weight_hh_l0.mul_(1.0)
                elif which == "input":
                    call.x.detach().mul_(1.0)
                else:
                    call.h0.detach().mul_(1.0)
            _loss(s, out).backward()
        else:  # valid: an expanded gradient
            y.backward(torch.ones(1, dtype=s.dtype).expand(y.shape))
        return [t.detach() for t in _flatten(out)], _grads(m, call)
    return s, detail, act, expect


def case_nonfinite(rng):
    """NaN, +-Inf and huge finite values must flow through as torch.nn's do, never raise."""
    s = _setup(rng)
    value = _pick(rng, (float("nan"), float("inf"), float("-inf"), 1e30, -1e30))
    where = _pick(rng, ("input", "input", "h0", "c0", "parameter", "dy"))
    if where == "c0" and not s.lstm:
        where = "h0"
    if where in ("h0", "c0"):
        s.with_hx = True
    name = _pick(rng, _param_names(s))
    t_i, b_i = int(rng.integers(s.T)), int(rng.integers(s.B))
    k = int(rng.integers(s.L * s.D))
    detail = f"{value} in {name if where == 'parameter' else where}"
    i_i = int(rng.integers(s.I))
    if where == "dy":
        s.loss_w[0] = value

    def act(m):
        x, h0, c0 = s.x.copy(), s.h0.copy(), s.c0.copy()
        if where == "input":
            x[t_i, b_i, i_i] = value
        elif where == "h0":
            h0[k, b_i, 0] = value
        elif where == "c0":
            c0[k, b_i, 0] = value
        elif where == "parameter":
            with torch.no_grad():
                getattr(m, name).view(-1)[0] = value
        call = Call(s, x=x, h0=h0, c0=c0)
        return _results(s, m, call, m(call.input(s), call.hx(s)))
    # The outputs must be torch.nn's, NaN and Inf positions included; the gradients only where
    # both are finite.
    return s, detail, act, ("oracle", (), "finite")


def case_huge(rng):
    """Expanded views whose copy or output cannot be allocated: an exception, quickly."""
    s = _setup(rng)
    s.with_hx = False
    kind = _pick(rng, ("T", "B", "packed"))
    n = 2**int(_pick(rng, (40, 44, 50)))
    detail = f"an expanded input with {n} {'steps' if kind == 'T' else 'sequences'}"

    def act(m):
        if kind == "packed":
            data = torch.zeros(1, s.I, dtype=s.dtype).expand(n, s.I)
            sizes = torch.ones(1, dtype=torch.int64).expand(n)
            return _flatten(m(PackedSequence(data, sizes))), []
        if kind == "T" or s.form == "unbatched":
            shape = (n, s.I) if s.form == "unbatched" else \
                (1, n, s.I) if s.batch_first else (n, 1, s.I)
        else:
            shape = (n, 2, s.I) if s.batch_first else (2, n, s.I)
        return _flatten(m(torch.zeros(1, dtype=s.dtype).expand(shape))), []
    return s, detail, act, (HUGE, ())


def case_oversized(rng):
    """A real (T = 2^27) input whose output alone needs 4 TiB: refused before it is allocated.
    (torch.zeros' pages cost nothing until touched.)"""
    def make(lib):
        torch.manual_seed(0)
        return lib.RNN(1, 2**13)
    return ("oversized RNN(1, 8192) on a (2^27, 1, 1) input: a 4 TiB output",
            lambda m: (_flatten(m(torch.zeros(2**27, 1, 1))), []), (HUGE, ()), make)


GENERATORS = ((case_input, 6), (case_hx, 5), (case_packed, 4), (case_params, 5),
              (case_attributes, 2), (case_backward, 3), (case_nonfinite, 4), (case_huge, 1))


def make_case(index, seed):
    """Case ``index`` of a run: (description, act, expect, make), make(lib) building the module
    of lib (torch.nn or fastrnn.torch) with the case's parameters."""
    rng = np.random.default_rng([seed, index])
    if index == 0:
        return case_oversized(rng)
    weights = np.array([w for _, w in GENERATORS], float)
    while True:
        gen = GENERATORS[int(rng.choice(len(GENERATORS), p=weights / weights.sum()))][0]
        try:
            s, detail, act, expect = gen(rng)
        except Skip:
            continue
        return (f"{gen.__name__[5:]} {_describe(s)}: {detail}", act, expect,
                lambda lib: _make(s, lib))


def _outcome(make, lib, act, seed):
    """(results, None) or (None, exception) of act on a fresh module of lib."""
    try:
        m = make(lib)
        torch.manual_seed(seed)  # the same dropout masks for both
        return act(m), None
    except Exception as e:  # noqa: BLE001 - judged by the caller
        return None, e


def judge(act, expect, make, seed):
    """None, or what fastrnn.torch did wrong on this case."""
    if expect == "oracle":
        expect = ("oracle", ())
    if expect[0] != "oracle":
        types_, names = expect
        got, err = _outcome(make, ft, act, seed)
        if err is None:
            return "returned without an exception"
        if not isinstance(err, types_):
            return f"raised {type(err).__name__}({err}), expected " + \
                " or ".join(t.__name__ for t in types_)
        if names and not any(n in str(err) for n in names):
            return f"raised {type(err).__name__}({err}), whose message names none of {names}"
        return None
    names = expect[1]
    grads = expect[2] if len(expect) > 2 else "strict"
    want, want_err = _outcome(make, torch.nn, act, seed)
    got, err = _outcome(make, ft, act, seed)
    if want_err is not None:
        if err is None:
            return f"returned; torch.nn raised {type(want_err).__name__}({want_err})"
        if not isinstance(err, type(want_err)):
            return (f"raised {type(err).__name__}({err}); torch.nn raised "
                    f"{type(want_err).__name__}({want_err})")
        return None
    if err is not None:
        if names and isinstance(err, RAISED_BY_FASTRNN) and any(n in str(err) for n in names):
            return None
        return f"raised {type(err).__name__}({err}); torch.nn returned"
    dtype = next((t.dtype for t in want[0] if t.is_floating_point()), torch.float64)
    problem = _compare(got[0], want[0], dtype, "output")
    if problem is None:
        problem = _compare(got[1], want[1], dtype, "gradient", finite_only=grads == "finite")
    return None if problem is None else f"results differ from torch.nn's: {problem}"


def run_malformed(count, seed, first=0, out=sys.stdout):
    """Runs cases ``first .. first+count-1``; prints each case before running it (so a crash
    shows which), then one ``FUZZ-SUMMARY {json}`` line."""
    warnings.simplefilter("ignore")  # FallbackWarning and torch.nn's own warnings
    results = dict(cases=0, by_kind={}, failures=[])
    for i in range(first, first + count):
        desc, act, expect, make = make_case(i, seed)
        print(f"case {i}: {desc}", file=out, flush=True)
        results["cases"] += 1
        kind = desc.split(" ", 1)[0]
        results["by_kind"][kind] = results["by_kind"].get(kind, 0) + 1
        try:
            problem = judge(act, expect, make, seed * 1000003 + i)
        except BaseException as e:  # noqa: BLE001 - a failure of the case, reported
            problem = f"the check itself raised {type(e).__name__}({e})"
        if problem:  # printed at once too: a later crash loses the summary
            print(f"  FAILED: {problem}", file=out, flush=True)
            results["failures"].append(f"case {i}: {desc}: {problem}")
    print("FUZZ-SUMMARY " + json.dumps(results), file=out, flush=True)
    return results


MALFORMED_CASES = 4000
MALFORMED_SEED = 20251


def test_malformed_torch_calls():
    summary = run_fuzz_child(__file__, MALFORMED_CASES, MALFORMED_SEED)
    print(json.dumps(summary["by_kind"]))
    problems = summary["failures"]
    assert_fuzz_clean(summary, problems, MALFORMED_CASES)


@pytest.mark.parametrize("where", ["NaN in h0", "Inf in dy"])
def test_relu_gradient_through_non_finite_values_is_torchs(where):
    """relu's derivative is applied as torch applies it (a select, not a product): the gradient
    passes at a NaN output, and is exactly 0 at an inactive unit even when dy is Inf."""
    results = []
    for lib in (torch.nn, ft):
        torch.manual_seed(0)
        m = lib.RNN(2, 3, nonlinearity="relu", dtype=torch.float64)
        torch.manual_seed(1)
        x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
        h0 = torch.zeros(1, 2, 3, dtype=torch.float64)
        if where == "NaN in h0":
            h0[0, 0, 0] = float("nan")
        h0.requires_grad_(True)
        y, _ = m(x, h0)
        dy = torch.ones_like(y)
        if where == "Inf in dy":
            dy[1, 1] = float("inf")
        y.backward(dy)
        results.append(([y.detach()], [x.grad, h0.grad] +
                        [p.grad for _, p in sorted(m.named_parameters())]))
    (want, want_grads), (got, got_grads) = results
    assert _compare(got, want, torch.float64, "output") is None
    problem = _compare(got_grads, want_grads, torch.float64, "gradient")
    assert problem is None, problem


@pytest.mark.parametrize("which", ["sorted_indices", "unsorted_indices"])
def test_packed_sequence_with_one_index_tensor_is_accepted(which):
    """A PackedSequence may hold only one of its index tensors; torch.nn accepts that, and so
    does fastrnn.torch, with torch.nn's results."""
    from torch.nn.utils.rnn import PackedSequence
    torch.manual_seed(0)
    m = torch.nn.GRU(3, 4)
    f = ft.GRU(3, 4)
    f.load_state_dict(m.state_dict())
    packed = pack_padded_sequence(torch.randn(5, 3, 3), torch.tensor([5, 4, 2]))
    order = torch.tensor([2, 0, 1])
    indices = (order, None) if which == "sorted_indices" else (None, order)
    seq = PackedSequence(packed.data, packed.batch_sizes, *indices)
    h0 = torch.randn(1, 3, 4)
    (want_y, want_h), (got_y, got_h) = m(seq, h0), f(seq, h0)
    assert torch.allclose(got_y.data, want_y.data, atol=1e-6)
    assert torch.allclose(got_h, want_h, atol=1e-6)


if __name__ == "__main__":
    import faulthandler

    faulthandler.enable()  # a crash prints the Python stack too
    _count, _seed = int(sys.argv[1]), int(sys.argv[2])
    _first = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    _res = run_malformed(_count, _seed, _first)
    for _line in _res["failures"]:
        print(f"failure: {_line}", file=sys.stderr)
