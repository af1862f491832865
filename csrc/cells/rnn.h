// The Elman RNN cells' spec (tanh and ReLU; see spec.h for what a spec declares):
//   h' = tanh|relu(gi + gh),  gi = W_ih x + b_ih,  gh = W_hh h + b_hh
// One gate, one state (h), nothing saved: backward needs only h, which the layer keeps anyway.
#pragma once

#include "cells/spec.h"

namespace fastrnn {

template <bool Relu> struct RnnCell {
  static constexpr CellKind kKind = Relu ? CellKind::RnnRelu : CellKind::RnnTanh;
  static constexpr const char* kName = Relu ? "rnn_relu" : "rnn_tanh";

  struct Gate {
    enum : int { pre, count };
  };
  static constexpr int kGates = Gate::count;
  static constexpr const char* kGateNames[kGates] = {"h"};

  static constexpr int kStates = 1;
  static constexpr StateDecl kStateDecls[kStates] = {{"h", Width::Hidden}};

  static constexpr const ParamDecl* kParams = kGateParams;
  static constexpr int kNumParams = 4;
  static constexpr int kUnitRows = 0;  // no per-unit parameters
  static constexpr bool kIsVariant = false;

  struct Saved {
    enum : int { count };
  };
  static constexpr int kSaved = Saved::count;
  static constexpr const char* const* kSavedNames = nullptr;

  using Step = Phases<RecurrentProduct<Operand::H, Weight::Hh, false>, Pointwise<0>>;

  template <class T> FASTRNN_HD static void forward(const ForwardRow<T>& r, int64 j, int64 ld, int64) {
    using A = typename AccType<T>::type;
    const A pre = A(gate(r.gi, Gate::pre, ld, j)) + A(gate(r.gh, Gate::pre, ld, j));
    r.h[j] = T(Relu ? fr_relu(pre) : fr_tanh(pre));
  }
  template <class T> FASTRNN_HD static void backward(const BackwardRow<T>& r, int64 j, int64 H) {
    using A = typename AccType<T>::type;
    const A h = A(r.h[j]), dh = A(r.dh[j]);
    const A dpre = Relu ? fr_relu_backward(h, dh) : dh * (A(1) - h * h);
    gate(r.dgi, Gate::pre, H, j) = T(dpre);
    gate(r.dgh, Gate::pre, H, j) = T(dpre);
    r.dh_prev[j] = T(0);
  }
};

}  // namespace fastrnn
