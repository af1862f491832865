// The CPU back end of the shared stack (csrc/stack.h): how it runs a layer (layer.h), allocates,
// clears and copies, and runs two directions at once, each on half the threads; and the
// thread-count setting; and the 16-bit entry points, which widen their arrays, run the float32
// stack on weights marked 16-bit and narrow the results (csrc/cpu/storage16.h).
#include <algorithm>
#include <atomic>
#include <exception>
#include <functional>
#include <optional>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#include <pthread.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "cpu/layer.h"
#include "cpu/storage16.h"
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
void* take_reserve_block(size_t& bytes) { return take_scratch_block(bytes, "the training reserve"); }
void give_reserve_block(void* p, size_t bytes) { ScratchCache::local().give(p, bytes); }

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
  // With 16-bit weights the layer's output is rounded to their type once the layer is done, so the
  // next layer reads what a 16-bit output holds (the recurrence inside the layer kept float32 h).
  template <class Cell, class T> void layer_forward(const RnnConfig& c, const LayerForwardArgs<T>& a, int threads) const {
    cpu::layer_forward<Cell>(c, a, threads);
    if constexpr (std::is_same<T, float>::value) {
      if (a.w.storage != Storage::Native)
        for (int64 tb = 0; tb < c.T * c.B; ++tb) round_to_storage(a.w.storage, a.y + tb * a.ldy, c.h_size());
    }
  }
  template <class Cell, class T>
  void layer_backward(const RnnConfig& c, const LayerBackwardArgs<T>& a, int threads) const {
    cpu::layer_backward<Cell>(c, a, threads);
  }
};

// Unsorted lengths. The loops run the rows [0, rows(t)) of step t (LiveRows, layer.h), which with
// unsorted lengths include dead rows below the last live one (all B of them while the last row is
// live). The batch is therefore sorted once by decreasing length (stable, so that equal lengths
// keep their order), the sorted problem run, and the rows put back: a copy of x, y and the states
// (dy, dx in backward) for every step running its live rows only. Backward derives the same order
// from the same lengths, so the reserve (kept in sorted order, the zoneout h~/c~ included) matches.
// The modifiers' per-row masks are sorted with the rows.
struct BatchOrder {
  std::vector<int64> order;    // [B] sorted row i is the caller's row order[i]
  std::vector<int64> lengths;  // [B] the sorted lengths
};
inline std::optional<BatchOrder> sorting_order(const RnnConfig& c, const int64* lengths) {
  if (!lengths) return std::nullopt;
  if (std::is_sorted(lengths, lengths + c.B, std::greater<int64>())) return std::nullopt;
  BatchOrder o{std::vector<int64>(c.B), std::vector<int64>(c.B)};
  for (int64 b = 0; b < c.B; ++b) o.order[b] = b;
  std::stable_sort(o.order.begin(), o.order.end(), [&](int64 i, int64 j) { return lengths[i] > lengths[j]; });
  for (int64 b = 0; b < c.B; ++b) o.lengths[b] = lengths[o.order[b]];
  return o;
}

// Rows of a [R, B, W] array (nullptr: none) between the caller's order and the sorted one:
// to_sorted: dst[r, i] = src[r, order[i]]; else dst[r, order[i]] = src[r, i].
template <class T>
void permute_rows(const T* src, T* dst, int64 R, int64 B, int64 W, const std::vector<int64>& order, bool to_sorted) {
  if (!src) return;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64 ri = 0; ri < R * B; ++ri) {
    const int64 r = ri / B, i = ri % B, b = order[i];
    const int64 from = r * B + (to_sorted ? b : i), to = r * B + (to_sorted ? i : b);
    std::memcpy(dst + to * W, src + from * W, sizeof(T) * W);
  }
}

// A [R, B, W] array in the sorted order: scratch (empty for nullptr) filled from the caller's.
template <class T> struct SortedCopy {
  Scratch<T> rows;
  T* p;
  SortedCopy(const T* src, int64 R, int64 B, int64 W, const BatchOrder& o, const char* what)
      : rows(src ? checked_mul(checked_mul(R, B, what), W, what) : 0, what), p(src ? rows.data() : nullptr) {
    permute_rows(src, p, R, B, W, o.order, true);
  }
};

