// The stack-level interface shared by the CPU and CUDA back ends: what a call describes (cell,
// sizes, layers, directions, lengths), the pointers it passes, and the layout of the "reserve"
// (what a training forward saves for backward), declared once here as named offsets.
//
// All tensors are time-major and C-contiguous. Per layer l and direction d (index l*D + d):
//   w_ih [G*H, I_l] (I_0 = I, I_l = D*H), w_hh [G*H, H], b_ih, b_hh [G*H] (nullptr = no bias).
// The projected LSTM (CellOptions::proj_size = P > 0): h is P wide wherever h appears (h0, hn, the
// layer outputs [T, B, D*P], so I_l = D*P), w_hh [G*H, P], w_hr [P, H]; c stays H wide.
#pragma once

#include <string>
#include <vector>

#include "cells/all.h"
#include "common.h"

namespace fastrnn {

struct RnnConfig {
  CellKind cell;
  int64 T, B, I, H;  // steps, batch, input size, hidden size
  int64 L, D;        // layers, directions (1 or 2)
  CellOptions options = {};  // the cell variants (csrc/cells/spec.h); defaults: the base cell

  // What the cell's spec declares (csrc/cells/).
  int64 gates() const { return dispatch_cell(cell, options, [](auto c) { return int64(decltype(c)::kGates); }); }
  int64 saved_per_unit() const {
    return dispatch_cell(cell, options, [](auto c) { return int64(decltype(c)::kSaved); });
  }
  int64 states() const { return dispatch_cell(cell, options, [](auto c) { return int64(decltype(c)::kStates); }); }
  // A carried state beyond h (the LSTM's c): passed as c0/cn, kept in the reserve.
  bool has_cell_state() const { return states() > 1; }
  // The width of h (and of each direction's share of a layer's output): P when projected, else H.
  int64 h_size() const { return options.proj_size > 0 ? options.proj_size : H; }
  bool projected() const { return options.proj_size > 0; }
  int64 input_size(int64 layer) const { return layer == 0 ? I : D * h_size(); }
};

// The parameters of one layer and direction, from the cell's spec (its ParamDecls, csrc/cells/):
// THE weight rules, read by both bindings (NumPy arrays: shapes; pointers: counts) and the table.
struct ParamCounts {
  int64 without_bias, with_bias;  // how many arrays a weight tuple holds
};
inline ParamCounts param_counts(CellKind cell, const CellOptions& o = {}) {
  return dispatch_cell(cell, o, [](auto c) {
    using Cell = decltype(c);
    ParamCounts n{0, 0};
    for (int i = 0; i < Cell::kNumParams; ++i) {
      n.with_bias += 1;
      n.without_bias += Cell::kParams[i].bias ? 0 : 1;
    }
    return n;
  });
}
inline const ParamDecl& param_decl(CellKind cell, int index, const CellOptions& o = {}) {
  return *dispatch_cell(cell, o, [index](auto c) { return &decltype(c)::kParams[index]; });
}
// The declaration of the `k`-th array of a weight tuple: with biases the k-th parameter, without
// them the k-th parameter that is not a bias (the peepholes follow w_hh then).
inline int param_index(CellKind cell, int k, bool bias, const CellOptions& o = {}) {
  for (int i = 0, seen = 0;; ++i) {
    if (bias || !param_decl(cell, i, o).bias) {
      if (seen == k) return i;
      ++seen;
    }
  }
}
// The shape of parameter `index` of a layer with input size `in` (I for layer 0, D*H above).
inline std::vector<int64> param_shape(CellKind cell, int64 in, int64 H, int index, const CellOptions& o = {}) {
  const ParamDecl& p = param_decl(cell, index, o);
  const int64 G = dispatch_cell(cell, o, [](auto c) { return int64(decltype(c)::kGates); });
  const int64 U = dispatch_cell(cell, o, [](auto c) { return int64(decltype(c)::kUnitRows); });
  const int64 P = o.proj_size;
  const int64 rows = p.rows == Dim::GateRows   ? checked_mul(G, H, "G*H")
                     : p.rows == Dim::UnitRows ? U
                                               : dim_size(p.rows, G, in, H, P);
  if (p.cols == Dim::One) return {rows};
  return {rows, dim_size(p.cols, G, in, H, P)};
}

// Offsets (in elements) into the reserve of a training forward. Per layer l: its output
// Y_l [T, B, D*H] (D*P projected; zeros past each length), the next layer's input; per layer and
// direction: the cell's saved values [T, B, S*H], for the LSTM the cell states [T, B, H], and for
// the projected LSTM m = o*tanh(c) [T, B, H] (the projection's input, for dW_hr).
struct ReserveLayout {
  int64 outputs_size, gates_size, cells_size, projection_size, per_dir, per_layer, total;

