"""fastrnn.workspace_bytes and Module.workspace_bytes: the reported sizes are the ones the calls
use, and bad arguments are refused with the argument named."""
import numpy as np
import pytest

import fastrnn
from fastrnn import _core, functional
from conftest import make_layer_inputs

from fastrnn._cells import MODES  # noqa: E402


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [(1, 1, 1, 1), (7, 3, 5, 11), (13, 9, 4, 130)])
def test_reserve_is_what_a_training_forward_keeps(mode, size, dtype):
    T, B, I, H = size
    a = make_layer_inputs(mode, T, B, I, H, dtype=dtype, seed=1)
    _, _, _, state = functional.layer_forward(mode, a["x"], a["h0"], a["c0"], a["weight_ih"],
                                              a["weight_hh"], a["bias_ih"], a["bias_hh"])
    got = fastrnn.workspace_bytes(mode, T, B, I, H, dtype=dtype)
    assert got["reserve"] == state.reserve.nbytes
    itemsize = np.dtype(dtype).itemsize
    code = functional.MODES.index(mode)
    fwd_train, fwd_infer, bwd = _core.workspace_sizes(code, T, B, I, H, 0)
    assert got["forward_scratch"] == fwd_train * itemsize
    assert got["backward_scratch"] == bwd * itemsize
    inference = fastrnn.workspace_bytes(mode, T, B, I, H, dtype=dtype, training=False)
    assert inference == {"reserve": 0, "forward_scratch": fwd_infer * itemsize,
                         "backward_scratch": 0}
    _, _, _, none = functional.layer_forward(mode, a["x"], a["h0"], a["c0"], a["weight_ih"],
                                             a["weight_hh"], a["bias_ih"], a["bias_hh"],
                                             training=False)
    assert none is None


def test_projection_reserve():
    T, B, I, H, P = 6, 4, 5, 12, 7
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(s).astype(np.float32) for s in
            [(T, B, I), (B, P), (B, H), (4 * H, I), (4 * H, P), (4 * H,), (4 * H,)]]
    w_hr = rng.standard_normal((P, H)).astype(np.float32)
    _, _, _, state = functional.layer_forward("lstm", *args, weight_hr=w_hr)
    assert fastrnn.workspace_bytes("lstm", T, B, I, H, proj_size=P)["reserve"] == \
        state.reserve.nbytes


def test_module_sums_layers_and_directions():
    lstm = fastrnn.LSTM(5, 12, num_layers=3, bidirectional=True, proj_size=4, dtype=np.float64)
    T, B = 9, 3
    layer0 = fastrnn.workspace_bytes("lstm", T, B, 5, 12, proj_size=4, dtype=np.float64)
    upper = fastrnn.workspace_bytes("lstm", T, B, 8, 12, proj_size=4, dtype=np.float64)
    got = lstm.workspace_bytes(T, B)
    assert got["reserve"] == 2 * layer0["reserve"] + 4 * upper["reserve"]
    assert got["scratch"] == max(layer0["forward_scratch"], layer0["backward_scratch"],
                                 upper["forward_scratch"], upper["backward_scratch"])
    # The reserves the module's training forward keeps add up to the same figure.
    lstm(np.zeros((T, B, 5)))
    kept = sum(s.reserve.nbytes for layer in lstm._saved["states"] for s in layer)
    assert kept == got["reserve"]
    lstm.eval()
    assert lstm.workspace_bytes(T, B)["reserve"] == 0


def test_reference_classes_have_no_native_workspace():
    with pytest.raises(NotImplementedError, match="workspace_bytes"):
        fastrnn.reference.GRU(3, 4).workspace_bytes(5, 2)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(mode="lstmx"), ValueError, "mode: expected one of"),
    (dict(seq_len=0), ValueError, "seq_len: expected an int >= 1, got 0"),
    (dict(batch=2.0), TypeError, "batch: expected an int, got float"),
    (dict(input_size=-3), ValueError, "input_size: expected an int >= 1"),
    (dict(hidden_size=2**31), ValueError, "hidden_size: expected a size < 2\\^31"),
    (dict(proj_size=12), ValueError, "proj_size: expected 0 <= proj_size < hidden_size=12, got 12"),
    (dict(proj_size=-1), ValueError, "proj_size: expected 0 <= proj_size < hidden_size=12, got -1"),
    (dict(proj_size=True), TypeError, "proj_size: expected an int, got bool"),
    (dict(mode="gru", proj_size=2), ValueError, "proj_size: only LSTM supports a projection"),
    (dict(dtype=np.float16), fastrnn.DtypeError, "dtype: expected float32 or float64"),
    (dict(training="yes"), TypeError, "training: expected a bool"),
    (dict(seq_len=2**30, batch=2**30, hidden_size=2**30), ValueError, "overflow"),
])
def test_bad_arguments(kwargs, exc, match):
    args = dict(mode="lstm", seq_len=4, batch=2, input_size=3, hidden_size=12)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        fastrnn.workspace_bytes(**args)
