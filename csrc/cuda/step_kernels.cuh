// The standard algorithm's kernels: one fused pointwise pass per step (forward and backward),
// the projection's per-step helpers, and the small conversions and reductions around the loop.
// One thread per (batch row, hidden unit); the cell's math and traits are cell_math.cuh, and
// nothing here names a cell.
#pragma once

#include "cuda/platform.cuh"

#include <cstdint>

#include "common/resets.h"
#include "cuda/cell_math.cuh"
#include "cuda/layout.cuh"

namespace fastrnn::cuda {

constexpr int kPointwiseThreads = 256;

inline unsigned blocks_for(int64_t n, int threads = kPointwiseThreads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

__device__ __forceinline__ bool step_valid(const int64_t* lengths, int64_t t, int64_t b) {
  return lengths == nullptr || t < lengths[b];
}

// Where the state entering a step is zeros instead of the carried state (ForwardPtrs::resets, by
// common/resets.h's rule, which the CPU core follows too). The reserve keeps the states as the
// steps computed them; a fresh row's step reads zeros for them instead: its recurrent
// pre-activation is b_hh alone (the product h W_hh^T of that row is ignored), GRU's z * h and the
// LSTM's f * c read 0, and no gradient flows back into the replaced state.
struct StateResets {
  const uint8_t* mask;      // (T, B) bytes, or nullptr: no resets
  const int64_t* lengths;   // (B) or nullptr (a reset at a padded step is ignored)
  int64_t T, B;
  bool reverse;
  // Whether row b's state entering step t is zeros.
  __host__ __device__ bool fresh(int64_t t, int64_t b) const {
    return starts_fresh(mask, lengths, T, B, reverse, b, t);
  }
};

// StateSlots: the storage of the recurrent state (h, and c where the cell has one) across one
// layer's walk, and which slot holds the state after k steps of the walk. Training: the
// reserve's T+1 slots in time order (h0 in slot 0 forward, in slot T reverse), so step k goes from
// slot index(k) to index(k+1) and backward finds every step's states there. Inference: a ring of
// two buffers, step k going from buffer k&1 to the other. This is the one meaning of StateSlots in
// fastrnn's C++ (common/dispatch.h lists the names that the two backends share).
template <typename scalar_t>
struct StateSlots {
  scalar_t* h;   // slot i at h + i * B * R
  float* c;      // slot i at c + i * B * H (kHasCellState), else nullptr
  int64_t T;     // steps of the walk
  bool reverse;
  bool ring;
  __host__ __device__ int64_t index(int64_t k) const {
    return ring ? (k & 1) : (reverse ? T - k : k);
  }
};

// ---- forward ----------------------------------------------------------------------------------

template <typename scalar_t>
struct StepForwardArgs {
  int64_t B, H, R, t;
  const float* xp;         // (B, G*H) this step's X W_ih^T
  const float* hp;         // (B, G*H) this step's h W_hh^T
  const scalar_t* b_ih;    // (G*H) or nullptr
  const scalar_t* b_hh;
  const scalar_t* h_prev;  // (B, R)
  const float* c_prev;     // (B, H) kHasCellState
  scalar_t* out;           // (B, R) the new state; with projection (B, H): m = o * tanh(c)
  scalar_t* y;             // (B, R) this step's output; nullptr with projection
  float* c_new;            // (B, H) kHasCellState
  float* acts;             // (B, S*H) saved activations, or nullptr
  const int64_t* lengths;
  bool projected;
  StateResets resets;
};

template <typename scalar_t, Cell kCell>
__global__ void __launch_bounds__(kPointwiseThreads)
forward_step_kernel(StepForwardArgs<scalar_t> a) {
  using Math = CellMath<kCell>;
  constexpr int G = Math::kGates, S = Math::kSaved;
  constexpr bool kC = Math::kHasCellState;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= a.B * a.H) return;
  const int64_t b = idx / a.H, j = idx % a.H, GH = G * a.H;
  const int64_t out_at = a.projected ? b * a.H + j : b * a.R + j;
  if (step_valid(a.lengths, a.t, b)) {
    const bool fresh = a.resets.fresh(a.t, b);  // the state entering this step is zeros
    float xg[G], hg[G], saved[S > 0 ? S : 1];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int64_t n = g * a.H + j;
      xg[g] = a.xp[b * GH + n] + (a.b_ih ? to_float(a.b_ih[n]) : 0.0f);
      hg[g] = (fresh ? 0.0f : a.hp[b * GH + n]) + (a.b_hh ? to_float(a.b_hh[n]) : 0.0f);
    }
    const float h_prev = Math::kReadsHPrev && !fresh ? to_float(a.h_prev[b * a.R + j]) : 0.0f;
    const float c_prev = kC && !fresh ? a.c_prev[b * a.H + j] : 0.0f;
    float out, c_new = 0.0f;
    Math::forward(xg, hg, h_prev, c_prev, out, c_new, saved);
    const scalar_t out_t = from_float<scalar_t>(out);
    a.out[out_at] = out_t;
    if (a.y) a.y[b * a.R + j] = out_t;
    if constexpr (kC) a.c_new[b * a.H + j] = c_new;
    if constexpr (S > 0) {
      if (a.acts) {
#pragma unroll
        for (int s = 0; s < S; ++s) a.acts[b * S * a.H + s * a.H + j] = saved[s];
      }
    }
  } else {  // padded step: the state carries over, the output is zero
    a.out[out_at] = a.projected ? from_float<scalar_t>(0.0f) : a.h_prev[b * a.R + j];
    if (a.y) a.y[b * a.R + j] = from_float<scalar_t>(0.0f);
    if constexpr (kC) a.c_new[b * a.H + j] = a.c_prev[b * a.H + j];
    if constexpr (S > 0) {
      if (a.acts) {
#pragma unroll
        for (int s = 0; s < S; ++s) a.acts[b * S * a.H + s * a.H + j] = 0.0f;
      }
    }
  }
}

