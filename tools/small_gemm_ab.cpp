// A/B of the small products that csrc/cpu/blas.h's gemm() runs on the project's packed-panel kernel
// (own_gemm: op(B) packed per call, op(A) transposed when trans_a, then packed_gemm) against the
// BLAS (scipy-openblas32's cblas_?gemm), on the shapes of one-step cell calls (weight gradients
// dW = dG^T X with trans_a, dX = dG W) and a few sequence-sized ones. Prints this thread's CPU time
// per call (median of 21 samples of >= 2 ms) and own/blas; the limits in blas.h come from it.
//
//   D=$(python -c "import scipy_openblas32, os; print(os.path.dirname(scipy_openblas32.__file__))")
//   g++ -O3 -std=c++17 -w -Icsrc -I$D/include tools/small_gemm_ab.cpp -o /tmp/small_gemm_ab \
//       -L$D/lib -l:libscipy_openblas.so -Wl,-rpath,$D/lib && OPENBLAS_NUM_THREADS=1 /tmp/small_gemm_ab
#include <algorithm>
#include <cstdio>
#include <ctime>
#include <type_traits>
#include <vector>

#include "cpu/blas.h"

using fastrnn::int64;

static double now_us() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

template <class F> double median_us(F f) {
  std::vector<double> v;
  for (int r = 0; r < 21; ++r) {
    const double t = now_us();
    int n = 0;
    do {
      f();
      ++n;
    } while (now_us() - t < 2000);
    v.push_back((now_us() - t) / n);
  }
  std::sort(v.begin(), v.end());
  return v[10];
}

// C [M, N] = op(A) [M, K] B [K, N]; A is [K, M] when trans_a.
template <class T> void compare(int M, int N, int K, bool trans_a) {
  std::vector<T> A(size_t(M) * K, T(0.3)), B(size_t(K) * N, T(0.2)), C(size_t(M) * N);
  const int lda = trans_a ? M : K;
  auto blas = [&] {
    const auto ta = trans_a ? CblasTrans : CblasNoTrans;
    if constexpr (std::is_same<T, double>::value)
      scipy_cblas_dgemm(CblasRowMajor, ta, CblasNoTrans, M, N, K, 1.0, A.data(), lda, B.data(), N, 0.0, C.data(), N);
    else
      scipy_cblas_sgemm(CblasRowMajor, ta, CblasNoTrans, M, N, K, 1.0f, A.data(), lda, B.data(), N, 0.0f, C.data(), N);
  };
  auto own = [&] { fastrnn::cpu::own_gemm<T>(trans_a, false, M, N, K, A.data(), lda, B.data(), N, false, C.data(), N); };
  const double b = median_us(blas), o = median_us(own);
  std::printf("%s M=%5d N=%4d K=%5d %s  blas %8.1f us  own %8.1f us  own/blas %.2f  (gemm() picks %s)\n",
              sizeof(T) == 8 ? "f64" : "f32", M, N, K, trans_a ? "T" : "N", b, o, o / b,
              fastrnn::cpu::own_small_gemm<T>(trans_a, M, N, K) ? "own" : "blas");
}

int main() {
  const int shapes[][4] = {{204, 51, 97, 1},   {97, 51, 204, 0},   {32, 32, 16, 1},    {16, 32, 32, 0},
                           {512, 128, 64, 1},  {64, 128, 512, 0},  {128, 128, 16, 1},  {16, 128, 128, 0},
                           {2048, 512, 16, 1}, {16, 512, 2048, 0}, {2048, 512, 64, 1}, {64, 512, 2048, 0},
                           {1024, 256, 3200, 1}, {3200, 256, 1024, 0}};
  for (const auto& s : shapes) {
    compare<double>(s[0], s[1], s[2], s[3]);
    compare<float>(s[0], s[1], s[2], s[3]);
  }
}
