// The bfloat16 dot-product kernel (csrc/cpu/packed_gemm16.h, Panels16::Bf16Dot) against the
// machine's own ceiling: first the peak of vdpbf16ps (and of the float32 FMA, the float32 kernels'
// ceiling) from independent chains of the bare instruction, then packed_gemm16 and float32's
// packed_gemm on the shapes of an LSTM call's products (per gate: M = rows, N = units, K = H or I;
// the backward's K = 4H; the weight gradients' M = 4H, K = a chunk of 1024 rows) as GFLOP/s and as
// a share of that peak, with the max difference from a float64 product of the same bf16 values.
// Times are this thread's CPU time (best of 7 samples of ~2 GFLOP): readable on a shared machine,
// though a busy SMT sibling lowers the peak and the kernels alike. Needs an AVX512_BF16 CPU.
//
//   g++ -O3 -std=c++17 -w -Icsrc tools/bf16_dot_rate.cpp -o /tmp/bf16_dot_rate && /tmp/bf16_dot_rate
//   /tmp/bf16_dot_rate 32 256 256   # one shape: M N K
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <vector>

#include "rnn.h"
#include "cpu/packed_gemm16.h"

using namespace fastrnn;
using namespace fastrnn::cpu;

static double cpu_s() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

// N independent accumulator chains, `iters` rounds: the instruction's throughput once N covers
// its latency (6 cycles x 2 ports on Zen 5: N >= 12). Unrolled, so that the chains live in registers.
template <int N> __attribute__((target("avx512f,avx512bw,avx512bf16"), noinline)) float dot_chains(long iters) {
  __m512 acc[N];
  for (int i = 0; i < N; ++i) acc[i] = _mm512_set1_ps(float(i));
  const __m512i a = _mm512_set1_epi32(0x3f803f80), b = _mm512_set1_epi32(0x3f003f00);
  for (long it = 0; it < iters; ++it)
#pragma GCC unroll 32
    for (int i = 0; i < N; ++i) {
      acc[i] = _mm512_dpbf16_ps(acc[i], reinterpret_cast<const __m512bh&>(a), reinterpret_cast<const __m512bh&>(b));
      asm volatile("" ::"v"(acc[i]));  // each result used: the chains are not folded away
    }
  __m512 s = acc[0];
  for (int i = 1; i < N; ++i) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}
template <int N> __attribute__((target("avx512f"), noinline)) float fma_chains(long iters) {
  __m512 acc[N];
  for (int i = 0; i < N; ++i) acc[i] = _mm512_set1_ps(float(i));
  const __m512 a = _mm512_set1_ps(0.5f), b = _mm512_set1_ps(0.25f);
  for (long it = 0; it < iters; ++it)
#pragma GCC unroll 32
    for (int i = 0; i < N; ++i) {
      acc[i] = _mm512_fmadd_ps(acc[i], a, b);
      asm volatile("" ::"v"(acc[i]));
    }
  __m512 s = acc[0];
  for (int i = 1; i < N; ++i) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

// GFLOP/s of f (instructions * flops_per_instruction per call), best of 7.
template <class F> double rate(F f, double flops) {
  double best = 1e30;
  for (int r = 0; r < 7; ++r) {
    const double t0 = cpu_s();
    f();
    best = std::min(best, cpu_s() - t0);
  }
  return flops / best * 1e-9;
}

static volatile float sink;

static void shape(int64 M, int64 N, int64 K, double peak) {
  std::mt19937 g(1);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<float> A(M * K), W(K * N), C(M * N), bias(N);
  for (auto& v : A) v = u(g);
  for (auto& v : W) v = bf16_to_float(float_to_bf16(u(g)));
  for (auto& v : bias) v = u(g);
  std::vector<std::uint16_t> P(packed16_size(Panels16::Bf16Dot, K, N));
  pack_panels16(Panels16::Bf16Dot, K, N, W.data(), N, 1, P.data());  // P[k, n] = W[k, n]
  std::vector<float> P32(packed_size<float>(K, N));
  pack_panels<float>(K, N, W.data(), N, 1, P32.data());
  packed_gemm16(Panels16::Bf16Dot, M, N, K, A.data(), K, P.data(), C.data(), N, {false, bias.data()});
  double err = 0;  // against float64 on A rounded to bf16 as the kernel rounds it
  for (int64 m = 0; m < M; m += std::max<int64>(1, M / 7))
    for (int64 n = 0; n < N; ++n) {
      double s = bias[n];
      for (int64 k = 0; k < K; ++k) s += double(bf16_to_float(float_to_bf16(A[m * K + k]))) * W[k * N + n];
      err = std::max(err, std::fabs(s - C[m * N + n]));
    }
  const long reps = std::max<long>(1, long(2e9 / (2.0 * M * N * K)));
  const double flops = 2.0 * M * N * K * reps;
  const double bf = rate([&] {
    for (long i = 0; i < reps; ++i)
      packed_gemm16(Panels16::Bf16Dot, M, N, K, A.data(), K, P.data(), C.data(), N, {false, bias.data()});
  }, flops);
  const double f32 = rate([&] {
    for (long i = 0; i < reps; ++i) packed_gemm<float>(M, N, K, A.data(), K, P32.data(), C.data(), N, {false, bias.data()});
  }, flops);
  std::printf("M=%5ld N=%5ld K=%5ld  bf16 dot %6.1f GFLOP/s (%5.1f %% of its peak)  float32 %6.1f GFLOP/s  "
              "max |diff| %.1e\n", long(M), long(N), long(K), bf, 100 * bf / peak, f32, err);
}

int main(int argc, char** argv) {
  if (!__builtin_cpu_supports("avx512bf16")) {
    std::printf("this CPU has no AVX512_BF16\n");
    return 1;
  }
  const long iters = 2000000;
  double peak = 0, fma = 0;
  for (int trial = 0; trial < 2; ++trial) {  // 12 and 24 chains: the second shows the first was enough
    peak = std::max(peak, rate([&] { sink = trial ? dot_chains<24>(iters / 2) : dot_chains<12>(iters); }, 12.0 * iters * 64));
    fma = std::max(fma, rate([&] { sink = trial ? fma_chains<24>(iters / 2) : fma_chains<12>(iters); }, 12.0 * iters * 32));
  }
  std::printf("peak: vdpbf16ps %.1f GFLOP/s (64 flops an instruction), float32 FMA %.1f GFLOP/s\n", peak, fma);
  if (argc == 4) {
    shape(std::atol(argv[1]), std::atol(argv[2]), std::atol(argv[3]), peak);
    return 0;
  }
  // per gate at H = 256 (B = 16, 32; the input projection's 128-row blocks), H = 512, B = 64; the
  // backward's dh (K = 4H) and a weight gradient's chunk (M = 4H, K = 1024)
  const long shapes[][3] = {{16, 256, 256}, {32, 256, 256}, {128, 256, 256}, {64, 512, 512},
                            {32, 256, 1024}, {64, 512, 2048}, {1024, 256, 1024}};
  for (const auto& s : shapes) shape(s[0], s[1], s[2], peak);
}
