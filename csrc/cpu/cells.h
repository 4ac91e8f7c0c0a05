// One cell's pointwise math, forward and backward, for one batch row of one step, and the traits
// that tell the drivers (layer_impl.h, recurrence.h, step.h) everything else they need to know
// about the cell. This is the only place in the CPU core where a cell's equations or structure
// are written; the drivers name no cell. The CUDA backend's counterpart is cuda/cell_math.cuh.
//
// Forward inputs are full pre-activations with biases already folded in by the driver:
//   xp = W_ih x + b_ih (+ b_hh where kFoldsRecurrentBias),  hp = W_hh h (+ b_hh otherwise).
// Backward produces the gradients of those pre-activations: dgx (for W_ih, b_ih and x) and
// dgh (for W_hh, b_hh and h). They differ only in the gate kRecurrentGradGate (GRU's n, where
// hp_n is scaled by r): the cell writes that one gate's dgh (dgh_n = dn * r) and the driver takes
// the others from dgx.
// Derivatives are written from saved outputs (dtanh = 1 - y^2, dsigmoid = s (1 - s)).
// Everything is force-inlined into the per-ISA step functions of layer_impl.h, where the j loops
// are vectorised for the instruction set that the CPU offers.
//
// Traits of every CellMath<kCell> (the drivers' whole knowledge of a cell):
//   kName, kGates, kHasCellState
//                        what the cell is (CellInfo, fastrnn/cell.h): its name, G, and whether it
//                        carries a cell state c (then c_prev/c_new, the reserve's cs, dc exist)
//   kSaved               activations saved per hidden unit and step: the reserve's acts rows
//                        are kSaved * H wide (0: the derivative comes from h_new itself)
//   kRecurrentGradGate   the gate whose recurrent pre-activation the cell scales (GRU's n:
//                        tanh(xp_n + r * hp_n)), or -1. Its recurrent gradient dgh differs from
//                        its input gradient dgx: the cell writes it to StepGradRow::dgh, and the
//                        driver takes that gate's rows of dW_hh and db_hh, and its share of
//                        dh_prev, from dgh. It must be the last gate (the driver takes the gates
//                        before it from dgx in one product).
//   kRecurrentGradDiffers
//                        kRecurrentGradGate >= 0: some gate's dgh differs, so dgh has a buffer
//   kFoldsRecurrentBias  b_hh is added into the input pre-activation's bias (xp = W_ih x + b_ih
//                        + b_hh, one GEMM bias for both). Not where a gate's hp is scaled by the
//                        cell (GRU): then all of b_hh goes into hp, added to W_hh h.
//   kReadsHPrev          the cell reads h_prev itself, not only through W_hh (GRU's z * h): its
//                        backward writes the part of dh_prev that bypasses W_hh
//                        (StepGradRow::dh_direct); for the other cells the driver zeroes it.
#pragma once

#include <cstdint>

#include "cpu/activations.h"
#include "fastrnn/fastrnn.h"

