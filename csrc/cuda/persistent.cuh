// The persistent algorithm: the whole recurrence of one layer and direction in one cooperative
// kernel. Block k owns hidden units [k*U, k*U + U) and keeps, in shared memory for all steps,
// the rows of W_hh for those units (forward: the G*U rows g*H + j) or the columns (backward:
// W_hh[:, j], for the gradient of h_prev). Each step reads what every block wrote at the step
// before from global memory (L2: __ldcg, since L1 is not coherent across multiprocessors) and
// ends with one grid-wide barrier. The input projection and the weight gradients stay cuBLAS
// GEMMs around it (layer.cuh). No projection (P = 0); batch <= kPersistentMaxBatch.
#pragma once

#include "cuda/platform.cuh"

#include <cstdint>

#include "cuda/cell_math.cuh"
#include "cuda/step_kernels.cuh"

namespace fastrnn::cuda {

namespace cg = cooperative_groups;

constexpr int kPersistentThreads = 256;
constexpr int kWarps = kPersistentThreads / 32;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__host__ __device__ inline int64_t align16(int64_t bytes) { return (bytes + 15) / 16 * 16; }

// Shared memory of one block, in bytes, for U units per block.
inline int64_t persistent_forward_smem(const LayerShape& s, int64_t es, int64_t U) {
  const int64_t G = num_gates(s.cell);
  return align16(G * U * s.H * es) + s.B * s.H * 4 + s.B * G * U * 4;
}
inline int64_t persistent_backward_smem(const LayerShape& s, int64_t es, int64_t U) {
  const int64_t GH = s.gate_width();
  return align16(U * GH * es) + GH * 4 + 3 * s.B * U * 4;
}

template <typename scalar_t>
struct PersistentForwardArgs {
  int64_t T, B, H;              // R == H (no projection)
  int64_t units_per_block;
  bool reverse;
  const float* xp;              // (T, B, G*H)
  const scalar_t* w_hh;         // (G*H, H)
  const scalar_t* b_ih;
  const scalar_t* b_hh;
  StateSlots<scalar_t> slots;
  scalar_t* y;                  // (T, B, H)
  float* acts;                  // (T, B, S*H) or nullptr
  const int64_t* lengths;
  StateResets resets;           // fresh rows: zero h_prev and c_prev, hg = b_hh
};

template <typename scalar_t, Cell kCell, int kMaxB>
__global__ void __launch_bounds__(kPersistentThreads, 1)
persistent_forward_kernel(PersistentForwardArgs<scalar_t> a) {
  using Math = CellMath<kCell>;
  constexpr int G = Math::kGates, S = Math::kSaved;
  constexpr bool kC = Math::kHasCellState;
  FASTRNN_DYNAMIC_SHARED(smem);
  const int64_t H = a.H, B = a.B, GH = G * H;
  const int64_t j0 = blockIdx.x * a.units_per_block;
  const int64_t nu = a.units_per_block < H - j0 ? a.units_per_block : H - j0;
  const int64_t rows = G * nu;
  scalar_t* w = reinterpret_cast<scalar_t*>(smem);                      // (rows, H)
  float* h_smem =
      reinterpret_cast<float*>(smem + align16(G * a.units_per_block * H * sizeof(scalar_t)));
  float* gates = h_smem + B * H;                                         // (B, rows)
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  for (int64_t i = tid; i < rows * H; i += kPersistentThreads) {
    const int64_t rr = i / H, k = i % H, g = rr / nu, u = rr % nu;
    w[i] = a.w_hh[(g * H + j0 + u) * H + k];
  }
  cg::grid_group grid = cg::this_grid();

  for (int64_t step = 0; step < a.T; ++step) {
    const int64_t t = a.reverse ? a.T - 1 - step : step;
    const scalar_t* h_prev = a.slots.h + a.slots.index(step) * B * H;
    scalar_t* h_new = a.slots.h + a.slots.index(step + 1) * B * H;
    const float* c_prev = kC ? a.slots.c + a.slots.index(step) * B * H : nullptr;
    float* c_new = kC ? a.slots.c + a.slots.index(step + 1) * B * H : nullptr;

    for (int64_t i = tid; i < B * H; i += kPersistentThreads)
      h_smem[i] = to_float(__ldcg(h_prev + i));
    __syncthreads();

    // W_hh rows of this block times every h_prev row: a warp per weight row, lanes over k.
    for (int64_t rr = warp; rr < rows; rr += kWarps) {
      float acc[kMaxB];
#pragma unroll
      for (int b = 0; b < kMaxB; ++b) acc[b] = 0.0f;
      const scalar_t* wr = w + rr * H;
      for (int64_t k = lane; k < H; k += 32) {
        const float wv = to_float(wr[k]);
#pragma unroll
        for (int b = 0; b < kMaxB; ++b)
          if (b < B) acc[b] += wv * h_smem[b * H + k];
      }
#pragma unroll
      for (int b = 0; b < kMaxB; ++b) {
        if (b < B) {
          const float v = warp_sum(acc[b]);
          if (lane == 0) gates[b * rows + rr] = v;
        }
      }
    }
    __syncthreads();

    for (int64_t i = tid; i < B * nu; i += kPersistentThreads) {
      const int64_t b = i / nu, u = i % nu, j = j0 + u;
      float* acts = a.acts ? a.acts + (t * B + b) * S * H : nullptr;
      if (step_valid(a.lengths, t, b)) {
        const bool fresh = a.resets.fresh(t, b);  // the state entering this step is zeros
        float xg[G], hg[G], saved[S > 0 ? S : 1];
#pragma unroll
        for (int g = 0; g < G; ++g) {
          const int64_t n = g * H + j;
          xg[g] = a.xp[(t * B + b) * GH + n] + (a.b_ih ? to_float(a.b_ih[n]) : 0.0f);
          hg[g] = (fresh ? 0.0f : gates[b * rows + g * nu + u]) +
                  (a.b_hh ? to_float(a.b_hh[n]) : 0.0f);
        }
        float out, cn = 0.0f;
        Math::forward(xg, hg, fresh ? 0.0f : h_smem[b * H + j],
                      kC && !fresh ? c_prev[b * H + j] : 0.0f, out, cn, saved);
        const scalar_t out_t = from_float<scalar_t>(out);
        h_new[b * H + j] = out_t;
        a.y[(t * B + b) * H + j] = out_t;
        if constexpr (kC) c_new[b * H + j] = cn;
        if constexpr (S > 0) {
          if (acts) {
#pragma unroll
            for (int s = 0; s < S; ++s) acts[s * H + j] = saved[s];
          }
        }
      } else {
        h_new[b * H + j] = h_prev[b * H + j];
        a.y[(t * B + b) * H + j] = from_float<scalar_t>(0.0f);
        if constexpr (kC) c_new[b * H + j] = c_prev[b * H + j];
        if constexpr (S > 0) {
          if (acts) {
#pragma unroll
            for (int s = 0; s < S; ++s) acts[s * H + j] = 0.0f;
          }
        }
      }
    }
    grid.sync();  // every block's h_new is written before any block reads it
  }
}

template <typename scalar_t>
struct PersistentBackwardArgs {
  int64_t T, B, H;
  int64_t units_per_block;
  bool reverse;
  const scalar_t* w_hh;         // (G*H, H)
  const scalar_t* dy;           // (T, B, H)
  const scalar_t* hs;           // reserve slots (T+1, B, H)
  const float* cs;              // (T+1, B, H) kHasCellState
  const float* acts;            // (T, B, S*H)
  const int64_t* lengths;
  scalar_t* dgx;                // (T, B, G*H) out
  scalar_t* dgh;                // (T, B, G*H) out (== dgx unless kRecurrentGradDiffers)
  float* dh_carry;              // (B, H) in: gradient of h_n; out: of h0
  float* dc_carry;              // (B, H) kHasCellState, the same for c
  StateResets resets;           // no gradient flows into a replaced state
};

template <typename scalar_t, Cell kCell>
__global__ void __launch_bounds__(kPersistentThreads, 1)
persistent_backward_kernel(PersistentBackwardArgs<scalar_t> a) {
  using Math = CellMath<kCell>;
  constexpr int G = Math::kGates, S = Math::kSaved;
  constexpr int kRecurrentGate = Math::kRecurrentGradGate;
  constexpr bool kC = Math::kHasCellState;
  FASTRNN_DYNAMIC_SHARED(smem);
  const int64_t H = a.H, B = a.B, GH = G * H, U = a.units_per_block;
  const int64_t j0 = blockIdx.x * U;
  const int64_t nu = U < H - j0 ? U : H - j0;
  scalar_t* wcol = reinterpret_cast<scalar_t*>(smem);  // (nu, GH): W_hh[:, j]^T
  float* dg_row = reinterpret_cast<float*>(smem + align16(U * GH * sizeof(scalar_t)));  // (GH)
  float* carry = dg_row + GH;          // (B, nu) gradient of the state (this block's units)
  float* c_carry = carry + B * U;      // (B, nu)
  float* direct = c_carry + B * U;     // (B, nu) the part of dh_prev that bypasses W_hh
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  for (int64_t i = tid; i < nu * GH; i += kPersistentThreads) {
    const int64_t u = i / GH, n = i % GH;
    wcol[i] = a.w_hh[n * H + j0 + u];
  }
  for (int64_t i = tid; i < B * nu; i += kPersistentThreads) {
    const int64_t b = i / nu, u = i % nu;
    carry[i] = a.dh_carry[b * H + j0 + u];
    if constexpr (kC) c_carry[i] = a.dc_carry[b * H + j0 + u];
  }
  __syncthreads();
  cg::grid_group grid = cg::this_grid();

  // carry <- dgh[t] W_hh[:, own units] + direct, for the rows valid at step t (the others keep
  // carrying the gradient through the padded step); 0 where the state entering step t was
  // replaced by zeros.
  auto through_w_hh = [&](int64_t t) {
    for (int64_t b = 0; b < B; ++b) {
      if (!step_valid(a.lengths, t, b)) continue;  // uniform across the block
      if (a.resets.fresh(t, b)) {                  // uniform across the block too
        for (int64_t u = tid; u < nu; u += kPersistentThreads) carry[b * nu + u] = 0.0f;
        __syncthreads();
        continue;
      }
      const scalar_t* dgh = a.dgh + (t * B + b) * GH;
      for (int64_t n = tid; n < GH; n += kPersistentThreads) dg_row[n] = to_float(__ldcg(dgh + n));
      __syncthreads();
      for (int64_t u = warp; u < nu; u += kWarps) {
        float acc = 0.0f;
        for (int64_t n = lane; n < GH; n += 32) acc += to_float(wcol[u * GH + n]) * dg_row[n];
        acc = warp_sum(acc);
        if (lane == 0) carry[b * nu + u] = acc + direct[b * nu + u];
      }
      __syncthreads();
    }
  };

  for (int64_t step = 0; step < a.T; ++step) {
    const int64_t t = a.reverse ? step : a.T - 1 - step;  // backward walks the other way
    if (step > 0) through_w_hh(a.reverse ? t - 1 : t + 1);
    const int64_t prev_slot = a.reverse ? t + 1 : t, new_slot = a.reverse ? t : t + 1;
    for (int64_t i = tid; i < B * nu; i += kPersistentThreads) {
      const int64_t b = i / nu, u = i % nu, j = j0 + u;
      scalar_t* dgx = a.dgx + (t * B + b) * GH;
      scalar_t* dgh = a.dgh + (t * B + b) * GH;
      if (step_valid(a.lengths, t, b)) {
        const bool fresh = a.resets.fresh(t, b);
        const float dh = to_float(a.dy[(t * B + b) * H + j]) + carry[i];
        float saved[S > 0 ? S : 1];
#pragma unroll
        for (int s = 0; s < S; ++s) saved[s] = a.acts[(t * B + b) * S * H + s * H + j];
        float dg[G], dgh_n, dir, dc_prev = 0.0f;
        Math::backward(dh, kC ? c_carry[i] : 0.0f, saved,
                       Math::kReadsHPrev && !fresh
                           ? to_float(a.hs[(prev_slot * B + b) * H + j]) : 0.0f,
                       kC && !fresh ? a.cs[(prev_slot * B + b) * H + j] : 0.0f,
                       Math::kReadsOutput ? to_float(a.hs[(new_slot * B + b) * H + j]) : 0.0f,
                       kC ? a.cs[(new_slot * B + b) * H + j] : 0.0f, dg, dgh_n, dir, dc_prev);
#pragma unroll
        for (int g = 0; g < G; ++g) {
          dgx[g * H + j] = from_float<scalar_t>(dg[g]);
          if constexpr (kRecurrentGate >= 0)
            dgh[g * H + j] = from_float<scalar_t>(g == kRecurrentGate ? dgh_n : dg[g]);
        }
        direct[i] = dir;
        if constexpr (kC) c_carry[i] = fresh ? 0.0f : dc_prev;
      } else {
#pragma unroll
        for (int g = 0; g < G; ++g) {
          dgx[g * H + j] = from_float<scalar_t>(0.0f);
          if constexpr (kRecurrentGate >= 0) dgh[g * H + j] = from_float<scalar_t>(0.0f);
        }
      }
    }
    grid.sync();  // every block's dgh[t] is written before any block reads it
  }
  through_w_hh(a.reverse ? a.T - 1 : 0);  // the gradient of h0
  for (int64_t i = tid; i < B * nu; i += kPersistentThreads) {
    const int64_t b = i / nu, u = i % nu;
    a.dh_carry[b * H + j0 + u] = carry[i];
    if constexpr (kC) a.dc_carry[b * H + j0 + u] = c_carry[i];
  }
}

}  // namespace fastrnn::cuda
