// The persistent small-batch forward of one layer x direction: ONE cooperative launch runs every
// step of the sequence, instead of one fused kernel launch per step (layer.cuh). At small batch a
// step is a few microseconds of work, so the per-step path pays its launch and its re-reading of
// W_hh from L2/HBM every step; here each block loads its slice of W_hh into shared memory once and
// keeps it for all T steps, and the blocks exchange h_{t-1} through global memory (L2) with one
// grid-wide barrier per step (cooperative_groups::this_grid().sync(), which needs every block
// co-resident: cudaLaunchCooperativeKernel, with the occupancy checked first).
//
// Layout: block k owns hidden units [k*units, min(H, (k+1)*units)) and all G gate rows of them
// (R = G*units rows of W_hh), stored k-major in shared memory, w_s[k*R + r] with r = g*units + u
// (row g*H + j0 + u of W_hh), so that consecutive threads read consecutive words. Per step:
//   1. stage h_{t-1} [B, H] (the state type A) from global memory into shared memory (every block
//      needs every unit of it; loads through L2, __ldcg, since other blocks wrote it);
//   2. the product: output (b, r) = sum_k w_s[k][r] * h[b][k], its K range split into k_slices
//      contiguous slices, one thread per (slice, group of kPersistentRows rows b, r) with a register
//      accumulator per row (one load of w for several FMAs), each slice's sum in k order into shared
//      memory;
//   3. the cell: one thread per (b, unit) adds the slices' sums in slice order (+ b_hh), gathers gi
//      and applies the cell spec exactly as forward_step_kernel does (same ForwardRow, same stores:
//      y, the reserve's saved gates and c, hn/cn at the last step); h_t goes to the other half of a
//      [2, B, H] ping-pong buffer, c_t stays in a [B, H] buffer only its own thread touches;
//   4. grid.sync(): every block's h_t is written before any block stages it.
// Everything else is the per-step path's: the input projection is the same GEMM before the loop,
// dead rows (t >= len[b]) keep their state and output zeros, the reserve has the same layout (so the
// per-step backward runs after a persistent forward), no atomics (deterministic). With one K slice
// the product's sum runs in the per-step kernel's order (k = 0, 1, ...), so outputs are bitwise the
// per-step path's where the compiler contracts the same way (the emulator: always); with several
// slices the sum is regrouped, within the float tolerance of the per-step path.
//
// Which path runs (persistent_plan): FASTRNN_CUDA_PERSISTENT = 0 (or unset: the default until it is
// measured on a GPU) per-step; 1 persistent wherever it can run; auto persistent when also
// B <= kPersistentMaxBatch (the intended heuristic: small batches, where one step is too little work
// to fill the GPU from one launch, and W_hh fits in the SMs' shared memory). It can run for the base
// cells (RNN tanh/relu, LSTM, GRU) without the training modifiers, in every storage type, when the
// block's shared memory (W_hh's slice in the storage type, h_{t-1} and the slices' sums in A) fits the
// device's per-block limit and the grid (one block per SM by default: units = ceil(H / SMs)) fits
// co-resident; otherwise the per-step path runs. FASTRNN_CUDA_PERSISTENT_UNITS=n sets the units per
// block (tuning and tests). Backward always runs the per-step kernels.
#pragma once

#include <cstdlib>
#include <string>
#include <type_traits>

#if !defined(FASTRNN_CUDA_EMULATION)
#include <cooperative_groups.h>
#endif

#include "rnn_cuda.h"

