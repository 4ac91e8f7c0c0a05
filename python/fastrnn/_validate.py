"""Argument checks of the Python side, in one place (pure Python + NumPy, no torch).

Shared by the NumPy modules, ``functional``, the ``reference``, the CUDA path's device arrays and
``fastrnn.torch``; the C++ core checks its own entry points in ``csrc/bindings``. Every message
names the argument, what was expected and what came.
"""
from __future__ import annotations

import numbers
from typing import NamedTuple, Optional, Sequence, Union

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


def resets(value, steps: int, batch: int, *, batch_first: bool = False,
           unbatched: bool = False) -> Optional[np.ndarray]:
    """``resets`` (a state reset mask) as a C-contiguous bool array (T, B), or None. The caller's
    layout is (T, B), (B, T) with ``batch_first``, or (T,) for ``unbatched`` input (B = 1)."""
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.dtype != np.bool_:
        raise DtypeError(f"resets: expected dtype bool, got {arr.dtype}")
    if unbatched:
        layout, expected = "(T,)", (steps,)
    elif batch_first:
        layout, expected = "(B, T)", (batch, steps)
    else:
        layout, expected = "(T, B)", (steps, batch)
    if arr.shape != expected:
        raise ValueError(f"resets: expected shape {layout} = {expected}, got {arr.shape}")
    arr = arr.reshape(steps, 1) if unbatched else (arr.T if batch_first else arr)
    return np.require(arr, requirements=["C", "A"])


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


# ---------------------------------------------------------------------------------------------
# fastrnn.torch's own checks: what torch.nn does not check (its kernels would raise, broadcast a
# bias, or read and write out of bounds), refused with a RuntimeError as torch's kernels raise,
# naming the module's class (``owner``). Tensors arrive described by plain values (TensorInfo),
# so that this module does not import torch.
# ---------------------------------------------------------------------------------------------

def torch_parameters(owner: str, names: Sequence[str], shapes: Sequence[tuple], mode: str, *,
                     input_size: int, hidden_size: int, proj_size: int, num_layers: int,
                     bidirectional: bool, bias: bool) -> None:
    """A torch.nn RNN/LSTM/GRU's parameters (``names``, ``shapes`` in torch.nn's order: ih, hh,
    [b_ih, b_hh], [hr] per layer and direction) fit the module's attributes; the first that does
    not is named (parameters replaced, or attributes changed after construction)."""
    D = 2 if bidirectional else 1
    H, P = hidden_size, proj_size
    R = P if P > 0 else H
    GH = _cells.num_gates(mode) * H
    per = 2 + (2 if bias else 0) + (1 if P > 0 else 0)  # tensors per layer, direction
    if len(shapes) != num_layers * D * per:
        raise RuntimeError(
            f"{owner}: the module has the parameters {list(names)}, but its attributes "
            f"(num_layers={num_layers}, bidirectional={bidirectional}, bias={bias}, "
            f"proj_size={P}) want {num_layers * D * per}; were they changed after construction?")
    for i, got in enumerate(shapes):
        k = i % per
        if k == 0:
            shape = (GH, input_size if i < D * per else R * D)
        elif k == 1:
            shape = (GH, R)
        elif P > 0 and k == per - 1:
            shape = (P, H)
        else:
            shape = (GH,)
        if tuple(got) != shape:
            raise RuntimeError(
                f"{owner}: parameter {names[i]}: expected shape {shape} (input_size={input_size}, "
                f"hidden_size={H}, proj_size={P}, num_layers={num_layers}, "
                f"bidirectional={bidirectional}), got {tuple(got)}")


def torch_dropout(owner: str, dropout, training: bool, num_layers: int) -> None:
    """The dropout probability, where a training stack applies it (an attribute changed after
    construction: torch.nn checks it in its constructor only)."""
    if training and num_layers > 1 and dropout != 0 and not 0 <= dropout <= 1:
        raise RuntimeError(f"{owner}: dropout probability has to be between 0 and 1, but got "
                           f"{dropout}")


