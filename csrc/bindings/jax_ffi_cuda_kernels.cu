// The device helpers of the CUDA backend's XLA FFI handlers (jax_ffi_cuda.h): which device a
// stream belongs to, and int32 lengths (JAX's default integer type) widened to int64 on the device.
#include "bindings/jax_ffi_cuda.h"

#include "cuda/check.cuh"

namespace fastrnn::bindings::jax_cuda {

namespace {

__global__ void widen_kernel(const int32_t* src, int64_t* dst, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = src[i];
}

}  // namespace

int stream_device(void* stream) {
  int device = 0;
#if CUDART_VERSION >= 12080  // cudaStreamGetDevice is CUDA 12.8's
  if (cudaStreamGetDevice(static_cast<cudaStream_t>(stream), &device) == cudaSuccess)
    return device;
  cudaGetLastError();  // not a sticky error: fall back on the current device
#else
  (void)stream;  // older toolkits: the current device (unverified to be the stream's)
#endif
  FASTRNN_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

void widen_lengths(int device, const int32_t* src, int64_t* dst, int64_t n, void* stream) {
  if (n <= 0) return;
  int previous = 0;
  FASTRNN_CUDA_CHECK(cudaGetDevice(&previous));
  if (previous != device) FASTRNN_CUDA_CHECK(cudaSetDevice(device));
  constexpr int kThreads = 256;
  const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  widen_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(src, dst, n);
  const cudaError_t err = cudaGetLastError();
  if (previous != device) cudaSetDevice(previous);
  if (err != cudaSuccess)
    ::fastrnn::cuda::throw_cuda(err, "launch of widen_kernel", __FILE__, __LINE__);
}

}  // namespace fastrnn::bindings::jax_cuda
