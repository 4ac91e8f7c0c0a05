// One step's pointwise work, shared by the two recurrence drivers (the team one in recurrence.h,
// the per-step BLAS one in layer_impl.h): the per-step argument structs, the state slots and the
// reserve layout, and the fused passes over ranges of batch rows and hidden units.
#pragma once

#include <algorithm>
#include <cstring>

#include "cpu/blas.h"
#include "cpu/cells.h"
#include "fastrnn/fastrnn.h"

namespace fastrnn::cpu {

// Which of the T+1 state slots the step at time t reads and writes. States are kept in time
// order: forward runs slot t -> t+1 (h0 in slot 0), reverse runs slot t+1 -> t (h0 in slot T).
// The rows of "state before step t" for all t are then contiguous in the reserve, which makes
// dW_hh one GEMM.
struct SlotOrder {
  int64_t T;
  bool reverse;
  int64_t prev(int64_t t) const { return reverse ? t + 1 : t; }
  int64_t next(int64_t t) const { return reverse ? t : t + 1; }
  int64_t initial() const { return reverse ? T : 0; }
  int64_t final() const { return reverse ? 0 : T; }
  int64_t first_prev_row_block() const { return reverse ? 1 : 0; }  // slot of "prev" for t = 0
};

// The storage of one recurrent state (h, or c where the cell has one) across a layer's walk,
// slot by slot (SlotOrder). Training: the reserve's T+1 slots (ReserveLayout's hs and cs).
// Inference: two ping-pong buffers in the workspace, slot i in buffer i & 1. The CUDA backend's
// StateSlots (cuda/step_kernels.cuh) is the same idea, holding h and c together.
template <typename scalar_t>
struct StateSlots {
  scalar_t* base;
  int64_t slot_elems;  // B * R for h, B * H for c
  bool ping_pong;
  scalar_t* at(int64_t slot) const { return base + (ping_pong ? (slot & 1) : slot) * slot_elems; }
};

inline int64_t time_at(const LayerShape& s, int64_t step) {
  return s.reverse ? s.T - 1 - step : step;
}

inline bool is_padding(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths != nullptr && t >= lengths[b];
}

// Where state resets (ForwardArgs::resets) start a segment, as the kernels read them: fresh[t*B+b]
// says that the state entering step t of row b is zeros (common/resets.h has the rule, lengths
// and the walk's direction folded in), or nullptr when no step starts fresh. The state slots keep
// the carried states (the reserve's layout does not change); the kernels read `zeros` in place
// of the state entering a fresh step, and the pre-activations of a zero state (b_hh, or zeros)
// in place of its recurrent product.
struct FreshSteps {
  const uint8_t* fresh = nullptr;
  int64_t B = 0;
  bool at(int64_t t, int64_t b) const { return fresh != nullptr && fresh[t * B + b] != 0; }
};

template <Cell kCell>
int64_t saved_acts_width(int64_t H) { return CellMath<kCell>::kSaved * H; }

// How the reserve is cut into sections, in elements: hs (T+1,B,R) | cs (T+1,B,H), kHasCellState |
// acts (T,B,S*H) | ms (T,B,H), LSTM with projection. Pointers into one call's reserve.
template <typename scalar_t, Cell kCell>
struct ReserveLayout {
  scalar_t* hs = nullptr;
  scalar_t* cs = nullptr;
  scalar_t* acts = nullptr;
  scalar_t* ms = nullptr;
  ReserveLayout(scalar_t* base, const LayerShape& s) {
    if (base == nullptr) return;  // inference: nothing is saved
    hs = base;
    scalar_t* next = hs + (s.T + 1) * s.B * s.R();
    if (CellMath<kCell>::kHasCellState) {
      cs = next;
      next += (s.T + 1) * s.B * s.H;
    }
    acts = next;
    next += s.T * s.B * saved_acts_width<kCell>(s.H);
    if (s.P > 0) ms = next;
  }
  static ReserveWidths widths(const LayerShape& s) {
    return {s.R() + (CellMath<kCell>::kHasCellState ? s.H : 0),
            saved_acts_width<kCell>(s.H) + (s.P > 0 ? s.H : 0)};
  }
};

// Fill each of `rows` rows of `dst` (width n) with `row`.
template <typename scalar_t>
void broadcast_rows(scalar_t* dst, const scalar_t* row, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * n, row, n * sizeof(scalar_t));
}

