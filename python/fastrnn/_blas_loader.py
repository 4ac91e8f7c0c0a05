"""Load the BLAS shared library (from the scipy-openblas32 wheel) before the extension.

The extension's RPATH already points at ``../scipy_openblas32/lib``; loading it here by absolute
path as well keeps ``import fastrnn`` working from layouts where that relative path does not hold
(editable installs, other site-packages arrangements): the dynamic loader then finds the library
already loaded by its soname.

This copy of OpenBLAS is fastrnn's own (its symbols are prefixed): it runs fastrnn's GEMMs and
nothing else. Two variables that OpenBLAS reads once, when it loads, are meant for the other
OpenBLAS copies of the process (NumPy's, SciPy's) and would only hold fastrnn back, so they are
set for the duration of this load and then restored:

- ``OPENBLAS_CORETYPE`` forces a kernel family, e.g. ``Haswell`` (AVX2) on an AVX-512 CPU, at
  about half the speed; fastrnn's copy picks the best kernel for the CPU itself unless
  ``FASTRNN_OPENBLAS_CORETYPE`` names one.
- ``OPENBLAS_THREAD_TIMEOUT``: OpenBLAS's own worker threads never get work (fastrnn runs the
  library's parallel jobs on its own pool), so they go to sleep at once instead of spinning for
  ~0.1 s after start-up.
"""
import contextlib
import ctypes
import os


@contextlib.contextmanager
def _environment(**values):
    """Set (str) or unset (None) environment variables for the block, then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# Importing scipy_openblas32 loads the library (unless the process already has).
with _environment(OPENBLAS_CORETYPE=os.environ.get("FASTRNN_OPENBLAS_CORETYPE") or None,
                  OPENBLAS_THREAD_TIMEOUT="4"):
    import scipy_openblas32 as _openblas

    _path = os.path.join(_openblas.get_lib_dir(), f"lib{_openblas.get_library()}.so")
    if os.path.exists(_path):
        ctypes.CDLL(_path, mode=ctypes.RTLD_GLOBAL)
