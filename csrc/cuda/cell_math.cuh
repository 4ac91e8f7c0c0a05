// One cell's pointwise math on the GPU, forward and backward, for one hidden unit of one batch
// row, and the traits that the drivers read instead of naming the cell. This is the only place in
// the CUDA backend where a cell's equations or structure are written (docs/design.md §8); the
// standard step kernels (step_kernels.cuh), the persistent kernels (persistent.cuh) and the
// layouts (layout.cuh) all take them from CellMath<kCell>. Everything is float32: half inputs are
// widened before and narrowed after. The CPU core's counterpart is cpu/cells.h (same name, same
// traits where the two share an idea).
//
// Forward takes the gate pre-activations in two parts, per gate g:
//   xg[g] = (W_ih x)_g + b_ih_g       hg[g] = (W_hh h)_g + b_hh_g
// (GRU needs them apart: n = tanh(xg_n + r * hg_n)). It returns the cell output `out` -- h', or
// for an LSTM with projection o * tanh(c') before W_hr -- the new cell state (LSTM) and the
// saved activations (kSaved floats). Backward gives the gradients of the pre-activations: dgx
// (of xg, for W_ih, b_ih and x) and the distinct gate's dgh (GRU's n, where hg_n is scaled by r;
// for every other gate dgh = dgx), the gradient of h that bypasses W_hh (GRU's z * dh) and of c.
// Derivatives are written from saved outputs (dtanh = 1 - y^2, dsigmoid = s (1 - s)), as the CPU
// core does (cpu/cells.h); relu's gradient is a select, as torch applies it.
//
// Traits of every CellMath<kCell> (the drivers' whole knowledge of a cell; the names are the CPU
// core's, cpu/cells.h, where the two share an idea):
//   kName, kGates, kHasCellState
//                          what the cell is (CellInfo, fastrnn/cell.h): its name, G, and whether
//                          it carries a cell state c (then c0/c_n, the reserve's cs slots, dc)
//   kSaved                 floats saved per hidden unit and step in the reserve's acts section
//                          (layout.cuh sizes the section from it: one source of truth)
//   kRecurrentGradGate     the gate whose recurrent pre-activation the cell scales (GRU's n:
//                          tanh(xg_n + r * hg_n)), or -1: its dgh differs from its dgx, and
//                          backward returns it as dgh_n
//   kRecurrentGradDiffers  kRecurrentGradGate >= 0: dgh is a buffer of its own, else dgh = dgx
//   kReadsHPrev            forward and backward read h_prev itself, not only through W_hh (GRU's
//                          z * h); the drivers pass 0 for the others
//   kReadsOutput           backward reads the step's output h_new (the derivative comes from it;
//                          CUDA only: the CPU's row functions always get h_new)
#pragma once

#include "cuda/platform.cuh"

#include "common/dispatch.h"
#include "fastrnn/fastrnn.h"