namespace fastrnn::cuda {

constexpr int kPersistentThreads = 256;
constexpr int64 kPersistentMaxBatch = 32;  // FASTRNN_CUDA_PERSISTENT=auto: persistent up to this batch
constexpr int64 kPersistentMinSlice = 16;  // the shortest K slice of the product worth a thread
constexpr int kPersistentRows = 4;         // batch rows a thread of the product computes at once

// The cells the persistent kernel runs: the base cells' fused step, without per-unit parameters.
template <class Cell> constexpr bool kPersistentCell =
    std::is_same_v<Cell, RnnCell<false>> || std::is_same_v<Cell, RnnCell<true>> || std::is_same_v<Cell, LstmCell> ||
    std::is_same_v<Cell, GruCell>;

enum class PersistentMode { Off, On, Auto };

// FASTRNN_CUDA_PERSISTENT, read at every call (so a process can switch it).
inline PersistentMode persistent_mode() {
  const char* v = std::getenv("FASTRNN_CUDA_PERSISTENT");
  const std::string s = v ? v : "";
  if (s.empty() || s == "0") return PersistentMode::Off;
  if (s == "1") return PersistentMode::On;
  if (s == "auto") return PersistentMode::Auto;
  throw ArgumentError("FASTRNN_CUDA_PERSISTENT must be 0, 1 or auto, got '" + s + "'");
}

// FASTRNN_CUDA_PERSISTENT_UNITS: hidden units per block, or 0 (unset: spread H over the SMs).
inline int persistent_units_override() {
  const char* v = std::getenv("FASTRNN_CUDA_PERSISTENT_UNITS");
  if (!v || !*v) return 0;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  if (*end != '\0' || n < 1 || n > (1 << 20))
    throw ArgumentError(std::string("FASTRNN_CUDA_PERSISTENT_UNITS must be a positive integer, got '") + v + "'");
  return int(n);
}

// Byte offsets of a block's dynamic shared memory: h_s [B, H] and the slices' sums part [KS, B, R]
// (type A) first, then W_hh's slice w_s [H, R] (type T, whose alignment is at most A's).
struct PersistentSmem {
  int64 h_off, part_off, w_off, bytes;
};
template <class T>
__host__ __device__ inline PersistentSmem persistent_smem_layout(int64 B, int64 H, int64 R, int64 k_slices) {
  using A = Acc<T>;
  const auto round16 = [](int64 n) { return (n + 15) / 16 * 16; };
  PersistentSmem m{};
  m.h_off = 0;
  m.part_off = round16(B * H * int64(sizeof(A)));
  m.w_off = m.part_off + round16(k_slices * B * R * int64(sizeof(A)));
  m.bytes = m.w_off + round16(H * R * int64(sizeof(T)));
  return m;
}

#if defined(FASTRNN_CUDA_EMULATION)
inline unsigned char* dynamic_shared_memory() { return emu::dynamic_shared; }
#else
__device__ __forceinline__ unsigned char* dynamic_shared_memory() {
  extern __shared__ __align__(16) unsigned char fastrnn_dynamic_smem[];
  return fastrnn_dynamic_smem;
}
#endif

template <class T> struct PersistentForward {
  using A = Acc<T>;
  int64 T_, B, H;
  int64 units;            // hidden units per block
  int64 k_slices;         // slices of the product's K range (H)
  bool reverse;
  const T* w_hh;          // [G*H, H]
  const T* b_hh;          // [G*H] or nullptr
  const T* gi;            // [T, B, G*H] x W_ih^T + b_ih
  A* h_state;             // [2, B, H] ping-pong; [0] holds h0 on entry
  A* c_state;             // [B, H] c0 on entry (cells with a cell state), each element one thread's
  const int64* lengths;   // [B] or nullptr
  T* y;                   // [T, B, ldy]: this direction's H columns
  int64 ldy;
  T* hn;                  // [B, H]
  T* cn;                  // [B, H] (cells with a cell state)
  T* saved;               // [T, B, S*H] or nullptr (inference)
  T* cells;               // [T, B, H] or nullptr
};

template <class Cell, class T>
__global__ void __launch_bounds__(kPersistentThreads) persistent_forward_kernel(const PersistentForward<T> p) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  constexpr bool kCarry = SpecTraits<Cell>::kCarriesState;
  using A = Acc<T>;
  const int64 B = p.B, H = p.H, GH = G * H, units = p.units, R = G * units, KS = p.k_slices;
  const int64 j0 = int64(blockIdx.x) * units;
  const PersistentSmem lay = persistent_smem_layout<T>(B, H, R, KS);
  unsigned char* smem = dynamic_shared_memory();
  A* h_s = reinterpret_cast<A*>(smem + lay.h_off);       // [B, H] h_{t-1}
  A* part = reinterpret_cast<A*>(smem + lay.part_off);   // [KS, B, R] the slices' sums
  T* w_s = reinterpret_cast<T*>(smem + lay.w_off);       // [H, R] W_hh's rows of this block, k-major
  const int tid = threadIdx.x;
  constexpr int NT = kPersistentThreads;
  // W_hh's slice, once (read along k: coalesced); rows of units past H are zero. The first barrier
  // below orders these stores before the product reads them.
  for (int64 i = tid; i < R * H; i += NT) {
    const int64 r = i / H, k = i % H, g = r / units, j = j0 + r % units;
    w_s[k * R + r] = j < H ? p.w_hh[(g * H + j) * H + k] : T(0);
  }
  const int64 row_groups = (B + kPersistentRows - 1) / kPersistentRows;
  const int64 slice = (H + KS - 1) / KS, items = KS * row_groups * R, pairs = B * units;
  for (int64 s = 0; s < p.T_; ++s) {
    const int64 t = p.reverse ? p.T_ - 1 - s : s;
    const A* h_cur = p.h_state + (s % 2) * B * H;
    A* h_next = p.h_state + ((s + 1) % 2) * B * H;
    for (int64 i = tid; i < B * H; i += NT) h_s[i] = __ldcg(h_cur + i);
    __syncthreads();
    for (int64 i = tid; i < items; i += NT) {
      // kPersistentRows rows b0.. of gate row r over one K slice: one load of W for each row's FMA,
      // independent accumulators; each row's sum still runs in k order
      const int64 r = i % R, b0 = (i / R) % row_groups * kPersistentRows, ks = i / (R * row_groups);
      const int64 k_end = ks * slice + slice < H ? ks * slice + slice : H;
      const int64 nrows = B - b0 < kPersistentRows ? B - b0 : kPersistentRows;
      const A* hb = h_s + b0 * H;
      A acc[kPersistentRows] = {};
      for (int64 k = ks * slice; k < k_end; ++k) {
        const A w = A(w_s[k * R + r]);
#pragma unroll
        for (int q = 0; q < kPersistentRows; ++q)
          if (q < nrows) acc[q] += hb[q * H + k] * w;
      }
#pragma unroll
      for (int q = 0; q < kPersistentRows; ++q)
        if (q < nrows) part[(ks * B + b0 + q) * R + r] = acc[q];
    }
    __syncthreads();
    for (int64 i = tid; i < pairs; i += NT) {
      const int64 b = i / units, u = i % units, j = j0 + u;
      if (j >= H) continue;
      const int64 bj = b * H + j, tb = t * B + b;
      const A hp = h_s[bj];
      const A cp = kCarry ? p.c_state[bj] : A(0);
      const bool last = s + 1 == p.T_;
      T* yv = p.y + tb * p.ldy + j;
      if (p.lengths && t >= p.lengths[b]) {  // dead: keep the state, output zero
        h_next[bj] = hp;
        *yv = T(0);
        if (last) {
          p.hn[bj] = T(hp);
          if (kCarry) p.cn[bj] = T(cp);
        }
        continue;
      }
      A gi[G], gh[G], saved[S > 0 ? S : 1];
#pragma unroll
      for (int g = 0; g < G; ++g) {
        gi[g] = A(p.gi[tb * GH + g * H + j]);
        A sum = part[b * R + g * units + u];
        for (int64 ks = 1; ks < KS; ++ks) sum += part[(ks * B + b) * R + g * units + u];
        gh[g] = sum + (p.b_hh ? A(p.b_hh[g * H + j]) : A(0));
      }
      A h, c = A(0);
      if (p.saved) Cell::forward(ForwardRow<A>{gi, gh, &hp, &cp, &h, &c, saved}, 0, 1, 1);
      else Cell::forward(ForwardRow<A>{gi, gh, &hp, &cp, &h, &c, nullptr}, 0, 1, 1);
      h_next[bj] = h;
      *yv = T(h);
      if (kCarry) {
        p.c_state[bj] = c;
        if (p.cells) p.cells[tb * H + j] = T(c);
      }
      if (p.saved)
#pragma unroll
        for (int k = 0; k < S; ++k) p.saved[tb * S * H + k * H + j] = T(saved[k]);
      if (last) {
        p.hn[bj] = T(h);
        if (kCarry) p.cn[bj] = T(c);
      }
    }
    if (s + 1 < p.T_) cooperative_groups::this_grid().sync();  // uniform over the grid
  }
}

