// The single-step entry points `_core.cell_forward` / `_core.cell_backward`: one time step of one
// cell (T = 1, one layer, one direction), what fastrnn.nn's RNNCell / LSTMCell / GRUCell call on
// every step. They run the very kernels of forward_ptrs / backward_ptrs (cpu::forward and
// cpu::backward with the same RnnConfig, so the results are bitwise the same), but a call costs
// what a dozen integer arguments cost: no list of weight tuples to unpack, no dtype string, no
// named-pointer bookkeeping, and the buffers the caller has no use for (y, which equals h_out at
// T = 1; gradients nobody asked for) are allocated here, for the call only, instead of by torch.
// Included once, by bindings.cpp (register_cell_step).
//
// Pointers are Python ints (0 = absent), buffers C-contiguous of the call's dtype (`f64`) and of
// these shapes, the caller's contract (fastrnn.ops checks it): x [B, I]; h0, c0, h_out, c_out,
// dh, dc, dh0, dc0 [B, H]; w_ih [G*H, I], w_hh [G*H, H], b_ih, b_hh [G*H] (both or neither);
// reserve [B * reserve_size(cell, 1, 1, 1, H, 1, False)]; dx [B, I]; gradients like their weights.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "pointer_args.h"
#include "rnn.h"

namespace fastrnn::cell_step {

namespace py = pybind11;
using pointer_args::Ptr;

template <class T> const T* in(Ptr p) { return reinterpret_cast<const T*>(p); }

// Buffers a call writes and nobody reads (y, and the gradients not asked for): the kernels require
// every output, and allocating them in torch costs ~1 us each. Allocated per call (uninitialised)
// and freed at its end, so nothing is kept past the call (fastrnn.empty_cache's rule).
template <class T> class Unwanted {
 public:
  T* get(Ptr p, int64 n) {
    if (p) return reinterpret_cast<T*>(p);
    buffers_.emplace_back(new T[static_cast<size_t>(n)]);
    return buffers_.back().get();
  }

 private:
  std::vector<std::unique_ptr<T[]>> buffers_;
};

inline RnnConfig config(int cell, int64 B, int64 I, int64 H, Ptr x, Ptr w_ih, Ptr w_hh, Ptr b_ih, Ptr b_hh) {
  const RnnConfig c = pointer_args::make_config(cell, 1, B, I, H, 1, false);
  if (!x || !w_ih || !w_hh) throw ArgumentError("x, w_ih and w_hh must be non-null pointers");
  if ((b_ih == 0) != (b_hh == 0)) throw ArgumentError("give both b_ih and b_hh, or neither");
  return c;
}

template <class T>
void forward(int cell, int64 B, int64 I, int64 H, Ptr x, Ptr h0, Ptr c0, Ptr w_ih, Ptr w_hh, Ptr b_ih, Ptr b_hh,
             Ptr h_out, Ptr c_out, Ptr reserve) {
  const RnnConfig c = config(cell, B, I, H, x, w_ih, w_hh, b_ih, b_hh);
  const bool lstm = c.has_cell_state();
  if (!h_out || (lstm != (c_out != 0)) || (!lstm && c0))
    throw ArgumentError("h_out is required, and c0/c_out are for the LSTM only (c_out required there)");
  ForwardArgs<T> a{in<T>(x), in<T>(h0), in<T>(c0), nullptr,
                   {LayerWeights<T>{in<T>(w_ih), in<T>(w_hh), in<T>(b_ih), in<T>(b_hh)}},
                   nullptr, reinterpret_cast<T*>(h_out), reinterpret_cast<T*>(c_out), reinterpret_cast<T*>(reserve)};
  py::gil_scoped_release release;
  Unwanted<T> unwanted;
  a.y = unwanted.get(0, B * H);  // [1, B, H]: the same values as h_out
  cpu::forward<T>(c, a);
}

// dh: the gradient of h_out (taken as dy, the output's: at T = 1 the output is h_out), dc: of
// c_out (0: zero). dx, dh0, dc0 and the weight gradients: 0 when not wanted.
template <class T>
void backward(int cell, int64 B, int64 I, int64 H, Ptr x, Ptr h0, Ptr c0, Ptr w_ih, Ptr w_hh, Ptr b_ih, Ptr b_hh,
              Ptr reserve, Ptr dh, Ptr dc, Ptr dx, Ptr dh0, Ptr dc0, Ptr dw_ih, Ptr dw_hh, Ptr db_ih, Ptr db_hh) {
  const RnnConfig c = config(cell, B, I, H, x, w_ih, w_hh, b_ih, b_hh);
  const bool lstm = c.has_cell_state();
  if (!reserve || !dh) throw ArgumentError("reserve and dh must be non-null pointers");
  if (!lstm && (c0 || dc || dc0)) throw ArgumentError("c0, dc and dc0 are for the LSTM only");
  const int64 GH = c.gates() * H;
  const bool bias = b_ih != 0;
  BackwardArgs<T> a{in<T>(x), in<T>(h0), in<T>(c0), nullptr,
                    {LayerWeights<T>{in<T>(w_ih), in<T>(w_hh), in<T>(b_ih), in<T>(b_hh)}},
                    in<T>(reserve), in<T>(dh), nullptr, in<T>(dc), nullptr, nullptr, nullptr, {}};
  py::gil_scoped_release release;
  Unwanted<T> unwanted;
  a.dx = unwanted.get(dx, B * I);
  a.dh0 = unwanted.get(dh0, B * H);
  a.dc0 = lstm ? unwanted.get(dc0, B * H) : nullptr;
  a.grads.push_back({unwanted.get(dw_ih, GH * I), unwanted.get(dw_hh, GH * H), bias ? unwanted.get(db_ih, GH) : nullptr,
                     bias ? unwanted.get(db_hh, GH) : nullptr});
  cpu::backward<T>(c, a);
}

inline void register_cell_step(py::module_& m) {
  m.def("cell_forward",
        [](int cell, bool f64, int64 B, int64 I, int64 H, Ptr x, Ptr h0, Ptr c0, Ptr w_ih, Ptr w_hh, Ptr b_ih, Ptr b_hh,
           Ptr h_out, Ptr c_out, Ptr reserve) {
          (f64 ? forward<double> : forward<float>)(cell, B, I, H, x, h0, c0, w_ih, w_hh, b_ih, b_hh, h_out, c_out,
                                                   reserve);
        },
        "One step of one cell on host pointers (ints; 0 = absent): x [B, I], h0, c0 [B, H] (0: zeros), the four "
        "weights, h_out, c_out [B, H], reserve (0: inference). Sizes and dtypes are the caller's contract.");
  m.def("cell_backward",
        [](int cell, bool f64, int64 B, int64 I, int64 H, Ptr x, Ptr h0, Ptr c0, Ptr w_ih, Ptr w_hh, Ptr b_ih, Ptr b_hh,
           Ptr reserve, Ptr dh, Ptr dc, Ptr dx, Ptr dh0, Ptr dc0, Ptr dw_ih, Ptr dw_hh, Ptr db_ih, Ptr db_hh) {
          (f64 ? backward<double> : backward<float>)(cell, B, I, H, x, h0, c0, w_ih, w_hh, b_ih, b_hh, reserve, dh, dc,
                                                     dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh);
        },
        "The gradients of a training cell_forward (the same x, h0, c0, weights and its reserve): dh, dc the "
        "gradients of h_out, c_out (dc 0: zero); dx, dh0, dc0 and the weight gradients written where given "
        "(0: not wanted).");
}

}  // namespace fastrnn::cell_step