// ---- the pointwise pass of one step over the whole batch, per instruction set --------------

template <typename scalar_t>
struct ForwardStep {
  int64_t B, H, R, t;
  const int64_t* lengths;   // (B) or nullptr
  const scalar_t* xp_t;     // (B, G*H) input pre-activations of step t
  const scalar_t* hp;       // (B, G*H) recurrent pre-activations
  const scalar_t* h_prev;   // (B, R)
  const scalar_t* c_prev;   // (B, H) kHasCellState
  scalar_t* h_new;          // (B, R)
  scalar_t* c_new;          // (B, H) kHasCellState
  scalar_t* y_t;            // (B, R)
  scalar_t* acts_t;         // (B, S*H) saved activations, or nullptr (inference)
  scalar_t* m;              // (B, H) LSTM with projection: o*tanh(c), else nullptr
  const scalar_t* hp_fresh; // (G*H) hp of a zero state, per-step path (Preactivations::hp_fresh)
  FreshSteps fresh;         // rows starting a segment at this step read zeros as their state
  const scalar_t* zeros;    // zeros, at least G*H + R long (when fresh.fresh is set)
};

// Where one step's pre-activations for a block of rows and units are: xp and hp point at
// (row b0, unit u, gate 0), rows *_ld apart and gates *s apart. Either full (B, G*H) matrices
// (ld = G*H, stride H) or a micro-kernel's tile.
template <typename scalar_t>
struct Preactivations {
  const scalar_t* xp;
  int64_t xp_ld, xs;
  const scalar_t* hp;
  int64_t hp_ld, hs;
  const scalar_t* hp_fresh;  // one row: the recurrent pre-activations of a zero state (b_hh where
                             // it goes into hp, else zeros), gates hs apart; read by fresh rows
};

// Rows [b0, b1) and hidden units [u, u + n) of one step, from the pre-activations in p.
// Without projection: the cell writes h_new, and y_t gets a copy (zeros at padded rows).
// With projection: the cell writes m (zeros at padded rows); project_step finishes the step.
template <typename scalar_t, Cell kCell>
FASTRNN_INLINE void forward_pointwise(const ForwardStep<scalar_t>& s, int64_t b0, int64_t b1,
                                      int64_t u, int64_t n, const Preactivations<scalar_t>& p) {
  using Math = CellMath<kCell>;
  const int64_t H = s.H, R = s.R, SH = Math::kSaved * H;
  constexpr bool kC = Math::kHasCellState;
  const bool projected = s.m != nullptr;
  for (int64_t b = b0; b < b1; ++b) {
    if (is_padding(s.lengths, b, s.t)) {  // state carried through, output zero
      if (kC) std::memcpy(s.c_new + b * H + u, s.c_prev + b * H + u, n * sizeof(scalar_t));
      if (projected) {
        std::fill_n(s.m + b * H + u, n, scalar_t(0));
      } else {
        std::memcpy(s.h_new + b * R + u, s.h_prev + b * R + u, n * sizeof(scalar_t));
        std::fill_n(s.y_t + b * R + u, n, scalar_t(0));
      }
      continue;
    }
    scalar_t* out = (projected ? s.m + b * H : s.h_new + b * H) + u;
    const bool fresh = s.fresh.at(s.t, b);  // the state entering this step is zeros
    StepRow<scalar_t> r{p.xp + (b - b0) * p.xp_ld, fresh ? p.hp_fresh : p.hp + (b - b0) * p.hp_ld,
                        fresh ? s.zeros : s.h_prev + b * R + u,
                        kC ? (fresh ? s.zeros : s.c_prev + b * H + u) : nullptr, out,
                        kC ? s.c_new + b * H + u : nullptr,
                        s.acts_t && SH ? s.acts_t + b * SH + u : nullptr};
    Math::forward(n, H, p.xs, p.hs, r);
    if (!projected) std::memcpy(s.y_t + b * H + u, out, n * sizeof(scalar_t));
  }
}

