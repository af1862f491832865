// The LSTM's spec (PyTorch's gate order i, f, g, o; see spec.h for what a spec declares):
//   i, f, o = sigmoid(gi + gh),  g = tanh(gi + gh),  c' = f*c + i*g,  h' = o*tanh(c')
// Two states (h and c, both H wide); forward saves the four activated gates per unit, backward
// recomputes tanh(c') from the c' the layer keeps.
#pragma once

#include "cells/spec.h"

namespace fastrnn {

struct LstmCell {
  static constexpr CellKind kKind = CellKind::Lstm;
  static constexpr const char* kName = "lstm";

  struct Gate {
    enum : int { i, f, g, o, count };
  };
  static constexpr int kGates = Gate::count;
  static constexpr const char* kGateNames[kGates] = {"i", "f", "g", "o"};

  static constexpr int kStates = 2;
  static constexpr StateDecl kStateDecls[kStates] = {{"h", Width::Hidden}, {"c", Width::Hidden}};

  static constexpr const ParamDecl* kParams = kGateParams;
  static constexpr int kNumParams = 4;

  // per unit, after their activations
  struct Saved {
    enum : int { i, f, g, o, count };
  };
  static constexpr int kSaved = Saved::count;
  static constexpr const char* kSavedNames[kSaved] = {"i", "f", "g", "o"};

  using Step = Phases<RecurrentProduct<Operand::H, Weight::Hh, false>, Pointwise<0>>;

  template <class T> FASTRNN_HD static void forward(const ForwardRow<T>& r, int64 j, int64 ld, int64 H) {
    using A = typename AccType<T>::type;
    const A i = sigmoid(A(gate(r.gi, Gate::i, ld, j)) + A(gate(r.gh, Gate::i, ld, j)));
    const A f = sigmoid(A(gate(r.gi, Gate::f, ld, j)) + A(gate(r.gh, Gate::f, ld, j)));
    const A g = fr_tanh(A(gate(r.gi, Gate::g, ld, j)) + A(gate(r.gh, Gate::g, ld, j)));
    const A o = sigmoid(A(gate(r.gi, Gate::o, ld, j)) + A(gate(r.gh, Gate::o, ld, j)));
    const A c = f * A(r.c_prev[j]) + i * g;
    r.c[j] = T(c);
    r.h[j] = T(o * fr_tanh(c));
    if (r.saved) {
      slot(r.saved, Saved::i, H, j) = T(i);
      slot(r.saved, Saved::f, H, j) = T(f);
      slot(r.saved, Saved::g, H, j) = T(g);
      slot(r.saved, Saved::o, H, j) = T(o);
    }
  }
  template <class T> FASTRNN_HD static void backward(const BackwardRow<T>& r, int64 j, int64 H) {
    using A = typename AccType<T>::type;
    const A i = A(slot(r.saved, Saved::i, H, j)), f = A(slot(r.saved, Saved::f, H, j));
    const A g = A(slot(r.saved, Saved::g, H, j)), o = A(slot(r.saved, Saved::o, H, j));
    const A tc = fr_tanh(A(r.c[j]));
    const A dh = A(r.dh[j]);
    // the total reaching c_t (from c_{t+1} and through h_t), clamped by the grad_clip modifier
    const A dc = clamp_if(A(r.dc[j]) + dh * o * (A(1) - tc * tc), A(r.dc_clip));
    gate(r.dgi, Gate::i, H, j) = T(dc * g * i * (A(1) - i));
    gate(r.dgi, Gate::f, H, j) = T(dc * A(r.c_prev[j]) * f * (A(1) - f));
    gate(r.dgi, Gate::g, H, j) = T(dc * i * (A(1) - g * g));
    gate(r.dgi, Gate::o, H, j) = T(dh * tc * o * (A(1) - o));
    r.dc_prev[j] = T(dc * f);
    r.dh_prev[j] = T(0);
  }
};

}  // namespace fastrnn
