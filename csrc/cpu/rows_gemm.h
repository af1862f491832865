// The products of calls with few rows in all (T*B < kPackMinRows: one step of a small batch, as a
// cell stepped from Python or a one-step sequence makes), straight from the row-major weights with
// no packing, each weight read once per call. The BLAS repacks its weight operand on every call,
// which is cheap while W sits in L2 but not once it comes from memory: a thread's forward GEMMs of
// an LSTM step at H = 1024, B = 4 ran at 10 GFLOP/s through it against 37-43 here (16 MB of
// weights). For small weights the BLAS stays (layer.h, kRowsKernelMinBytes): it was up to 1.5x
// faster there.
//   rows_gemm     C = A W^T (+ bias)   forward: gi = x W_ih^T, gh = h W_hh^T (M = T*B or B)
//   rows_gemm_nn  C += A W             backward: dh_prev += dG_h W_hh, dX += dG_i W_ih
//   short_k_gemm  C = A W, short K     backward: dW = dG^T X (K = T*B)
// 32-byte vectors on every ISA, with AVX-512's 32 registers where there (zmm were slower on Zen 4,
// which splits them, and twice as long to sum); GCC vector extensions, picked at run time (cpu_isa()).
//
// rows_gemm's tile is MR rows of A times NR rows of W: MR*NR vector accumulators of dot products
// along K, summed across their lanes at the end by halving and a 4x4 transpose (a lane-by-lane sum
// was a serial chain of adds as long as the dot product's own loop at K = 1024).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common.h"
#include "cpu/blas.h"
#include "cpu/isa.h"
#include "cpu/packed_gemm.h"

namespace fastrnn::cpu {

namespace rows_detail {

template <class T, int W> using VecN = typename detail::Vec<T, W * int(sizeof(T))>::type;

// The W lanes of v summed down to 4 partial sums, halving (one add per halving, no serial chain).
// Results go through references, not return values: GCC warns (-Wpsabi) about returning a 32-byte
// vector from the baseline build, although all of this is inlined.
template <class T, int W> __attribute__((always_inline)) inline void fold_to_4(const VecN<T, W>& v, VecN<T, 4>& out) {
  if constexpr (W == 4) {
    out = v;
  } else {
    VecN<T, W / 2> lo, hi;
    std::memcpy(&lo, &v, sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
    fold_to_4<T, W / 2>(lo + hi, out);
  }
}

// out = [sum a, sum b, sum c, sum d] of four W-lane vectors: each folded to 4 lanes, then a 4x4
// transpose folded into its adds.
template <class T, int W>
__attribute__((always_inline)) inline void sums_of_4(const VecN<T, W>* v, VecN<T, 4>& out) {
  using I = std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t>;
  typedef I Mask __attribute__((vector_size(4 * sizeof(T))));
  constexpr Mask lo2{0, 1, 4, 5}, hi2{2, 3, 6, 7}, even{0, 2, 4, 6}, odd{1, 3, 5, 7};
  VecN<T, 4> a, b, c, d;
  fold_to_4<T, W>(v[0], a);
  fold_to_4<T, W>(v[1], b);
  fold_to_4<T, W>(v[2], c);
  fold_to_4<T, W>(v[3], d);
  const VecN<T, 4> ab = __builtin_shuffle(a, b, lo2) + __builtin_shuffle(a, b, hi2);  // a0+a2 a1+a3 b0+b2 b1+b3
  const VecN<T, 4> cd = __builtin_shuffle(c, d, lo2) + __builtin_shuffle(c, d, hi2);
  out = __builtin_shuffle(ab, cd, even) + __builtin_shuffle(ab, cd, odd);
}

template <class T, int VB, int MR, int NR>
__attribute__((always_inline)) inline void dot_tile(int64 K, const T* A, int64 lda, const T* W, int64 ldw, T* C,
                                                    int64 ldc, const T* bias) {
  using V = typename detail::Vec<T, VB>::type;
  constexpr int VW = VB / sizeof(T);
  static_assert(VW >= 4 && (NR == 1 || NR % 4 == 0), "4-lane sums, of 1 row of W or groups of 4");
  // Fully unrolled, so that the accumulators live in registers (without the pragmas GCC kept the
  // AVX2 build's in memory: 5 GFLOP/s).
  V acc[MR][NR];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) acc[m][r] = V{};
  int64 k = 0;
  for (; k + VW <= K; k += VW) {
    V w[NR];  // unaligned loads: V has T's alignment
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) w[r] = *reinterpret_cast<const V*>(W + r * ldw + k);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const V a = *reinterpret_cast<const V*>(A + m * lda + k);
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) acc[m][r] += a * w[r];
    }
  }
  if (k < K) {  // the last K % VW values, zero-padded to one vector (element loops: no memcpy calls)
    const int rest = int(K - k);
    V w[NR];
    for (int r = 0; r < NR; ++r) {
      w[r] = V{};
      for (int i = 0; i < rest; ++i) w[r][i] = W[r * ldw + k + i];
    }
    for (int m = 0; m < MR; ++m) {
      V a{};
      for (int i = 0; i < rest; ++i) a[i] = A[m * lda + k + i];
      for (int r = 0; r < NR; ++r) acc[m][r] += a * w[r];
    }
  }
  for (int m = 0; m < MR; ++m) {
    T* c = C + m * ldc;
    if constexpr (NR > 1) {
#pragma GCC unroll 2
      for (int r = 0; r < NR; r += 4) {
        VecN<T, 4> out;
        sums_of_4<T, VW>(&acc[m][r], out);
        if (bias) {
          VecN<T, 4> b;
          std::memcpy(&b, bias + r, sizeof b);
          out += b;
        }
        std::memcpy(c + r, &out, sizeof out);
      }
    } else {
      VecN<T, 4> v;
      fold_to_4<T, VW>(acc[m][0], v);
      c[0] = (bias ? bias[0] : T(0)) + ((v[0] + v[1]) + (v[2] + v[3]));
    }
  }
}

