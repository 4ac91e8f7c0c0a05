"""Load the BLAS shared library (from the scipy-openblas32 wheel) before the extension.

The extension's RPATH already points at ``../scipy_openblas32/lib``; loading it here by absolute
path as well keeps ``import fastrnn`` working from layouts where that relative path does not hold
(editable installs, other site-packages arrangements): the dynamic loader then finds the library
already loaded by its soname.
"""
import ctypes
import os

import scipy_openblas32 as _openblas

_path = os.path.join(_openblas.get_lib_dir(), f"lib{_openblas.get_library()}.so")
if os.path.exists(_path):
    ctypes.CDLL(_path, mode=ctypes.RTLD_GLOBAL)
