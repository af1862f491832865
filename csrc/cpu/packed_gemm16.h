// The packed products on 16-bit weights: C[M, N] (+)= A[M, K] P with A and C float32 and P the
// weights packed once per call as 16-bit panels (16 columns each, like float32's), for the
// product objects of a call whose weights are marked 16-bit (LayerWeights::storage). Two kernels:
//   - bfloat16 with AVX512_BF16 (bf16_dot()): vdpbf16ps, which multiplies pairs of bf16 values and
//     adds both products to a float32 lane, twice the multiply-adds of a float32 FMA per
//     instruction. P holds pairs of rows interleaved, [panels][ceil(K/2)][16][2] (a zero row pads
//     an odd K); A is rounded to bfloat16 pairs (round to nearest even) once per row block, so its
//     callers keep A in float32 (the recurrent h, the gate gradients), or pass the pairs formed
//     beforehand (packed_gemm16_pairs: the weight gradients' transposed dG, transposed_pairs).
//     Tiles of 8 rows x 3 panels (24 accumulators); the panels are formed with vector code.
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

// pack_panels16 element by element, for any layout and strides.
inline void pack_panels16_scalar(Panels16 kind, int64 K, int64 N, const float* src, int64 stride_k, int64 stride_n,
                          std::uint16_t* P) {
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

namespace pack_detail {

// float32 -> bfloat16 bits in the low half of each 32-bit lane, the same bits as float_to_bf16
// (round to nearest even, a NaN kept a quiet NaN).
__attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) inline __m512i bf16_bits(__m512 v) {
  const __m512i u = _mm512_castps_si512(v), high = _mm512_srli_epi32(u, 16);
  const __m512i odd = _mm512_and_si512(high, _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  return _mm512_mask_or_epi32(rounded, nan, high, _mm512_set1_epi32(0x40));
}

// Lanes with fewer than n of 16 live.
inline __mmask16 first_lanes(int64 n) {
  return n >= 16 ? __mmask16(0xffff) : n > 0 ? __mmask16((1u << n) - 1) : __mmask16(0);
}

// r[0..15] (row i: 16 32-bit values) transposed in place: r[j][i] = old r[i][j].
__attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) inline void transpose16x16(__m512i* r) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // u[4i + c], 128-bit lane l: rows 4i..4i+3 of column 4l + c
  for (int i = 0; i < 4; ++i) {
    u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int c = 0; c < 4; ++c) {  // a 4 x 4 transpose of 128-bit lanes
    const __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44), v1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xee);
    const __m512i v2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44), v3 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xee);
    r[c] = _mm512_shuffle_i32x4(v0, v2, 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(v0, v2, 0xdd);
    r[8 + c] = _mm512_shuffle_i32x4(v1, v3, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(v1, v3, 0xdd);
  }
}

// The Bf16Dot layout [panels][KP][16] of 32-bit pairs, from columns contiguous along k
// (stride_k = 1: W read down its rows, the pairs already side by side): per panel and 16 pairs,
// the 16 columns' pairs are formed and transposed in registers.
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void pairs_along_k(int64 K, int64 N, const float* src,
                                                                              int64 stride_n, std::uint16_t* P) {
  const int64 KP = (K + 1) / 2;
  for (int64 p = 0; p * kPanel16 < N; ++p) {
    const int64 n0 = p * kPanel16, width = std::min(kPanel16, N - n0);
    std::uint32_t* panel = reinterpret_cast<std::uint32_t*>(P) + p * KP * kPanel16;
    for (int64 q0 = 0; q0 < KP; q0 += 16) {
      const int64 k0 = 2 * q0;
      const __mmask16 lo = first_lanes(K - k0), hi = first_lanes(K - k0 - 16);
      __m512i r[16];
      for (int i = 0; i < 16; ++i) {
        if (i >= width) {
          r[i] = _mm512_setzero_si512();
          continue;
        }
        const float* s = src + (n0 + i) * stride_n + k0;
        const __m256i a = _mm512_cvtepi32_epi16(bf16_bits(_mm512_maskz_loadu_ps(lo, s)));
        const __m256i b = _mm512_cvtepi32_epi16(bf16_bits(_mm512_maskz_loadu_ps(hi, s + 16)));
        r[i] = _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);  // its pairs q0 .. q0 + 15
      }
      transpose16x16(r);
      for (int64 j = 0; j < std::min<int64>(16, KP - q0); ++j) _mm512_storeu_si512(panel + (q0 + j) * kPanel16, r[j]);
    }
  }
}