// The arrays of a layer's weights (LayerWeights) and gradients (LayerGrads) by the cell specs'
// parameter names (ParamDecl::name): what the 16-bit entry points copy, parameter by parameter.
template <class T> struct ParamField {
  const char* name;
  const T* LayerWeights<T>::*weight;
  T* LayerGrads<T>::*grad;
};
template <class T> const ParamField<T>& param_field(const char* name) {
  using W = LayerWeights<T>;
  using G = LayerGrads<T>;
  static const ParamField<T> fields[] = {
      {"w_ih", &W::w_ih, &G::dw_ih},           {"w_hh", &W::w_hh, &G::dw_hh},
      {"b_ih", &W::b_ih, &G::db_ih},           {"b_hh", &W::b_hh, &G::db_hh},
      {"w_ch", &W::w_ch, &G::dw_ch},           {"ln_weight_ih", &W::ln_ih, &G::dln_ih},
      {"ln_weight_hh", &W::ln_hh, &G::dln_hh}, {"ln_weight_c", &W::ln_c_w, &G::dln_c_w},
      {"ln_bias_c", &W::ln_c_b, &G::dln_c_b},    {"w_hr", &W::w_hr, &G::dw_hr}};
  for (const auto& f : fields)
    if (std::strcmp(f.name, name) == 0) return f;
  throw ArgumentError(std::string("the 16-bit entry points have no field for parameter ") + name);
}

// A 16-bit call's float32 copies, allocated before any parallel region: take() gives one argument
// (the caller's array, the float32 call's field, its size, whether the call reads or writes it) its
// copy, widened now if read, narrowed into the caller's array by finish() if written.
enum class Access { Read, Write };
template <class S> class Widened {
 public:
  template <class F> void take(const S* src, F*& dst, int64 n, Access access, const char* what) {
    dst = nullptr;
    if (!src || n == 0) return;
    buffers_.push_back(std::make_unique<Scratch<float>>(n, what));
    float* d = buffers_.back()->data();
    if (access == Access::Read) widen16(src, d, n, num_threads());
    else outputs_.push_back({d, const_cast<S*>(src), n});
    dst = d;
  }
  // Every parameter of a layer: its weights (read; the copies marked as 16-bit) and, with grads, its
  // gradients (written).
  void layer(const RnnConfig& c, int64 in_size, const LayerWeights<S>& w, LayerWeights<float>& fw,
             const LayerGrads<S>* g = nullptr, LayerGrads<float>* fg = nullptr) {
    for (int i = 0; i < param_counts(c.cell, c.options).with_bias; ++i) {
      const char* name = param_decl(c.cell, i, c.options).name;
      int64 n = 1;
      for (int64 d : param_shape(c.cell, in_size, c.H, i, c.options)) n = checked_mul(n, d, "weights");
      take(w.*param_field<S>(name).weight, fw.*param_field<float>(name).weight, n, Access::Read,
           "the float32 copy of the weights");
      if (g) take(g->*param_field<S>(name).grad, fg->*param_field<float>(name).grad, n, Access::Write,
                  "the float32 weight gradients");
    }
    fw.storage = storage_of<S>();
  }
  // The modifiers' arrays; h~ and c~ are written by forward (`pre`: Write) and read by backward.
  void modifiers(const RnnConfig& c, const Modifiers<S>& m, Modifiers<float>& f, Access pre) {
    const int64 state = c.L * c.D * c.B * c.H, steps = c.T * state;
    take(m.recurrent_mask, f.recurrent_mask, state, Access::Read, "the float32 recurrent mask");
    take(m.zoneout_h, f.zoneout_h, steps, Access::Read, "the float32 zoneout mask");
    take(m.zoneout_c, f.zoneout_c, steps, Access::Read, "the float32 zoneout mask");
    take(m.pre_h, f.pre_h, steps, pre, "the float32 h~");
    take(m.pre_c, f.pre_c, steps, pre, "the float32 c~");
    f.grad_clip = m.grad_clip;
  }
  void finish() {
    for (const auto& o : outputs_) narrow16(o.f, o.s, o.n, num_threads());
  }

 private:
  struct Output {
    const float* f;
    S* s;
    int64 n;
  };
  std::vector<std::unique_ptr<Scratch<float>>> buffers_;
  std::vector<Output> outputs_;
};

