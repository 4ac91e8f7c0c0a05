"""Flax's recurrent cells as fastrnn modules: :func:`from_flax` and :func:`flax_state_dict`.

A Flax cell's parameters become torch.nn's (fastrnn's) layout exactly: no value changes, only
transposes, concatenations and zero biases where Flax has none, so the converted module computes
what the Flax cell computes, step for step (up to summation order).

How Flax's cells map onto torch.nn's math (``flax.nnx`` and ``flax.linen``, same math; Flax's
kernels are ``(in, out)``, torch's weights ``(out, in)``, so every kernel is transposed):

- ``OptimizedLSTMCell`` and ``LSTMCell`` (nnx and linen): torch.nn.LSTM's math and gate order
  (i, f, g, o), but only the hidden Dense has a bias: ``bias_ih = 0``, ``bias_hh`` = Flax's
  hidden bias. Flax's carry is ``(c, h)``; torch's and fastrnn's state is ``(h, c)``.
  ``OptimizedLSTMCell`` keeps one ``(in, 4H)`` kernel per side (``dense_i``, ``dense_h``),
  ``LSTMCell`` one ``(in, H)`` kernel per gate (``ii, if_, ig, io, hi, hf, hg, ho``; linen names
  the input-forget one ``if``), concatenated here in gate order.
- ``GRUCell``: torch.nn.GRU's math and gate order (r, z, n), with the reset gate applied after
  the hidden product, as torch. The input Dense has biases (``bias_ih``). The hidden side
  differs between the two Flax APIs: ``flax.nnx.GRUCell``'s hidden Dense has **no** bias at all
  (``bias_hh = 0``; its docstring shows a ``b_hn`` that its code does not have), while
  ``flax.linen.GRUCell`` has one on the candidate's hidden product only
  (``bias_hh = [0, 0, b_hn]``).
- ``SimpleCell``: ``h' = act(W_i x + b_i + W_h h)``, torch.nn.RNN with ``bias_hh = 0``;
  ``activation_fn`` tanh or relu gives ``nonlinearity`` "tanh" or "relu". ``residual=True`` (an
  added ``h``) has no torch counterpart and is refused.
- Custom ``gate_fn``/``activation_fn`` (anything but sigmoid and tanh) have no counterpart and are
  refused for nnx cells; a linen parameter dict does not record them, so the caller vouches for
  the defaults there. Flax's ``dtype`` (the computation dtype, e.g. bfloat16 on float32
  parameters) is not carried over: the fastrnn module computes in its own ``dtype``.

Sequences: ``flax.nnx.RNN`` / ``flax.linen.RNN`` run a cell over time batch-major by default
(``time_major=False``), which is what the converted module's ``batch_first`` follows unless given.
With ``seq_lengths`` Flax runs the cell over the padding as well (the outputs there are not zero)
and returns each sequence's state at its last valid step only with ``return_carry=True``; fastrnn
(as torch.nn with packed sequences) writes zeros at padded steps and returns that state always.
``Bidirectional`` (its default merge, concatenation, forward first) reverses each sequence within
its length, as fastrnn's reverse direction does.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn import recurrent as _nnx_recurrent

from .. import _cells, _validate

__all__ = ["from_flax", "flax_state_dict"]


class _Direction(NamedTuple):
    """One converted Flax cell: its mode and torch-layout arrays (NumPy)."""

    mode: str
    weight_ih: np.ndarray
    weight_hh: np.ndarray
    bias_ih: np.ndarray
    bias_hh: np.ndarray
    batch_first: Optional[bool]  # from an RNN wrapper's time_major, None for a bare cell


def _value(variable) -> np.ndarray:
    if isinstance(variable, nnx.Variable):
        variable = variable[...]
    return np.asarray(variable)


def _check_fns(cell, where: str, *, gate: bool = True) -> str:
    """The cell's activation as a torch nonlinearity name; refuses what torch.nn cannot do."""
    if gate and cell.gate_fn not in (jax.nn.sigmoid, nnx.sigmoid):
        raise ValueError(f"{where}: gate_fn must be sigmoid to convert (torch.nn's gates), got "
                         f"{cell.gate_fn!r}")
    act = cell.activation_fn
    if act in (jnp.tanh, nnx.tanh):
        return "tanh"
    if not gate and act in (jax.nn.relu, nnx.relu):
        return "relu"
    raise ValueError(f"{where}: activation_fn must be tanh{'' if gate else ' or relu'} to "
                     f"convert, got {act!r}")


