// fastrnn._cuda's XLA FFI handlers (jax_ffi_cuda.cpp): the CUDA backend's layer forward and
// backward as the CUDA platform's targets of fastrnn.jax, with the very arguments, attributes and
// results of the CPU core's (jax_ffi.cpp). Compiled in when the CUDA backend is built and CMake
// finds XLA's FFI headers (FASTRNN_JAX_FFI defined on _cuda).
//
// The two device helpers they need are CUDA code (jax_ffi_cuda_kernels.cu, built by nvcc into
// fastrnn_cuda); the handlers themselves, like the rest of the binding, build with the host
// compiler and no CUDA header (streams travel as void*, a cudaStream_t).
#pragma once

#include <cstdint>

#ifndef __CUDACC__
#include <pybind11/pybind11.h>
#endif

namespace fastrnn::bindings {

#ifndef __CUDACC__
// Adds jax_ffi_targets() ({name: capsule}) and JAX_FFI_API_VERSION to the module.
void add_jax_ffi_cuda(pybind11::module_& m);
#endif

namespace jax_cuda {

// The device `stream` belongs to (cudaStreamGetDevice; the current device if that fails).
int stream_device(void* stream);
// dst[i] = src[i] for i < n, queued on `stream` of `device`: int32 lengths widened to the int64
// the backend takes. Throws fastrnn::cuda::Error when the launch fails.
void widen_lengths(int device, const int32_t* src, int64_t* dst, int64_t n, void* stream);

}  // namespace jax_cuda

}  // namespace fastrnn::bindings
