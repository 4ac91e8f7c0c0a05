#include "cuda/gemm.cuh"

#include <map>
#include <mutex>
#include <utility>
#include <vector>

namespace fastrnn::cuda {
namespace {

// Where a handle belongs: one device, one stream, for the handle's whole life.
using HandleKey = std::pair<int, cudaStream_t>;

// Free handles per (device, stream), shared by all threads.
std::mutex g_pool_mutex;
std::map<HandleKey, std::vector<cublasHandle_t>> g_free_handles;

// The handles one thread holds, one per (device, stream) it used; back to the pool at thread
// exit (still bound to their stream: only a thread on the same stream takes them again).
struct ThreadHandles {
  std::vector<std::pair<HandleKey, cublasHandle_t>> held;
  ~ThreadHandles() {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    for (const auto& [key, handle] : held) g_free_handles[key].push_back(handle);
  }
};

cublasHandle_t take_or_create(const HandleKey& key) {
  {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    auto free = g_free_handles.find(key);
    if (free != g_free_handles.end() && !free->second.empty()) {
      const cublasHandle_t handle = free->second.back();
      free->second.pop_back();
      return handle;
    }
  }
  cublasHandle_t handle = nullptr;
  FASTRNN_CUBLAS_CHECK(cublasCreate(&handle));  // on the current device (the caller's guard)
  // Default math: float32 stays float32 unless a call asks for TF32 (compute type below).
  FASTRNN_CUBLAS_CHECK(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH));
  // Bound once, for good; this also selects the handle's own default workspace.
  FASTRNN_CUBLAS_CHECK(cublasSetStream(handle, key.second));
  return handle;
}

}  // namespace

cublasHandle_t cublas_handle(int device, cudaStream_t stream) {
  thread_local ThreadHandles mine;
  const HandleKey key{device, stream};
  for (const auto& [held_key, handle] : mine.held)
    if (held_key == key) return handle;  // a few entries: one per stream this thread used
  const cublasHandle_t handle = take_or_create(key);
  mine.held.emplace_back(key, handle);
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
