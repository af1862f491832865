// The raw-pointer entry points' argument parsing, shared by the CPU (csrc/bindings.cpp) and CUDA
// (cuda/bindings_cuda.cpp) back ends. A framework passes each buffer as a Python int (e.g. torch's
// tensor.data_ptr(); 0 = absent), so that it owns every buffer and no array library is needed, and
// a call costs no array-object conversions (NumPy views cost a microsecond each, ~30 of them per
// small training step). What is checked here: the cell, sizes >= 1, pointers present or absent as
// the cell requires, the weight tuples' count and length. What cannot be (buffer sizes, dtypes,
// contiguity, lengths' values) is the caller's contract; fastrnn.ops checks it in Python.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "rnn.h"

namespace fastrnn::pointer_args {

namespace py = pybind11;
using Ptr = std::uintptr_t;

inline RnnConfig make_config(int cell, int64 T, int64 B, int64 I, int64 H, int64 L, bool bidirectional,
                             const CellOptions& options = {}) {
  if (!valid_cell_id(cell))
    throw ArgumentError("cell must be 0.." + std::to_string(kNumCells - 1) + ", got " + std::to_string(cell));
  if (!(options.cell_clip >= 0)) throw ArgumentError("cell_clip must be > 0 (0: no clipping), got " + std::to_string(options.cell_clip));
  const RnnConfig c{static_cast<CellKind>(cell), T, B, I, H, L, bidirectional ? 2 : 1, options};
  (void)c.gates();  // options the cell does not have: ArgumentError
  if (c.T < 1 || c.B < 1 || c.I < 1 || c.H < 1 || c.L < 1)
    throw ArgumentError("sizes must be >= 1, got T=" + std::to_string(c.T) + " B=" + std::to_string(c.B) +
                        " I=" + std::to_string(c.I) + " H=" + std::to_string(c.H) + " L=" + std::to_string(c.L));
  (void)ReserveLayout(c);  // every reserve product fits 64 bits
  return c;
}

// Collects the pointers of one call and checks the presence rules as they are added; `given` lists
// them by name for a back end's own checks (CUDA: device memory of the current device).
struct Pointers {
  std::vector<std::pair<Ptr, std::string>> given;