namespace fastrnn::cpu {

// Per-step row views passed to the cell functions, for n consecutive hidden units j of one batch
// row. Gate g of unit j is at [g * H + j] in acts and dgx (the layer's own layouts), and at
// [g * xs + j] in xp, [g * hs + j] in hp: full rows (stride H) or a micro-kernel's tile.
template <typename scalar_t>
struct StepRow {
  const scalar_t* xp;      // (G*xs) input pre-activation incl. bias
  const scalar_t* hp;      // (G*hs) recurrent pre-activation (incl. b_hh unless folded into xp)
  const scalar_t* h_prev;  // (H)
  const scalar_t* c_prev;  // (H) kHasCellState only
  scalar_t* h_new;         // (H) the cell output (LSTM with projection: o*tanh(c), before W_hr)
  scalar_t* c_new;         // (H) kHasCellState only
  scalar_t* acts;          // (S*H) saved activations, or nullptr in inference
};

template <typename scalar_t>
struct StepGradRow {
  const scalar_t* dh;      // (H) total gradient of the cell output o*tanh(c) / h_new (before any
                           // LSTM projection): dy + gradient from the next step
  const scalar_t* dc;      // (H) gradient of c_new from the next step (kHasCellState)
  const scalar_t* acts;    // (S*H) saved activations
  const scalar_t* h_prev;  // (H)
  const scalar_t* c_prev;  // (H) kHasCellState
  const scalar_t* h_new;   // (H) vanilla derivatives come from the output
  const scalar_t* c_new;   // (H) kHasCellState
  scalar_t* dgx;           // (G*H) out
  scalar_t* dgh;           // (H) out, kRecurrentGradDiffers only: that gate's dgh (GRU: dn * r)
  scalar_t* dh_direct;     // (H) out, kReadsHPrev only (GRU's z*dh): gradient of h_prev that
                           // bypasses W_hh; the driver zeroes it for the other cells
  scalar_t* dc_prev;       // (H) out, kHasCellState
};

template <Cell kCell>
struct CellMath;

// The traits' defaults, for a cell with none of the special paths; every CellMath derives from it
// (kSaved has no default: each cell states it).
template <Cell kCell>
struct CellTraitDefaults : CellInfo<kCell> {
  static constexpr int kRecurrentGradGate = -1;
  static constexpr bool kRecurrentGradDiffers = false;
  static constexpr bool kFoldsRecurrentBias = true;
  static constexpr bool kReadsHPrev = false;
};

// Training saves the activations, inference does not: the cell's loop (Derived::forward_rows)
// is instantiated twice so that neither copy carries a branch, which would stop vectorisation.
template <typename Derived>
struct SavingForward {
  template <typename scalar_t>
  static FASTRNN_INLINE void forward(int64_t n, int64_t H, int64_t xs, int64_t hs,
                                     const StepRow<scalar_t>& r) {
    if (r.acts) Derived::template forward_rows<true>(n, H, xs, hs, r);
    else Derived::template forward_rows<false>(n, H, xs, hs, r);
  }
};

template <Cell kCell>
struct VanillaMath : CellTraitDefaults<kCell> {
  static constexpr int kSaved = 0;  // the derivative comes from h_new

  template <typename scalar_t>
  static FASTRNN_INLINE scalar_t activate(scalar_t a) {
    if constexpr (kCell == Cell::RnnTanh) return fast_tanh(a);
    else return a < scalar_t(0) ? scalar_t(0) : a;  // NaN propagates, as in NumPy and PyTorch
  }
  // d(pre-activation) from dh and the output y. relu's is a select, as torch applies it: exactly
  // 0 where y <= 0 (so an Inf or NaN dh there gives 0, not 0 * Inf = NaN), dh elsewhere (a NaN y
  // included).
  template <typename scalar_t>
  static FASTRNN_INLINE scalar_t gradient_through(scalar_t y, scalar_t dh) {
    if constexpr (kCell == Cell::RnnTanh) return dh * (scalar_t(1) - y * y);
    else return y <= scalar_t(0) ? scalar_t(0) : dh;
  }

  template <typename scalar_t>
  static FASTRNN_INLINE void forward(int64_t n, int64_t /*H*/, int64_t /*xs*/, int64_t /*hs*/,
                                     const StepRow<scalar_t>& r) {
    const scalar_t* FASTRNN_RESTRICT xp = r.xp;
    const scalar_t* FASTRNN_RESTRICT hp = r.hp;
    scalar_t* FASTRNN_RESTRICT h_new = r.h_new;
    FASTRNN_IVDEP
    for (int64_t j = 0; j < n; ++j) h_new[j] = activate(xp[j] + hp[j]);
  }
  template <typename scalar_t>
  static FASTRNN_INLINE void backward(int64_t n, int64_t /*H*/, const StepGradRow<scalar_t>& g) {
    const scalar_t* FASTRNN_RESTRICT dh = g.dh;
    const scalar_t* FASTRNN_RESTRICT h_new = g.h_new;
    scalar_t* FASTRNN_RESTRICT dgx = g.dgx;
    FASTRNN_IVDEP
    for (int64_t j = 0; j < n; ++j) dgx[j] = gradient_through(h_new[j], dh[j]);
  }
};

template <> struct CellMath<Cell::RnnTanh> : VanillaMath<Cell::RnnTanh> {};
template <> struct CellMath<Cell::RnnRelu> : VanillaMath<Cell::RnnRelu> {};

// LSTM, gate order i, f, g, o. Saved: i, f, g, o activations.
template <>
struct CellMath<Cell::Lstm> : CellTraitDefaults<Cell::Lstm>, SavingForward<CellMath<Cell::Lstm>> {
  static constexpr int kSaved = 4;

