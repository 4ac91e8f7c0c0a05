// One cell's pointwise math on the GPU, forward and backward, for one hidden unit of one batch
// row. This is the only place in the CUDA backend where a cell's equations are written; the
// standard step kernels (step_kernels.cuh) and the persistent kernels (persistent.cuh) both call
// it. Everything is float32: half inputs are widened before and narrowed after.
//
// Forward takes the gate pre-activations in two parts, per gate g:
//   xg[g] = (W_ih x)_g + b_ih_g       hg[g] = (W_hh h)_g + b_hh_g
// (GRU needs them apart: n = tanh(xg_n + r * hg_n)). It returns the cell output `out` -- h', or
// for an LSTM with projection o * tanh(c') before W_hr -- the new cell state (LSTM) and the
// saved activations (kSaved floats). Backward gives the gradients of the pre-activations: dgx
// (of xg, for W_ih, b_ih and x) and the n gate's dgh (GRU, where hg_n is scaled by r; for every
// other gate dgh = dgx), the gradient of h that bypasses W_hh (GRU's z * dh) and of c.
// Derivatives are written from saved outputs (dtanh = 1 - y^2, dsigmoid = s (1 - s)), as the CPU
// core does (cpu/cells.h); relu's gradient is a select, as torch applies it.
#pragma once

#include "cuda/platform.cuh"

#include "fastrnn/fastrnn.h"

namespace fastrnn::cuda {

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ float sigmoidf(float a) { return 1.0f / (1.0f + expf(-a)); }

template <Cell kCell> struct UnitMath;

template <Cell kCell>
struct VanillaUnit {
  static constexpr int kGates = 1;
  static constexpr int kSaved = 0;  // the derivative comes from the output
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
template <> struct UnitMath<Cell::RnnTanh> : VanillaUnit<Cell::RnnTanh> {};
template <> struct UnitMath<Cell::RnnRelu> : VanillaUnit<Cell::RnnRelu> {};

// LSTM, gates i, f, g, o. Saved: i, f, g, o.
template <>
struct UnitMath<Cell::Lstm> {
  static constexpr int kGates = 4;
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
    dgh_n = dgx[3];  // no distinct gate: dgh = dgx for all four
    dh_direct = 0.0f;
    dc_prev = dc * f;
  }
};

// GRU, gates r, z, n, reset applied after the hidden product. Saved: r, z, n and hg_n.
template <>
struct UnitMath<Cell::Gru> {
  static constexpr int kGates = 3;
  static constexpr int kSaved = 4;
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

// The gate whose dgh differs from its dgx (GRU's n); -1 when none does.
template <Cell kCell>
constexpr int distinct_dgh_gate() { return kCell == Cell::Gru ? 2 : -1; }

}  // namespace fastrnn::cuda
