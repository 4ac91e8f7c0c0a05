"""The C++ core's list of cells (csrc/fastrnn/cell.h, exported as ``_core.CELL_CODES``) and the
Python side's (``fastrnn._cells.CELLS``) name the same cells, with the same codes and facts."""
import numpy as np
import pytest

from fastrnn import _cells, _core

T, B, I, H = 2, 1, 3, 4


def test_core_cell_codes_match_the_python_cell_list():
    assert _core.CELL_CODES == {s.mode: s.code for s in _cells.CELLS.values()}


@pytest.mark.parametrize("mode", _cells.MODES)
def test_core_cell_facts_match_the_python_cell_list(mode):
    spec = _cells.CELLS[mode]
    x = np.zeros((T, B, I))
    h0 = np.zeros((B, H))
    c0 = np.zeros((B, H)) if spec.has_cell_state else None
    w_ih = np.zeros((spec.gates * H, I))
    w_hh = np.zeros((spec.gates * H, H))

    def forward(**changes):
        args = dict(cell=spec.code, x=x, h0=h0, c0=c0, weight_ih=w_ih, weight_hh=w_hh,
                    bias_ih=None, bias_hh=None, weight_hr=None, lengths=None, reverse=False,
                    training=False)
        args.update(changes)
        return _core.layer_forward(**args)

    y, h_n, c_n, _ = forward()  # the gate count and the cell state as _cells has them
    assert (c_n is not None) == spec.has_cell_state
    with pytest.raises(ValueError, match=rf"^weight_hh: .* G = {spec.gates} gates"):
        forward(weight_hh=np.zeros(spec.gates * H))
    w_hr = np.zeros((2, H))
    if spec.can_project:
        forward(weight_hr=w_hr, h0=np.zeros((B, 2)), weight_hh=np.zeros((spec.gates * H, 2)))
    else:
        with pytest.raises(ValueError, match="^weight_hr: only an LSTM layer has a projection"):
            forward(weight_hr=w_hr)
