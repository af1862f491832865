// Row-major GEMM on the scipy-openblas32 wheel's CBLAS (symbols prefixed `scipy_`, so they never
// collide with another BLAS in the process). Its integers are 32-bit: a dimension that does not
// fit raises instead of wrapping.
#pragma once

#include <climits>
#include <string>
#include <type_traits>

#include <cstdlib>
#include <new>

#include <cblas.h>

#include "common.h"
#include "cpu/isa.h"
#include "cpu/packed_gemm.h"

namespace fastrnn::cpu {

inline blasint blas_int(int64 v, const char* what) {
  if (v < 0 || v > INT_MAX)
    throw ArgumentError(std::string(what) + " = " + std::to_string(v) +
                        " exceeds the BLAS's 32-bit index limit (2^31 - 1)");
  return static_cast<blasint>(v);
}

// Small float64 products run on the project's packed-panel kernel (packed_gemm.h) instead of the
// BLAS: op(B) packed into panels for the call (and op(A) transposed into rows when trans_a), then
// one packed_gemm. On the single-step sizes of a cell called from Python (a backward's dW = dG^T X
// and dX = dG W_ih at B = 97, G*H = 204, I = 51) it took ~0.75x the time of OpenBLAS's dgemm, which
// runs its Haswell kernels on Zen 4; float32 (sgemm) was as fast as this, products below ~64K
// multiply-adds lost to the per-call packing and allocation, and large K with a transposed A lost
// to the transposing pass, hence the limits (multiply-adds; elements of the packed op(B) and of the
// transposed op(A)), chosen from that comparison (tools/small_gemm_ab.cpp).
constexpr int64 kOwnGemmMinMacs = int64(1) << 16, kOwnGemmMaxMacs = int64(1) << 23;
constexpr int64 kOwnGemmMaxMacsTransA = int64(1) << 21, kOwnGemmMaxPacked = int64(1) << 18, kOwnGemmMinRows = 4;
template <class T> bool own_small_gemm(bool trans_a, int64 M, int64 N, int64 K) {
  if (!std::is_same<T, double>::value || cpu_isa() == Isa::Baseline || M < kOwnGemmMinRows || K < 1 ||
      K * N > kOwnGemmMaxPacked || (trans_a && M * K > kOwnGemmMaxPacked))
    return false;
  const double macs = double(M) * double(N) * double(K);
  return macs >= double(kOwnGemmMinMacs) && macs <= double(trans_a ? kOwnGemmMaxMacsTransA : kOwnGemmMaxMacs);
}
// n elements of T for one call, 64-byte aligned, not cleared. (std::vector and new[] of the same
// ~160 KB cost 2.3x the product itself per call here: value-initialised, and each free handed the
// heap's top back to the kernel; aligned_alloc's blocks did not.)
template <class T> class CallBuffer {
 public:
  explicit CallBuffer(int64 n) : p_(static_cast<T*>(std::aligned_alloc(64, (size_t(n) * sizeof(T) + 63) / 64 * 64))) {
    if (!p_) throw std::bad_alloc();
  }
  ~CallBuffer() { std::free(p_); }
  CallBuffer(const CallBuffer&) = delete;
  CallBuffer& operator=(const CallBuffer&) = delete;
  T* data() { return p_; }

 private:
  T* p_;
};

template <class T>
void own_gemm(bool trans_a, bool trans_b, int64 M, int64 N, int64 K, const T* A, int64 lda, const T* B, int64 ldb,
              bool accumulate, T* C, int64 ldc) {
  CallBuffer<T> panels(packed_size<T>(K, N));
  if (trans_b) pack_panels<T>(K, N, B, 1, ldb, panels.data());  // B [N, K]
  else pack_panels<T>(K, N, B, ldb, 1, panels.data());           // B [K, N]
  CallBuffer<T> rows(trans_a ? M * K : 1);
  if (trans_a) {  // A [K, M] -> rows [M, K]
    T* r = rows.data();
    for (int64 m = 0; m < M; ++m)
      for (int64 k = 0; k < K; ++k) r[m * K + k] = A[k * lda + m];
    A = r;
    lda = K;
  }
  packed_gemm<T>(M, N, K, A, lda, panels.data(), C, ldc, {accumulate, nullptr});
}

// C[M, N] = alpha * op(A) op(B) + beta * C, with op(A) [M, K] and op(B) [K, N]; T = float or double.
template <class T>
void gemm(bool trans_a, bool trans_b, int64 M, int64 N, int64 K, T alpha, const T* A, int64 lda, const T* B,
          int64 ldb, T beta, T* C, int64 ldc) {
  constexpr bool f32 = std::is_same<T, float>::value;
  if (M == 0 || N == 0) return;
  if (alpha == T(1) && (beta == T(0) || beta == T(1)) && own_small_gemm<T>(trans_a, M, N, K))
    return own_gemm<T>(trans_a, trans_b, M, N, K, A, lda, B, ldb, beta == T(1), C, ldc);
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
