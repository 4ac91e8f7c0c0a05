// One cell's pointwise math, forward and backward, for one batch row of one step.
// This is the only place in the CPU core where a cell's equations are written.
//
// Forward inputs are full pre-activations with biases already folded in by the driver:
//   xp = W_ih x + b_ih (+ b_hh for every cell but GRU),  hp = W_hh h (+ b_hh for GRU).
// Backward produces the gradients of those pre-activations: dgx (for W_ih, b_ih and x) and
// dgh (for W_hh, b_hh and h). They differ only in GRU's n gate, where hp_n is scaled by r, so
// GRU writes that one gate's dgh (dgh_n = dn * r) and the driver takes the others from dgx.
// Derivatives are written from saved outputs (dtanh = 1 - y^2, dsigmoid = s (1 - s)).
// Everything is force-inlined into the per-ISA step functions of layer_impl.h, where the j loops
// are vectorised for the instruction set that the CPU offers.
#pragma once

#include <cstdint>

#include "cpu/activations.h"
#include "fastrnn/fastrnn.h"

namespace fastrnn::cpu {

// Per-step row views passed to the cell functions, for n consecutive hidden units j of one batch
// row. Gate g of unit j is at [g * H + j] in acts and dgx (the layer's own layouts), and at
// [g * xs + j] in xp, [g * hs + j] in hp: full rows (stride H) or a micro-kernel's tile.
template <typename T>
struct StepRow {
  const T* xp;       // (G*xs) input pre-activation incl. bias
  const T* hp;       // (G*hs) recurrent pre-activation (incl. b_hh for GRU)
  const T* h_prev;   // (H)
  const T* c_prev;   // (H) LSTM only
  T* h_new;          // (H) the cell output (LSTM with projection: o*tanh(c), before W_hr)
  T* c_new;          // (H) LSTM only
  T* acts;           // (S*H) saved activations, or nullptr in inference
};

template <typename T>
struct StepGradRow {
  const T* dh;       // (H) total gradient of the cell output o*tanh(c) / h_new (before any
                     // LSTM projection): dy + gradient from the next step
  const T* dc;       // (H) gradient of c_new from the next step (LSTM)
  const T* acts;     // (S*H) saved activations
  const T* h_prev;   // (H)
  const T* c_prev;   // (H) LSTM
  const T* h_new;    // (H) vanilla derivatives come from the output
  const T* c_new;    // (H) LSTM
  T* dgx;            // (G*H) out
  T* dgh;            // (H) out, GRU only: the n gate's dgh, dn * r
  T* dh_direct;      // (H) out, only when kDirectPath (GRU's z*dh): gradient of h_prev that
                     // bypasses W_hh; the driver zeroes it for the other cells
  T* dc_prev;        // (H) out, LSTM
};

template <Cell kCell>
struct CellMath;

// Training saves the activations, inference does not: the cell's loop (Derived::forward_rows)
// is instantiated twice so that neither copy carries a branch, which would stop vectorisation.
template <typename Derived>
struct SavingForward {
  template <typename T>
  static FASTRNN_INLINE void forward(int64_t n, int64_t H, int64_t xs, int64_t hs,
                                     const StepRow<T>& r) {
    if (r.acts) Derived::template forward_rows<true>(n, H, xs, hs, r);
    else Derived::template forward_rows<false>(n, H, xs, hs, r);
  }
};

template <Cell kCell>
struct VanillaMath {
  static constexpr int kGates = 1;
  static constexpr int kSaved = 0;   // derivative comes from h_new
  static constexpr bool kDistinctGradH = false;
  static constexpr bool kDirectPath = false;

  template <typename T>
  static FASTRNN_INLINE T activate(T a) {
    if constexpr (kCell == Cell::RnnTanh) return fast_tanh(a);
    else return a < T(0) ? T(0) : a;  // NaN propagates, as in NumPy and PyTorch
  }
  // d(pre-activation) from dh and the output y. relu's is a select, as torch applies it: exactly
  // 0 where y <= 0 (so an Inf or NaN dh there gives 0, not 0 * Inf = NaN), dh elsewhere (a NaN y
  // included).
  template <typename T>
  static FASTRNN_INLINE T gradient_through(T y, T dh) {
    if constexpr (kCell == Cell::RnnTanh) return dh * (T(1) - y * y);
    else return y <= T(0) ? T(0) : dh;
  }

  template <typename T>
  static FASTRNN_INLINE void forward(int64_t n, int64_t /*H*/, int64_t /*xs*/, int64_t /*hs*/,
                                     const StepRow<T>& r) {
    const T* FASTRNN_RESTRICT xp = r.xp;
    const T* FASTRNN_RESTRICT hp = r.hp;
    T* FASTRNN_RESTRICT h_new = r.h_new;
    FASTRNN_IVDEP
    for (int64_t j = 0; j < n; ++j) h_new[j] = activate(xp[j] + hp[j]);
  }
  template <typename T>
  static FASTRNN_INLINE void backward(int64_t n, int64_t /*H*/, const StepGradRow<T>& g) {
    const T* FASTRNN_RESTRICT dh = g.dh;
    const T* FASTRNN_RESTRICT h_new = g.h_new;
    T* FASTRNN_RESTRICT dgx = g.dgx;
    FASTRNN_IVDEP
    for (int64_t j = 0; j < n; ++j) dgx[j] = gradient_through(h_new[j], dh[j]);
  }
};

template <> struct CellMath<Cell::RnnTanh> : VanillaMath<Cell::RnnTanh> {};
template <> struct CellMath<Cell::RnnRelu> : VanillaMath<Cell::RnnRelu> {};

// LSTM, gate order i, f, g, o. Saved: i, f, g, o activations.
template <>
struct CellMath<Cell::Lstm> : SavingForward<CellMath<Cell::Lstm>> {
  static constexpr int kGates = 4;
  static constexpr int kSaved = 4;
  static constexpr bool kDistinctGradH = false;
  static constexpr bool kDirectPath = false;

