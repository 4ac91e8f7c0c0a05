// What the CUDA backend takes from the CUDA toolkit, in one place: the runtime, cuBLAS, the half
// types and cooperative groups, plus the two launch forms. Built by nvcc, these are NVIDIA's.
// Built with FASTRNN_CUDA_HOST_EMULATION by a host compiler, they come from
// emulation/host_emulation.h instead, which runs the very same kernels and driver on CPU threads
// (one std::thread per CUDA thread, blocks one after another, cooperative grids all at once)
// so that the tests can check the CUDA code's logic against the reference on a machine without a
// GPU (tests/cuda/test_cuda_emulated.py). It checks logic only: not speed, not the GPU's memory
// model.
#pragma once

#ifdef FASTRNN_CUDA_HOST_EMULATION
#include "cuda/emulation/host_emulation.h"
// kernel<<<grid, block, smem, stream>>>(args...)
#define FASTRNN_LAUNCH(grid, block, smem, stream, ...) \
  ::fastrnn::emu::make_launch((grid), (block), (smem), (stream), __VA_ARGS__)
// the kernel's dynamic shared memory, `name` an unsigned char*
#define FASTRNN_DYNAMIC_SHARED(name) unsigned char* name = ::fastrnn::emu::dynamic_shared()
#else
#include <cooperative_groups.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define FASTRNN_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<(grid), (block), (smem), (stream)>>>
#define FASTRNN_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace fastrnn::cuda {

// A cooperative launch (every block resident at once, grid-wide barriers allowed) of
// kernel(*args) with `blocks` blocks of `threads` threads and `smem` bytes of dynamic shared
// memory, on `stream`.
template <typename Arg>
cudaError_t launch_cooperative_kernel(void (*kernel)(Arg), unsigned blocks, unsigned threads,
                                      Arg* args, size_t smem, cudaStream_t stream) {
#ifdef FASTRNN_CUDA_HOST_EMULATION
  return ::fastrnn::emu::launch_cooperative(kernel, blocks, threads, *args, smem);
#else
  void* kernel_args[] = {args};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(blocks),
                                     dim3(threads), kernel_args, smem, stream);
#endif
}

}  // namespace fastrnn::cuda
