// The CUDA backend's run-time choices as template arguments (docs/design.md §8): the dtype here,
// the cell and the flags in common/dispatch.h (shared with the CPU core). Every dispatch ends in
// a thrown error naming the value.
#pragma once

#include "cuda/platform.cuh"

#include <string>
#include <utility>

#include "common/dispatch.h"
#include "fastrnn/fastrnn_cuda.h"

namespace fastrnn::cuda {

// X(DType value, scalar type) for every dtype, in code order. A new dtype is one line here, its
// DType value (fastrnn_cuda.h), its conversions (to_float/from_float in cell_math.cuh, data_type
// in gemm.cuh) and its translation unit layer_<dtype>.cu.
#define FASTRNN_CUDA_DTYPES(X) X(Float32, float) X(Float16, __half) X(BFloat16, __nv_bfloat16)

// fn(TypeTag<scalar_t>{}) with the dtype's scalar type.
template <typename Fn>
decltype(auto) dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
#define FASTRNN_CUDA_DTYPE_CASE(name, type) \
    case DType::name: return std::forward<Fn>(fn)(TypeTag<type>{});
    FASTRNN_CUDA_DTYPES(FASTRNN_CUDA_DTYPE_CASE)
#undef FASTRNN_CUDA_DTYPE_CASE
  }
  throw Error("fastrnn CUDA: unknown dtype code " + std::to_string(static_cast<int>(dtype)));
}

}  // namespace fastrnn::cuda