// LSTM projection, after the cell: h_new = m W_hr^T for valid rows, h_prev carried otherwise.
template <typename scalar_t>
void project_step(const ForwardStep<scalar_t>& s, const scalar_t* w_hr, scalar_t* h_proj) {
  gemm<scalar_t>(false, true, s.B, s.R, s.H, 1, s.m, s.H, w_hr, s.H, 0, h_proj, s.R);
  const size_t row_bytes = s.R * sizeof(scalar_t);
  for (int64_t b = 0; b < s.B; ++b) {
    if (is_padding(s.lengths, b, s.t)) {
      std::memcpy(s.h_new + b * s.R, s.h_prev + b * s.R, row_bytes);
      std::fill(s.y_t + b * s.R, s.y_t + (b + 1) * s.R, scalar_t(0));
    } else {
      std::memcpy(s.h_new + b * s.R, h_proj + b * s.R, row_bytes);
      std::memcpy(s.y_t + b * s.R, h_proj + b * s.R, row_bytes);
    }
  }
}

template <typename scalar_t>
struct BackwardStep {
  int64_t B, H, R, t;
  const int64_t* lengths;
  const scalar_t* dh_cell;  // (B, H) gradient of the cell output: dy_t + dh_next, or with
                            // projection (dy_t + dh_next) W_hr
  const scalar_t* dh_next;  // (B, R) gradient of h after step t from later steps
  const scalar_t* dc_next;  // (B, H) kHasCellState
  const scalar_t* acts_t;   // (B, S*H)
  const scalar_t* h_prev;   // (B, R)
  const scalar_t* h_new;    // (B, H) cell output (vanilla derivatives)
  const scalar_t* c_prev;   // (B, H) kHasCellState
  const scalar_t* c_new;    // (B, H) kHasCellState
  scalar_t* dgx_t;          // (B, G*H) out
  scalar_t* dgh_t;          // (B, H) out, kRecurrentGradDiffers only: that gate's dgh
  scalar_t* dh_prev;        // (B, R) out: the part of dh_prev that bypasses W_hh
  scalar_t* dc_prev;        // (B, H) out, kHasCellState
  FreshSteps fresh;         // rows whose entering state was zeros: they read zeros for h_prev
                            // and c_prev, and pass no gradient back (the caller zeroes their
                            // dh_prev after the recurrent product: zero_fresh_rows)
  const scalar_t* zeros;    // at least H long (when fresh.fresh is set)
};

// dh = dy_t + dh_next for valid rows, 0 for padded ones (their outputs are constants); rows
// [b0, b1), columns [u, u + n) of (B, R) matrices.
template <typename scalar_t>
FASTRNN_INLINE void total_output_grad(int64_t b0, int64_t b1, int64_t u, int64_t n, int64_t R,
                                      int64_t t, const int64_t* lengths, const scalar_t* dy_t,
                                      const scalar_t* dh_next, scalar_t* dh) {
  for (int64_t b = b0; b < b1; ++b) {
    scalar_t* FASTRNN_RESTRICT out = dh + b * R + u;
    if (is_padding(lengths, b, t)) {
      std::fill_n(out, n, scalar_t(0));
      continue;
    }
    const scalar_t* FASTRNN_RESTRICT dy = dy_t + b * R + u;
    const scalar_t* FASTRNN_RESTRICT next = dh_next + b * R + u;
    FASTRNN_IVDEP
    for (int64_t j = 0; j < n; ++j) out[j] = dy[j] + next[j];
  }
}