  template <bool kSave, typename T>
  static FASTRNN_INLINE void forward_rows(int64_t n, int64_t H, int64_t xs, int64_t hs,
                                          const StepRow<T>& r) {
    const T* FASTRNN_RESTRICT xp = r.xp;
    const T* FASTRNN_RESTRICT hp = r.hp;
    const T* FASTRNN_RESTRICT c_prev = r.c_prev;
    T* FASTRNN_RESTRICT c_new = r.c_new;
    T* FASTRNN_RESTRICT h_new = r.h_new;
    T* FASTRNN_RESTRICT acts = r.acts;
    FASTRNN_IVDEP
    for (int64_t j = 0; j < n; ++j) {
      const T i = fast_sigmoid(xp[j] + hp[j]);
      const T f = fast_sigmoid(xp[xs + j] + hp[hs + j]);
      const T g = fast_tanh(xp[2 * xs + j] + hp[2 * hs + j]);
      const T o = fast_sigmoid(xp[3 * xs + j] + hp[3 * hs + j]);
      const T c = f * c_prev[j] + i * g;
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
  template <typename T>
  static FASTRNN_INLINE void backward(int64_t n, int64_t H, const StepGradRow<T>& g) {
    const T* FASTRNN_RESTRICT acts = g.acts;
    const T* FASTRNN_RESTRICT dh = g.dh;
    const T* FASTRNN_RESTRICT dc_next = g.dc;
    const T* FASTRNN_RESTRICT c_prev = g.c_prev;
    const T* FASTRNN_RESTRICT c_new = g.c_new;
    T* FASTRNN_RESTRICT dgx = g.dgx;
    T* FASTRNN_RESTRICT dc_prev = g.dc_prev;
    FASTRNN_IVDEP
    for (int64_t j = 0; j < n; ++j) {
      const T i = acts[j], f = acts[H + j], gg = acts[2 * H + j], o = acts[3 * H + j];
      const T tc = fast_tanh(c_new[j]);
      const T dc = dc_next[j] + dh[j] * o * (T(1) - tc * tc);
      dgx[j] = dc * gg * i * (T(1) - i);
      dgx[H + j] = dc * c_prev[j] * f * (T(1) - f);
      dgx[2 * H + j] = dc * i * (T(1) - gg * gg);
      dgx[3 * H + j] = dh[j] * tc * o * (T(1) - o);
      dc_prev[j] = dc * f;
    }
  }
};

// GRU, gate order r, z, n; reset applied after the hidden matmul. Saved: r, z, n, hp_n.
template <>
struct CellMath<Cell::Gru> : SavingForward<CellMath<Cell::Gru>> {
  static constexpr int kGates = 3;
  static constexpr int kSaved = 4;
  static constexpr bool kDistinctGradH = true;
  static constexpr bool kDirectPath = true;   // h' = ... + z * h: gradient bypassing W_hh

  template <bool kSave, typename T>
  static FASTRNN_INLINE void forward_rows(int64_t n, int64_t H, int64_t xs, int64_t hs,
                                          const StepRow<T>& r) {
    const T* FASTRNN_RESTRICT xp = r.xp;
    const T* FASTRNN_RESTRICT hp = r.hp;
    const T* FASTRNN_RESTRICT h_prev = r.h_prev;
    T* FASTRNN_RESTRICT h_new = r.h_new;
    T* FASTRNN_RESTRICT acts = r.acts;
    FASTRNN_IVDEP
    for (int64_t j = 0; j < n; ++j) {
      const T rr = fast_sigmoid(xp[j] + hp[j]);
      const T z = fast_sigmoid(xp[xs + j] + hp[hs + j]);
      const T hn = hp[2 * hs + j];
      const T cand = fast_tanh(xp[2 * xs + j] + rr * hn);  // the candidate state, gate n
      h_new[j] = (T(1) - z) * cand + z * h_prev[j];
      if constexpr (kSave) {
        acts[j] = rr;
        acts[H + j] = z;
        acts[2 * H + j] = cand;
        acts[3 * H + j] = hn;
      }
    }
  }
  template <typename T>
  static FASTRNN_INLINE void backward(int64_t n, int64_t H, const StepGradRow<T>& g) {
    const T* FASTRNN_RESTRICT acts = g.acts;
    const T* FASTRNN_RESTRICT dh_in = g.dh;
    const T* FASTRNN_RESTRICT h_prev = g.h_prev;
    T* FASTRNN_RESTRICT dgx = g.dgx;
    T* FASTRNN_RESTRICT dgh = g.dgh;
    T* FASTRNN_RESTRICT dh_direct = g.dh_direct;
    FASTRNN_IVDEP
    for (int64_t j = 0; j < n; ++j) {
      const T rr = acts[j], z = acts[H + j], cand = acts[2 * H + j], hn = acts[3 * H + j];
      const T dh = dh_in[j];
      const T dn = dh * (T(1) - z) * (T(1) - cand * cand);
      const T dz = dh * (h_prev[j] - cand) * z * (T(1) - z);
      const T dr = dn * hn * rr * (T(1) - rr);
      dgx[j] = dr;
      dgx[H + j] = dz;
      dgx[2 * H + j] = dn;
      dgh[j] = dn * rr;
      dh_direct[j] = dh * z;
    }
  }
};

}  // namespace fastrnn::cpu
