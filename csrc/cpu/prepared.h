// One step of one cell on weights prepared once and kept across calls: step-by-step generation
// (decoding), where every call is a matrix-vector product with W_ih and W_hh and nothing else.
//
// Preparing packs, for every block of PW hidden units (PW = one 64-byte vector of T), the rows of
// all G gates of those units side by side: P[block][k][g][PW]. A thread owns whole blocks, so it
// computes every gate of its units from x and h_prev in registers, applies the cell (cells.h) to
// them at once, and writes h'/c' for its units: a step is one pass over the weights, one parallel
// region and no barrier. W_ih and W_hh are packed separately because the GRU needs W_in x and
// W_hn h apart. The weights can be stored as float16 (half the bytes: the step is bound by reading
// them, so it is about twice as fast, at float16's ~5e-4 relative rounding of each weight); the
// products and the cell maths stay in T.
#pragma once

#include <algorithm>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cells.h"
#include "common.h"

namespace fastrnn::cpu {

int get_num_threads();  // csrc/cpu/stack.cpp

namespace prepared_detail {

template <class T> struct Vec {
  typedef T type __attribute__((vector_size(64), aligned(alignof(T))));
};
template <class T> constexpr int64 kWidth = 64 / sizeof(T);

// Loads PW weights stored as W and widens them to a vector of T.
template <class T, class W> __attribute__((always_inline)) inline typename Vec<T>::type load(const W* p) {
  using V = typename Vec<T>::type;
  if constexpr (std::is_same<T, W>::value) {
    return *reinterpret_cast<const V*>(p);
  } else {
    typedef W WV __attribute__((vector_size(kWidth<T> * sizeof(W)), aligned(alignof(W))));
    return __builtin_convertvector(*reinterpret_cast<const WV*>(p), V);
  }
}

// out[m][g][PW] = bias[g][PW] + sum_k A[m][k] P[k][g][PW] for MR rows of A.
template <class T, class W, int G, int MR>
__attribute__((always_inline)) inline void gates(int64 K, const T* A, int64 lda, const W* P, const T* bias, T* out) {
  using V = typename Vec<T>::type;
  constexpr int64 PW = kWidth<T>;
  // Two accumulators per (row, gate) for alternate k when there is a single row: more FMAs in
  // flight than the G dependency chains alone would give.
  constexpr int KS = MR == 1 ? 2 : 1;
  V acc[KS][MR][G];
  for (int s = 0; s < KS; ++s)
    for (int m = 0; m < MR; ++m)
      for (int g = 0; g < G; ++g) acc[s][m][g] = s == 0 ? *reinterpret_cast<const V*>(bias + g * PW) : V{};
  int64 k = 0;
  for (; k + KS <= K; k += KS)
    for (int s = 0; s < KS; ++s)
      for (int g = 0; g < G; ++g) {
        const V w = load<T, W>(P + ((k + s) * G + g) * PW);
        for (int m = 0; m < MR; ++m) acc[s][m][g] += A[m * lda + k + s] * w;
      }
  for (; k < K; ++k)
    for (int g = 0; g < G; ++g) {
      const V w = load<T, W>(P + (k * G + g) * PW);
      for (int m = 0; m < MR; ++m) acc[0][m][g] += A[m * lda + k] * w;
    }
  for (int m = 0; m < MR; ++m)
    for (int g = 0; g < G; ++g) {
      V sum = acc[0][m][g];
      for (int s = 1; s < KS; ++s) sum += acc[s][m][g];
      std::memcpy(out + (m * G + g) * PW, &sum, sizeof sum);
    }
}

// The step for the blocks [blk_begin, blk_end): rows in pairs, the last odd row alone.
template <class Cell, class T, class W>
__attribute__((always_inline)) inline void step_blocks(int64 blk_begin, int64 blk_end, int64 B, int64 I, int64 H,
                                                       const W* px, const W* ph, const T* bx, const T* bh,
                                                       const T* x, const T* h, const T* c, T* h_out, T* c_out) {
  constexpr int G = Cell::kGates;
  constexpr int64 PW = kWidth<T>;
  alignas(64) T gi[2 * G * PW], gh[2 * G * PW];
  for (int64 blk = blk_begin; blk < blk_end; ++blk) {
    const int64 j0 = blk * PW, nj = std::min(PW, H - j0);
    const W* pxb = px + blk * I * G * PW;
    const W* phb = ph + blk * H * G * PW;
    const T* bxb = bx + blk * G * PW;
    const T* bhb = bh + blk * G * PW;
    for (int64 b = 0; b < B;) {
      const int rows = B - b >= 2 ? 2 : 1;
      if (rows == 2) {
        gates<T, W, G, 2>(I, x + b * I, I, pxb, bxb, gi);
        gates<T, W, G, 2>(H, h + b * H, H, phb, bhb, gh);
      } else {
        gates<T, W, G, 1>(I, x + b * I, I, pxb, bxb, gi);
        gates<T, W, G, 1>(H, h + b * H, H, phb, bhb, gh);
      }
      for (int m = 0; m < rows; ++m, ++b) {
        // The cell sees this block as a layer of PW units: gate g of unit j at g*PW + j.
        const ForwardRow<T> row{gi + m * G * PW, gh + m * G * PW, h + b * H + j0,
                                Cell::kHasCell ? c + b * H + j0 : nullptr, h_out + b * H + j0,
                                Cell::kHasCell ? c_out + b * H + j0 : nullptr, nullptr};
#pragma omp simd
        for (int64 j = 0; j < nj; ++j) Cell::forward(row, j, PW);
      }
    }
  }
}

template <class Cell, class T, class W>
__attribute__((target("avx512f"))) void step_avx512(int64 b0, int64 b1, int64 B, int64 I, int64 H, const W* px,
                                                    const W* ph, const T* bx, const T* bh, const T* x, const T* h,
                                                    const T* c, T* ho, T* co) {
  step_blocks<Cell, T, W>(b0, b1, B, I, H, px, ph, bx, bh, x, h, c, ho, co);
}
template <class Cell, class T, class W>
__attribute__((target("avx2,fma,f16c"))) void step_avx2(int64 b0, int64 b1, int64 B, int64 I, int64 H, const W* px,
                                                        const W* ph, const T* bx, const T* bh, const T* x,
                                                        const T* h, const T* c, T* ho, T* co) {
  step_blocks<Cell, T, W>(b0, b1, B, I, H, px, ph, bx, bh, x, h, c, ho, co);
}
template <class Cell, class T, class W>
void step_baseline(int64 b0, int64 b1, int64 B, int64 I, int64 H, const W* px, const W* ph, const T* bx,
                   const T* bh, const T* x, const T* h, const T* c, T* ho, T* co) {
  step_blocks<Cell, T, W>(b0, b1, B, I, H, px, ph, bx, bh, x, h, c, ho, co);
}

}  // namespace prepared_detail

// A cell's weights prepared for repeated single steps. T: the compute (and state) type; W: how the
// weights are stored (T, or _Float16 for float).
template <class T, class W> class PreparedCell {
 public:
  PreparedCell(CellKind cell, int64 I, int64 H, const T* w_ih, const T* w_hh, const T* b_ih, const T* b_hh)
      : cell_(cell), I_(I), H_(H) {
    G_ = dispatch_cell(cell, [](auto c) { return int64(decltype(c)::kGates); });
    const int64 PW = prepared_detail::kWidth<T>;
    blocks_ = (H + PW - 1) / PW;
    const int64 per_k = checked_mul(checked_mul(blocks_, G_, "prepared weights"), PW, "prepared weights");
    px_.assign(checked_mul(per_k, I, "prepared weights"), W(0));
    ph_.assign(checked_mul(per_k, H, "prepared weights"), W(0));
    bx_.assign(per_k, T(0));
    bh_.assign(per_k, T(0));
    pack(w_ih, I, px_);
    pack(w_hh, H, ph_);
    pack_bias(b_ih, bx_);
    pack_bias(b_hh, bh_);
  }

  int64 input_size() const { return I_; }
  int64 hidden_size() const { return H_; }
  CellKind cell() const { return cell_; }

  // h_out[B, H] (and c_out for the LSTM) from x[B, I], h[B, H], c[B, H]. Outputs must not alias inputs.
  void step(int64 B, const T* x, const T* h, const T* c, T* h_out, T* c_out) const {
    dispatch_cell(cell_, [&](auto cell) {
      using Cell = decltype(cell);
      static const int isa = detect();
      auto run = [&](int64 b0, int64 b1) {
        using namespace prepared_detail;
        const W *px = px_.data(), *ph = ph_.data();
        const T *bx = bx_.data(), *bh = bh_.data();
        if (isa == 2) step_avx512<Cell, T, W>(b0, b1, B, I_, H_, px, ph, bx, bh, x, h, c, h_out, c_out);
        else if (isa == 1) step_avx2<Cell, T, W>(b0, b1, B, I_, H_, px, ph, bx, bh, x, h, c, h_out, c_out);
        else step_baseline<Cell, T, W>(b0, b1, B, I_, H_, px, ph, bx, bh, x, h, c, h_out, c_out);
      };
      const int threads = static_cast<int>(std::min<int64>(get_num_threads(), blocks_));
      if (threads <= 1) return run(0, blocks_);
#pragma omp parallel num_threads(threads)
      {
#ifdef _OPENMP
        const int64 tid = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        const int64 tid = 0, nt = 1;
#endif
        run(blocks_ * tid / nt, blocks_ * (tid + 1) / nt);
      }
    });
  }

 private:
  static int detect() {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) return 1;
    return 0;
  }
  // w [G*H, K] (row g*H + j) -> P[block][k][g][PW], zero past H.
  void pack(const T* w, int64 K, std::vector<W>& P) const {
    const int64 PW = prepared_detail::kWidth<T>;
    for (int64 blk = 0; blk < blocks_; ++blk)
      for (int64 k = 0; k < K; ++k)
        for (int64 g = 0; g < G_; ++g)
          for (int64 i = 0, j = blk * PW; i < PW && j < H_; ++i, ++j)
            P[((blk * K + k) * G_ + g) * PW + i] = W(w[(g * H_ + j) * K + k]);
  }
  void pack_bias(const T* b, std::vector<T>& P) const {
    if (!b) return;
    const int64 PW = prepared_detail::kWidth<T>;
    for (int64 blk = 0; blk < blocks_; ++blk)
      for (int64 g = 0; g < G_; ++g)
        for (int64 i = 0, j = blk * PW; i < PW && j < H_; ++i, ++j) P[(blk * G_ + g) * PW + i] = b[g * H_ + j];
  }

  CellKind cell_;
  int64 I_, H_, G_, blocks_;
  std::vector<W> px_, ph_;  // packed W_ih, W_hh
  std::vector<T> bx_, bh_;  // packed b_ih, b_hh (zeros without bias)
};

}  // namespace fastrnn::cpu
