"""fastrnn: fused recurrent-network kernels (vanilla RNN, LSTM, GRU), forward and backward
through time, with PyTorch's conventions and a NumPy reference to check them against.

    import numpy as np, fastrnn
    lstm = fastrnn.LSTM(input_size=32, hidden_size=64, num_layers=2, bidirectional=True, seed=0)
    y, (h_n, c_n) = lstm(np.random.randn(10, 4, 32).astype(np.float32))
    grads = lstm.backward(np.ones_like(y))
"""
import os as _os
import warnings as _warnings
from importlib import metadata as _metadata
from typing import Any as _Any
from typing import Dict as _Dict

import numpy as _np

from . import _blas_loader  # noqa: F401  (makes the BLAS library visible before _core loads)
from . import _core
from . import cuda, functional, reference
from .errors import DtypeError, LengthsError
from .functional import workspace_bytes
from .modules import GRU, LSTM, RNN

if _os.environ.get("FASTRNN_ISA", "") not in ("", "baseline", "avx2", "avx512"):
    _warnings.warn(f"FASTRNN_ISA={_os.environ['FASTRNN_ISA']!r} is not one of baseline, avx2, "
                   f"avx512; ignored (running {_core.active_isa()})", RuntimeWarning)

if _os.environ.get("FASTRNN_DETERMINISTIC", "") == "1":
    _core.set_deterministic(True)
elif _os.environ.get("FASTRNN_DETERMINISTIC", "") not in ("", "0"):
    _warnings.warn(f"FASTRNN_DETERMINISTIC={_os.environ['FASTRNN_DETERMINISTIC']!r} is not 0 or "
                   f"1; ignored (deterministic mode stays off)", RuntimeWarning)

try:
    __version__ = _metadata.version("fastrnn")
except _metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = ["RNN", "LSTM", "GRU", "functional", "reference", "cuda", "cuda_available",
           "build_info", "set_num_threads",
           "get_num_threads", "set_deterministic", "get_deterministic", "workspace_bytes",
           "DtypeError", "LengthsError", "__version__"]


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for fastrnn's CPU work from now on, in this process.

    One count covers the recurrence kernels' thread teams and the jobs of fastrnn's BLAS library
    (OpenBLAS from ``scipy-openblas32``, separate from NumPy's); both run on one pool. The default
    is ``OMP_NUM_THREADS``, else the number of CPUs this process may run on.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n: expected an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n: expected a thread count >= 1, got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads fastrnn's CPU work uses (see :func:`set_num_threads`)."""
    return int(_core.get_num_threads())


def set_deterministic(enabled: bool) -> None:
    """Make results bitwise identical for any thread count (process-wide; off by default).

    For a fixed thread count fastrnn's results are always bitwise reproducible, and its own
    kernels give the same bits for any thread count (threads split hidden units, never a sum).
    The BLAS library's products (the input projection below batch 8, the input and weight
    gradients, batch-1 steps on GEMV) may round differently with another thread count. With
    ``enabled=True`` every such product is computed as a fixed grid of blocks, each by the BLAS
    library on one thread, so the thread count only decides who computes which block; the
    large GEMMs may run somewhat slower. ``FASTRNN_DETERMINISTIC=1`` turns it on at import.
    """
    if not isinstance(enabled, (bool, _np.bool_)):
        raise TypeError(f"enabled: expected a bool, got {type(enabled).__name__}")
    _core.set_deterministic(bool(enabled))


def get_deterministic() -> bool:
    """Whether :func:`set_deterministic` mode is on."""
    return bool(_core.get_deterministic())


def cuda_available() -> bool:
    """Whether fastrnn can run on a GPU here: this build has the CUDA backend, it loads (cuBLAS
    found), and a CUDA device is visible. ``fastrnn.cuda.unavailable_reason()`` says why not."""
    return cuda.is_available()


def build_info() -> _Dict[str, _Any]:
    """What this build contains: version, compiler, BLAS, SIMD paths compiled in, backends.

    ``simd`` lists the instruction sets the pointwise kernels are compiled for; ``simd_active``
    is the one this CPU runs (the environment variable ``FASTRNN_ISA`` can lower it).
    ``thread_pool`` says whose threads run fastrnn's parallel work (its kernels' teams and the
    BLAS library's jobs): fastrnn's own, or (after ``import fastrnn.torch``) torch's OpenMP pool.
    ``cuda`` says whether the CUDA backend is built in (``cuda_available()`` whether it can run
    here); when it is, the ``cuda_*`` keys say what it was built for and what it finds.
    ``jax_ffi`` names the jaxlib whose XLA FFI headers built fastrnn.jax's handlers (they load in
    that jaxlib and later ones), or None where the build has none.
    """
    return {
        "version": __version__,
        "compiler": _core.compiler(),
        "blas": _core.blas_name(),
        "blas_config": _core.blas_config(),
        "simd": list(_core.compiled_isas()),
        "simd_active": _core.active_isa(),
        "num_threads": get_num_threads(),
        "thread_pool": _core.thread_pool(),
        "deterministic": get_deterministic(),
        "jax_ffi": getattr(_core, "JAX_FFI_BUILT_WITH_JAXLIB", None),
        **cuda.build_details(),
    }
