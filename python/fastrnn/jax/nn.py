"""``RNN``, ``LSTM`` and ``GRU`` as Flax NNX modules on fastrnn's kernels (``fastrnn.jax.layer``).

The constructor arguments are torch.nn's (plus ``dtype`` and Flax's ``rngs``), the parameters are
``nnx.Param`` attributes under torch.nn's names and shapes (``weight_ih_l0``, ``bias_hh_l1_reverse``,
``weight_hr_l0``, ...), and a call takes and returns what fastrnn's NumPy modules
(:mod:`fastrnn.modules`) do::

    y, h_n = gru(x, hx=None, lengths=None, resets=None)
    y, (h_n, c_n) = lstm(x, hx=None, lengths=None, resets=None)   # hx = (h0, c0)

Stacking, bidirection and dropout between layers are written here once, over one
``fastrnn.jax.layer`` call per layer and direction, so the modules work under ``jax.jit``,
``jax.grad``, ``jax.vmap`` and Flax's transforms (``nnx.jit``, ``nnx.grad``, ...) as that function
does. Dropout is an ``nnx.Dropout`` between layers (never after the last), on in training mode
and off after ``model.eval()``, drawing from the ``dropout`` stream of the ``rngs`` given to the
constructor (or their default stream).

:meth:`_RNNBase.state_dict` and :meth:`_RNNBase.load_state_dict` exchange weights with torch.nn
modules (``torch.nn.LSTM(...).state_dict()`` loads as it is), fastrnn's NumPy modules and
fastrnn.torch; :func:`fastrnn.jax.convert.from_flax` (also importable from here) turns Flax's own
recurrent cells into these modules.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .. import _cells, _validate
from .. import jax as _fastrnn_jax  # fastrnn.jax.layer, looked up at call time
from ..errors import DtypeError, LengthsError

__all__ = ["RNN", "LSTM", "GRU", "from_flax", "flax_state_dict"]

_PARAM_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def _x64_enabled() -> bool:
    """Whether JAX's 64-bit mode is on (the config or an ``enable_x64`` context)."""
    return jax.dtypes.canonicalize_dtype(np.float64) == np.float64


def _is_array(value) -> bool:
    return isinstance(value, (jax.Array, np.ndarray))


def _concrete(value) -> Optional[np.ndarray]:
    """``value`` as a NumPy array when its values are known (not a tracer under jit), else None."""
    try:
        return np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


