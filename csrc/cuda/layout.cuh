// Byte layouts of the reserve (kept from a training forward for backward) and of each call's
// workspace. Host-side arithmetic only; api.cu reports the totals through fastrnn_cuda.h. What a
// layout needs to know of the cell comes from its CellMath traits (cell_math.cuh), so the saved
// activations' count has one source: CellMath<kCell>::kSaved.
//
// Reserve, float32 sections first so that every section is aligned for its type:
//   cs    (T+1, B, H)    float  cell state (kHasCellState) before/after every step (slot 0 = c0
//                               forward, slot T = c0 reverse), carried through padded steps
//   acts  (T, B, S*H)    float  saved activations, S = CellMath::kSaved (cell_math.cuh)
//   hs    (T+1, B, R)    dtype  hidden state before/after every step, h0 in the first slot
//   ms    (T, B, H)      dtype  LSTM with projection: o * tanh(c) before W_hr (0 at padded steps)
// Step t reads slot t and writes slot t+1 (forward), or reads t+1 and writes t (reverse).
#pragma once

#include <cstdint>

#include "cuda/cell_math.cuh"
#include "fastrnn/fastrnn_cuda.h"

namespace fastrnn::cuda {

// The saved activations per hidden unit and step that the reserve holds: the kernels' count,
// CellMath<kCell>::kSaved (the drivers static_assert that they index the section with it).
template <Cell kCell>
constexpr int64_t reserve_saved_per_unit() { return CellMath<kCell>::kSaved; }
inline int64_t reserve_saved_per_unit(Cell cell) {
  return dispatch_cell(cell,
                       [](auto tag) { return reserve_saved_per_unit<decltype(tag)::value>(); });
}

// The reserve's bytes per slot ((T+1) of them) and per step (T of them): fastrnn_cuda.h's
// reserve_width_bytes, and the sections' sizes below.
inline ReserveWidths reserve_widths(const LayerShape& s, DType dtype) {
  const int64_t es = static_cast<int64_t>(dtype_size(dtype));
  const CellTraits cell = cell_traits(s.cell);
  ReserveWidths w;
  w.per_slot = (cell.has_cell_state ? s.H * 4 : 0) + s.R() * es;
  w.per_step = reserve_saved_per_unit(s.cell) * s.H * 4 + (s.P > 0 ? s.H * es : 0);
  return w;
}

struct ReserveLayout {
  int64_t cs, acts, hs, ms, total;  // byte offsets
  ReserveLayout(const LayerShape& s, DType dtype) {
    const int64_t es = static_cast<int64_t>(dtype_size(dtype)), B = s.B, H = s.H, T = s.T;
    int64_t at = 0;
    cs = at;
    at += cell_traits(s.cell).has_cell_state ? (T + 1) * B * H * 4 : 0;
    acts = at;
    at += T * B * reserve_saved_per_unit(s.cell) * H * 4;
    hs = at;
    at += (T + 1) * B * s.R() * es;
    ms = at;
    at += s.P > 0 ? T * B * H * es : 0;
    total = at;
  }
};

constexpr int64_t kWorkspaceAlign = 256;
inline int64_t take_bytes(int64_t& at, int64_t n) {
  const int64_t here = (at + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
  at = here + n;
  return here;
}

// Forward workspace (byte offsets). Inference keeps the state in two ping-pong buffers; training
// keeps it in the reserve.
struct ForwardWorkspace {
  int64_t xp, hp, h_pingpong, c_pingpong, m, h_proj, total;
  ForwardWorkspace(const LayerShape& s, DType dtype, bool training, Algo algo) {
    if (algo == Algo::Auto)  // the sizes differ by algo: resolve it first (resolve_algo)
      throw Error("fastrnn CUDA: workspace size asked for algo Auto; resolve it first");
    const int64_t es = static_cast<int64_t>(dtype_size(dtype)), B = s.B, H = s.H, R = s.R();
    const int64_t GH = s.gate_width();
    const bool has_c = cell_traits(s.cell).has_cell_state;
    int64_t at = 0;
    xp = take_bytes(at, s.T * B * GH * 4);                                // X W_ih^T, all steps
    hp = take_bytes(at, algo == Algo::Standard ? B * GH * 4 : 0);         // h W_hh^T, one step
    h_pingpong = take_bytes(at, training ? 0 : 2 * B * R * es);
    c_pingpong = take_bytes(at, has_c && !training ? 2 * B * H * 4 : 0);
    m = take_bytes(at, s.P > 0 && !training ? B * H * es : 0);
    h_proj = take_bytes(at, s.P > 0 ? B * s.P * 4 : 0);
    total = at;
  }
};

// Backward workspace: the pre-activation gradients of every step (the weight gradients are GEMMs
// over all steps after the loop), the carried state gradients, and for the projection the
// gradient of every step's output before W_hr.
struct BackwardWorkspace {
  int64_t dgx, dgh, dh_carry, dc_carry, dh_out, dm, total;
  BackwardWorkspace(const LayerShape& s, DType dtype) {
    const int64_t es = static_cast<int64_t>(dtype_size(dtype)), B = s.B, H = s.H, T = s.T;
    const int64_t GH = s.gate_width();
    const CellTraits cell = cell_traits(s.cell);
    int64_t at = 0;
    dgx = take_bytes(at, T * B * GH * es);
    // dgh differs from dgx in one gate (kRecurrentGradDiffers): a buffer of its own, else the same
    dgh = cell.recurrent_grad_differs ? take_bytes(at, T * B * GH * es) : dgx;
    dh_carry = take_bytes(at, B * s.R() * 4);
    dc_carry = take_bytes(at, cell.has_cell_state ? B * H * 4 : 0);
    dh_out = take_bytes(at, s.P > 0 ? T * B * s.P * es : 0);
    dm = take_bytes(at, s.P > 0 ? B * H * 4 : 0);
    total = at;
  }
};

}  // namespace fastrnn::cuda