// The packed layout of x and y (dy, dx): torch's PackedSequence, time-major with the batch sorted by
// decreasing length, step t's batch_sizes[t] live rows at rows offset(t) = sum_{u<t} batch_sizes[u]
// of an [N, W] array (N = the sum of the lengths). The CPU loops keep their per-row buffers in
// exactly this order (LiveRows, layer.h), so a packed call runs the sorted-lengths problem: x's live
// rows are put at their [T, B] places, the stack runs, and y's live rows are taken from theirs (the
// dead rows are neither read nor copied). PackedRows holds the lengths that batch_sizes implies.
struct PackedRows {
  std::vector<int64> lengths;  // [B], non-increasing
  int64 rows;                  // N
};
inline PackedRows packed_rows(const RnnConfig& c, const int64* batch_sizes, int64 rows) {
  if (!batch_sizes) throw ArgumentError("the packed layout needs batch_sizes, got a null pointer");
  if (batch_sizes[0] != c.B)
    throw ArgumentError("batch_sizes[0] must be the batch size B=" + std::to_string(c.B) + ", got " +
                        std::to_string(batch_sizes[0]));
  PackedRows p{std::vector<int64>(c.B, 0), 0};
  for (int64 t = 0; t < c.T; ++t) {
    const int64 n = batch_sizes[t], next = t + 1 < c.T ? batch_sizes[t + 1] : 0;
    if (n < 1 || n < next)
      throw ArgumentError("batch_sizes must be non-increasing and >= 1, got " + std::to_string(n) + " at step " +
                          std::to_string(t) + (next > n ? " before " + std::to_string(next) : ""));
    for (int64 b = next; b < n; ++b) p.lengths[b] = t + 1;  // rows [next, n) end at step t
    p.rows = checked_add(p.rows, n, "the packed rows");
  }
  if (p.rows != rows)
    throw ArgumentError("the packed data must have sum(batch_sizes) = " + std::to_string(p.rows) + " rows, got " +
                        std::to_string(rows));
  return p;
}
// Rows of a [T, B, W] array to or from the packed [N, W] one (live rows only).
template <class T> void packed_copy(const LiveRows& live, int64 T_, int64 B, int64 W, const T* src, T* dst, bool to_packed) {
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64 t = 0; t < T_; ++t) {
    const int64 padded = t * B * W, packed = live.offset(t) * W, n = live.rows(t) * W;
    if (to_packed) std::memcpy(dst + packed, src + padded, sizeof(T) * n);
    else std::memcpy(dst + padded, src + packed, sizeof(T) * n);
  }
}