namespace fastrnn::cuda {

template <typename scalar_t> __device__ __forceinline__ float to_float(scalar_t v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <typename scalar_t> __device__ __forceinline__ scalar_t from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ float sigmoidf(float a) { return 1.0f / (1.0f + expf(-a)); }

template <Cell kCell> struct CellMath;

// The traits' defaults, for a cell with none of the special paths; every CellMath derives from it
// (kSaved has no default: each cell states it).
template <Cell kCell>
struct CellTraitDefaults : CellInfo<kCell> {
  static constexpr int kRecurrentGradGate = -1;
  static constexpr bool kRecurrentGradDiffers = false;
  static constexpr bool kReadsHPrev = false;
  static constexpr bool kReadsOutput = false;
};

template <Cell kCell>
struct VanillaMath : CellTraitDefaults<kCell> {
  static constexpr int kSaved = 0;
  static constexpr bool kReadsOutput = true;  // the derivative comes from the output
  __device__ static __forceinline__ void forward(const float* xg, const float* hg, float /*h*/,
                                                 float /*c*/, float& out, float& /*c_new*/,
                                                 float* /*acts*/) {
    const float a = xg[0] + hg[0];
    if constexpr (kCell == Cell::RnnTanh) out = tanhf(a);
    else out = a < 0.0f ? 0.0f : a;  // NaN propagates
  }
  __device__ static __forceinline__ void backward(float dh, float /*dc*/, const float* /*acts*/,
                                                  float /*h_prev*/, float /*c_prev*/, float out,
                                                  float /*c_new*/, float* dgx, float& dgh_n,
                                                  float& dh_direct, float& /*dc_prev*/) {
    if constexpr (kCell == Cell::RnnTanh) dgx[0] = dh * (1.0f - out * out);
    else dgx[0] = out <= 0.0f ? 0.0f : dh;
    dgh_n = dgx[0];
    dh_direct = 0.0f;
  }
};
template <> struct CellMath<Cell::RnnTanh> : VanillaMath<Cell::RnnTanh> {};
template <> struct CellMath<Cell::RnnRelu> : VanillaMath<Cell::RnnRelu> {};

// LSTM, gates i, f, g, o. Saved: i, f, g, o.
template <>
struct CellMath<Cell::Lstm> : CellTraitDefaults<Cell::Lstm> {
  static constexpr int kSaved = 4;
  __device__ static __forceinline__ void forward(const float* xg, const float* hg, float /*h*/,
                                                 float c, float& out, float& c_new, float* acts) {
    const float i = sigmoidf(xg[0] + hg[0]);
    const float f = sigmoidf(xg[1] + hg[1]);
    const float g = tanhf(xg[2] + hg[2]);
    const float o = sigmoidf(xg[3] + hg[3]);
    c_new = f * c + i * g;
    out = o * tanhf(c_new);
    acts[0] = i; acts[1] = f; acts[2] = g; acts[3] = o;
  }
  __device__ static __forceinline__ void backward(float dh, float dc_next, const float* acts,
                                                  float /*h_prev*/, float c_prev, float /*out*/,
                                                  float c_new, float* dgx, float& dgh_n,
                                                  float& dh_direct, float& dc_prev) {
    const float i = acts[0], f = acts[1], g = acts[2], o = acts[3];
    const float tc = tanhf(c_new);
    const float dc = dc_next + dh * o * (1.0f - tc * tc);
    dgx[0] = dc * g * i * (1.0f - i);
    dgx[1] = dc * c_prev * f * (1.0f - f);
    dgx[2] = dc * i * (1.0f - g * g);
    dgx[3] = dh * tc * o * (1.0f - o);
    dgh_n = dgx[3];  // no kRecurrentGradGate: dgh = dgx for all four
    dh_direct = 0.0f;
    dc_prev = dc * f;
  }
};

// GRU, gates r, z, n, reset applied after the hidden product. Saved: r, z, n and hg_n.
template <>
struct CellMath<Cell::Gru> : CellTraitDefaults<Cell::Gru> {
  static constexpr int kSaved = 4;
  static constexpr int kRecurrentGradGate = 2;  // n = tanh(xg_n + r * hg_n)
  static constexpr bool kRecurrentGradDiffers = true;
  static constexpr bool kReadsHPrev = true;     // h' = (1 - z) n + z h
  __device__ static __forceinline__ void forward(const float* xg, const float* hg, float h,
                                                 float /*c*/, float& out, float& /*c_new*/,
                                                 float* acts) {
    const float r = sigmoidf(xg[0] + hg[0]);
    const float z = sigmoidf(xg[1] + hg[1]);
    const float n = tanhf(xg[2] + r * hg[2]);
    out = (1.0f - z) * n + z * h;
    acts[0] = r; acts[1] = z; acts[2] = n; acts[3] = hg[2];
  }
  __device__ static __forceinline__ void backward(float dh, float /*dc*/, const float* acts,
                                                  float h_prev, float /*c_prev*/, float /*out*/,
                                                  float /*c_new*/, float* dgx, float& dgh_n,
                                                  float& dh_direct, float& /*dc_prev*/) {
    const float r = acts[0], z = acts[1], n = acts[2], hn = acts[3];
    const float dn = dh * (1.0f - z) * (1.0f - n * n);
    dgx[0] = dn * hn * r * (1.0f - r);
    dgx[1] = dh * (h_prev - n) * z * (1.0f - z);
    dgx[2] = dn;
    dgh_n = dn * r;
    dh_direct = dh * z;
  }
};

// The traits agree with each other.
#define FASTRNN_CUDA_CHECK_CELL_TRAITS(name)                                                     \
  static_assert(CellMath<Cell::name>::kRecurrentGradGate < CellMath<Cell::name>::kGates,          \
                "CellMath<" #name ">::kRecurrentGradGate is not one of its gates");               \
  static_assert(CellMath<Cell::name>::kRecurrentGradDiffers ==                                    \
                    (CellMath<Cell::name>::kRecurrentGradGate >= 0),                              \
                "CellMath<" #name ">::kRecurrentGradDiffers disagrees with kRecurrentGradGate"); \
  static_assert(CellMath<Cell::name>::kSaved >= 0, "CellMath<" #name ">::kSaved");
FASTRNN_CELLS(FASTRNN_CUDA_CHECK_CELL_TRAITS)
#undef FASTRNN_CUDA_CHECK_CELL_TRAITS

// The traits that the host-side layouts need, for a cell known at run time, through dispatch_cell.
struct CellTraits {
  int gates, saved;
  bool has_cell_state, recurrent_grad_differs;
};
inline CellTraits cell_traits(Cell cell) {
  return dispatch_cell(cell, [](auto tag) {
    using Math = CellMath<decltype(tag)::value>;
    return CellTraits{Math::kGates, Math::kSaved, Math::kHasCellState,
                      Math::kRecurrentGradDiffers};
  });
}

}  // namespace fastrnn::cuda
