// One layer in one direction on the CPU: the phase loop around the cell specs (csrc/cells/), its
// threading, scratch memory and the choice of product path. Forward: the input projection (each
// thread onto its own units' gates, so it needs no barrier, in chunks of steps just ahead of the
// recurrence), then per step the spec's phases: today a recurrent product h_prev W_hh^T and the
// fused pointwise cell over all rows; both GEMMs start from the bias. Backward: per step (in
// reverse) the phases in reverse, the pointwise backward and dG_h W_hh; after the loop dW_ih, dW_hh,
// db and dX are each one GEMM over all steps. Nothing here knows which cell it runs: it reads the
// spec's declarations (csrc/cells/spec.h).
//
// Variable lengths: row b is live at time t iff t < len[b], in both directions. A dead row keeps
// its state (so the forward direction's final state is the one at its own last step, and the
// reverse direction starts from h0 at its own last step) and outputs zeros; in backward a dead
// row passes dh/dc through unchanged and contributes no gate gradient. Step t runs the rows
// [0, rows(t)) only (LiveRows below; the live ones when lengths are sorted in decreasing order, as
// the CPU stack arranges), and the hoisted GEMMs the N rows that run: no work for dead rows beyond
// writing their zeros.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/blas.h"
#include "cpu/packed_gemm.h"
#include "cpu/packed_gemm16.h"
#include "cpu/rows_gemm.h"
#include "philox.h"
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

// Freed scratch blocks kept, per thread, for the next call on that thread. A buffer above glibc's
// mmap threshold (32 MB at most) is otherwise mapped afresh on every call, and the kernel's page
// faults and page clearing took ~15 % of a training call at T*B = 25600 (perf). Only blocks of at
// least kMinBytes are kept (smaller ones come cheaply from malloc's free lists), at most
// max_bytes() in all per thread (the oldest go first; 256 MB unless the environment variable
// FASTRNN_SCRATCH_CACHE_MB says otherwise, 0 keeps nothing); a block is reused for a request of half
// its size or more. Every thread's cache is listed in one registry so that release_all()
// (fastrnn.empty_cache()) can free the blocks of threads that are not running, the OpenMP pool's
// included; a thread's cache is freed when the thread ends.
class ScratchCache {
 public:
  static constexpr size_t kMinBytes = size_t(1) << 20;
  static size_t max_bytes() {
    static const size_t bytes = [] {
      const char* v = std::getenv("FASTRNN_SCRATCH_CACHE_MB");
      return v ? size_t(std::max(0LL, std::atoll(v))) << 20 : size_t(256) << 20;
    }();
    return bytes;
  }
  static ScratchCache& local() {
    thread_local ScratchCache cache;
    return cache;
  }
  // A kept block of `bytes` to twice that, the smallest such, or nullptr; `bytes` becomes the
  // block's own size, so that give() files it under that size again.
  void* take(size_t& bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto best = blocks_.end();
    for (auto it = blocks_.begin(); it != blocks_.end(); ++it)
      if (it->bytes >= bytes && it->bytes / 2 <= bytes && (best == blocks_.end() || it->bytes < best->bytes)) best = it;
    if (best == blocks_.end()) return nullptr;
    void* p = best->p;
    bytes = best->bytes;
    total_ -= best->bytes;
    blocks_.erase(best);
    return p;
  }
  // Keeps p (of `bytes`, from std::aligned_alloc) or frees it.
  void give(void* p, size_t bytes) {
    if (bytes < kMinBytes || bytes > max_bytes()) return std::free(p);
    std::lock_guard<std::mutex> lock(mutex_);
    blocks_.push_back({p, bytes});
    total_ += bytes;
    while (total_ > max_bytes()) {
      total_ -= blocks_.front().bytes;
      std::free(blocks_.front().p);
      blocks_.erase(blocks_.begin());
    }
  }
  // Frees every kept block of every thread's cache.
  static void release_all() {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    for (ScratchCache* c : r.caches) c->release();
  }
  // Bytes kept by all threads' caches together.
  static size_t cached_bytes() {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    size_t n = 0;
    for (ScratchCache* c : r.caches) {
      std::lock_guard<std::mutex> cache_lock(c->mutex_);
      n += c->total_;
    }
    return n;
  }
  // In a forked child only the forking thread exists: locks another thread may have held at the
  // fork are reset (the caches' memory is still there and can be freed).
  static void reset_locks_after_fork() {
    Registry& r = registry();
    new (&r.mutex) std::mutex;
    for (ScratchCache* c : r.caches) new (&c->mutex_) std::mutex;
  }

