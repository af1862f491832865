// The packed products on 16-bit weights: C[M, N] (+)= A[M, K] P with A and C float32 and P the
// weights packed once per call as 16-bit panels (16 columns each, like float32's), for the
// product objects of a call whose weights are marked 16-bit (LayerWeights::storage). Two kernels:
//   - bfloat16 with AVX512_BF16 (bf16_dot()): vdpbf16ps, which multiplies pairs of bf16 values and
//     adds both products to a float32 lane, twice the multiply-adds of a float32 FMA per
//     instruction. P holds pairs of rows interleaved, [panels][ceil(K/2)][16][2] (a zero row pads
//     an odd K); A is rounded to bfloat16 pairs (round to nearest even) once per row block, so its
//     callers keep A in float32 (the recurrent h, the gate gradients).
//   - otherwise (float16 on every ISA, bfloat16 without AVX512_BF16): packed_gemm.h's kernel on
//     [panels][K][16] 16-bit panels, widened to float32 in registers; A is used as it is.
// Accumulation is float32 in both.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include <immintrin.h>

#include "common.h"
#include "cpu/isa.h"
#include "cpu/packed_gemm.h"
#include "cpu/storage16.h"

namespace fastrnn::cpu {

// How a call's products use 16-bit weights, chosen once per call from the weights' storage and
// the CPU: not at all (float32 panels), the bf16 dot product, or widening bf16 / fp16 panels.
enum class Panels16 { None, Bf16Dot, Bf16, Fp16 };
inline Panels16 panels16_for(Storage s) {
  if (s == Storage::Bfloat16) return bf16_dot() ? Panels16::Bf16Dot : Panels16::Bf16;
  return s == Storage::Float16 ? Panels16::Fp16 : Panels16::None;
}

constexpr int64 kPanel16 = 16;  // columns per panel (one zmm of float32 accumulators)

// 16-bit elements of the panels of a K x N block.
inline int64 packed16_size(Panels16 kind, int64 K, int64 N) {
  const int64 panels = (N + kPanel16 - 1) / kPanel16;
  const int64 rows = kind == Panels16::Bf16Dot ? checked_mul((K + 1) / 2, 2, "packed weights") : K;
  return checked_mul(checked_mul(panels, rows, "packed weights"), kPanel16, "packed weights");
}

// pack_panels16 for the two layouts its callers have, a row (of k or of n) of src at a time: the
// contiguous source values are rounded to 16 bits by the vectorised narrow16 (storage16.h) into a
// buffer of kPackChunk values, which is then laid out in the panels. Element by element, with the
// rounding, the index arithmetic and the padding tests in the inner loop, packing cost more than
// the products at small batch (a training call packs W_ih and W_hh twice).
namespace pack16_detail {
constexpr int64 kPackChunk = 256;
inline void round_row(Panels16 kind, const float* src, int64 n, std::uint16_t* bits) {
  if (kind == Panels16::Fp16) narrow16(src, reinterpret_cast<fp16*>(bits), n, 1);
  else narrow16(src, reinterpret_cast<bf16*>(bits), n, 1);
}
}  // namespace pack16_detail

// src's columns contiguous (stride_n = 1): P[k, n] = src[k * stride_k + n], row k (a pair of rows
// with Bf16Dot) at a time.
inline void pack_panels16_rows(Panels16 kind, int64 K, int64 N, const float* src, int64 stride_k, std::uint16_t* P) {
  using pack16_detail::kPackChunk;
  const int64 PW = kPanel16;
  const bool pairs = kind == Panels16::Bf16Dot;
  const int64 rows = pairs ? (K + 1) / 2 * 2 : K, step = pairs ? 2 : 1;
  alignas(64) std::uint16_t bits[2][kPackChunk];  // rows k, k + 1 of a chunk of columns
  for (int64 k = 0; k < rows; k += step)
    for (int64 c0 = 0; c0 < N; c0 += kPackChunk) {
      const int64 cn = std::min(kPackChunk, N - c0), padded = (cn + PW - 1) / PW * PW;
      for (int64 r = 0; r < step; ++r) {
        if (k + r < K) pack16_detail::round_row(kind, src + (k + r) * stride_k + c0, cn, bits[r]);
        else std::memset(bits[r], 0, sizeof bits[r]);  // the zero row after an odd K
        std::memset(bits[r] + cn, 0, sizeof(std::uint16_t) * (padded - cn));
      }
      for (int64 n0 = 0; n0 < cn; n0 += PW) {
        std::uint16_t* dst = P + ((c0 + n0) / PW) * rows * PW + k * PW;  // pairs: [k / 2][n][2]
        if (!pairs) {
          std::memcpy(dst, bits[0] + n0, sizeof(std::uint16_t) * PW);
          continue;
        }
        std::uint32_t pair[kPanel16];
        for (int64 i = 0; i < PW; ++i) pair[i] = std::uint32_t(bits[0][n0 + i]) | std::uint32_t(bits[1][n0 + i]) << 16;
        std::memcpy(dst, pair, sizeof pair);
      }
    }
}

// src's rows contiguous (stride_k = 1, W^T of a row-major W): P[k, n] = src[k + n * stride_n],
// the panel's 16 rows of src rounded a chunk of k at a time, then transposed into the panel.
inline void pack_panels16_cols(Panels16 kind, int64 K, int64 N, const float* src, int64 stride_n, std::uint16_t* P) {
  using pack16_detail::kPackChunk;
  const int64 PW = kPanel16;
  const bool pairs = kind == Panels16::Bf16Dot;
  const int64 rows = pairs ? (K + 1) / 2 * 2 : K;
  alignas(64) std::uint16_t bits[kPanel16][kPackChunk];  // [n][k] of a chunk of k
  for (int64 n0 = 0; n0 < N; n0 += PW) {
    const int64 width = std::min(PW, N - n0);
    std::uint16_t* panel = P + (n0 / PW) * rows * PW;
    for (int64 k0 = 0; k0 < rows; k0 += kPackChunk) {
      const int64 kn = std::min(kPackChunk, rows - k0), live = std::max<int64>(0, std::min(kn, K - k0));
      for (int64 i = 0; i < PW; ++i) {
        if (i < width) pack16_detail::round_row(kind, src + (n0 + i) * stride_n + k0, live, bits[i]);
        std::memset(bits[i] + (i < width ? live : 0), 0, sizeof(std::uint16_t) * (kn - (i < width ? live : 0)));
      }
      for (int64 k = 0; k < kn; ++k) {
        const int64 kk = k0 + k;
        std::uint16_t* dst = pairs ? panel + (kk / 2) * 2 * PW + (kk % 2) : panel + kk * PW;
        const int64 step = pairs ? 2 : 1;
        for (int64 i = 0; i < PW; ++i) dst[i * step] = bits[i][k];
      }
    }
  }
}

// P[k, n] = src[k * stride_k + n * stride_n] (float32 holding 16-bit values: exact) for k < K,
// n < N, in kind's layout; zeros in the padding. Kept as std::uint16_t (bf16 bits / fp16 bits).
inline void pack_panels16(Panels16 kind, int64 K, int64 N, const float* src, int64 stride_k, int64 stride_n,
                          std::uint16_t* P) {
  if (stride_n == 1) return pack_panels16_rows(kind, K, N, src, stride_k, P);
  if (stride_k == 1) return pack_panels16_cols(kind, K, N, src, stride_n, P);
  const int64 PW = kPanel16;
  const bool pairs = kind == Panels16::Bf16Dot, half = kind == Panels16::Fp16;
  const int64 rows = pairs ? (K + 1) / 2 * 2 : K;
  auto bits = [half](float v) {
    if (!half) return float_to_bf16(v);
    const fp16 h = fp16(v);
    std::uint16_t b;
    std::memcpy(&b, &h, sizeof b);
    return b;
  };
  for (int64 p = 0; p * PW < N; ++p) {
    const int64 n0 = p * PW, width = std::min(PW, N - n0);
    std::uint16_t* panel = P + p * rows * PW;
    for (int64 k = 0; k < rows; ++k) {
      // pairs: rows 2q and 2q+1 side by side, [q][n][2]; else [k][n]
      std::uint16_t* dst = pairs ? panel + (k / 2) * 2 * PW + (k % 2) : panel + k * PW;
      const int64 step = pairs ? 2 : 1;
      for (int64 i = 0; i < PW; ++i)
        dst[i * step] = k < K && i < width ? bits(src[k * stride_k + (n0 + i) * stride_n]) : std::uint16_t(0);
    }
  }
}

namespace dot_detail {

// The A operand as vdpbf16ps reads it: rows of (A[m, 2q], A[m, 2q + 1]) bf16 pairs, one 32-bit
// value each, converted once per row block (vcvtne2ps2bf16, round to nearest even; a zero pads an
// odd K), so that the tiles below run their whole K with the accumulators in registers.
constexpr int64 kPairsMax = int64(16) << 10;  // 64 KB of pairs: a row block (128 KB of float32 A)

template <int MR, int NP>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"), always_inline)) inline void dot_tile(
    int64 KP, const std::uint32_t* A, int64 ldq, const std::uint16_t* P, int64 panel_stride, float* C, int64 ldc,
    int64 ncols, Epilogue<float> e) {
  __m512 acc[MR][NP];
  for (int p = 0; p < NP; ++p) {
    const int64 n0 = p * kPanel16, n = std::min<int64>(kPanel16, ncols - n0);
    const __mmask16 live = n >= 16 ? __mmask16(0xffff) : n > 0 ? __mmask16((1u << n) - 1) : __mmask16(0);
    const __m512 start = e.bias ? _mm512_maskz_loadu_ps(live, e.bias + n0) : _mm512_setzero_ps();
    for (int m = 0; m < MR; ++m) acc[m][p] = start;
  }
  for (int64 q = 0; q < KP; ++q) {
    __m512bh w[NP];
    for (int p = 0; p < NP; ++p) {
      const __m512i v = _mm512_loadu_si512(P + p * panel_stride + q * 2 * kPanel16);
      w[p] = reinterpret_cast<const __m512bh&>(v);
    }
    for (int m = 0; m < MR; ++m) {
      const __m512i b = _mm512_set1_epi32(int(A[m * ldq + q]));
      const __m512bh bb = reinterpret_cast<const __m512bh&>(b);
      for (int p = 0; p < NP; ++p) acc[m][p] = _mm512_dpbf16_ps(acc[m][p], bb, w[p]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int p = 0; p < NP; ++p) {
      const int64 n0 = p * kPanel16, n = std::min<int64>(kPanel16, ncols - n0);
      if (n <= 0) continue;
      const __mmask16 live = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
      float* c = C + m * ldc + n0;
      __m512 v = acc[m][p];
      if (e.accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(live, c));
      _mm512_mask_storeu_ps(c, live, v);
    }
}

// Rows [m_begin, m_end) (a multiple of MR) in tiles of MR rows x NP panels, the last panels one
// at a time.
template <int MR, int NP>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"), always_inline)) inline void dot_sweep(
    int64 m_begin, int64 m_end, int64 N, int64 KP, const std::uint32_t* A, int64 ldq, const std::uint16_t* P,
    int64 panel_stride, float* C, int64 ldc, Epilogue<float> e) {
  const int64 panels = (N + kPanel16 - 1) / kPanel16;
  for (int64 p = 0; p < panels; p += NP) {
    const int64 left = panels - p, ncols = N - p * kPanel16;
    for (int64 m = m_begin; m + MR <= m_end; m += MR) {
      const std::uint32_t* a = A + m * ldq;
      const std::uint16_t* pp = P + p * panel_stride;
      float* c = C + m * ldc + p * kPanel16;
      const Epilogue<float> ep = detail::shifted(e, p * kPanel16);
      if (left >= NP) dot_tile<MR, NP>(KP, a, ldq, pp, panel_stride, c, ldc, ncols, ep);
      else
        for (int64 q = 0; q < left; ++q)
          dot_tile<MR, 1>(KP, a, ldq, pp + q * panel_stride, panel_stride, c + q * kPanel16, ldc,
                          ncols - q * kPanel16, detail::shifted(e, (p + q) * kPanel16));
    }
  }
}

// 12 accumulators (vdpbf16ps's latency hidden), 4 rows a tile; the last 1-3 rows with more panels.
template <int R>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"), always_inline)) inline void dot_rest(
    int64 m, int64 M, int64 N, int64 KP, const std::uint32_t* A, int64 ldq, const std::uint16_t* P,
    int64 panel_stride, float* C, int64 ldc, Epilogue<float> e) {
  if constexpr (R >= 1) {
    if (M - m == R) return dot_sweep<R, 12 / R>(m, M, N, KP, A, ldq, P, panel_stride, C, ldc, e);
    dot_rest<R - 1>(m, M, N, KP, A, ldq, P, panel_stride, C, ldc, e);
  }
}

// rows x K of A (lda) -> bf16 pairs [rows][KP] (ldq = KP)
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) inline void to_pairs(
    int64 rows, int64 K, const float* A, int64 lda, std::uint32_t* out, int64 KP) {
  for (int64 m = 0; m < rows; ++m)
    for (int64 k0 = 0; k0 < K; k0 += 32) {
      const int64 kn = std::min<int64>(32, K - k0);
      const __mmask16 lo = kn >= 16 ? __mmask16(0xffff) : __mmask16((1u << kn) - 1);
      const __mmask16 hi = kn >= 32 ? __mmask16(0xffff) : kn > 16 ? __mmask16((1u << (kn - 16)) - 1) : __mmask16(0);
      const float* a = A + m * lda + k0;
      const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, a + 16), _mm512_maskz_loadu_ps(lo, a));
      const int64 np = (kn + 1) / 2;  // pairs of this chunk
      _mm512_mask_storeu_epi32(out + m * KP + k0 / 2, np >= 16 ? __mmask16(0xffff) : __mmask16((1u << np) - 1),
                               reinterpret_cast<const __m512i&>(v));
    }
}