// Rows [b0, b1) and hidden units [u, u + n) of one step's pointwise backward; [ru, ru + rn) is
// the matching range of the (B, R) state gradients (the units themselves, or all of R when the
// whole row is done at once under a projection).
template <typename scalar_t, Cell kCell>
FASTRNN_INLINE void backward_pointwise(const BackwardStep<scalar_t>& s, int64_t b0, int64_t b1,
                                       int64_t u, int64_t n, int64_t ru, int64_t rn) {
  using Math = CellMath<kCell>;
  const int64_t H = s.H, R = s.R, GH = Math::kGates * H, SH = Math::kSaved * H;
  constexpr bool kC = Math::kHasCellState;
  for (int64_t b = b0; b < b1; ++b) {
    scalar_t* dgx_row = s.dgx_t + b * GH + u;
    scalar_t* dgh_row = Math::kRecurrentGradDiffers ? s.dgh_t + b * H + u : nullptr;
    if (is_padding(s.lengths, b, s.t)) {  // the state passed through unchanged
      for (int g = 0; g < Math::kGates; ++g) std::fill_n(dgx_row + g * H, n, scalar_t(0));
      if (Math::kRecurrentGradDiffers) std::fill_n(dgh_row, n, scalar_t(0));
      std::memcpy(s.dh_prev + b * R + ru, s.dh_next + b * R + ru, rn * sizeof(scalar_t));
      if (kC) std::memcpy(s.dc_prev + b * H + u, s.dc_next + b * H + u, n * sizeof(scalar_t));
      continue;
    }
    if (!Math::kReadsHPrev) std::fill_n(s.dh_prev + b * R + ru, rn, scalar_t(0));
    const bool fresh = s.fresh.at(s.t, b);
    StepGradRow<scalar_t> g{s.dh_cell + b * H + u, kC ? s.dc_next + b * H + u : nullptr,
                            SH ? s.acts_t + b * SH + u : nullptr,
                            fresh ? s.zeros : s.h_prev + b * R + u,
                            kC ? (fresh ? s.zeros : s.c_prev + b * H + u) : nullptr,
                            s.h_new + b * H + u, kC ? s.c_new + b * H + u : nullptr, dgx_row,
                            dgh_row, s.dh_prev + b * R + u, kC ? s.dc_prev + b * H + u : nullptr};
    Math::backward(n, H, g);
    if (kC && fresh) std::fill_n(s.dc_prev + b * H + u, n, scalar_t(0));
  }
}

// No gradient flows into a state that a reset replaced: zero the rows of dh_prev (columns
// [u, u + n) of a (B, R) matrix) whose step started fresh, once every contribution is in.
template <typename scalar_t>
FASTRNN_INLINE void zero_fresh_rows(const FreshSteps& fresh, int64_t t, int64_t B, int64_t R,
                                    int64_t u, int64_t n, scalar_t* dh_prev) {
  if (fresh.fresh == nullptr) return;
  for (int64_t b = 0; b < B; ++b)
    if (fresh.at(t, b)) std::fill_n(dh_prev + b * R + u, n, scalar_t(0));
}

template <typename scalar_t>
struct OutputGradStep {
  int64_t B, R, t;
  const int64_t* lengths;
  const scalar_t* dy_t;
  const scalar_t* dh_next;
  scalar_t* dh;
};

template <typename scalar_t>
struct OutputGradKernel {
  static FASTRNN_INLINE void run(const OutputGradStep<scalar_t>& s) {
    total_output_grad(0, s.B, 0, s.R, s.R, s.t, s.lengths, s.dy_t, s.dh_next, s.dh);
  }
};

// Kernels for run_on_isa (isa.h): the same inlined body compiled per instruction set.
template <typename scalar_t, Cell kCell>
struct ForwardStepKernel {
  static FASTRNN_INLINE void run(const ForwardStep<scalar_t>& s) {
    const int64_t GH = CellMath<kCell>::kGates * s.H;
    forward_pointwise<scalar_t, kCell>(
        s, 0, s.B, 0, s.H, Preactivations<scalar_t>{s.xp_t, GH, s.H, s.hp, GH, s.H, s.hp_fresh});
  }
};
template <typename scalar_t, Cell kCell>
struct BackwardStepKernel {
  static FASTRNN_INLINE void run(const BackwardStep<scalar_t>& s) {
    backward_pointwise<scalar_t, kCell>(s, 0, s.B, 0, s.H, 0, s.R);
  }
};

}  // namespace fastrnn::cpu
