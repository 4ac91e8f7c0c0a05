"""The modules ``RNN``, ``LSTM`` and ``GRU`` (torch.nn's, on fastrnn's kernels) and :func:`convert`.

A module's forward takes torch.nn's arguments apart as torch.nn does, runs each layer and
direction on the kernels (``_ops``) and gives the results back in the caller's form. Calls the
kernels cannot run, and calls torch.nn refuses, go to torch.nn's own forward (``_fallback``).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from .. import _core, _validate
from .. import cuda as _cuda_api
from .._cells import CELLS, CellSpec, has_cell_state
from . import _patch
from ._fallback import _warn_once, fallback_reason
from ._ops import ALGO_CODES, _np, layer, plain_cpu_call
from ._runtime import follow_torch_threads
from ._packed import check_packed, packed_to_padded, padded_to_packed
from .cells import GRUCell, LSTMCell, RNNCell


def _torch_mode(spec: CellSpec) -> str:
    """torch.nn's ``mode`` attribute for a cell ("RNN_TANH", "LSTM", ...)."""
    if spec.nonlinearity:
        return f"{spec.torch_class}_{spec.nonlinearity}".upper()
    return spec.torch_class


_TORCH_MODES = {_torch_mode(spec): spec.mode for spec in CELLS.values()}


def _modes_of(torch_class: str) -> Tuple[str, ...]:
    return tuple(spec.mode for spec in CELLS.values() if spec.torch_class == torch_class)


def _well_formed_hx(hx, is_lstm: bool, rank: Optional[int]) -> bool:
    """hx is what torch.nn accepts: a tensor of the given rank (None: any), or for an LSTM a
    pair of them."""
    if is_lstm:
        return (isinstance(hx, (tuple, list)) and len(hx) == 2
                and all(isinstance(h, Tensor) and rank in (None, h.dim()) for h in hx))
    return isinstance(hx, Tensor) and rank in (None, hx.dim())


class _Call(NamedTuple):
    """One forward call as torch.nn's forward takes it apart: batched (an unbatched input and its
    hx gain the batch dimension), and what it takes to give the results back in the caller's
    form."""

    data: Tensor                             # the packed data, or the batched input
    hx: Any                                  # the caller's hx, batched (None: zeros)
    max_batch_size: Any                      # batch_sizes[0] (a tensor) for a PackedSequence
    packed: bool = False
    batch_sizes: Optional[Tensor] = None     # the PackedSequence's fields
    sorted_indices: Optional[Tensor] = None
    unsorted_indices: Optional[Tensor] = None
    batched: bool = True                     # False: the input had no batch dimension


