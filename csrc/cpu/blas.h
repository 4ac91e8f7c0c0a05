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

// C (M x N) = alpha * op(A) * op(B) + beta * C, all row-major.
template <typename scalar_t>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, scalar_t alpha,
          const scalar_t* A, int64_t lda, const scalar_t* B, int64_t ldb, scalar_t beta,
          scalar_t* C, int64_t ldc);

template <>
inline void gemm<float>(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                        const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                        float* C, int64_t ldc) {
  scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, blas_int(M, "M"), blas_int(N, "N"),
                    blas_int(K, "K"), alpha, A, blas_int(lda, "lda"), B, blas_int(ldb, "ldb"),
                    beta, C, blas_int(ldc, "ldc"));
}

template <>
inline void gemm<double>(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                         double alpha, const double* A, int64_t lda, const double* B, int64_t ldb,
                         double beta, double* C, int64_t ldc) {
  scipy_cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, blas_int(M, "M"), blas_int(N, "N"),
                    blas_int(K, "K"), alpha, A, blas_int(lda, "lda"), B, blas_int(ldb, "ldb"),
                    beta, C, blas_int(ldc, "ldc"));
}

inline std::string blas_library_config() {
  std::string config = scipy_openblas_get_config();
  return config + " (kernel: " + scipy_openblas_get_corename() + ")";
}

}  // namespace fastrnn::cpu
