// The recurrence of one layer on a team of threads: each member owns a slice of the hidden units,
// packs its slice of W_hh once, and keeps it in its own cache for the whole sequence; members
// meet at one barrier per step.
//
// Forward, step t, member m (units U_m, all gates of each unit):
//   for each tile of batch rows: hp = h_prev W_hh[gates of U_m]^T on the packed panels, in
//   registers; then the cell's pointwise pass on that tile writes h_new, c_new, y, acts for U_m.
//   barrier (every member needs all of h_new for the next step).
// Backward, step t, member m (units U_m):
//   A. pointwise backward for U_m: dG_t[gates of U_m], dc_prev[U_m], and the part of dh_prev[U_m]
//      that bypasses W_hh.            barrier (B needs all of dG_t)
//   B. dh_prev[U_m] += dGh_t W_hh[:, U_m] on the packed panels of W_hh's columns U_m.
//   Step t-1's part A reads only dh_prev[U_m], which this member wrote itself: no second barrier.
// Used for every layer without an LSTM projection (layer_impl.h keeps the per-step BLAS path for
// proj_size > 0, whose second product per step would need a second barrier, and for the forward
// at batch 1 with a large W_hh over a short sequence, and for a single step: forward_uses_team,
// backward_uses_team).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/cells.h"
#include "cpu/isa.h"
#include "cpu/packed_gemm.h"
#include "cpu/step.h"
#include "cpu/thread_team.h"
#include "fastrnn/fastrnn.h"