// The Bf16Dot layout from rows contiguous along n (stride_n = 1: X's rows): rows 2q and 2q + 1
// interleaved.
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void pairs_along_n(int64 K, int64 N, const float* src,
                                                                              int64 stride_k, std::uint16_t* P) {
  const int64 KP = (K + 1) / 2;
  for (int64 p = 0; p * kPanel16 < N; ++p) {
    const int64 n0 = p * kPanel16;
    const __mmask16 live = first_lanes(N - n0);
    std::uint32_t* panel = reinterpret_cast<std::uint32_t*>(P) + p * KP * kPanel16;
    for (int64 q = 0; q < KP; ++q) {
      const float* s = src + 2 * q * stride_k + n0;
      const __m512i even = bf16_bits(_mm512_maskz_loadu_ps(live, s));
      const __m512i odd = 2 * q + 1 < K ? bf16_bits(_mm512_maskz_loadu_ps(live, s + stride_k)) : _mm512_setzero_si512();
      _mm512_storeu_si512(panel + q * kPanel16, _mm512_or_si512(even, _mm512_slli_epi32(odd, 16)));
    }
  }
}

}  // namespace pack_detail

// P[k, n] = src[k * stride_k + n * stride_n] (float32 holding 16-bit values: exact) for k < K,
// n < N, in kind's layout; zeros in the padding. Kept as std::uint16_t (bf16 bits / fp16 bits). The
// Bf16Dot layout (an AVX-512 CPU) with either stride 1 in vector code, the same bits.
inline void pack_panels16(Panels16 kind, int64 K, int64 N, const float* src, int64 stride_k, int64 stride_n,
                          std::uint16_t* P) {
  if (kind == Panels16::Bf16Dot && stride_k == 1) return pack_detail::pairs_along_k(K, N, src, stride_n, P);
  if (kind == Panels16::Bf16Dot && stride_n == 1) return pack_detail::pairs_along_n(K, N, src, stride_k, P);
  if (stride_n == 1) return pack_panels16_rows(kind, K, N, src, stride_k, P);  // bf16 without the dot, fp16
  if (stride_k == 1) return pack_panels16_cols(kind, K, N, src, stride_n, P);
  pack_panels16_scalar(kind, K, N, src, stride_k, stride_n, P);
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

// Register blocking: vdpbf16ps has a latency of about 6 cycles and (Zen 5) two issue ports, so a
// tile needs at least 12 independent accumulators to keep it busy; 24 (8 rows x 3 panels) leave
// slack for the loads, and with the 3 panel vectors and a broadcast they take 28 of the 32 zmm
// registers. Per pair of k: 3 panel loads and 8 broadcasts feed 24 vdpbf16ps.
constexpr int kDotRows = 8, kDotPanels = 3;

// A sweep's last panels (fewer than NP): one tile of L = `left` panels.
template <int MR, int NP, int L = NP - 1>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"), always_inline)) inline void dot_left(
    int64 left, int64 KP, const std::uint32_t* A, int64 ldq, const std::uint16_t* P, int64 panel_stride, float* C,
    int64 ldc, int64 ncols, Epilogue<float> e) {
  if constexpr (L >= 1) {
    if (left == L) return dot_tile<MR, L>(KP, A, ldq, P, panel_stride, C, ldc, ncols, e);
    dot_left<MR, NP, L - 1>(left, KP, A, ldq, P, panel_stride, C, ldc, ncols, e);
  }
}

// Rows [m_begin, m_end) (a multiple of MR) in tiles of MR rows x NP panels, the last panels in one
// narrower tile. Panels outside, rows inside: a group of NP panels (NP * KP * 64 bytes) stays in L1
// while the row tiles pass over it.
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
      else dot_left<MR, NP>(left, KP, a, ldq, pp, panel_stride, c, ldc, ncols, ep);
    }
  }
}

// Panels a tile of R < kDotRows rows takes: about 24 accumulators (at least 12 from 2 rows on),
// with accumulators, panel vectors and broadcasts within the 32 registers.
template <int R> constexpr int rest_panels() { return R == 1 ? 12 : R == 2 ? 8 : R == 3 ? 7 : 24 / R; }

