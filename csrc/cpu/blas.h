// The one place fastrnn talks to the BLAS library: row-major GEMM for float and double.
// The library is OpenBLAS as shipped on PyPI by `scipy-openblas32` (symbols prefixed `scipy_`,
// 32-bit integers); bench/BLAS.md records why it was chosen.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

#include <cblas.h>

#include "cpu/thread_team.h"

namespace fastrnn::cpu {

// Sizes reach BLAS as 32-bit ints; refuse (never wrap) anything larger.
inline int blas_int(int64_t v, const char* what) {
  if (v < 0 || v > std::numeric_limits<int>::max())
    throw std::length_error(std::string("fastrnn: ") + what + " = " + std::to_string(v) +
                            " exceeds the BLAS 32-bit index range");
  return static_cast<int>(v);
}

// The two BLAS entry points per dtype, behind one overload set.
inline void gemm_raw(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
                     const float* A, int lda, const float* B, int ldb, float beta, float* C,
                     int ldc) {
  scipy_cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
inline void gemm_raw(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, double alpha,
                     const double* A, int lda, const double* B, int ldb, double beta, double* C,
                     int ldc) {
  scipy_cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
inline void gemv_raw(CBLAS_TRANSPOSE t, int rows, int cols, float alpha, const float* A, int lda,
                     const float* x, int incx, float beta, float* y) {
  scipy_cblas_sgemv(CblasRowMajor, t, rows, cols, alpha, A, lda, x, incx, beta, y, 1);
}
inline void gemv_raw(CBLAS_TRANSPOSE t, int rows, int cols, double alpha, const double* A,
                     int lda, const double* x, int incx, double beta, double* y) {
  scipy_cblas_dgemv(CblasRowMajor, t, rows, cols, alpha, A, lda, x, incx, beta, y, 1);
}

// Deterministic mode (fastrnn.set_deterministic): results must not depend on the thread count.
// OpenBLAS splits a product differently for different thread counts, and with it the summation
// order of some entries (seen on the input gradient and on batch-1 GEMV steps). In this mode the
// BLAS library runs single-threaded (build_info.cpp) and gemm() cuts every product into a grid
// of blocks that depends on M and N alone; each block is one single-threaded BLAS call, and the
// team shares out whole blocks. Each entry of C is then computed by the same call, with the same
// operands, whatever the thread count.
bool deterministic_products();

// The blocks: large enough that re-packing the shared operand per block costs a few percent.
inline constexpr int64_t kFixedBlockRows = 256;
inline constexpr int64_t kFixedBlockCols = 512;
// Below this many multiply-adds the blocks run one after another on the calling thread.
inline constexpr double kFixedBlocksTeamWork = 1 << 20;

// C (M x N) = alpha * op(A) * op(B) + beta * C, all row-major, one BLAS call.
// A single-row product (batch 1 recurrent step) goes to GEMV: OpenBLAS's GEMM with M = 1 is
// up to 6x slower than its GEMV at H = 512 (bench/BLAS.md).
template <typename scalar_t>
void gemm_one_call(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, scalar_t alpha,
                   const scalar_t* A, int64_t lda, const scalar_t* B, int64_t ldb, scalar_t beta,
                   scalar_t* C, int64_t ldc) {
  if (M == 1) {
    // c (N) = alpha * op(B)^T a + beta * c, with a the single row of op(A).
    const int inc_a = trans_a ? blas_int(lda, "lda") : 1;
    if (trans_b)  // B is stored (N x K): c = B a
      gemv_raw(CblasNoTrans, blas_int(N, "N"), blas_int(K, "K"), alpha, B, blas_int(ldb, "ldb"),
               A, inc_a, beta, C);
    else          // B is stored (K x N): c = B^T a
      gemv_raw(CblasTrans, blas_int(K, "K"), blas_int(N, "N"), alpha, B, blas_int(ldb, "ldb"),
               A, inc_a, beta, C);
    return;
  }
  gemm_raw(trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
           blas_int(M, "M"), blas_int(N, "N"), blas_int(K, "K"), alpha, A, blas_int(lda, "lda"),
           B, blas_int(ldb, "ldb"), beta, C, blas_int(ldc, "ldc"));
}

// The same product as gemm_one_call, as the fixed grid of blocks of deterministic mode.
template <typename scalar_t>
void gemm_in_fixed_blocks(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                          scalar_t alpha, const scalar_t* A, int64_t lda, const scalar_t* B,
                          int64_t ldb, scalar_t beta, scalar_t* C, int64_t ldc) {
  // Checked here, before any team member runs: a member must not throw.
  for (auto [v, what] : {std::pair<int64_t, const char*>{M, "M"}, {N, "N"}, {K, "K"},
                         {lda, "lda"}, {ldb, "ldb"}, {ldc, "ldc"}})
    blas_int(v, what);
  const int64_t row_blocks = (M + kFixedBlockRows - 1) / kFixedBlockRows;
  const int64_t col_blocks = (N + kFixedBlockCols - 1) / kFixedBlockCols;
  const int64_t blocks = row_blocks * col_blocks;
  auto run_block = [&](int64_t b) {
    const int64_t i0 = (b / col_blocks) * kFixedBlockRows, j0 = (b % col_blocks) * kFixedBlockCols;
    const int64_t rows = std::min(kFixedBlockRows, M - i0), cols = std::min(kFixedBlockCols, N - j0);
    // Row i of op(A) is row i of A, or column i when A is transposed; likewise for B's columns.
    gemm_one_call(trans_a, trans_b, rows, cols, K, alpha, trans_a ? A + i0 : A + i0 * lda, lda,
                  trans_b ? B + j0 * ldb : B + j0, ldb, beta, C + i0 * ldc + j0, ldc);
  };
  const int threads = team_threads();
  if (blocks == 1 || threads == 1 || static_cast<double>(M) * N * K < kFixedBlocksTeamWork) {
    for (int64_t b = 0; b < blocks; ++b) run_block(b);
    return;
  }
  const EvenSplit split{blocks, static_cast<int>(std::min<int64_t>(threads, blocks))};
  run_team(split.parts, [&](int member, int size) noexcept {
    // A team cut short (size < split.parts) still covers every block.
    for (int p = member; p < split.parts; p += size)
      for (int64_t b = split.begin(p); b < split.begin(p + 1); ++b) run_block(b);
  });
}

// C (M x N) = alpha * op(A) * op(B) + beta * C, all row-major: every product fastrnn hands to
// the BLAS library goes through here.
template <typename scalar_t>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, scalar_t alpha,
          const scalar_t* A, int64_t lda, const scalar_t* B, int64_t ldb, scalar_t beta,
          scalar_t* C, int64_t ldc) {
  if (deterministic_products())
    gemm_in_fixed_blocks(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else
    gemm_one_call(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// Threads of the BLAS library's own parallel split (process-wide setting).
inline void blas_set_num_threads(int n) { scipy_openblas_set_num_threads(n); }
inline int blas_get_num_threads() { return scipy_openblas_get_num_threads(); }

inline std::string blas_library_config() {
  std::string config = scipy_openblas_get_config();
  return config + " (kernel: " + scipy_openblas_get_corename() + ")";
}

}  // namespace fastrnn::cpu