  ScratchCache() {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    r.caches.push_back(this);
  }
  ~ScratchCache() {
    {
      Registry& r = registry();
      std::lock_guard<std::mutex> lock(r.mutex);
      r.caches.erase(std::find(r.caches.begin(), r.caches.end(), this));
    }
    release();
  }
  ScratchCache(const ScratchCache&) = delete;
  ScratchCache& operator=(const ScratchCache&) = delete;

 private:
  struct Block {
    void* p;
    size_t bytes;
  };
  struct Registry {
    std::mutex mutex;
    std::vector<ScratchCache*> caches;
  };
  // Never destroyed: pool threads' caches may outlive static destruction at exit.
  static Registry& registry() {
    static Registry* r = new Registry;
    return *r;
  }
  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& b : blocks_) std::free(b.p);
    blocks_.clear();
    total_ = 0;
  }
  std::mutex mutex_;  // taken by this thread's take/give (uncontended) and by release_all
  std::vector<Block> blocks_;
  size_t total_ = 0;
};

// Out of memory for a scratch buffer: Python's MemoryError (pybind11 translates std::bad_alloc)
// with the size and what the buffer was for.
class ScratchAllocError : public std::bad_alloc {
 public:
  ScratchAllocError(size_t bytes, const char* what)
      : message_("fastrnn: out of memory allocating " + std::to_string(bytes) + " bytes for " + what) {}
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

// A block of `bytes` rounded up to a multiple of 64 (`bytes` becomes the block's size), 64-byte
// aligned, not zero-filled: one this thread's ScratchCache kept, or a new one. Give it back with
// ScratchCache::local().give(p, bytes), on any thread.
inline void* take_scratch_block(size_t& bytes, const char* what) {
  bytes = (bytes + 63) / 64 * 64;
  void* p = ScratchCache::local().take(bytes);
  if (!p) p = std::aligned_alloc(64, bytes);
  if (!p) throw ScratchAllocError(bytes, what);
  return p;
}

// Scratch memory of n elements of T, 64-byte aligned (packed panels and rows start on cache lines)
// and NOT zero-filled: every element the kernels read is written first, and clearing would be a
// whole extra pass over buffers of T*B*G*H elements (std::vector<T>(n) spent 5-9 % of a forward
// call in memset). Taken from and returned to this thread's ScratchCache. `what` names the buffer
// in the out-of-memory error.
template <class T> class Scratch {
 public:
  explicit Scratch(int64 n, const char* what = "a scratch buffer") {
    if (n <= 0) return;
    bytes_ = size_t(checked_mul(n, int64(sizeof(T)), what));
    p_ = static_cast<T*>(take_scratch_block(bytes_, what));
  }
  ~Scratch() {
    if (p_) ScratchCache::local().give(p_, bytes_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* data() { return p_; }

 private:
  T* p_ = nullptr;
  size_t bytes_ = 0;
};

// Per-thread buffers of one parallel region: the runtime may grant fewer threads than requested
// (OMP_THREAD_LIMIT, OMP_DYNAMIC, nesting), and the hidden units are split by the team size it
// grants, so each thread's share, and the size of its buffer, is a function of that size. The
// buffer is allocated before the region (nothing may throw inside one) for the largest need over
// the team sizes 1..requested; inside, thread tid of a team of nt uses offset(nt, tid).
class TeamBuffers {
 public:
  // per_thread(p): elements one thread needs in a team of p.
  template <class PerThread> TeamBuffers(int requested, PerThread per_thread) : per_thread_(requested + 1, 0) {
    for (int p = 1; p <= requested; ++p) {
      per_thread_[p] = per_thread(p);
      total_ = std::max(total_, checked_mul(per_thread_[p], p, "per-thread buffers"));
    }
  }
  int64 total() const { return total_; }
  int64 offset(int team, int tid) const { return per_thread_[team] * tid; }

 private:
  std::vector<int64> per_thread_;  // [requested + 1]
  int64 total_ = 0;
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
// Pack the weights when T*B >= this. Packing is a transposing pass over W_ih and W_hh; below ~16
// rows in all it cost more than it saved (one step of B = 8 at H = 64: 34 % of the call in
// pack_panels), and those few rows read the row-major weights directly (see the next constant).
constexpr int64 kPackMinRows = 16;
// Below kPackMinRows rows, rows_gemm.h's kernels for a layer whose weights (G*H*(I+H) values) reach
// this many bytes, the BLAS below: it repacks its weight operand on every call, cheap while that
// comes from L2, and was up to 1.5x faster than rows_gemm.h at H = 64 and in a GRU backward at
// H = 256 (1.5 MB); from 2 MB on (LSTM at H = 256, RNN at H = 512) rows_gemm.h was as fast or
// faster, 2-4x at H = 1024.
constexpr int64 kRowsKernelMinBytes = int64(2) << 20;
inline bool few_rows_kernels(int64 GH, int64 in_size, int64 H, size_t elem) {
  return checked_mul(checked_mul(GH, in_size + H, "weights"), int64(elem), "weights") >= kRowsKernelMinBytes;
}

// A one-step call (T = 1: a cell stepped from Python, one decoder step) reads each weight once, so
// packing them is a second pass over W that nothing amortises: such calls with 32/64-bit weights
// keep the few-rows path below this many rows (16-bit storage keeps kPackMinRows: its packed path
// has the 16-bit dot-product kernels). From about 32 rows on, the packed kernels' speed wins the
// packing back even for one step (measurements: bench/results/*-cells-1t-round3.md).
constexpr int64 kOneStepPackMinRows = 32;

// How a call's products run, chosen ONCE per call (forward and backward alike) from its steps,
// rows and the size of its weights: packed panels from kPackMinRows rows in all (`one_step`, a T = 1
// call with native weights: kOneStepPackMinRows); below, straight from the weights' rows with
// rows_gemm.h's kernels for large weights, the BLAS for small ones.
enum class ProductPath { Packed, FewRowsOwn, FewRowsBlas };
inline ProductPath product_path(bool one_step, int64 TB, int64 GH, int64 in_size, int64 H, size_t elem) {
  if (TB >= (one_step ? kOneStepPackMinRows : kPackMinRows)) return ProductPath::Packed;
  return few_rows_kernels(GH, in_size, H, elem) ? ProductPath::FewRowsOwn : ProductPath::FewRowsBlas;
}

// Which rows of the [T, B] problem a call runs at each step, and where they sit in the loops'
// packed per-row buffers (gi, dG, h_prev: [N, ...] instead of [T, B, ...]). Step t runs rows
// [0, rows(t)): every live row (t < len[b]) lies below rows(t) = 1 + the last live row. With
// lengths sorted in decreasing order (the packed layout: rows(t) = batch_sizes[t]) that is exactly
// the live rows; with unsorted lengths the dead rows among them run too and are masked as before.
// Packed row of (t, b) = offset(t) + b, so N = sum_t rows(t) (= sum of lengths when sorted, T*B
// without lengths, where the packed buffers are the [T, B, ...] ones). Liveness is monotone in
// processing order for each row (forward: live, then dead; reverse: dead, then live), which is why
// the loops need not carry a dead row's state: they save it at the row's last live step.
class LiveRows {
 public:
  LiveRows(int64 T, int64 B, const int64* lengths) : T_(T), B_(B), lengths_(lengths), rows_(T, B), offset_(T + 1) {
    if (lengths) {
      std::fill(rows_.begin(), rows_.end(), 0);
      for (int64 b = 0; b < B; ++b) rows_[lengths[b] - 1] = std::max(rows_[lengths[b] - 1], b + 1);
      for (int64 t = T - 2; t >= 0; --t) rows_[t] = std::max(rows_[t], rows_[t + 1]);
    }
    offset_[0] = 0;
    for (int64 t = 0; t < T; ++t) offset_[t + 1] = offset_[t] + rows_[t];
  }
  int64 rows(int64 t) const { return rows_[t]; }
  int64 offset(int64 t) const { return offset_[t]; }
  int64 packed_rows() const { return offset_[T_]; }  // N
  bool live(int64 t, int64 b) const { return !lengths_ || t < lengths_[b]; }
  // Row b's last live step in processing order (forward: t = len - 1; reverse: t = 0), where the
  // loops save its final state; its first one is where backward saves dL/d(initial state).
  int64 last_step(int64 b, bool reverse) const { return reverse ? 0 : lengths_ ? lengths_[b] - 1 : T_ - 1; }
  int64 first_step(int64 b, bool reverse) const { return last_step(b, !reverse); }
  // f(padded_row, packed_row, count) for the rows run in steps [t_begin, t_end), in maximal runs
  // contiguous in both [T, B] (padded_row = t*B + b) and the packed layout (consecutive steps merge
  // while the earlier ones run all B rows).
  template <class F> void for_each_run(int64 t_begin, int64 t_end, F&& f) const {
    for (int64 t = t_begin; t < t_end;) {
      int64 u = t;
      while (u + 1 < t_end && rows_[u] == B_) ++u;  // steps t..u form one run
      const int64 count = offset_[u + 1] - offset_[t];
      if (count > 0) f(t * B_, offset_[t], count);
      t = u + 1;
    }
  }
  // The packed rows [p_begin, p_end) of dst [N, W] from src [T*B, W]: each run's share (a thread's
  // block of packed rows), zeros for the dead rows among them (0 * NaN padding is NaN).
  template <class T> void gather(const T* src, int64 W, T* dst, int64 p_begin, int64 p_end) const {
    for_each_run(0, T_, [&](int64 x_row, int64 p_row, int64 count) {
      for (int64 p = std::max(p_row, p_begin); p < std::min(p_row + count, p_end); ++p) {
        const int64 tb = x_row + p - p_row;
        if (live(tb / B_, tb % B_)) std::memcpy(dst + p * W, src + tb * W, sizeof(T) * W);
        else std::memset(dst + p * W, 0, sizeof(T) * W);
      }
    });
  }
  // dst [T*B, W] += src [N, W] on the packed rows [p_begin, p_end).
  template <class T> void scatter_add(const T* src, int64 W, T* dst, int64 p_begin, int64 p_end) const {
    for_each_run(0, T_, [&](int64 x_row, int64 p_row, int64 count) {
      for (int64 p = std::max(p_row, p_begin); p < std::min(p_row + count, p_end); ++p) {
        T* d = dst + (x_row + p - p_row) * W;
        const T* s = src + p * W;
        for (int64 i = 0; i < W; ++i) d[i] += s[i];
      }
    });
  }

 private:
  int64 T_, B_;
  const int64* lengths_;  // [B] or nullptr
  std::vector<int64> rows_, offset_;  // [T], [T + 1]
};

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

// One layer and direction (layer_kernels.inc) on `threads` threads, run with the code compiled for
// this CPU (cpu_isa()).
// THE switch point of the training modifiers: the runtime ones become the loops'
// ModifierFlags (rnn.h) here, once per call.
template <class F> void with_modifier_flags(bool recurrent_mask, bool zoneout, F&& f) {
  if (recurrent_mask) {
    if (zoneout) f(ModifierFlags<true, true>{});
    else f(ModifierFlags<true, false>{});
  } else {
    if (zoneout) f(ModifierFlags<false, true>{});
    else f(ModifierFlags<false, false>{});
  }
}
// The projected LSTM runs without modifiers (csrc/stack.h refuses them): one instantiation.
template <class Cell, class F> void with_modifier_flags_of(bool recurrent_mask, bool zoneout, F&& f) {
  if constexpr (SpecTraits<Cell>::kProjected) f(ModifierFlags<false, false>{});
  else with_modifier_flags(recurrent_mask, zoneout, f);
}
template <class Cell, class T> void layer_forward(const RnnConfig& cfg, const LayerForwardArgs<T>& a, int threads) {
  with_modifier_flags_of<Cell>(a.h_mask || a.seeded.draws_recurrent(), a.zone_h || a.zone_c || a.seeded.draws_zoneout(),
                               [&](auto mods) {
    using Mods = decltype(mods);
    if (cpu_isa() == Isa::Baseline) baseline::layer_forward<Cell, Mods>(cfg, a, threads);
    else avx2::layer_forward<Cell, Mods>(cfg, a, threads);
  });
}
template <class Cell, class T> void layer_backward(const RnnConfig& cfg, const LayerBackwardArgs<T>& a, int threads) {
  with_modifier_flags_of<Cell>(a.h_mask || a.seeded.draws_recurrent(), a.zone_h || a.zone_c || a.seeded.draws_zoneout(),
                               [&](auto mods) {
    using Mods = decltype(mods);
    if (cpu_isa() == Isa::Baseline) baseline::layer_backward<Cell, Mods>(cfg, a, threads);
    else avx2::layer_backward<Cell, Mods>(cfg, a, threads);
  });
}

}  // namespace fastrnn::cpu
