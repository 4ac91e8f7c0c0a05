// Host emulation of the parts of CUDA, cuBLAS and cooperative groups that fastrnn's CUDA backend
// uses, so that the same kernels and driver (csrc/cuda) compile with a host compiler and run on
// CPU threads: see cuda/platform.cuh. Test use only (tests/cuda/test_cuda_emulated.py).
//
// Execution model: a kernel launch runs its blocks one after another; within a block every CUDA
// thread is a std::thread, so __syncthreads and warp shuffles are real barriers among them.
// A cooperative launch runs all blocks at once, and grid.sync() is a barrier across all of them.
// "Device memory" is host memory; streams are ignored (everything runs in order, synchronously),
// except that the emulated cuBLAS keeps each handle's stream and workspace as cuBLAS does and
// records them per GEMM (gemm_log.h), so tests can check which workspace a stream's GEMMs use.
// One emulated device with a few multiprocessors (so that the persistent kernel spreads its
// units over several blocks even at small sizes) and an H100's shared-memory limits.
#pragma once

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda/emulation/gemm_log.h"

// ---- qualifiers ---------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static  // static shared arrays: blocks of one launch run one after another

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct fastrnn_emu_uint3 {
  unsigned x = 0, y = 0, z = 0;
};
extern thread_local fastrnn_emu_uint3 threadIdx, blockIdx;
extern thread_local dim3 blockDim, gridDim;

// ---- half types: IEEE binary16 and bfloat16, round to nearest even ------------------------------
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __half2float(__half h) {
  const uint32_t sign = (h.bits & 0x8000u) << 16, exp = (h.bits >> 10) & 0x1F, man = h.bits & 0x3FF;
  uint32_t f;
  if (exp == 0x1F) {
    f = sign | 0x7F800000u | (man << 13);  // Inf, NaN
  } else if (exp == 0) {
    if (man == 0) {
      f = sign;
    } else {  // subnormal: normalise
      int e = -1;
      uint32_t m = man;
      do {
        ++e;
        m <<= 1;
      } while ((m & 0x400) == 0);
      f = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((m & 0x3FF) << 13);
    }
  } else {
    f = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float out;
  std::memcpy(&out, &f, 4);
  return out;
}

inline __half __float2half_rn(float x) {
  uint32_t f;
  std::memcpy(&f, &x, 4);
  const uint16_t sign = static_cast<uint16_t>((f >> 16) & 0x8000u);
  const uint32_t abs = f & 0x7FFFFFFFu;
  if (abs > 0x7F800000u) return {static_cast<uint16_t>(sign | 0x7E00u)};  // NaN
  if (abs >= 0x477FF000u) return {static_cast<uint16_t>(sign | 0x7C00u)};  // rounds to Inf
  if (abs < 0x38800000u) {  // half subnormal or zero: scale into the 10-bit field, round
    const float scaled = std::fabs(x) * 16777216.0f;  // 2^24: units of the smallest subnormal
    const uint32_t m = static_cast<uint32_t>(std::nearbyint(scaled));  // ties to even (default)
    return {static_cast<uint16_t>(sign | m)};
  }
  const uint32_t exp = ((abs >> 23) - 127 + 15), man = abs & 0x7FFFFFu;
  uint32_t h = (exp << 10) | (man >> 13);
  const uint32_t rest = man & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // may carry into the exponent
  return {static_cast<uint16_t>(sign | h)};
}

inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t f = static_cast<uint32_t>(b.bits) << 16;
  float out;
  std::memcpy(&out, &f, 4);
  return out;
}

inline __nv_bfloat16 __float2bfloat16_rn(float x) {
  uint32_t f;
  std::memcpy(&f, &x, 4);
  if ((f & 0x7FFFFFFFu) > 0x7F800000u) return {static_cast<uint16_t>((f >> 16) | 0x40u)};  // NaN
  const uint32_t rounding = 0x7FFFu + ((f >> 16) & 1u);
  return {static_cast<uint16_t>((f + rounding) >> 16)};
}

template <typename scalar_t>
inline scalar_t __ldcg(const scalar_t* p) {
  return *p;
}

