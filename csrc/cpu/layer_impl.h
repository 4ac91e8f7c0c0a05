// The sequence driver: one layer, one direction, any cell. Forward and BPTT backward.
// Written once, generic over the cell (cells.h holds each cell's pointwise math).
//
// Forward:  Xp = X W_ih^T + bias (one GEMM for all T*B rows); then per step
//           Hp = h_prev W_hh^T (GEMM) and one fused pointwise pass per batch row.
// Backward: reverse over steps, the fused pointwise backward gives dG_t, then
//           dh_prev = dGh_t W_hh (GEMM); after the loop the weight gradients and dX are
//           single GEMMs over all steps.
#pragma once

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "cpu/blas.h"
#include "cpu/cells.h"
#include "cpu/denormals.h"
#include "cpu/isa.h"
#include "fastrnn/fastrnn.h"

namespace fastrnn::cpu {

// Where the hidden (and cell) state before and after the step at time t lives in the reserve.
// States are kept in time order in T+1 slots: forward runs slot t -> t+1 (h0 in slot 0),
// reverse runs slot t+1 -> t (h0 in slot T). The rows of "state before step t" for all t are then
// contiguous, which makes dW_hh one GEMM.
struct StateSlots {
  int64_t T;
  bool reverse;
  int64_t prev(int64_t t) const { return reverse ? t + 1 : t; }
  int64_t next(int64_t t) const { return reverse ? t : t + 1; }
  int64_t initial() const { return reverse ? T : 0; }
  int64_t final() const { return reverse ? 0 : T; }
  int64_t first_prev_row_block() const { return reverse ? 1 : 0; }  // slot of "prev" for t = 0
};

inline int64_t time_at(const LayerShape& s, int64_t step) {
  return s.reverse ? s.T - 1 - step : step;
}

inline bool is_padding(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths != nullptr && t >= lengths[b];
}

template <Cell kCell>
int64_t saved_acts_width(int64_t H) { return CellMath<kCell>::kSaved * H; }

// Reserve layout, in elements: hs | cs (LSTM) | acts.
template <typename scalar_t, Cell kCell>
struct ReserveView {
  scalar_t* hs;
  scalar_t* cs;
  scalar_t* acts;
  ReserveView(scalar_t* base, const LayerShape& s) : hs(nullptr), cs(nullptr), acts(nullptr) {
    if (base == nullptr) return;  // inference: nothing is saved
    const int64_t state = (s.T + 1) * s.B * s.H;
    hs = base;
    cs = has_cell_state(kCell) ? base + state : nullptr;
    acts = base + (has_cell_state(kCell) ? 2 : 1) * state;
  }
};

// Fill each of `rows` rows of `dst` (width n) with `row`.
template <typename scalar_t>
void broadcast_rows(scalar_t* dst, const scalar_t* row, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * n, row, n * sizeof(scalar_t));
}

// ---- the pointwise pass of one step over the whole batch, per instruction set --------------

template <typename T>
struct ForwardStep {
  int64_t B, H, t;
  const int64_t* lengths;   // (B) or nullptr
  const T* xp_t;            // (B, G*H) input pre-activations of step t
  const T* hp;              // (B, G*H) recurrent pre-activations
  const T* h_prev;          // (B, H)
  const T* c_prev;          // (B, H) LSTM
  T* h_new;                 // (B, H)
  T* c_new;                 // (B, H) LSTM
  T* y_t;                   // (B, H)
  T* acts_t;                // (B, S*H) saved activations, or nullptr (inference)
};

template <typename T, Cell kCell>
FASTRNN_INLINE void forward_step_body(const ForwardStep<T>& s) {
  using Math = CellMath<kCell>;
  const int64_t H = s.H, GH = Math::kGates * H, SH = Math::kSaved * H;
  constexpr bool kC = has_cell_state(kCell);
  for (int64_t b = 0; b < s.B; ++b) {
    const int64_t row = b * H;
    if (is_padding(s.lengths, b, s.t)) {  // state carried through, output zero
      std::memcpy(s.h_new + row, s.h_prev + row, H * sizeof(T));
      if (kC) std::memcpy(s.c_new + row, s.c_prev + row, H * sizeof(T));
      std::fill(s.y_t + row, s.y_t + row + H, T(0));
      continue;
    }
    StepRow<T> r{s.xp_t + b * GH, s.hp + b * GH, s.h_prev + row,
                 kC ? s.c_prev + row : nullptr, s.h_new + row, kC ? s.c_new + row : nullptr,
                 s.acts_t && SH ? s.acts_t + b * SH : nullptr};
    Math::forward(H, r);
    std::memcpy(s.y_t + row, s.h_new + row, H * sizeof(T));
  }
}