class _RNNBase(nnx.Module):
    """Shared machinery of :class:`RNN`, :class:`LSTM` and :class:`GRU`."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, *, dtype: Any = jnp.float32,
                 rngs: nnx.Rngs) -> None:
        self.mode = _cells.check_mode(mode)
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
        self._check_x64("dtype")
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"rngs: expected a flax.nnx.Rngs, got {type(rngs).__name__}")
        # torch.nn's initialisation, uniform in ±1/sqrt(H): one draw for all parameters, cut on
        # the host where it is concrete (one compiled op per module size instead of one per
        # parameter shape; under a trace, nnx.eval_shape say, cut by JAX)
        bound = 1.0 / math.sqrt(self.hidden_size)
        shapes = self._param_shapes()
        total = sum(math.prod(shape) for shape in shapes.values())
        flat = jax.random.uniform(rngs.params(), (total,), self.dtype, -bound, bound)
        host = _concrete(flat)
        if host is not None:
            flat = host
        at = 0
        for name, shape in shapes.items():
            size = math.prod(shape)
            setattr(self, name, nnx.Param(jnp.asarray(flat[at:at + size].reshape(shape))))
            at += size
        # Between layers only; without a rate or a second layer it never draws a key.
        uses_dropout = self.dropout > 0 and self.num_layers > 1
        self.layer_dropout = nnx.Dropout(self.dropout, rngs=rngs if uses_dropout else None)

    # ---- structure -------------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def state_size(self) -> int:
        """Size of h and of each direction's output: proj_size if set, else hidden_size."""
        return self.proj_size or self.hidden_size

    @property
    def training(self) -> bool:
        """Whether dropout between layers is on (``model.train()``; off after ``model.eval()``)."""
        return not self.layer_dropout.deterministic

    def _layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.state_size * self.num_directions

    def _param_names(self, layer: int, direction: int) -> List[str]:
        """torch.nn's names and order: weight_ih, weight_hh[, bias_ih, bias_hh][, weight_hr]."""
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if self.bias else [])
        names += ["weight_hr"] if self.proj_size else []
        return [n + suffix for n in names]

    def _param_shapes(self) -> Dict[str, Tuple[int, ...]]:
        gh, H = _cells.num_gates(self.mode) * self.hidden_size, self.hidden_size
        shapes: Dict[str, Tuple[int, ...]] = {}
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                sizes = {"weight_ih": (gh, self._layer_input_size(layer)),
                         "weight_hh": (gh, self.state_size), "bias_ih": (gh,), "bias_hh": (gh,),
                         "weight_hr": (self.proj_size, H)}
                for name in self._param_names(layer, direction):
                    shapes[name] = sizes[name.split("_l")[0]]
        return shapes

    def _check_x64(self, name: str) -> None:
        if self.dtype == np.float64 and not _x64_enabled():
            raise DtypeError(f"{name}: float64 needs JAX's 64-bit mode (jax.config.update("
                             f"'jax_enable_x64', True) or jax.experimental.enable_x64()); "
                             f"without it JAX computes in float32")

    def _checked_params(self) -> Dict[str, jax.Array]:
        """Every parameter's value, its shape and dtype checked (a ``set_value`` may change them)."""
        params = {}
        for name, shape in self._param_shapes().items():
            variable = getattr(self, name, None)
            if not isinstance(variable, nnx.Variable):
                raise KeyError(f"{name}: expected an nnx.Param on the module, got "
                               f"{type(variable).__name__}")
            value = variable[...]
            if tuple(value.shape) != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {tuple(value.shape)}")
            if value.dtype != self.dtype:
                raise DtypeError(f"{name}: expected dtype {self.dtype} (the module's dtype), "
                                 f"got {value.dtype}")
            params[name] = value
        return params

    # ---- weights in and out, as torch's modules do --------------------------------------------
    def state_dict(self) -> Dict[str, jax.Array]:
        """Every parameter's value (a JAX array) under torch.nn's names, in torch.nn's order."""
        return {name: getattr(self, name)[...] for name in self._param_shapes()}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Set the parameters from a mapping of torch.nn's names to arrays: NumPy or JAX arrays,
        or torch tensors (``torch_module.state_dict()`` as it is), cast to this module's dtype.

        With ``strict``, the names must match exactly (``KeyError`` naming the missing and the
        unexpected ones); shapes must always match (``ValueError``), values be floating point
        (``DtypeError``). Nothing is set unless every entry passes.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict: expected a mapping of names to arrays, got "
                            f"{type(state_dict).__name__}")
        expected = self._param_shapes()
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict: missing {missing}, unexpected {unexpected}")
        loaded = {}
        for name, shape in expected.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
                value = value.detach().cpu()
                if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
                    value = value.float()  # NumPy has no bfloat16
                value = value.numpy()
            if not _is_array(value):
                value = np.asarray(value)
            if tuple(value.shape) != shape:
                raise ValueError(f"state_dict[{name!r}]: expected shape {shape}, got "
                                 f"{tuple(value.shape)}")
            if not jnp.issubdtype(value.dtype, jnp.floating):
                raise DtypeError(f"state_dict[{name!r}]: expected a floating dtype, got "
                                 f"{value.dtype}")
            loaded[name] = jnp.asarray(value, dtype=self.dtype)
        for name, value in loaded.items():
            getattr(self, name).set_value(value)

    # ---- forward ---------------------------------------------------------------------------
    def _time_major_input(self, x) -> Tuple[jax.Array, bool]:
        """(T, B, I) input and whether the call is unbatched."""
        if not _is_array(x):
            raise TypeError(f"input: expected a jax.Array or numpy.ndarray, got "
                            f"{type(x).__name__}")
        if x.dtype != self.dtype:
            raise DtypeError(f"input: expected dtype {self.dtype} (the module's dtype), got "
                             f"{x.dtype}")
        if x.ndim not in (2, 3):
            raise ValueError(f"input: expected a 3-D array ({'B, T' if self.batch_first else 'T, B'}"
                             f", input_size) or 2-D (T, input_size), got shape {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input: expected last dimension input_size={self.input_size}, "
                             f"got shape {tuple(x.shape)}")
        if 0 in x.shape:
            raise ValueError(f"input: expected at least one step and one sequence (T, B >= 1), "
                             f"got shape {tuple(x.shape)}")
        x = jnp.asarray(x)
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = jnp.swapaxes(x, 0, 1)
        return x, unbatched

    def _initial_state(self, value, name: str, batch: int, unbatched: bool) -> jax.Array:
        size = self.hidden_size if name == "c0" else self.state_size
        shape = (self.num_layers * self.num_directions, batch, size)
        if value is None:
            return jnp.zeros(shape, self.dtype)
        expected = shape[:1] + shape[2:] if unbatched else shape
        if not _is_array(value):
            raise TypeError(f"{name}: expected a jax.Array or numpy.ndarray, got "
                            f"{type(value).__name__}")
        if value.dtype != self.dtype:
            raise DtypeError(f"{name}: expected dtype {self.dtype}, got {value.dtype}")
        if tuple(value.shape) != expected:
            raise ValueError(f"{name}: expected shape {expected}, got {tuple(value.shape)}")
        return jnp.asarray(value).reshape(shape)

    def _split_hx(self, hx):
        if not _cells.has_cell_state(self.mode):
            return hx, None
        if hx is None:
            return None, None
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"hx: expected a tuple (h0, c0) for an LSTM, got {type(hx).__name__}")
        if hx[0] is None or hx[1] is None:
            raise TypeError("hx: expected both h0 and c0 (or hx=None for zeros), got a None")
        return hx[0], hx[1]

    def _lengths(self, value, batch: int, steps: int, unbatched: bool) -> Optional[jax.Array]:
        """(B,) int32 lengths, checked: values too where they are known (not traced)."""
        if value is None:
            return None
        if unbatched:
            raise ValueError("lengths: not supported for unbatched (2-D) input; add a batch axis")
        concrete = _concrete(value)
        if concrete is not None:
            return jnp.asarray(_validate.lengths(concrete, batch, steps).astype(np.int32))
        # traced (under jit, vmap, ...): only the dtype and shape can be checked here
        if not jnp.issubdtype(value.dtype, jnp.integer):
            raise LengthsError(f"lengths: expected integers, got dtype {value.dtype}")
        if tuple(value.shape) != (batch,):
            raise LengthsError(f"lengths: expected shape ({batch},), got {tuple(value.shape)}")
        return value.astype(jnp.int32)

    def _resets(self, value, steps: int, batch: int, unbatched: bool) -> Optional[jax.Array]:
        """(T, B) bool resets, from the caller's (T, B), (B, T) (batch_first) or (T,) (unbatched)."""
        if value is None:
            return None
        concrete = _concrete(value)
        if concrete is not None:
            return jnp.asarray(_validate.resets(concrete, steps, batch,
                                                batch_first=self.batch_first, unbatched=unbatched))
        if value.dtype != jnp.bool_:
            raise DtypeError(f"resets: expected dtype bool, got {value.dtype}")
        if unbatched:
            layout, expected = "(T,)", (steps,)
        elif self.batch_first:
            layout, expected = "(B, T)", (batch, steps)
        else:
            layout, expected = "(T, B)", (steps, batch)
        if tuple(value.shape) != expected:
            raise ValueError(f"resets: expected shape {layout} = {expected}, got "
                             f"{tuple(value.shape)}")
        if unbatched:
            return value.reshape(steps, 1)
        return value.T if self.batch_first else value

    def __call__(self, input, hx=None, lengths=None, resets=None):
        self._check_x64("input")
        x, unbatched = self._time_major_input(input)
        T, B, _ = x.shape
        h0_arg, c0_arg = self._split_hx(hx)
        lstm = _cells.has_cell_state(self.mode)
        h0 = self._initial_state(h0_arg, "h0", B, unbatched)
        c0 = self._initial_state(c0_arg, "c0", B, unbatched) if lstm else None
        lengths = self._lengths(lengths, B, T, unbatched)
        resets = self._resets(resets, T, B, unbatched)
        params = self._checked_params()
        D = self.num_directions

        layer_input = x
        h_n: List[jax.Array] = []
        c_n: List[jax.Array] = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(D):
                idx = layer * D + direction
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                w = {kind: params.get(kind + suffix) for kind in _PARAM_KINDS}
                y, h, c = _fastrnn_jax.layer(
                    self.mode, layer_input, h0[idx], c0[idx] if lstm else None,
                    w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"],
                    weight_hr=w["weight_hr"], lengths=lengths, resets=resets,
                    reverse=direction == 1)
                outputs.append(y)
                h_n.append(h)
                if lstm:
                    c_n.append(c)
            layer_input = outputs[0] if D == 1 else jnp.concatenate(outputs, axis=2)
            if self.dropout > 0 and layer < self.num_layers - 1:
                layer_input = self.layer_dropout(layer_input)

        y = layer_input
        h = jnp.stack(h_n)
        c = jnp.stack(c_n) if lstm else None
        if unbatched:
            y, h = y[:, 0], h[:, 0]
            c = c[:, 0] if c is not None else None
        elif self.batch_first:
            y = jnp.swapaxes(y, 0, 1)
        return (y, (h, c)) if lstm else (y, h)