def _zeros_like_rows(kernel: np.ndarray) -> np.ndarray:
    return np.zeros(kernel.shape[1], kernel.dtype)


def _nnx_cell(cell, where: str) -> Tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mode, weight_ih, weight_hh, bias_ih, bias_hh) of a flax.nnx cell."""
    if isinstance(cell, nnx.OptimizedLSTMCell):
        _check_fns(cell, where)
        k_i, k_h = _value(cell.dense_i.kernel), _value(cell.dense_h.kernel)
        return ("lstm", k_i.T, k_h.T, _zeros_like_rows(k_i), _value(cell.dense_h.bias))
    if isinstance(cell, nnx.LSTMCell):
        _check_fns(cell, where)
        ins = [cell.ii, cell.if_, cell.ig, cell.io]
        hids = [cell.hi, cell.hf, cell.hg, cell.ho]
        k_i = np.concatenate([_value(d.kernel) for d in ins], axis=1)
        k_h = np.concatenate([_value(d.kernel) for d in hids], axis=1)
        b_h = np.concatenate([_value(d.bias) for d in hids])
        return ("lstm", k_i.T, k_h.T, _zeros_like_rows(k_i), b_h)
    if isinstance(cell, nnx.GRUCell):
        _check_fns(cell, where)
        k_i, k_h = _value(cell.dense_i.kernel), _value(cell.dense_h.kernel)
        b_h = _value(cell.dense_h.bias) if cell.dense_h.use_bias else _zeros_like_rows(k_h)
        return ("gru", k_i.T, k_h.T, _value(cell.dense_i.bias), b_h)
    if isinstance(cell, nnx.SimpleCell):
        nonlinearity = _check_fns(cell, where, gate=False)
        if cell.residual:
            raise ValueError(f"{where}: SimpleCell(residual=True) has no torch.nn counterpart")
        k_i, k_h = _value(cell.dense_i.kernel), _value(cell.dense_h.kernel)
        return (_cells.VANILLA_MODES[nonlinearity], k_i.T, k_h.T, _value(cell.dense_i.bias),
                _zeros_like_rows(k_h))
    raise TypeError(f"{where}: expected a flax.nnx OptimizedLSTMCell, LSTMCell, GRUCell or "
                    f"SimpleCell (or an nnx.RNN of one), got {type(cell).__name__}")


_LINEN_LSTM = ("ii", "if", "ig", "io", "hi", "hf", "hg", "ho")
_LINEN_GRU = ("ir", "iz", "in", "hr", "hz", "hn")
_LINEN_SIMPLE = ("i", "h")


def _linen_params(params: Mapping, where: str, nonlinearity: str):
    """(mode, weight_ih, weight_hh, bias_ih, bias_hh) of a flax.linen cell's parameter dict."""
    def kernel(name):
        return _value(params[name]["kernel"])

    def bias(name):
        return _value(params[name]["bias"])

    keys = set(params)
    try:
        if keys == set(_LINEN_LSTM):  # LSTMCell and OptimizedLSTMCell: the same names
            k_i = np.concatenate([kernel(n) for n in _LINEN_LSTM[:4]], axis=1)
            k_h = np.concatenate([kernel(n) for n in _LINEN_LSTM[4:]], axis=1)
            b_h = np.concatenate([bias(n) for n in _LINEN_LSTM[4:]])
            return "lstm", k_i.T, k_h.T, _zeros_like_rows(k_i), b_h
        if keys == set(_LINEN_GRU):
            k_i = np.concatenate([kernel(n) for n in ("ir", "iz", "in")], axis=1)
            k_h = np.concatenate([kernel(n) for n in ("hr", "hz", "hn")], axis=1)
            b_i = np.concatenate([bias(n) for n in ("ir", "iz", "in")])
            b_hn = bias("hn")
            b_h = np.concatenate([np.zeros_like(b_hn), np.zeros_like(b_hn), b_hn])
            return "gru", k_i.T, k_h.T, b_i, b_h
        if keys == set(_LINEN_SIMPLE):
            if nonlinearity not in _cells.VANILLA_MODES:
                raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
            k_i, k_h = kernel("i"), kernel("h")
            return (_cells.VANILLA_MODES[nonlinearity], k_i.T, k_h.T, bias("i"),
                    _zeros_like_rows(k_h))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{where}: a flax.linen cell's parameters lack {e}") from None
    raise ValueError(f"{where}: expected the parameters of a flax.linen LSTMCell or "
                     f"OptimizedLSTMCell (keys {sorted(_LINEN_LSTM)}), GRUCell "
                     f"({sorted(_LINEN_GRU)}) or SimpleCell ({sorted(_LINEN_SIMPLE)}), got keys "
                     f"{sorted(keys)}")