// ---- the CUDA runtime ---------------------------------------------------------------------------
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidDevice = 101,
  cudaErrorCooperativeLaunchTooLarge = 720,
};
using cudaStream_t = void*;
enum cudaMemcpyKind : int {
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToDevice = 3,
};
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr : int {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMemoryClockRate = 36,
  cudaDevAttrGlobalMemoryBusWidth = 37,
};
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  int multiProcessorCount;
  int major, minor;
  int l2CacheSize;
  size_t sharedMemPerBlockOptin;
  size_t sharedMemPerMultiprocessor;
  int cooperativeLaunch;
};

namespace fastrnn::emu {
constexpr int kMultiprocessors = 4;
constexpr size_t kSharedPerBlockOptin = 227 * 1024;
}  // namespace fastrnn::emu

inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorCooperativeLaunchTooLarge: return "cudaErrorCooperativeLaunchTooLarge";
  }
  return "cudaErrorUnknown";
}
inline const char* cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
inline cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d != 0) return cudaErrorInvalidDevice;
  std::memset(p, 0, sizeof(*p));
  std::strcpy(p->name, "fastrnn host emulation");
  p->totalGlobalMem = size_t(1) << 32;
  p->multiProcessorCount = fastrnn::emu::kMultiprocessors;
  p->major = 9;
  p->l2CacheSize = 50 << 20;
  p->sharedMemPerBlockOptin = fastrnn::emu::kSharedPerBlockOptin;
  p->sharedMemPerMultiprocessor = 228 * 1024;
  p->cooperativeLaunch = 1;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int /*device*/) {
  *v = a == cudaDevAttrMultiProcessorCount ? fastrnn::emu::kMultiprocessors : 1;
  return cudaSuccess;
}
inline cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDriverGetVersion(int* v) {
  *v = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaMalloc(void** p, size_t n) {
  *p = std::malloc(n);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* p, int v, size_t n) {
  std::memset(p, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) {
  std::memmove(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind k,
                                   cudaStream_t = nullptr) {
  return cudaMemcpy(d, s, n, k);
}
template <typename F>
cudaError_t cudaFuncSetAttribute(F*, cudaFuncAttribute, int value) {
  return value <= static_cast<int>(fastrnn::emu::kSharedPerBlockOptin) ? cudaSuccess
                                                                         : cudaErrorInvalidValue;
}
template <typename F>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, F*, int, size_t smem) {
  *n = smem <= fastrnn::emu::kSharedPerBlockOptin ? 1 : 0;
  return cudaSuccess;
}

// ---- cuBLAS: the one GEMM fastrnn calls, column-major, computed in float --------------------------
enum cublasStatus_t : int { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7 };
enum cublasOperation_t : int { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasMath_t : int { CUBLAS_DEFAULT_MATH = 0 };
enum cudaDataType_t : int { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14 };
enum cublasComputeType_t : int { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_FAST_TF32 = 77 };
enum cublasGemmAlgo_t : int { CUBLAS_GEMM_DEFAULT = -1 };
enum libraryPropertyType : int { MAJOR_VERSION = 0, MINOR_VERSION = 1, PATCH_LEVEL = 2 };
// A handle: its stream and the workspace its GEMMs use. cublasSetStream resets the workspace to
// the handle's own default pool (as cuBLAS documents); cublasSetWorkspace sets a caller's buffer.
struct fastrnn_emu_cublas_context {
  cudaStream_t stream = nullptr;
  unsigned char default_workspace[16];  // stands for cuBLAS's default workspace pool
  const void* workspace = default_workspace;
};
using cublasHandle_t = fastrnn_emu_cublas_context*;

inline const char* cublasGetStatusName(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_INVALID_VALUE";
}
inline const char* cublasGetStatusString(cublasStatus_t s) { return cublasGetStatusName(s); }
inline cublasStatus_t cublasCreate(cublasHandle_t* h) {
  *h = new fastrnn_emu_cublas_context;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t stream) {
  h->stream = stream;
  h->workspace = h->default_workspace;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void* workspace, size_t bytes) {
  h->workspace = workspace != nullptr && bytes > 0 ? workspace : h->default_workspace;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) {
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasGetProperty(libraryPropertyType, int* v) {
  *v = 0;
  return CUBLAS_STATUS_SUCCESS;
}

namespace fastrnn::emu {
inline float load_element(const void* p, cudaDataType_t t, int64_t i) {
  switch (t) {
    case CUDA_R_32F: return static_cast<const float*>(p)[i];
    case CUDA_R_16F: return __half2float(static_cast<const __half*>(p)[i]);
    case CUDA_R_16BF: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  }
  std::abort();
}
inline void store_element(void* p, cudaDataType_t t, int64_t i, float v) {
  switch (t) {
    case CUDA_R_32F: static_cast<float*>(p)[i] = v; return;
    case CUDA_R_16F: static_cast<__half*>(p)[i] = __float2half_rn(v); return;
    case CUDA_R_16BF: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); return;
  }
  std::abort();
}
}  // namespace fastrnn::emu

// C (m x n, column-major) = alpha op(A) op(B) + beta C, as cuBLAS defines it (a beta of 0 never
// reads C, so an unwritten C's NaNs do not leak in).
inline cublasStatus_t cublasGemmEx_64(cublasHandle_t handle, cublasOperation_t ta,
                                      cublasOperation_t tb, int64_t m, int64_t n, int64_t k,
                                      const void* alpha, const void* A, cudaDataType_t at,
                                      int64_t lda, const void* B, cudaDataType_t bt, int64_t ldb,
                                      const void* beta, void* C, cudaDataType_t ct, int64_t ldc,
                                      cublasComputeType_t, cublasGemmAlgo_t) {
  if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (lda < std::max<int64_t>(1, ta == CUBLAS_OP_N ? m : k) ||
      ldb < std::max<int64_t>(1, tb == CUBLAS_OP_N ? k : n) || ldc < std::max<int64_t>(1, m))
    return CUBLAS_STATUS_INVALID_VALUE;
  fastrnn::emu::gemm_log().record({handle, handle->stream, handle->workspace});
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t i = 0; i < m; ++i) {
      float sum = 0.0f;
      for (int64_t p = 0; p < k; ++p) {
        const float a = fastrnn::emu::load_element(A, at, ta == CUBLAS_OP_N ? i + p * lda : p + i * lda);
        const float b = fastrnn::emu::load_element(B, bt, tb == CUBLAS_OP_N ? p + j * ldb : j + p * ldb);
        sum += a * b;
      }
      const float c = be == 0.0f ? 0.0f : be * fastrnn::emu::load_element(C, ct, i + j * ldc);
      fastrnn::emu::store_element(C, ct, i + j * ldc, al * sum + c);
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}

// ---- threads, barriers, launches ----------------------------------------------------------------
namespace fastrnn::emu {

class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const uint64_t generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation_ != generation; });
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int count_, arrived_ = 0;
  uint64_t generation_ = 0;
};

struct Warp {
  Barrier barrier{32};
  float lanes[32];
};

struct BlockContext {
  explicit BlockContext(int threads, size_t smem)
      : barrier(threads), warps((threads + 31) / 32), shared(smem + 16) {}
  Barrier barrier;
  std::vector<Warp> warps;
  std::vector<unsigned char> shared;
};

struct ThreadContext {
  BlockContext* block = nullptr;
  Barrier* grid = nullptr;
};
inline thread_local ThreadContext t_context;

inline unsigned char* dynamic_shared() {
  auto address = reinterpret_cast<uintptr_t>(t_context.block->shared.data());
  return reinterpret_cast<unsigned char*>((address + 15) / 16 * 16);
}

// The CUDA threads of a launch run on a pool of host threads that lives as long as the process:
// creating a thread per CUDA thread per launch would cost more than the emulated work.
class ThreadPool {
 public:
  // Calls job(i) for i < n, each on its own pool thread, and returns when all have returned.
  void run(unsigned n, const std::function<void(unsigned)>& job) {
    std::lock_guard<std::mutex> one_launch_at_a_time(launch_mutex_);
    std::unique_lock<std::mutex> lock(mutex_);
    while (threads_.size() < n) {
      const unsigned index = static_cast<unsigned>(threads_.size());
      threads_.emplace_back([this, index] { work(index); });
    }
    job_ = &job;
    size_ = n;
    finished_ = 0;
    ++generation_;
    wake_.notify_all();
    done_.wait(lock, [&] { return finished_ == size_; });
    job_ = nullptr;
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
      ++generation_;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }

 private:
  void work(unsigned index) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (stop_) return;
      if (index >= size_) continue;
      const std::function<void(unsigned)>* job = job_;
      lock.unlock();
      (*job)(index);
      lock.lock();
      if (++finished_ == size_) done_.notify_all();
    }
  }
  std::mutex launch_mutex_, mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  const std::function<void(unsigned)>* job_ = nullptr;
  unsigned size_ = 0, finished_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

