// The layer-normalised LSTM and GRU (LstmLayerNorm, GruLayerNorm: csrc/cells/layer_norm.h) on the
// GPU: one layer x direction, the CUDA twin of the CPU loop's RowReduction phases (same specs, same
// reserve layout). Included at the end of layer.cuh, which dispatches layer_forward/layer_backward
// of a layer-normalised cell here.
//
// A RowReduction needs every unit of a batch row before any unit's next phase, so here a block owns
// whole rows: per step, one GEMM gives the recurrent product of all rows (h_{t-1} W_hh^T, no bias:
// the cell adds the biases after the norm), then one kernel with one block per batch row runs the
// step's phases in order, a __syncthreads() around each RowReduction. Each thread takes a contiguous
// slice of the row's units for the reductions (the spec's row_moments / row_sums over it) and every
// kNormThreads-th unit for the pointwise phases; thread 0 combines the threads' partials in thread
// order (Chan's merge of the moments; plain sums in backward), so the statistics, and with them every
// output, do not depend on scheduling: no atomics. Backward per step (in reverse): one GEMM adds
// dG_h(previous step) W_hh to dL/dh, then one kernel per row runs the phases' backward in reverse;
// after the loop the weight gradients are GEMMs and the gains' and biases' gradients are column sums
// of the rows' shares ([T, B, kNormRows*H], BackwardRow::dunit_params), in row order.
//
// Storage float32/float64 only (A == T: rows point straight into the device buffers); the stack
// refuses float16/bfloat16 with layer norm, and the training modifiers are refused here (fastrnn.ops
// runs layer norm with modifiers as composed torch ops on every device, as on the CPU).
#pragma once

#include <type_traits>

