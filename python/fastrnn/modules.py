"""RNN / LSTM / GRU layer objects over NumPy arrays, mirroring ``torch.nn.RNN/LSTM/GRU``.

Stacking, bidirection and dropout are written here once, generic over the cell and over the
backend: a backend is any module with ``layer_forward`` / ``layer_backward`` (``fastrnn.functional``
on the C++ core, or ``fastrnn.reference`` in plain NumPy). Keeping this in Python costs one call
per layer and direction, negligible next to a whole sequence's work, and lets the reference
classes share the exact same stacking code as the fast ones.
"""
from __future__ import annotations

import math
import numbers
from types import ModuleType
from typing import Any, Dict, Generic, List, Mapping, Optional, Tuple, TypeVar, cast

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _cells, _validate, functional

# Arrays in and out of the modules: float32 or float64, as the module's dtype says (a type
# checker cannot follow a dtype chosen at run time, hence np.floating).
_Array = NDArray[np.floating[Any]]
# The hidden state a module takes as hx and returns after y: h for RNN and GRU, (h, c) for LSTM.
_State = TypeVar("_State")
_Self = TypeVar("_Self", bound="_RNNBase[Any]")


class _RNNBase(Generic[_State]):
    """Shared machinery of :class:`RNN`, :class:`LSTM` and :class:`GRU`."""

    # Any module with layer_forward / layer_backward: functional, or reference (see there).
    _backend: ModuleType = functional

    # The attributes __init__ sets, declared for type checkers: mypy takes its isinstance checks
    # against numbers.Integral / numbers.Real as always failing for an int / a float ("subclass
    # of int and Integral cannot exist"), so it never reaches the assignments to infer them.
    mode: str
    input_size: int
    hidden_size: int
    proj_size: int
    num_layers: int
    bias: bool
    batch_first: bool
    bidirectional: bool
    dropout: float
    dtype: np.dtype[Any]
    training: bool
    _rng: np.random.Generator

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, dtype: DTypeLike = np.float32,
                 seed: Optional[int] = None, proj_size: int = 0) -> None:
        self.mode = mode
        self.input_size = _validate.positive_int(input_size, "input_size")
        self.hidden_size = _validate.positive_int(hidden_size, "hidden_size")
        self.proj_size = _validate.proj_size(proj_size, self.hidden_size, mode)
        self.num_layers = _validate.positive_int(num_layers, "num_layers")
        self.bias = _validate.flag(bias, "bias")
        self.batch_first = _validate.flag(batch_first, "batch_first")
        self.bidirectional = _validate.flag(bidirectional, "bidirectional")
        if (isinstance(dropout, (bool, np.bool_)) or not isinstance(dropout, numbers.Real)
                or not 0.0 <= dropout <= 1.0):
            raise ValueError(f"dropout: expected a number in [0, 1], got {dropout!r}")
        self.dropout = float(dropout)
        self.dtype = _validate.as_float_dtype(dtype)
        self.training = True
        self._rng = np.random.default_rng(seed)
        # what the last training-mode call keeps for backward
        self._saved: Optional[Dict[str, Any]] = None
        self.params: Dict[str, _Array] = {}
        bound = 1.0 / math.sqrt(self.hidden_size)  # PyTorch's default initialisation
        for name, shape in self._param_shapes().items():
            self.params[name] = self._rng.uniform(-bound, bound, shape).astype(self.dtype)

    # ---- structure -------------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def state_size(self) -> int:
        """Size of h and of each direction's output: proj_size if set, else hidden_size."""
        return self.proj_size or self.hidden_size

    def _layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.state_size * self.num_directions

    def _param_names(self, layer: int, direction: int) -> List[str]:
        """PyTorch's names and order: weight_ih, weight_hh[, bias_ih, bias_hh][, weight_hr]."""
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if self.bias else [])
        names += ["weight_hr"] if self.proj_size else []
        return [n + suffix for n in names]

    def _param_shapes(self) -> Dict[str, tuple]:
        gh, H = _cells.num_gates(self.mode) * self.hidden_size, self.hidden_size
        shapes: Dict[str, tuple] = {}
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                names = self._param_names(layer, direction)
                sizes = {"weight_ih": (gh, self._layer_input_size(layer)),
                         "weight_hh": (gh, self.state_size), "bias_ih": (gh,), "bias_hh": (gh,),
                         "weight_hr": (self.proj_size, H)}
                shapes.update((n, sizes[n.split("_l")[0]]) for n in names)
        return shapes

    def _checked_params(self) -> Dict[str, np.ndarray]:
        expected = self._param_shapes()
        extra = sorted(set(self.params) - set(expected))
        if extra:
            raise KeyError(f"params: unexpected names {extra}; expected {sorted(expected)}")
        missing = sorted(set(expected) - set(self.params))
        if missing:
            raise KeyError(f"params: missing {missing}")
        return {name: _validate.array(self.params[name], f"params[{name!r}]", self.dtype, shape)
                for name, shape in expected.items()}

    @property
    def _has_cell_state(self) -> bool:
        return _cells.has_cell_state(self.mode)

    # ---- weights in and out, as torch's modules do --------------------------------------------
    def state_dict(self) -> Dict[str, _Array]:
        """A copy of every parameter under PyTorch's names."""
        return {name: np.array(value, copy=True) for name, value in self.params.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Copy weights in from a mapping of PyTorch's names to arrays (or CPU torch tensors,
        e.g. ``torch_module.state_dict()``), cast to this module's dtype. With ``strict``, the
        names must match exactly; shapes must always match."""
        expected = self._param_shapes()
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict: missing {missing}, unexpected {unexpected}")
        loaded = {}
        for name in expected:
            if name not in state_dict:
                continue
            value = state_dict[name]
            if hasattr(value, "detach"):  # a torch tensor
                value = value.detach().cpu().numpy()
            value = np.asarray(value)
            if value.shape != expected[name]:
                raise ValueError(f"state_dict[{name!r}]: expected shape {expected[name]}, "
                                 f"got {value.shape}")
            if not np.issubdtype(value.dtype, np.floating):
                raise _validate.DtypeError(f"state_dict[{name!r}]: expected a floating dtype, "
                                           f"got {value.dtype}")
            loaded[name] = np.array(value, dtype=self.dtype, copy=True)
        self.params.update(loaded)

    # ---- modes -----------------------------------------------------------------------------
    def train(self: _Self, mode: bool = True) -> _Self:
        self.training = bool(mode)
        return self

    def eval(self: _Self) -> _Self:
        return self.train(False)

    def __repr__(self) -> str:
        extra = ", nonlinearity='relu'" if _cells.cell(self.mode).nonlinearity == "relu" else ""
        extra += f", proj_size={self.proj_size}" if self.proj_size else ""
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}, bias={self.bias}, batch_first={self.batch_first}, "
                f"dropout={self.dropout}, bidirectional={self.bidirectional}{extra}, "
                f"dtype={self.dtype})")

    # ---- forward ---------------------------------------------------------------------------
    def _time_major_input(self, x):
        """(T, B, I) contiguous input and whether the call is unbatched."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"input: expected a numpy.ndarray, got {type(x).__name__}")
        if x.dtype != self.dtype:
            raise _validate.DtypeError(f"input: expected dtype {self.dtype} (the module's dtype), "
                                       f"got {x.dtype}")
        if x.ndim not in (2, 3):
            raise ValueError(f"input: expected a 3-D array ({'B, T' if self.batch_first else 'T, B'}"
                             f", input_size) or 2-D (T, input_size), got shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input: expected last dimension input_size={self.input_size}, "
                             f"got shape {x.shape}")
        if 0 in x.shape:
            raise ValueError(f"input: expected at least one step and one sequence (T, B >= 1), "
                             f"got shape {x.shape}")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        return np.ascontiguousarray(x), unbatched

    def _initial_state(self, value, name: str, batch: int, unbatched: bool) -> np.ndarray:
        size = self.hidden_size if name == "c0" else self.state_size
        shape = (self.num_layers * self.num_directions, batch, size)
        if value is None:
            return np.zeros(shape, self.dtype)
        expected = shape[:1] + shape[2:] if unbatched else shape
        arr = _validate.array(value, name, self.dtype, expected)
        return arr.reshape(shape)

    def _split_hx(self, hx):
        if not self._has_cell_state:
            return hx, None
        if hx is None:
            return None, None
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"hx: expected a tuple (h0, c0) for an LSTM, got {type(hx).__name__}")
        if hx[0] is None or hx[1] is None:
            raise TypeError("hx: expected both h0 and c0 (or hx=None for zeros), got a None")
        return hx[0], hx[1]

    def __call__(self, input: _Array, hx: Optional[_State] = None,
                 lengths: Optional[ArrayLike] = None,
                 resets: Optional[ArrayLike] = None) -> Tuple[_Array, _State]:
        self._saved = None  # a failed call must not leave an older call's state for backward
        x, unbatched = self._time_major_input(input)
        T, B, _ = x.shape
        h0_arg, c0_arg = self._split_hx(hx)
        h0 = self._initial_state(h0_arg, "h0", B, unbatched)
        c0 = self._initial_state(c0_arg, "c0", B, unbatched) if self._has_cell_state else None
        if unbatched and lengths is not None:
            raise ValueError("lengths: not supported for unbatched (2-D) input; add a batch axis")
        lengths = _validate.lengths(lengths, B, T)
        # (T, B) for every layer, whatever the caller's layout (batch_first: (B, T); unbatched: (T,))
        resets = _validate.resets(resets, T, B, batch_first=self.batch_first, unbatched=unbatched)
        params = self._checked_params()
        D = self.num_directions

        layer_input = x
        h_n = np.empty_like(h0)
        c_n = np.empty_like(c0) if c0 is not None else None
        layer_states, dropout_masks = [], []
        for layer in range(self.num_layers):
            outputs, states = [], []
            for direction in range(D):
                idx = layer * D + direction
                w = self._layer_params(params, layer, direction)
                y, h, c, state = self._backend.layer_forward(
                    self.mode, layer_input, h0[idx], c0[idx] if c0 is not None else None,
                    w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"],
                    weight_hr=w["weight_hr"], lengths=lengths, resets=resets,
                    reverse=direction == 1, training=self.training)
                outputs.append(y)
                states.append(state)
                h_n[idx] = h
                if c_n is not None:
                    c_n[idx] = c
            layer_output = outputs[0] if D == 1 else np.concatenate(outputs, axis=2)
            mask = None
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                keep = 1.0 - self.dropout
                mask = (self._rng.random(layer_output.shape) < keep).astype(self.dtype)
                if keep > 0:
                    mask /= self.dtype.type(keep)
                layer_output = layer_output * mask
            layer_states.append(states)
            dropout_masks.append(mask)
            layer_input = layer_output

        if self.training:
            self._saved = dict(states=layer_states, masks=dropout_masks, batch=B, steps=T,
                               unbatched=unbatched)
        y = self._user_layout(layer_input, unbatched)
        if unbatched:
            h_n = h_n[:, 0]
            c_n = c_n[:, 0] if c_n is not None else None
        # _State is (h, c) exactly when the cell has a cell state (see the subclasses' bases).
        return cast("Tuple[_Array, _State]",
                    (y, (h_n, c_n)) if self._has_cell_state else (y, h_n))

    def _layer_params(self, params: Dict[str, np.ndarray], layer: int, direction: int) -> dict:
        """One layer and direction's parameters keyed by their layer_forward argument name."""
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        return {name: params.get(name + suffix)
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")}

    def _user_layout(self, seq: np.ndarray, unbatched: bool) -> np.ndarray:
        if unbatched:
            return seq[:, 0]
        return np.ascontiguousarray(seq.transpose(1, 0, 2)) if self.batch_first else seq

    def workspace_bytes(self, seq_len: int, batch: int) -> Dict[str, int]:
        """Memory a call on ``(seq_len, batch)`` input allocates in the native core, in bytes:
        ``"reserve"``, what a training-mode forward keeps for :meth:`backward` (all layers and
        directions; 0 in eval mode), and ``"scratch"``, the largest temporary space of one
        layer's forward or backward (cached per thread, see
        :func:`fastrnn.functional.workspace_bytes`)."""
        if self._backend is not functional:
            raise NotImplementedError(f"workspace_bytes: {type(self).__module__}."
                                      f"{type(self).__name__} does not run on the native core")
        reserve = scratch = 0
        for layer in range(self.num_layers):
            sizes = functional.workspace_bytes(
                self.mode, seq_len, batch, self._layer_input_size(layer), self.hidden_size,
                proj_size=self.proj_size, dtype=self.dtype, training=self.training)
            reserve += sizes["reserve"] * self.num_directions
            scratch = max(scratch, sizes["forward_scratch"], sizes["backward_scratch"])
        return {"reserve": reserve, "scratch": scratch}

    # ---- backward --------------------------------------------------------------------------
    def backward(self, dy: _Array, dh_n: Optional[_Array] = None,
                 dc_n: Optional[_Array] = None) -> Dict[str, _Array]:
        """Gradients of the last training-mode call, given the gradients of its outputs.

        ``dy`` has the output's shape; ``dh_n``/``dc_n`` the final states' shape (None: zeros).
        Returns a dict: ``input``, ``h0``, ``c0`` (LSTM) and every parameter name. The saved
        state is consumed: a second backward needs a new forward.
        """
        saved = self._saved
        if saved is None:
            raise RuntimeError("backward: needs a forward call in training mode first (after "
                               "eval(), or after a previous backward, nothing is saved)")
        T, B, unbatched = saved["steps"], saved["batch"], saved["unbatched"]
        D, H, L, R = self.num_directions, self.hidden_size, self.num_layers, self.state_size
        out_shape: Tuple[int, ...]
        if unbatched:
            out_shape = (T, D * R)
        else:
            out_shape = (B, T, D * R) if self.batch_first else (T, B, D * R)
        dy = _validate.array(dy, "dy", self.dtype, out_shape)
        if unbatched:
            dy = dy[:, None, :]
        elif self.batch_first:
            dy = dy.transpose(1, 0, 2)
        dh_n = self._final_state_grad(dh_n, "dh_n", B, unbatched)
        if dc_n is not None and not self._has_cell_state:
            raise ValueError(f"dc_n: only an LSTM has a cell state; expected None for {self.mode}")
        dc_n = self._final_state_grad(dc_n, "dc_n", B, unbatched)

        grads: Dict[str, np.ndarray] = {}
        dh0 = np.zeros((L * D, B, R), self.dtype)
        dc0 = np.zeros((L * D, B, H), self.dtype) if self._has_cell_state else None
        d_out = dy
        for layer in reversed(range(L)):
            mask = saved["masks"][layer]
            if mask is not None:
                d_out = d_out * mask
            d_in: Any = None  # summed over the directions (D >= 1, so set when the loop ends)
            for direction in range(D):
                idx = layer * D + direction
                dy_dir = np.ascontiguousarray(d_out[:, :, direction * R:(direction + 1) * R])
                g = self._backend.layer_backward(
                    saved["states"][layer][direction], dy_dir,
                    None if dh_n is None else dh_n[idx], None if dc_n is None else dc_n[idx])
                d_in = g["input"] if d_in is None else d_in + g["input"]
                dh0[idx] = g["h0"]
                if dc0 is not None:
                    dc0[idx] = g["c0"]
                for name in self._param_names(layer, direction):
                    grads[name] = g[name.split("_l")[0]]
            d_out = d_in
        self._saved = None

        result = {"input": self._user_layout(d_out, unbatched),
                  "h0": dh0[:, 0] if unbatched else dh0}
        if dc0 is not None:
            result["c0"] = dc0[:, 0] if unbatched else dc0
        result.update(grads)
        return result

    def _final_state_grad(self, value, name: str, batch: int, unbatched: bool):
        if value is None:
            return None
        size = self.hidden_size if name == "dc_n" else self.state_size
        shape = (self.num_layers * self.num_directions, batch, size)
        expected = shape[:1] + shape[2:] if unbatched else shape
        return _validate.array(value, name, self.dtype, expected).reshape(shape)


class RNN(_RNNBase[_Array]):
    """Elman RNN, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)`` with ``act`` tanh or relu.

    Same arguments as ``torch.nn.RNN`` plus ``dtype`` (float32 or float64) and ``seed``.
    ``y, h_n = rnn(x, h0=None, lengths=None, resets=None)``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, dtype: DTypeLike = np.float32,
                 seed: Optional[int] = None) -> None:
        if nonlinearity not in _cells.VANILLA_MODES:
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(_cells.VANILLA_MODES[nonlinearity], input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, dtype, seed)


class LSTM(_RNNBase[Tuple[_Array, _Array]]):
    """LSTM, gate order i, f, g, o, as ``torch.nn.LSTM``, including ``proj_size``.

    ``y, (h_n, c_n) = lstm(x, (h0, c0)=None, lengths=None, resets=None)``. With ``proj_size = P > 0`` the
    output and h are projected, ``h = W_hr (o * tanh(c))``: y has ``D*P`` features, h0/h_n are
    ``(L*D, B, P)`` and c0/c_n stay ``(L*D, B, hidden_size)``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, dtype: DTypeLike = np.float32,
                 seed: Optional[int] = None) -> None:
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, seed, proj_size=proj_size)


class GRU(_RNNBase[_Array]):
    """GRU, gate order r, z, n, reset applied after the hidden matmul, as ``torch.nn.GRU``.

    ``y, h_n = gru(x, h0=None, lengths=None, resets=None)``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 dtype: DTypeLike = np.float32, seed: Optional[int] = None) -> None:
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, seed)
