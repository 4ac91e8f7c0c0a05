"""PackedSequence handling: packed data to the core's padded, time-major form and back, and the
checks of a PackedSequence that torch.nn does not make (the checks themselves: ``_validate``).

Packing and unpacking read the batch sizes' values, which torch.compile cannot trace (their
shapes are data). torch's own pad_packed_sequence / pack_padded_sequence are functions TorchDynamo
never traces, so under torch.compile each such call runs eagerly between compiled regions.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import _validate
from ._ops import _np


def packed_to_padded(data: Tensor, batch_sizes: Tensor) -> Tuple[Tensor, Tensor]:
    """(padded (T, B, *) in the packed (sorted) batch order, lengths (B,) int64)."""
    return pad_packed_sequence(PackedSequence(data, batch_sizes), total_length=batch_sizes.size(0))


def padded_to_packed(padded: Tensor, lengths: Tensor) -> Tensor:
    """The packed data of a padded (T, B, *) batch whose lengths are sorted, longest first."""
    return pack_padded_sequence(padded, lengths, enforce_sorted=True).data


def _info(t: Tensor) -> _validate.TensorInfo:
    """A tensor as _validate's checks take it."""
    info = _validate.TensorInfo(str(t.dtype), tuple(t.shape), str(t.device),
                                t.layout == torch.strided, None)
    # the values as NumPy: its small-array operations cost less than torch's
    return info._replace(values=_np(t)) if info.is_cpu_int64() else info


def _index_info(t) -> Union[_validate.TensorInfo, str, None]:
    """An index field: None, a tensor's info, or the type name of something else."""
    if t is None or isinstance(t, Tensor):
        return None if t is None else _info(t)
    return type(t).__name__


def check_packed(owner: str, data: Tensor, batch_sizes: Tensor, sorted_indices: Optional[Tensor],
                 unsorted_indices: Optional[Tensor]) -> None:
    """The checks of a PackedSequence that torch.nn does not make (see
    ``_validate.torch_packed_sequence``): a RuntimeError naming ``owner`` and the problem."""
    _validate.torch_packed_sequence(owner, tuple(data.shape), _info(batch_sizes),
                                    _index_info(sorted_indices), _index_info(unsorted_indices))
