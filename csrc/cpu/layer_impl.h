// The sequence driver: one layer, one direction, any cell. Forward and BPTT backward.
// Written once, generic over the cell: cells.h holds each cell's pointwise math and the traits
// (CellMath<kCell>::k...) that are all this file knows of a cell; it names no cell.
//
// Two recurrence paths:
//   the team (recurrence.h): packed W_hh per thread, register-tile products fused with the
//     pointwise pass, one barrier per step; the input projection inside the tiles from B = 8;
//     backward's weight gradients as BLAS GEMMs per chunk of steps. The default.
//   per step through BLAS: Xp = X W_ih^T + bias (one GEMM), then per step Hp = h_prev W_hh^T
//     (GEMM, GEMV at B = 1) and one pointwise pass; backward one GEMM per step. Used for layers
//     with a projection (LSTM's proj_size), for the forward at B = 1 with a large W_hh and a
//     short sequence (forward_uses_team), and for a single step, T = 1, both ways (a cell's step,
//     a streaming call: backward_uses_team).
// Denormals are flushed to zero on the calling thread for the whole call (DenormalsAreZero), and
// on every thread that works for it (run_team; denormals.h).
#pragma once

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "common/dispatch.h"
#include "common/resets.h"
#include "cpu/blas.h"
#include "cpu/cells.h"
#include "cpu/denormals.h"
#include "cpu/isa.h"
#include "cpu/recurrence.h"
#include "cpu/step.h"
#include "fastrnn/fastrnn.h"