// The float32 call of a 16-bit forward / backward: every array argument, one row each (x, y, dy, dx
// packed [N, .] when `packed` is given).
// h0, hn, y's columns (dhn, dh0, dy) are h_size() wide (P for the projected LSTM), c0, cn H wide.
template <class S>
ForwardArgs<float> widened_call(Widened<S>& w, const RnnConfig& c, const ForwardArgs<S>& a, const PackedRows* packed) {
  const int64 TB = packed ? packed->rows : c.T * c.B, state = c.L * c.D * c.B * c.H, carried = c.has_cell_state() ? state : 0;
  const int64 hstate = c.L * c.D * c.B * c.h_size();
  ForwardArgs<float> f{};
  f.lengths = a.lengths;
  w.take(a.x, f.x, TB * c.I, Access::Read, "the float32 copy of x");
  w.take(a.h0, f.h0, hstate, Access::Read, "the float32 copy of h0");
  w.take(a.c0, f.c0, carried, Access::Read, "the float32 copy of c0");
  w.take(a.y, f.y, TB * c.D * c.h_size(), Access::Write, "the float32 output");
  w.take(a.hn, f.hn, hstate, Access::Write, "the float32 h_n");
  w.take(a.cn, f.cn, carried, Access::Write, "the float32 c_n");
  w.take(a.reserve, f.reserve, ReserveLayout(c).total, Access::Write, "the float32 reserve");
  w.modifiers(c, a.mods, f.mods, Access::Write);
  f.mods.seeded = a.mods.seeded;
  f.weights.resize(a.weights.size());
  for (size_t k = 0; k < a.weights.size(); ++k) w.layer(c, c.input_size(int64(k) / c.D), a.weights[k], f.weights[k]);
  return f;
}
template <class S>
BackwardArgs<float> widened_call(Widened<S>& w, const RnnConfig& c, const BackwardArgs<S>& a, const PackedRows* packed) {
  const int64 TB = packed ? packed->rows : c.T * c.B, state = c.L * c.D * c.B * c.H, carried = c.has_cell_state() ? state : 0;
  const int64 hstate = c.L * c.D * c.B * c.h_size();
  BackwardArgs<float> f{};
  f.lengths = a.lengths;
  w.take(a.x, f.x, TB * c.I, Access::Read, "the float32 copy of x");
  w.take(a.h0, f.h0, hstate, Access::Read, "the float32 copy of h0");
  w.take(a.c0, f.c0, carried, Access::Read, "the float32 copy of c0");
  w.take(a.reserve, f.reserve, ReserveLayout(c).total, Access::Read, "the float32 reserve");
  w.take(a.dy, f.dy, TB * c.D * c.h_size(), Access::Read, "the float32 copy of dy");
  w.take(a.dhn, f.dhn, hstate, Access::Read, "the float32 copy of dhn");
  w.take(a.dcn, f.dcn, carried, Access::Read, "the float32 copy of dcn");
  w.take(a.dx, f.dx, TB * c.I, Access::Write, "the float32 dx");
  w.take(a.dh0, f.dh0, hstate, Access::Write, "the float32 dh0");
  w.take(a.dc0, f.dc0, carried, Access::Write, "the float32 dc0");
  w.modifiers(c, a.mods, f.mods, Access::Read);
  f.mods.seeded = a.mods.seeded;
  f.weights.resize(a.weights.size());
  f.grads.resize(a.grads.size());
  for (size_t k = 0; k < a.weights.size(); ++k)
    w.layer(c, c.input_size(int64(k) / c.D), a.weights[k], f.weights[k], &a.grads[k], &f.grads[k]);
  return f;
}

