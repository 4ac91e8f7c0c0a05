"""Type stub of ``fastrnn._core``, the pybind11 extension (csrc/bindings/module.cpp; its argument
checks are csrc/bindings/args.cpp).

Keep it in step with the ``m.def`` calls there: tests/test_typing.py checks that both declare
the same names, compares each function with the signature line pybind11 writes into its
docstring (parameter names, order, defaults, scalar types), and runs ``mypy.stubtest``.

Conventions:

- Array arguments are typed as what the core accepts, not as the ``object`` the binding declares:
  the binding takes any object so that it can reject non-arrays itself with a message naming the
  argument. Every float array of one call must have the dtype of ``x``, float32 or float64;
  ``_FloatT`` ties the outputs to that dtype. Its bound is ``np.floating`` rather than exactly
  {float32, float64} so that code holding ``NDArray[np.floating[Any]]`` can call in; another
  width (float16) type-checks but raises ``fastrnn.DtypeError`` at run time.
- Integer arguments are ``SupportsIndex``: pybind11 converts any object with ``__index__``
  (``numpy.int64`` included) and rejects floats.
- ``reverse`` and ``training`` are bound with ``noconvert()``: a bool (pybind11 also lets
  ``numpy.bool_`` through), never an int.
- ``cell`` is the code of ``fastrnn.functional.MODES``: 0 rnn_tanh, 1 rnn_relu, 2 lstm, 3 gru
  (``CELL_CODES``).
"""
from typing import Any, Literal, SupportsIndex, TypeVar, overload

import numpy as np
from numpy.typing import NDArray

# The same classes as fastrnn.errors (the module re-exports them, it does not define its own).
from fastrnn.errors import DtypeError as DtypeError
from fastrnn.errors import LengthsError as LengthsError

_FloatT = TypeVar("_FloatT", bound=np.floating[Any])

# ---- the cells ----------------------------------------------------------------------------------

# ``{name: code}`` for every cell the core has, from its C++ list of cells (csrc/fastrnn/cell.h):
# ``{"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3}``. fastrnn._cells holds the same list on
# the Python side; tests/cpu/test_cell_codes.py checks that the two agree.
CELL_CODES: dict[str, int]

# ---- one recurrent layer, one direction ---------------------------------------------------------

def layer_forward(
    cell: SupportsIndex,
    x: NDArray[_FloatT],
    h0: NDArray[_FloatT],
    c0: NDArray[_FloatT] | None,
    weight_ih: NDArray[_FloatT],
    weight_hh: NDArray[_FloatT],
    bias_ih: NDArray[_FloatT] | None,
    bias_hh: NDArray[_FloatT] | None,
    weight_hr: NDArray[_FloatT] | None,
    lengths: NDArray[np.int64] | None,
    reverse: bool,
    training: bool,
    resets: NDArray[np.bool_] | None = None,
) -> tuple[NDArray[_FloatT], NDArray[_FloatT], NDArray[_FloatT] | None, NDArray[_FloatT] | None]:
    """``(y (T, B, R), h_n (B, R), c_n (B, H) or None, reserve or None)``.

    ``c_n`` is None unless the cell is an LSTM; ``reserve`` (1-D, ``reserve_size`` elements) is
    None unless ``training``.
    """

@overload
def layer_backward(
    cell: SupportsIndex,
    x: NDArray[_FloatT],
    h0: NDArray[_FloatT],
    c0: NDArray[_FloatT] | None,
    weight_ih: NDArray[_FloatT],
    weight_hh: NDArray[_FloatT],
    bias_ih: NDArray[_FloatT] | None,
    bias_hh: NDArray[_FloatT] | None,
    weight_hr: NDArray[_FloatT] | None,
    lengths: NDArray[np.int64] | None,
    reverse: bool,
    reserve: NDArray[_FloatT],
    dy: NDArray[_FloatT],
    dh_n: NDArray[_FloatT] | None,
    dc_n: NDArray[_FloatT] | None,
    gate_grads: Literal[False] = False,
    resets: NDArray[np.bool_] | None = None,
) -> tuple[
    NDArray[_FloatT],  # dx
    NDArray[_FloatT],  # dh0
    NDArray[_FloatT] | None,  # dc0: LSTM only
    NDArray[_FloatT],  # dweight_ih
    NDArray[_FloatT],  # dweight_hh
    NDArray[_FloatT] | None,  # dbias_ih: with bias only
    NDArray[_FloatT] | None,  # dbias_hh: with bias only
    NDArray[_FloatT] | None,  # dweight_hr: with a projection only
]: ...
@overload
def layer_backward(
    cell: SupportsIndex,
    x: NDArray[_FloatT],
    h0: NDArray[_FloatT],
    c0: NDArray[_FloatT] | None,
    weight_ih: NDArray[_FloatT],
    weight_hh: NDArray[_FloatT],
    bias_ih: NDArray[_FloatT] | None,
    bias_hh: NDArray[_FloatT] | None,
    weight_hr: NDArray[_FloatT] | None,
    lengths: NDArray[np.int64] | None,
    reverse: bool,
    reserve: NDArray[_FloatT],
    dy: NDArray[_FloatT],
    dh_n: NDArray[_FloatT] | None,
    dc_n: NDArray[_FloatT] | None,
    gate_grads: Literal[True],
    resets: NDArray[np.bool_] | None = None,
) -> tuple[
    NDArray[_FloatT],  # dx
    NDArray[_FloatT],  # dh0
    NDArray[_FloatT] | None,  # dc0: LSTM only
    NDArray[_FloatT],  # dgates (T, B, G*H): pre-activation gradients
    NDArray[_FloatT] | None,  # dgates_h (T, B, H): GRU's n gate, recurrent side
    NDArray[_FloatT] | None,  # dh_proj (T, B, R): with a projection only
]: ...
@overload
def layer_backward(
    cell: SupportsIndex,
    x: NDArray[_FloatT],
    h0: NDArray[_FloatT],
    c0: NDArray[_FloatT] | None,
    weight_ih: NDArray[_FloatT],
    weight_hh: NDArray[_FloatT],
    bias_ih: NDArray[_FloatT] | None,
    bias_hh: NDArray[_FloatT] | None,
    weight_hr: NDArray[_FloatT] | None,
    lengths: NDArray[np.int64] | None,
    reverse: bool,
    reserve: NDArray[_FloatT],
    dy: NDArray[_FloatT],
    dh_n: NDArray[_FloatT] | None,
    dc_n: NDArray[_FloatT] | None,
    gate_grads: bool = False,
    resets: NDArray[np.bool_] | None = None,
) -> tuple[NDArray[_FloatT] | None, ...]:
    """Backward through time of one ``layer_forward(..., training=True)`` call, given its
    ``reserve`` and the gradients of its outputs (``dh_n``/``dc_n`` None: zeros). With
    ``gate_grads=True``, what the weight gradients are made of instead of them (BackwardArgs::
    dgates in fastrnn.h): a caller with several problems folded into one batch forms each
    problem's weight gradients from its own rows."""