namespace fastrnn::cpu {

// ---- the sequence driver ------------------------------------------------------------------

// The steps where a segment starts (FreshSteps, step.h) of one call, and the zeros its kernels
// read as those steps' entering state. Empty (fresh.fresh null, no allocation) without resets or
// when no reset applies, so that an all-false mask runs exactly the code of no mask.
template <typename scalar_t>
struct SegmentStarts {
  std::vector<uint8_t> marks;
  std::vector<scalar_t> zeros;
  FreshSteps fresh;
  explicit SegmentStarts(const ForwardArgs<scalar_t>& a) {
    const LayerShape& s = a.shape;
    if (a.resets == nullptr) return;
    marks.resize(s.T * s.B);
    bool any = false;
    for (int64_t t = 0; t < s.T; ++t)
      for (int64_t b = 0; b < s.B; ++b) {
        const bool f = starts_fresh(a.resets, a.lengths, s.T, s.B, s.reverse, b, t);
        marks[t * s.B + b] = f;
        any = any || f;
      }
    if (!any) return;
    // hp rows of every layout (G*H, or a tile group's G * kMaxPanelWidth), and a state (R)
    zeros.assign(s.gate_width() + num_gates(s.cell) * kMaxPanelWidth<scalar_t> + s.R(), 0);
    fresh = FreshSteps{marks.data(), s.B};
  }
  const scalar_t* zeros_or_null() const { return fresh.fresh ? zeros.data() : nullptr; }
};

// Scratch layouts, in elements; sizes.cpp reports the same totals.
// Scratch regions start on 64-byte boundaries (the workspace itself is 64-byte aligned): the
// packed weights are read one vector -- one cache line -- at a time, and a load that straddles
// two lines costs two. Returns the offset of n elements taken at `at`, in elements.
inline int64_t take_aligned(int64_t& at, int64_t n) {
  constexpr int64_t kAlign = 16;  // elements: 64 bytes of float (128 of double)
  const int64_t here = round_up(at, kAlign);
  at = here + n;
  return here;
}

// Without a projection the recurrence runs on the team (recurrence.h) with packed weights;
// with one, step by step through BLAS.
inline bool uses_team_recurrence(const LayerShape& s) { return s.P == 0; }

// The forward packs W_hh at every call, a transposing copy that reads W_hh from memory once.
// At batch 1 the per-step BLAS path (GEMV) reads it once per step instead, from wherever it
// sits; when W_hh is larger than the cores' caches and the sequence short, that is cheaper
// (measured, LSTM, T = 25: H = 512 1.31 ms per-step GEMV vs 1.55 ms team; H = 1024 7.2 vs
// 9.6 ms; at T = 1, 0.6 vs 3.3 ms). Decided from the shape alone: workspace sizes depend on it.
// A single step (a cell, a streaming call) never packs: the pack reads W_hh, writes it packed and
// the product reads it again, where one BLAS product reads it once.
inline bool forward_uses_team(const LayerShape& s) {
  constexpr int64_t kCachedWeights = int64_t(1) << 19;  // elements: 2 MiB of float, L2 of 2 cores
  constexpr int64_t kAmortisingSteps = 128;
  const bool large_single_row = s.B == 1 && s.gate_width() * s.H > kCachedWeights &&
                                s.T < kAmortisingSteps;
  return uses_team_recurrence(s) && !large_single_row && s.T > 1;
}

// The backward's recurrence on the team, except for a single step (as forward_uses_team).
inline bool backward_uses_team(const LayerShape& s) { return uses_team_recurrence(s) && s.T > 1; }

// Large batches compute X W_ih^T inside the team, tile by tile, right before the tile's
// recurrent product: no (T, B, G*H) buffer goes to memory and back, and no separate GEMM call.
// Small batches (few rows per weight load) keep one GEMM over all T*B rows, which reads W_ih once.
// Only the team fuses it: every other path reads the input pre-activations xp, and the workspace
// has xp exactly when this is false (ForwardWorkspace), so the two cannot disagree.
inline bool fuses_input_projection(const LayerShape& s) { return forward_uses_team(s) && s.B >= 8; }

template <Cell kCell>
struct ForwardWorkspace {
  int64_t xp, hp, pack, pack_ih, bias, h_pingpong, c_pingpong, m, h_proj, total;
  ForwardWorkspace(const LayerShape& s, bool training) {
    const int64_t GH = CellMath<kCell>::kGates * s.H, B = s.B;
    const bool team = forward_uses_team(s), fused = fuses_input_projection(s);
    constexpr bool kC = CellMath<kCell>::kHasCellState;
    int64_t at = 0;
    auto take = [&at](int64_t n) { return take_aligned(at, n); };
    xp = take(fused ? 0 : s.T * B * GH);                         // X W_ih^T + biases, all steps
    pack_ih = take(fused ? packed_input_elements<kCell>(s.H, s.I) : 0);
    hp = take(team ? 0 : B * GH);                                // h_prev W_hh^T, one step
    pack = take(team ? packed_recurrent_elements<kCell>(s.H) : 0);
    bias = take(GH);                                             // b_ih (+ b_hh)
    h_pingpong = take(training ? 0 : 2 * B * s.R());             // inference keeps 2 states
    c_pingpong = take(training || !kC ? 0 : 2 * B * s.H);
    m = take(s.P > 0 && !training ? B * s.H : 0);                // training keeps m in reserve
    h_proj = take(s.P > 0 ? B * s.R() : 0);
    total = at;
  }
};

// Backward on the team runs in chunks of this many steps: after each chunk, the gradients of
// everything applied to all steps (dX, dW_ih, dW_hh, biases) get that chunk's share from GEMMs,
// so the pre-activation gradients are kept for one chunk, not for the whole sequence. Enough
// rows per chunk for those GEMMs to run at full speed (measured: 256 rows cost 15% of an LSTM's
// forward+backward at B = 16, H = 256; 1024 rows nothing), and at least 16 steps so that the
// team restarts rarely.
inline int64_t backward_chunk_steps(const LayerShape& s) {
  if (!backward_uses_team(s)) return s.T;
  constexpr int64_t kMinRows = 1024;
  return std::min<int64_t>(s.T, std::max<int64_t>(16, (kMinRows + s.B - 1) / s.B));
}

template <Cell kCell>
struct BackwardWorkspace {
  int64_t chunk, dgx, dgh, dh, dc, dh_cell, dh_out, pack, total;
  explicit BackwardWorkspace(const LayerShape& s) {
    using Math = CellMath<kCell>;
    const int64_t GH = Math::kGates * s.H, B = s.B, R = s.R(), H = s.H;
    chunk = backward_chunk_steps(s);
    int64_t at = 0;
    auto take = [&at](int64_t n) { return take_aligned(at, n); };
    pack = take(backward_uses_team(s) ? packed_recurrent_elements<kCell>(H) : 0);
    dgx = take(chunk * B * GH);                                  // pre-activation gradients
    // dgh: kRecurrentGradGate's own (GRU: dn * r); the other gates' dgh is dgx
    dgh = Math::kRecurrentGradDiffers ? take(chunk * B * H) : dgx;
    dh = take(2 * B * R);                                        // dh_next / dh_prev ping-pong
    dc = take(Math::kHasCellState ? 2 * B * H : 0);
    dh_cell = take(B * H);                                       // gradient of the cell output
    dh_out = take(s.P > 0 ? s.T * B * R : 0);                    // projection: dW_hr needs all
    total = at;
  }
};

template <typename scalar_t, Cell kCell>
void forward_impl(const ForwardArgs<scalar_t>& a) {
  using Math = CellMath<kCell>;
  constexpr bool kC = Math::kHasCellState;
  const LayerShape& s = a.shape;
  const int64_t T = s.T, B = s.B, I = s.I, H = s.H, R = s.R(), GH = Math::kGates * H;
  const bool training = a.reserve != nullptr;
  const bool has_bias = a.b_ih != nullptr;
  const bool projected = s.P > 0;
  const Isa isa = active_isa();
  DenormalsAreZero ftz;

  const ForwardWorkspace<kCell> w(s, training);
  const bool team = forward_uses_team(s), fused = fuses_input_projection(s);
  // The per-step path reads xp, which the workspace holds only when the projection is not fused.
  if (fused && !team) throw std::logic_error("fastrnn: a fused input projection needs the team");
  scalar_t* xp = fused ? nullptr : a.workspace + w.xp;
  scalar_t* bias_x = a.workspace + w.bias;

  // 1. Input projection for every step at once (unless the team fuses it into the steps). All
  //    biases fold into Xp where the cell allows it (kFoldsRecurrentBias); otherwise (GRU, whose
  //    b_hn must stay inside r * (W_hn h + b_hn)) b_hh is added to Hp instead.
  if (has_bias)
    for (int64_t k = 0; k < GH; ++k)
      bias_x[k] = a.b_ih[k] + (Math::kFoldsRecurrentBias ? a.b_hh[k] : scalar_t(0));
  if (!fused) {
    if (has_bias) broadcast_rows(xp, bias_x, T * B, GH);
    gemm<scalar_t>(false, true, T * B, GH, I, 1, a.x, I, a.w_ih, I, has_bias ? 1 : 0, xp, GH);
  }

  const SlotOrder order{T, s.reverse};
  const ReserveLayout<scalar_t, kCell> reserve(a.reserve, s);
  const int64_t acts_width = saved_acts_width<kCell>(H);
  const StateSlots<scalar_t> h_slots{training ? reserve.hs : a.workspace + w.h_pingpong, B * R,
                                     !training};
  const StateSlots<scalar_t> c_slots{training ? reserve.cs : a.workspace + w.c_pingpong, B * H,
                                     !training};
  std::memcpy(h_slots.at(order.initial()), a.h0, B * R * sizeof(scalar_t));
  if (kC) std::memcpy(c_slots.at(order.initial()), a.c0, B * H * sizeof(scalar_t));
  const SegmentStarts<scalar_t> segments(a);

  // 2. The recurrence.
  const bool hp_has_bias = !Math::kFoldsRecurrentBias && has_bias;
  if (team) {
    // Tile groups of the widest vectors: never more members than the narrowest split has.
    const int64_t group_units = kMaxPanelWidth<scalar_t> * TileShape<kCell>::kForwardBlocks;
    const int64_t groups = (H + group_units - 1) / group_units;
    const int members = recurrence_members(2 * B * GH * R, groups);
    SpinBarrier barrier(members);
    RecurrenceForwardArgs<scalar_t> r{
        s, a.lengths, xp, a.x, a.w_ih, has_bias ? bias_x : nullptr,
        a.workspace + w.pack_ih, a.w_hh, hp_has_bias ? a.b_hh : nullptr, a.workspace + w.pack,
        h_slots, c_slots, a.y, training ? reserve.acts : nullptr, acts_width, 0, members,
        &barrier, segments.fresh, segments.zeros_or_null()};
    run_recurrence<RecurrenceForwardArgs<scalar_t>, ForwardMember<scalar_t, kCell>>(r, members);
  } else {
    for (int64_t step = 0; step < T; ++step) {
      const int64_t t = time_at(s, step);
      const scalar_t* h_prev = h_slots.at(order.prev(t));
      scalar_t* hp = a.workspace + w.hp;
      if (hp_has_bias) broadcast_rows(hp, a.b_hh, B, GH);
      gemm<scalar_t>(false, true, B, GH, R, 1, h_prev, R, a.w_hh, R, hp_has_bias ? 1 : 0, hp, GH);

      scalar_t* m = nullptr;
      if (projected) m = training ? reserve.ms + t * B * H : a.workspace + w.m;
      const ForwardStep<scalar_t> st{
          B, H, R, t, a.lengths, xp + t * B * GH, hp, h_prev,
          kC ? c_slots.at(order.prev(t)) : nullptr, h_slots.at(order.next(t)),
          kC ? c_slots.at(order.next(t)) : nullptr, a.y + t * B * R,
          training ? reserve.acts + t * B * acts_width : nullptr, m,
          hp_has_bias ? a.b_hh : segments.zeros_or_null(), segments.fresh,
          segments.zeros_or_null()};
      run_on_isa<ForwardStepKernel<scalar_t, kCell>>(isa, st);
      if (projected) project_step(st, a.w_hr, a.workspace + w.h_proj);
    }
  }
  std::memcpy(a.h_n, h_slots.at(order.final()), B * R * sizeof(scalar_t));
  if (kC) std::memcpy(a.c_n, c_slots.at(order.final()), B * H * sizeof(scalar_t));
}

// Column sums of a (rows x n) matrix added into acc (n), in double: the bias gradients, sums over
// all T*B rows of the gate gradients. Vectorised per instruction set, columns split across the
// team.
template <typename scalar_t>
struct ColumnSums {
  const scalar_t* m;
  int64_t rows, n, first, end;  // columns [first, end)
  double* acc;
};

template <typename scalar_t>
struct ColumnSumsKernel {
  static FASTRNN_INLINE void run(const ColumnSums<scalar_t>& a) {
    constexpr int64_t kChunk = 256;  // the chunk's accumulators stay in L1
    for (int64_t c = a.first; c < a.end; c += kChunk) {
      const int64_t n = std::min(kChunk, a.end - c);
      double* FASTRNN_RESTRICT acc = a.acc + c;
      for (int64_t r = 0; r < a.rows; ++r) {
        const scalar_t* FASTRNN_RESTRICT row = a.m + r * a.n + c;
        FASTRNN_IVDEP
        for (int64_t j = 0; j < n; ++j) acc[j] += row[j];
      }
    }
  }
};

template <typename scalar_t>
void add_column_sums(const scalar_t* m, int64_t rows, int64_t n, double* acc) {
  constexpr int64_t kBlock = 16;  // whole cache lines per thread
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const int threads = rows * n >= (int64_t(1) << 18) ? team_threads() : 1;
  run_team(threads, [&](int member, int size) {
    const EvenSplit mine{blocks, size};
    const int64_t first = std::min(n, mine.begin(member) * kBlock);
    const int64_t end = std::min(n, mine.begin(member + 1) * kBlock);
    if (first < end)
      run_on_isa<ColumnSumsKernel<scalar_t>>(active_isa(),
                                             ColumnSums<scalar_t>{m, rows, n, first, end, acc});
  });
}

template <typename scalar_t, Cell kCell>
void backward_impl(const BackwardArgs<scalar_t>& a) {
  using Math = CellMath<kCell>;
  constexpr bool kC = Math::kHasCellState;
  constexpr bool kDistinct = Math::kRecurrentGradDiffers;
  const LayerShape& s = a.shape;
  const int64_t T = s.T, B = s.B, I = s.I, H = s.H, R = s.R(), GH = Math::kGates * H;
  const bool projected = s.P > 0;
  const Isa isa = active_isa();
  DenormalsAreZero ftz;

  const BackwardWorkspace<kCell> w(s);
  scalar_t* dgx = a.workspace + w.dgx;
  scalar_t* dgh = a.workspace + w.dgh;
  scalar_t* dh_next = a.workspace + w.dh;
  scalar_t* dh_prev = dh_next + B * R;
  scalar_t* dc_next = kC ? a.workspace + w.dc : nullptr;
  scalar_t* dc_prev = kC ? dc_next + B * H : nullptr;
  scalar_t* dh_cell = a.workspace + w.dh_cell;

  if (a.dh_n) std::memcpy(dh_next, a.dh_n, B * R * sizeof(scalar_t));
  else std::fill(dh_next, dh_next + B * R, scalar_t(0));
  if (kC) {
    if (a.dc_n) std::memcpy(dc_next, a.dc_n, B * H * sizeof(scalar_t));
    else std::fill(dc_next, dc_next + B * H, scalar_t(0));
  }

  const SlotOrder order{T, s.reverse};
  const ReserveLayout<scalar_t, kCell> reserve(a.reserve, s);
  const int64_t acts_width = saved_acts_width<kCell>(H);
  const SegmentStarts<scalar_t> segments(a);
  std::vector<scalar_t> fresh_h_prev;  // dW_hh's h_prev rows with the fresh ones zeroed

  // Gradients of everything applied to all steps, for the steps at times [t0, t1) whose
  // pre-activation gradients are in dgx (and dgh) from row 0; the first call writes, the others
  // add.
  std::vector<double> bias_sums(a.db_ih && !a.dgates ? GH + (kDistinct ? H : 0) : 0, 0.0);
  auto weight_gradients = [&](int64_t t0, int64_t t1, bool first) {
    const int64_t rows = (t1 - t0) * B;
    const scalar_t beta = first ? 0 : 1;
    gemm<scalar_t>(false, false, rows, I, GH, 1, dgx, GH, a.w_ih, I, 0, a.dx + t0 * B * I, I);
    if (a.dgates) {  // the caller forms the weight gradients (BackwardArgs::dgates)
      std::memcpy(a.dgates + t0 * B * GH, dgx, rows * GH * sizeof(scalar_t));
      if (kDistinct) std::memcpy(a.dgates_h + t0 * B * H, dgh, rows * H * sizeof(scalar_t));
      return;
    }
    gemm<scalar_t>(true, false, GH, I, rows, 1, dgx, GH, a.x + t0 * B * I, I, beta, a.dw_ih, I);
    const scalar_t* h_prev_rows = reserve.hs + (t0 + order.first_prev_row_block()) * B * R;
    if (segments.fresh.fresh) {  // the reserve keeps the carried state; these steps saw zeros
      fresh_h_prev.assign(h_prev_rows, h_prev_rows + rows * R);
      for (int64_t row = 0; row < rows; ++row)
        if (segments.marks[t0 * B + row])
          std::fill_n(fresh_h_prev.data() + row * R, R, scalar_t(0));
      h_prev_rows = fresh_h_prev.data();
    }
    if constexpr (kDistinct) {  // the rows before kRecurrentGradGate from dgx, its rows from dgh
      constexpr int kGate = Math::kRecurrentGradGate;
      gemm<scalar_t>(true, false, kGate * H, R, rows, 1, dgx, GH, h_prev_rows, R, beta, a.dw_hh,
                     R);
      gemm<scalar_t>(true, false, H, R, rows, 1, dgh, H, h_prev_rows, R, beta,
                     a.dw_hh + kGate * H * R, R);
    } else {
      gemm<scalar_t>(true, false, GH, R, rows, 1, dgx, GH, h_prev_rows, R, beta, a.dw_hh, R);
    }
    if (projected)  // dW_hr = sum_t dh_t^T m_t (padded rows: dh is 0)
      gemm<scalar_t>(true, false, R, H, rows, 1, a.workspace + w.dh_out + t0 * B * R, R,
                     reserve.ms + t0 * B * H, H, beta, a.dw_hr, H);
    if (a.db_ih) {
      add_column_sums(dgx, rows, GH, bias_sums.data());
      if (kDistinct) add_column_sums(dgh, rows, H, bias_sums.data() + GH);
    }
  };

  if (backward_uses_team(s)) {
    const int64_t V = kMaxPanelWidth<scalar_t>;
    const int64_t groups = (H + 4 * V - 1) / (4 * V);
    const int members = recurrence_members(2 * B * GH * R, groups);
    SpinBarrier barrier(members);
    RecurrenceBackwardArgs<scalar_t> r{
        s, a.lengths, a.w_hh, a.workspace + w.pack, a.dy, reserve.acts, acts_width, reserve.hs,
        reserve.cs,
        dgx, dgh, dh_cell, {dh_next, dh_prev}, {dc_next, dc_prev}, 0, 0, 0, 0, true, 0,
        members, &barrier, segments.fresh, segments.zeros_or_null()};
    // Chunks of steps in walking order, last first; each covers a contiguous range of times.
    for (int64_t step_end = T; step_end > 0; step_end -= w.chunk) {
      r.step_begin = std::max<int64_t>(0, step_end - w.chunk);
      r.step_end = step_end;
      r.chunk_t0 = s.reverse ? T - step_end : r.step_begin;
      r.cur0 = static_cast<int>((T - step_end) % 2);
      r.pack_weights = step_end == T;
      run_recurrence<RecurrenceBackwardArgs<scalar_t>, BackwardMember<scalar_t, kCell>>(r,
                                                                                        members);
      weight_gradients(r.chunk_t0, r.chunk_t0 + (r.step_end - r.step_begin), step_end == T);
    }
    if (T % 2 == 1) {  // the arriving gradients ended in the other buffer
      std::swap(dh_next, dh_prev);
      if (kC) std::swap(dc_next, dc_prev);
    }
  } else {
    for (int64_t step = T - 1; step >= 0; --step) {
      const int64_t t = time_at(s, step);
      // Gradient of this step's output h: dy_t + dh_next (0 at padded rows), then, with a
      // projection, through W_hr to the cell output m = o * tanh(c).
      scalar_t* dh_out = projected ? a.workspace + w.dh_out + t * B * R : dh_cell;
      run_on_isa<OutputGradKernel<scalar_t>>(
          isa, OutputGradStep<scalar_t>{B, R, t, a.lengths, a.dy + t * B * R, dh_next, dh_out});
      if (projected) gemm<scalar_t>(false, false, B, H, R, 1, dh_out, R, a.w_hr, H, 0, dh_cell, H);

      const scalar_t* cell_out =
          projected ? reserve.ms + t * B * H : reserve.hs + order.next(t) * B * R;
      run_on_isa<BackwardStepKernel<scalar_t, kCell>>(
          isa, BackwardStep<scalar_t>{B, H, R, t, a.lengths, dh_cell, dh_next,
                                      kC ? dc_next : nullptr, reserve.acts + t * B * acts_width,
                                      reserve.hs + order.prev(t) * B * R, cell_out,
                                      kC ? reserve.cs + order.prev(t) * B * H : nullptr,
                                      kC ? reserve.cs + order.next(t) * B * H : nullptr,
                                      dgx + t * B * GH, kDistinct ? dgh + t * B * H : nullptr,
                                      dh_prev, kC ? dc_prev : nullptr, segments.fresh,
                                      segments.zeros_or_null()});
      // dh_prev (holding the part that bypasses W_hh) += dGh_t W_hh: dgx's gates, and for a
      // cell with kRecurrentGradGate that gate's rows from dgh
      const int64_t K_x = kDistinct ? Math::kRecurrentGradGate * H : GH;
      gemm<scalar_t>(false, false, B, R, K_x, 1, dgx + t * B * GH, GH, a.w_hh, R, 1, dh_prev, R);
      if constexpr (kDistinct)
        gemm<scalar_t>(false, false, B, R, H, 1, dgh + t * B * H, H, a.w_hh + K_x * R, R, 1,
                       dh_prev, R);
      zero_fresh_rows(segments.fresh, t, B, R, 0, R, dh_prev);
      std::swap(dh_next, dh_prev);
      if (kC) std::swap(dc_next, dc_prev);
    }
    weight_gradients(0, T, true);
  }
  std::memcpy(a.dh0, dh_next, B * R * sizeof(scalar_t));
  if (kC) std::memcpy(a.dc0, dc_next, B * H * sizeof(scalar_t));
  if (a.dgates && projected)
    std::memcpy(a.dh_proj, a.workspace + w.dh_out, T * B * R * sizeof(scalar_t));
  if (a.db_ih && !a.dgates) {
    for (int64_t k = 0; k < GH; ++k) a.db_ih[k] = static_cast<scalar_t>(bias_sums[k]);
    // db_hh: the same sums, except kRecurrentGradGate's (from dgh)
    const int64_t shared = kDistinct ? Math::kRecurrentGradGate * H : GH;
    std::memcpy(a.db_hh, a.db_ih, shared * sizeof(scalar_t));
    for (int64_t k = shared; k < GH; ++k)
      a.db_hh[k] = static_cast<scalar_t>(bias_sums[GH + k - shared]);
  }
}

// The sizes of sizes.cpp, for a cell known at run time.
inline ReserveWidths reserve_widths_of(const LayerShape& s) {
  return dispatch_cell(s.cell, [&](auto cell) {
    return ReserveLayout<float, decltype(cell)::value>::widths(s);
  });
}

inline int64_t reserve_elements_of(const LayerShape& s) {
  const ReserveWidths w = reserve_widths_of(s);
  return (s.T + 1) * s.B * w.per_slot + s.T * s.B * w.per_step;
}

inline int64_t forward_workspace_elements_of(const LayerShape& s, bool training) {
  return dispatch_cell(s.cell, [&](auto cell) {
    return ForwardWorkspace<decltype(cell)::value>(s, training).total;
  });
}

inline int64_t backward_workspace_elements_of(const LayerShape& s) {
  return dispatch_cell(s.cell, [&](auto cell) {
    return BackwardWorkspace<decltype(cell)::value>(s).total;
  });
}

// The entry points: the cell as a template argument (common/dispatch.h).
template <typename scalar_t>
void dispatch_forward(const ForwardArgs<scalar_t>& a) {
  dispatch_cell(a.shape.cell,
                [&](auto cell) { forward_impl<scalar_t, decltype(cell)::value>(a); });
}

template <typename scalar_t>
void dispatch_backward(const BackwardArgs<scalar_t>& a) {
  dispatch_cell(a.shape.cell,
                [&](auto cell) { backward_impl<scalar_t, decltype(cell)::value>(a); });
}

}  // namespace fastrnn::cpu
