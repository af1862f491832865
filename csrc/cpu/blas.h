// Row-major GEMM on the scipy-openblas32 wheel's CBLAS (symbols prefixed `scipy_`, so they never
// collide with another BLAS in the process). Its integers are 32-bit: a dimension that does not
// fit raises instead of wrapping.
#pragma once

#include <climits>
#include <string>

#include <cblas.h>

#include "common.h"

namespace fastrnn::cpu {

inline blasint blas_int(int64 v, const char* what) {
  if (v < 0 || v > INT_MAX)
    throw ArgumentError(std::string(what) + " = " + std::to_string(v) +
                        " exceeds the BLAS's 32-bit index limit (2^31 - 1)");
  return static_cast<blasint>(v);
}

// C[M, N] = alpha * op(A) op(B) + beta * C, with op(A) [M, K] and op(B) [K, N].
inline void gemm(bool trans_a, bool trans_b, int64 M, int64 N, int64 K, float alpha, const float* A,
                 int64 lda, const float* B, int64 ldb, float beta, float* C, int64 ldc) {
  if (M == 0 || N == 0) return;
  if (M == 1) {  // a matrix-vector product: skip GEMM's packing of B
    if (trans_b)
      scipy_cblas_sgemv(CblasRowMajor, CblasNoTrans, blas_int(N, "GEMV rows"), blas_int(K, "GEMV columns"), alpha, B,
                        blas_int(ldb, "ldb"), A, trans_a ? blas_int(lda, "lda") : 1, beta, C, 1);
    else
      scipy_cblas_sgemv(CblasRowMajor, CblasTrans, blas_int(K, "GEMV rows"), blas_int(N, "GEMV columns"), alpha, B,
                        blas_int(ldb, "ldb"), A, trans_a ? blas_int(lda, "lda") : 1, beta, C, 1);
    return;
  }
  scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                    blas_int(M, "GEMM rows"), blas_int(N, "GEMM columns"), blas_int(K, "GEMM depth"), alpha, A,
                    blas_int(lda, "lda"), B, blas_int(ldb, "ldb"), beta, C, blas_int(ldc, "ldc"));
}

inline void gemm(bool trans_a, bool trans_b, int64 M, int64 N, int64 K, double alpha, const double* A,
                 int64 lda, const double* B, int64 ldb, double beta, double* C, int64 ldc) {
  if (M == 0 || N == 0) return;
  if (M == 1) {  // a matrix-vector product: skip GEMM's packing of B
    if (trans_b)
      scipy_cblas_dgemv(CblasRowMajor, CblasNoTrans, blas_int(N, "GEMV rows"), blas_int(K, "GEMV columns"), alpha, B,
                        blas_int(ldb, "ldb"), A, trans_a ? blas_int(lda, "lda") : 1, beta, C, 1);
    else
      scipy_cblas_dgemv(CblasRowMajor, CblasTrans, blas_int(K, "GEMV rows"), blas_int(N, "GEMV columns"), alpha, B,
                        blas_int(ldb, "ldb"), A, trans_a ? blas_int(lda, "lda") : 1, beta, C, 1);
    return;
  }
  scipy_cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                    blas_int(M, "GEMM rows"), blas_int(N, "GEMM columns"), blas_int(K, "GEMM depth"), alpha, A,
                    blas_int(lda, "lda"), B, blas_int(ldb, "ldb"), beta, C, blas_int(ldc, "ldc"));
}

// fastrnn runs its own OpenMP team and calls the BLAS from inside it, one thread per call: two
// thread pools on the same cores (OpenMP spinning while OpenBLAS's threads wait) was measured 10x slower.
inline void blas_single_threaded() { scipy_openblas_set_num_threads(1); }

}  // namespace fastrnn::cpu
