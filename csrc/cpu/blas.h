// Row-major GEMM on the scipy-openblas32 wheel's CBLAS (symbols prefixed `scipy_`, so they never
// collide with another BLAS in the process). Its integers are 32-bit: a dimension that does not
// fit raises instead of wrapping.
#pragma once

#include <climits>
#include <string>
#include <type_traits>

#include <cblas.h>

#include "common.h"

namespace fastrnn::cpu {

inline blasint blas_int(int64 v, const char* what) {
  if (v < 0 || v > INT_MAX)
    throw ArgumentError(std::string(what) + " = " + std::to_string(v) +
                        " exceeds the BLAS's 32-bit index limit (2^31 - 1)");
  return static_cast<blasint>(v);
}

// C[M, N] = alpha * op(A) op(B) + beta * C, with op(A) [M, K] and op(B) [K, N]; T = float or double.
template <class T>
void gemm(bool trans_a, bool trans_b, int64 M, int64 N, int64 K, T alpha, const T* A, int64 lda, const T* B,
          int64 ldb, T beta, T* C, int64 ldc) {
  constexpr bool f32 = std::is_same<T, float>::value;
  if (M == 0 || N == 0) return;
  if (M == 1) {  // a matrix-vector product: skip GEMM's packing of B
    // c = op(B)^T a: B is row-major [N, K] when trans_b (GEMV as is), else [K, N] (GEMV transposed).
    const auto op = trans_b ? CblasNoTrans : CblasTrans;
    const blasint rows = trans_b ? blas_int(N, "GEMV rows") : blas_int(K, "GEMV rows");
    const blasint cols = trans_b ? blas_int(K, "GEMV columns") : blas_int(N, "GEMV columns");
    const blasint incx = trans_a ? blas_int(lda, "lda") : 1;
    if constexpr (f32) scipy_cblas_sgemv(CblasRowMajor, op, rows, cols, alpha, B, blas_int(ldb, "ldb"), A, incx, beta, C, 1);
    else scipy_cblas_dgemv(CblasRowMajor, op, rows, cols, alpha, B, blas_int(ldb, "ldb"), A, incx, beta, C, 1);
    return;
  }
  const auto ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
  const blasint m = blas_int(M, "GEMM rows"), n = blas_int(N, "GEMM columns"), k = blas_int(K, "GEMM depth");
  if constexpr (f32)
    scipy_cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, A, blas_int(lda, "lda"), B, blas_int(ldb, "ldb"), beta, C,
                      blas_int(ldc, "ldc"));
  else
    scipy_cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, A, blas_int(lda, "lda"), B, blas_int(ldb, "ldb"), beta, C,
                      blas_int(ldc, "ldc"));
}

// fastrnn runs its own OpenMP team and calls the BLAS from inside it, one thread per call: two
// thread pools on the same cores (OpenMP spinning while OpenBLAS's threads wait) was measured 10x slower.
inline void blas_single_threaded() { scipy_openblas_set_num_threads(1); }

}  // namespace fastrnn::cpu
