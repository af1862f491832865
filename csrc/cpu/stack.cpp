// The CPU back end of the shared stack (csrc/stack.h): how it runs a layer (layer.h), allocates,
// clears and copies, and runs two directions at once, each on half the threads; and the
// thread-count setting.
#include <algorithm>
#include <atomic>
#include <exception>
#include <optional>
#include <cstdlib>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#include <pthread.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "cpu/layer.h"
#include "rnn.h"
#include "stack.h"

namespace fastrnn::cpu {

namespace {
int default_threads() {
#ifdef _OPENMP
  return std::max(1, omp_get_max_threads());
#else
  return 1;
#endif
}
std::atomic<int> g_threads{default_threads()};
// After fork() only the forking thread exists in the child, but libgomp still believes its pool
// does: the first parallel region of more than one thread waits forever for threads that are not
// there (fastrnn.nn in fork-started DataLoader workers hung). The child therefore runs every
// kernel on one thread (a region of one thread uses no pool thread) until set_num_threads says
// otherwise, which only a child that will not touch the parent's pool should do. The scratch
// caches' locks, which another thread may have held at the fork, are reset.
void after_fork_in_child() {
  g_threads.store(1);
  ScratchCache::reset_locks_after_fork();
}
const bool g_init = [] {
  blas_single_threaded();
  pthread_atfork(nullptr, nullptr, after_fork_in_child);
  return true;
}();

// Nested parallelism (each direction's own team inside the two-direction region) is switched on
// only for the duration of such a region and restored after: max-active-levels is shared with
// every other OpenMP user of the process (torch among them), and left at 2 it lets their nested
// regions oversubscribe the cores (torch.nn.GRU ran 8x slower).
struct NestedParallelism {
#ifdef _OPENMP
  int before = omp_get_max_active_levels();
  NestedParallelism() { omp_set_max_active_levels(2); }
  ~NestedParallelism() { omp_set_max_active_levels(before); }
#endif
};
}  // namespace

void empty_cache() {
  ScratchCache::release_all();
#ifdef __GLIBC__
  malloc_trim(0);  // freed blocks below the mmap threshold go back to the system too
#endif
}
size_t scratch_cache_bytes() { return ScratchCache::cached_bytes(); }

int num_threads() { return g_threads.load(std::memory_order_relaxed); }
int get_num_threads() { return num_threads(); }
void set_num_threads(int n) {
  if (n < 1) throw ArgumentError("num_threads must be >= 1, got " + std::to_string(n));
  g_threads.store(n);
}

// Every dimension a GEMM will see must fit the BLAS's int: checked here, before any parallel
// region (an exception thrown inside one would terminate the process).
void check_blas_dims(const RnnConfig& c) {
  blas_int(checked_mul(c.T, c.B, "T*B"), "T*B");
  blas_int(checked_mul(c.gates(), c.H, "G*H"), "G*H");
  blas_int(checked_mul(c.D, c.H, "D*H"), "D*H");
  blas_int(c.I, "input size");
}

// Threads worth using for one layer and direction: each thread pays a barrier per step (~1 us,
// far more when the cores are oversubscribed), so it must get at least min_step_flops() of the
// step's recurrent product (2^16 = ~1 us of work), and at least one block of kUnitAlign hidden
// units. The environment variable FASTRNN_MIN_STEP_FLOPS overrides it (the tests set 0 so that
// their small problems run the multi-threaded paths too).
int64 min_step_flops() {
  static const int64 flops = [] {
    const char* v = std::getenv("FASTRNN_MIN_STEP_FLOPS");
    return v ? std::max<int64>(0, std::atoll(v)) : int64(1) << 16;
  }();
  return flops;
}
int useful_threads(const RnnConfig& c, int available) {
  const double step_flops = 2.0 * double(c.gates()) * double(c.H) * double(c.H) * double(c.B);  // no overflow
  const int64 by_work = min_step_flops() ? int64(std::min<double>(available, std::max(1.0, step_flops / double(min_step_flops()))))
                                         : available;
  const int64 by_units = (c.H + kUnitAlign - 1) / kUnitAlign;
  return static_cast<int>(std::min<int64>({available, by_work, by_units}));
}

// Runs body(d, threads) for each direction: with two directions and at least two threads, both
// at once, each with half the threads (one direction per core needs no barrier at all).
// An exception (e.g. bad_alloc) is carried out of the
// parallel region and rethrown, never left to terminate the process.
template <class Body> void for_each_direction(const RnnConfig& c, Body body) {
  const int nt = num_threads();
  if (c.D == 2 && nt >= 2) {
    std::exception_ptr error[2];
    std::optional<NestedParallelism> nested;
    if (nt > 2) nested.emplace();  // with two threads each direction runs on one: no nesting
#pragma omp parallel for num_threads(2) schedule(static, 1)
    for (int64 d = 0; d < 2; ++d) {
      try {
        body(d, useful_threads(c, d == 0 ? (nt + 1) / 2 : nt / 2));
      } catch (...) {
        error[d] = std::current_exception();
      }
    }
    for (auto& e : error)
      if (e) std::rethrow_exception(e);
    return;
  }
  for (int64 d = 0; d < c.D; ++d) body(d, useful_threads(c, nt));
}

// The stack's CPU back end (the interface is described in csrc/stack.h). A layer runs on `threads`
// threads (the context for_each_direction hands it).
struct CpuBackend {
  template <class T> struct Buffer {
    Scratch<T> scratch;
    Buffer(const CpuBackend&, int64 n, const char* what) : scratch(n, what) {}
    T* data() { return scratch.data(); }
  };
  template <class T> void zero(T* p, int64 n) const { std::memset(p, 0, sizeof(T) * n); }
  template <class T> void copy(T* dst, const T* src, int64 n) const { std::memcpy(dst, src, sizeof(T) * n); }
  template <class Body> void for_each_direction(const RnnConfig& c, Body body) const {
    cpu::for_each_direction(c, body);
  }
  // Run concurrently, the reverse direction accumulates its dL/d(input) apart, added after.
  template <class T, class Body> void accumulate_directions(const RnnConfig& c, T* din, int64 n, Body body) const {
    Scratch<T> din_reverse(c.D == 2 ? n : 0, "the reverse direction's input gradients [T, B, I_l]");
    if (c.D == 2) std::memset(din_reverse.data(), 0, sizeof(T) * n);
    cpu::for_each_direction(c, [&](int64 d, int threads) { body(d, d == 1 ? din_reverse.data() : din, threads); });
    if (c.D == 2) {
      const T* rev = din_reverse.data();
#pragma omp parallel for simd num_threads(num_threads()) schedule(static)
      for (int64 i = 0; i < n; ++i) din[i] += rev[i];
    }
  }
  template <class Cell, class T> void layer_forward(const RnnConfig& c, const LayerForwardArgs<T>& a, int threads) const {
    cpu::layer_forward<Cell>(c, a, threads);
  }
  template <class Cell, class T>
  void layer_backward(const RnnConfig& c, const LayerBackwardArgs<T>& a, int threads) const {
    cpu::layer_backward<Cell>(c, a, threads);
  }
};

template <class T> void forward(const RnnConfig& c, const ForwardArgs<T>& a) {
  check_blas_dims(c);
  stack_forward(CpuBackend{}, c, a);
}

template <class T> void backward(const RnnConfig& c, const BackwardArgs<T>& a) {
  check_blas_dims(c);
  stack_backward(CpuBackend{}, c, a);
}

template void forward<float>(const RnnConfig&, const ForwardArgs<float>&);
template void forward<double>(const RnnConfig&, const ForwardArgs<double>&);
template void backward<float>(const RnnConfig&, const BackwardArgs<float>&);
template void backward<double>(const RnnConfig&, const BackwardArgs<double>&);

}  // namespace fastrnn::cpu
