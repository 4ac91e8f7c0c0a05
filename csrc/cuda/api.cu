// The entry points of fastrnn_cuda.h: sizes, the algo choice, dispatch on the dtype, and what
// the build and the machine have.
#include "cuda/platform.cuh"

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/check.cuh"
#include "cuda/dispatch.cuh"
#include "cuda/layer.cuh"
#include "cuda/layout.cuh"
#include "fastrnn/fastrnn_cuda.h"

namespace fastrnn::cuda {

// Defined per dtype in layer_<dtype>.cu.
#define FASTRNN_CUDA_EXTERN_LAYER(name, scalar_t)                                          \
  extern template void forward_typed<scalar_t>(const Problem&, const ForwardPtrs&, Algo);   \
  extern template void backward_typed<scalar_t>(const Problem&, const BackwardPtrs&, Algo); \
  extern template PersistentPlan plan_typed<scalar_t>(const Problem&);
FASTRNN_CUDA_DTYPES(FASTRNN_CUDA_EXTERN_LAYER)
#undef FASTRNN_CUDA_EXTERN_LAYER

const cudaDeviceProp& device_properties(int device) {
  static std::mutex mutex;
  static std::vector<std::unique_ptr<cudaDeviceProp>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  if (device < 0) throw Error("fastrnn CUDA: device index " + std::to_string(device) + " < 0");
  if (cache.size() <= static_cast<size_t>(device)) cache.resize(device + 1);
  if (!cache[device]) {
    auto prop = std::make_unique<cudaDeviceProp>();
    FASTRNN_CUDA_CHECK(cudaGetDeviceProperties(prop.get(), device));
    cache[device] = std::move(prop);
  }
  return *cache[device];
}

size_t dtype_size(DType dtype) {
  return dispatch_dtype(dtype, [](auto type) { return sizeof(typename decltype(type)::type); });
}

ReserveWidths reserve_width_bytes(const LayerShape& s, DType dtype) {
  return reserve_widths(s, dtype);
}

int64_t reserve_bytes(const LayerShape& s, DType dtype) { return ReserveLayout(s, dtype).total; }

int64_t forward_workspace_bytes(const LayerShape& s, DType dtype, bool training, Algo algo) {
  return ForwardWorkspace(s, dtype, training, algo).total;
}

int64_t backward_workspace_bytes(const LayerShape& s, DType dtype,
                                 Algo /*algo: both use the same workspace*/) {
  return BackwardWorkspace(s, dtype).total;
}

namespace {
PersistentPlan plan_for(const Problem& p) {
  DeviceGuard guard(p.device);
  return dispatch_dtype(p.dtype, [&](auto type) {
    return plan_typed<typename decltype(type)::type>(p);
  });
}
}  // namespace

bool persistent_fits(const Problem& p, std::string* why) {
  const PersistentPlan plan = plan_for(p);
  if (!plan.fits && why) *why = plan.why;
  return plan.fits;
}

// auto: persistent wherever it fits (batch <= 16, W_hh in shared memory, no projection): at
// small batch every step of the standard algorithm re-reads W_hh from memory and pays two
// launches; the persistent kernel reads it once. Not yet measured against the standard path on a
// GPU (see bench/RESULTS.md); the rule is the design's, to be tuned by measurement.
Algo resolve_algo(const Problem& p) {
  if (p.algo == Algo::Standard) return Algo::Standard;
  std::string why;
  const bool fits = persistent_fits(p, &why);
  if (p.algo == Algo::Persistent) {
    if (!fits) throw Error("fastrnn CUDA: algo='persistent' cannot run this layer: " + why);
    return Algo::Persistent;
  }
  return fits ? Algo::Persistent : Algo::Standard;
}

void layer_forward(const Problem& p, const ForwardPtrs& ptrs) {
  DeviceGuard guard(p.device);
  const Algo algo = resolve_algo(p);
  dispatch_dtype(p.dtype, [&](auto type) {
    forward_typed<typename decltype(type)::type>(p, ptrs, algo);
  });
}

void layer_backward(const Problem& p, const BackwardPtrs& ptrs) {
  DeviceGuard guard(p.device);
  const Algo algo = resolve_algo(p);
  dispatch_dtype(p.dtype, [&](auto type) {
    backward_typed<typename decltype(type)::type>(p, ptrs, algo);
  });
}

void* device_alloc(int device, int64_t bytes) {
  DeviceGuard guard(device);
  void* ptr = nullptr;
  FASTRNN_CUDA_CHECK(cudaMalloc(&ptr, static_cast<size_t>(bytes > 0 ? bytes : 1)));
  return ptr;
}

void device_free(int device, void* ptr) noexcept {
  if (!ptr) return;
  int previous = 0;
  if (cudaGetDevice(&previous) != cudaSuccess) previous = device;
  cudaSetDevice(device);
  cudaFree(ptr);
  cudaSetDevice(previous);
  cudaGetLastError();  // nothing to report from a destructor
}

void fill_bytes(int device, void* ptr, int value, int64_t nbytes) {
  DeviceGuard guard(device);
  FASTRNN_CUDA_CHECK(cudaMemset(ptr, value, static_cast<size_t>(nbytes)));
}

void copy_from_host(int device, void* dst, const void* src, int64_t nbytes) {
  DeviceGuard guard(device);
  FASTRNN_CUDA_CHECK(cudaMemcpy(dst, src, static_cast<size_t>(nbytes), cudaMemcpyHostToDevice));
}

void synchronize(int device) {
  DeviceGuard guard(device);
  FASTRNN_CUDA_CHECK(cudaDeviceSynchronize());
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error (no driver, no device)
    return 0;
  }
  return n;
}

