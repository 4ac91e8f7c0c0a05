"""The CPU core's reserve as sections, for the adapters that fold several problems into one
batch (fastrnn.torch's and fastrnn.jax's vmap rules): the reserve is a sequence of sections, each
``(slots, B, width)`` (``ReserveLayout`` in csrc/cpu/step.h): hs | cs (LSTM) | acts | ms
(projection), so N problems' reserves fold into one of batch N*B section by section."""
from __future__ import annotations

from typing import List, Tuple

from . import _core
from ._cells import CELLS_BY_CODE


def sections(cell: int, T: int, H: int, R: int, P: int) -> List[Tuple[int, int]]:
    """(slots, width) of each section of the CPU reserve, in order (hs | cs | acts | ms)."""
    spec = CELLS_BY_CODE[cell]
    per_slot, per_step = _core.reserve_widths(cell, H, P)
    out = [(T + 1, R)]
    if spec.has_cell_state:
        out.append((T + 1, H))
    out.append((T, per_step - (H if P else 0)))
    if P:
        out.append((T, H))
    assert sum(w for s, w in out if s == T + 1) == per_slot
    return out