// The last R < kDotRows rows, in one sweep of R-row tiles.
template <int R>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"), always_inline)) inline void dot_rest(
    int64 m, int64 M, int64 N, int64 KP, const std::uint32_t* A, int64 ldq, const std::uint16_t* P,
    int64 panel_stride, float* C, int64 ldc, Epilogue<float> e) {
  if constexpr (R >= 1) {
    if (M - m == R) return dot_sweep<R, rest_panels<R>()>(m, M, N, KP, A, ldq, P, panel_stride, C, ldc, e);
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

// C's rows [0, rows) from their pairs [rows][KP] (ldq): the full tiles, then the last rows.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) inline void dot_rows(
    int64 rows, int64 N, int64 KP, const std::uint32_t* pairs, int64 ldq, const std::uint16_t* P, int64 panel_stride,
    float* C, int64 ldc, Epilogue<float> e) {
  const int64 m = rows / kDotRows * kDotRows;
  dot_sweep<kDotRows, kDotPanels>(0, m, N, KP, pairs, ldq, P, panel_stride, C, ldc, e);
  dot_rest<kDotRows - 1>(m, rows, N, KP, pairs, ldq, P, panel_stride, C, ldc, e);
}

// K in pieces of at most 2 * kPairsMax (one piece but for K > 32768), each row block of A
// converted to pairs once and run against every panel. P's panels are (K + 1) / 2 pairs long.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) inline void packed_gemm_bf16dot(
    int64 M, int64 N, int64 K, const float* A, int64 lda, const std::uint16_t* P, float* C, int64 ldc,
    Epilogue<float> e) {
  const int64 panel_stride = (K + 1) / 2 * 2 * kPanel16;
  alignas(64) std::uint32_t pairs[kPairsMax];  // on the stack: every thread its own
  for (int64 k = 0; k < K; k += 2 * kPairsMax) {
    const int64 kk = std::min(2 * kPairsMax, K - k), KP = (kk + 1) / 2;
    const Epilogue<float> ek = k ? Epilogue<float>{true, nullptr} : e;  // later pieces add on
    const int64 block = std::max<int64>(1, std::min(row_block<float>(kk), kPairsMax / KP) / kDotRows) * kDotRows;
    for (int64 b = 0; b < M; b += block) {
      const int64 rows = std::min(block, M - b);
      to_pairs(rows, kk, A + b * lda, lda, pairs, KP);
      dot_rows(rows, N, KP, pairs, KP, P + k * kPanel16, panel_stride, C + b * ldc, ldc, ek);
    }
  }
}

}  // namespace dot_detail

// out [M][ldq] = the bf16 pairs of A = src^T, A[m, k] = src[k * ld + m] for k < K, m < M (src's
// rows contiguous along m: a gradient [rows, columns] whose columns become A's rows), what
// packed_gemm16_pairs reads; rounded as packed_gemm16 rounds A (vcvtne2ps2bf16), a zero pads an
// odd K. Blocks of 16 x 16 pairs are formed from pairs of src's rows and transposed in registers.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) inline void transposed_pairs(
    int64 M, int64 K, const float* src, int64 ld, std::uint32_t* out, int64 ldq) {
  using pack_detail::first_lanes;
  const int64 KP = (K + 1) / 2;
  alignas(64) static const std::uint16_t interleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                           8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i order = _mm512_load_si512(interleave);
  for (int64 m0 = 0; m0 < M; m0 += 16) {
    const __mmask16 cols = first_lanes(M - m0);
    for (int64 q0 = 0; q0 < KP; q0 += 16) {
      __m512i r[16];  // r[j]: the pairs q0 + j of the 16 columns
      for (int j = 0; j < 16; ++j) {
        const int64 k = 2 * (q0 + j);
        const __m512 even = k < K ? _mm512_maskz_loadu_ps(cols, src + k * ld + m0) : _mm512_setzero_ps();
        const __m512 odd = k + 1 < K ? _mm512_maskz_loadu_ps(cols, src + (k + 1) * ld + m0) : _mm512_setzero_ps();
        const __m512bh both = _mm512_cvtne2ps_pbh(odd, even);  // [even's 16 | odd's 16]
        r[j] = _mm512_permutexvar_epi16(order, reinterpret_cast<const __m512i&>(both));
      }
      pack_detail::transpose16x16(r);
      const __mmask16 live = first_lanes(KP - q0);
      for (int64 c = 0; c < std::min<int64>(16, M - m0); ++c) _mm512_mask_storeu_epi32(out + (m0 + c) * ldq + q0, live, r[c]);
    }
  }
}

// C[M, N] (ldc) = A P (+ e.bias), or C += A P, Bf16Dot panels P of K rows and A given as its pairs
// [M][ldq] (transposed_pairs), K <= 2 * dot_detail::kPairsMax: what packed_gemm16 computes from A.
inline void packed_gemm16_pairs(int64 M, int64 N, int64 K, const std::uint32_t* pairs, int64 ldq,
                                const std::uint16_t* P, float* C, int64 ldc, Epilogue<float> e) {
  if (M <= 0 || N <= 0) return;
  dot_detail::dot_rows(M, N, (K + 1) / 2, pairs, ldq, P, (K + 1) / 2 * 2 * kPanel16, C, ldc, e);
}

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