// Whether (and how) a layer of `cfg` runs on the persistent kernel now; `modified`: the call has
// training modifiers (they run on the per-step path).
template <class Cell, class T> PersistentPlan layer_persistent_plan(const RnnConfig& cfg, bool modified) {
  PersistentPlan plan;
  plan.threads = kPersistentThreads;
  const PersistentMode mode = persistent_mode();
  const int units_override = persistent_units_override();
  if (mode == PersistentMode::Off) {
    plan.reason = "FASTRNN_CUDA_PERSISTENT is 0 or unset (the per-step path is the default)";
    return plan;
  }
  if constexpr (!kPersistentCell<Cell>) {
    plan.reason = "the persistent kernel runs the base cells (RNN tanh/relu, LSTM, GRU) only";
    return plan;
  } else {
    if (modified) {
      plan.reason = "the training modifiers run on the per-step path";
      return plan;
    }
    if (mode == PersistentMode::Auto && cfg.B > kPersistentMaxBatch) {
      plan.reason = "FASTRNN_CUDA_PERSISTENT=auto: B = " + std::to_string(cfg.B) + " > " +
                    std::to_string(kPersistentMaxBatch);
      return plan;
    }
    int device = 0, coop = 0, sms = 0, smem_limit = 0;
    FASTRNN_CUDA_CHECK(cudaGetDevice(&device));
    FASTRNN_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
    FASTRNN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    FASTRNN_CUDA_CHECK(cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    plan.sms = sms;
    plan.smem_limit = smem_limit;
    if (!coop) {
      plan.reason = "the device does not support cooperative launches";
      return plan;
    }
    constexpr int64 G = Cell::kGates;
    const int64 H = cfg.H, B = cfg.B;
    const int64 units = units_override ? std::min<int64>(units_override, H) : ceil_div(H, int64(std::max(sms, 1)));
    const int64 blocks = ceil_div(H, units), R = G * units;
    const int64 row_groups = ceil_div(B, kPersistentRows);
    const int64 k_slices =
        std::max<int64>(1, std::min(kPersistentThreads / (R * row_groups), ceil_div(H, kPersistentMinSlice)));
    plan.units = int(units);
    plan.blocks = int(blocks);
    plan.k_slices = int(k_slices);
    plan.smem_bytes = persistent_smem_layout<T>(B, H, R, k_slices).bytes;
    if (plan.smem_bytes > smem_limit) {
      plan.reason = "W_hh's slice of " + std::to_string(units) + " units, h_{t-1} and the sums need " +
                    std::to_string(plan.smem_bytes) + " bytes of shared memory per block, the device allows " +
                    std::to_string(smem_limit) + ": W_hh does not fit on chip";
      return plan;
    }
    const auto kernel = persistent_forward_kernel<Cell, T>;
    FASTRNN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(plan.smem_bytes)));
    int per_sm = 0;
    FASTRNN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kPersistentThreads,
                                                                     size_t(plan.smem_bytes)));
    plan.blocks_per_sm = per_sm;
    if (int64(per_sm) * sms < blocks) {
      plan.reason = "the grid of " + std::to_string(blocks) + " blocks does not fit co-resident (" +
                    std::to_string(per_sm) + " per SM x " + std::to_string(sms) + " SMs)";
      return plan;
    }
    plan.runs = true;
    return plan;
  }
}

