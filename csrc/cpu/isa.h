// Which x86 instruction set the CPU kernels run with, decided once per process: the best the CPU
// has (AVX-512F, else AVX2+FMA+F16C, else baseline x86-64), unless the environment variable
// FASTRNN_CPU_ISA (avx512 | avx2 | baseline) asks for a lower one — so that the tests can run every
// code path the machine supports. Asking for one the CPU lacks falls back to the best it has.
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

}  // namespace fastrnn::cpu