class _FastRNNMixin(_patch.TwinMixin):
    """The forward of RNN, LSTM and GRU: torch.nn's checks and input handling, fastrnn's kernels.

    Mixed in before the torch.nn class, so ``super().forward`` is torch's implementation (the
    fallback) and everything else (parameters, state_dict, ``_apply``, repr) is torch's.

    One argument beyond torch.nn's: ``algo`` (keyword; also a plain attribute, so it can be set
    later, and absent from modules made by :func:`convert`, which run ``"auto"``): the CUDA
    algorithm, ``"auto"``, ``"standard"`` or ``"persistent"`` (see ``fastrnn.cuda``). The CPU
    core has one algorithm and ignores it.
    """

    def forward(self, input, hx=None, *, resets=None):
        """torch.nn's forward, plus ``resets``: None, or a bool tensor (T, B) -- (B, T) with
        ``batch_first``, (T,) for unbatched input, (T, B) in the caller's batch order for a
        ``PackedSequence`` -- that starts sequence b afresh at step t where ``resets[t, b]``:
        the state entering the step is replaced by zeros, in every layer (the reverse direction
        starts each segment from zeros at its last step). See docs/pytorch.md."""
        self._update_flat_weights()
        mode = _TORCH_MODES.get(self.mode)
        if resets is None and not torch.is_grad_enabled() and mode in self._cells:
            result = self._inference_call(input, hx, mode)
            if result is not None:
                return result
        if mode not in self._cells:  # a mode attribute changed after construction: torch.nn's
            return self._torch_forward(input, hx, resets)  # forward decides (or it refuses)
        reason = fallback_reason(input, hx, self._flat_weights)
        if reason is not None:  # the kernels cannot run it
            if reason:
                _warn_once(reason)
            return self._torch_forward(input, hx, resets, reason)
        # Malformed calls go to torch.nn's forward (None below), so that they raise exactly what
        # it raises; it also gives empty inputs their empty results.
        call = self._take_apart(input, hx, mode)
        state = None if call is None else self._initial_state(call, mode)
        if state is None:
            return self._torch_forward(input, hx, resets)
        self._check_weights(mode)
        x, lengths = self._time_major_input(call)
        resets = self._time_major_resets(resets, call, x)
        y, h_n, c_n = self._run_layers(mode, x, *state, lengths, call.batch_sizes, resets)
        return self._caller_results(call, y, h_n, c_n, lengths)

    def _inference_call(self, input, hx, mode: str):
        """The streaming path (a generation loop: one step per call, no gradient): a plain call
        on the CPU, unidirectional, without inter-layer dropout, goes straight to the core, each
        layer's output feeding the next as a NumPy array -- no autograd node, no torch operation
        between layers, nothing saved. None where the call needs the general path (any other
        call, or one the general path must check or refuse: it gives torch.nn's errors)."""
        if (not plain_cpu_call(input) or input.dim() != 3 or input.numel() == 0
                or input.shape[-1] != self.input_size  # torch.nn's check and error: general path
                or self.bidirectional or (self.dropout and self.training)):
            return None
        B = input.shape[0] if self.batch_first else input.shape[1]
        L, H, R = self.num_layers, self.hidden_size, self.proj_size or self.hidden_size
        is_lstm = has_cell_state(mode)
        states = (hx if is_lstm else (hx,)) if hx is not None else ()
        expected = ((L, B, R), (L, B, H)) if is_lstm else ((L, B, R),)
        if hx is not None and not (
                isinstance(states, (tuple, list)) and len(states) == len(expected)
                and all(type(h) is Tensor and tuple(h.shape) == shape and h.dtype == input.dtype
                        and h.device.type == "cpu" and not h.requires_grad
                        for h, shape in zip(states, expected))):
            return None
        weights = self._flat_weights
        if any(type(w) is not torch.nn.Parameter and type(w) is not Tensor for w in weights) or any(
                w.dtype != input.dtype or w.device.type != "cpu" or w.layout != torch.strided
                for w in weights):
            return None
        self._check_weights(mode)
        x = input.transpose(0, 1) if self.batch_first else input
        layer_input = _np(x.contiguous())
        dtype = layer_input.dtype
        h0 = [_np(s.contiguous()) for s in states] if hx is not None else None
        h_n = np.empty((L, B, R), dtype)
        c_n = np.empty((L, B, H), dtype) if is_lstm else None
        per_layer = len(weights) // L
        code = CELLS[mode].code
        follow_torch_threads()
        for i in range(L):
            w = [_np(t) for t in weights[i * per_layer:(i + 1) * per_layer]]
            b_ih, b_hh = (w[2], w[3]) if self.bias else (None, None)
            w_hr = w[-1] if self.proj_size > 0 else None
            h = h0[0][i] if h0 else np.zeros((B, R), dtype)
            c = (h0[1][i] if h0 else np.zeros((B, H), dtype)) if is_lstm else None
            layer_input, h_last, c_last, _ = _core.layer_forward(
                code, layer_input, h, c, w[0], w[1], b_ih, b_hh, w_hr, None, False, False)
            h_n[i] = h_last
            if is_lstm:
                c_n[i] = c_last
        y = torch.from_numpy(layer_input)
        if self.batch_first:
            y = y.transpose(0, 1)
        h_t = torch.from_numpy(h_n)
        return y, ((h_t, torch.from_numpy(c_n)) if is_lstm else h_t)

    def _torch_forward(self, input, hx, resets, reason: Optional[str] = None):
        """torch.nn's forward, which has no ``resets``: refused with them (it would ignore them)."""
        if resets is not None:
            raise RuntimeError(
                f"{type(self).__name__}: resets: fastrnn's kernels cannot run this call"
                f"{' (' + reason + ')' if reason else ''}, and torch.nn's implementation has no "
                f"state resets")
        return super().forward(input, hx)

    # ---- the steps of forward ------------------------------------------------------------------

    def _take_apart(self, input, hx, mode: str) -> Optional[_Call]:
        """torch.nn's input handling: the call batched, or None where torch.nn's forward must
        decide (it raises, or returns empty results)."""
        is_lstm = has_cell_state(mode)
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if hx is not None and not _well_formed_hx(hx, is_lstm, rank=3):
                if is_lstm and _well_formed_hx(hx, True, rank=None):  # torch.nn: no check
                    _validate.torch_packed_state_ranks(type(self).__name__,
                                                       (hx[0].dim(), hx[1].dim()))
                return None
            return _Call(data, hx, batch_sizes[0], True, batch_sizes, sorted_indices,
                         unsorted_indices)
        if input.dim() not in (2, 3) or input.numel() == 0:  # torch errors, or empty results
            return None
        batched = input.dim() == 3
        if hx is not None and not _well_formed_hx(hx, is_lstm, rank=3 if batched else 2):
            return None
        if not batched:
            input = input.unsqueeze(self._batch_dim())
            if hx is not None:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1)) if is_lstm else hx.unsqueeze(1)
        return _Call(input, hx, input.size(self._batch_dim()), batched=batched)

    def _initial_state(self, call: _Call, mode: str) -> Optional[Tuple[Tensor, Optional[Tensor]]]:
        """(h0, c0 or None) in the packed (sorted) batch order, after torch.nn's checks and the
        PackedSequence checks torch.nn lacks; None where torch.nn's forward must decide."""
        is_lstm = has_cell_state(mode)
        if call.hx is None:
            hx = self._zero_state(call, is_lstm)
        else:
            hx = self.permute_hidden(call.hx, call.sorted_indices)
        if call.packed and is_lstm:  # torch.nn's LSTM checks no packed call: this comes first
            self._check_packed(call)
        self.check_forward_args(call.data, hx, call.batch_sizes)
        if call.packed and not is_lstm:  # after torch.nn's checks, which RNN and GRU make
            self._check_packed(call)
        if call.packed and call.batch_sizes[0] == 0:  # no sequences: torch.nn's empty results
            return None
        states = hx if is_lstm else (hx,)
        if not all(h.dtype == call.data.dtype and h.device == call.data.device for h in states):
            return None  # torch raises its own error for this
        return states[0], (states[1] if is_lstm else None)

    def _time_major_input(self, call: _Call) -> Tuple[Tensor, Optional[Tensor]]:
        """The core's input: (x (T, B, I), padded and time-major; lengths (B,) or None)."""
        if call.packed:
            return packed_to_padded(call.data, call.batch_sizes)
        return (call.data.transpose(0, 1) if self.batch_first else call.data), None

    def _time_major_resets(self, resets, call: _Call, x: Tensor) -> Optional[Tensor]:
        """``resets`` as the kernels take it: a contiguous bool tensor (T, B) in the order of the
        time-major input ``x`` (a PackedSequence's sorted order)."""
        if resets is None:
            return None
        T, B = x.shape[0], x.shape[1]
        if call.packed:
            layout, expected = "(T, B) in the caller's batch order", (T, B)
        elif not call.batched:
            layout, expected = "(T,)", (T,)
        elif self.batch_first:
            layout, expected = "(B, T)", (B, T)
        else:
            layout, expected = "(T, B)", (T, B)
        if not isinstance(resets, Tensor):
            raise TypeError(f"resets: expected a bool tensor of shape {layout}, got "
                            f"{type(resets).__name__}")
        if resets.dtype != torch.bool:
            raise TypeError(f"resets: expected dtype torch.bool, got {resets.dtype}")
        if tuple(resets.shape) != expected:
            raise ValueError(f"resets: expected shape {layout} = {expected}, got "
                             f"{tuple(resets.shape)}")
        if call.packed:
            if call.sorted_indices is not None:
                resets = resets.index_select(1, call.sorted_indices.to(resets.device))
        elif not call.batched:
            resets = resets.unsqueeze(1)
        elif self.batch_first:
            resets = resets.t()
        return resets.to(x.device).contiguous()

    def _run_layers(self, mode, x, h0, c0, lengths, batch_sizes, resets=None):
        """Every layer and direction, time-major; dropout between layers as torch applies it
        (on the packed data when the input was packed, so the masks are torch's)."""
        D = 2 if self.bidirectional else 1
        _validate.torch_dropout(type(self).__name__, self.dropout, self.training, self.num_layers)
        algo = ALGO_CODES[_cuda_api.check_algo(getattr(self, "algo", "auto"))]
        layer_input, h_n, c_n = x, [], []
        for i in range(self.num_layers):
            layer_input = layer_input.contiguous()  # once for both directions (batch_first input)
            outputs = []
            for direction in range(D):
                idx = i * D + direction
                y, h, c = layer(mode, layer_input, h0[idx], c0[idx] if c0 is not None else None,
                                *self._layer_weights(idx), lengths, direction == 1, algo, resets)
                outputs.append(y)
                h_n.append(h)
                if c is not None:
                    c_n.append(c)
            layer_output = outputs[0] if D == 1 else torch.cat(outputs, 2)
            if self.dropout != 0 and self.training and i < self.num_layers - 1:
                layer_output = self._dropout(layer_output, lengths, batch_sizes)
            layer_input = layer_output
        return layer_input, torch.stack(h_n), (torch.stack(c_n) if c_n else None)

    def _caller_results(self, call: _Call, y, h_n, c_n, lengths):
        """(output, hidden) in the caller's form (packed, batch_first, unbatched), as torch.nn
        returns them."""
        hidden = (h_n, c_n) if c_n is not None else h_n
        if call.packed:
            return (PackedSequence(padded_to_packed(y, lengths), call.batch_sizes,
                                   call.sorted_indices, call.unsorted_indices),
                    self.permute_hidden(hidden, call.unsorted_indices))
        if self.batch_first:
            y = y.transpose(0, 1)
        if not call.batched:
            y = y.squeeze(self._batch_dim())
            hidden = (h_n.squeeze(1), c_n.squeeze(1)) if c_n is not None else h_n.squeeze(1)
        return y, hidden

    # ---- helpers of the steps ------------------------------------------------------------------

    def _batch_dim(self) -> int:
        return 0 if self.batch_first else 1

    def _zero_state(self, call: _Call, is_lstm: bool):
        """torch.nn's default hx: zeros, (h0, c0) for an LSTM."""
        D = 2 if self.bidirectional else 1
        shape = (self.num_layers * D, call.max_batch_size)
        state_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        data = call.data
        h0 = torch.zeros(*shape, state_size, dtype=data.dtype, device=data.device)
        if not is_lstm:
            return h0
        return h0, torch.zeros(*shape, self.hidden_size, dtype=data.dtype, device=data.device)

    def _layer_weights(self, idx: int):
        """(w_ih, w_hh, b_ih, b_hh, w_hr) of layer and direction ``idx`` (None: absent)."""
        weights = self._flat_weights
        per_direction = len(weights) // (self.num_layers * (2 if self.bidirectional else 1))
        w = weights[idx * per_direction:(idx + 1) * per_direction]
        b_ih, b_hh = (w[2], w[3]) if self.bias else (None, None)
        return w[0], w[1], b_ih, b_hh, (w[-1] if self.proj_size > 0 else None)

    def _dropout(self, layer_output, lengths, batch_sizes):
        """Inter-layer dropout, on the packed data for a packed input (as torch.nn draws it)."""
        if batch_sizes is None:
            return torch.nn.functional.dropout(layer_output, self.dropout, True)
        data = padded_to_packed(layer_output, lengths)
        data = torch.nn.functional.dropout(data, self.dropout, True)
        return packed_to_padded(data, batch_sizes)[0]

    def _check_packed(self, call: _Call) -> None:
        check_packed(type(self).__name__, call.data, call.batch_sizes, call.sorted_indices,
                     call.unsorted_indices)

    def _check_weights(self, mode: str) -> None:
        """The parameters fit the module's sizes. torch.nn does not check them (its kernels
        raise, broadcast a bias, or read past a weight), so neither would the fallback: a
        RuntimeError, as torch's kernels raise, naming the first parameter that does not fit."""
        _validate.torch_parameters(
            type(self).__name__, self._flat_weights_names,
            [tuple(w.shape) for w in self._flat_weights], mode, input_size=self.input_size,
            hidden_size=self.hidden_size, proj_size=self.proj_size, num_layers=self.num_layers,
            bidirectional=self.bidirectional, bias=self.bias)