// Rows [m, M) in tiles of MR, the last M % MR rows in one narrower tile, for NR rows of W.
template <class T, int VB, int MR, int NR>
__attribute__((always_inline)) inline void rows_of(int64 M, int64 K, const T* A, int64 lda, const T* W, int64 ldw,
                                                   T* C, int64 ldc, const T* bias) {
  int64 m = 0;
  for (; m + MR <= M; m += MR) dot_tile<T, VB, MR, NR>(K, A + m * lda, lda, W, ldw, C + m * ldc, ldc, bias);
  if constexpr (MR > 1) {
    if (m < M) rows_of<T, VB, MR - 1, NR>(M - m, K, A + m * lda, lda, W, ldw, C + m * ldc, ldc, bias);
  }
}

// Blocks of NR rows of W (the MR-row tiles of A under each, so that the block is read from memory
// once and from L1 for the rest), then the last N % NR rows one at a time.
template <class T, int VB, int MR, int NR>
__attribute__((always_inline)) inline void rows_gemm_body(int64 M, int64 N, int64 K, const T* A, int64 lda,
                                                          const T* W, int64 ldw, T* C, int64 ldc, const T* bias) {
  int64 n = 0;
  for (; n + NR <= N; n += NR)
    rows_of<T, VB, MR, NR>(M, K, A, lda, W + n * ldw, ldw, C + n, ldc, bias ? bias + n : nullptr);
  if constexpr (NR > 4) {
    for (; n + 4 <= N; n += 4)
      rows_of<T, VB, MR, 4>(M, K, A, lda, W + n * ldw, ldw, C + n, ldc, bias ? bias + n : nullptr);
  }
  for (; n < N; ++n) rows_of<T, VB, MR, 1>(M, K, A, lda, W + n * ldw, ldw, C + n, ldc, bias ? bias + n : nullptr);
}

// MR x NR per ISA: accumulators plus the NR weight vectors and one row of A in registers (32 ymm
// with AVX-512VL: 4x4 = 16 + 4 + 1, or for one or two rows of A 2x8 = 16 + 8 + 1, as many FMAs per
// load; 16 ymm on AVX2: 8 + 4 + 1). Baseline takes 32-byte vectors too (two xmm each), so that a
// vector of doubles still has the 4 lanes the sums above take.
template <class T>
__attribute__((target("avx512f,avx512vl"))) void rows_gemm_avx512(int64 M, int64 N, int64 K, const T* A, int64 lda,
                                                         const T* W, int64 ldw, T* C, int64 ldc, const T* bias) {
  if (M <= 2) rows_gemm_body<T, 32, 2, 8>(M, N, K, A, lda, W, ldw, C, ldc, bias);
  else rows_gemm_body<T, 32, 4, 4>(M, N, K, A, lda, W, ldw, C, ldc, bias);
}
template <class T>
__attribute__((target("avx2,fma,f16c"))) void rows_gemm_avx2(int64 M, int64 N, int64 K, const T* A, int64 lda,
                                                             const T* W, int64 ldw, T* C, int64 ldc, const T* bias) {
  rows_gemm_body<T, 32, 2, 4>(M, N, K, A, lda, W, ldw, C, ldc, bias);
}
template <class T>
void rows_gemm_baseline(int64 M, int64 N, int64 K, const T* A, int64 lda, const T* W, int64 ldw, T* C, int64 ldc,
                        const T* bias) {
  rows_gemm_body<T, 32, 2, 4>(M, N, K, A, lda, W, ldw, C, ldc, bias);
}

