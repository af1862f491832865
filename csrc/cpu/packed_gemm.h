// The recurrent step's small-M GEMM on weights packed once per call: C[M, N] (+)= A[M, K] P[K, N].
// The BLAS repacks its B operand on every call, which for the per-step product h_prev W_hh^T
// (M = batch, small) re-reads the whole weight slice each step; here each thread packs its slice of
// W_hh once into 64-byte panels and reuses them for every step, so they stay in its own L2.
//
// Packed layout: P = [ceil(N/PW) panels][K][PW], PW = 64 bytes of T (16 floats, 8 doubles), the
// last panel zero-padded. The kernel is written with GCC vector extensions and compiled for
// AVX-512, AVX2+FMA and baseline x86-64 (SSE2), each with its own register blocking, picked once at
// run time from the CPU's features. The same kernel runs on panels of 16-bit values (W = bf16 or
// fp16, 16 columns a panel like float32's, csrc/cpu/packed_gemm16.h packs them), widening each
// panel vector to float32 once per k and row tile: half the bytes of the weights, float32 maths.
#pragma once

#include <algorithm>
#include <cstring>

#include <immintrin.h>
#include <type_traits>
#include <vector>

#include "common.h"
#include "cpu/isa.h"
#include "cpu/storage16.h"

namespace fastrnn::cpu {

template <class T> constexpr int64 panel_width() { return 64 / sizeof(T); }

template <class T> int64 packed_size(int64 K, int64 N) {
  return checked_mul(checked_mul((N + panel_width<T>() - 1) / panel_width<T>(), K, "packed weights"),
                     panel_width<T>(), "packed weights");
}

// P[k, n] = src[k * stride_k + n * stride_n] for k < K, n < N; zeros in the padding. Strides, not
// an element functor: the callers are compiled for other targets (#pragma GCC target), and GCC
// compiles a lambda for the default target and calls it per element instead of inlining it.
template <class T>
void pack_panels(int64 K, int64 N, const T* src, int64 stride_k, int64 stride_n, T* P) {
  constexpr int64 PW = panel_width<T>();
  for (int64 p = 0; p * PW < N; ++p) {
    const int64 n0 = p * PW, width = std::min(PW, N - n0);
    for (int64 k = 0; k < K; ++k) {
      T* dst = P + (p * K + k) * PW;
      const T* s = src + k * stride_k + n0 * stride_n;
      for (int64 i = 0; i < width; ++i) dst[i] = s[i * stride_n];
      for (int64 i = width; i < PW; ++i) dst[i] = T(0);
    }
  }
}

// How a tile's accumulators start and end: C = A P (+ bias[n], broadcast down the rows), or
// C += A P. Folding the bias into the accumulators' start saves the pass that would first copy it
// into every row of C.
template <class T> struct Epilogue {
  bool accumulate;  // C += A P
  const T* bias;    // [N] or nullptr; only without accumulate
};

// Rows of A per block: about 128 KB of A (K values a row), which stays in L2 while every panel of P
// streams past it (unblocked, a tall A was re-read from L3 once per group of panels).
template <class T> int64 row_block(int64 K) { return std::max<int64>(1, (int64(128) << 10) / (K * int64(sizeof(T)))); }

namespace detail {

// A vector of VB bytes of T: 64 (one zmm) on AVX-512, 32 (one ymm) on AVX2 and baseline, so that
// each accumulator is one register; a 64-byte panel is VP = 64 / VB vectors.
template <class T, int VB> struct Vec {
  typedef T type __attribute__((vector_size(VB), aligned(alignof(T))));
};

// A float32 vector `out` of VW lanes from VW 16-bit values (T-aligned loads). Through a reference,
// not a return value: GCC warns (-Wpsabi) about returning vectors from code of the default target,
// although this is always inlined. float16: vcvtph2ps (VW = 16: AVX-512; 8: AVX2 or AVX-512's half
// panels, both with F16C); VW = 4 is the baseline build, which has no F16C: integer bit arithmetic.
template <class V, int VW> __attribute__((always_inline)) inline void widen_vec(const bf16* p, V& out) {
  // VW bf16 values in the low halves of VW 32-bit lanes, shifted up: the float32 of the same bits
  typename Vec<std::uint32_t, VW * 4>::type bits;
  for (int i = 0; i < VW; ++i) bits[i] = std::uint32_t(reinterpret_cast<const std::uint16_t*>(p)[i]) << 16;
  std::memcpy(&out, &bits, sizeof out);
}
template <class V, int VW> __attribute__((always_inline)) inline void widen_vec(const fp16* p, V& out) {
  // vcvtph2ps as inline assembly: an intrinsic would have to be inlined into this function,
  // which is compiled for the default target (only its callers are AVX2 / AVX-512 code).
  // The 16-bit values come in through a register, not a memory operand: with one, GCC kept a
  // memory copy of the tile's accumulators up to date at every k (a store per FMA).
  if constexpr (VW == 16) {
    typename Vec<std::uint16_t, 32>::type h;
    std::memcpy(&h, p, sizeof h);
    asm("vcvtph2ps %t1, %g0" : "=v"(out) : "v"(h));
  } else if constexpr (VW == 8) {
    typename Vec<std::uint16_t, 16>::type h;
    std::memcpy(&h, p, sizeof h);
    asm("vcvtph2ps %x1, %t0" : "=x"(out) : "x"(h));
  } else {
    for (int i = 0; i < VW; ++i) out[i] = fp16_bits_to_float(reinterpret_cast<const std::uint16_t*>(p)[i]);
  }
}

// One tile: MR rows of A times NP panels, accumulated in MR*NP*VU vector registers, VU of the
// panel's VP vectors (all of them, or the first half for a last panel at most half full); the
// panels' vectors are loaded as FMA operands, so only the accumulators and one broadcast live in
// registers. Panels of 16-bit W: each panel vector is widened once and used for all MR rows.
template <class T, int VB, int MR, int NP, int VU = 64 / VB, class W>
__attribute__((always_inline)) inline void tile(int64 K, const T* A, int64 lda, const W* P, int64 K_PW, T* C,
                                                int64 ldc, int64 ncols, Epilogue<T> e) {
  using V = typename Vec<T, VB>::type;
  constexpr int64 PW = panel_width<T>();
  constexpr int VW = VB / sizeof(T);
  constexpr int64 UW = VU * VW;  // columns of each panel this tile computes
  static_assert(VU >= 1 && UW <= PW, "a tile covers at most a whole panel");
  V acc[MR][NP * VU];
  for (int p = 0; p < NP; ++p)
    for (int v = 0; v < VU; ++v) {
      V start = V{};
      const int64 n0 = p * PW + v * VW;
      if (e.bias && n0 + VW <= ncols) std::memcpy(&start, e.bias + n0, sizeof start);
      else if (e.bias)
        for (int64 i = 0; n0 + i < ncols && i < VW; ++i) start[i] = e.bias[n0 + i];
      for (int m = 0; m < MR; ++m) acc[m][p * VU + v] = start;
    }
  if constexpr (std::is_same<W, T>::value) {
    for (int64 k = 0; k < K; ++k)
      for (int m = 0; m < MR; ++m) {
        const T a = A[m * lda + k];
        for (int p = 0; p < NP; ++p)
          for (int v = 0; v < VU; ++v)
            acc[m][p * VU + v] += a * *reinterpret_cast<const V*>(P + p * K_PW + k * PW + v * VW);
      }
  } else {
    for (int64 k = 0; k < K; ++k) {  // fully unrolled, so that acc and w stay in registers
      V w[NP * VU];
#pragma GCC unroll 16
      for (int i = 0; i < NP * VU; ++i) {
        V t;
        widen_vec<V, VW>(P + (i / VU) * K_PW + k * PW + (i % VU) * VW, t);
        w[i] = t;
      }
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        const T a = A[m * lda + k];
#pragma GCC unroll 16
        for (int i = 0; i < NP * VU; ++i) acc[m][i] += a * w[i];
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int p = 0; p < NP; ++p) {
      T* c = C + m * ldc + p * PW;
      const int64 n = std::min<int64>(UW, ncols - p * PW);
      if (n <= 0) continue;
      if (n == UW) {  // every computed column: vector stores
        for (int v = 0; v < VU; ++v) {
          V* cv = reinterpret_cast<V*>(c + v * VW);
          *cv = e.accumulate ? *cv + acc[m][p * VU + v] : acc[m][p * VU + v];
        }
        continue;
      }
      T out[UW];
      std::memcpy(out, &acc[m][p * VU], sizeof out);
      if (e.accumulate)
        for (int64 i = 0; i < n; ++i) c[i] += out[i];
      else
        for (int64 i = 0; i < n; ++i) c[i] = out[i];
    }
}

// The epilogue of the columns from n on.
template <class T> inline Epilogue<T> shifted(Epilogue<T> e, int64 n) { return {e.accumulate, e.bias ? e.bias + n : nullptr}; }

// Rows [m_begin, m_end) (a multiple of MR of them) in tiles of MR rows x NP panels (one panel at a
// time for the last panels). A last panel at most half full is computed on its first half only, in
// 32-byte vectors: a thread's share of odd sizes (H = 200 over two threads: 104 columns, 6.5
// panels) then costs half a panel less, and on CPUs that split 512-bit operations in two (Zen 4)
// half the FMA time of that panel. No lambdas here: GCC compiles a lambda for the default target,
// not the caller's.
template <class T, int VB, int MR, int NP, class W>
__attribute__((always_inline)) inline void sweep(int64 m_begin, int64 m_end, int64 N, int64 K, const T* A, int64 lda,
                                                 const W* P, T* C, int64 ldc, Epilogue<T> e) {
  constexpr int64 PW = panel_width<T>();
  constexpr int HB = VB < 32 ? VB : 32, HU = 32 / HB;  // the half panel: HU vectors of HB bytes
  const int64 K_PW = K * PW, tail = N % PW;
  const bool half_tail = tail != 0 && tail <= PW / 2;
  const int64 panels = (N + PW - 1) / PW - (half_tail ? 1 : 0);  // computed whole
  if (half_tail)
    for (int64 m = m_begin; m + MR <= m_end; m += MR)
      tile<T, HB, MR, 1, HU>(K, A + m * lda, lda, P + panels * K_PW, K_PW, C + m * ldc + panels * PW, ldc, tail,
                             shifted(e, panels * PW));
  for (int64 p = 0; p < panels; p += NP) {
    const int64 left = panels - p, ncols = N - p * PW;
    for (int64 m = m_begin; m + MR <= m_end; m += MR) {
      const T* a = A + m * lda;
      const W* pp = P + p * K_PW;
      T* c = C + m * ldc + p * PW;
      if (left >= NP) tile<T, VB, MR, NP>(K, a, lda, pp, K_PW, c, ldc, ncols, shifted(e, p * PW));
      else
        for (int64 q = 0; q < left; ++q)
          tile<T, VB, MR, 1>(K, a, lda, pp + q * K_PW, K_PW, c + q * PW, ldc, ncols - q * PW, shifted(e, (p + q) * PW));
    }
  }
}

// Panels per tile for MR rows: as many as keep about `Acc` accumulators busy (enough independent
// FMAs in flight to hide their latency, few enough to stay in registers), at least one.
template <int VB, int MR, int Acc> constexpr int panels_for() {
  constexpr int per_panel = MR * (64 / VB);
  return Acc / per_panel > 1 ? Acc / per_panel : 1;
}

// Rows in tiles of MR; the last R < MR rows in one narrower tile with more panels. MR and Acc per
// ISA: 16 vector registers on AVX2 (6 rows x 1 panel = 12 ymm accumulators, the classic 6x16
// shape), 32 on AVX-512 (4 rows x 2 panels = 8 zmm).
template <class T, int VB, int MR, int Acc, int R = MR - 1, class W>
__attribute__((always_inline)) inline void rest(int64 m, int64 M, int64 N, int64 K, const T* A, int64 lda,
                                                const W* P, T* C, int64 ldc, Epilogue<T> e) {
  if constexpr (R >= 1) {
    if (M - m == R) return sweep<T, VB, R, panels_for<VB, R, Acc>()>(m, M, N, K, A, lda, P, C, ldc, e);
    rest<T, VB, MR, Acc, R - 1>(m, M, N, K, A, lda, P, C, ldc, e);
  }
}

template <class T, int VB, int MR, int Acc, class W>
__attribute__((always_inline)) inline void packed_gemm_body(int64 M, int64 N, int64 K, const T* A, int64 lda,
                                                            const W* P, T* C, int64 ldc, Epilogue<T> e) {
  const int64 block = std::max<int64>(1, row_block<T>(K) / MR) * MR;
  for (int64 b = 0; b < M; b += block) {
    const int64 rows = std::min(block, M - b), m = rows / MR * MR;
    const T* a = A + b * lda;
    T* c = C + b * ldc;
    sweep<T, VB, MR, panels_for<VB, MR, Acc>()>(0, m, N, K, a, lda, P, c, ldc, e);
    rest<T, VB, MR, Acc>(m, rows, N, K, a, lda, P, c, ldc, e);
  }
}

template <class T, class W>
__attribute__((target("avx512f,f16c"))) void packed_gemm_avx512(int64 M, int64 N, int64 K, const T* A, int64 lda,
                                                            const W* P, T* C, int64 ldc, Epilogue<T> e) {
  packed_gemm_body<T, 64, 4, 8>(M, N, K, A, lda, P, C, ldc, e);
}
template <class T, class W>
__attribute__((target("avx2,fma,f16c"))) void packed_gemm_avx2(int64 M, int64 N, int64 K, const T* A, int64 lda,
                                                           const W* P, T* C, int64 ldc, Epilogue<T> e) {
  packed_gemm_body<T, 32, 6, 12>(M, N, K, A, lda, P, C, ldc, e);
}
template <class T, class W>
void packed_gemm_baseline(int64 M, int64 N, int64 K, const T* A, int64 lda, const W* P, T* C, int64 ldc,
                          Epilogue<T> e) {
  packed_gemm_body<T, 16, 2, 8>(M, N, K, A, lda, P, C, ldc, e);
}

}  // namespace detail

// C[M, N] (ldc) = A[M, K] (lda) P (+ e.bias), or C += A P with e.accumulate; P packed by
// pack_panels(K, N, ...), or (W = bf16 / fp16, T = float) by pack_panels16 (packed_gemm16.h).
template <class T, class W = T>
void packed_gemm(int64 M, int64 N, int64 K, const T* A, int64 lda, const W* P, T* C, int64 ldc, Epilogue<T> e) {
  if (M <= 0 || N <= 0) return;
  switch (cpu_isa()) {
    case Isa::Avx512: return detail::packed_gemm_avx512(M, N, K, A, lda, P, C, ldc, e);
    case Isa::Avx2: return detail::packed_gemm_avx2(M, N, K, A, lda, P, C, ldc, e);
    case Isa::Baseline: return detail::packed_gemm_baseline(M, N, K, A, lda, P, C, ldc, e);
  }
}

}  // namespace fastrnn::cpu
