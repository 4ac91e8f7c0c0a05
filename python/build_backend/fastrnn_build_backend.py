"""fastrnn's PEP 517 build backend: scikit-build-core, plus cuBLAS when the CUDA backend is built
and jaxlib's XLA FFI headers for the JAX handlers.

The CUDA backend (CMakeLists.txt, FASTRNN_CUDA=AUTO|ON|OFF) needs cuBLAS headers and libraries at
build time. When a CUDA compiler is found and the CUDA toolkit beside it has no cuBLAS, this adds
NVIDIA's cuBLAS wheel for that CUDA major version to the build requirements, so that an isolated
`pip install .` builds the CUDA variant; machines without nvcc (or with FASTRNN_CUDA=OFF) download
nothing more.

The JAX handlers (CMakeLists.txt, FASTRNN_JAX=AUTO|ON|OFF) need XLA's FFI headers, which ship
inside jaxlib. An isolated build gets the *oldest* supported jaxlib (:data:`JAXLIB_BUILD`) as a
build requirement, where that release has a wheel for the building Python, so that the handlers
load in every supported jaxlib (XLA refuses a handler built against a newer FFI API than its own).
Everything else is scikit-build-core's.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from typing import Any, Dict, List, Optional

from scikit_build_core import build as _skbuild

__all__ = ["build_editable", "build_sdist", "build_wheel", "get_requires_for_build_editable",
           "get_requires_for_build_sdist", "get_requires_for_build_wheel",
           "prepare_metadata_for_build_editable", "prepare_metadata_for_build_wheel"]
from scikit_build_core.build import (  # noqa: F401  (the rest of the PEP 517 interface)
    build_editable, build_sdist, build_wheel, get_requires_for_build_sdist,
    prepare_metadata_for_build_editable, prepare_metadata_for_build_wheel)


def _cuda_mode(config_settings: Optional[Dict[str, Any]]) -> str:
    return _option(config_settings, "FASTRNN_CUDA")


def _nvcc() -> Optional[str]:
    """The CUDA compiler CMake's check_language(CUDA) would find first."""
    for candidate in (os.environ.get("CUDACXX"), shutil.which("nvcc"),
                      os.path.join(os.environ.get("CUDA_PATH", "/usr/local/cuda"), "bin", "nvcc")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _cublas_requirement(config_settings: Optional[Dict[str, Any]]) -> List[str]:
    if _cuda_mode(config_settings) == "OFF":
        return []
    nvcc = _nvcc()
    if nvcc is None:
        return []
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
        real = os.path.realpath(nvcc)
    except (OSError, subprocess.SubprocessError):
        return []
    match = re.search(r"release (\d+)\.", out)
    if not match:
        return []
    major = int(match.group(1))
    # A toolkit that ships cuBLAS needs nothing more. (/usr/local/bin/nvcc may be a wrapper
    # script: also look where `nvcc --version` says the toolkit is, via CUDA_PATH.)
    for root in {os.path.dirname(os.path.dirname(real)),
                 os.environ.get("CUDA_PATH", "/usr/local/cuda")}:
        if os.path.exists(os.path.join(root, "include", "cublas_v2.h")):
            return []
    return [f"nvidia-cublas>={major},<{major + 1}" if major >= 13 else f"nvidia-cublas-cu{major}"]


# The oldest jaxlib fastrnn.jax supports (jax.ffi appeared in 0.5.0): its headers build the
# handlers. It has wheels for CPython 3.10-3.13 on these platforms.
JAXLIB_BUILD = "jaxlib==0.5.0"
_JAXLIB_BUILD_PYTHONS = ((3, 10), (3, 11), (3, 12), (3, 13))
_JAXLIB_BUILD_PLATFORMS = (("Linux", "x86_64"), ("Linux", "aarch64"), ("Darwin", "arm64"),
                           ("Windows", "AMD64"))


def _option(config_settings: Optional[Dict[str, Any]], name: str) -> str:
    """A FASTRNN_* CMake option as CMake will see it: a config setting, CMAKE_ARGS, or AUTO."""
    settings = config_settings or {}
    for key in (f"cmake.define.{name}", f"skbuild.cmake.define.{name}"):
        if key in settings:
            return str(settings[key]).upper()
    match = re.search(rf"-D{name}(?::\w+)?=(\w+)", os.environ.get("CMAKE_ARGS", ""))
    return match.group(1).upper() if match else "AUTO"


def _jaxlib_requirement(config_settings: Optional[Dict[str, Any]]) -> List[str]:
    if _option(config_settings, "FASTRNN_JAX") == "OFF":
        return []
    if sys.implementation.name != "cpython" or sys.version_info[:2] not in _JAXLIB_BUILD_PYTHONS:
        return []
    if (platform.system(), platform.machine()) not in _JAXLIB_BUILD_PLATFORMS:
        return []
    return [JAXLIB_BUILD]


def get_requires_for_build_wheel(config_settings=None):
    return _skbuild.get_requires_for_build_wheel(config_settings) + \
        _cublas_requirement(config_settings) + _jaxlib_requirement(config_settings)


def get_requires_for_build_editable(config_settings=None):
    return _skbuild.get_requires_for_build_editable(config_settings) + \
        _cublas_requirement(config_settings) + _jaxlib_requirement(config_settings)
