// The CUDA layer driver for one dtype (one translation unit per dtype: they compile in parallel).
#include "cuda/layer.cuh"

namespace fastrnn::cuda {
FASTRNN_INSTANTIATE_CUDA_LAYER(__half)
}  // namespace fastrnn::cuda