template <typename T>
struct BackwardStep {
  int64_t B, H, t;
  const int64_t* lengths;
  const T* dy_t;            // (B, H)
  const T* dh_next;         // (B, H) gradient of h after step t from later steps
  const T* dc_next;         // (B, H) LSTM
  T* dh_total;              // (B, H) scratch: dy_t + dh_next
  const T* acts_t;          // (B, S*H)
  const T* h_prev;          // (B, H)
  const T* h_new;           // (B, H)
  const T* c_prev;          // (B, H) LSTM
  const T* c_new;           // (B, H) LSTM
  T* dgx_t;                 // (B, G*H) out
  T* dgh_t;                 // (B, G*H) out (== dgx_t unless GRU)
  T* dh_prev;               // (B, H) out: the part of dh_prev that bypasses W_hh
  T* dc_prev;               // (B, H) out, LSTM
};

template <typename T, Cell kCell>
FASTRNN_INLINE void backward_step_body(const BackwardStep<T>& s) {
  using Math = CellMath<kCell>;
  const int64_t H = s.H, GH = Math::kGates * H, SH = Math::kSaved * H;
  constexpr bool kC = has_cell_state(kCell);
  for (int64_t b = 0; b < s.B; ++b) {
    const int64_t row = b * H;
    T* dgx_row = s.dgx_t + b * GH;
    T* dgh_row = s.dgh_t + b * GH;
    if (is_padding(s.lengths, b, s.t)) {  // the state passed through unchanged
      std::fill(dgx_row, dgx_row + GH, T(0));
      if (Math::kDistinctGradH) std::fill(dgh_row, dgh_row + GH, T(0));
      std::memcpy(s.dh_prev + row, s.dh_next + row, H * sizeof(T));
      if (kC) std::memcpy(s.dc_prev + row, s.dc_next + row, H * sizeof(T));
      continue;
    }
    T* FASTRNN_RESTRICT dh_total = s.dh_total + row;
    const T* FASTRNN_RESTRICT dy = s.dy_t + row;
    const T* FASTRNN_RESTRICT dh_next = s.dh_next + row;
    FASTRNN_IVDEP
    for (int64_t j = 0; j < H; ++j) dh_total[j] = dy[j] + dh_next[j];
    StepGradRow<T> g{dh_total, kC ? s.dc_next + row : nullptr,
                     SH ? s.acts_t + b * SH : nullptr, s.h_prev + row,
                     kC ? s.c_prev + row : nullptr, s.h_new + row,
                     kC ? s.c_new + row : nullptr, dgx_row, dgh_row, s.dh_prev + row,
                     kC ? s.dc_prev + row : nullptr};
    Math::backward(H, g);
  }
}

// Kernels for run_on_isa (isa.h): the same inlined body compiled per instruction set.
template <typename T, Cell C>
struct ForwardStepKernel {
  static FASTRNN_INLINE void run(const ForwardStep<T>& s) { forward_step_body<T, C>(s); }
};
template <typename T, Cell C>
struct BackwardStepKernel {
  static FASTRNN_INLINE void run(const BackwardStep<T>& s) { backward_step_body<T, C>(s); }
};

// ---- the sequence driver ------------------------------------------------------------------