// LSTM with projection, after h_proj = m W_hr^T: the new state and the output (B, P).
template <typename scalar_t>
__global__ void __launch_bounds__(kPointwiseThreads)
commit_projection_kernel(int64_t B, int64_t P, int64_t t, const float* h_proj,
                         const scalar_t* h_prev, scalar_t* h_new, scalar_t* y,
                         const int64_t* lengths) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * P) return;
  const int64_t b = idx / P;
  if (step_valid(lengths, t, b)) {
    const scalar_t v = from_float<scalar_t>(h_proj[idx]);
    h_new[idx] = v;
    y[idx] = v;
  } else {
    h_new[idx] = h_prev[idx];
    y[idx] = from_float<scalar_t>(0.0f);
  }
}

// ---- backward ---------------------------------------------------------------------------------

template <typename scalar_t>
struct StepBackwardArgs {
  int64_t B, H, R, t;
  const scalar_t* dy;      // (B, R) this step's output gradient; nullptr with projection
  const float* dm;         // (B, H) with projection: gradient of m (= dh_out W_hr)
  float* dh_carry;         // (B, R) gradient of the state after this step; becomes the part of
                           // the gradient of the state before it that bypasses W_hh
  float* dc_carry;         // (B, H) kHasCellState: gradient of c after this step -> before it
  const float* acts;       // (B, S*H)
  const scalar_t* h_prev;  // (B, R)
  const scalar_t* h_new;   // (B, R)
  const float* c_prev;     // (B, H)
  const float* c_new;      // (B, H)
  scalar_t* dgx;           // (B, G*H) out
  scalar_t* dgh;           // (B, G*H) out (== dgx unless kRecurrentGradDiffers)
  const int64_t* lengths;
  StateResets resets;      // a fresh row reads zero h_prev, c_prev and passes no dc back
};

