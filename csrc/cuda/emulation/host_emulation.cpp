// The emulated CUDA built-in variables (see host_emulation.h).
#include "cuda/emulation/host_emulation.h"

thread_local fastrnn_emu_uint3 threadIdx, blockIdx;
thread_local dim3 blockDim, gridDim;