// forward and forward_packed: `packed` nullptr for x, y [T, B, ·], else their packed layout.
template <class T> void forward_in(const RnnConfig& c, const ForwardArgs<T>& a, const PackedRows* packed) {
  check_blas_dims(c);
  if constexpr (std::is_same<T, bf16>::value || std::is_same<T, fp16>::value) {
    Widened<T> w;
    forward_in<float>(c, widened_call(w, c, a, packed), packed);  // the float32 path, the batch sorted there
    w.finish();
  } else if (packed) {
    const LiveRows live(c.T, c.B, packed->lengths.data());
    const int64 TB = c.T * c.B, DH = c.D * c.h_size();
    Scratch<T> x(checked_mul(TB, c.I, "x"), "x at its [T, B] rows"), y(checked_mul(TB, DH, "y"), "y at its [T, B] rows");
    packed_copy(live, c.T, c.B, c.I, a.x, x.data(), false);
    ForwardArgs<T> s = a;
    s.x = x.data(), s.y = y.data(), s.lengths = packed->lengths.data();
    stack_forward(CpuBackend{}, c, s);
    packed_copy(live, c.T, c.B, DH, s.y, a.y, true);
  } else {
    const auto order = sorting_order(c, a.lengths);
    if (!order) return stack_forward(CpuBackend{}, c, a);
    // h's width HW: H, or P for the projected LSTM (h0, hn, y's columns); c and the masks are H wide
    const int64 LD = c.L * c.D, HW = c.h_size(), DH = c.D * HW;
    SortedCopy<T> x(a.x, c.T, c.B, c.I, *order, "x in the batch sorted by length"),
        h0(a.h0, LD, c.B, HW, *order, "h0 in the batch sorted by length"),
        c0(a.c0, LD, c.B, c.H, *order, "c0 in the batch sorted by length"),
        mask(a.mods.recurrent_mask, LD, c.B, c.H, *order, "the recurrent mask in the batch sorted by length"),
        zone_h(a.mods.zoneout_h, LD * c.T, c.B, c.H, *order, "the zoneout mask in the batch sorted by length"),
        zone_c(a.mods.zoneout_c, LD * c.T, c.B, c.H, *order, "the zoneout mask in the batch sorted by length");
    Scratch<T> y(checked_mul(c.T * c.B, DH, "y"), "y in the batch sorted by length"),
        hn(LD * c.B * HW, "hn in the batch sorted by length"), cn(a.cn ? LD * c.B * c.H : 0, "cn in the batch sorted by length");
    ForwardArgs<T> s = a;
    s.x = x.p, s.h0 = h0.p, s.c0 = c0.p, s.lengths = order->lengths.data();
    s.y = y.data(), s.hn = hn.data(), s.cn = a.cn ? cn.data() : nullptr;
    s.mods.recurrent_mask = mask.p, s.mods.zoneout_h = zone_h.p, s.mods.zoneout_c = zone_c.p;
    s.mods.seeded.batch_row = order->order.data();  // seeded masks are keyed on the caller's rows
    stack_forward(CpuBackend{}, c, s);
    permute_rows<T>(s.y, a.y, c.T, c.B, DH, order->order, false);
    permute_rows<T>(s.hn, a.hn, LD, c.B, HW, order->order, false);
    permute_rows<T>(s.cn, a.cn, LD, c.B, c.H, order->order, false);
  }
}

template <class T> void backward_in(const RnnConfig& c, const BackwardArgs<T>& a, const PackedRows* packed) {
  check_blas_dims(c);
  if constexpr (std::is_same<T, bf16>::value || std::is_same<T, fp16>::value) {
    Widened<T> w;
    backward_in<float>(c, widened_call(w, c, a, packed), packed);  // the float32 path, the batch sorted there
    w.finish();
  } else if (packed) {
    const LiveRows live(c.T, c.B, packed->lengths.data());
    const int64 TB = c.T * c.B, DH = c.D * c.h_size();
    Scratch<T> x(checked_mul(TB, c.I, "x"), "x at its [T, B] rows"), dy(checked_mul(TB, DH, "dy"), "dy at its [T, B] rows"),
        dx(checked_mul(TB, c.I, "dx"), "dx at its [T, B] rows");
    packed_copy(live, c.T, c.B, c.I, a.x, x.data(), false);
    packed_copy(live, c.T, c.B, DH, a.dy, dy.data(), false);
    BackwardArgs<T> s = a;
    s.x = x.data(), s.dy = dy.data(), s.dx = dx.data(), s.lengths = packed->lengths.data();
    stack_backward(CpuBackend{}, c, s);
    packed_copy(live, c.T, c.B, c.I, s.dx, a.dx, true);
  } else {
    const auto order = sorting_order(c, a.lengths);
    if (!order) return stack_backward(CpuBackend{}, c, a);
    // h's width HW: H, or P for the projected LSTM (h0, hn, y's columns); c and the masks are H wide
    const int64 LD = c.L * c.D, HW = c.h_size(), DH = c.D * HW;
    SortedCopy<T> x(a.x, c.T, c.B, c.I, *order, "x in the batch sorted by length"),
        h0(a.h0, LD, c.B, HW, *order, "h0 in the batch sorted by length"),
        c0(a.c0, LD, c.B, c.H, *order, "c0 in the batch sorted by length"),
        dy(a.dy, c.T, c.B, DH, *order, "dy in the batch sorted by length"),
        dhn(a.dhn, LD, c.B, HW, *order, "dhn in the batch sorted by length"),
        dcn(a.dcn, LD, c.B, c.H, *order, "dcn in the batch sorted by length"),
        mask(a.mods.recurrent_mask, LD, c.B, c.H, *order, "the recurrent mask in the batch sorted by length"),
        zone_h(a.mods.zoneout_h, LD * c.T, c.B, c.H, *order, "the zoneout mask in the batch sorted by length"),
        zone_c(a.mods.zoneout_c, LD * c.T, c.B, c.H, *order, "the zoneout mask in the batch sorted by length");
    Scratch<T> dx(checked_mul(c.T * c.B, c.I, "dx"), "dx in the batch sorted by length"),
        dh0(LD * c.B * HW, "dh0 in the batch sorted by length"),
        dc0(a.dc0 ? LD * c.B * c.H : 0, "dc0 in the batch sorted by length");
    BackwardArgs<T> s = a;
    s.x = x.p, s.h0 = h0.p, s.c0 = c0.p, s.dy = dy.p, s.dhn = dhn.p, s.dcn = dcn.p, s.lengths = order->lengths.data();
    s.dx = dx.data(), s.dh0 = dh0.data(), s.dc0 = a.dc0 ? dc0.data() : nullptr;
    s.mods.recurrent_mask = mask.p, s.mods.zoneout_h = zone_h.p, s.mods.zoneout_c = zone_c.p;
    s.mods.seeded.batch_row = order->order.data();  // seeded masks are keyed on the caller's rows
    stack_backward(CpuBackend{}, c, s);
    permute_rows<T>(s.dx, a.dx, c.T, c.B, c.I, order->order, false);
    permute_rows<T>(s.dh0, a.dh0, LD, c.B, HW, order->order, false);
    permute_rows<T>(s.dc0, a.dc0, LD, c.B, c.H, order->order, false);
  }
}

