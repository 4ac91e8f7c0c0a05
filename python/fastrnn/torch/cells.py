"""The single-step cells ``RNNCell``, ``LSTMCell``, ``GRUCell`` (torch.nn's, on fastrnn's kernels).

A cell step is a layer of one step: the forward runs :func:`fastrnn.torch._ops.layer` on the input
as a sequence of length 1, so one call of the core forward (and one of its backward) per step, and
everything the layers have -- the autograd.Function, the custom operators under torch.compile, the
vmap rules, forward mode and double backward -- serves the cells unchanged. Calls the kernels
cannot run, and calls torch.nn refuses, go to torch.nn's own forward (``_fallback``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import _core
from .. import cuda as _cuda_api
from .._cells import CELLS, VANILLA_MODES
from . import _patch
from ._fallback import _warn_once, fallback_reason
from ._ops import ALGO_CODES, _np, layer, plain_cpu_call
from ._runtime import follow_torch_threads


class _FastCellMixin(_patch.TwinMixin):
    """The forward of RNNCell, LSTMCell and GRUCell: torch.nn's input handling, fastrnn's kernels.

    Mixed in before the torch.nn class, so ``super().forward`` is torch's implementation (the
    fallback, and torch's errors) and everything else (parameters, state_dict, ``_apply``, repr)
    is torch's.

    One argument beyond torch.nn's: ``algo`` (keyword; also a plain attribute, absent from cells
    made by :func:`fastrnn.torch.convert`, which run ``"auto"``): the CUDA algorithm, as for the
    layer modules. The CPU core has one algorithm and ignores it.
    """

    # Each class's ``_cell_mode``: "rnn_tanh", "lstm", ...; None: torch.nn's forward decides.

    def forward(self, input, hx=None):
        mode = self._cell_mode
        if mode is not None and not torch.is_grad_enabled():
            result = self._inference_step(input, hx, mode)
            if result is not None:
                return result
        if mode is None or not isinstance(input, Tensor):
            return super().forward(input, hx)
        biases = [self.bias_ih, self.bias_hh]
        weights = [self.weight_ih, self.weight_hh] + [b for b in biases if b is not None]
        reason = fallback_reason(input, hx, weights)
        if reason is not None:  # the kernels cannot run it ("": torch refuses the call)
            if reason:
                _warn_once(reason)
            return super().forward(input, hx)
        state = self._initial_state(input, hx, mode)
        if state is None or (biases[0] is None) != (biases[1] is None):
            # Malformed calls (and empty ones, and a single bias left) go to torch.nn's forward:
            # it raises exactly its errors, or returns its results.
            return super().forward(input, hx)
        h0, c0 = state
        x = (input if input.dim() == 2 else input.unsqueeze(0)).unsqueeze(0)  # (1, B, I)
        algo = ALGO_CODES[_cuda_api.check_algo(getattr(self, "algo", "auto"))]
        _, h, c = layer(mode, x, h0, c0, self.weight_ih, self.weight_hh, biases[0], biases[1],
                        None, None, False, algo)
        if input.dim() == 1:
            h = h.squeeze(0)
            c = c.squeeze(0) if c is not None else None
        return (h, c) if c is not None else h

    def _inference_step(self, input, hx, mode: str):
        """A step without gradient on the CPU (a sampler's, a decoder's) straight to the core: no
        autograd node, nothing saved, no torch operation. None where the call needs the general
        path (anything else, or a call that torch.nn must check or refuse)."""
        if not plain_cpu_call(input) or input.dim() not in (1, 2) or input.numel() == 0:
            return None
        spec = CELLS[mode]
        B, H = (input.shape[0] if input.dim() == 2 else 1), self.hidden_size
        G, I = spec.gates, input.shape[-1]
        w_ih, w_hh, b_ih, b_hh = self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        weights = [(w_ih, (G * H, I)), (w_hh, (G * H, H))]
        if (b_ih is None) != (b_hh is None):
            return None
        if b_ih is not None:
            weights += [(b_ih, (G * H,)), (b_hh, (G * H,))]
        states = [] if hx is None else (list(hx) if spec.has_cell_state and isinstance(
            hx, (tuple, list)) else [hx])
        state_shape = (B, H) if input.dim() == 2 else (H,)
        if hx is not None and (len(states) != (2 if spec.has_cell_state else 1) or any(
                type(h) is not Tensor or tuple(h.shape) != state_shape or h.requires_grad
                for h in states)):
            return None
        for t, shape in weights + [(h, state_shape) for h in states]:
            if (tuple(t.shape) != shape or t.dtype != input.dtype or t.device.type != "cpu"
                    or t.layout != torch.strided):
                return None
        x = _np(input.contiguous()).reshape(1, B, I)
        if states:
            h0, c0 = (_np(h.contiguous()).reshape(B, H) for h in (states + states)[:2])
        else:
            h0 = c0 = np.zeros((B, H), x.dtype)
        follow_torch_threads()
        _, h, c, _ = _core.layer_forward(
            spec.code, x, h0, c0 if spec.has_cell_state else None, _np(w_ih), _np(w_hh),
            _np(b_ih), _np(b_hh), None, None, False, False)
        h = torch.from_numpy(h if input.dim() == 2 else h.reshape(H))
        if not spec.has_cell_state:
            return h
        return h, torch.from_numpy(c if input.dim() == 2 else c.reshape(H))

    def _initial_state(self, input: Tensor, hx, mode: str
                       ) -> Optional[Tuple[Tensor, Optional[Tensor]]]:
        """(h0 (B, H), c0 (B, H) or None) as torch.nn's forward makes them, or None where the call
        is not one the kernels run as torch.nn would (torch.nn's forward decides: it raises, or
        returns an empty result)."""
        if input.dim() not in (1, 2) or input.numel() == 0:
            return None
        batched = input.dim() == 2
        B = input.shape[0] if batched else 1
        is_lstm = CELLS[mode].has_cell_state
        if hx is None:
            zeros = input.new_zeros(B, self.hidden_size)
            states = [zeros, zeros] if is_lstm else [zeros]
        else:
            if is_lstm:
                if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                    return None
                states = list(hx)
            else:
                states = [hx]
            if not all(isinstance(h, Tensor) and h.dim() == input.dim() for h in states):
                return None
            if not batched:
                states = [h.unsqueeze(0) for h in states]
        if self.weight_hh.dim() != 2:
            return None
        G = CELLS[mode].gates
        H = self.weight_hh.shape[1]
        I = input.shape[-1]
        shapes = [(self.weight_ih, (G * H, I)), (self.weight_hh, (G * H, H))]
        shapes += [(b, (G * H,)) for b in (self.bias_ih, self.bias_hh) if b is not None]
        shapes += [(h, (B, H)) for h in states]
        if H == 0 or any(tuple(t.shape) != shape for t, shape in shapes):
            return None
        if not all(h.dtype == input.dtype and h.device == input.device for h in states):
            return None  # torch raises its own error for this
        return states[0], (states[1] if is_lstm else None)


class RNNCell(_FastCellMixin, torch.nn.RNNCell):
    """``torch.nn.RNNCell`` (tanh or relu) with fastrnn's kernels; same arguments and results."""

    @property
    def _cell_mode(self) -> Optional[str]:  # None for an unknown nonlinearity: torch.nn raises
        nonlinearity = self.nonlinearity
        return VANILLA_MODES.get(nonlinearity) if isinstance(nonlinearity, str) else None


class LSTMCell(_FastCellMixin, torch.nn.LSTMCell):
    """``torch.nn.LSTMCell`` with fastrnn's kernels; same arguments and results."""

    _cell_mode = "lstm"


class GRUCell(_FastCellMixin, torch.nn.GRUCell):
    """``torch.nn.GRUCell`` with fastrnn's kernels; same arguments and results."""

    _cell_mode = "gru"
