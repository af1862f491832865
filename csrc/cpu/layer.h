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
#include <cstring>
#include <vector>

#include "cpu/blas.h"
#include "rnn.h"

namespace fastrnn::cpu {

int num_threads();

// Run the pointwise loops in parallel only when there is enough work to pay for waking threads.
inline bool worth_parallel(int64 work) { return work >= 16384; }

template <class T> void fill_rows(T* out, int64 rows, int64 cols, const T* row /*[cols] or nullptr*/) {
  for (int64 r = 0; r < rows; ++r) {
    if (row) std::memcpy(out + r * cols, row, sizeof(T) * cols);
    else std::memset(out + r * cols, 0, sizeof(T) * cols);
  }
}

// db[c] = sum_r dG[r, c] over rows in a fixed order (deterministic), columns split across threads.
template <class T> void column_sums(const T* dG /*[rows, cols]*/, int64 rows, int64 cols, T* db /*[cols]*/) {
  constexpr int64 kBlock = 256;
  const int64 blocks = (cols + kBlock - 1) / kBlock;
#pragma omp parallel for num_threads(num_threads()) schedule(static) if (worth_parallel(rows * cols))
  for (int64 blk = 0; blk < blocks; ++blk) {
    const int64 c0 = blk * kBlock, c1 = std::min(cols, c0 + kBlock);
    for (int64 c = c0; c < c1; ++c) db[c] = T(0);
    for (int64 r = 0; r < rows; ++r) {
      const T* row = dG + r * cols;
#pragma omp simd
      for (int64 c = c0; c < c1; ++c) db[c] += row[c];
    }
  }
}

template <class Cell, class T>
void layer_forward(const RnnConfig& cfg, int64 in_size, const LayerWeights<T>& w,
                   const T* x,              // [T, B, in_size]
                   const T* h0,             // [B, H] or nullptr
                   const T* c0,             // [B, H] or nullptr
                   const int64* lengths,    // [B] or nullptr
                   bool reverse,
                   T* y, int64 ldy,         // [T, B, ldy]: this direction's H columns
                   T* hn, T* cn,            // [B, H]; cn only for cells with a cell state
                   T* saved,                // [T, B, S*H] or nullptr (inference)
                   T* cells) {              // [T, B, H] or nullptr (inference / no cell state)
  const int64 T_ = cfg.T, B = cfg.B, H = cfg.H, GH = Cell::kGates * H, S = Cell::kSaved;
  const int64 TB = T_ * B;

  std::vector<T> gi(TB * GH);  // [T, B, G*H] = x W_ih^T + b_ih
  fill_rows(gi.data(), TB, GH, w.b_ih);
  gemm(false, true, TB, GH, in_size, T(1), x, in_size, w.w_ih, in_size, T(w.b_ih ? 1 : 0), gi.data(), GH);

  std::vector<T> gh(B * GH);                          // [B, G*H] = h_prev W_hh^T + b_hh
  std::vector<T> hstate(2 * B * H, T(0)), cstate(Cell::kHasCell ? 2 * B * H : 0, T(0));
  T* h_cur = hstate.data();
  T* h_next = h_cur + B * H;
  T* c_cur = Cell::kHasCell ? cstate.data() : nullptr;
  T* c_next = Cell::kHasCell ? c_cur + B * H : nullptr;
  if (h0) std::memcpy(h_cur, h0, sizeof(T) * B * H);
  if (Cell::kHasCell && c0) std::memcpy(c_cur, c0, sizeof(T) * B * H);

  for (int64 s = 0; s < T_; ++s) {
    const int64 t = reverse ? T_ - 1 - s : s;
    fill_rows(gh.data(), B, GH, w.b_hh);
    gemm(false, true, B, GH, H, T(1), h_cur, H, w.w_hh, H, T(w.b_hh ? 1 : 0), gh.data(), GH);

#pragma omp parallel for num_threads(num_threads()) schedule(static) if (worth_parallel(B * GH))
    for (int64 b = 0; b < B; ++b) {
      const int64 tb = t * B + b;
      T* yrow = y + tb * ldy;
      if (!lengths || t < lengths[b]) {
        const ForwardRow<T> row{gi.data() + tb * GH, gh.data() + b * GH, h_cur + b * H,
                                Cell::kHasCell ? c_cur + b * H : nullptr, h_next + b * H,
                                Cell::kHasCell ? c_next + b * H : nullptr, saved ? saved + tb * S * H : nullptr};
#pragma omp simd
        for (int64 j = 0; j < H; ++j) Cell::forward(row, j, H);
        std::memcpy(yrow, h_next + b * H, sizeof(T) * H);
        if (cells) std::memcpy(cells + tb * H, c_next + b * H, sizeof(T) * H);
      } else {
        std::memcpy(h_next + b * H, h_cur + b * H, sizeof(T) * H);
        if (Cell::kHasCell) std::memcpy(c_next + b * H, c_cur + b * H, sizeof(T) * H);
        std::memset(yrow, 0, sizeof(T) * H);
      }
    }
    std::swap(h_cur, h_next);
    std::swap(c_cur, c_next);
  }
  std::memcpy(hn, h_cur, sizeof(T) * B * H);
  if (Cell::kHasCell) std::memcpy(cn, c_cur, sizeof(T) * B * H);
}

template <class Cell, class T>
void layer_backward(const RnnConfig& cfg, int64 in_size, const LayerWeights<T>& w,
                    const T* x,              // [T, B, in_size] the layer's input
                    const T* h0, const T* c0,  // [B, H] or nullptr
                    const int64* lengths,    // [B] or nullptr
                    bool reverse,
                    const T* y, int64 ldy,   // [T, B, ldy] this direction's outputs (saved)
                    const T* saved,          // [T, B, S*H]
                    const T* cells,          // [T, B, H] or nullptr
                    const T* dy,             // [T, B, ldy] same layout as y
                    const T* dhn, const T* dcn,  // [B, H] or nullptr
                    T* dx,                   // [T, B, in_size], accumulated into
                    T* dh0, T* dc0,          // [B, H]; dc0 only with a cell state
                    const LayerGrads<T>& g) {
  const int64 T_ = cfg.T, B = cfg.B, H = cfg.H, GH = Cell::kGates * H, S = Cell::kSaved;
  const int64 TB = T_ * B;

  std::vector<T> dgi(TB * GH), dgh_split(Cell::kSplitHiddenGrad ? TB * GH : 0);
  T* dgh = Cell::kSplitHiddenGrad ? dgh_split.data() : dgi.data();  // [T, B, G*H]
  std::vector<T> h_prev_all(TB * H);                                  // [T, B, H] for dW_hh
  std::vector<T> zeros(H, T(0));
  std::vector<T> dh_total(B * H);
  std::vector<T> dhstate(2 * B * H, T(0)), dcstate(Cell::kHasCell ? 2 * B * H : 0, T(0));
  T* dh_cur = dhstate.data();
  T* dh_next = dh_cur + B * H;
  T* dc_cur = Cell::kHasCell ? dcstate.data() : nullptr;
  T* dc_next = Cell::kHasCell ? dc_cur + B * H : nullptr;
  if (dhn) std::memcpy(dh_cur, dhn, sizeof(T) * B * H);
  if (Cell::kHasCell && dcn) std::memcpy(dc_cur, dcn, sizeof(T) * B * H);

  for (int64 s = 0; s < T_; ++s) {
    const int64 t = reverse ? s : T_ - 1 - s;
#pragma omp parallel for num_threads(num_threads()) schedule(static) if (worth_parallel(B * GH))
    for (int64 b = 0; b < B; ++b) {
      const int64 tb = t * B + b;
      const int64 len = lengths ? lengths[b] : T_;
      if (t < len) {
        // The previous step in processing order, or the initial state.
        const bool has_prev = reverse ? t + 1 < len : t > 0;
        const int64 tb_prev = (reverse ? t + 1 : t - 1) * B + b;
        const T* hp = has_prev ? y + tb_prev * ldy : (h0 ? h0 + b * H : zeros.data());
        const T* cp = !Cell::kHasCell ? nullptr : has_prev ? cells + tb_prev * H : (c0 ? c0 + b * H : zeros.data());
        std::memcpy(h_prev_all.data() + tb * H, hp, sizeof(T) * H);
        T* dht = dh_total.data() + b * H;
        const T* dyrow = dy + tb * ldy;
        const T* dhrow = dh_cur + b * H;
#pragma omp simd
        for (int64 j = 0; j < H; ++j) dht[j] = dhrow[j] + dyrow[j];
        const BackwardRow<T> row{saved + tb * S * H, hp, cp, y + tb * ldy,
                                 Cell::kHasCell ? cells + tb * H : nullptr, dht,
                                 Cell::kHasCell ? dc_cur + b * H : nullptr, dgi.data() + tb * GH, dgh + tb * GH,
                                 dh_next + b * H, Cell::kHasCell ? dc_next + b * H : nullptr};
#pragma omp simd
        for (int64 j = 0; j < H; ++j) Cell::backward(row, j, H);
      } else {
        std::memset(h_prev_all.data() + tb * H, 0, sizeof(T) * H);
        std::memset(dgi.data() + tb * GH, 0, sizeof(T) * GH);
        if (Cell::kSplitHiddenGrad) std::memset(dgh + tb * GH, 0, sizeof(T) * GH);
        std::memcpy(dh_next + b * H, dh_cur + b * H, sizeof(T) * H);
        if (Cell::kHasCell) std::memcpy(dc_next + b * H, dc_cur + b * H, sizeof(T) * H);
      }
    }
    // dL/dh_prev += dG_h W_hh
    gemm(false, false, B, H, GH, T(1), dgh + t * B * GH, GH, w.w_hh, H, T(1), dh_next, H);
    std::swap(dh_cur, dh_next);
    std::swap(dc_cur, dc_next);
  }
  std::memcpy(dh0, dh_cur, sizeof(T) * B * H);
  if (Cell::kHasCell) std::memcpy(dc0, dc_cur, sizeof(T) * B * H);

  // Weight gradients and dX: one GEMM each over all steps.
  gemm(true, false, GH, in_size, TB, T(1), dgi.data(), GH, x, in_size, T(0), g.dw_ih, in_size);
  gemm(true, false, GH, H, TB, T(1), dgh, GH, h_prev_all.data(), H, T(0), g.dw_hh, H);
  if (g.db_ih) column_sums(dgi.data(), TB, GH, g.db_ih);
  if (g.db_hh) {
    if (Cell::kSplitHiddenGrad) column_sums(dgh, TB, GH, g.db_hh);
    else if (g.db_ih) std::memcpy(g.db_hh, g.db_ih, sizeof(T) * GH);
    else column_sums(dgh, TB, GH, g.db_hh);
  }
  gemm(false, false, TB, in_size, GH, T(1), dgi.data(), GH, w.w_ih, in_size, T(1), dx, in_size);
}

}  // namespace fastrnn::cpu
