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

template <class T> void fill_rows(T* out, int64 ld, int64 rows, int64 cols, const T* row /*[cols] or nullptr*/) {
  for (int64 r = 0; r < rows; ++r) {
    if (row) std::memcpy(out + r * ld, row, sizeof(T) * cols);
    else std::memset(out + r * ld, 0, sizeof(T) * cols);
  }
}

// db[c] = sum_r dG[r, c] for the columns in `cols`, rows in a fixed order (deterministic).
template <class T> void column_sums(const T* dG /*[rows, ld]*/, int64 rows, int64 ld, Range cols, T* db /*[ld]*/) {
  for (int64 c = cols.begin; c < cols.end; ++c) db[c] = T(0);
  for (int64 r = 0; r < rows; ++r) {
    const T* row = dG + r * ld;
#pragma omp simd
    for (int64 c = cols.begin; c < cols.end; ++c) db[c] += row[c];
  }
}

// Threading: ONE OpenMP team per layer call and no other thread pool (the BLAS runs single-threaded
// inside each thread). Each thread owns a fixed slice of the hidden units (all gates of them) for the
// whole sequence, so its rows of W_hh stay in its own cache, the pointwise cell needs nothing from
// other threads, and a step costs one barrier.
constexpr int64 kUnitAlign = 16;
constexpr int64 kPackMinRows = 4;  // pack W_hh when T*B >= this

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
                   T* cells,                // [T, B, H] or nullptr (inference / no cell state)
                   int threads) {
  constexpr int64 G = Cell::kGates, S = Cell::kSaved;
  const int64 T_ = cfg.T, B = cfg.B, H = cfg.H, GH = G * H, TB = T_ * B;

  std::vector<T> gi(TB * GH);  // [T, B, G*H] = x W_ih^T + b_ih
  std::vector<T> gh(B * GH);   // [B, G*H] = h_prev W_hh^T + b_hh (each thread its units' columns)
  std::vector<T> hstate(2 * B * H, T(0)), cstate(Cell::kHasCell ? 2 * B * H : 0, T(0));
  if (h0) std::memcpy(hstate.data(), h0, sizeof(T) * B * H);
  if (Cell::kHasCell && c0) std::memcpy(cstate.data(), c0, sizeof(T) * B * H);
  // Each thread's rows of W_hh, packed once per gate ([G][packed H x nj]); allocated here because
  // nothing may throw inside the parallel region.
  // Packing costs one pass over W_hh; it pays back once the steps reuse it a few times. A single
  // step of a tiny batch (decoding) reads W_hh straight through the BLAS instead.
  const bool pack = T_ * B >= kPackMinRows;
  const int64 gate_pack = pack ? packed_size<T>(H, max_share(H, threads, kUnitAlign)) : 0;
  std::vector<T> w_pack_all(threads * G * gate_pack);

#pragma omp parallel num_threads(threads)
  {
    const int tid = thread_index(), nt = team_size();
    if (TB >= 4 * nt) {  // each thread a block of steps
      const Range rows = split(TB, nt, tid, 1);
      fill_rows(gi.data() + rows.begin * GH, GH, rows.size(), GH, w.b_ih);
      gemm(false, true, rows.size(), GH, in_size, T(1), x + rows.begin * in_size, in_size, w.w_ih, in_size,
           T(w.b_ih ? 1 : 0), gi.data() + rows.begin * GH, GH);
    } else {  // few rows (decoding): each thread a block of gate rows of W_ih
      const Range cols = split(GH, nt, tid, kUnitAlign);
      fill_rows(gi.data() + cols.begin, GH, TB, cols.size(), w.b_ih ? w.b_ih + cols.begin : nullptr);
      gemm(false, true, TB, cols.size(), in_size, T(1), x, in_size, w.w_ih + cols.begin * in_size, in_size,
           T(w.b_ih ? 1 : 0), gi.data() + cols.begin, GH);
    }
#pragma omp barrier

    const Range units = split(H, nt, tid, kUnitAlign);
    const int64 j0 = units.begin, nj = units.size();
    T* w_pack = w_pack_all.data() + tid * G * gate_pack;
    for (int64 g = 0; g < G && pack; ++g)
      pack_panels<T>(H, nj, [&](int64 k, int64 n) { return w.w_hh[(g * H + j0 + n) * H + k]; }, w_pack + g * gate_pack);
    T* h_cur = hstate.data();
    T* h_next = h_cur + B * H;
    T* c_cur = Cell::kHasCell ? cstate.data() : nullptr;
    T* c_next = Cell::kHasCell ? c_cur + B * H : nullptr;
    for (int64 s = 0; s < T_; ++s) {
      const int64 t = reverse ? T_ - 1 - s : s;
      if (nj > 0) {
        for (int64 g = 0; g < G; ++g) {
          fill_rows(gh.data() + g * H + j0, GH, B, nj, w.b_hh ? w.b_hh + g * H + j0 : nullptr);
          if (pack)
            packed_gemm<T>(B, nj, H, h_cur, H, w_pack + g * gate_pack, gh.data() + g * H + j0, GH, w.b_hh != nullptr);
          else
            gemm(false, true, B, nj, H, T(1), h_cur, H, w.w_hh + (g * H + j0) * H, H, T(w.b_hh ? 1 : 0),
                 gh.data() + g * H + j0, GH);
        }
        for (int64 b = 0; b < B; ++b) {
          const int64 tb = t * B + b;
          T* yrow = y + tb * ldy + j0;
          if (!lengths || t < lengths[b]) {
            const ForwardRow<T> row{gi.data() + tb * GH, gh.data() + b * GH, h_cur + b * H,
                                    Cell::kHasCell ? c_cur + b * H : nullptr, h_next + b * H,
                                    Cell::kHasCell ? c_next + b * H : nullptr, saved ? saved + tb * S * H : nullptr};
            // Two copies of the loop so that the cell's `if (saved)` folds away and both vectorise.
            if (row.saved) {
#pragma omp simd
              for (int64 j = j0; j < j0 + nj; ++j) Cell::forward(row, j, H);
            } else {
#pragma omp simd
              for (int64 j = j0; j < j0 + nj; ++j) Cell::forward(row, j, H);
            }
            std::memcpy(yrow, h_next + b * H + j0, sizeof(T) * nj);
            if (cells) std::memcpy(cells + tb * H + j0, c_next + b * H + j0, sizeof(T) * nj);
          } else {
            std::memcpy(h_next + b * H + j0, h_cur + b * H + j0, sizeof(T) * nj);
            if (Cell::kHasCell) std::memcpy(c_next + b * H + j0, c_cur + b * H + j0, sizeof(T) * nj);
            std::memset(yrow, 0, sizeof(T) * nj);
            // Backward never reads a dead row's saved values; writing them anyway makes the whole
            // reserve a function of the inputs (callers such as torch.compile compare outputs).
            for (int64 g = 0; saved && g < S; ++g) std::memset(saved + tb * S * H + g * H + j0, 0, sizeof(T) * nj);
            if (cells) std::memcpy(cells + tb * H + j0, c_next + b * H + j0, sizeof(T) * nj);
          }
        }
      }
      std::swap(h_cur, h_next);
      std::swap(c_cur, c_next);
#pragma omp barrier
    }
    if (tid == 0) {
      std::memcpy(hn, h_cur, sizeof(T) * B * H);
      if (Cell::kHasCell) std::memcpy(cn, c_cur, sizeof(T) * B * H);
    }
  }
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
                    const LayerGrads<T>& g, int threads) {
  constexpr int64 G = Cell::kGates, S = Cell::kSaved;
  const int64 T_ = cfg.T, B = cfg.B, H = cfg.H, GH = G * H, TB = T_ * B;

  std::vector<T> dgi(TB * GH), dgh_split(Cell::kSplitHiddenGrad ? TB * GH : 0);
  T* dgh = Cell::kSplitHiddenGrad ? dgh_split.data() : dgi.data();  // [T, B, G*H]
  std::vector<T> h_prev_all(TB * H);                                  // [T, B, H] for dW_hh
  std::vector<T> zeros(H, T(0));
  std::vector<T> dh_total(B * H);
  std::vector<T> dhstate(2 * B * H, T(0)), dcstate(Cell::kHasCell ? 2 * B * H : 0, T(0));
  if (dhn) std::memcpy(dhstate.data(), dhn, sizeof(T) * B * H);
  if (Cell::kHasCell && dcn) std::memcpy(dcstate.data(), dcn, sizeof(T) * B * H);
  // Each thread's columns of W_hh, packed once ([packed G*H x nj]).
  const bool pack = T_ * B >= kPackMinRows;  // as in layer_forward
  const int64 thread_pack = pack ? packed_size<T>(GH, max_share(H, threads, kUnitAlign)) : 0;
  std::vector<T> w_pack_all(threads * thread_pack);

#pragma omp parallel num_threads(threads)
  {
    const int tid = thread_index(), nt = team_size();
    const Range units = split(H, nt, tid, kUnitAlign);
    const int64 j0 = units.begin, j1 = units.end, nj = units.size();
    T* w_pack = w_pack_all.data() + tid * thread_pack;
    if (pack) pack_panels<T>(GH, nj, [&](int64 k, int64 n) { return w.w_hh[k * H + j0 + n]; }, w_pack);
    T* dh_cur = dhstate.data();
    T* dh_next = dh_cur + B * H;
    T* dc_cur = Cell::kHasCell ? dcstate.data() : nullptr;
    T* dc_next = Cell::kHasCell ? dc_cur + B * H : nullptr;
    for (int64 s = 0; s < T_; ++s) {
      const int64 t = reverse ? s : T_ - 1 - s;
      for (int64 b = 0; b < B && nj > 0; ++b) {
        const int64 tb = t * B + b;
        const int64 len = lengths ? lengths[b] : T_;
        if (t < len) {
          // The previous step in processing order, or the initial state.
          const bool has_prev = reverse ? t + 1 < len : t > 0;
          const int64 tb_prev = (reverse ? t + 1 : t - 1) * B + b;
          const T* hp = has_prev ? y + tb_prev * ldy : (h0 ? h0 + b * H : zeros.data());
          const T* cp = !Cell::kHasCell ? nullptr : has_prev ? cells + tb_prev * H : (c0 ? c0 + b * H : zeros.data());
          std::memcpy(h_prev_all.data() + tb * H + j0, hp + j0, sizeof(T) * nj);
          T* dht = dh_total.data() + b * H;
          const T* dyrow = dy + tb * ldy;
          const T* dhrow = dh_cur + b * H;
#pragma omp simd
          for (int64 j = j0; j < j1; ++j) dht[j] = dhrow[j] + dyrow[j];
          const BackwardRow<T> row{saved + tb * S * H, hp, cp, y + tb * ldy,
                                   Cell::kHasCell ? cells + tb * H : nullptr, dht,
                                   Cell::kHasCell ? dc_cur + b * H : nullptr, dgi.data() + tb * GH, dgh + tb * GH,
                                   dh_next + b * H, Cell::kHasCell ? dc_next + b * H : nullptr};
#pragma omp simd
          for (int64 j = j0; j < j1; ++j) Cell::backward(row, j, H);
        } else {
          std::memset(h_prev_all.data() + tb * H + j0, 0, sizeof(T) * nj);
          for (int64 k = 0; k < G; ++k) {
            std::memset(dgi.data() + tb * GH + k * H + j0, 0, sizeof(T) * nj);
            if (Cell::kSplitHiddenGrad) std::memset(dgh + tb * GH + k * H + j0, 0, sizeof(T) * nj);
          }
          std::memcpy(dh_next + b * H + j0, dh_cur + b * H + j0, sizeof(T) * nj);
          if (Cell::kHasCell) std::memcpy(dc_next + b * H + j0, dc_cur + b * H + j0, sizeof(T) * nj);
        }
      }
#pragma omp barrier
      // dL/dh_prev[:, own units] += dG_h(all gates, all units) W_hh[:, own units]
      if (pack) packed_gemm<T>(B, nj, GH, dgh + t * B * GH, GH, w_pack, dh_next + j0, H, true);
      else gemm(false, false, B, nj, GH, T(1), dgh + t * B * GH, GH, w.w_hh + j0, H, T(1), dh_next + j0, H);
      std::swap(dh_cur, dh_next);
      std::swap(dc_cur, dc_next);
    }
#pragma omp barrier
    if (tid == 0) {
      std::memcpy(dh0, dh_cur, sizeof(T) * B * H);
      if (Cell::kHasCell) std::memcpy(dc0, dc_cur, sizeof(T) * B * H);
    }

    // Weight gradients (each thread a block of gate rows) and dX (each thread a block of steps):
    // one GEMM each over all steps.
    const Range gate_rows = split(GH, nt, tid, kUnitAlign);
    const int64 r0 = gate_rows.begin, nr = gate_rows.size();
    gemm(true, false, nr, in_size, TB, T(1), dgi.data() + r0, GH, x, in_size, T(0), g.dw_ih + r0 * in_size, in_size);
    gemm(true, false, nr, H, TB, T(1), dgh + r0, GH, h_prev_all.data(), H, T(0), g.dw_hh + r0 * H, H);
    if (g.db_ih) column_sums(dgi.data(), TB, GH, gate_rows, g.db_ih);
    if (g.db_hh) column_sums(dgh, TB, GH, gate_rows, g.db_hh);
    const Range rows = split(TB, nt, tid, 1);
    gemm(false, false, rows.size(), in_size, GH, T(1), dgi.data() + rows.begin * GH, GH, w.w_ih, in_size, T(1),
         dx + rows.begin * in_size, in_size);
  }
}

}  // namespace fastrnn::cpu
