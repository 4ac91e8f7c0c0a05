"""One recurrent layer, one direction, a whole sequence, on the fastrnn C++ core.

These two functions are the layer-level API under the module classes (``fastrnn.RNN``,
``fastrnn.LSTM``, ``fastrnn.GRU``). ``fastrnn.reference`` offers the same two functions written in
plain NumPy; the module classes run on either.

Shapes (time-major): ``x (T, B, I)``, ``h0, c0 (B, H)``, ``weight_ih (G*H, I)``,
``weight_hh (G*H, H)``, ``bias_ih, bias_hh (G*H,)`` with G = 1 (vanilla), 4 (LSTM: i, f, g, o),
3 (GRU: r, z, n). ``lengths (B,)`` integers in ``[1, T]``: steps ``t >= lengths[b]`` leave the state
untouched and give zero outputs; ``reverse=True`` walks ``t = T-1 .. 0``. ``resets (T, B)`` bool:
``resets[t, b]`` starts sequence b afresh at step t (the state entering the step is zeros; see
:func:`layer_forward`).

Arrays must share one floating dtype (float32 or float64); non-contiguous arrays are copied to
C order. Arrays on a CUDA device that expose ``__dlpack__`` (torch tensors, CuPy arrays) run on
fastrnn's CUDA backend instead (float32, float16, bfloat16; see ``fastrnn.cuda``), and the
results are arrays of the same library on the same device; ``algo`` picks the GPU algorithm.
Errors name the argument: ``TypeError`` (``fastrnn.DtypeError``) for dtypes, ``ValueError`` for
shapes, ``fastrnn.LengthsError`` (a ``ValueError`` and an ``IndexError``) for lengths.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional, Tuple, TypedDict, TypeVar, cast, overload

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _cells, _core, _device_arrays, _step, _validate
from . import cuda as _cuda_api
from ._cells import MODES, check_mode, num_gates  # noqa: F401 (public here since 0.1)


def _contiguous(a):
    """C-contiguous, aligned view or copy of an ndarray; anything else passes through for the
    core to reject."""
    if isinstance(a, np.ndarray) and not (a.flags.c_contiguous and a.flags.aligned):
        return np.require(a, requirements="CA")
    return a



@dataclass
class LayerState:
    """What a training-mode forward keeps for backward (opaque to callers)."""
    mode: str
    x: np.ndarray
    h0: np.ndarray
    c0: Optional[np.ndarray]
    weight_ih: np.ndarray
    weight_hh: np.ndarray
    bias_ih: Optional[np.ndarray]
    bias_hh: Optional[np.ndarray]
    weight_hr: Optional[np.ndarray]
    lengths: Optional[np.ndarray]
    reverse: bool
    reserve: np.ndarray
    resets: Optional[np.ndarray] = None


# Typing of layer_forward: every float array of one call has the dtype of x (float32 or float64)
# and so do the outputs. The bound is np.floating so that callers holding
# NDArray[np.floating[Any]] type-check; another width (float16) raises DtypeError at run time.
_FloatT = TypeVar("_FloatT", bound="np.floating[Any]")
_FloatArray = NDArray[np.floating[Any]]


class LayerGradients(TypedDict):
    """What :func:`layer_backward` returns: the gradient of each :func:`layer_forward` input."""
    input: _FloatArray
    h0: _FloatArray
    c0: Optional[_FloatArray]  # None unless LSTM
    weight_ih: _FloatArray
    weight_hh: _FloatArray
    bias_ih: Optional[_FloatArray]  # None without bias
    bias_hh: Optional[_FloatArray]
    weight_hr: Optional[_FloatArray]  # None without projection


# Two signatures so that the usual training call gives a LayerState, not an Optional one, and
# its result can go to layer_backward without a None check.
@overload
def layer_forward(mode: str, x: NDArray[_FloatT], h0: NDArray[_FloatT],
                  c0: Optional[NDArray[_FloatT]], weight_ih: NDArray[_FloatT],
                  weight_hh: NDArray[_FloatT], bias_ih: Optional[NDArray[_FloatT]],
                  bias_hh: Optional[NDArray[_FloatT]], *,
                  weight_hr: Optional[NDArray[_FloatT]] = None,
                  lengths: Optional[ArrayLike] = None, resets: Optional[ArrayLike] = None,
                  reverse: bool = False, training: Literal[True] = True, algo: str = "auto",
                  ) -> Tuple[NDArray[_FloatT], NDArray[_FloatT], Optional[NDArray[_FloatT]],
                             LayerState]: ...


@overload
def layer_forward(mode: str, x: NDArray[_FloatT], h0: NDArray[_FloatT],
                  c0: Optional[NDArray[_FloatT]], weight_ih: NDArray[_FloatT],
                  weight_hh: NDArray[_FloatT], bias_ih: Optional[NDArray[_FloatT]],
                  bias_hh: Optional[NDArray[_FloatT]], *,
                  weight_hr: Optional[NDArray[_FloatT]] = None,
                  lengths: Optional[ArrayLike] = None, resets: Optional[ArrayLike] = None,
                  reverse: bool = False, training: bool, algo: str = "auto",
                  ) -> Tuple[NDArray[_FloatT], NDArray[_FloatT], Optional[NDArray[_FloatT]],
                             Optional[LayerState]]: ...


def layer_forward(mode: str, x: NDArray[_FloatT], h0: NDArray[_FloatT],
                  c0: Optional[NDArray[_FloatT]], weight_ih: NDArray[_FloatT],
                  weight_hh: NDArray[_FloatT], bias_ih: Optional[NDArray[_FloatT]],
                  bias_hh: Optional[NDArray[_FloatT]], *,
                  weight_hr: Optional[NDArray[_FloatT]] = None,
                  lengths: Any = None,  # ArrayLike or None; an int64 array once checked below
                  resets: Any = None,  # ArrayLike or None; a bool array once checked below
                  reverse: bool = False, training: bool = True, algo: str = "auto",
                  ) -> Tuple[NDArray[_FloatT], NDArray[_FloatT], Optional[NDArray[_FloatT]],
                             Optional[LayerState]]:
    """Run one layer in one direction over the whole sequence.

    ``weight_hr (P, H)``, LSTM only: project the output, ``h = weight_hr @ (o * tanh(c))``, as
    ``torch.nn.LSTM(proj_size=P)``; the state h is then of size R = P (``h0 (B, P)``,
    ``weight_hh (4H, P)``), otherwise R = H.

    ``resets (T, B)`` bool, or None: a state reset mask. ``resets[t, b]`` splits sequence b before
    step t and each segment runs as a sequence of its own from zeros: the state entering step t
    (``h0``/``c0`` at ``t = 0``) is replaced by zeros, exactly as multiplying it by
    ``1 - resets[t, b]``, so no gradient flows into the state it replaced. With ``reverse=True``
    each segment's walk starts from zeros at its last step (the last segment from ``h0``). Resets
    at padded steps (``t >= lengths[b]``) are ignored; an all-false mask gives bitwise the results
    of none.

    Returns ``(y (T, B, R), h_n (B, R), c_n (B, H) or None, state)``; ``h_n``/``c_n`` are each
    sequence's state after its own last valid step. ``state`` is None when ``training=False``
    (nothing is saved), else the object :func:`layer_backward` takes.

    ``algo`` (``"auto"``, ``"standard"``, ``"persistent"``) chooses the GPU algorithm for arrays on
    a CUDA device (see ``fastrnn.cuda``); the CPU core has one algorithm and accepts ``"auto"`` and
    ``"standard"``.
    """
    code = _cells.cell(mode).code
    _cuda_api.check_algo(algo)
    if _device_arrays.is_cuda_array(x):
        reverse = _validate.flag(reverse, "reverse")
        training = _validate.flag(training, "training")
        return _device_arrays.layer_forward(  # type: ignore[return-value]
            mode, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr=weight_hr,
            lengths=lengths, resets=resets, reverse=reverse, training=training, algo=algo)
    if algo == "persistent":
        raise ValueError("algo: 'persistent' is a CUDA algorithm; the CPU core takes 'auto' or "
                         "'standard'")
    x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr = map(
        _contiguous, (x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr))
    if isinstance(x, np.ndarray) and x.ndim == 3:
        lengths = _validate.lengths(lengths, x.shape[1], x.shape[0])
        resets = _validate.resets(resets, x.shape[0], x.shape[1])
    reverse, training = _validate.flag(reverse, "reverse"), _validate.flag(training, "training")
    y, h_n, c_n, reserve = _core.layer_forward(code, x, h0, c0, weight_ih, weight_hh, bias_ih,
                                               bias_hh, weight_hr, lengths, reverse, training,
                                               resets)
    state: Optional[LayerState] = None
    if training:
        state = LayerState(mode, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
                           lengths, reverse, cast(np.ndarray, reserve),  # not None: training
                           resets)
    return y, h_n, c_n, state


def layer_backward(state: LayerState, dy: _FloatArray, dh_n: Optional[_FloatArray] = None,
                   dc_n: Optional[_FloatArray] = None) -> LayerGradients:
    """Backward through time for a :func:`layer_forward` call made with ``training=True``.

    ``dy (T, B, R)`` (entries at padded steps are ignored: those outputs are constant zeros),
    ``dh_n (B, R)``, ``dc_n (B, H)`` or None for zeros. Returns a dict with ``input``, ``h0``,
    ``c0`` (None unless LSTM), ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` (None
    without bias), ``weight_hr`` (None without projection).
    """
    if isinstance(state, _device_arrays.CudaLayerState):
        return _device_arrays.layer_backward(state, dy, dh_n, dc_n)  # type: ignore[return-value]
    if not isinstance(state, LayerState):
        raise TypeError(f"state: expected the LayerState returned by a training-mode "
                        f"layer_forward, got {type(state).__name__}")
    s = state
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = _core.layer_backward(
        _cells.cell(s.mode).code, s.x, s.h0, s.c0, s.weight_ih, s.weight_hh, s.bias_ih, s.bias_hh,
        s.weight_hr, s.lengths, s.reverse, s.reserve, _contiguous(dy), _contiguous(dh_n),
        _contiguous(dc_n), False, s.resets)
    return {"input": dx, "h0": dh0, "c0": dc0, "weight_ih": dw_ih, "weight_hh": dw_hh,
            "bias_ih": db_ih, "bias_hh": db_hh, "weight_hr": dw_hr}


def cell_forward(mode, x, h, c, weight_ih, weight_hh, bias_ih, bias_hh, *, training=True, algo: str = "auto"):
    """One step of a cell (what ``torch.nn.LSTMCell`` and the others compute): ``x (B, I)``,
    ``h (B, H)``, ``c (B, H)`` for an LSTM else None, weights as for :func:`layer_forward`.
    Returns ``(h_new, c_new or None, state)``; ``state`` (None unless ``training``) goes to
    :func:`cell_backward`. One call of :func:`layer_forward` with ``T = 1``."""
    return _step.step_forward(layer_forward, mode, x, h, c, weight_ih, weight_hh, bias_ih,
                              bias_hh, training=training, algo=algo)


def cell_backward(state, dh, dc=None):
    """Gradients of a :func:`cell_forward` step from ``dh (B, H)`` (the new state's gradient)
    and ``dc (B, H)`` (LSTM; None for zeros): a dict with ``input``, ``h``, ``c`` (None unless
    LSTM), ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` (None without bias)."""
    return _step.step_backward(layer_backward, state, dh, dc)


def workspace_bytes(mode: str, seq_len: int, batch: int, input_size: int, hidden_size: int, *,
                    proj_size: int = 0, dtype: DTypeLike = np.float32,
                    training: bool = True) -> Dict[str, int]:
    """Memory one :func:`layer_forward` / :func:`layer_backward` pair of this size allocates, in
    bytes, besides its inputs and outputs:

    - ``"reserve"``: what a training-mode forward keeps for backward (inside the returned
      ``state``; 0 when ``training=False``);
    - ``"forward_scratch"``, ``"backward_scratch"``: temporary space during each call
      (``backward_scratch`` is 0 when ``training=False``). Scratch is cached per calling thread
      and reused by the next call (up to 1 GiB; larger scratch is freed after its call), so a
      thread's resident scratch is its largest call's.
    """
    code = _cells.cell(mode).code
    itemsize = _validate.as_float_dtype(dtype).itemsize
    T, B, I, H = (_validate.positive_int(value, name) for name, value in (
        ("seq_len", seq_len), ("batch", batch), ("input_size", input_size),
        ("hidden_size", hidden_size)))
    for name, value in (("seq_len", T), ("batch", B), ("input_size", I), ("hidden_size", H)):
        if value >= 2**31:
            raise ValueError(f"{name}: expected a size < 2^31, got {value}")
    P = _validate.proj_size(proj_size, H, mode)
    training = _validate.flag(training, "training")
    fwd_train, fwd_infer, bwd = _core.workspace_sizes(code, T, B, I, H, P)
    if not training:
        return {"reserve": 0, "forward_scratch": fwd_infer * itemsize, "backward_scratch": 0}
    return {"reserve": _core.reserve_size(code, T, B, I, H, P) * itemsize,
            "forward_scratch": fwd_train * itemsize, "backward_scratch": bwd * itemsize}