class RNN(_FastRNNMixin, torch.nn.RNN):
    """``torch.nn.RNN`` (tanh or relu) with fastrnn's kernels; same arguments and results."""

    _cells = _modes_of("RNN")  # the modes this class runs in the core


class LSTM(_FastRNNMixin, torch.nn.LSTM):
    """``torch.nn.LSTM`` (``proj_size`` included) with fastrnn's kernels; same arguments and results."""

    _cells = _modes_of("LSTM")


class GRU(_FastRNNMixin, torch.nn.GRU):
    """``torch.nn.GRU`` with fastrnn's kernels; same arguments and results."""

    _cells = _modes_of("GRU")


# The one twin map (convert, patch and pickling read it): the layers and the single-step cells.
_TWINS = {torch.nn.RNN: RNN, torch.nn.LSTM: LSTM, torch.nn.GRU: GRU,
          torch.nn.RNNCell: RNNCell, torch.nn.LSTMCell: LSTMCell, torch.nn.GRUCell: GRUCell}


def _twin_class(cls: type) -> Optional[type]:
    """The fastrnn.torch class for a module of class ``cls``, or None to leave it alone.

    The exact torch.nn classes map to their twins. torch.nn.utils.parametrize gives each
    parametrized module a class of its own (``ParametrizedLSTM``: a direct subclass of the torch
    class holding the parametrized attributes as properties); its twin is the same class on the
    fastrnn.torch base, so that adding and removing parametrizations keeps working (removing the
    last one leaves a fastrnn.torch.LSTM). Other subclasses may override forward: left alone.
    """
    if cls in _TWINS:
        return _TWINS[cls]
    if (len(cls.__bases__) == 1 and cls.__bases__[0] in _TWINS
            and cls.__name__ == "Parametrized" + cls.__bases__[0].__name__):
        namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
        return type(cls.__name__, (_TWINS[cls.__bases__[0]],), namespace)
    return None


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Turn, in place, every ``torch.nn.RNN/LSTM/GRU`` and ``torch.nn.RNNCell/LSTMCell/GRUCell``
    inside ``model`` (``model`` itself included) into its fastrnn.torch twin, and return ``model``.

    The modules change class only (the twins add no state), so they keep everything else: the
    very same parameter objects (optimizers built before keep working), training mode, hooks,
    pruning and parametrizations, and a module registered under two names stays one module.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        twin = _twin_class(type(module))
        if twin is not None:
            module.__class__ = twin
    return model