  template <bool kSave, typename scalar_t>
  static FASTRNN_INLINE void forward_rows(int64_t n, int64_t H, int64_t xs, int64_t hs,
                                          const StepRow<scalar_t>& r) {
    const scalar_t* FASTRNN_RESTRICT xp = r.xp;
    const scalar_t* FASTRNN_RESTRICT hp = r.hp;
    const scalar_t* FASTRNN_RESTRICT c_prev = r.c_prev;
    scalar_t* FASTRNN_RESTRICT c_new = r.c_new;
    scalar_t* FASTRNN_RESTRICT h_new = r.h_new;
    scalar_t* FASTRNN_RESTRICT acts = r.acts;
    FASTRNN_IVDEP
    for (int64_t j = 0; j < n; ++j) {
      const scalar_t i = fast_sigmoid(xp[j] + hp[j]);
      const scalar_t f = fast_sigmoid(xp[xs + j] + hp[hs + j]);
      const scalar_t g = fast_tanh(xp[2 * xs + j] + hp[2 * hs + j]);
      const scalar_t o = fast_sigmoid(xp[3 * xs + j] + hp[3 * hs + j]);
      const scalar_t c = f * c_prev[j] + i * g;
      c_new[j] = c;
      h_new[j] = o * fast_tanh(c);
      if constexpr (kSave) {
        acts[j] = i;
        acts[H + j] = f;
        acts[2 * H + j] = g;
        acts[3 * H + j] = o;
      }
    }
  }
  template <typename scalar_t>
  static FASTRNN_INLINE void backward(int64_t n, int64_t H, const StepGradRow<scalar_t>& g) {
    const scalar_t* FASTRNN_RESTRICT acts = g.acts;
    const scalar_t* FASTRNN_RESTRICT dh = g.dh;
    const scalar_t* FASTRNN_RESTRICT dc_next = g.dc;
    const scalar_t* FASTRNN_RESTRICT c_prev = g.c_prev;
    const scalar_t* FASTRNN_RESTRICT c_new = g.c_new;
    scalar_t* FASTRNN_RESTRICT dgx = g.dgx;
    scalar_t* FASTRNN_RESTRICT dc_prev = g.dc_prev;
    FASTRNN_IVDEP
    for (int64_t j = 0; j < n; ++j) {
      const scalar_t i = acts[j], f = acts[H + j], gg = acts[2 * H + j], o = acts[3 * H + j];
      const scalar_t tc = fast_tanh(c_new[j]);
      const scalar_t dc = dc_next[j] + dh[j] * o * (scalar_t(1) - tc * tc);
      dgx[j] = dc * gg * i * (scalar_t(1) - i);
      dgx[H + j] = dc * c_prev[j] * f * (scalar_t(1) - f);
      dgx[2 * H + j] = dc * i * (scalar_t(1) - gg * gg);
      dgx[3 * H + j] = dh[j] * tc * o * (scalar_t(1) - o);
      dc_prev[j] = dc * f;
    }
  }
};

// GRU, gate order r, z, n; reset applied after the hidden matmul. Saved: r, z, n, hp_n.
template <>
struct CellMath<Cell::Gru> : CellTraitDefaults<Cell::Gru>, SavingForward<CellMath<Cell::Gru>> {
  static constexpr int kSaved = 4;
  static constexpr int kRecurrentGradGate = 2;        // n = tanh(xp_n + r * hp_n)
  static constexpr bool kRecurrentGradDiffers = true;
  static constexpr bool kFoldsRecurrentBias = false;  // b_hn must stay inside r * (...)
  static constexpr bool kReadsHPrev = true;           // h' = (1 - z) * n + z * h