template <typename scalar_t, Cell kCell>
void forward_impl(const ForwardArgs<scalar_t>& a) {
  using Math = CellMath<kCell>;
  const LayerShape& s = a.shape;
  const int64_t T = s.T, B = s.B, I = s.I, H = s.H, GH = Math::kGates * H;
  const bool training = a.reserve != nullptr;
  const bool has_bias = a.b_ih != nullptr;
  const Isa isa = active_isa();
  DenormalsAreZero ftz;

  // Workspace: Xp (T*B*GH) | Hp (B*GH) | bias row (GH) | inference ping-pong states (4*B*H).
  scalar_t* xp = a.workspace;
  scalar_t* hp = xp + T * B * GH;
  scalar_t* bias_x = hp + B * GH;
  scalar_t* pingpong = bias_x + GH;

  // 1. Input projection for every step at once. All biases fold into Xp except GRU's b_hn,
  //    which must stay inside r * (W_hn h + b_hn): GRU adds b_hh to Hp instead.
  if (has_bias) {
    for (int64_t k = 0; k < GH; ++k)
      bias_x[k] = a.b_ih[k] + (Math::kDistinctGradH ? scalar_t(0) : a.b_hh[k]);
    broadcast_rows(xp, bias_x, T * B, GH);
  }
  gemm<scalar_t>(false, true, T * B, GH, I, 1, a.x, I, a.w_ih, I, has_bias ? 1 : 0, xp, GH);

  const StateSlots slots{T, s.reverse};
  ReserveView<scalar_t, kCell> rv(a.reserve, s);
  const int64_t acts_width = saved_acts_width<kCell>(H);
  auto h_slot = [&](int64_t slot) {
    return training ? rv.hs + slot * B * H : pingpong + (slot & 1) * B * H;
  };
  auto c_slot = [&](int64_t slot) {
    return training ? rv.cs + slot * B * H : pingpong + (2 + (slot & 1)) * B * H;
  };
  std::memcpy(h_slot(slots.initial()), a.h0, B * H * sizeof(scalar_t));
  if (has_cell_state(kCell)) std::memcpy(c_slot(slots.initial()), a.c0, B * H * sizeof(scalar_t));

  // 2. The recurrence.
  const bool hp_has_bias = Math::kDistinctGradH && has_bias;
  for (int64_t step = 0; step < T; ++step) {
    const int64_t t = time_at(s, step);
    const scalar_t* h_prev = h_slot(slots.prev(t));
    scalar_t* h_new = h_slot(slots.next(t));
    const scalar_t* c_prev = has_cell_state(kCell) ? c_slot(slots.prev(t)) : nullptr;
    scalar_t* c_new = has_cell_state(kCell) ? c_slot(slots.next(t)) : nullptr;
    if (hp_has_bias) broadcast_rows(hp, a.b_hh, B, GH);
    gemm<scalar_t>(false, true, B, GH, H, 1, h_prev, H, a.w_hh, H, hp_has_bias ? 1 : 0, hp, GH);

    run_on_isa<ForwardStepKernel<scalar_t, kCell>>(
        isa, ForwardStep<scalar_t>{B, H, t, a.lengths, xp + t * B * GH, hp, h_prev, c_prev, h_new,
                              c_new, a.y + t * B * H,
                              training ? rv.acts + t * B * acts_width : nullptr});
  }
  std::memcpy(a.h_n, h_slot(slots.final()), B * H * sizeof(scalar_t));
  if (has_cell_state(kCell)) std::memcpy(a.c_n, c_slot(slots.final()), B * H * sizeof(scalar_t));
}

// Column sums of a (rows x n) matrix into out (n), accumulated in double for float inputs.
template <typename scalar_t>
void column_sums(const scalar_t* m, int64_t rows, int64_t n, scalar_t* out) {
  std::vector<double> acc(n, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < n; ++k) acc[k] += m[r * n + k];
  for (int64_t k = 0; k < n; ++k) out[k] = static_cast<scalar_t>(acc[k]);
}