def torch_packed_state_ranks(owner: str, ranks: Sequence[int]) -> None:
    """(hx, cx) of a packed LSTM call are 3-D (torch.nn's LSTM checks no packed call: its kernel
    reads past such states)."""
    if any(rank != 3 for rank in ranks):
        raise RuntimeError(f"{owner}: for a PackedSequence input, hx and cx should be 3-D but got "
                           f"({ranks[0]}-D, {ranks[1]}-D) tensors")


class TensorInfo(NamedTuple):
    """A tensor as the checks below see it."""

    dtype: str                     # as torch prints it: "torch.int64"
    shape: tuple
    device: str                    # "cpu", "cuda:0", ...
    strided: bool                  # a dense tensor (not sparse, mkldnn, ...)
    values: Optional[np.ndarray]   # its values, for a strided CPU int64 tensor (else None)

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    def is_cpu_int64(self) -> bool:
        return self.dtype == "torch.int64" and self.device_type == "cpu" and self.strided


def torch_packed_sequence(owner: str, data_shape: tuple, batch_sizes: TensorInfo,
                          sorted_indices: Union[TensorInfo, str, None],
                          unsorted_indices: Union[TensorInfo, str, None]) -> None:
    """A PackedSequence's fields, as torch.nn's packed path does not check them: batch_sizes a
    1-D CPU int64 tensor of non-increasing, non-negative sizes (as pack_padded_sequence makes
    them) that add up to the rows of data; sorted_indices and unsorted_indices (each may be None;
    a str: the type name of something not a tensor) permutations of the batch, and one the
    other's inverse when both are given (PackedSequence inverts whatever it is given, leaving
    entries of a non-permutation uninitialised). torch's unpacking writes out of bounds for some
    of these."""
    problem = _packed_sequence_problem(data_shape, batch_sizes, sorted_indices, unsorted_indices)
    if problem:
        raise RuntimeError(f"{owner}: PackedSequence: {problem}")


def _packed_sequence_problem(data_shape, batch_sizes, sorted_indices, unsorted_indices) -> str:
    if not batch_sizes.is_cpu_int64() or len(batch_sizes.shape) != 1:
        return (f"batch_sizes: expected a 1-D CPU int64 tensor, got a {len(batch_sizes.shape)}-D "
                f"{batch_sizes.device_type} {batch_sizes.dtype} tensor")
    sizes = batch_sizes.values
    if sizes[-1] < 0 or (sizes[1:] > sizes[:-1]).any():
        return (f"batch_sizes: expected non-increasing, non-negative sizes, got "
                f"{sizes[:10].tolist()}{' ...' if sizes.size > 10 else ''}")
    total = int(sizes.sum())
    if len(data_shape) == 2 and data_shape[0] != total:  # another rank: torch.nn says so
        return f"data has {data_shape[0]} rows, but batch_sizes add up to {total}"
    B = int(sizes[0])
    given = {}  # torch.nn accepts either index tensor alone (a PackedSequence may hold only one)
    for name, t in (("sorted_indices", sorted_indices), ("unsorted_indices", unsorted_indices)):
        if t is None:
            continue
        if isinstance(t, str) or not t.is_cpu_int64() or tuple(t.shape) != (B,):
            got = t if isinstance(t, str) else f"a {tuple(t.shape)} {t.dtype} tensor on {t.device}"
            return f"{name}: expected a ({B},) CPU int64 tensor (B = batch_sizes[0]), got {got}"
        given[name] = t.values
        if not np.array_equal(np.sort(given[name]), np.arange(B)):
            return (f"{name}: expected a permutation of the batch, got "
                    f"{given[name][:10].tolist()}{' ...' if B > 10 else ''}")
    if len(given) == 2:
        order, inverse = given["sorted_indices"], given["unsorted_indices"]
        if not (inverse[order] == np.arange(B)).all():
            return ("unsorted_indices: expected the inverse of sorted_indices, got "
                    f"{inverse[:10].tolist()} for {order[:10].tolist()}")
    return ""