DeviceInfo device_info(int device) {
  const cudaDeviceProp& prop = device_properties(device);
  DeviceInfo info;
  info.name = prop.name;
  info.major = prop.major;
  info.minor = prop.minor;
  info.multiprocessors = prop.multiProcessorCount;
  info.total_memory = static_cast<int64_t>(prop.totalGlobalMem);
  info.l2_bytes = prop.l2CacheSize;
  info.shared_per_block_optin = static_cast<int64_t>(prop.sharedMemPerBlockOptin);
  info.shared_per_multiprocessor = static_cast<int64_t>(prop.sharedMemPerMultiprocessor);
  int clock = 0, bus = 0;
  FASTRNN_CUDA_CHECK(cudaDeviceGetAttribute(&clock, cudaDevAttrMemoryClockRate, device));
  FASTRNN_CUDA_CHECK(cudaDeviceGetAttribute(&bus, cudaDevAttrGlobalMemoryBusWidth, device));
  info.memory_clock_khz = clock;
  info.memory_bus_bits = bus;
  return info;
}

int runtime_version() {
  int v = 0;
  FASTRNN_CUDA_CHECK(cudaRuntimeGetVersion(&v));
  return v;
}

int driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return v;
}

std::string cublas_version() {
  int major = 0, minor = 0, patch = 0;
  FASTRNN_CUBLAS_CHECK(cublasGetProperty(MAJOR_VERSION, &major));
  FASTRNN_CUBLAS_CHECK(cublasGetProperty(MINOR_VERSION, &minor));
  FASTRNN_CUBLAS_CHECK(cublasGetProperty(PATCH_LEVEL, &patch));
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
}

std::vector<std::string> compiled_architectures() {
  // CMake's CUDA_ARCHITECTURES, comma-separated: "80,90", "90a-real", ...
  std::vector<std::string> archs;
  const std::string list = FASTRNN_CUDA_ARCHITECTURES;
  size_t start = 0;
  while (start < list.size()) {
    size_t end = list.find(',', start);
    if (end == std::string::npos) end = list.size();
    std::string item = list.substr(start, end - start);
    const size_t dash = item.find('-');
    if (dash != std::string::npos) item.resize(dash);
    if (!item.empty()) archs.push_back("sm_" + item);
    start = end + 1;
  }
  return archs;
}

}  // namespace fastrnn::cuda
