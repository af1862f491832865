// One layer in one direction on the CPU: the time loop around the shared cell maths (cells.h).
// Forward: one GEMM for the input projection of all steps, then per step one GEMM h_prev W_hh^T
// and the fused pointwise cell over all rows. Backward: per step (in reverse) the pointwise
// backward and dG_h W_hh; after the loop dW_ih, dW_hh, db and dX are each one GEMM over all steps.
// Nothing here knows which cell it runs.
//
// Variable lengths: row b is live at time t iff t < len[b], in both directions. A dead row keeps
// its state (so the forward direction's final state is the one at its own last step, and the
// reverse direction starts from h0 at its own last step) and outputs zeros; in backward a dead
// row passes dh/dc through unchanged and contributes no gate gradient.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/blas.h"
#include "cpu/packed_gemm.h"
#include "rnn.h"

namespace fastrnn::cpu {

// A thread's share [begin, end) of n items, split into `parts` nearly equal pieces whose
// boundaries fall on multiples of `align` (keeps SIMD loops and cache lines whole).
struct Range {
  int64 begin, end;
  int64 size() const { return end - begin; }
};
inline Range split(int64 n, int parts, int index, int64 align) {
  const int64 chunks = (n + align - 1) / align;
  const int64 lo = chunks * index / parts, hi = chunks * (index + 1) / parts;
  return {std::min(n, lo * align), std::min(n, hi * align)};
}

// The largest share split() gives any thread.
inline int64 max_share(int64 n, int parts, int64 align) {
  const int64 chunks = (n + align - 1) / align;
  return std::min(n, (chunks + parts - 1) / parts * align);
}

// Scratch memory of n elements of T, 64-byte aligned (packed panels and rows start on cache lines)
// and NOT zero-filled: every element the kernels read is written first, and clearing would be a
// whole extra pass over buffers of T*B*G*H elements (std::vector<T>(n) spent 5-9 % of a forward
// call in memset).
template <class T> class Scratch {
 public:
  explicit Scratch(int64 n) {
    if (n <= 0) return;
    const size_t bytes = (size_t(checked_mul(n, int64(sizeof(T)), "scratch buffer")) + 63) / 64 * 64;
    p_.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
    if (!p_) throw std::bad_alloc();
  }
  T* data() { return p_.get(); }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> p_;
};

inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
inline int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// Threading: ONE OpenMP team per layer call and no other thread pool (the BLAS runs single-threaded
// inside each thread). Each thread owns a fixed slice of the hidden units (all gates of them) for the
// whole sequence, so its rows of W_hh stay in its own cache, the pointwise cell needs nothing from
// other threads, and a step costs one barrier.
constexpr int64 kUnitAlign = 16;
constexpr int64 kPackMinRows = 4;  // pack W_hh when T*B >= this

// The kernels, compiled twice: for AVX2+FMA (also taken on AVX-512 CPUs) and for baseline x86-64.
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
#include "cpu/layer_kernels.inc"
}  // namespace avx2
#pragma GCC pop_options

namespace baseline {
#include "cpu/layer_kernels.inc"
}  // namespace baseline

// layer_forward<Cell>(...) / layer_backward<Cell>(...): the arguments of the kernels in
// layer_kernels.inc, run with the code compiled for this CPU (cpu_isa()).
template <class Cell, class... Args> void layer_forward(Args&&... args) {
  if (cpu_isa() == Isa::Baseline) baseline::layer_forward<Cell>(std::forward<Args>(args)...);
  else avx2::layer_forward<Cell>(std::forward<Args>(args)...);
}
template <class Cell, class... Args> void layer_backward(Args&&... args) {
  if (cpu_isa() == Isa::Baseline) baseline::layer_backward<Cell>(std::forward<Args>(args)...);
  else avx2::layer_backward<Cell>(std::forward<Args>(args)...);
}

}  // namespace fastrnn::cpu
