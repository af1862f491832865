// The 16-bit storage types of the CPU kernels (bfloat16, float16) and the conversions between them
// and float32: widening (exact), narrowing (round to nearest even, NaN kept a NaN), and rounding a
// float32 array in place to the values a 16-bit array can hold. The 16-bit entry points (stack.cpp,
// forward/backward<bf16 | fp16>) widen their inputs once, run the float32 stack with the weights
// marked as 16-bit (LayerWeights::storage: the products then run on 16-bit panels) and narrow the
// outputs; the conversions are memory-bound passes, vectorised per instruction set (float16 needs
// F16C/AVX-512's vcvtph2ps / vcvtps2ph; bfloat16 is integer shifts on every ISA) and split over the
// threads for large arrays.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include <immintrin.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common.h"
#include "cpu/isa.h"
#include "rnn.h"

namespace fastrnn {

// bfloat16 as stored: the upper 16 bits of a float32. No arithmetic: the kernels widen it.
struct bf16 {
  std::uint16_t bits;
};
using fp16 = _Float16;

template <class S> constexpr Storage storage_of();
template <> constexpr Storage storage_of<bf16>() { return Storage::Bfloat16; }
template <> constexpr Storage storage_of<fp16>() { return Storage::Float16; }

FASTRNN_HD float bf16_to_float(std::uint16_t b) {
  const std::uint32_t u = std::uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
// Round to nearest even; a NaN stays a (quiet) NaN instead of rounding up into an infinity.
FASTRNN_HD std::uint16_t float_to_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return (u & 0x7fffffffu) > 0x7f800000u ? std::uint16_t((u >> 16) | 0x40u) : std::uint16_t(rounded);
}

// float16 bits -> float32 with integer operations (normals, subnormals, infinities, NaN): for code
// compiled without F16C.
FASTRNN_HD float fp16_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  std::uint32_t u;
  if (exp == 0x1f) u = sign | 0x7f800000u | (man << 13);  // inf, NaN
  else if (exp != 0) u = sign | ((exp + 112) << 23) | (man << 13);
  else {  // zero or subnormal: man * 2^-24, exact in float32
    float f = float(man) * 5.9604644775390625e-8f;
    std::memcpy(&u, &f, sizeof u);
    u |= sign;
  }
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// float32 -> float16 bits, round to nearest even (overflow to infinity, NaN kept), with integer and
// float operations only (F. Giesen's float_to_half_fast3_rtne): for code compiled without F16C.
FASTRNN_HD std::uint16_t float_to_fp16_bits(float value) {
  std::uint32_t f;
  std::memcpy(&f, &value, sizeof f);
  const std::uint32_t sign = f & 0x80000000u;
  f ^= sign;
  std::uint16_t o;
  if (f >= (127u + 16u) << 23) {
    o = f > 0x7f800000u ? 0x7e00 : 0x7c00;
  } else if (f < 113u << 23) {  // a float16 subnormal or zero: let a float addition round it
    const std::uint32_t magic_bits = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    float magic, v;
    std::memcpy(&magic, &magic_bits, sizeof magic);
    std::memcpy(&v, &f, sizeof v);
    v += magic;
    std::memcpy(&f, &v, sizeof f);
    o = std::uint16_t(f - magic_bits);
  } else {
    const std::uint32_t odd = (f >> 13) & 1u;
    f += ((15u - 127u) << 23) + 0xfffu + odd;
    o = std::uint16_t(f >> 13);
  }
  return std::uint16_t(o | (sign >> 16));
}

namespace cpu {
namespace storage_detail {

// The conversion loops, compiled once per instruction set (the namespaces below, each inside a
// `#pragma GCC target` region). bfloat16: loops GCC vectorises on every ISA. float16: GCC 12
// converts _Float16 by libgcc calls even where F16C exists, so vcvtph2ps / vcvtps2ph intrinsics,
// W values at a time (16: AVX-512, 8: AVX2), and bit arithmetic on baseline.
#define FASTRNN_STORAGE16_LOOPS                                                                         \
  inline void widen(const bf16* s, float* d, int64 n) {                                                 \
    _Pragma("omp simd") for (int64 i = 0; i < n; ++i) d[i] = bf16_to_float(s[i].bits);                  \
  }                                                                                                     \
  inline void narrow(const float* s, bf16* d, int64 n) {                                                \
    _Pragma("omp simd") for (int64 i = 0; i < n; ++i) d[i].bits = float_to_bf16(s[i]);                  \
  }                                                                                                     \
  inline void round_bf16(float* p, int64 n) {                                                           \
    _Pragma("omp simd") for (int64 i = 0; i < n; ++i) p[i] = bf16_to_float(float_to_bf16(p[i]));       \
  }                                                                                                     \
  inline void widen(const fp16* s, float* d, int64 n) {                                                 \
    int64 i = 0;                                                                                        \
    for (; i + kW <= n; i += kW) store_f(d + i, cvt_in(s + i));                                         \
    for (; i < n; ++i) d[i] = fp16_bits_to_float(reinterpret_cast<const std::uint16_t*>(s)[i]);         \
  }                                                                                                     \
  inline void narrow(const float* s, fp16* d, int64 n) {                                                \
    int64 i = 0;                                                                                        \
    for (; i + kW <= n; i += kW) cvt_out(s + i, d + i);                                                 \
    for (; i < n; ++i) reinterpret_cast<std::uint16_t*>(d)[i] = float_to_fp16_bits(s[i]);               \
  }                                                                                                     \
  inline void round_fp16(float* p, int64 n) { /* through a float16 buffer, 256 values at a time */      \
    fp16 tmp[256];                                                                                      \
    for (int64 i = 0; i < n; i += 256) {                                                                \
      const int64 m = std::min<int64>(256, n - i);                                                      \
      narrow(p + i, tmp, m);                                                                            \
      widen(tmp, p + i, m);                                                                             \
    }                                                                                                   \
  }

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,f16c")
namespace avx512 {
constexpr int64 kW = 16;
inline __m512 cvt_in(const fp16* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline void store_f(float* d, __m512 v) { _mm512_storeu_ps(d, v); }
inline void cvt_out(const float* s, fp16* d) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), _mm512_cvtps_ph(_mm512_loadu_ps(s), _MM_FROUND_TO_NEAREST_INT));
}
FASTRNN_STORAGE16_LOOPS
}  // namespace avx512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
constexpr int64 kW = 8;
inline __m256 cvt_in(const fp16* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline void store_f(float* d, __m256 v) { _mm256_storeu_ps(d, v); }
inline void cvt_out(const float* s, fp16* d) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(d), _mm256_cvtps_ph(_mm256_loadu_ps(s), _MM_FROUND_TO_NEAREST_INT));
}
FASTRNN_STORAGE16_LOOPS
}  // namespace avx2
#pragma GCC pop_options
namespace baseline {
constexpr int64 kW = 1;
inline float cvt_in(const fp16* p) { return fp16_bits_to_float(*reinterpret_cast<const std::uint16_t*>(p)); }
inline void store_f(float* d, float v) { *d = v; }
inline void cvt_out(const float* s, fp16* d) { *reinterpret_cast<std::uint16_t*>(d) = float_to_fp16_bits(*s); }
FASTRNN_STORAGE16_LOOPS
}  // namespace baseline
#undef FASTRNN_STORAGE16_LOOPS

