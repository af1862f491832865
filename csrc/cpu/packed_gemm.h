// The recurrent step's small-M GEMM on weights packed once per call: C[M, N] (+)= A[M, K] P[K, N].
// The BLAS repacks its B operand on every call, which for the per-step product h_prev W_hh^T
// (M = batch, small) re-reads the whole weight slice each step; here each thread packs its slice of
// W_hh once into 64-byte panels and reuses them for every step, so they stay in its own L2.
//
// Packed layout: P = [ceil(N/PW) panels][K][PW], PW = 64 bytes of T (16 floats, 8 doubles), the
// last panel zero-padded. The kernel is written with GCC vector extensions and compiled for
// AVX-512, AVX2+FMA and baseline x86-64, picked once at run time from the CPU's features.
#pragma once

#include <algorithm>
#include <cstring>
#include <vector>

#include "common.h"

namespace fastrnn::cpu {

template <class T> constexpr int64 panel_width() { return 64 / sizeof(T); }

template <class T> int64 packed_size(int64 K, int64 N) {
  return checked_mul(checked_mul((N + panel_width<T>() - 1) / panel_width<T>(), K, "packed weights"),
                     panel_width<T>(), "packed weights");
}

// P[k, n] = elem(k, n) for k < K, n < N; zeros in the padding.
template <class T, class Elem> void pack_panels(int64 K, int64 N, Elem elem, T* P) {
  constexpr int64 PW = panel_width<T>();
  for (int64 p = 0; p * PW < N; ++p)
    for (int64 k = 0; k < K; ++k) {
      T* dst = P + (p * K + k) * PW;
      for (int64 i = 0; i < PW; ++i) dst[i] = p * PW + i < N ? elem(k, p * PW + i) : T(0);
    }
}

namespace detail {

template <class T> struct Vec {
  typedef T type __attribute__((vector_size(64), aligned(alignof(T))));
};

// One tile: MR rows of A times NP panels, accumulated in MR*NP vector registers.
template <class T, int MR, int NP>
__attribute__((always_inline)) inline void tile(int64 K, const T* A, int64 lda, const T* P, int64 K_PW, T* C,
                                                int64 ldc, int64 ncols, bool accumulate) {
  using V = typename Vec<T>::type;
  constexpr int64 PW = panel_width<T>();
  V acc[MR][NP];
  for (int m = 0; m < MR; ++m)
    for (int p = 0; p < NP; ++p) acc[m][p] = V{};
  for (int64 k = 0; k < K; ++k) {
    V b[NP];
    for (int p = 0; p < NP; ++p) b[p] = *reinterpret_cast<const V*>(P + p * K_PW + k * PW);
    for (int m = 0; m < MR; ++m) {
      const T a = A[m * lda + k];
      for (int p = 0; p < NP; ++p) acc[m][p] += a * b[p];
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int p = 0; p < NP; ++p) {
      T* c = C + m * ldc + p * PW;
      const int64 n = std::min<int64>(PW, ncols - p * PW);
      if (n <= 0) continue;
      T out[PW];
      std::memcpy(out, &acc[m][p], sizeof out);
      if (accumulate)
        for (int64 i = 0; i < n; ++i) c[i] += out[i];
      else
        for (int64 i = 0; i < n; ++i) c[i] = out[i];
    }
}

// Rows [m_begin, m_end) in tiles of MR rows x NP panels (a narrower tile for the last panels).
// No lambdas here: GCC compiles a lambda for the default target, not the caller's.
template <class T, int MR, int NP>
__attribute__((always_inline)) inline void sweep(int64 m_begin, int64 m_end, int64 N, int64 K, const T* A, int64 lda,
                                                 const T* P, T* C, int64 ldc, bool accumulate) {
  constexpr int64 PW = panel_width<T>();
  const int64 panels = (N + PW - 1) / PW, K_PW = K * PW;
  for (int64 p = 0; p < panels; p += NP) {
    const int64 left = panels - p, ncols = N - p * PW;
    for (int64 m = m_begin; m + MR <= m_end; m += MR) {
      const T* a = A + m * lda;
      const T* pp = P + p * K_PW;
      T* c = C + m * ldc + p * PW;
      if (left >= NP) tile<T, MR, NP>(K, a, lda, pp, K_PW, c, ldc, ncols, accumulate);
      else
        for (int64 q = 0; q < left; ++q)
          tile<T, MR, 1>(K, a, lda, pp + q * K_PW, K_PW, c + q * PW, ldc, ncols - q * PW, accumulate);
    }
  }
}

// Rows in tiles of 4; the last one to three rows with more panels per tile, which keeps enough
// independent FMAs in flight when the batch is tiny (B = 1 is a matrix-vector product).
template <class T>
__attribute__((always_inline)) inline void packed_gemm_body(int64 M, int64 N, int64 K, const T* A, int64 lda,
                                                            const T* P, T* C, int64 ldc, bool accumulate) {
  int64 m = M / 4 * 4;
  sweep<T, 4, 2>(0, m, N, K, A, lda, P, C, ldc, accumulate);
  if (M - m >= 2) {
    sweep<T, 2, 4>(m, m + 2, N, K, A, lda, P, C, ldc, accumulate);
    m += 2;
  }
  if (M - m == 1) sweep<T, 1, 8>(m, m + 1, N, K, A, lda, P, C, ldc, accumulate);
}

template <class T>
__attribute__((target("avx512f"))) void packed_gemm_avx512(int64 M, int64 N, int64 K, const T* A, int64 lda,
                                                            const T* P, T* C, int64 ldc, bool accumulate) {
  packed_gemm_body(M, N, K, A, lda, P, C, ldc, accumulate);
}
template <class T>
__attribute__((target("avx2,fma"))) void packed_gemm_avx2(int64 M, int64 N, int64 K, const T* A, int64 lda,
                                                           const T* P, T* C, int64 ldc, bool accumulate) {
  packed_gemm_body(M, N, K, A, lda, P, C, ldc, accumulate);
}
template <class T>
void packed_gemm_baseline(int64 M, int64 N, int64 K, const T* A, int64 lda, const T* P, T* C, int64 ldc,
                          bool accumulate) {
  packed_gemm_body(M, N, K, A, lda, P, C, ldc, accumulate);
}

enum class Isa { Avx512, Avx2, Baseline };
inline Isa detect_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Isa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
  return Isa::Baseline;
}

}  // namespace detail

// C[M, N] (ldc) = A[M, K] (lda) P  (or += with `accumulate`), P packed by pack_panels(K, N, ...).
template <class T>
void packed_gemm(int64 M, int64 N, int64 K, const T* A, int64 lda, const T* P, T* C, int64 ldc, bool accumulate) {
  static const detail::Isa isa = detail::detect_isa();
  if (M <= 0 || N <= 0) return;
  switch (isa) {
    case detail::Isa::Avx512: return detail::packed_gemm_avx512(M, N, K, A, lda, P, C, ldc, accumulate);
    case detail::Isa::Avx2: return detail::packed_gemm_avx2(M, N, K, A, lda, P, C, ldc, accumulate);
    case detail::Isa::Baseline: return detail::packed_gemm_baseline(M, N, K, A, lda, P, C, ldc, accumulate);
  }
}

}  // namespace fastrnn::cpu
