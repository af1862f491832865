// The counter-based generator of the masks the kernels draw themselves (zoneout's d, recurrent
// dropout's m): Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3";
// the generator of cuRAND and of PyTorch's CUDA dropout). A mask element is a pure function of
// (seed, stream, t, b, j), so a forward draws it inside its fused step and backward draws the same
// value again instead of reading a stored [T, B, H] array, and any thread may draw any element.
// Plain 32/64-bit integer maths only (host and device, no intrinsics), so that a loop over j
// vectorises on the CPU. python/fastrnn/reference/philox.py is the same stream in NumPy.
//
// The stream of the masks (both sides must agree bit for bit): element j of batch row b at step t
// of stream `stream` (l*D + d, layer and direction, plus the caller's first stream) is word j % 4
// of Philox4x32-10 at counter (j / 4, b, t, 4 * stream + kind) under key (seed mod 2^32, seed / 2^32):
// one evaluation gives four neighbouring units. kind 0: zoneout's d of h at step t, kind 1: d of c,
// kind 2: recurrent dropout's m (t = 0). b is the caller's batch row. u = (word >> 8) / 2^24 in
// [0, 1); Bernoulli(p) = [u < p], compared exactly as integers: word >> 8 < ceil(p * 2^24).
#pragma once

#include <cmath>
#include <cstdint>

#include "common.h"

namespace fastrnn::philox {

struct Word4 {
  std::uint32_t v[4];
};

constexpr std::uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;   // the round multipliers
constexpr std::uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;  // the key schedule's increments
constexpr int kZoneoutH = 0, kZoneoutC = 1, kRecurrent = 2;  // the kinds of mask (counter word 3)

// Philox4x32 with 10 rounds of counter (c0, c1, c2, c3) under key (k0, k1).
FASTRNN_HD Word4 philox4x32_10(std::uint32_t c0, std::uint32_t c1, std::uint32_t c2, std::uint32_t c3,
                               std::uint32_t k0, std::uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = std::uint64_t(kMul0) * c0, p1 = std::uint64_t(kMul1) * c2;
    const std::uint32_t hi0 = std::uint32_t(p0 >> 32), lo0 = std::uint32_t(p0);
    const std::uint32_t hi1 = std::uint32_t(p1 >> 32), lo1 = std::uint32_t(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return {{c0, c1, c2, c3}};
}

// The 24-bit threshold of Bernoulli(p): [word >> 8 < threshold] has probability exactly
// ceil(p * 2^24) / 2^24 (p * 2^24 is exact in double); p in [0, 1].
inline std::uint32_t bernoulli_threshold(double p) {
  return std::uint32_t(std::ceil(std::fmin(std::fmax(p, 0.0), 1.0) * 16777216.0));
}

// The Bernoulli draws of units [4q, 4q + 4) of a mask row: out[4q + w] = 1 (T(1)) where word w of
// counter (q, b, t, 4 * stream + kind) has word >> 8 < threshold, else 0. A loop over q (not over
// units) vectorises: the four stores of one q are contiguous.
template <class T>
FASTRNN_HD void bernoulli_quad(std::uint64_t seed, std::int64_t stream, int kind, std::int64_t t, std::int64_t b,
                               std::int64_t q, std::uint32_t threshold, T* out) {
  const Word4 w = philox4x32_10(std::uint32_t(q), std::uint32_t(b), std::uint32_t(t), std::uint32_t(4 * stream + kind),
                                std::uint32_t(seed), std::uint32_t(seed >> 32));
  out[4 * q + 0] = (w.v[0] >> 8) < threshold ? T(1) : T(0);
  out[4 * q + 1] = (w.v[1] >> 8) < threshold ? T(1) : T(0);
  out[4 * q + 2] = (w.v[2] >> 8) < threshold ? T(1) : T(0);
  out[4 * q + 3] = (w.v[3] >> 8) < threshold ? T(1) : T(0);
}

}  // namespace fastrnn::philox
