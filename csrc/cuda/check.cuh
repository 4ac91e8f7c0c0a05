// Every CUDA and cuBLAS return code is checked; a failure throws fastrnn::cuda::Error naming the
// call, the error and where it happened. Kernel launches are checked with cudaGetLastError.
#pragma once

#include "cuda/platform.cuh"

#include <sstream>
#include <string>

#include "fastrnn/fastrnn_cuda.h"

namespace fastrnn::cuda {

[[noreturn]] inline void throw_cuda(cudaError_t err, const char* call, const char* file, int line) {
  std::ostringstream msg;
  msg << "fastrnn CUDA: " << call << " failed: " << cudaGetErrorName(err) << " ("
      << cudaGetErrorString(err) << ") at " << file << ":" << line;
  throw Error(msg.str());
}

[[noreturn]] inline void throw_cublas(cublasStatus_t status, const char* call, const char* file,
                                      int line) {
  std::ostringstream msg;
  msg << "fastrnn CUDA: " << call << " failed: " << cublasGetStatusName(status) << " ("
      << cublasGetStatusString(status) << ") at " << file << ":" << line;
  throw Error(msg.str());
}

}  // namespace fastrnn::cuda

#define FASTRNN_CUDA_CHECK(call)                                                   \
  do {                                                                             \
    const cudaError_t fastrnn_err_ = (call);                                       \
    if (fastrnn_err_ != cudaSuccess)                                               \
      ::fastrnn::cuda::throw_cuda(fastrnn_err_, #call, __FILE__, __LINE__);        \
  } while (0)

#define FASTRNN_CUBLAS_CHECK(call)                                                 \
  do {                                                                             \
    const cublasStatus_t fastrnn_status_ = (call);                                 \
    if (fastrnn_status_ != CUBLAS_STATUS_SUCCESS)                                  \
      ::fastrnn::cuda::throw_cublas(fastrnn_status_, #call, __FILE__, __LINE__);   \
  } while (0)

// After every kernel launch: a launch error (bad configuration, too much shared memory) is
// reported here; errors while the kernel runs surface at the next synchronising call.
#define FASTRNN_CHECK_LAUNCH(kernel_name)                                          \
  do {                                                                             \
    const cudaError_t fastrnn_err_ = cudaGetLastError();                           \
    if (fastrnn_err_ != cudaSuccess)                                               \
      ::fastrnn::cuda::throw_cuda(fastrnn_err_, "launch of " kernel_name, __FILE__, \
                                  __LINE__);                                       \
  } while (0)
