// One step of one cell on weights prepared once and kept across calls: step-by-step generation
// (decoding), where every call is a matrix-vector product with W_ih and W_hh and nothing else.
//
// Preparing packs, for every block of PW hidden units (PW = one 64-byte vector of T), the rows of
// all G gates of those units side by side: P[block][k][g][PW]. A thread owns whole blocks, so it
// computes every gate of its units from x and h_prev in registers, applies the cell (its spec, csrc/cells/) to
// them at once, and writes h'/c' for its units: a step is one pass over the weights, one parallel
// region and no barrier. W_ih and W_hh are packed separately because the GRU needs W_in x and
// W_hn h apart. The weights can be stored as float16 (half the bytes: the step is bound by reading
// them, so it is about twice as fast, at float16's ~5e-4 relative rounding of each weight); the
// products and the cell maths stay in T.
#pragma once

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include <immintrin.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cells/all.h"
#include "common.h"
#include "cpu/isa.h"
#include "rnn.h"

namespace fastrnn::cpu {

namespace prepared_detail {

// What a variant's cell reads besides the gates: the block-packed peepholes and cell_clip.
template <class T> struct Extras {
  const T* w_ch;  // [block][U][PW]
  int64 U;
  double cell_clip;
};

template <class T> constexpr int64 kWidth = 64 / sizeof(T);  // units per block (one 64-byte panel)

// The row reductions of a step of several phases: at most this many, of this many quantities each.
constexpr int kPreparedReductions = 2, kPreparedReduced = 4;

// What step_phases (a cell of several phases) reads: the packed weights and the call's scratch.
// Block-packed arrays hold block blk's units j0 = blk*PW .. j0+PW-1, zero past H.
template <class T, class W> struct StepArgs {
  int64 B, I, H, blocks;
  const W* px;   // [block][I][G][PW] W_ih
  const W* ph;   // [block][H][split][PW] W_hh's gate blocks [0, split) (the product on h_{t-1})
  const W* ph2;  // [block][H][G-split][PW] W_hh's gate blocks [split, G) (the product on r*h_{t-1})
  const T *bx, *bh;  // [block][G][PW] b_ih, b_hh (zeros without biases)
  bool has_bias;
  const T* zeros;                     // [block][G][PW] zeros: where the products start under layer norm
  const T *g_ih, *g_hh, *g_c, *b_c;   // the layer norm's vectors [block][G][PW], [block][PW] (or null)
  const T *x, *h, *c;                 // [B, I], [B, H], [B, H]
  T *h_out, *c_out;                   // [B, H]
  Extras<T> extras;
  // scratch of the call
  T *gi, *gh;     // [block][B][G][PW] the products' gates
  T* between;     // [block][B][kBetween][PW] values an earlier Pointwise phase leaves for a later one
  T* reset_h;     // [B, H] r*h_{t-1}, the second product's operand
  Moments* part;  // [kPreparedReductions][B][blocks][kPreparedReduced] the row reductions' block moments
};

// A vector loaded from memory that is only T-aligned. V arrives here as a template argument, which
// drops the vector type's aligned(alignof(T)) attribute (it is not part of the type), so a plain
// *reinterpret_cast<const V*> would let the compiler emit an aligned load (vmovaps) that faults on
// the packed weights (std::vector's storage is only 16-byte aligned); memcpy is an unaligned load.
template <class V, class T> __attribute__((always_inline)) inline V load_unaligned(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The block-step functions, named <isa>::step_blocks<Cell, T, W>(blk_begin, blk_end, B, I, H, px,
// ph, bx, bh, x, h, c, h_out, c_out), one copy per instruction set.
#pragma GCC push_options
#pragma GCC target("avx512f")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // _mm512_cvtph_ps's own "undefined" source
namespace avx512 {
constexpr int kVB = 64, kMR = 4, kAcc = 12;
template <class V, class W> inline V load_weights(const W* p) {
  if constexpr (std::is_same<W, _Float16>::value) return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  else return load_unaligned<V>(p);
}
#include "cpu/prepared_kernel.inc"
}  // namespace avx512
#pragma GCC diagnostic pop
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
constexpr int kVB = 32, kMR = 1, kAcc = 12;  // 16 ymm registers: one row, up to 12 accumulators
template <class V, class W> inline V load_weights(const W* p) {
  if constexpr (std::is_same<W, _Float16>::value) return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  else return load_unaligned<V>(p);
}
#include "cpu/prepared_kernel.inc"
}  // namespace avx2
#pragma GCC pop_options

namespace baseline {
constexpr int kVB = 16, kMR = 1, kAcc = 8;
template <class V, class W> inline V load_weights(const W* p) {
  if constexpr (std::is_same<W, _Float16>::value) {
    V v;
    for (int i = 0; i < int(sizeof(V) / sizeof(float)); ++i) v[i] = static_cast<float>(p[i]);
    return v;
  } else {
    return load_unaligned<V>(p);
  }
}
#include "cpu/prepared_kernel.inc"
}  // namespace baseline

}  // namespace prepared_detail

// A cell's weights prepared for repeated single steps. T: the compute (and state) type; W: how the
// weights are stored (T, or _Float16 for float).
// The options: the LSTM variants' peepholes w_ch [U, H] (packed per block, [block][U][PW]) and
// cell_clip run in the one-pass step; the cells of several phases (the reset-before GRU, whose n
// product needs r*h_{t-1} of every unit; layer norm, whose row statistics need every unit before any
// block's cell) run step_phases: each phase over all blocks, a barrier where the spec has one.
// norm: the layer norm's vectors (g_ih, g_hh [G*H], g_c, b_c [H]; its bias fields unused: b_ih and
// b_hh are the biases), required with layer_norm.
// The projected LSTM (options.proj_size = P > 0): h is P wide (w_hh [G*H, P]) and w_hr [P, H] is
// required; the one-pass step writes m = o*tanh(c_t) [B, H] for its unit blocks, a barrier, then each
// thread computes its blocks of P units of h_t = m W_hr^T (W_hr packed like a gate block of P units).
template <class T, class W> class PreparedCell {
 public:
  PreparedCell(CellKind cell, int64 I, int64 H, const T* w_ih, const T* w_hh, const T* b_ih, const T* b_hh,
               const CellOptions& options = {}, const T* w_ch = nullptr, const NormParams<T>* norm = nullptr,
               const T* w_hr = nullptr)
      : cell_(cell), options_(options), I_(I), H_(H), P_(options.proj_size), HW_(P_ > 0 ? P_ : H) {
    G_ = dispatch_cell(cell, options, [](auto c) { return int64(decltype(c)::kGates); });
    U_ = dispatch_cell(cell, options, [](auto c) { return int64(SpecTraits<decltype(c)>::kUnitRows); });
    split_ = dispatch_cell(cell, options, [](auto c) { return int64(SpecTraits<decltype(c)>::kResetHSplit); });
    const bool layer_norm = dispatch_cell(cell, options, [](auto c) { return SpecTraits<decltype(c)>::kLayerNorm; });
    const bool carries = dispatch_cell(cell, options, [](auto c) { return SpecTraits<decltype(c)>::kCarriesState; });
    if (U_ > 0 && !w_ch) throw ArgumentError("w_ch is required (peephole)");
    if (P_ > 0 && !w_hr) throw ArgumentError("w_hr is required (proj_size)");
    if (layer_norm && (!norm || !norm->g_ih || !norm->g_hh || (carries && (!norm->g_c || !norm->b_c))))
      throw ArgumentError("the layer norm's vectors are required (layer_norm)");
    const int64 PW = prepared_detail::kWidth<T>;
    blocks_ = (H + PW - 1) / PW;
    has_bias_ = b_ih != nullptr;
    const int64 per_gate = checked_mul(blocks_, PW, "prepared weights");
    const int64 per_k = checked_mul(per_gate, G_, "prepared weights");
    px_.assign(checked_mul(per_k, I, "prepared weights"), W(0));
    ph_.assign(checked_mul(checked_mul(per_gate, split_, "prepared weights"), HW_, "prepared weights"), W(0));
    ph2_.assign(checked_mul(checked_mul(per_gate, G_ - split_, "prepared weights"), HW_, "prepared weights"), W(0));
    bx_.assign(per_k, T(0));
    bh_.assign(per_k, T(0));
    pack(w_ih, I, px_, 0, G_);
    pack(w_hh, HW_, ph_, 0, split_);
    pack(w_hh, HW_, ph2_, split_, G_);
    pack_bias(b_ih, bx_);
    pack_bias(b_hh, bh_);
    if (layer_norm) {
      zeros_.assign(per_k, T(0));
      g_ih_.assign(per_k, T(0));
      g_hh_.assign(per_k, T(0));
      pack_bias(norm->g_ih, g_ih_);
      pack_bias(norm->g_hh, g_hh_);
      if (carries) {
        g_c_.assign(per_gate, T(0));
        b_c_.assign(per_gate, T(0));
        pack_units(norm->g_c, g_c_);
        pack_units(norm->b_c, b_c_);
      }
    }
    pch_.assign(checked_mul(checked_mul(blocks_, U_, "prepared weights"), PW, "prepared weights"), T(0));
    for (int64 blk = 0; blk < blocks_; ++blk)  // w_ch [U, H] -> [block][U][PW], zero past H
      for (int64 u = 0; u < U_; ++u)
        for (int64 i = 0, j = blk * PW; i < PW && j < H_; ++i, ++j) pch_[(blk * U_ + u) * PW + i] = w_ch[u * H_ + j];
    if (P_ > 0) {  // w_hr [P, H] -> [P block][H][PW], zero past P
      pblocks_ = (P_ + PW - 1) / PW;
      pr_.assign(checked_mul(checked_mul(pblocks_, H_, "prepared weights"), PW, "prepared weights"), W(0));
      pzeros_.assign(PW, T(0));
      for (int64 blk = 0; blk < pblocks_; ++blk)
        for (int64 k = 0; k < H_; ++k)
          for (int64 i = 0, j = blk * PW; i < PW && j < P_; ++i, ++j) pr_[(blk * H_ + k) * PW + i] = W(w_hr[j * H_ + k]);
    }
  }

  int64 input_size() const { return I_; }
  int64 hidden_size() const { return H_; }
  int64 h_size() const { return HW_; }  // the width of h: P for the projected LSTM, else H
  CellKind cell() const { return cell_; }

  // h_out[B, HW] (and c_out[B, H] for the LSTM) from x[B, I], h[B, HW], c[B, H] (HW = h_size()).
  // Outputs must not alias inputs.
  void step(int64 B, const T* x, const T* h, const T* c, T* h_out, T* c_out) const {
    dispatch_cell(cell_, options_, [&](auto cell) { step_as<decltype(cell)>(B, x, h, c, h_out, c_out); });
  }

 private:
  template <class Cell> void step_as(int64 B, const T* x, const T* h, const T* c, T* h_out, T* c_out) const {
    using Traits = SpecTraits<Cell>;
    // a cell of one pointwise phase and no row reduction: every gate of a block in registers, one pass
    constexpr bool kOnePass = Traits::kLastPointwise == 0 && !Traits::kLayerNorm;
    const prepared_detail::Extras<T> extras{pch_.data(), U_, options_.cell_clip};
    std::vector<T> gi, gh, between, reset_h, m, projected;
    if constexpr (Traits::kProjected) {  // m = o*tanh(c_t) [B, H], the P blocks' panels [pblocks][B][PW]
      m.resize(B * H_);
      projected.resize(pblocks_ * B * prepared_detail::kWidth<T>);
    }
    T* cell_h = Traits::kProjected ? m.data() : h_out;  // where the cell writes its h (m when projected)
    std::vector<Moments> part;
    prepared_detail::StepArgs<T, W> args{};
    if constexpr (!kOnePass) {
      using namespace prepared_detail;
      const int64 PW = kWidth<T>, gates = blocks_ * B * G_ * PW;
      gi.resize(gates);
      gh.resize(gates);
      between.resize(blocks_ * B * std::max(Traits::kBetween, 1) * PW);
      if (Traits::kResetH) reset_h.resize(B * H_);
      if (Traits::kLayerNorm) part.resize(kPreparedReductions * B * blocks_ * kPreparedReduced);
      args = {B, I_, H_, blocks_, px_.data(), ph_.data(), ph2_.data(), bx_.data(), bh_.data(), has_bias_,
              zeros_.data(), g_ih_.data(), g_hh_.data(), g_c_.empty() ? nullptr : g_c_.data(),
              b_c_.empty() ? nullptr : b_c_.data(), x, h, c, h_out, c_out, extras, gi.data(), gh.data(),
              between.data(), reset_h.data(), part.data()};
    }
    {
      auto run = [&](int64 b0, int64 b1) {
        using namespace prepared_detail;
        const W *px = px_.data(), *ph = ph_.data();
        const T *bx = bx_.data(), *bh = bh_.data();
        const Isa isa = cpu_isa();
        if constexpr (kOnePass) {
          if (isa == Isa::Avx512)
            avx512::step_blocks<Cell, T, W>(b0, b1, B, I_, H_, HW_, px, ph, bx, bh, x, h, c, cell_h, c_out, extras);
          else if (isa == Isa::Avx2)
            avx2::step_blocks<Cell, T, W>(b0, b1, B, I_, H_, HW_, px, ph, bx, bh, x, h, c, cell_h, c_out, extras);
          else baseline::step_blocks<Cell, T, W>(b0, b1, B, I_, H_, HW_, px, ph, bx, bh, x, h, c, cell_h, c_out, extras);
        } else {
          if (isa == Isa::Avx512) avx512::step_phases<Cell, T, W>(b0, b1, args);
          else if (isa == Isa::Avx2) avx2::step_phases<Cell, T, W>(b0, b1, args);
          else baseline::step_phases<Cell, T, W>(b0, b1, args);
        }
      };
      // the P-unit blocks [p0, p1) of the projection h_out = m W_hr^T
      auto project = [&](int64 p0, int64 p1) {
        using namespace prepared_detail;
        const Isa isa = cpu_isa();
        if (isa == Isa::Avx512)
          avx512::project_blocks<T, W>(p0, p1, B, H_, P_, pr_.data(), pzeros_.data(), m.data(), projected.data(), h_out);
        else if (isa == Isa::Avx2)
          avx2::project_blocks<T, W>(p0, p1, B, H_, P_, pr_.data(), pzeros_.data(), m.data(), projected.data(), h_out);
        else baseline::project_blocks<T, W>(p0, p1, B, H_, P_, pr_.data(), pzeros_.data(), m.data(), projected.data(), h_out);
      };
      // thread tid of nt: its share of the unit blocks, and with a projection its share of the P blocks
      auto run_thread = [&](int64 tid, int64 nt) {
        run(blocks_ * tid / nt, blocks_ * (tid + 1) / nt);
        if constexpr (Traits::kProjected) {
#pragma omp barrier  // each of h_t's P units reads all H units of m
          project(pblocks_ * tid / nt, pblocks_ * (tid + 1) / nt);
        }
      };
      const double flops = 2.0 * double(B) * (double(G_) * double(H_) * double(I_ + HW_) + double(P_) * double(H_));
      const int64 by_work = min_step_flops() ? int64(std::max(1.0, std::min(1e9, flops / double(min_step_flops()))))
                                             : blocks_;
      const int threads = static_cast<int>(std::min<int64>({get_num_threads(), blocks_, by_work}));
      if (threads <= 1) return run_thread(0, 1);
#pragma omp parallel num_threads(threads)
      {
#ifdef _OPENMP
        const int64 tid = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        const int64 tid = 0, nt = 1;
#endif
        run_thread(tid, nt);
      }
    }
  }

  // w [G*H, K]'s gate blocks [g0, g1) (row g*H + j) -> P[block][k][g - g0][PW], zero past H.
  void pack(const T* w, int64 K, std::vector<W>& P, int64 g0, int64 g1) const {
    const int64 PW = prepared_detail::kWidth<T>, n = g1 - g0;
    for (int64 blk = 0; blk < blocks_; ++blk)
      for (int64 k = 0; k < K; ++k)
        for (int64 g = g0; g < g1; ++g)
          for (int64 i = 0, j = blk * PW; i < PW && j < H_; ++i, ++j)
            P[((blk * K + k) * n + g - g0) * PW + i] = W(w[(g * H_ + j) * K + k]);
  }
  // v [H] -> P[block][PW], zero past H.
  void pack_units(const T* v, std::vector<T>& P) const {
    const int64 PW = prepared_detail::kWidth<T>;
    for (int64 blk = 0; blk < blocks_; ++blk)
      for (int64 i = 0, j = blk * PW; i < PW && j < H_; ++i, ++j) P[blk * PW + i] = v[j];
  }
  void pack_bias(const T* b, std::vector<T>& P) const {
    if (!b) return;
    const int64 PW = prepared_detail::kWidth<T>;
    for (int64 blk = 0; blk < blocks_; ++blk)
      for (int64 g = 0; g < G_; ++g)
        for (int64 i = 0, j = blk * PW; i < PW && j < H_; ++i, ++j) P[(blk * G_ + g) * PW + i] = b[g * H_ + j];
  }

  CellKind cell_;
  CellOptions options_;
  int64 I_, H_, P_, HW_, G_, U_, split_, blocks_, pblocks_ = 0;  // P_: proj_size (0: none); HW_: h's width
  bool has_bias_ = false;
  std::vector<W> px_, ph_, ph2_;  // packed W_ih, W_hh's gate blocks [0, split_) and [split_, G) (empty for most)
  std::vector<T> bx_, bh_;        // packed b_ih, b_hh (zeros without bias)
  std::vector<T> pch_;            // packed w_ch [block][U][PW] (peepholes; empty without)
  std::vector<T> zeros_, g_ih_, g_hh_, g_c_, b_c_;  // layer norm: zeros and its packed vectors (empty without)
  std::vector<W> pr_;                               // packed w_hr [P block][H][PW] (the projection; empty without)
  std::vector<T> pzeros_;                           // [PW] zeros: the projection's (absent) bias
};

// L cells of one kind stacked (unidirectional): one step of the whole stack in one call, layer l
// reading the new h of layer l-1 (layer 0 reads x) and stepping like PreparedCell. States are in
// torch.nn's layout [L, B, H] (the projected LSTM: h [L, B, P], layers above the first read P inputs).
template <class T, class W> class PreparedStack {
 public:
  struct Layer {
    const T *w_ih, *w_hh, *b_ih, *b_hh;  // [G*H, I_l], [G*H, HW], [G*H] or null; I_0 = I, I_l = HW (H, or P)
    const T* w_ch = nullptr;             // [U, H] peepholes (options.peephole)
    NormParams<T> norm{};                // the layer norm's vectors (options.layer_norm), as PreparedCell's
    const T* w_hr = nullptr;             // [P, H] the projection (options.proj_size)
  };

  PreparedStack(CellKind cell, int64 I, int64 H, const std::vector<Layer>& weights, const CellOptions& options = {})
      : H_(H), HW_(options.proj_size > 0 ? options.proj_size : H) {
    layers_.reserve(weights.size());
    for (size_t l = 0; l < weights.size(); ++l) {
      const Layer& w = weights[l];
      layers_.emplace_back(cell, l ? HW_ : I, H, w.w_ih, w.w_hh, w.b_ih, w.b_hh, options, w.w_ch, &w.norm, w.w_hr);
    }
  }

  int64 num_layers() const { return static_cast<int64>(layers_.size()); }

  // h_out [L, B, HW], c_out [L, B, H] from x [B, I], h [L, B, HW], c [L, B, H] (HW: h's width, P
  // projected, else H); the output y is h_out[L-1]. Outputs must not alias the inputs.
  void step(int64 B, const T* x, const T* h, const T* c, T* h_out, T* c_out) const {
    const int64 BH = B * H_, BHW = B * HW_;
    for (int64 l = 0; l < num_layers(); ++l)
      layers_[l].step(B, l ? h_out + (l - 1) * BHW : x, h + l * BHW, c ? c + l * BH : nullptr, h_out + l * BHW,
                      c_out ? c_out + l * BH : nullptr);
  }

 private:
  int64 H_, HW_;
  std::vector<PreparedCell<T, W>> layers_;
};

}  // namespace fastrnn::cpu