inline ThreadPool& pool() {
  static ThreadPool instance;
  return instance;
}

// Runs `body` as grid.x blocks of block.x * block.y threads; all blocks at once when
// `cooperative` (grid.sync() then is a barrier across all of them), else one after another.
inline void run_grid(dim3 grid, dim3 block, size_t smem, bool cooperative,
                     const std::function<void()>& body) {
  const unsigned threads = block.x * block.y * block.z;
  auto run_blocks = [&](unsigned first, unsigned count, Barrier* grid_barrier) {
    std::vector<std::unique_ptr<BlockContext>> contexts;
    for (unsigned b = 0; b < count; ++b)
      contexts.push_back(std::make_unique<BlockContext>(static_cast<int>(threads), smem));
    pool().run(count * threads, [&](unsigned i) {
      const unsigned b = i / threads, t = i % threads;
      blockDim = block;
      gridDim = grid;
      threadIdx.x = t % block.x;
      threadIdx.y = (t / block.x) % block.y;
      threadIdx.z = t / (block.x * block.y);
      blockIdx.x = first + b;
      t_context.block = contexts[b].get();
      t_context.grid = grid_barrier;
      body();
    });
  };
  if (cooperative) {
    Barrier grid_barrier(static_cast<int>(grid.x * threads));
    run_blocks(0, grid.x, &grid_barrier);
  } else {
    for (unsigned b = 0; b < grid.x; ++b) run_blocks(b, 1, nullptr);
  }
}