template <typename scalar_t, Cell kCell>
__global__ void __launch_bounds__(kPointwiseThreads)
backward_step_kernel(StepBackwardArgs<scalar_t> a) {
  using Math = CellMath<kCell>;
  constexpr int G = Math::kGates, S = Math::kSaved;
  constexpr int kRecurrentGate = Math::kRecurrentGradGate;
  constexpr bool kC = Math::kHasCellState;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= a.B * a.H) return;
  const int64_t b = idx / a.H, j = idx % a.H, GH = G * a.H;
  scalar_t* dgx = a.dgx + b * GH;
  scalar_t* dgh = a.dgh + b * GH;
  if (step_valid(a.lengths, a.t, b)) {
    const float dh = a.dm ? a.dm[b * a.H + j]
                          : to_float(a.dy[b * a.R + j]) + a.dh_carry[b * a.R + j];
    const bool fresh = a.resets.fresh(a.t, b);
    float saved[S > 0 ? S : 1];
#pragma unroll
    for (int s = 0; s < S; ++s) saved[s] = a.acts[b * S * a.H + s * a.H + j];
    float dg[G], dgh_n, direct, dc_prev = 0.0f;
    Math::backward(dh, kC ? a.dc_carry[b * a.H + j] : 0.0f, saved,
                   Math::kReadsHPrev && !fresh ? to_float(a.h_prev[b * a.R + j]) : 0.0f,
                   kC && !fresh ? a.c_prev[b * a.H + j] : 0.0f,
                   Math::kReadsOutput ? to_float(a.h_new[b * a.R + j]) : 0.0f,
                   kC ? a.c_new[b * a.H + j] : 0.0f, dg, dgh_n, direct, dc_prev);
#pragma unroll
    for (int g = 0; g < G; ++g) {
      dgx[g * a.H + j] = from_float<scalar_t>(dg[g]);
      if constexpr (kRecurrentGate >= 0)
        dgh[g * a.H + j] = from_float<scalar_t>(g == kRecurrentGate ? dgh_n : dg[g]);
    }
    // the GEMM adds dgh W_hh next (then zero_fresh_rows_kernel clears a fresh row's)
    if (!a.dm) a.dh_carry[b * a.R + j] = direct;
    if constexpr (kC) a.dc_carry[b * a.H + j] = fresh ? 0.0f : dc_prev;
  } else {  // padded step: no gradient into the gates; the state's gradient passes through
#pragma unroll
    for (int g = 0; g < G; ++g) {
      dgx[g * a.H + j] = from_float<scalar_t>(0.0f);
      if constexpr (kRecurrentGate >= 0) dgh[g * a.H + j] = from_float<scalar_t>(0.0f);
    }
  }
}

// LSTM with projection, before the pointwise pass: dh_out = dy + dh_carry (the gradient of this
// step's projected output, kept for dW_hr), and the carry restarts at 0 for valid rows (the GEMM
// after the pointwise pass adds dgh W_hh).
template <typename scalar_t>
__global__ void __launch_bounds__(kPointwiseThreads)
projection_grad_kernel(int64_t B, int64_t P, int64_t t, const scalar_t* dy, float* dh_carry,
                       scalar_t* dh_out, const int64_t* lengths) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * P) return;
  const int64_t b = idx / P;
  if (step_valid(lengths, t, b)) {
    dh_out[idx] = from_float<scalar_t>(to_float(dy[idx]) + dh_carry[idx]);
    dh_carry[idx] = 0.0f;
  } else {
    dh_out[idx] = from_float<scalar_t>(0.0f);
  }
}

// Rows of a (steps * B, width) matrix, row k * B + b belonging to step t0 + k, set to zero where
// that step of row b starts fresh: the gradient of a replaced state (steps = 1), or the rows of
// dgh whose h_prev was zeros before the dW_hh GEMM (steps = T). Launched only with resets.
template <typename elem_t>
__global__ void __launch_bounds__(kPointwiseThreads)
zero_fresh_rows_kernel(elem_t* m, int64_t t0, int64_t steps, int64_t width, StateResets resets) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= steps * resets.B * width) return;
  const int64_t row = idx / width, b = row % resets.B, t = t0 + row / resets.B;
  if (resets.fresh(t, b)) m[idx] = from_float<elem_t>(0.0f);
}

// ---- around the loop --------------------------------------------------------------------------

// out[i] = float(in[i]), or 0 where in is nullptr.
template <typename scalar_t>
__global__ void __launch_bounds__(kPointwiseThreads)
widen_kernel(const scalar_t* in, float* out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in ? to_float(in[i]) : 0.0f;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kPointwiseThreads)
narrow_kernel(const float* in, scalar_t* out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = from_float<scalar_t>(in[i]);
}

// Column sums of a (rows, cols) matrix, accumulated in float in a fixed order (deterministic):
// a block takes 32 columns; its 8 thread rows stride over the matrix rows, then add up.
constexpr int kSumColumns = 32, kSumRows = 8;
template <typename scalar_t>
__global__ void __launch_bounds__(kSumColumns * kSumRows)
column_sum_kernel(const scalar_t* m, int64_t rows, int64_t cols, scalar_t* out) {
  __shared__ float partial[kSumRows][kSumColumns];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kSumColumns + threadIdx.x;
  float sum = 0.0f;
  if (col < cols)
    for (int64_t r = threadIdx.y; r < rows; r += kSumRows) sum += to_float(m[r * cols + col]);
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    float total = 0.0f;
#pragma unroll
    for (int k = 0; k < kSumRows; ++k) total += partial[k][threadIdx.x];
    out[col] = from_float<scalar_t>(total);
  }
}

}  // namespace fastrnn::cuda