namespace fastrnn::cpu {

// Panels per tile and hidden units per tile, per cell: forward tiles cover all G gates of
// kForwardBlocks unit blocks (so the pointwise pass has every gate of its units), backward tiles
// cover 4 unit blocks of dh_prev.
template <Cell kCell>
struct TileShape {
  static constexpr int kGates = CellMath<kCell>::kGates;
  static constexpr int kForwardBlocks = kGates == 1 ? 4 : 1;
  static constexpr int kForwardPanels = kGates * kForwardBlocks;
  static constexpr int kBackwardPanels = 4;
};

// Runs tile_product for nr panels (1..4), chosen at run time.
template <typename scalar_t, Isa kIsa>
FASTRNN_INLINE void tile_product_any(int nr, int rows, int64_t K, const scalar_t* a, int64_t lda,
                                     const scalar_t* panels, const scalar_t* init,
                                     int64_t init_ld, scalar_t* out) {
  using S = scalar_t;
  switch (nr) {
    case 1: return tile_product_rows<S, kIsa, 1>(rows, K, a, lda, panels, init, init_ld, out);
    case 2: return tile_product_rows<S, kIsa, 2>(rows, K, a, lda, panels, init, init_ld, out);
    case 3: return tile_product_rows<S, kIsa, 3>(rows, K, a, lda, panels, init, init_ld, out);
    case 4: return tile_product_rows<S, kIsa, 4>(rows, K, a, lda, panels, init, init_ld, out);
    default: return;
  }
}

// Elements of the packed weights (and of the packed b_hh where it is not folded into xp) for
// either direction, for any V.
template <Cell kCell>
int64_t packed_recurrent_elements(int64_t H) {
  const int64_t units = round_up(H, kMaxPanelWidth<float>);  // float's width bounds every V
  const int64_t G = CellMath<kCell>::kGates;
  return units * G * (H + 1);  // panels, then one bias row per panel (!kFoldsRecurrentBias)
}

// How many threads a layer's recurrence should use: enough work per step to pay for a barrier
// (~0.2 us), and at least one tile group per member.
inline int recurrence_members(int64_t flops_per_step, int64_t groups) {
  constexpr int64_t kFlopsPerMember = 1 << 16;  // ~0.3 us of one core's FMA throughput
  int64_t n = std::min<int64_t>(team_threads(), groups);
  n = std::min<int64_t>(n, std::max<int64_t>(1, flops_per_step / kFlopsPerMember));
  return static_cast<int>(std::max<int64_t>(1, n));
}

// Elements of the packed input weights and input bias used when the input projection is fused
// into the team (fuses_input_projection, layer_impl.h).
template <Cell kCell>
int64_t packed_input_elements(int64_t H, int64_t I) {
  const int64_t units = round_up(H, kMaxPanelWidth<float>);
  return units * CellMath<kCell>::kGates * (I + 1);
}

template <typename scalar_t>
struct RecurrenceForwardArgs {
  LayerShape shape;
  const int64_t* lengths;
  const scalar_t* xp;      // (T, B, G*H) input pre-activations incl. folded biases, or nullptr:
                           // fused, from x, w_ih and bias_x
  const scalar_t* x;       // (T, B, I) when fused
  const scalar_t* w_ih;    // (G*H, I) when fused
  const scalar_t* bias_x;  // (G*H) when fused with bias: b_ih (+ b_hh if kFoldsRecurrentBias),
                           // else nullptr
  scalar_t* pack_ih;       // packed_input_elements<kCell>(H, I) when fused
  const scalar_t* w_hh;    // (G*H, H)
  const scalar_t* b_hh;    // (G*H) with bias where !kFoldsRecurrentBias, else nullptr
  scalar_t* pack;          // packed_recurrent_elements<kCell>(H)
  StateSlots<scalar_t> h, c;  // kHasCellState for c
  scalar_t* y;             // (T, B, H)
  scalar_t* acts;          // (T, B, S*H) or nullptr (inference)
  int64_t acts_width;
  // team
  int member, members;
  SpinBarrier* barrier;
  FreshSteps fresh;        // steps starting a segment (step.h), and zeros for their state
  const scalar_t* zeros;
};

// Packs rows [ub0 * V, ...) of a (G*H, K) gate-stacked weight for the tile group at unit block
// ub0 (nb unit blocks x G gates, interleaved), and the matching bias values (if any) per panel.
template <typename scalar_t, int V, int G>
FASTRNN_INLINE void pack_gate_group(const scalar_t* w, int64_t H, int64_t K, int64_t ub0, int nb,
                                    scalar_t* group, const scalar_t* bias, scalar_t* bias_group) {
  for (int q = 0; q < nb; ++q)
    for (int g = 0; g < G; ++g) {
      const int64_t ub = ub0 + q;
      pack_panel_from_rows<scalar_t, V>(w + g * H * K, K, ub * V, H, K,
                                        group + (q * G + g) * V, nb * G * V);
      if (bias != nullptr)
        for (int v = 0; v < V; ++v)
          bias_group[(q * G + g) * V + v] =
              ub * V + v < H ? bias[g * H + ub * V + v] : scalar_t(0);
    }
}

// The unit blocks (V hidden units each) a member owns: whole tile groups of blocks_per_group
// blocks, split evenly across the team; only the layer's last group may be short. The split
// does not move the packed layout, which is indexed by block, not by member.
struct MemberBlocks {
  int64_t blocks, first, end;  // all blocks of the layer; this member's [first, end)
  MemberBlocks(int64_t H, int V, int blocks_per_group, int member, int members) {
    blocks = (H + V - 1) / V;
    const EvenSplit split{(blocks + blocks_per_group - 1) / blocks_per_group, members};
    first = split.begin(member) * blocks_per_group;
    end = std::min(blocks, split.begin(member + 1) * blocks_per_group);
  }
};

template <typename scalar_t, Cell kCell>
struct ForwardMember {
  template <Isa kIsa>
  static FASTRNN_INLINE void run(const RecurrenceForwardArgs<scalar_t>& a) {
    using Tiles = TileShape<kCell>;
    constexpr int V = Simd<scalar_t, kIsa>::V;
    constexpr int G = Tiles::kGates;
    constexpr int kBlocks = Tiles::kForwardBlocks;
    constexpr int kPanels = Tiles::kForwardPanels;
    constexpr int MR = Simd<scalar_t, kIsa>::max_rows(kPanels);
    constexpr bool kC = CellMath<kCell>::kHasCellState;
    const LayerShape& s = a.shape;
    const int64_t T = s.T, B = s.B, H = s.H, I = s.I, GH = G * H;
    const bool fused = a.xp == nullptr;
    const MemberBlocks mine(H, V, kBlocks, a.member, a.members);
    const int64_t blocks = mine.blocks, first_block = mine.first, end_block = mine.end;
    // Tile groups (kBlocks unit blocks x G gates, interleaved) starting at unit block ub0, and
    // their bias values, V per panel.
    scalar_t* bias_pack = a.pack + blocks * G * H * V;
    auto group = [&](int64_t ub0) { return a.pack + ub0 * G * H * V; };
    scalar_t* bias_x_pack = fused ? a.pack_ih + blocks * G * I * V : nullptr;
    auto group_ih = [&](int64_t ub0) { return a.pack_ih + ub0 * G * I * V; };

    // This member's panels: the rows of W_hh (and W_ih) for its units, gate by gate.
    for (int64_t ub0 = first_block; ub0 < end_block; ub0 += kBlocks) {
      const int nb = static_cast<int>(std::min<int64_t>(kBlocks, end_block - ub0));
      pack_gate_group<scalar_t, V, G>(a.w_hh, H, H, ub0, nb, group(ub0), a.b_hh,
                                      bias_pack + ub0 * G * V);
      if (fused)
        pack_gate_group<scalar_t, V, G>(a.w_ih, H, I, ub0, nb, group_ih(ub0), a.bias_x,
                                        bias_x_pack + ub0 * G * V);
    }

    alignas(64) scalar_t tile[MR * kPanels * V];
    alignas(64) scalar_t tile_x[MR * kPanels * V];  // the input projection's tile, when fused
    const SlotOrder order{T, s.reverse};
    for (int64_t step = 0; step < T; ++step) {
      const int64_t t = s.reverse ? T - 1 - step : step;
      const ForwardStep<scalar_t> st{B, H, H, t, a.lengths, fused ? nullptr : a.xp + t * B * GH,
                                     nullptr, a.h.at(order.prev(t)),
                                     kC ? a.c.at(order.prev(t)) : nullptr, a.h.at(order.next(t)),
                                     kC ? a.c.at(order.next(t)) : nullptr, a.y + t * B * H,
                                     a.acts ? a.acts + t * B * a.acts_width : nullptr, nullptr,
                                     nullptr, a.fresh, a.zeros};
      const scalar_t* x_t = fused ? a.x + t * B * I : nullptr;
      for (int64_t ub0 = first_block; ub0 < end_block; ub0 += kBlocks) {
        const int nb = static_cast<int>(std::min<int64_t>(kBlocks, end_block - ub0));
        const int nr = nb * G;
        const scalar_t* init = a.b_hh ? bias_pack + ub0 * G * V : nullptr;
        for (int64_t b0 = 0; b0 < B; b0 += MR) {
          const int rows = static_cast<int>(std::min<int64_t>(MR, B - b0));
          if (fused) {
            tile_product_any<scalar_t, kIsa>(nr, rows, I, x_t + b0 * I, I, group_ih(ub0),
                                             a.bias_x ? bias_x_pack + ub0 * G * V : nullptr, 0,
                                             tile_x);
          } else {
            // The pointwise pass reads this tile's input pre-activations: a scattered piece of
            // a buffer far larger than the caches. Ask for it now, so that it arrives while
            // the product runs.
            for (int r = 0; r < rows; ++r)
              for (int q = 0; q < nb; ++q)
                for (int g = 0; g < G; ++g)
                  for (int line = 0; line < V * int(sizeof(scalar_t)); line += 64)
                    __builtin_prefetch(reinterpret_cast<const char*>(
                                           st.xp_t + (b0 + r) * GH + g * H + (ub0 + q) * V) +
                                       line);
          }
          tile_product_any<scalar_t, kIsa>(nr, rows, H, st.h_prev + b0 * H, H, group(ub0), init,
                                           0, tile);
          for (int q = 0; q < nb; ++q) {
            const int64_t u = (ub0 + q) * V;
            // a fresh row's recurrent pre-activations: the tile's initial values (b_hh), or 0
            const scalar_t* hp_fresh = init ? init + q * G * V : a.zeros;
            const Preactivations<scalar_t> p =
                fused ? Preactivations<scalar_t>{tile_x + q * G * V, nr * V, V, tile + q * G * V,
                                                 nr * V, V, hp_fresh}
                      : Preactivations<scalar_t>{st.xp_t + b0 * GH + u, GH, H, tile + q * G * V,
                                                 nr * V, V, hp_fresh};
            forward_pointwise<scalar_t, kCell>(st, b0, b0 + rows, u, std::min<int64_t>(V, H - u),
                                               p);
          }
        }
      }
      a.barrier->arrive_and_wait();
    }
  }
};

template <typename scalar_t>
struct RecurrenceBackwardArgs {
  LayerShape shape;
  const int64_t* lengths;
  const scalar_t* w_hh;    // (G*H, H)
  scalar_t* pack;          // packed_recurrent_elements<kCell>(H)
  const scalar_t* dy;      // (T, B, H)
  const scalar_t* acts;    // (T, B, S*H)
  int64_t acts_width;
  const scalar_t* hs;      // (T+1, B, H) saved states
  const scalar_t* cs;      // (T+1, B, H) kHasCellState
  scalar_t* dgx;           // (chunk, B, G*H) for times [chunk_t0, chunk_t0 + chunk)
  scalar_t* dgh;           // (chunk, B, H) kRecurrentGradGate's dgh (cells.h), else unused
  scalar_t* dh_cell;       // (B, H)
  scalar_t* dh[2];         // (B, H) ping-pong; dh[cur0] holds the arriving gradient on entry
  scalar_t* dc[2];         // (B, H) kHasCellState ping-pong; dc[cur0] likewise
  // This call runs steps step_end-1 down to step_begin (in the layer's walking order), whose
  // times start at chunk_t0; the first call of a layer also packs the weights.
  int64_t step_begin, step_end, chunk_t0;
  int cur0;
  bool pack_weights;
  int member, members;
  SpinBarrier* barrier;
  FreshSteps fresh;        // steps starting a segment (step.h), and zeros for their state
  const scalar_t* zeros;
};

template <typename scalar_t, Cell kCell>
struct BackwardMember {
  template <Isa kIsa>
  static FASTRNN_INLINE void run(const RecurrenceBackwardArgs<scalar_t>& a) {
    using Tiles = TileShape<kCell>;
    constexpr int V = Simd<scalar_t, kIsa>::V;
    constexpr int G = Tiles::kGates;
    constexpr int NR = Tiles::kBackwardPanels;
    constexpr int MR = Simd<scalar_t, kIsa>::max_rows(NR);
    using Math = CellMath<kCell>;
    constexpr bool kC = Math::kHasCellState;
    constexpr bool kDistinct = Math::kRecurrentGradDiffers;
    const LayerShape& s = a.shape;
    const int64_t T = s.T, B = s.B, H = s.H, GH = G * H, K = GH;
    const MemberBlocks mine(H, V, NR, a.member, a.members);
    const int64_t first_block = mine.first, end_block = mine.end;
    const int64_t u_begin = std::min(H, first_block * V);
    const int64_t u_count = std::min(H, end_block * V) - u_begin;
    // A tile group (NR unit blocks, interleaved) starting at unit block ub0.
    auto group = [&](int64_t ub0) { return a.pack + ub0 * K * V; };

    // This member's panels: the columns of W_hh for its units.
    for (int64_t ub0 = first_block; a.pack_weights && ub0 < end_block; ub0 += NR) {
      const int nb = static_cast<int>(std::min<int64_t>(NR, end_block - ub0));
      for (int q = 0; q < nb; ++q)
        pack_panel_from_columns<scalar_t, V>(a.w_hh, H, (ub0 + q) * V, H, K, group(ub0) + q * V,
                                             nb * V);
    }

    alignas(64) scalar_t tile[MR * NR * V];
    const SlotOrder order{T, s.reverse};
    int cur = a.cur0;  // dh[cur], dc[cur]: gradients arriving from the later step
    for (int64_t step = a.step_end - 1; step >= a.step_begin; --step) {
      const int64_t t = s.reverse ? T - 1 - step : step;
      scalar_t* dh_next = a.dh[cur];
      scalar_t* dh_prev = a.dh[1 - cur];
      // A. This member's units: gradient of the cell output, then the pointwise backward.
      total_output_grad(0, B, u_begin, u_count, H, t, a.lengths, a.dy + t * B * H, dh_next,
                        a.dh_cell);
      const BackwardStep<scalar_t> st{B, H, H, t, a.lengths, a.dh_cell, dh_next,
                                      kC ? a.dc[cur] : nullptr, a.acts + t * B * a.acts_width,
                                      a.hs + order.prev(t) * B * H, a.hs + order.next(t) * B * H,
                                      kC ? a.cs + order.prev(t) * B * H : nullptr,
                                      kC ? a.cs + order.next(t) * B * H : nullptr,
                                      a.dgx + (t - a.chunk_t0) * B * GH,
                                      kDistinct ? a.dgh + (t - a.chunk_t0) * B * H : nullptr,
                                      dh_prev,
                                      kC ? a.dc[1 - cur] : nullptr, a.fresh, a.zeros};
      if (u_count > 0)
        backward_pointwise<scalar_t, kCell>(st, 0, B, u_begin, u_count, u_begin, u_count);
      a.barrier->arrive_and_wait();
      // B. dh_prev[:, units] += dGh_t W_hh[:, units], tile by tile through the register file.
      //    dGh_t is dG_t except in the gate kRecurrentGradGate (GRU's n), the last one: the
      //    product's depth splits into the gates taken from dgx (all, or the ones before it)
      //    and that gate from dgh.
      const scalar_t* dgx_t = a.dgx + (t - a.chunk_t0) * B * GH;
      const scalar_t* dgh_t = a.dgh + (t - a.chunk_t0) * B * H;
      const int64_t K_x = kDistinct ? Math::kRecurrentGradGate * H : GH;
      for (int64_t ub0 = first_block; ub0 < end_block; ub0 += NR) {
        const int nr = static_cast<int>(std::min<int64_t>(NR, end_block - ub0));
        const int64_t u = ub0 * V;
        const int64_t cols = std::min<int64_t>(nr * V, H - u);
        for (int64_t b0 = 0; b0 < B; b0 += MR) {
          const int rows = static_cast<int>(std::min<int64_t>(MR, B - b0));
          for (int r = 0; r < rows; ++r) {  // stage the bypass part: the tile may pass H
            scalar_t* row = tile + r * nr * V;
            std::memcpy(row, dh_prev + (b0 + r) * H + u, cols * sizeof(scalar_t));
            std::fill(row + cols, row + nr * V, scalar_t(0));
          }
          tile_product_any<scalar_t, kIsa>(nr, rows, K_x, dgx_t + b0 * GH, GH, group(ub0), tile,
                                           nr * V, tile);
          if (kDistinct)
            tile_product_any<scalar_t, kIsa>(nr, rows, H, dgh_t + b0 * H, H,
                                             group(ub0) + K_x * nr * V, tile, nr * V, tile);
          for (int r = 0; r < rows; ++r)
            std::memcpy(dh_prev + (b0 + r) * H + u, tile + r * nr * V, cols * sizeof(scalar_t));
        }
      }
      zero_fresh_rows(a.fresh, t, B, H, u_begin, u_count, dh_prev);
      cur = 1 - cur;
    }
  }
};

// Team bodies: every member runs the whole sequence. A team cut short (the pool busy with another
// caller) runs the sequence on member 0 alone. The members flush denormals as their caller does
// (run_team; forward_impl and backward_impl hold a DenormalsAreZero).
template <typename Args, typename Kernel>
void run_recurrence(Args args, int members) {
  auto body = [&args](int member, int size) {
    Args mine = args;
    SpinBarrier solo(1);
    if (size != args.members) {
      if (member != 0) return;
      mine.members = 1;
      mine.barrier = &solo;
    }
    mine.member = member;
    run_on_isa_tagged<Kernel>(active_isa(), mine);
  };
  run_team(members, body);
}

}  // namespace fastrnn::cpu
