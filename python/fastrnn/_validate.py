"""Argument checks of the Python side, in one place (pure Python + NumPy, no torch).

Shared by the NumPy modules, ``functional``, the ``reference``, the CUDA path's device arrays and
``fastrnn.torch``; the C++ core checks its own entry points in ``csrc/bindings``. Every message
names the argument, what was expected and what came.
"""
from __future__ import annotations

import numbers
from typing import NamedTuple, Optional, Sequence

import numpy as np

from . import _cells
from .errors import DtypeError, LengthsError

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_float_dtype(dtype, name: str = "dtype") -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise DtypeError(f"{name}: expected float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise DtypeError(f"{name}: expected float32 or float64, got {dt}")
    return dt


def positive_int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value}")
    return int(value)


def proj_size(value, hidden_size: int, mode: str) -> int:
    """An LSTM projection size: 0 (none) or 0 < P < hidden_size, and 0 for other cells."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"proj_size: expected an int, got {type(value).__name__}")
    if value < 0 or value >= hidden_size:
        raise ValueError(f"proj_size: expected 0 <= proj_size < hidden_size={hidden_size}, "
                         f"got {value}")
    if value and not _cells.cell(mode).can_project:
        raise ValueError("proj_size: only LSTM supports a projection")
    return int(value)


def array(value, name: str, dtype: np.dtype, shape: tuple) -> np.ndarray:
    """An ndarray of exactly ``dtype`` and ``shape`` (C-contiguous: copied if it is not)."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(value).__name__}")
    if value.dtype != dtype:
        raise DtypeError(f"{name}: expected dtype {dtype}, got {value.dtype}")
    if value.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {value.shape}")
    return np.require(value, requirements=["C", "A"])


def flag(value, name: str) -> bool:
    """A bool as torch.nn accepts it: True/False, numpy bools, or the ints 0 and 1."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral)
                                              and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name}: expected a bool, got {value!r}")


def lengths(value, batch: int, steps: int) -> Optional[np.ndarray]:
    """``lengths`` as a C-contiguous int64 array (B,) with values in [1, T], or None."""
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":  # not bool, and not timedelta (numpy files it under integer)
        raise LengthsError(f"lengths: expected integers, got dtype {arr.dtype}")
    if arr.shape != (batch,):
        raise LengthsError(f"lengths: expected shape ({batch},), got {arr.shape}")
    bad = np.flatnonzero((arr < 1) | (arr > steps))  # before any cast, so nothing wraps
    if bad.size:
        b = int(bad[0])
        raise LengthsError(
            f"lengths: expected every value in [1, T={steps}], got lengths[{b}] = {int(arr[b])}")
    return np.require(arr, dtype=np.int64, requirements=["C", "A"])


# ---------------------------------------------------------------------------------------------
# One layer call's arrays, for every Python entry point that checks them itself (the reference,
# the CUDA path of functional; the C++ core checks the CPU path in csrc/bindings with the same
# wording). Works on anything with ``.shape`` and ``.dtype``: ndarrays, device-array descriptors.
# ---------------------------------------------------------------------------------------------

class LayerSizes(NamedTuple):
    T: int
    B: int
    I: int  # noqa: E741 (the design's name for the input size)
    H: int
    P: int  # LSTM projection size, 0 for none

    @property
    def R(self) -> int:
        """The state and output size: P with a projection, else H."""
        return self.P or self.H


def _same_dtype(value, name: str, dtype: str) -> None:
    if str(value.dtype) != dtype:
        raise DtypeError(f"{name}: expected dtype {dtype}, got {value.dtype}")


def _shaped(value, name: str, shape: tuple, dtype: str) -> None:
    _same_dtype(value, name, dtype)
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(value.shape)}")


def layer_arrays(mode: str, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, *,
                 float_dtypes: Sequence[str], nonempty: bool) -> LayerSizes:
    """Checks the shapes and dtypes of one layer call's arrays; returns its sizes.

    ``float_dtypes``: the dtype names x may have; every other array must have x's dtype.
    ``nonempty``: whether T, B and I must be >= 1 (the NumPy reference also runs empty batches).
    """
    spec = _cells.cell(mode)
    if str(x.dtype) not in float_dtypes:
        raise DtypeError(f"x: expected dtype {' or '.join(float_dtypes)}, got {x.dtype}")
    if len(x.shape) != 3:
        raise ValueError(f"x: expected 3 dimensions (T, B, I), got shape {tuple(x.shape)}")
    T, B, I = (int(n) for n in x.shape)
    if nonempty:
        for size_name, value in (("T", T), ("B", B), ("I", I)):
            if value < 1:
                raise ValueError(f"x: expected every size >= 1, got {size_name} = {value}")
    dtype = str(x.dtype)
    if weight_ih is None:
        raise ValueError("weight_ih: expected an array, got None")
    if len(weight_ih.shape) != 2 or weight_ih.shape[0] % spec.gates or weight_ih.shape[0] == 0:
        raise ValueError(f"weight_ih: expected shape (G*H, I) with G = {spec.gates}, "
                         f"got {tuple(weight_ih.shape)}")
    GH = int(weight_ih.shape[0])
    H = GH // spec.gates
    P = 0
    if weight_hr is not None:
        if not spec.can_project:
            raise ValueError(f"weight_hr: expected None for mode {mode!r} (only an LSTM projects)")
        if len(weight_hr.shape) != 2 or not 0 < weight_hr.shape[0] < H:
            raise ValueError(f"weight_hr: expected shape (P, H={H}) with 0 < P < H, "
                             f"got {tuple(weight_hr.shape)}")
        P = int(weight_hr.shape[0])
        _shaped(weight_hr, "weight_hr", (P, H), dtype)
    sizes = LayerSizes(T, B, I, H, P)
    if h0 is None:
        raise ValueError(f"h0: expected an array of shape {(B, sizes.R)}, got None")
    _shaped(h0, "h0", (B, sizes.R), dtype)
    if spec.has_cell_state:
        if c0 is None:
            raise ValueError(f"c0: expected an array of shape {(B, H)} for mode {mode!r}, got None")
        _shaped(c0, "c0", (B, H), dtype)
    elif c0 is not None:
        raise ValueError(f"c0: expected None for mode {mode!r} (it has no cell state)")
    _shaped(weight_ih, "weight_ih", (GH, I), dtype)
    if weight_hh is None:
        raise ValueError("weight_hh: expected an array, got None")
    _shaped(weight_hh, "weight_hh", (GH, sizes.R), dtype)
    if (bias_ih is None) != (bias_hh is None):
        raise ValueError("bias_ih, bias_hh: expected both arrays or both None, got one of each")
    if bias_ih is not None:
        _shaped(bias_ih, "bias_ih", (GH,), dtype)
        _shaped(bias_hh, "bias_hh", (GH,), dtype)
    return sizes


def final_state_grads(mode: str, sizes: LayerSizes, dy, dh_n, dc_n, dtype: str) -> None:
    """Checks ``layer_backward``'s incoming gradients: dy (T, B, R), dh_n (B, R), dc_n (B, H)
    (LSTM only), each of the forward's dtype or None (zeros; dy is required)."""
    if dy is None:
        raise ValueError("dy: expected an array, got None")
    if dc_n is not None and not _cells.has_cell_state(mode):
        raise ValueError(f"dc_n: expected None for mode {mode!r} (it has no cell state)")
    T, B, _, H, _ = sizes
    for name, value, shape in (("dy", dy, (T, B, sizes.R)), ("dh_n", dh_n, (B, sizes.R)),
                               ("dc_n", dc_n, (B, H))):
        if value is not None:
            _shaped(value, name, shape, dtype)