template <class T> void forward(const RnnConfig& c, const ForwardArgs<T>& a) { forward_in(c, a, nullptr); }
template <class T> void backward(const RnnConfig& c, const BackwardArgs<T>& a) { backward_in(c, a, nullptr); }
template <class T>
void forward_packed(const RnnConfig& c, const ForwardArgs<T>& a, const int64* batch_sizes, int64 rows) {
  if (a.lengths) throw ArgumentError("a packed call takes batch_sizes, not lengths");
  const PackedRows packed = packed_rows(c, batch_sizes, rows);
  forward_in(c, a, &packed);
}
template <class T>
void backward_packed(const RnnConfig& c, const BackwardArgs<T>& a, const int64* batch_sizes, int64 rows) {
  if (a.lengths) throw ArgumentError("a packed call takes batch_sizes, not lengths");
  const PackedRows packed = packed_rows(c, batch_sizes, rows);
  backward_in(c, a, &packed);
}

template void forward<float>(const RnnConfig&, const ForwardArgs<float>&);
template void forward<double>(const RnnConfig&, const ForwardArgs<double>&);
template void backward<float>(const RnnConfig&, const BackwardArgs<float>&);
template void backward<double>(const RnnConfig&, const BackwardArgs<double>&);
template void forward<bf16>(const RnnConfig&, const ForwardArgs<bf16>&);
template void forward<fp16>(const RnnConfig&, const ForwardArgs<fp16>&);
template void backward<bf16>(const RnnConfig&, const BackwardArgs<bf16>&);
template void backward<fp16>(const RnnConfig&, const BackwardArgs<fp16>&);
#define FASTRNN_PACKED(T)                                                                                  \
  template void forward_packed<T>(const RnnConfig&, const ForwardArgs<T>&, const int64*, int64);          \
  template void backward_packed<T>(const RnnConfig&, const BackwardArgs<T>&, const int64*, int64);
FASTRNN_PACKED(float)
FASTRNN_PACKED(double)
FASTRNN_PACKED(bf16)
FASTRNN_PACKED(fp16)
#undef FASTRNN_PACKED

}  // namespace fastrnn::cpu
