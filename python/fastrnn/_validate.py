"""Argument checks shared by the module classes and the functional API (pure Python + NumPy).

Every message names the argument, what was expected and what came.
"""
from __future__ import annotations

import numbers
from typing import Optional

import numpy as np

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
    if value and mode != "lstm":
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
