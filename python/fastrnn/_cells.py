"""What a cell is, for the whole Python side: the one list of cells (docs/design.md, "Cells").

Every module that needs a cell's name, gate count, the core's code for it, whether it carries a
cell state or which torch.nn class mirrors it imports it from here, tests included. The C++ side
has its own registry (``csrc/fastrnn/cell.h`` and ``csrc/common/dispatch.h``); the core exports
its codes as ``_core.CELL_CODES`` and a test checks that the two agree.

Adding a cell: its math in the C++ (and CUDA) backends and the reference, one line in each
registry, and one :class:`CellSpec` line below.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class CellSpec:
    """One recurrent cell, as every layer of fastrnn sees it."""

    mode: str                    # the name the API takes: "rnn_tanh", "lstm", ...
    code: int                    # the C++ core's and the CUDA backend's ``Cell`` value
    gates: int                   # G: the weights have G*H rows
    has_cell_state: bool         # LSTM's c: c0 / c_n exist
    can_project: bool            # takes weight_hr (torch.nn.LSTM's proj_size)
    torch_class: str             # the torch.nn class that mirrors it ("RNN", "LSTM", "GRU")
    nonlinearity: Optional[str]  # torch.nn.RNN's ``nonlinearity`` argument, for the vanilla cells


_SPECS = (
    CellSpec("rnn_tanh", 0, 1, False, False, "RNN", "tanh"),
    CellSpec("rnn_relu", 1, 1, False, False, "RNN", "relu"),
    CellSpec("lstm", 2, 4, True, True, "LSTM", None),
    CellSpec("gru", 3, 3, False, False, "GRU", None),
)

CELLS: Dict[str, CellSpec] = {spec.mode: spec for spec in _SPECS}
MODES: Tuple[str, ...] = tuple(CELLS)
# By code: what the custom operators and the core take as ``cell``.
CELLS_BY_CODE: Dict[int, CellSpec] = {spec.code: spec for spec in _SPECS}
# The vanilla cells, by the name torch.nn.RNN's ``nonlinearity`` gives them.
VANILLA_MODES: Dict[str, str] = {s.nonlinearity: s.mode for s in _SPECS if s.nonlinearity}


def check_mode(mode: object) -> str:
    """``mode`` if it names a cell, else ``ValueError`` naming the argument."""
    if not isinstance(mode, str) or mode not in CELLS:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    return mode


def cell(mode: object) -> CellSpec:
    """The :class:`CellSpec` of ``mode`` (checked as :func:`check_mode` does)."""
    return CELLS[check_mode(mode)]


def num_gates(mode: object) -> int:
    """Number of gates G of a cell: the weights have G*H rows."""
    return cell(mode).gates


def has_cell_state(mode: object) -> bool:
    """Whether the cell carries a cell state c besides h (LSTM)."""
    return cell(mode).has_cell_state


def mode_for_torch(class_name: str, nonlinearity: str = "tanh") -> str:
    """The mode of a torch.nn ``RNN``/``LSTM``/``GRU`` module, from its class name."""
    if class_name == "RNN":
        return VANILLA_MODES[nonlinearity]
    for spec in _SPECS:
        if spec.torch_class == class_name:
            return spec.mode
    raise ValueError(f"class_name: expected RNN, LSTM or GRU, got {class_name!r}")