template <typename scalar_t, Cell kCell>
void backward_impl(const BackwardArgs<scalar_t>& a) {
  using Math = CellMath<kCell>;
  const LayerShape& s = a.shape;
  const int64_t T = s.T, B = s.B, I = s.I, H = s.H, GH = Math::kGates * H;
  const Isa isa = active_isa();
  DenormalsAreZero ftz;

  // Workspace: dGx (T*B*GH) | dGh (T*B*GH, GRU only) | dh ping-pong (2*B*H) | dc ping-pong
  // (2*B*H) | dh total (B*H).
  scalar_t* dgx = a.workspace;
  scalar_t* dgh = Math::kDistinctGradH ? dgx + T * B * GH : dgx;
  scalar_t* dh_buf = dgx + (Math::kDistinctGradH ? 2 : 1) * T * B * GH;
  scalar_t* dh_next = dh_buf;
  scalar_t* dh_prev = dh_buf + B * H;
  scalar_t* dc_next = dh_buf + 2 * B * H;
  scalar_t* dc_prev = dh_buf + 3 * B * H;
  scalar_t* dh_total = dh_buf + 4 * B * H;

  const size_t state_bytes = B * H * sizeof(scalar_t);
  if (a.dh_n) std::memcpy(dh_next, a.dh_n, state_bytes);
  else std::fill(dh_next, dh_next + B * H, scalar_t(0));
  if (has_cell_state(kCell)) {
    if (a.dc_n) std::memcpy(dc_next, a.dc_n, state_bytes);
    else std::fill(dc_next, dc_next + B * H, scalar_t(0));
  }

  const StateSlots slots{T, s.reverse};
  ReserveView<scalar_t, kCell> rv(a.reserve, s);
  const int64_t acts_width = saved_acts_width<kCell>(H);

  for (int64_t step = T - 1; step >= 0; --step) {
    const int64_t t = time_at(s, step);
    const scalar_t* h_prev = rv.hs + slots.prev(t) * B * H;
    const scalar_t* h_new = rv.hs + slots.next(t) * B * H;
    const scalar_t* c_prev = has_cell_state(kCell) ? rv.cs + slots.prev(t) * B * H : nullptr;
    const scalar_t* c_new = has_cell_state(kCell) ? rv.cs + slots.next(t) * B * H : nullptr;
    run_on_isa<BackwardStepKernel<scalar_t, kCell>>(
        isa, BackwardStep<scalar_t>{B, H, t, a.lengths, a.dy + t * B * H, dh_next, dc_next, dh_total,
                               rv.acts + t * B * acts_width, h_prev, h_new, c_prev, c_new,
                               dgx + t * B * GH, dgh + t * B * GH, dh_prev, dc_prev});
    // dh_prev (holding the direct part) += dGh_t W_hh
    gemm<scalar_t>(false, false, B, H, GH, 1, dgh + t * B * GH, GH, a.w_hh, H, 1, dh_prev, H);
    std::swap(dh_next, dh_prev);
    if (has_cell_state(kCell)) std::swap(dc_next, dc_prev);
  }
  std::memcpy(a.dh0, dh_next, state_bytes);
  if (has_cell_state(kCell)) std::memcpy(a.dc0, dc_next, state_bytes);

  // Gradients of everything applied to all steps at once.
  const int64_t rows = T * B;
  gemm<scalar_t>(false, false, rows, I, GH, 1, dgx, GH, a.w_ih, I, a.accumulate_dx ? 1 : 0, a.dx, I);
  gemm<scalar_t>(true, false, GH, I, rows, 1, dgx, GH, a.x, I, 0, a.dw_ih, I);
  const scalar_t* h_prev_rows = rv.hs + slots.first_prev_row_block() * B * H;
  gemm<scalar_t>(true, false, GH, H, rows, 1, dgh, GH, h_prev_rows, H, 0, a.dw_hh, H);
  if (a.db_ih) column_sums(dgx, rows, GH, a.db_ih);
  if (a.db_hh) column_sums(dgh, rows, GH, a.db_hh);
}

inline int64_t saved_width(Cell cell, int64_t H) {
  switch (cell) {
    case Cell::RnnTanh: return saved_acts_width<Cell::RnnTanh>(H);
    case Cell::RnnRelu: return saved_acts_width<Cell::RnnRelu>(H);
    case Cell::Lstm: return saved_acts_width<Cell::Lstm>(H);
    case Cell::Gru: return saved_acts_width<Cell::Gru>(H);
  }
  throw std::invalid_argument("fastrnn: unknown cell kind");
}

// Dispatch on the cell; every switch ends in a thrown error.
template <typename scalar_t>
void dispatch_forward(const ForwardArgs<scalar_t>& a) {
  switch (a.shape.cell) {
    case Cell::RnnTanh: return forward_impl<scalar_t, Cell::RnnTanh>(a);
    case Cell::RnnRelu: return forward_impl<scalar_t, Cell::RnnRelu>(a);
    case Cell::Lstm: return forward_impl<scalar_t, Cell::Lstm>(a);
    case Cell::Gru: return forward_impl<scalar_t, Cell::Gru>(a);
  }
  throw std::invalid_argument("fastrnn: unknown cell kind");
}

template <typename scalar_t>
void dispatch_backward(const BackwardArgs<scalar_t>& a) {
  switch (a.shape.cell) {
    case Cell::RnnTanh: return backward_impl<scalar_t, Cell::RnnTanh>(a);
    case Cell::RnnRelu: return backward_impl<scalar_t, Cell::RnnRelu>(a);
    case Cell::Lstm: return backward_impl<scalar_t, Cell::Lstm>(a);
    case Cell::Gru: return backward_impl<scalar_t, Cell::Gru>(a);
  }
  throw std::invalid_argument("fastrnn: unknown cell kind");
}

}  // namespace fastrnn::cpu
