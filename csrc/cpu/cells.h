// One cell's pointwise math, forward and backward, for one batch row of one step.
// This is the only place in the CPU core where a cell's equations are written.
//
// Forward inputs are full pre-activations with biases already folded in by the driver:
//   xp = W_ih x + b_ih (+ b_hh for every cell but GRU),  hp = W_hh h (+ b_hh for GRU).
// Backward produces the gradients of those pre-activations: dgx (for W_ih, b_ih and x) and
// dgh (for W_hh, b_hh and h); they differ only for GRU's n gate, where hp_n is scaled by r.
// Derivatives are written from saved outputs (dtanh = 1 - y^2, dsigmoid = s (1 - s)).
#pragma once

#include <cmath>
#include <cstdint>

#include "fastrnn/fastrnn.h"

namespace fastrnn::cpu {

template <typename T>
inline T sigmoid(T v) { return T(1) / (T(1) + std::exp(-v)); }

// Per-step row views passed to the cell functions. Every pointer has H (or gates*H) elements.
template <typename T>
struct StepRow {
  const T* xp;       // (G*H) input pre-activation incl. bias
  const T* hp;       // (G*H) recurrent pre-activation (incl. b_hh for GRU)
  const T* h_prev;   // (H)
  const T* c_prev;   // (H) LSTM only
  T* h_new;          // (H)
  T* c_new;          // (H) LSTM only
  T* acts;           // (S*H) saved activations, or nullptr in inference
};

template <typename T>
struct StepGradRow {
  const T* dh;       // (H) total gradient of h_new: dy + gradient from the next step
  const T* dc;       // (H) gradient of c_new from the next step (LSTM)
  const T* acts;     // (S*H) saved activations
  const T* h_prev;   // (H)
  const T* c_prev;   // (H) LSTM
  const T* h_new;    // (H) vanilla derivatives come from the output
  const T* c_new;    // (H) LSTM
  T* dgx;            // (G*H) out
  T* dgh;            // (G*H) out; equals dgx except for GRU
  T* dh_direct;      // (H) out: gradient of h_prev that bypasses W_hh (GRU's z*dh; 0 otherwise)
  T* dc_prev;        // (H) out, LSTM
};

template <Cell kCell>
struct CellMath;

template <Cell kCell>
struct VanillaMath {
  static constexpr int kGates = 1;
  static constexpr int kSaved = 0;   // derivative comes from h_new
  static constexpr bool kDistinctGradH = false;

  template <typename T>
  static T activate(T a) {
    if constexpr (kCell == Cell::RnnTanh) return std::tanh(a);
    else return a < T(0) ? T(0) : a;  // NaN propagates, as in NumPy and PyTorch
  }
  template <typename T>
  static T derivative_from_output(T y) {
    if constexpr (kCell == Cell::RnnTanh) return T(1) - y * y;
    else return y > T(0) ? T(1) : T(0);
  }

  template <typename T>
  static void forward(int64_t H, const StepRow<T>& r) {
    for (int64_t j = 0; j < H; ++j) r.h_new[j] = activate(r.xp[j] + r.hp[j]);
  }
  template <typename T>
  static void backward(int64_t H, const StepGradRow<T>& g) {
    for (int64_t j = 0; j < H; ++j) {
      g.dgx[j] = g.dh[j] * derivative_from_output(g.h_new[j]);
      g.dh_direct[j] = T(0);
    }
  }
};

template <> struct CellMath<Cell::RnnTanh> : VanillaMath<Cell::RnnTanh> {};
template <> struct CellMath<Cell::RnnRelu> : VanillaMath<Cell::RnnRelu> {};

// LSTM, gate order i, f, g, o. Saved: i, f, g, o activations.
template <>
struct CellMath<Cell::Lstm> {
  static constexpr int kGates = 4;
  static constexpr int kSaved = 4;
  static constexpr bool kDistinctGradH = false;

  template <typename T>
  static void forward(int64_t H, const StepRow<T>& r) {
    for (int64_t j = 0; j < H; ++j) {
      const T i = sigmoid(r.xp[j] + r.hp[j]);
      const T f = sigmoid(r.xp[H + j] + r.hp[H + j]);
      const T g = std::tanh(r.xp[2 * H + j] + r.hp[2 * H + j]);
      const T o = sigmoid(r.xp[3 * H + j] + r.hp[3 * H + j]);
      const T c = f * r.c_prev[j] + i * g;
      r.c_new[j] = c;
      r.h_new[j] = o * std::tanh(c);
      if (r.acts) {
        r.acts[j] = i;
        r.acts[H + j] = f;
        r.acts[2 * H + j] = g;
        r.acts[3 * H + j] = o;
      }
    }
  }
  template <typename T>
  static void backward(int64_t H, const StepGradRow<T>& g) {
    for (int64_t j = 0; j < H; ++j) {
      const T i = g.acts[j], f = g.acts[H + j], gg = g.acts[2 * H + j], o = g.acts[3 * H + j];
      const T tc = std::tanh(g.c_new[j]);
      const T dc = g.dc[j] + g.dh[j] * o * (T(1) - tc * tc);
      g.dgx[j] = dc * gg * i * (T(1) - i);
      g.dgx[H + j] = dc * g.c_prev[j] * f * (T(1) - f);
      g.dgx[2 * H + j] = dc * i * (T(1) - gg * gg);
      g.dgx[3 * H + j] = g.dh[j] * tc * o * (T(1) - o);
      g.dc_prev[j] = dc * f;
      g.dh_direct[j] = T(0);
    }
  }
};

// GRU, gate order r, z, n; reset applied after the hidden matmul. Saved: r, z, n, hp_n.
template <>
struct CellMath<Cell::Gru> {
  static constexpr int kGates = 3;
  static constexpr int kSaved = 4;
  static constexpr bool kDistinctGradH = true;

  template <typename T>
  static void forward(int64_t H, const StepRow<T>& r) {
    for (int64_t j = 0; j < H; ++j) {
      const T rr = sigmoid(r.xp[j] + r.hp[j]);
      const T z = sigmoid(r.xp[H + j] + r.hp[H + j]);
      const T hn = r.hp[2 * H + j];
      const T n = std::tanh(r.xp[2 * H + j] + rr * hn);
      r.h_new[j] = (T(1) - z) * n + z * r.h_prev[j];
      if (r.acts) {
        r.acts[j] = rr;
        r.acts[H + j] = z;
        r.acts[2 * H + j] = n;
        r.acts[3 * H + j] = hn;
      }
    }
  }
  template <typename T>
  static void backward(int64_t H, const StepGradRow<T>& g) {
    for (int64_t j = 0; j < H; ++j) {
      const T rr = g.acts[j], z = g.acts[H + j], n = g.acts[2 * H + j], hn = g.acts[3 * H + j];
      const T dh = g.dh[j];
      const T dn = dh * (T(1) - z) * (T(1) - n * n);
      const T dz = dh * (g.h_prev[j] - n) * z * (T(1) - z);
      const T dr = dn * hn * rr * (T(1) - rr);
      g.dgx[j] = dr;
      g.dgx[H + j] = dz;
      g.dgx[2 * H + j] = dn;
      g.dgh[j] = dr;
      g.dgh[H + j] = dz;
      g.dgh[2 * H + j] = dn * rr;
      g.dh_direct[j] = dh * z;
    }
  }
};

}  // namespace fastrnn::cpu