// FASTRNN_LAUNCH's object: launch(args...) runs the kernel over the grid.
template <typename... Params>
struct Launch {
  dim3 grid, block;
  size_t smem;
  void (*kernel)(Params...);
  template <typename... Args>
  void operator()(Args&&... args) const {
    std::tuple<Params...> values(std::forward<Args>(args)...);
    auto k = kernel;
    run_grid(grid, block, smem, false, [&values, k] { std::apply(k, values); });
  }
};
template <typename... Params>
Launch<Params...> make_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t,
                              void (*kernel)(Params...)) {
  return Launch<Params...>{grid, block, smem, kernel};
}

template <typename Arg>
cudaError_t launch_cooperative(void (*kernel)(Arg), unsigned blocks, unsigned threads,
                               const Arg& arg, size_t smem) {
  if (blocks > static_cast<unsigned>(kMultiprocessors) || smem > kSharedPerBlockOptin)
    return cudaErrorCooperativeLaunchTooLarge;
  run_grid(dim3(blocks), dim3(threads), smem, true, [&arg, kernel] { kernel(arg); });
  return cudaSuccess;
}

}  // namespace fastrnn::emu

inline void __syncthreads() { fastrnn::emu::t_context.block->barrier.wait(); }

inline float __shfl_xor_sync(unsigned /*mask: every lane takes part*/, float value, int lane_mask) {
  const unsigned t = threadIdx.x + threadIdx.y * blockDim.x;
  fastrnn::emu::Warp& warp = fastrnn::emu::t_context.block->warps[t / 32];
  const unsigned lane = t % 32;
  warp.lanes[lane] = value;
  warp.barrier.wait();
  const float other = warp.lanes[lane ^ static_cast<unsigned>(lane_mask)];
  warp.barrier.wait();
  return other;
}

namespace cooperative_groups {
struct grid_group {
  void sync() const { fastrnn::emu::t_context.grid->wait(); }
};
inline grid_group this_grid() { return {}; }
}  // namespace cooperative_groups
