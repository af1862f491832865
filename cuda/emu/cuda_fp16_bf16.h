// Stand-ins for CUDA's __half and __nv_bfloat16 under the CPU emulator (cuda/emu/), so that the
// 16-bit instantiations of the kernels compile with g++ and run on the host: storage types that
// convert to float exactly and from float (or any arithmetic type, through float) with
// round-to-nearest-even, as CUDA's conversions (__float2half_rn, __float2bfloat16_rn) do. All
// arithmetic goes through float, which is what the kernels do anyway (AccType = float, dtypes.h).
// float16 is GCC's _Float16 (IEEE binary16, exact conversions); bfloat16 is the top half of a float.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

struct __half {
  _Float16 v;
  __half() = default;
  template <class V, std::enable_if_t<std::is_arithmetic_v<V>, int> = 0>
  __half(V x) : v(static_cast<_Float16>(static_cast<float>(x))) {}
  operator float() const { return static_cast<float>(v); }
};

struct __nv_bfloat16 {
  std::uint16_t bits;
  __nv_bfloat16() = default;
  template <class V, std::enable_if_t<std::is_arithmetic_v<V>, int> = 0>
  __nv_bfloat16(V x) : bits(round(static_cast<float>(x))) {}
  operator float() const {
    const std::uint32_t u = std::uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }

 private:
  static std::uint16_t round(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((u >> 16) | 0x40u);  // NaN stays a (quiet) NaN
    return std::uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);                  // to nearest, ties to even
  }
};

static_assert(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2, "16-bit storage");
