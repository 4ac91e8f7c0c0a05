// The one place fastrnn talks to the BLAS library: row-major GEMM for float and double.
// The library is OpenBLAS as shipped on PyPI by `scipy-openblas32` (symbols prefixed `scipy_`,
// 32-bit integers); bench/BLAS.md records why it was chosen.
#pragma once

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include <cblas.h>

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

// C (M x N) = alpha * op(A) * op(B) + beta * C, all row-major.
// A single-row product (batch 1 recurrent step) goes to GEMV: OpenBLAS's GEMM with M = 1 is
// up to 6x slower than its GEMV at H = 512 (bench/BLAS.md).
template <typename scalar_t>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, scalar_t alpha,
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

// Threads of the BLAS library, the only threads fastrnn uses today (process-wide setting).
inline void blas_set_num_threads(int n) { scipy_openblas_set_num_threads(n); }
inline int blas_get_num_threads() { return scipy_openblas_get_num_threads(); }

inline std::string blas_library_config() {
  std::string config = scipy_openblas_get_config();
  return config + " (kernel: " + scipy_openblas_get_corename() + ")";
}

}  // namespace fastrnn::cpu