// K in pieces of at most 2 * kPairsMax (one piece but for K > 32768), each row block of A
// converted to pairs once and run against every panel. P's panels are (K + 1) / 2 pairs long.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) inline void packed_gemm_bf16dot(
    int64 M, int64 N, int64 K, const float* A, int64 lda, const std::uint16_t* P, float* C, int64 ldc,
    Epilogue<float> e) {
  constexpr int MR = 4;
  const int64 panel_stride = (K + 1) / 2 * 2 * kPanel16;
  alignas(64) std::uint32_t pairs[kPairsMax];  // on the stack: every thread its own
  for (int64 k = 0; k < K; k += 2 * kPairsMax) {
    const int64 kk = std::min(2 * kPairsMax, K - k), KP = (kk + 1) / 2;
    const Epilogue<float> ek = k ? Epilogue<float>{true, nullptr} : e;  // later pieces add on
    const int64 block = std::max<int64>(1, std::min(row_block<float>(kk), kPairsMax / KP) / MR) * MR;
    for (int64 b = 0; b < M; b += block) {
      const int64 rows = std::min(block, M - b), m = rows / MR * MR;
      to_pairs(rows, kk, A + b * lda + k, lda, pairs, KP);
      dot_sweep<MR, 3>(0, m, N, KP, pairs, KP, P + k * kPanel16, panel_stride, C + b * ldc, ldc, ek);
      dot_rest<MR - 1>(m, rows, N, KP, pairs, KP, P + k * kPanel16, panel_stride, C + b * ldc, ldc, ek);
    }
  }
}

}  // namespace dot_detail

// C[M, N] (ldc) = A[M, K] (lda) P (+ e.bias), or C += A P; P packed by pack_panels16(kind, K, N).
inline void packed_gemm16(Panels16 kind, int64 M, int64 N, int64 K, const float* A, int64 lda,
                          const std::uint16_t* P, float* C, int64 ldc, Epilogue<float> e) {
  if (M <= 0 || N <= 0) return;
  switch (kind) {
    case Panels16::Bf16Dot: return dot_detail::packed_gemm_bf16dot(M, N, K, A, lda, P, C, ldc, e);
    case Panels16::Bf16: return packed_gemm<float, bf16>(M, N, K, A, lda, reinterpret_cast<const bf16*>(P), C, ldc, e);
    case Panels16::Fp16: return packed_gemm<float, fp16>(M, N, K, A, lda, reinterpret_cast<const fp16*>(P), C, ldc, e);
    case Panels16::None: break;
  }
}

}  // namespace fastrnn::cpu
