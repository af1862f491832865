// Which x86 instruction set the CPU kernels run with, decided once per process: the best the CPU
// has (AVX-512F, else AVX2+FMA+F16C, else baseline x86-64), unless the environment variable
// FASTRNN_CPU_ISA (avx512_bf16 | avx512 | avx2 | baseline) asks for a lower one — so that the tests
// can run every code path the machine supports. Asking for one the CPU lacks falls back to the best
// it has. On top of AVX-512, AVX512_BF16 (Zen 4, Sapphire Rapids: vdpbf16ps) is a separate switch,
// bf16_dot(), read only by the bfloat16 products: the float32/float64 kernels are the same with or
// without it, and "avx512" switches it off.
#pragma once

#include <cstdlib>
#include <cstring>

namespace fastrnn::cpu {

enum class Isa : int { Baseline = 0, Avx2 = 1, Avx512 = 2 };

inline Isa cpu_isa() {
  static const Isa isa = [] {
    __builtin_cpu_init();
    Isa best = Isa::Baseline;
    if (__builtin_cpu_supports("avx512f")) best = Isa::Avx512;
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
      best = Isa::Avx2;
    const char* want = std::getenv("FASTRNN_CPU_ISA");
    Isa asked = best;
    if (want && std::strcmp(want, "avx2") == 0) asked = Isa::Avx2;
    else if (want && std::strcmp(want, "baseline") == 0) asked = Isa::Baseline;
    return static_cast<int>(asked) < static_cast<int>(best) ? asked : best;
  }();
  return isa;
}

// The bfloat16 products use the dot-product instruction (csrc/cpu/packed_gemm16.h).
inline bool bf16_dot() {
  static const bool on = [] {
    __builtin_cpu_init();
    const char* want = std::getenv("FASTRNN_CPU_ISA");
    const bool asked = !want || (std::strcmp(want, "avx2") != 0 && std::strcmp(want, "baseline") != 0 &&
                                 std::strcmp(want, "avx512") != 0);
    return asked && cpu_isa() == Isa::Avx512 && __builtin_cpu_supports("avx512bf16");
  }();
  return on;
}

// The name of the code path: "avx512_bf16", "avx512", "avx2" or "baseline".
inline const char* cpu_isa_name() {
  static const char* names[] = {"baseline", "avx2", "avx512"};
  return bf16_dot() ? "avx512_bf16" : names[static_cast<int>(cpu_isa())];
}

}  // namespace fastrnn::cpu