// ---- C = A W with a short K (W row-major [K, N], no transpose) -----------------------------------
// The weight gradients of a call with few rows: dW = dG^T X, K = T*B < 16, M = G*H. A tile is MR
// rows of C times NV vectors of its columns; each k broadcasts A[m, k] against NV vectors of row k
// of W (X: a few rows, in L1), and every element of dW is written once (the BLAS zeroed it first,
// then summed into it). A's elements at A[m * a_m + k * a_k], so that dG^T needs no transposed copy.
// Columns past the last whole vector go through zero-padded vectors.
template <class T, int VB, int MR, int NV, bool Whole>
__attribute__((always_inline)) inline void axpy_tile(int64 K, const T* A, int64 a_m, int64 a_k, const T* W,
                                                     int64 ldw, T* C, int64 ldc, int64 cols) {
  using V = typename detail::Vec<T, VB>::type;
  constexpr int VW = VB / sizeof(T);
  V acc[MR][NV];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[m][v] = V{};
  for (int64 k = 0; k < K; ++k) {
    V w[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      if constexpr (Whole) {
        w[v] = *reinterpret_cast<const V*>(W + k * ldw + v * VW);
      } else {
        w[v] = V{};
        for (int64 i = 0; i < cols - v * VW && i < VW; ++i) w[v][i] = W[k * ldw + v * VW + i];
      }
    }
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const T a = A[m * a_m + k * a_k];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[m][v] += a * w[v];
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      if constexpr (Whole) *reinterpret_cast<V*>(C + m * ldc + v * VW) = acc[m][v];
      else
        for (int64 i = 0; i < cols - v * VW && i < VW; ++i) C[m * ldc + v * VW + i] = acc[m][v][i];
    }
}

// MR rows of C: column blocks of NV vectors, then single vectors, then the last N % VW columns
// (zero-padded). Row tiles outside, column blocks inside, so that C is written row by row: a strip
// of columns down all rows steps ldc at a time, and at ldc = 1024 floats every row of it maps to
// the same cache sets.
template <class T, int VB, int MR, int NV>
__attribute__((always_inline)) inline void axpy_cols(int64 N, int64 K, const T* A, int64 a_m, int64 a_k,
                                                     const T* W, int64 ldw, T* C, int64 ldc) {
  constexpr int64 VW = VB / sizeof(T);
  int64 n = 0;
  for (; n + NV * VW <= N; n += NV * VW) axpy_tile<T, VB, MR, NV, true>(K, A, a_m, a_k, W + n, ldw, C + n, ldc, NV * VW);
  for (; n + VW <= N; n += VW) axpy_tile<T, VB, MR, 1, true>(K, A, a_m, a_k, W + n, ldw, C + n, ldc, VW);
  if (n < N) axpy_tile<T, VB, MR, 1, false>(K, A, a_m, a_k, W + n, ldw, C + n, ldc, N - n);
}

// Rows in tiles of MR, the last M % MR rows in one narrower tile.
template <class T, int VB, int MR, int NV>
__attribute__((always_inline)) inline void axpy_body(int64 M, int64 N, int64 K, const T* A, int64 a_m, int64 a_k,
                                                     const T* W, int64 ldw, T* C, int64 ldc) {
  int64 m = 0;
  for (; m + MR <= M; m += MR) axpy_cols<T, VB, MR, NV>(N, K, A + m * a_m, a_m, a_k, W, ldw, C + m * ldc, ldc);
  if constexpr (MR > 1) {
    if (m < M) axpy_body<T, VB, MR - 1, NV>(M - m, N, K, A + m * a_m, a_m, a_k, W, ldw, C + m * ldc, ldc);
  }
}