// The persistent forward of one layer and direction when its plan says it runs (returns true), else
// nothing (false: the caller runs the per-step path).
template <class Cell, class T>
bool persistent_layer_forward(cudaStream_t stream, const RnnConfig& cfg, const LayerForwardArgs<T>& a) {
  if constexpr (!kPersistentCell<Cell>) {
    return false;
  } else {
    const bool modified = a.h_mask || a.zone_h || a.zone_c;
    const PersistentPlan plan = layer_persistent_plan<Cell, T>(cfg, modified);
    if (!plan.runs) return false;
    using A = Acc<T>;
    constexpr bool kCarry = SpecTraits<Cell>::kCarriesState;
    constexpr int64 G = Cell::kGates;
    const int64 T_ = cfg.T, B = cfg.B, H = cfg.H, GH = G * H, TB = T_ * B, BH = B * H;
    Scratch<T> gi(TB * GH, stream);                 // [T, B, G*H]
    Scratch<A> hstate(2 * BH, stream);              // ping-pong [2, B, H]
    Scratch<A> cstate(kCarry ? BH : 0, stream);     // [B, H]
    gemm<T>(stream, false, true, TB, GH, a.in_size, A(1), a.x, a.in_size, a.w.w_ih, a.in_size, A(0), gi.get(), GH,
            a.w.b_ih);
    convert(stream, BH, a.h0, hstate.get());
    if (kCarry) convert(stream, BH, a.c0, cstate.get());
    const PersistentForward<T> p{T_,       B,           H,       plan.units, plan.k_slices, a.reverse,
                                 a.w.w_hh, a.w.b_hh,    gi.get(), hstate.get(), cstate.get(), a.lengths,
                                 a.y,      a.ldy,       a.hn,    a.cn,       a.saved,       a.cells};
    launch_cooperative(persistent_forward_kernel<Cell, T>, dim3(unsigned(plan.blocks)), dim3(kPersistentThreads),
                       size_t(plan.smem_bytes), stream, p);
    return true;
  }
}

}  // namespace fastrnn::cuda