# ---- sizes (in elements) of one call's buffers --------------------------------------------------

def reserve_size(
    cell: SupportsIndex,
    T: SupportsIndex,
    B: SupportsIndex,
    I: SupportsIndex,
    H: SupportsIndex,
    P: SupportsIndex = 0,
) -> int:
    """Elements a training forward saves for backward."""

def workspace_sizes(
    cell: SupportsIndex,
    T: SupportsIndex,
    B: SupportsIndex,
    I: SupportsIndex,
    H: SupportsIndex,
    P: SupportsIndex = 0,
) -> tuple[int, int, int]:
    """Scratch of one call: ``(training forward, inference forward, backward)``."""

def reserve_widths(cell: SupportsIndex, H: SupportsIndex, P: SupportsIndex = 0) -> tuple[int, int]:
    """``(per_slot, per_step)``: ``reserve_size == (T+1)*B*per_slot + T*B*per_step``."""

# ---- threads ------------------------------------------------------------------------------------

def set_num_threads(n: SupportsIndex) -> None: ...
def get_num_threads() -> int: ...
def run_threads_on_openmp(library_path: str) -> None:
    """Run parallel work on the already-loaded OpenMP runtime at ``library_path``, or on
    fastrnn's own threads (``""``)."""

def thread_pool() -> str:
    """Whose threads run fastrnn's parallel work (fastrnn's own or an OpenMP runtime's)."""

# ---- determinism --------------------------------------------------------------------------------

def set_deterministic(enabled: bool) -> None:
    """Process-wide: results bitwise identical for any thread count (BLAS products computed in a
    fixed grid of blocks). Off by default."""

def get_deterministic() -> bool:
    """Whether deterministic mode is on."""

# ---- what this build is -------------------------------------------------------------------------

def blas_name() -> str: ...
def blas_config() -> str: ...
def compiler() -> str: ...
def active_isa() -> str:
    """Instruction set the pointwise kernels use on this CPU (``FASTRNN_ISA`` can lower it)."""

def compiled_isas() -> list[str]:
    """Instruction sets compiled into this build, e.g. ``["baseline", "avx2", "avx512"]``."""

# ---- measurements and accuracy probes (bench and tests) -----------------------------------------

def measure_gemm_gflops(dtype: str, n: SupportsIndex, reps: SupportsIndex) -> float:
    """Best GFLOP/s of an n x n x n GEMM through fastrnn's BLAS; ``dtype`` is ``"float32"`` or
    ``"float64"``."""

def measure_read_gbs(nbytes: SupportsIndex, reps: SupportsIndex) -> float:
    """Best GB/s of fastrnn's threads re-reading a buffer of ``nbytes``."""

def activation(kind: str, x: NDArray[_FloatT]) -> NDArray[_FloatT]:
    """The kernels' vectorised ``"sigmoid"`` or ``"tanh"`` of a float32/float64 array."""

# ---- XLA FFI handlers for fastrnn.jax (csrc/bindings/jax_ffi.cpp) ------------------------------
# Present only in a build made with jaxlib's headers (CMakeLists.txt, FASTRNN_JAX).

# (major, minor) of the XLA FFI API the handlers were compiled against.
JAX_FFI_API_VERSION: tuple[int, int]
# The jaxlib whose headers built them: they load in it and in later releases.
JAX_FFI_BUILT_WITH_JAXLIB: str

def jax_ffi_targets() -> dict[str, Any]:
    """{name: PyCapsule} of the XLA FFI handlers (CPU) for jax.ffi.register_ffi_target."""