  // A pointer that must be present (required) or may be 0; `allowed` false: must be 0 (e.g. c0 of a GRU).
  template <class T> T* add(Ptr p, const char* name, bool required, bool allowed = true) {
    if (!allowed && p) throw ArgumentError(std::string(name) + " must be 0 for this cell (it has no cell state)");
    if (required && !p) throw ArgumentError(std::string(name) + " is required, got 0 (a null pointer)");
    if (p) given.emplace_back(p, name);
    return reinterpret_cast<T*>(p);
  }
};

// The length of the first tuple of weight_ptrs, the cell's parameter count without or with biases
// (param_counts, rnn.h: 2 or 4): every tuple must have it.
inline size_t first_len(const py::list& list, const RnnConfig& c, const char* what) {
  if (list.size() == 0) throw ArgumentError(std::string(what) + " must not be empty");
  if (!py::isinstance<py::tuple>(list[0]) && !py::isinstance<py::list>(list[0]))
    throw py::type_error(std::string(what) + "[0] must be a tuple of ints (w_ih, w_hh[, b_ih, b_hh])");
  const int64 n = static_cast<int64>(py::reinterpret_borrow<py::sequence>(list[0]).size());
  const ParamCounts counts = param_counts(c.cell, c.options);
  if (n != counts.without_bias && n != counts.with_bias)
    throw ArgumentError(std::string(what) + "[0] must hold " + std::to_string(counts.without_bias) + " or " +
                        std::to_string(counts.with_bias) + " pointers, got " + std::to_string(n));
  return static_cast<size_t>(n);
}

// weight_ptrs / grad_ptrs: L*D tuples of `expected_len` (2 or 4) pointers, index l*D + d.
template <class T>
std::vector<LayerWeights<T>> weight_pointers(const py::list& list, const RnnConfig& c, const char* what,
                                             size_t expected_len, Pointers& ptrs) {
  if (static_cast<int64>(list.size()) != c.L * c.D)
    throw ArgumentError(std::string(what) + " must hold num_layers*num_directions = " + std::to_string(c.L * c.D) +
                        " tuples, got " + std::to_string(list.size()));
  std::vector<LayerWeights<T>> out;
  out.reserve(list.size());
  for (int64 k = 0; k < c.L * c.D; ++k) {
    const std::string p = std::string(what) + "[" + std::to_string(k) + "]";
    if (!py::isinstance<py::tuple>(list[k]) && !py::isinstance<py::list>(list[k]))
      throw py::type_error(p + " must be a tuple of ints (w_ih, w_hh[, b_ih, b_hh])");
    const auto t = py::reinterpret_borrow<py::sequence>(list[k]);
    if (t.size() != expected_len)
      throw ArgumentError(p + " must hold " + std::to_string(expected_len) + " pointers like " + what +
                          "[0], got " + std::to_string(t.size()));
    Ptr v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (size_t i = 0; i < t.size(); ++i) {
      try {
        v[i] = py::cast<Ptr>(t[i]);
      } catch (const py::cast_error&) {
        throw py::type_error(p + " must hold non-negative ints (pointers), got " +
                             std::string(py::str(py::type::of(t[i]))));
      }
    }
    const bool bias = static_cast<int64>(expected_len) == param_counts(c.cell, c.options).with_bias;
    const T* given[8] = {};  // the spec's kParams order (layer_weights, rnn.h)
    for (size_t k = 0; k < t.size(); ++k) {
      const int i = param_index(c.cell, int(k), bias, c.options);
      given[i] = ptrs.add<const T>(v[k], (p + "." + param_decl(c.cell, i, c.options).name).c_str(), true);
    }
    out.push_back(layer_weights<T>(given, int(param_counts(c.cell, c.options).with_bias), c.cell, c.options));
  }
  return out;
}

// The pointers of a forward call: x, h0, c0, lengths, weights, y, hn, cn, reserve (0 = inference).
template <class T>
ForwardArgs<T> forward_args(const RnnConfig& c, Ptr x, const py::list& weights, Ptr h0, Ptr c0, Ptr lengths, Ptr y,
                            Ptr hn, Ptr cn, Ptr reserve, Pointers& ptrs) {
  const bool lstm = c.has_cell_state();
  return {ptrs.add<const T>(x, "x_ptr", true),
          ptrs.add<const T>(h0, "h0_ptr", false),
          ptrs.add<const T>(c0, "c0_ptr", false, lstm),
          ptrs.add<const int64>(lengths, "lengths_ptr", false),
          weight_pointers<T>(weights, c, "weight_ptrs", first_len(weights, c, "weight_ptrs"), ptrs),
          ptrs.add<T>(y, "y_ptr", true),
          ptrs.add<T>(hn, "hn_ptr", true),
          ptrs.add<T>(cn, "cn_ptr", lstm, lstm),
          ptrs.add<T>(reserve, "reserve_ptr", false)};
}

// The cell options as the entry points take them (keywords; defaults: the base cells).
inline CellOptions cell_options(bool peephole, bool coupled, double cell_clip, bool reset_after = true,
                                bool layer_norm = false) {
  CellOptions o;
  o.peephole = peephole;
  o.coupled = coupled;
  o.cell_clip = cell_clip;
  o.reset_after = reset_after;
  o.layer_norm = layer_norm;
  return o;
}

// The grad_clip modifier: C > 0, or 0 for off.
inline double checked_grad_clip(double c) {
  if (!(c >= 0)) throw ArgumentError("grad_clip must be > 0 (or 0 for off), got " + std::to_string(c));
  return c;
}

// The training modifiers' pointers of a forward call (rnn.h's Modifiers): recurrent_mask
// [L*D, B, H], zoneout_h/_c [L*D, T, B, H] and, in training with zoneout, pre_h/_c [L*D, T, B, H]
// (written); c's only for cells with a carried state.
template <class T>
Modifiers<T> forward_modifiers(const RnnConfig& c, Ptr recurrent_mask, Ptr zoneout_h, Ptr zoneout_c, Ptr pre_h,
                               Ptr pre_c, Pointers& ptrs) {
  Modifiers<T> m;
  m.recurrent_mask = ptrs.add<const T>(recurrent_mask, "recurrent_mask_ptr", false);
  m.zoneout_h = ptrs.add<const T>(zoneout_h, "zoneout_h_ptr", false);
  m.zoneout_c = ptrs.add<const T>(zoneout_c, "zoneout_c_ptr", false, c.has_cell_state());
  m.pre_h = ptrs.add<T>(pre_h, "pre_h_ptr", false);
  m.pre_c = ptrs.add<T>(pre_c, "pre_c_ptr", false, c.has_cell_state());
  return m;
}

// The same for backward, with grad_clip; pre_h/_c (the forward's h~, c~) are required with zoneout.
template <class T>
Modifiers<T> backward_modifiers(const RnnConfig& c, Ptr recurrent_mask, double grad_clip, Ptr zoneout_h,
                                Ptr zoneout_c, Ptr pre_h, Ptr pre_c, Pointers& ptrs) {
  Modifiers<T> m;
  m.recurrent_mask = ptrs.add<const T>(recurrent_mask, "recurrent_mask_ptr", false);
  m.grad_clip = checked_grad_clip(grad_clip);
  m.zoneout_h = ptrs.add<const T>(zoneout_h, "zoneout_h_ptr", false);
  m.zoneout_c = ptrs.add<const T>(zoneout_c, "zoneout_c_ptr", false, c.has_cell_state());
  m.pre_h = ptrs.add<T>(pre_h, "pre_h_ptr", zoneout_h != 0);
  m.pre_c = ptrs.add<T>(pre_c, "pre_c_ptr", zoneout_c != 0, c.has_cell_state());
  return m;
}

// The pointers of a backward call; grad_ptrs mirrors weight_ptrs.
template <class T>
BackwardArgs<T> backward_args(const RnnConfig& c, Ptr x, const py::list& weights, Ptr h0, Ptr c0, Ptr lengths,
                              Ptr reserve, Ptr dy, Ptr dhn, Ptr dcn, Ptr dx, Ptr dh0, Ptr dc0,
                              const py::list& grads, Pointers& ptrs) {
  const bool lstm = c.has_cell_state();
  const size_t len = first_len(weights, c, "weight_ptrs");
  BackwardArgs<T> a{ptrs.add<const T>(x, "x_ptr", true),
                    ptrs.add<const T>(h0, "h0_ptr", false),
                    ptrs.add<const T>(c0, "c0_ptr", false, lstm),
                    ptrs.add<const int64>(lengths, "lengths_ptr", false),
                    weight_pointers<T>(weights, c, "weight_ptrs", len, ptrs),
                    ptrs.add<const T>(reserve, "reserve_ptr", true),
                    ptrs.add<const T>(dy, "dy_ptr", true),
                    ptrs.add<const T>(dhn, "dhn_ptr", false),
                    ptrs.add<const T>(dcn, "dcn_ptr", false, lstm),
                    ptrs.add<T>(dx, "dx_ptr", true),
                    ptrs.add<T>(dh0, "dh0_ptr", true),
                    ptrs.add<T>(dc0, "dc0_ptr", lstm, lstm),
                    {}};
  for (const auto& g : weight_pointers<T>(grads, c, "grad_ptrs", len, ptrs))
    a.grads.push_back(layer_grads(g));
  return a;
}

}  // namespace fastrnn::pointer_args