  explicit ReserveLayout(const RnnConfig& c) {
    const int64 TB = checked_mul(c.T, c.B, "T*B");
    outputs_size = checked_mul(TB, checked_mul(c.D, c.h_size(), "D*H"), "reserve");
    gates_size = checked_mul(TB, checked_mul(c.saved_per_unit(), c.H, "S*H"), "reserve");
    cells_size = c.has_cell_state() ? checked_mul(TB, c.H, "reserve") : 0;
    projection_size = c.projected() ? checked_mul(TB, c.H, "reserve") : 0;
    per_dir = checked_add(checked_add(gates_size, cells_size, "reserve"), projection_size, "reserve");
    per_layer = checked_add(outputs_size, checked_mul(c.D, per_dir, "reserve"), "reserve");
    total = checked_mul(c.L, per_layer, "reserve");
  }
  int64 layer_output(int64 l) const { return l * per_layer; }
  int64 gates(int64 l, int64 d) const { return l * per_layer + outputs_size + d * per_dir; }
  int64 cells(int64 l, int64 d) const { return gates(l, d) + gates_size; }
  int64 projection(int64 l, int64 d) const { return cells(l, d) + cells_size; }
};

// ---- training modifiers of every cell (not cells: no spec declares them) --------------
// What the Python layers pass for the modifiers the kernels run themselves (weight dropout and
// dilation are done around the kernels, in fastrnn.functional / fastrnn.nn):
//   recurrent dropout: h_{t-1} enters the recurrent product as m * h_{t-1}, m [B, H] the same at every
//     step of a layer and direction (the carried state, the outputs and the GRU's z*h_{t-1} use h);
//     backward: dW_hh reads m * h_{t-1}, dL/dh_{t-1} gets m * (dG_h W_hh).
//   zoneout: h_t = d_h * h_{t-1} + (1 - d_h) * h~_t with d_h [T, B, H] given per step (0/1 in training,
//     p in eval), the LSTM's c likewise with d_c; a training forward keeps h~ and c~ (pre_h, pre_c) for
//     the cell's backward; backward: h~ gets (1 - d_h) * dL/dh_t, h_{t-1} gets d_h * dL/dh_t besides.
//   gradient clipping: backward clamps the total dL/dh_t (from y_t and from step t+1), and the LSTM
//     the total dL/dc_t, to [-C, C] before it flows into step t (+inf: off, bit-identical).
// The loops take a Modifiers type (ModifierFlags below) chosen at one switch point (cpu/layer.h).
//
// Seeded masks (the CPU kernels; CUDA takes the arrays only): instead of the arrays, the training
// forward draws d_h, d_c and m itself from a counter-based generator (csrc/philox.h: its stream,
// keyed on (seed, stream, t, b, j)), and backward draws the same values again; nothing [T, B, H]
// is stored or read for them. An array given for a mask wins over its seeded draw.
struct SeededMasks {
  bool on = false;
  std::uint64_t seed = 0;
  int64 stream = 0;         // the generator's stream of layer 0, direction 0; layer l, direction d: + l*D + d
  double zoneout_h = 0;     // p of d_h ~ Bernoulli(p) per element and step; 0: not drawn
  double zoneout_c = 0;     // p of d_c (LSTM)
  double recurrent = 0;     // p of m = Bernoulli(1 - p) / (1 - p) [B, H]
  const int64* batch_row = nullptr;  // [B] the caller's row of each row the loop runs (sorted batch), or nullptr
  bool draws_zoneout() const { return on && (zoneout_h > 0 || zoneout_c > 0); }
  bool draws_recurrent() const { return on && recurrent > 0; }
};

template <class T> struct Modifiers {
  const T* recurrent_mask = nullptr;  // [L*D, B, H] m, or nullptr (no recurrent dropout)
  double grad_clip = 0;               // C > 0 clamps the state gradients in backward; 0: off
  const T* zoneout_h = nullptr;       // [L*D, T, B, H] d_h, or nullptr (no zoneout of h)
  const T* zoneout_c = nullptr;       // [L*D, T, B, H] d_c (LSTM), or nullptr
  T* pre_h = nullptr;                 // [L*D, T, B, H] h~ (training forward with zoneout_h; backward reads)
  T* pre_c = nullptr;                 // [L*D, T, B, H] c~ (with zoneout_c)
  SeededMasks seeded{};               // masks the kernels draw (arrays above take precedence)
};
template <bool RecurrentMask, bool Zoneout> struct ModifierFlags {
  static constexpr bool kRecurrentMask = RecurrentMask;
  static constexpr bool kZoneout = Zoneout;  // zoneout of h and/or c
};

// How a layer's float32 weights are stored by the caller: as float32, or as 16-bit values (widened
// exactly into the float32 arrays by the 16-bit entry points, csrc/cpu/storage16.h). With a 16-bit
// storage the CPU product objects pack 16-bit panels and run the 16-bit product kernels
// (csrc/cpu/packed_gemm16.h); nothing else in the loops changes.
enum class Storage : int { Native, Bfloat16, Float16 };

template <class T> struct LayerWeights {
  const T* w_ih;  // [G*H, I_l]
  const T* w_hh;  // [G*H, H]
  const T* b_ih;  // [G*H] or nullptr
  const T* b_hh;  // [G*H] or nullptr
  const T* w_ch = nullptr;  // [U, H] per-unit parameters (LSTM peepholes; SpecTraits::kUnitRows = U) or nullptr
  // layer_norm: the norm's gains [G*H] and, for the LSTM, the cell norm's gain and bias [H]
  const T* ln_ih = nullptr;
  const T* ln_hh = nullptr;
  const T* ln_c_w = nullptr;
  const T* ln_c_b = nullptr;
  Storage storage = Storage::Native;  // 16-bit values held in float32 (T = float only)
  const T* w_hr = nullptr;  // [P, H] the projection (SpecTraits::kProjected) or nullptr
};

template <class T> struct LayerGrads {
  T* dw_ih;  // [G*H, I_l]
  T* dw_hh;  // [G*H, H]
  T* db_ih;  // [G*H] or nullptr (no bias)
  T* db_hh;  // [G*H] or nullptr
  T* dw_ch = nullptr;  // [U, H] (LSTM peepholes) or nullptr
  T* dln_ih = nullptr;  // [G*H] (layer_norm) or nullptr
  T* dln_hh = nullptr;
  T* dln_c_w = nullptr;  // [H] (layer-normalised LSTM) or nullptr
  T* dln_c_b = nullptr;
  T* dw_hr = nullptr;  // [P, H] (the projection) or nullptr
};

// A layer's weights from its arrays in the spec's kParams order (given[i]: parameter i, nullptr
// where absent): the four kGateParams, then each further parameter by its declared name.
template <class T> LayerWeights<T> layer_weights(const T* const* given, int count, CellKind cell, const CellOptions& o) {
  LayerWeights<T> w{given[0], given[1], given[2], given[3]};
  for (int i = 4; i < count; ++i) {
    const std::string name = param_decl(cell, i, o).name;
    if (name == "w_ch") w.w_ch = given[i];
    else if (name == "ln_weight_ih") w.ln_ih = given[i];
    else if (name == "ln_weight_hh") w.ln_hh = given[i];
    else if (name == "ln_weight_c") w.ln_c_w = given[i];
    else if (name == "ln_bias_c") w.ln_c_b = given[i];
    else if (name == "w_hr") w.w_hr = given[i];
    else throw ArgumentError("LayerWeights has no field for parameter " + name);
  }
  return w;
}
// The gradients' pointers of a weight-shaped list of (writeable) arrays.
template <class T> LayerGrads<T> layer_grads(const LayerWeights<T>& g) {
  LayerGrads<T> d{const_cast<T*>(g.w_ih), const_cast<T*>(g.w_hh), const_cast<T*>(g.b_ih), const_cast<T*>(g.b_hh),
                  const_cast<T*>(g.w_ch), const_cast<T*>(g.ln_ih), const_cast<T*>(g.ln_hh), const_cast<T*>(g.ln_c_w),
                  const_cast<T*>(g.ln_c_b)};
  d.dw_hr = const_cast<T*>(g.w_hr);
  return d;
}

// One layer and direction, as the stack hands it to a back end's phase loop. H-wide rows of h
// (h0, hn, y's columns, dy) are P wide for the projected LSTM (RnnConfig::h_size()).
template <class T> struct LayerForwardArgs {
  int64 in_size;           // I_l
  LayerWeights<T> w;
  const T* x;              // [T, B, in_size]
  const T* h0;             // [B, H] or nullptr (zeros)
  const T* c0;             // [B, H] or nullptr (zeros; cells with a carried state)
  const int64* lengths;    // [B] or nullptr (all T)
  bool reverse;            // the reverse direction: steps T-1 .. 0
  T* y;                    // [T, B, ldy]: this direction's H columns of the layer's output
  int64 ldy;               // D*H
  T* hn;                   // [B, H]
  T* cn;                   // [B, H] (carried state) or nullptr
  T* saved;                // [T, B, S*H] or nullptr (inference)
  T* cells;                // [T, B, H] or nullptr (inference / no carried state)
  const T* h_mask = nullptr;  // [B, H] recurrent-dropout mask m, or nullptr (modifiers)
  const T* zone_h = nullptr;  // [T, B, H] zoneout d_h, or nullptr (modifiers)
  const T* zone_c = nullptr;  // [T, B, H] zoneout d_c, or nullptr
  T* pre_h = nullptr;         // [T, B, H] h~ kept for backward (training with zone_h), or nullptr
  T* pre_c = nullptr;         // [T, B, H] c~ (training with zone_c), or nullptr
  T* projection_in = nullptr;  // [T, B, H] m = o*tanh(c) kept for backward (projected LSTM, training), or nullptr
  SeededMasks seeded{};       // the masks drawn in the loop (stream: this layer's and direction's)
};

template <class T> struct LayerBackwardArgs {
  int64 in_size;           // I_l
  LayerWeights<T> w;
  const T* x;              // [T, B, in_size] the layer's input
  const T* h0;             // [B, H] or nullptr
  const T* c0;             // [B, H] or nullptr
  const int64* lengths;    // [B] or nullptr
  bool reverse;
  const T* y;              // [T, B, ldy] this direction's outputs (saved by forward)
  int64 ldy;
  const T* saved;          // [T, B, S*H]
  const T* cells;          // [T, B, H] or nullptr
  const T* dy;             // [T, B, ldy] same layout as y
  const T* dhn;            // [B, H] or nullptr (zero)
  const T* dcn;            // [B, H] or nullptr (zero)
  T* dx;                   // [T, B, in_size], accumulated into
  T* dh0;                  // [B, H]
  T* dc0;                  // [B, H] (carried state) or nullptr
  LayerGrads<T> g;         // fully overwritten
  const T* h_mask = nullptr;  // [B, H] the forward's recurrent-dropout mask, or nullptr (modifiers)
  double grad_clip = 0;       // > 0: clamp dL/dh_t (and dL/dc_t) to [-C, C]; 0: off (modifiers)
  const T* zone_h = nullptr;  // [T, B, H] the forward's zoneout d_h, or nullptr
  const T* zone_c = nullptr;  // [T, B, H] d_c, or nullptr
  const T* pre_h = nullptr;   // [T, B, H] h~ (with zone_h)
  const T* pre_c = nullptr;   // [T, B, H] c~ (with zone_c)
  const T* projection_in = nullptr;  // [T, B, H] the forward's m (projected LSTM)
  SeededMasks seeded{};       // the forward's seeded masks, drawn again
};

template <class T> struct ForwardArgs {
  const T* x;              // [T, B, I]
  const T* h0;             // [L*D, B, H] or nullptr (zeros)
  const T* c0;             // [L*D, B, H] or nullptr (LSTM)
  const int64* lengths;    // [B] in [1, T], or nullptr (all T)
  std::vector<LayerWeights<T>> weights;  // [L*D]
  T* y;                    // [T, B, D*H]
  T* hn;                   // [L*D, B, H]
  T* cn;                   // [L*D, B, H] (LSTM) or nullptr
  T* reserve;              // [ReserveLayout.total], or nullptr for inference
  Modifiers<T> mods{};     // training modifiers; default: the plain cells
};

template <class T> struct BackwardArgs {
  // what forward saw and saved
  const T* x;              // [T, B, I]
  const T* h0;             // [L*D, B, H] or nullptr
  const T* c0;             // [L*D, B, H] or nullptr
  const int64* lengths;    // [B] or nullptr
  std::vector<LayerWeights<T>> weights;
  const T* reserve;        // from the training forward
  // incoming gradients
  const T* dy;             // [T, B, D*H]
  const T* dhn;            // [L*D, B, H] or nullptr (zero)
  const T* dcn;            // [L*D, B, H] or nullptr (zero)
  // outputs (fully overwritten)
  T* dx;                   // [T, B, I]
  T* dh0;                  // [L*D, B, H]
  T* dc0;                  // [L*D, B, H] (LSTM) or nullptr
  std::vector<LayerGrads<T>> grads;
  Modifiers<T> mods{};     // the forward's modifiers (recurrent mask) and grad_clip
};

namespace cpu {
template <class T> void forward(const RnnConfig& cfg, const ForwardArgs<T>& a);
template <class T> void backward(const RnnConfig& cfg, const BackwardArgs<T>& a);
// The same with x and y (dy, dx) in torch's PackedSequence layout: [rows, ·] arrays holding step t's
// batch_sizes[t] live rows (batch_sizes [T], non-increasing, batch_sizes[0] = B, summing to rows),
// the batch sorted by decreasing length; a.lengths must be nullptr (batch_sizes implies them). The
// states and the reserve are as in a call with those lengths (csrc/cpu/stack.cpp).
template <class T> void forward_packed(const RnnConfig& cfg, const ForwardArgs<T>& a, const int64* batch_sizes, int64 rows);
template <class T> void backward_packed(const RnnConfig& cfg, const BackwardArgs<T>& a, const int64* batch_sizes, int64 rows);
void set_num_threads(int n);
int get_num_threads();
// fastrnn.empty_cache(): frees every thread's kept scratch blocks; and the bytes they keep now.
void empty_cache();
size_t scratch_cache_bytes();
// Memory for a training call's reserve from the calling thread's scratch cache (the kept blocks of
// 1 MB or more that fastrnn.empty_cache frees), 64-byte aligned, not zero-filled; `bytes` becomes
// the block's size, which give_reserve_block takes back (on any thread) into that thread's cache.
void* take_reserve_block(size_t& bytes);
void give_reserve_block(void* p, size_t bytes);
// The least recurrent work per step and thread worth a parallel region (FASTRNN_MIN_STEP_FLOPS).
int64 min_step_flops();
}  // namespace cpu

}  // namespace fastrnn