namespace fastrnn::cuda {

constexpr int kNormThreads = 256;  // threads of a row block
constexpr int kNormQuantities = 4;  // the most quantities one RowReduction reduces (spec: reduced / reduced_grad)

// Run f(P{}) for each phase P of a step, in order / in reverse (the loops' for_each_phase, on the device).
template <class F, class... P> __device__ void run_phases(Phases<P...>, F& f) { (f(P{}), ...); }
template <class F, class... P> __device__ void run_phases_reversed(Phases<P...>, F& f) {
  int order = 0;
  ((f(P{}), order) = ... = 0);  // a right fold of `=`: its right operands run first (C++17)
  (void)order;
}

// How many quantities RowReduction P reduces (forward, backward), as constants: the spec's
// functions are host constexpr, which device code may not call, but may read the constants of.
template <class Cell, class P> constexpr int kReducedOf = Cell::reduced(P{});
template <class Cell, class P> constexpr int kReducedGradOf = Cell::reduced_grad(P{});

// This thread's contiguous slice [begin, end) of a row's H units (the reductions' partials).
struct UnitSlice {
  int64 begin, end;
  __device__ explicit UnitSlice(int64 H) {
    const int64 per = (H + int64(blockDim.x) - 1) / int64(blockDim.x);
    begin = int64(threadIdx.x) * per < H ? int64(threadIdx.x) * per : H;
    end = begin + per < H ? begin + per : H;
  }
};

template <class T> struct NormForwardStep {
  int64 B, H, t;
  const T* gi;           // [T, B, G*H] W_ih x (no bias)
  const T* gh;           // [B, G*H] W_hh h_{t-1} of this step (no bias)
  const T* h_cur;        // [B, H] state before the step
  const T* c_cur;        // [B, H] (LSTM)
  T* h_next;             // [B, H] state after the step
  T* c_next;             // [B, H] (LSTM)
  const int64* lengths;  // [B] or nullptr
  T* y;                  // [T, B, ldy]: this direction's H columns
  int64 ldy;
  T* saved;              // [T, B, S*H] or nullptr (inference)
  T* cells;              // [T, B, H] or nullptr
  T* between;            // [B, kBetween*H] values between the step's pointwise phases
  NormParams<T> norm;
};

// One step of one batch row (block blockIdx.x): the spec's phases in order.
template <class Cell, class T>
__global__ void __launch_bounds__(kNormThreads) forward_norm_kernel(const NormForwardStep<T> p) {
  static_assert(std::is_same_v<Acc<T>, T>, "layer norm on CUDA: float32/float64 storage");
  constexpr int G = Cell::kGates, S = Cell::kSaved, NB = SpecTraits<Cell>::kBetween;
  constexpr bool kCarry = SpecTraits<Cell>::kCarriesState;
  __shared__ Moments part[kNormThreads][kNormQuantities];
  __shared__ double stats[2 * kNormQuantities];  // (mean, 1/std) per quantity of the last RowReduction
  const int64 b = blockIdx.x, H = p.H, GH = G * H, tb = p.t * p.B + b;
  const int tid = threadIdx.x, nt = blockDim.x;
  if (p.lengths && p.t >= p.lengths[b]) {  // dead (uniform over the block): keep the state, output zero
    for (int64 j = tid; j < H; j += nt) {
      p.h_next[b * H + j] = p.h_cur[b * H + j];
      if (kCarry) p.c_next[b * H + j] = p.c_cur[b * H + j];
      p.y[tb * p.ldy + j] = T(0);
    }
    return;
  }
  const NormParams<T> norm = p.norm;
  ForwardRow<T> row{p.gi + tb * GH, p.gh + b * GH, p.h_cur + b * H, kCarry ? p.c_cur + b * H : nullptr,
                    p.h_next + b * H, kCarry ? p.c_next + b * H : nullptr, p.saved ? p.saved + tb * S * H : nullptr};
  if constexpr (NB > 0) row.between = p.between + b * NB * H;
  row.norm = &norm;
  row.stats = stats;
  const auto phase = [&](auto ph) {
    using P = decltype(ph);
    if constexpr (P::kKind == PhaseKind::RowReduction) {
      constexpr int K = kReducedOf<Cell, P>;
      static_assert(K <= kNormQuantities, "");
      __syncthreads();  // the earlier phases' values of every unit
      const UnitSlice own(H);
      Moments m[K];
      for (int k = 0; k < K; ++k) m[k] = Moments{0, 0, 0};
      if (own.begin < own.end) Cell::row_moments(row, own.begin, own.end, H, H, P{}, m);
      for (int k = 0; k < K; ++k) part[tid][k] = m[k];
      __syncthreads();
      if (tid == 0)
        for (int k = 0; k < K; ++k) {
          Moments all{0, 0, 0};
          for (int i = 0; i < nt; ++i) all = merge_moments(all, part[i][k]);
          stats[2 * k] = all.mean;
          stats[2 * k + 1] = 1.0 / sqrt(all.m2 / all.n + kLayerNormEps);
        }
      __syncthreads();
    } else if constexpr (P::kKind == PhaseKind::Pointwise) {
      for (int64 j = tid; j < H; j += nt) {
        if constexpr (P::kIndex == 0) Cell::forward(row, j, H, H);
        else Cell::forward(row, j, H, H, P{});
      }
    }
    // the RecurrentProduct ran before the kernel (the step's GEMM)
  };
  run_phases(typename Cell::Step{}, phase);
  for (int64 j = tid; j < H; j += nt) {  // the same units as the last pointwise phase: its own values
    p.y[tb * p.ldy + j] = p.h_next[b * H + j];
    if (kCarry && p.cells) p.cells[tb * H + j] = p.c_next[b * H + j];
  }
}

template <class T> struct NormBackwardStep {
  int64 T_, B, H, t;
  bool reverse;
  const int64* lengths;    // [B] or nullptr
  const T *h0, *c0;        // [B, H] or nullptr
  const T* zeros;          // [H] the initial state where there is none
  const T* y;              // [T, B, ldy]
  int64 ldy;
  const T* saved;          // [T, B, S*H]
  const T* cells;          // [T, B, H] (LSTM)
  const T* dy;             // [T, B, ldy]
  const T *dh_cur, *dc_cur;  // [B, H] dL/dh_t (product share included), dL/dc_t from the later steps
  T *dh_next, *dc_next;    // [B, H] what bypasses W_hh into step t-1, dL/dc_{t-1}
  T* dh_total;             // [B, H] scratch: dL/dh_t with the output's share
  T *dgi, *dgh;            // [T, B, G*H] the un-normalised products' gradients
  T* h_prev;               // [T, B, H] h_{t-1} per step, for dW_hh
  T* dunit;                // [T, B, kNormRows*H] each row's share of the gains' and biases' gradients
  T* between;              // [B, kBetweenGrad*H]
  NormParams<T> norm;
};

// One step's backward of one batch row (block blockIdx.x): the spec's phases' backward in reverse.
template <class Cell, class T>
__global__ void __launch_bounds__(kNormThreads) backward_norm_kernel(const NormBackwardStep<T> p) {
  static_assert(std::is_same_v<Acc<T>, T>, "layer norm on CUDA: float32/float64 storage");
  constexpr int G = Cell::kGates, S = Cell::kSaved, NB = SpecTraits<Cell>::kBetweenGrad, R = SpecTraits<Cell>::kNormRows;
  constexpr bool kCarry = SpecTraits<Cell>::kCarriesState;
  __shared__ double part[kNormThreads][kNormQuantities];
  __shared__ double total[kNormQuantities];  // the last RowReduction's row sums
  const int64 b = blockIdx.x, B = p.B, H = p.H, GH = G * H, t = p.t, tb = t * B + b;
  const int tid = threadIdx.x, nt = blockDim.x;
  const int64 len = p.lengths ? p.lengths[b] : p.T_;
  if (t >= len) {  // dead: pass dh/dc through, no gradient of any parameter
    for (int64 j = tid; j < H; j += nt) {
      for (int g = 0; g < G; ++g) p.dgi[tb * GH + g * H + j] = p.dgh[tb * GH + g * H + j] = T(0);
      for (int r = 0; r < R; ++r) p.dunit[(tb * R + r) * H + j] = T(0);
      p.h_prev[tb * H + j] = T(0);
      p.dh_next[b * H + j] = p.dh_cur[b * H + j];
      if (kCarry) p.dc_next[b * H + j] = p.dc_cur[b * H + j];
    }
    return;
  }
  // The state this step started from: the previous step in processing order, or the initial state.
  const bool has_prev = p.reverse ? t + 1 < len : t > 0;
  const int64 tb_prev = (p.reverse ? t + 1 : t - 1) * B + b;
  const T* hp = has_prev ? p.y + tb_prev * p.ldy : (p.h0 ? p.h0 + b * H : p.zeros);
  const T* cp = !kCarry ? nullptr : has_prev ? p.cells + tb_prev * H : (p.c0 ? p.c0 + b * H : p.zeros);
  for (int64 j = tid; j < H; j += nt) {
    p.h_prev[tb * H + j] = hp[j];
    p.dh_total[b * H + j] = p.dh_cur[b * H + j] + p.dy[tb * p.ldy + j];
  }
  const NormParams<T> norm = p.norm;
  BackwardRow<T> row{p.saved + tb * S * H, hp, cp, p.y + tb * p.ldy, kCarry ? p.cells + tb * H : nullptr,
                     p.dh_total + b * H, kCarry ? p.dc_cur + b * H : nullptr, p.dgi + tb * GH, p.dgh + tb * GH,
                     p.dh_next + b * H, kCarry ? p.dc_next + b * H : nullptr, nullptr, p.dunit + tb * R * H};
  row.norm = &norm;
  row.stats = total;
  if constexpr (NB > 0) row.between = p.between + b * NB * H;
  const auto phase = [&](auto ph) {
    using P = decltype(ph);
    if constexpr (P::kKind == PhaseKind::RowReduction) {
      constexpr int K = kReducedGradOf<Cell, P>;
      static_assert(K <= kNormQuantities, "");
      __syncthreads();  // the later phases' gradients of every unit
      const UnitSlice own(H);
      double s[K];
      for (int k = 0; k < K; ++k) s[k] = 0;
      if (own.begin < own.end) Cell::row_sums(row, own.begin, own.end, H, P{}, s);
      for (int k = 0; k < K; ++k) part[tid][k] = s[k];
      __syncthreads();
      if (tid == 0)
        for (int k = 0; k < K; ++k) {
          double sum = 0;
          for (int i = 0; i < nt; ++i) sum += part[i][k];
          total[k] = sum;
        }
      __syncthreads();
      for (int64 j = tid; j < H; j += nt) Cell::backward(row, j, H, P{});
    } else if constexpr (P::kKind == PhaseKind::Pointwise) {
      for (int64 j = tid; j < H; j += nt) {
        if constexpr (P::kIndex == 0) Cell::backward(row, j, H);
        else Cell::backward(row, j, H, P{});
      }
    }
    // the RecurrentProduct's backward is the next step's GEMM (dG_h W_hh)
  };
  run_phases_reversed(typename Cell::Step{}, phase);
}

template <class Cell, class T>
void layer_norm_forward(cudaStream_t stream, const RnnConfig& cfg, const LayerForwardArgs<T>& a) {
  static_assert(layer_norm_step_phases(typename Cell::Step{}), "the row kernels run layer norm's phase lists");
  if (a.h_mask || a.zone_h || a.zone_c)
    throw ArgumentError("layer norm on CUDA runs without the kernels' training modifiers (recurrent dropout, "
                        "zoneout, grad_clip)");
  constexpr bool kCarry = SpecTraits<Cell>::kCarriesState;
  constexpr int64 G = Cell::kGates, NB = SpecTraits<Cell>::kBetween;
  const int64 T_ = cfg.T, B = cfg.B, H = cfg.H, GH = G * H, TB = T_ * B, BH = B * H;
  const auto& w = a.w;
  Scratch<T> gi(TB * GH, stream);                  // [T, B, G*H]
  Scratch<T> gh(B * GH, stream);                   // [B, G*H]
  Scratch<T> hstate(2 * BH, stream);               // ping-pong [2, B, H]
  Scratch<T> cstate(kCarry ? 2 * BH : 0, stream);
  Scratch<T> between(B * NB * H, stream);          // [B, kBetween*H]
  gemm<T>(stream, false, true, TB, GH, a.in_size, T(1), a.x, a.in_size, w.w_ih, a.in_size, T(0), gi.get(), GH);
  convert(stream, BH, a.h0, hstate.get());
  if (kCarry) convert(stream, BH, a.c0, cstate.get());
  T *h_cur = hstate.get(), *h_next = h_cur + BH;
  T *c_cur = cstate.get(), *c_next = kCarry ? c_cur + BH : nullptr;
  const NormParams<T> norm{w.ln_ih, w.ln_hh, w.b_ih, w.b_hh, w.ln_c_w, w.ln_c_b};
  for (int64 s = 0; s < T_; ++s) {
    const int64 t = a.reverse ? T_ - 1 - s : s;
    gemm<T>(stream, false, true, B, GH, H, T(1), h_cur, H, w.w_hh, H, T(0), gh.get(), GH);
    const NormForwardStep<T> p{B,     H,          t,       gi.get(), gh.get(), h_cur,   c_cur,         h_next, c_next,
                               a.lengths, a.y,    a.ldy,   a.saved,  a.cells,  between.get(), norm};
    launch(forward_norm_kernel<Cell, T>, static_cast<unsigned>(B), kNormThreads, stream, p);
    std::swap(h_cur, h_next);
    std::swap(c_cur, c_next);
  }
  convert(stream, BH, static_cast<const T*>(h_cur), a.hn);
  if (kCarry) convert(stream, BH, static_cast<const T*>(c_cur), a.cn);
}

template <class Cell, class T>
void layer_norm_backward(cudaStream_t stream, const RnnConfig& cfg, const LayerBackwardArgs<T>& a) {
  static_assert(layer_norm_step_phases(typename Cell::Step{}), "the row kernels run layer norm's phase lists");
  if (a.h_mask || a.zone_h || a.zone_c || a.grad_clip != 0)
    throw ArgumentError("layer norm on CUDA runs without the kernels' training modifiers (recurrent dropout, "
                        "zoneout, grad_clip)");
  constexpr bool kCarry = SpecTraits<Cell>::kCarriesState;
  constexpr int64 G = Cell::kGates, NB = SpecTraits<Cell>::kBetweenGrad, R = SpecTraits<Cell>::kNormRows;
  using Row = typename Cell::NormRow;
  const int64 T_ = cfg.T, B = cfg.B, H = cfg.H, GH = G * H, TB = T_ * B, BH = B * H;
  const auto& w = a.w;
  const auto& g = a.g;
  Scratch<T> dgi(TB * GH, stream), dgh(TB * GH, stream);  // [T, B, G*H]
  Scratch<T> h_prev(TB * H, stream);                      // [T, B, H]
  Scratch<T> dunit(TB * R * H, stream);                   // [T, B, kNormRows*H]
  Scratch<T> dhstate(2 * BH, stream), dcstate(kCarry ? 2 * BH : 0, stream), dh_total(BH, stream);
  Scratch<T> between(B * NB * H, stream), zeros(H, stream);
  convert(stream, H, static_cast<const T*>(nullptr), zeros.get());
  convert(stream, BH, a.dhn, dhstate.get());
  if (kCarry) convert(stream, BH, a.dcn, dcstate.get());
  T *dh_cur = dhstate.get(), *dh_next = dh_cur + BH;
  T *dc_cur = dcstate.get(), *dc_next = kCarry ? dc_cur + BH : nullptr;
  const NormParams<T> norm{w.ln_ih, w.ln_hh, w.b_ih, w.b_hh, w.ln_c_w, w.ln_c_b};
  int64 t_prev = -1;
  for (int64 s = 0; s <= T_; ++s) {  // s == T_: only finish dh0 from the last step processed
    // dL/dh_t += dG_h(t_prev) W_hh (dead rows' dG_h are zero)
    if (t_prev >= 0) gemm<T>(stream, false, false, B, H, GH, T(1), dgh.get() + t_prev * B * GH, GH, w.w_hh, H, T(1), dh_cur, H);
    if (s == T_) break;
    const int64 t = a.reverse ? s : T_ - 1 - s;
    const NormBackwardStep<T> p{T_,         B,           H,           t,        a.reverse,     a.lengths,
                                a.h0,       a.c0,        zeros.get(), a.y,      a.ldy,         a.saved,
                                a.cells,    a.dy,        dh_cur,      dc_cur,   dh_next,       dc_next,
                                dh_total.get(), dgi.get(), dgh.get(), h_prev.get(), dunit.get(), between.get(),
                                norm};
    launch(backward_norm_kernel<Cell, T>, static_cast<unsigned>(B), kNormThreads, stream, p);
    std::swap(dh_cur, dh_next);
    std::swap(dc_cur, dc_next);
    t_prev = t;
  }
  convert(stream, BH, static_cast<const T*>(dh_cur), a.dh0);
  if (kCarry) convert(stream, BH, static_cast<const T*>(dc_cur), a.dc0);

  // One GEMM each over all T*B rows; dead rows of dG and h_prev are zero.
  layer_input_grads(stream, cfg, a, GH, dgi.get());  // dW_ih, dX
  gemm<T>(stream, true, false, GH, H, TB, T(1), dgh.get(), GH, h_prev.get(), H, T(0), g.dw_hh, H);
  // the gains and the biases (they come after the norm): column sums of the rows' shares, in row order
  const struct {
    int64 row, n;
    T* dst;
  } parts[] = {{Row::g_ih, GH, g.dln_ih}, {Row::g_hh, GH, g.dln_hh}, {Row::b_ih, GH, g.db_ih},
               {Row::b_hh, GH, g.db_hh},  {Row::g_c, H, g.dln_c_w},  {Row::b_c, H, g.dln_c_b}};
  for (const auto& part : parts)
    if (part.dst && part.row < R) column_sums<T>(stream, dunit.get() + part.row * H, TB, part.n, R * H, part.dst);
}

}  // namespace fastrnn::cuda