// f(lo, hi) over [0, n) in pieces on the threads (one piece below ~1M elements: a parallel region
// costs more than such a pass).
template <class F> void in_pieces(int64 n, int threads, F&& f) {
  constexpr int64 kPiece = int64(1) << 20;
  if (threads <= 1 || n < kPiece) return f(int64(0), n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64 lo = 0; lo < n; lo += kPiece) f(lo, std::min(n, lo + kPiece));
}

}  // namespace storage_detail

// d[i] = float(s[i]) for i < n (exact); S = bf16 or fp16.
template <class S> void widen16(const S* s, float* d, int64 n, int threads) {
  using namespace storage_detail;
  in_pieces(n, threads, [&](int64 lo, int64 hi) {
    if (cpu_isa() == Isa::Avx512) avx512::widen(s + lo, d + lo, hi - lo);
    else if (cpu_isa() == Isa::Avx2) avx2::widen(s + lo, d + lo, hi - lo);
    else baseline::widen(s + lo, d + lo, hi - lo);
  });
}

// d[i] = S(s[i]), rounded to nearest even.
template <class S> void narrow16(const float* s, S* d, int64 n, int threads) {
  using namespace storage_detail;
  in_pieces(n, threads, [&](int64 lo, int64 hi) {
    if (cpu_isa() == Isa::Avx512) avx512::narrow(s + lo, d + lo, hi - lo);
    else if (cpu_isa() == Isa::Avx2) avx2::narrow(s + lo, d + lo, hi - lo);
    else baseline::narrow(s + lo, d + lo, hi - lo);
  });
}

// p[i] = float(S(p[i])): what storing p in the 16-bit type `s` and reading it back gives.
inline void round_to_storage(Storage s, float* p, int64 n) {
  using namespace storage_detail;
  if (s == Storage::Native || n <= 0) return;
  const bool b = s == Storage::Bfloat16;
  if (cpu_isa() == Isa::Avx512) b ? avx512::round_bf16(p, n) : avx512::round_fp16(p, n);
  else if (cpu_isa() == Isa::Avx2) b ? avx2::round_bf16(p, n) : avx2::round_fp16(p, n);
  else b ? baseline::round_bf16(p, n) : baseline::round_fp16(p, n);
}

}  // namespace cpu
}  // namespace fastrnn
