// The recurrent step's matrix product, on weights packed once per call into panels that stay in
// the owning core's cache for the whole sequence.
//
// Why not the BLAS library here: a step's GEMM is small (B rows) and repeated T times on the same
// weights. OpenBLAS re-packs W_hh on every call (the whole matrix, every step), splits and joins
// its threads on every call, and cannot hand its output tile to the gate activations while it is
// still in registers. Packing once and keeping a fixed slice of the weights per thread removes
// all three (bench/BLAS.md has the measurement).
//
// Panel layout: a panel is V consecutive output columns over the whole reduction depth K. V is
// the vector width of the active instruction set, so one row of a panel is one vector load.
// The NR panels a tile reads are interleaved, k-major: element (k, p, v) at (k * NR + p) * V + v,
// so the micro-kernel reads one contiguous stream (one prefetch stream, one pointer).
// Columns past the matrix edge are packed as zeros.
//
// The micro-kernel computes an MR x (NR panels) tile of  out = init + A * panels,  keeping the
// MR * NR accumulators in registers over the whole depth K (no K blocking: K is a hidden size,
// and the panels being streamed stay in L1/L2).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/activations.h"
#include "cpu/isa.h"

namespace fastrnn::cpu {

// Vector type and register budget of one instruction set.
template <typename scalar_t, Isa kIsa>
struct Simd {
  static constexpr int kBytes = kIsa == Isa::Avx512 ? 64 : kIsa == Isa::Avx2 ? 32 : 16;
  static constexpr int V = kBytes / static_cast<int>(sizeof(scalar_t));  // lanes
  static constexpr int kRegisters = kIsa == Isa::Avx512 ? 32 : 16;
  // Unaligned-safe: the loads and stores compile to vmovups.
  typedef scalar_t vec __attribute__((vector_size(kBytes), aligned(sizeof(scalar_t))));
  // Rows of the tile for NR panels: MR * NR accumulators + NR panel vectors + 1 broadcast must
  // fit in the register file.
  static constexpr int max_rows(int nr) {
    return std::min(8, (kRegisters - nr - 1) / nr);
  }
};

// The widest panel any instruction set uses, in elements: buffers sized with it fit every V.
template <typename scalar_t>
constexpr int64_t kMaxPanelWidth = 64 / sizeof(scalar_t);

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// out[r][p*V + v] = init[r*init_ld + p*V + v] (0 if init is null; init_ld 0 broadcasts one row)
//                   + sum_k a[r*lda + k] * panels[(k*NR + p)*V + v]
// for r < MR, p < NR (NR interleaved panels of depth K); out has row stride NR*V.
template <typename scalar_t, Isa kIsa, int MR, int NR>
FASTRNN_INLINE void tile_product(int64_t K, const scalar_t* a, int64_t lda, const scalar_t* panels,
                                 const scalar_t* init, int64_t init_ld, scalar_t* out) {
  using S = Simd<scalar_t, kIsa>;
  using vec = typename S::vec;
  constexpr int V = S::V;
  vec acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int p = 0; p < NR; ++p)
      acc[r][p] = init ? *reinterpret_cast<const vec*>(init + r * init_ld + p * V) : vec{};
  for (int64_t k = 0; k < K; ++k) {
    vec w[NR];
    for (int p = 0; p < NR; ++p)
      w[p] = *reinterpret_cast<const vec*>(panels + (k * NR + p) * V);
    for (int r = 0; r < MR; ++r) {
      const scalar_t s = a[r * lda + k];
      for (int p = 0; p < NR; ++p) acc[r][p] += s * w[p];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int p = 0; p < NR; ++p) *reinterpret_cast<vec*>(out + (r * NR + p) * V) = acc[r][p];
}

// The same for any rows <= max_rows(NR), chosen at run time (the batch's last rows).
template <typename scalar_t, Isa kIsa, int NR>
FASTRNN_INLINE void tile_product_rows(int rows, int64_t K, const scalar_t* a, int64_t lda,
                                      const scalar_t* panels, const scalar_t* init, int64_t init_ld, scalar_t* out) {
  constexpr int kMax = Simd<scalar_t, kIsa>::max_rows(NR);
  static_assert(kMax >= 1 && kMax <= 8, "register budget");
  switch (rows) {
#define FASTRNN_TILE_ROWS(m)                                                                \
  case m:                                                                                   \
    if constexpr (m <= kMax) return tile_product<scalar_t, kIsa, m, NR>(K, a, lda, panels, init,  \
                                                                 init_ld, out);             \
    break;
    FASTRNN_TILE_ROWS(1)
    FASTRNN_TILE_ROWS(2)
    FASTRNN_TILE_ROWS(3)
    FASTRNN_TILE_ROWS(4)
    FASTRNN_TILE_ROWS(5)
    FASTRNN_TILE_ROWS(6)
    FASTRNN_TILE_ROWS(7)
    FASTRNN_TILE_ROWS(8)
#undef FASTRNN_TILE_ROWS
    default: break;
  }
}

// Packs V columns of a matrix into one panel of depth K whose rows are k_stride apart (NR * V
// when NR panels are interleaved); absent columns are zeros. Two forms cover every use:
//   the columns are rows of a row-major matrix: W_hh for the forward step;
//   the columns are columns of a row-major matrix: W_hh for backward.
template <typename scalar_t, int V>
FASTRNN_INLINE void pack_panel_from_rows(const scalar_t* src, int64_t ld, int64_t first_row,
                                         int64_t rows, int64_t K, scalar_t* panel, int64_t k_stride) {
  // panel[k][v] = src[(first_row + v) * ld + k]: a transpose. Blocks of 64 k: within a block each
  // source row is read in one sequential run (reading all V rows at each k would hit V lines
  // ld apart, which share L1 sets when ld is a multiple of 1024 bytes: measured 4.5 GB/s, the
  // pack then cost more than a whole batch-1 step), while the block's panel rows stay in L1.
  constexpr int64_t kBlock = 64;
  const int64_t valid = std::max<int64_t>(0, std::min<int64_t>(V, rows - first_row));
  for (int64_t k0 = 0; k0 < K; k0 += kBlock) {
    const int64_t k1 = std::min(K, k0 + kBlock);
    for (int v = 0; v < V; ++v) {
      scalar_t* column = panel + v;
      if (v < valid) {
        const scalar_t* row = src + (first_row + v) * ld;
        for (int64_t k = k0; k < k1; ++k) column[k * k_stride] = row[k];
      } else {
        for (int64_t k = k0; k < k1; ++k) column[k * k_stride] = scalar_t(0);
      }
    }
  }
}

template <typename scalar_t, int V>
FASTRNN_INLINE void pack_panel_from_columns(const scalar_t* src, int64_t ld, int64_t first_col,
                                            int64_t cols, int64_t K, scalar_t* panel,
                                            int64_t k_stride) {
  // panel[k][v] = src[k * ld + first_col + v]
  const int64_t valid = std::max<int64_t>(0, std::min<int64_t>(V, cols - first_col));
  for (int64_t k = 0; k < K; ++k) {
    scalar_t* dst = panel + k * k_stride;
    std::memcpy(dst, src + k * ld + first_col, valid * sizeof(scalar_t));
    std::fill(dst + valid, dst + V, scalar_t(0));
  }
}

}  // namespace fastrnn::cpu
