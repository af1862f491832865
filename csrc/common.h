// Small things every translation unit needs: the host+device marker for the shared cell maths, the
// 64-bit size type, the accumulation type for low-precision storage, and overflow-checked size
// arithmetic (every size is 64-bit; a product that would overflow raises instead of wrapping).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define FASTRNN_HD __host__ __device__ __forceinline__
#else
#define FASTRNN_HD inline __attribute__((always_inline))
#endif

namespace fastrnn {

using int64 = std::int64_t;

// Type the cell maths computes in: float for half/bf16 storage (specialised in cuda/), else itself.
template <class T> struct AccType { using type = T; };

// Thrown for bad arguments; bindings turn it into Python's ValueError.
struct ArgumentError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

inline int64 checked_mul(int64 a, int64 b, const char* what) {
  int64 r;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r))
    throw ArgumentError(std::string(what) + ": size overflows 64 bits");
  return r;
}

inline int64 checked_add(int64 a, int64 b, const char* what) {
  int64 r;
  if (__builtin_add_overflow(a, b, &r)) throw ArgumentError(std::string(what) + ": size overflows 64 bits");
  return r;
}

}  // namespace fastrnn
