#include "cuda/gemm.cuh"

#include <mutex>
#include <vector>

namespace fastrnn::cuda {
namespace {

// Free handles per device, shared by all threads.
std::mutex g_pool_mutex;
std::vector<std::vector<cublasHandle_t>> g_free_handles;

// The handles one thread holds, one per device it used; back to the pool at thread exit.
struct ThreadHandles {
  std::vector<cublasHandle_t> by_device;
  ~ThreadHandles() {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    for (size_t d = 0; d < by_device.size(); ++d) {
      if (!by_device[d]) continue;
      if (g_free_handles.size() <= d) g_free_handles.resize(d + 1);
      g_free_handles[d].push_back(by_device[d]);
    }
  }
};

}  // namespace

cublasHandle_t cublas_handle(int device, cudaStream_t stream) {
  thread_local ThreadHandles mine;
  if (mine.by_device.size() <= static_cast<size_t>(device)) mine.by_device.resize(device + 1);
  cublasHandle_t& handle = mine.by_device[device];
  if (!handle) {
    {
      std::lock_guard<std::mutex> lock(g_pool_mutex);
      if (g_free_handles.size() > static_cast<size_t>(device) && !g_free_handles[device].empty()) {
        handle = g_free_handles[device].back();
        g_free_handles[device].pop_back();
      }
    }
    if (!handle) {
      FASTRNN_CUBLAS_CHECK(cublasCreate(&handle));  // on the current device (the caller's guard)
      // Default math: float32 stays float32 unless a call asks for TF32 (compute type below).
      FASTRNN_CUBLAS_CHECK(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH));
    }
  }
  FASTRNN_CUBLAS_CHECK(cublasSetStream(handle, stream));
  return handle;
}

void gemm(cublasHandle_t handle, int64_t M, int64_t N, int64_t K, Operand a, Operand b,
          float beta, void* c, cudaDataType_t c_type, int64_t ldc, bool allow_tf32) {
  if (M == 0 || N == 0) return;
  const float alpha = 1.0f;
  const bool fp32_operands = a.type == CUDA_R_32F && b.type == CUDA_R_32F;
  const cublasComputeType_t compute =
      fp32_operands && allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  // Row-major C = A B is column-major C^T = B^T A^T: swap the operands, keep each one's
  // transposition flag (a row-major matrix read column-major is its own transpose).
  FASTRNN_CUBLAS_CHECK(cublasGemmEx_64(
      handle, b.trans ? CUBLAS_OP_T : CUBLAS_OP_N, a.trans ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K,
      &alpha, b.ptr, b.type, b.ld, a.ptr, a.type, a.ld, &beta, c, c_type, ldc, compute,
      CUBLAS_GEMM_DEFAULT));
}

}  // namespace fastrnn::cuda