// MR x NV per ISA: 4 x 4 = 16 ymm accumulators + 4 + 1 with AVX-512VL; 4 x 2 on AVX2 and baseline.
template <class T>
__attribute__((target("avx512f,avx512vl"))) void axpy_avx512(int64 M, int64 N, int64 K, const T* A, int64 a_m,
                                                             int64 a_k, const T* W, int64 ldw, T* C, int64 ldc) {
  axpy_body<T, 32, 4, 4>(M, N, K, A, a_m, a_k, W, ldw, C, ldc);
}
template <class T>
__attribute__((target("avx2,fma,f16c"))) void axpy_avx2(int64 M, int64 N, int64 K, const T* A, int64 a_m,
                                                         int64 a_k, const T* W, int64 ldw, T* C, int64 ldc) {
  axpy_body<T, 32, 4, 2>(M, N, K, A, a_m, a_k, W, ldw, C, ldc);
}
template <class T>
void axpy_baseline(int64 M, int64 N, int64 K, const T* A, int64 a_m, int64 a_k, const T* W, int64 ldw, T* C,
                   int64 ldc) {
  axpy_body<T, 16, 4, 2>(M, N, K, A, a_m, a_k, W, ldw, C, ldc);  // xmm: SSE2 has no wider
}

// ---- C += A W for few rows M and a long K (W row-major [K, N]) ----------------------------------
// The backward's dh_prev += dG_h W_hh per step and dX += dG_i W_ih of a call with few rows: W is
// streamed row by row, KU rows at a time, each vector of them used for every row of C (which stays
// in L1: M*N values). Tiles that walk a block of W's columns down all K rows (as above) step ldw at
// a time: at ldw = 1024 floats every row maps to the same cache sets, and that walk ran at 11-14
// GFLOP/s (the BLAS, which repacks W, at 17; this, 33-41).
template <class T, int VB, int KU>
__attribute__((always_inline)) inline void stream_body(int64 M, int64 N, int64 K, const T* A, int64 lda,
                                                       const T* W, int64 ldw, T* C, int64 ldc) {
  using V = typename detail::Vec<T, VB>::type;
  constexpr int64 VW = VB / sizeof(T), kRows = 16;
  const int64 whole = N / VW * VW, rest = N - whole;
  for (int64 m0 = 0; m0 < M; m0 += kRows) {  // callers pass M < 16: one pass
    const int64 rows = std::min(kRows, M - m0);
    const T* a_rows = A + m0 * lda;
    T* c_rows = C + m0 * ldc;
    // The last N % VW columns of C, zero-padded to a vector per row for the whole call.
    V c_rest[kRows];
    for (int64 m = 0; m < rows; ++m) {
      c_rest[m] = V{};
      for (int64 i = 0; i < rest; ++i) c_rest[m][i] = c_rows[m * ldc + whole + i];
    }
    for (int64 k = 0; k < K; k += KU) {
      const int ku = int(std::min<int64>(KU, K - k));  // KU rows of W, or the last K % KU
      int64 n = 0;
      for (; n + 2 * VW <= N; n += 2 * VW) {
        V w0[KU], w1[KU];
#pragma GCC unroll 8
        for (int u = 0; u < KU; ++u) {
          w0[u] = u < ku ? *reinterpret_cast<const V*>(W + (k + u) * ldw + n) : V{};
          w1[u] = u < ku ? *reinterpret_cast<const V*>(W + (k + u) * ldw + n + VW) : V{};
        }
        for (int64 m = 0; m < rows; ++m) {
          V* c = reinterpret_cast<V*>(c_rows + m * ldc + n);
          V c0 = c[0], c1 = *reinterpret_cast<V*>(c_rows + m * ldc + n + VW);
#pragma GCC unroll 8
          for (int u = 0; u < KU; ++u) {
            const T a = u < ku ? a_rows[m * lda + k + u] : T(0);
            c0 += a * w0[u];
            c1 += a * w1[u];
          }
          c[0] = c0;
          *reinterpret_cast<V*>(c_rows + m * ldc + n + VW) = c1;
        }
      }
      for (; n < N; n += VW) {  // one more whole vector, then the zero-padded last columns
        const bool padded = n == whole;
        V w[KU];
        for (int u = 0; u < KU; ++u) {
          w[u] = V{};
          if (u < ku && !padded) w[u] = *reinterpret_cast<const V*>(W + (k + u) * ldw + n);
          else if (u < ku)
            for (int64 i = 0; i < rest; ++i) w[u][i] = W[(k + u) * ldw + n + i];
        }
        for (int64 m = 0; m < rows; ++m) {
          V c = padded ? c_rest[m] : *reinterpret_cast<const V*>(c_rows + m * ldc + n);
          for (int u = 0; u < ku; ++u) c += a_rows[m * lda + k + u] * w[u];
          if (padded) c_rest[m] = c;
          else *reinterpret_cast<V*>(c_rows + m * ldc + n) = c;
        }
      }
    }
    for (int64 m = 0; m < rows; ++m)
      for (int64 i = 0; i < rest; ++i) c_rows[m * ldc + whole + i] = c_rest[m][i];
  }
}