  template <bool kSave, typename scalar_t>
  static FASTRNN_INLINE void forward_rows(int64_t n, int64_t H, int64_t xs, int64_t hs,
                                          const StepRow<scalar_t>& r) {
    const scalar_t* FASTRNN_RESTRICT xp = r.xp;
    const scalar_t* FASTRNN_RESTRICT hp = r.hp;
    const scalar_t* FASTRNN_RESTRICT h_prev = r.h_prev;
    scalar_t* FASTRNN_RESTRICT h_new = r.h_new;
    scalar_t* FASTRNN_RESTRICT acts = r.acts;
    FASTRNN_IVDEP
    for (int64_t j = 0; j < n; ++j) {
      const scalar_t rr = fast_sigmoid(xp[j] + hp[j]);
      const scalar_t z = fast_sigmoid(xp[xs + j] + hp[hs + j]);
      const scalar_t hn = hp[2 * hs + j];
      const scalar_t cand = fast_tanh(xp[2 * xs + j] + rr * hn);  // the candidate state, gate n
      h_new[j] = (scalar_t(1) - z) * cand + z * h_prev[j];
      if constexpr (kSave) {
        acts[j] = rr;
        acts[H + j] = z;
        acts[2 * H + j] = cand;
        acts[3 * H + j] = hn;
      }
    }
  }
  template <typename scalar_t>
  static FASTRNN_INLINE void backward(int64_t n, int64_t H, const StepGradRow<scalar_t>& g) {
    const scalar_t* FASTRNN_RESTRICT acts = g.acts;
    const scalar_t* FASTRNN_RESTRICT dh_in = g.dh;
    const scalar_t* FASTRNN_RESTRICT h_prev = g.h_prev;
    scalar_t* FASTRNN_RESTRICT dgx = g.dgx;
    scalar_t* FASTRNN_RESTRICT dgh = g.dgh;
    scalar_t* FASTRNN_RESTRICT dh_direct = g.dh_direct;
    FASTRNN_IVDEP
    for (int64_t j = 0; j < n; ++j) {
      const scalar_t rr = acts[j], z = acts[H + j], cand = acts[2 * H + j], hn = acts[3 * H + j];
      const scalar_t dh = dh_in[j];
      const scalar_t dn = dh * (scalar_t(1) - z) * (scalar_t(1) - cand * cand);
      const scalar_t dz = dh * (h_prev[j] - cand) * z * (scalar_t(1) - z);
      const scalar_t dr = dn * hn * rr * (scalar_t(1) - rr);
      dgx[j] = dr;
      dgx[H + j] = dz;
      dgx[2 * H + j] = dn;
      dgh[j] = dn * rr;
      dh_direct[j] = dh * z;
    }
  }
};

// The traits agree with one another and with what the drivers assume.
#define FASTRNN_CPU_CHECK_CELL_TRAITS(name)                                                   \
  static_assert(CellMath<Cell::name>::kRecurrentGradDiffers ==                                \
                    (CellMath<Cell::name>::kRecurrentGradGate >= 0),                          \
                "CellMath<" #name ">::kRecurrentGradDiffers disagrees with kRecurrentGradGate"); \
  static_assert(CellMath<Cell::name>::kRecurrentGradDiffers ==                                \
                    CellInfo<Cell::name>::kScalesRecurrentGate,                               \
                "CellMath<" #name ">::kRecurrentGradDiffers disagrees with CellInfo");        \
  static_assert(!CellMath<Cell::name>::kRecurrentGradDiffers ||                               \
                    CellMath<Cell::name>::kRecurrentGradGate == CellMath<Cell::name>::kGates - 1, \
                "CellMath<" #name ">::kRecurrentGradGate must be the last gate");             \
  static_assert(!(CellMath<Cell::name>::kFoldsRecurrentBias &&                                \
                  CellMath<Cell::name>::kRecurrentGradDiffers),                               \
                "CellMath<" #name ">: b_hh cannot fold into xp when the cell scales hp");
FASTRNN_CELLS(FASTRNN_CPU_CHECK_CELL_TRAITS)
#undef FASTRNN_CPU_CHECK_CELL_TRAITS

}  // namespace fastrnn::cpu
