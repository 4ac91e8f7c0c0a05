// The GEMMs of the CUDA backend, all through cuBLAS, in row-major terms (the layouts of
// fastrnn.h). Operands in the layer's dtype, products accumulated in float32; C in float32 (the
// pre-activations and the carried gradients) or in the dtype (the gradients returned).
// Tensor cores serve the half types; float32 uses TF32 tensor cores only when the caller allows
// it (Problem::allow_tf32, torch's allow_tf32), otherwise true float32 arithmetic.
#pragma once

#include "cuda/platform.cuh"

#include <cstdint>

#include "cuda/check.cuh"

namespace fastrnn::cuda {

template <typename scalar_t> constexpr cudaDataType_t data_type();
template <> constexpr cudaDataType_t data_type<float>() { return CUDA_R_32F; }
template <> constexpr cudaDataType_t data_type<__half>() { return CUDA_R_16F; }
template <> constexpr cudaDataType_t data_type<__nv_bfloat16>() { return CUDA_R_16BF; }

// A cuBLAS handle for the calling thread's GEMMs on `stream` of `device`. A handle serves one
// (device, stream) for its whole life: cuBLAS keeps its workspace per handle (cublasSetStream
// resets a handle to its own default workspace pool), so a handle moved from stream to stream
// would let a GEMM queued on one stream share the workspace with a GEMM still running on another.
// With one handle per stream, GEMMs on two streams never share a workspace (PyTorch keys its
// cuBLAS workspaces the same way, by handle and stream). Handles are per thread (a handle is not
// safe to use from two threads at once) and pooled per (device, stream): a thread returns its
// handles when it exits, and a later thread on the same stream takes one. They are never
// destroyed, because at process exit the CUDA context may already be gone; a process that cycles
// through many streams keeps one handle per stream address it has used.
cublasHandle_t cublas_handle(int device, cudaStream_t stream);

// One operand: a row-major matrix at `ptr` with leading dimension `ld`, used as stored
// (trans = false) or transposed.
struct Operand {
  const void* ptr;
  cudaDataType_t type;
  int64_t ld;
  bool trans;
};

// Row-major C (M x N) = op(A) (M x K) * op(B) (K x N) + beta * C.
void gemm(cublasHandle_t handle, int64_t M, int64_t N, int64_t K, Operand a, Operand b,
          float beta, void* c, cudaDataType_t c_type, int64_t ldc, bool allow_tf32);

}  // namespace fastrnn::cuda
