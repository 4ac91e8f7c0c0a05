"""One step of a cell, for the NumPy-level ``cell_forward``/``cell_backward`` of
:mod:`fastrnn.functional` (the C++ core) and :mod:`fastrnn.reference` (NumPy).

A step is a layer of one step: ``cell_forward`` runs the backend's ``layer_forward`` on ``x[None]``
(one core call), and ``cell_backward`` its ``layer_backward`` with the gradient of the new state
as the output's gradient (at ``T = 1`` the output is the new state, and the core adds the two).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import numpy as np


def _with_shape(value: Any) -> Any:
    return value if hasattr(value, "shape") and hasattr(value, "ndim") else np.asarray(value)


def step_forward(layer_forward: Callable, mode: str, x, h, c, weight_ih, weight_hh, bias_ih,
                 bias_hh, **kwargs):
    """(h_new (B, H), c_new (B, H) or None, state): one step of the cell from ``x (B, I)``."""
    x = _with_shape(x)
    if x.ndim != 2:
        raise ValueError(f"x: expected a 2-D array (B, I) (one step), got shape {tuple(x.shape)}")
    _, h_new, c_new, state = layer_forward(mode, x[None], h, c, weight_ih, weight_hh, bias_ih,
                                           bias_hh, **kwargs)
    return h_new, c_new, state


def step_backward(layer_backward: Callable, state, dh, dc=None) -> Dict[str, Optional[Any]]:
    """Gradients of one step's inputs from ``dh`` (B, H), the new state's gradient, and ``dc``
    (B, H) for an LSTM (None: zeros): a dict with ``input``, ``h``, ``c``, ``weight_ih``,
    ``weight_hh``, ``bias_ih``, ``bias_hh`` (None where absent)."""
    dh = _with_shape(dh)
    if dh.ndim != 2:
        raise ValueError(f"dh: expected a 2-D array (B, H), got shape {tuple(dh.shape)}")
    grads = layer_backward(state, dh[None], None, dc)
    return {"input": grads["input"][0], "h": grads["h0"], "c": grads["c0"],
            "weight_ih": grads["weight_ih"], "weight_hh": grads["weight_hh"],
            "bias_ih": grads["bias_ih"], "bias_hh": grads["bias_hh"]}
