// fastrnn._core's XLA FFI handlers (jax_ffi.cpp): compiled in when CMake finds XLA's FFI headers
// (FASTRNN_JAX_FFI defined); fastrnn.jax registers them with JAX.
#pragma once

#include <pybind11/pybind11.h>

namespace fastrnn::bindings {

namespace py = pybind11;

// Adds jax_ffi_targets() ({name: capsule}) and JAX_FFI_API_VERSION to the module.
void add_jax_ffi(py::module_& m);

}  // namespace fastrnn::bindings
