// The GRU's spec (PyTorch's gate order r, z, n and its reset-after form; see spec.h):
//   r, z = sigmoid(gi + gh),  n = tanh(gi_n + r*gh_n),  h' = (1-z)*n + z*h      (gh_n includes b_hn)
// One state (h). The product's gradient differs from the input's (dL/d(gh_n) = dL/d(gi_n) * r), so
// its RecurrentProduct declares kSeparateGrad; forward saves r, z, n and gh_n per unit.
#pragma once

#include "cells/spec.h"

namespace fastrnn {

// What both GRU specs declare alike: PyTorch's gate blocks (r, z, n), one state (h), the four
// gate parameters.
struct GruDeclarations {
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
};

struct GruCell : GruDeclarations {
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
    gru_reset_after_backward(r, j, H, A(slot(r.saved, Saved::r, H, j)), A(slot(r.saved, Saved::z, H, j)),
                             A(slot(r.saved, Saved::n, H, j)), A(slot(r.saved, Saved::gh_n, H, j)));
  }

  // The reset-after GRU's pointwise backward of unit j from its saved r, z, n and the recurrent n
  // term that r multiplied (gh_n here; the layer-normalised GRU's gained a_hh,n): dL/d(gates) into
  // dG_i, the same into dG_h except n (scaled by r), and the z*dh bypass into dh_prev.
  template <class T, class A>
  FASTRNN_HD static void gru_reset_after_backward(const BackwardRow<T>& r, int64 j, int64 H, A rg, A z, A n, A hn) {
    const A dh = A(r.dh[j]);
    const A dn = dh * (A(1) - z) * (A(1) - n * n);
    const A dz = dh * (A(r.h_prev[j]) - n) * z * (A(1) - z);
    const A dr = dn * hn * rg * (A(1) - rg);
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

namespace fastrnn {

// ---- the reset-before GRU (reset_after=False; Cho et al. 2014, Keras reset_after=False,
// ONNX linear_before_reset=0, oneDNN's vanilla GRU). Gate blocks r, z, n and parameters as PyTorch's:
//   r = sigmoid(gi_r + gh_r),  z = sigmoid(gi_z + gh_z)          gh_{r,z} = W_h{r,z} h_{t-1} + b_h{r,z}
//   n = tanh(gi_n + W_hn (r*h_{t-1}) + b_hn),  h' = (1-z)*n + z*h_{t-1}
// The n product needs r first, so the step has two products and two pointwise phases, as oneDNN
// builds it: part 1 (r, z blocks of W_hh on h) -> Pointwise<0> (r, z; r*h into the ResetH operand)
// -> Barrier (the n product reads every thread's units of r*h) -> part 2 (n block on r*h) ->
// Pointwise<1> (n, h'). dL/d(gh) equals dL/d(gi) in every block (gh_n enters unscaled), so no
// product keeps its gradient apart; dW_hh's n rows read r*h_{t-1}, which backward's Pointwise<0>
// recomputes (same arithmetic as forward) into BackwardRow::reset_h. Backward (phases reversed):
// Pointwise<1> (dn, dz, the z*dh bypass), part 2's backward (dL/d(r*h) = dG_n W_hn), Pointwise<0>
// (dr = dL/d(r*h) * h * r(1-r), dh_prev += dL/d(r*h) * r), part 1's backward (dh_prev += dG_rz W_hrz).
// Saved per unit: r, z, n. Between the phases of a step: r and z (ForwardRow::between).
struct GruResetBefore : GruDeclarations {
  static constexpr bool kIsVariant = true;

  static constexpr int kUnitRows = 0;

  struct Saved {
    enum : int { r, z, n, count };
  };
  static constexpr int kSaved = Saved::count;
  static constexpr const char* kSavedNames[kSaved] = {"r", "z", "n"};

  // what Pointwise<0> leaves for Pointwise<1>: r and z of the thread's units
  struct Between {
    enum : int { r, z, count };
  };
  static constexpr int kBetween = Between::count;

  using Step = Phases<RecurrentProduct<Operand::H, Weight::Hh, false, Gate::r, Gate::n>, Pointwise<0>, Barrier,
                      RecurrentProduct<Operand::ResetH, Weight::Hh, false, Gate::n, Gate::count>, Pointwise<1>>;

  // Pointwise<0>: r, z, and the operand r*h_{t-1} of the n product
  template <class T> FASTRNN_HD static void forward(const ForwardRow<T>& r, int64 j, int64 ld, int64 H) {
    using A = typename AccType<T>::type;
    const A rg = sigmoid(A(gate(r.gi, Gate::r, ld, j)) + A(gate(r.gh, Gate::r, ld, j)));
    const A z = sigmoid(A(gate(r.gi, Gate::z, ld, j)) + A(gate(r.gh, Gate::z, ld, j)));
    gate(r.between, Between::r, ld, j) = T(rg);
    gate(r.between, Between::z, ld, j) = T(z);
    r.reset_h[j] = T(rg * A(r.h_prev[j]));
    if (r.saved) {
      slot(r.saved, Saved::r, H, j) = T(rg);
      slot(r.saved, Saved::z, H, j) = T(z);
    }
  }
  // Pointwise<1>: n from the n product of r*h, and the new state
  template <class T>
  FASTRNN_HD static void forward(const ForwardRow<T>& r, int64 j, int64 ld, int64 H, Pointwise<1>) {
    using A = typename AccType<T>::type;
    const A z = A(gate(r.between, Between::z, ld, j));
    const A n = fr_tanh(A(gate(r.gi, Gate::n, ld, j)) + A(gate(r.gh, Gate::n, ld, j)));
    r.h[j] = T((A(1) - z) * n + z * A(r.h_prev[j]));
    if (r.saved) slot(r.saved, Saved::n, H, j) = T(n);
  }

  // Pointwise<1>'s backward: the n and z blocks, and dL/dh_prev's bypass z*dh
  template <class T> FASTRNN_HD static void backward(const BackwardRow<T>& r, int64 j, int64 H, Pointwise<1>) {
    using A = typename AccType<T>::type;
    const A z = A(slot(r.saved, Saved::z, H, j)), n = A(slot(r.saved, Saved::n, H, j));
    const A dh = A(r.dh[j]);
    const A dn = dh * (A(1) - z) * (A(1) - n * n);
    const A dz = dh * (A(r.h_prev[j]) - n) * z * (A(1) - z);
    gate(r.dgi, Gate::z, H, j) = T(dz);
    gate(r.dgi, Gate::n, H, j) = T(dn);
    r.dh_prev[j] = T(dh * z);
  }
  // Pointwise<0>'s backward: the r block from dL/d(r*h), r's share of dL/dh_prev, r*h for dW_hn
  template <class T> FASTRNN_HD static void backward(const BackwardRow<T>& r, int64 j, int64 H) {
    using A = typename AccType<T>::type;
    const A rg = A(slot(r.saved, Saved::r, H, j));
    const A hp = A(r.h_prev[j]), drh = A(r.dreset_h[j]);
    gate(r.dgi, Gate::r, H, j) = T(drh * hp * rg * (A(1) - rg));
    r.dh_prev[j] = T(A(r.dh_prev[j]) + drh * rg);
    r.reset_h[j] = T(rg * hp);
  }
};

}  // namespace fastrnn