def _unwrap_linen(params: Mapping) -> Mapping:
    """A linen variables dict down to one layer's level: drops ``params`` and RNN's ``cell``."""
    while True:
        if set(params) == {"params"} or set(params) == {"cell"}:
            params = params[next(iter(params))]
        else:
            return params


def _direction(obj, where: str, nonlinearity: str, *, backward: bool = False) -> _Direction:
    batch_first = None
    if isinstance(obj, nnx.RNN):
        if obj.reverse and not backward:
            raise ValueError(f"{where}: an nnx.RNN with reverse=True converts only as the "
                             f"backward half of a bidirectional layer")
        batch_first = not obj.time_major
        obj = obj.cell
    if isinstance(obj, Mapping):
        mode, w_ih, w_hh, b_ih, b_hh = _linen_params(_unwrap_linen(obj), where, nonlinearity)
    else:
        mode, w_ih, w_hh, b_ih, b_hh = _nnx_cell(obj, where)
    return _Direction(mode, w_ih, w_hh, b_ih, b_hh, batch_first)


def _layer(obj, where: str, nonlinearity: str) -> List[_Direction]:
    """One layer: a list of one direction, or two (forward, backward)."""
    if isinstance(obj, nnx.Bidirectional):
        if obj.merge_fn is not _nnx_recurrent._concatenate:
            raise ValueError(f"{where}: an nnx.Bidirectional converts only with its default "
                             f"merge_fn (concatenation, forward first), got {obj.merge_fn!r}")
        pair = [_direction(obj.forward_rnn, f"{where}.forward_rnn", nonlinearity),
                _direction(obj.backward_rnn, f"{where}.backward_rnn", nonlinearity,
                           backward=True)]
        return [d._replace(batch_first=not obj.time_major) for d in pair]
    if isinstance(obj, Mapping):
        obj = _unwrap_linen(obj)
        if set(obj) == {"forward_rnn", "backward_rnn"}:  # flax.linen.Bidirectional's parameters
            return [_direction(obj["forward_rnn"], f"{where}['forward_rnn']", nonlinearity),
                    _direction(obj["backward_rnn"], f"{where}['backward_rnn']", nonlinearity)]
    if isinstance(obj, tuple):
        if len(obj) != 2:
            raise ValueError(f"{where}: a bidirectional layer is a pair (forward, backward), got "
                             f"{len(obj)} entries")
        return [_direction(obj[0], f"{where}[0]", nonlinearity),
                _direction(obj[1], f"{where}[1]", nonlinearity, backward=True)]
    return [_direction(obj, where, nonlinearity)]


class _Converted(NamedTuple):
    mode: str
    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    batch_first: Optional[bool]
    state: Dict[str, np.ndarray]


def _convert(layers, nonlinearity: str) -> _Converted:
    if isinstance(layers, list) or (isinstance(layers, tuple) and not hasattr(layers, "_fields")):
        if not layers:
            raise ValueError("layers: expected at least one layer, got an empty sequence")
        stack = [_layer(obj, f"layers[{i}]", nonlinearity) for i, obj in enumerate(layers)]
    else:
        stack = [_layer(layers, "layers", nonlinearity)]
    first = stack[0][0]
    mode, D = first.mode, len(stack[0])
    G = _cells.num_gates(mode)
    H = first.weight_hh.shape[1]
    I = first.weight_ih.shape[1]  # noqa: E741 (the design's name for the input size)
    dtype = np.result_type(*(d.weight_ih.dtype for layer in stack for d in layer))
    state: Dict[str, np.ndarray] = {}
    batch_first = None
    for l, layer in enumerate(stack):  # noqa: E741
        if len(layer) != D:
            raise ValueError(f"layers[{l}]: has {len(layer)} direction(s), layers[0] {D}: every "
                             f"layer of a stack has the same number of directions")
        for d, direction in enumerate(layer):
            where = f"layers[{l}]" + ("" if D == 1 else ("[forward]", "[backward]")[d])
            if direction.mode != mode:
                raise ValueError(f"{where}: a {direction.mode} cell in a stack of {mode} cells")
            in_size = I if l == 0 else D * H
            shapes = {"weight_ih": (G * H, in_size), "weight_hh": (G * H, H),
                      "bias_ih": (G * H,), "bias_hh": (G * H,)}
            suffix = f"_l{l}" + ("_reverse" if d == 1 else "")
            for kind, shape in shapes.items():
                value = getattr(direction, kind)
                if value.shape != shape:
                    raise ValueError(f"{where}: {kind} (torch layout) has shape {value.shape}, "
                                     f"expected {shape} (input_size={I}, hidden_size={H}, "
                                     f"layer input {in_size})")
                state[kind + suffix] = np.ascontiguousarray(value, dtype=dtype)
            if direction.batch_first is not None:
                if batch_first is not None and batch_first != direction.batch_first:
                    raise ValueError(f"{where}: mixes time_major=True and False")
                batch_first = direction.batch_first
    return _Converted(mode, I, H, len(stack), D == 2, batch_first, state)