class RNN(_RNNBase):
    """Elman RNN, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)`` with ``act`` tanh or relu.

    torch.nn.RNN's arguments plus ``dtype`` (float32, or float64 with JAX's 64-bit mode) and
    ``rngs`` (``flax.nnx.Rngs``: ``params`` initialises the weights uniformly in ±1/sqrt(H) as
    torch.nn does, ``dropout`` draws the masks between layers).
    ``y, h_n = rnn(x, hx=None, lengths=None, resets=None)``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, *, dtype: Any = jnp.float32,
                 rngs: nnx.Rngs) -> None:
        if nonlinearity not in _cells.VANILLA_MODES:
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(_cells.VANILLA_MODES[nonlinearity], input_size, hidden_size, num_layers,
                         bias, batch_first, dropout, bidirectional, dtype=dtype, rngs=rngs)


class LSTM(_RNNBase):
    """LSTM, gate order i, f, g, o, as torch.nn.LSTM, including ``proj_size``.

    ``y, (h_n, c_n) = lstm(x, hx=None, lengths=None, resets=None)`` with ``hx = (h0, c0)``. With
    ``proj_size = P > 0`` the output and h are projected, ``h = W_hr (o * tanh(c))``: y has
    ``D*P`` features, h0/h_n are ``(L*D, B, P)`` and c0/c_n stay ``(L*D, B, hidden_size)``.
    Other arguments as :class:`RNN`.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, *, dtype: Any = jnp.float32, rngs: nnx.Rngs) -> None:
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, dtype=dtype, rngs=rngs)


class GRU(_RNNBase):
    """GRU, gate order r, z, n, reset applied after the hidden product, as torch.nn.GRU.

    ``y, h_n = gru(x, hx=None, lengths=None, resets=None)``. Other arguments as :class:`RNN`.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, *,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs) -> None:
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype=dtype, rngs=rngs)


from .convert import flax_state_dict, from_flax  # noqa: E402  (convert builds these modules)
