// The GRU's spec (PyTorch's gate order r, z, n and its reset-after form; see spec.h):
//   r, z = sigmoid(gi + gh),  n = tanh(gi_n + r*gh_n),  h' = (1-z)*n + z*h      (gh_n includes b_hn)
// One state (h). The product's gradient differs from the input's (dL/d(gh_n) = dL/d(gi_n) * r), so
// its RecurrentProduct declares kSeparateGrad; forward saves r, z, n and gh_n per unit.
#pragma once

#include "cells/spec.h"

namespace fastrnn {

struct GruCell {
  static constexpr CellKind kKind = CellKind::Gru;
  static constexpr const char* kName = "gru";

  struct Gate {
    enum : int { r, z, n, count };
  };
  static constexpr int kGates = Gate::count;
  static constexpr const char* kGateNames[kGates] = {"r", "z", "n"};

  static constexpr int kStates = 1;
  static constexpr StateDecl kStateDecls[kStates] = {{"h", Width::Hidden}};

  static constexpr const ParamDecl* kParams = kGateParams;
  static constexpr int kNumParams = 4;
  static constexpr int kUnitRows = 0;  // no per-unit parameters
  static constexpr bool kIsVariant = false;

  // per unit: r, z, n after their activations, and gh_n (= W_hn h + b_hn)
  struct Saved {
    enum : int { r, z, n, gh_n, count };
  };
  static constexpr int kSaved = Saved::count;
  static constexpr const char* kSavedNames[kSaved] = {"r", "z", "n", "gh_n"};

  using Step = Phases<RecurrentProduct<Operand::H, Weight::Hh, true>, Pointwise<0>>;

  template <class T> FASTRNN_HD static void forward(const ForwardRow<T>& r, int64 j, int64 ld, int64 H) {
    using A = typename AccType<T>::type;
    const A rg = sigmoid(A(gate(r.gi, Gate::r, ld, j)) + A(gate(r.gh, Gate::r, ld, j)));
    const A z = sigmoid(A(gate(r.gi, Gate::z, ld, j)) + A(gate(r.gh, Gate::z, ld, j)));
    const A ghn = A(gate(r.gh, Gate::n, ld, j));
    const A n = fr_tanh(A(gate(r.gi, Gate::n, ld, j)) + rg * ghn);
    r.h[j] = T((A(1) - z) * n + z * A(r.h_prev[j]));
    if (r.saved) {
      slot(r.saved, Saved::r, H, j) = T(rg);
      slot(r.saved, Saved::z, H, j) = T(z);
      slot(r.saved, Saved::n, H, j) = T(n);
      slot(r.saved, Saved::gh_n, H, j) = T(ghn);
    }
  }
  template <class T> FASTRNN_HD static void backward(const BackwardRow<T>& r, int64 j, int64 H) {
    using A = typename AccType<T>::type;
    const A rg = A(slot(r.saved, Saved::r, H, j)), z = A(slot(r.saved, Saved::z, H, j));
    const A n = A(slot(r.saved, Saved::n, H, j)), ghn = A(slot(r.saved, Saved::gh_n, H, j));
    const A dh = A(r.dh[j]);
    const A dn = dh * (A(1) - z) * (A(1) - n * n);
    const A dz = dh * (A(r.h_prev[j]) - n) * z * (A(1) - z);
    const A dr = dn * ghn * rg * (A(1) - rg);
    gate(r.dgi, Gate::r, H, j) = T(dr);
    gate(r.dgi, Gate::z, H, j) = T(dz);
    gate(r.dgi, Gate::n, H, j) = T(dn);
    gate(r.dgh, Gate::r, H, j) = T(dr);
    gate(r.dgh, Gate::z, H, j) = T(dz);
    gate(r.dgh, Gate::n, H, j) = T(dn * rg);
    r.dh_prev[j] = T(dh * z);
  }
};

}  // namespace fastrnn