def flax_state_dict(layers, *, nonlinearity: str = "tanh") -> Dict[str, np.ndarray]:
    """The torch.nn ``state_dict`` (NumPy arrays) of Flax recurrent cells: what
    ``torch.nn.RNN/LSTM/GRU``, fastrnn's NumPy modules, ``fastrnn.torch`` and the modules of
    :mod:`fastrnn.jax.nn` load with ``load_state_dict``. ``layers`` as :func:`from_flax`."""
    return _convert(layers, nonlinearity).state


def from_flax(layers, *, batch_first: Optional[bool] = None, dtype: Any = None,
              dropout: float = 0.0, nonlinearity: str = "tanh",
              rngs: Optional[nnx.Rngs] = None):
    """A :class:`fastrnn.jax.nn.RNN`, ``LSTM`` or ``GRU`` holding the parameters of Flax cells.

    ``layers`` is one layer or a list of layers (bottom first; a stack's layer ``l > 0`` takes
    the previous layer's output, both directions concatenated, as torch.nn). A layer is:

    - a flax.nnx cell: ``OptimizedLSTMCell``, ``LSTMCell``, ``GRUCell`` or ``SimpleCell``, or an
      ``nnx.RNN`` of one (a forward RNN: ``reverse=False``);
    - a flax.linen cell's parameters (``variables`` or ``variables["params"]`` of ``LSTMCell``,
      ``OptimizedLSTMCell``, ``GRUCell``, ``SimpleCell``, or of an ``nn.RNN`` of one), told
      apart by their names;
    - bidirectional: an ``nnx.Bidirectional`` (default merge), a linen ``nn.Bidirectional``'s
      parameters, or a tuple ``(forward, backward)`` of two of the above — as an element of a
      list, since a tuple at the top level is read as the list of layers.

    ``batch_first`` defaults to the Flax RNN wrappers' layout (``not time_major``) and, for bare
    cells, to True (Flax's ``RNN`` is batch-major by default). ``dtype`` defaults to the
    parameters' dtype (float32, or float64 in JAX's 64-bit mode). ``nonlinearity`` names the
    activation of a linen ``SimpleCell``'s parameters (which do not record it). ``dropout`` and
    ``rngs`` (default ``nnx.Rngs(0)``) are the module's.

    The parameters are copied exactly (see this module's docstring for the mapping and where
    Flax's math differs from torch.nn's). A converted LSTM takes its state as ``(h, c)``, Flax's
    carry is ``(c, h)``::

        cell = nnx.OptimizedLSTMCell(8, 16, rngs=nnx.Rngs(0))
        lstm = fastrnn.jax.nn.from_flax(nnx.RNN(cell))
        y, (h_n, c_n) = lstm(x)            # x (B, T, 8), as nnx.RNN(cell)(x)
    """
    from . import nn  # the modules (nn imports this module at its end)

    converted = _convert(layers, nonlinearity)
    if dtype is None:
        dtype = next(iter(converted.state.values())).dtype
    if batch_first is None:
        batch_first = True if converted.batch_first is None else converted.batch_first
    batch_first = _validate.flag(batch_first, "batch_first")
    if rngs is None:
        rngs = nnx.Rngs(0)
    common = dict(num_layers=converted.num_layers, bias=True, batch_first=batch_first,
                  dropout=dropout, bidirectional=converted.bidirectional, dtype=dtype, rngs=rngs)
    if _cells.cell(converted.mode).nonlinearity:
        module = nn.RNN(converted.input_size, converted.hidden_size,
                        nonlinearity=_cells.cell(converted.mode).nonlinearity, **common)
    elif converted.mode == "lstm":
        module = nn.LSTM(converted.input_size, converted.hidden_size, **common)
    else:
        module = nn.GRU(converted.input_size, converted.hidden_size, **common)
    module.load_state_dict(converted.state)
    return module

