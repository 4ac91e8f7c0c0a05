"""PackedSequence handling: packed data to the core's padded, time-major form and back, and the
checks of a PackedSequence that torch.nn does not make.

Packing and unpacking read the batch sizes' values, which torch.compile cannot trace (their
shapes are data). torch's own pad_packed_sequence / pack_padded_sequence are functions TorchDynamo
never traces, so under torch.compile each such call runs eagerly between compiled regions.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ._ops import _np


def packed_to_padded(data: Tensor, batch_sizes: Tensor) -> Tuple[Tensor, Tensor]:
    """(padded (T, B, *) in the packed (sorted) batch order, lengths (B,) int64)."""
    return pad_packed_sequence(PackedSequence(data, batch_sizes), total_length=batch_sizes.size(0))


def padded_to_packed(padded: Tensor, lengths: Tensor) -> Tensor:
    """The packed data of a padded (T, B, *) batch whose lengths are sorted, longest first."""
    return pack_padded_sequence(padded, lengths, enforce_sorted=True).data


def packed_problem(data: Tensor, batch_sizes: Tensor, sorted_indices: Optional[Tensor],
                   unsorted_indices: Optional[Tensor]) -> str:
    """What is wrong with a PackedSequence ('' if nothing) that torch.nn's packed path does not
    check: batch_sizes a 1-D CPU int64 tensor of non-increasing, non-negative sizes (as
    pack_padded_sequence makes them) that add up to the rows of data; sorted_indices and
    unsorted_indices (each may be None) permutations of the batch, and one the other's inverse
    when both are given (PackedSequence inverts whatever it is given, leaving entries of a
    non-permutation uninitialised)."""
    if (batch_sizes.dtype != torch.int64 or batch_sizes.dim() != 1
            or batch_sizes.device.type != "cpu" or batch_sizes.layout != torch.strided):
        return (f"batch_sizes: expected a 1-D CPU int64 tensor, got a {batch_sizes.dim()}-D "
                f"{batch_sizes.device.type} {batch_sizes.dtype} tensor")
    sizes = _np(batch_sizes)  # NumPy's small-array operations cost less than torch's
    if sizes[-1] < 0 or (sizes[1:] > sizes[:-1]).any():
        return (f"batch_sizes: expected non-increasing, non-negative sizes, got "
                f"{sizes[:10].tolist()}{' ...' if sizes.size > 10 else ''}")
    total = int(sizes.sum())
    if data.dim() == 2 and data.size(0) != total:  # another rank: check_forward_args says so
        return f"data has {data.size(0)} rows, but batch_sizes add up to {total}"
    B = int(sizes[0])
    given = {}  # torch.nn accepts either index tensor alone (a PackedSequence may hold only one)
    for name, t in (("sorted_indices", sorted_indices), ("unsorted_indices", unsorted_indices)):
        if t is None:
            continue
        if (not isinstance(t, Tensor) or t.dtype != torch.int64 or t.shape != (B,)
                or t.device.type != "cpu" or t.layout != torch.strided):
            got = (f"a {tuple(t.shape)} {t.dtype} tensor on {t.device}"
                   if isinstance(t, Tensor) else type(t).__name__)
            return f"{name}: expected a ({B},) CPU int64 tensor (B = batch_sizes[0]), got {got}"
        given[name] = _np(t)
        if not np.array_equal(np.sort(given[name]), np.arange(B)):
            return (f"{name}: expected a permutation of the batch, got "
                    f"{given[name][:10].tolist()}{' ...' if B > 10 else ''}")
    if len(given) == 2:
        order, inverse = given["sorted_indices"], given["unsorted_indices"]
        if not (inverse[order] == np.arange(B)).all():
            return ("unsorted_indices: expected the inverse of sorted_indices, got "
                    f"{inverse[:10].tolist()} for {order[:10].tolist()}")
    return ""