template <class T>
__attribute__((target("avx512f,avx512vl"))) void stream_avx512(int64 M, int64 N, int64 K, const T* A, int64 lda,
                                                               const T* W, int64 ldw, T* C, int64 ldc) {
  stream_body<T, 32, 4>(M, N, K, A, lda, W, ldw, C, ldc);
}
template <class T>
__attribute__((target("avx2,fma,f16c"))) void stream_avx2(int64 M, int64 N, int64 K, const T* A, int64 lda,
                                                           const T* W, int64 ldw, T* C, int64 ldc) {
  stream_body<T, 32, 4>(M, N, K, A, lda, W, ldw, C, ldc);
}
template <class T>
void stream_baseline(int64 M, int64 N, int64 K, const T* A, int64 lda, const T* W, int64 ldw, T* C, int64 ldc) {
  stream_body<T, 16, 4>(M, N, K, A, lda, W, ldw, C, ldc);
}

}  // namespace rows_detail

// C[M, N] (ldc) = A[M, K] (lda) W[N, K]^T (ldw) (+ bias[N], or nullptr), for small M (M = 1: GEMV).
template <class T>
void rows_gemm(int64 M, int64 N, int64 K, const T* A, int64 lda, const T* W, int64 ldw, T* C, int64 ldc,
               const T* bias) {
  if (M <= 0 || N <= 0) return;
  if (M == 1) {  // a matrix-vector product: the BLAS's GEMV streams W as fast (measured), with no sums
    for (int64 n = 0; n < N; ++n) C[n] = bias ? bias[n] : T(0);
    return gemm(false, true, 1, N, K, T(1), A, lda, W, ldw, T(1), C, ldc);
  }
  switch (cpu_isa()) {
    case Isa::Avx512: return rows_detail::rows_gemm_avx512(M, N, K, A, lda, W, ldw, C, ldc, bias);
    case Isa::Avx2: return rows_detail::rows_gemm_avx2(M, N, K, A, lda, W, ldw, C, ldc, bias);
    case Isa::Baseline: return rows_detail::rows_gemm_baseline(M, N, K, A, lda, W, ldw, C, ldc, bias);
  }
}

// C[M, N] (ldc) = A[M, K] W[K, N] (ldw) for a short K (the weight gradients dW = dG^T X of a call
// with few rows); A's element (m, k) at A[m * a_m + k * a_k] (a_m = 1, a_k = lda for A^T).
template <class T>
void short_k_gemm(int64 M, int64 N, int64 K, const T* A, int64 a_m, int64 a_k, const T* W, int64 ldw, T* C,
                  int64 ldc) {
  if (M <= 0 || N <= 0) return;
  switch (cpu_isa()) {
    case Isa::Avx512: return rows_detail::axpy_avx512(M, N, K, A, a_m, a_k, W, ldw, C, ldc);
    case Isa::Avx2: return rows_detail::axpy_avx2(M, N, K, A, a_m, a_k, W, ldw, C, ldc);
    case Isa::Baseline: return rows_detail::axpy_baseline(M, N, K, A, a_m, a_k, W, ldw, C, ldc);
  }
}

// C[M, N] (ldc) += A[M, K] (lda) W[K, N] (ldw) for few rows M (row-major A), W streamed by rows.
template <class T>
void rows_gemm_nn(int64 M, int64 N, int64 K, const T* A, int64 lda, const T* W, int64 ldw, T* C, int64 ldc) {
  if (M <= 0 || N <= 0) return;
  switch (cpu_isa()) {
    case Isa::Avx512: return rows_detail::stream_avx512(M, N, K, A, lda, W, ldw, C, ldc);
    case Isa::Avx2: return rows_detail::stream_avx2(M, N, K, A, lda, W, ldw, C, ldc);
    case Isa::Baseline: return rows_detail::stream_baseline(M, N, K, A, lda, W, ldw, C, ldc);
  }
}

}  // namespace fastrnn::cpu
