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
  static constexpr int kUnitRows = 0;  // no per-unit parameters
  static constexpr bool kIsVariant = false;

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

namespace fastrnn {

// ---- the LSTM variants (peephole, coupled input-forget gate, cell clipping) ----------
// One spec for the combinations, chosen by dispatch_cell (cells/all.h) from CellOptions; the
// defaults run LstmCell above, untouched. With a = gi + gh (W_ih x + b_ih + W_hh h_prev + b_hh):
//   i = sigmoid(a_i + p_i*c_prev)   (coupled: i = 1 - f, no a_i block)
//   f = sigmoid(a_f + p_f*c_prev),  g = tanh(a_g)
//   c = clamp(f*c_prev + i*g, -C, C)   (no clamp when cell_clip == 0; the clamped c is carried)
//   o = sigmoid(a_o + p_o*c),  h = o*tanh(c)
// p = weight_ch [U, H]: rows (i, f, o) (U = 3), coupled (f, o) (U = 2); absent (p = 0) without
// peepholes. Gate blocks (i, f, g, o), coupled (f, g, o). Saved per unit: i, f, g, o and `keep`
// (1 where the clamp passed c through: the clamp's derivative, torch.clamp's at the bounds).
template <bool Peephole, bool Coupled> struct LstmVariant {
  static constexpr CellKind kKind = CellKind::Lstm;
  static constexpr const char* kName = "lstm";
  static constexpr bool kIsVariant = true;

  struct Gate {
    enum : int { i = Coupled ? -1 : 0, f = Coupled ? 0 : 1, g = f + 1, o = f + 2, count = f + 3 };
  };
  static constexpr int kGates = Gate::count;

  static constexpr int kStates = 2;
  static constexpr StateDecl kStateDecls[kStates] = {{"h", Width::Hidden}, {"c", Width::Hidden}};

  // PyTorch's four, then the peepholes w_ch [U, H] (fastrnn.nn's weight_ch_l{k}{suffix})
  static constexpr ParamDecl kParamList[5] = {kGateParams[0], kGateParams[1], kGateParams[2], kGateParams[3],
                                             {"w_ch", Dim::UnitRows, Dim::Units, false}};
  static constexpr const ParamDecl* kParams = kParamList;
  static constexpr int kNumParams = Peephole ? 5 : 4;
  // rows of w_ch: (i, f, o), coupled (f, o)
  struct Peep {
    enum : int { i = Coupled ? -1 : 0, f = Coupled ? 0 : 1, o = f + 1, count = f + 2 };
  };
  static constexpr int kUnitRows = Peephole ? int(Peep::count) : 0;

  struct Saved {
    enum : int { i, f, g, o, keep, count };
  };
  static constexpr int kSaved = Saved::count;
  static constexpr const char* kSavedNames[kSaved] = {"i", "f", "g", "o", "keep"};

  using Step = Phases<RecurrentProduct<Operand::H, Weight::Hh, false>, Pointwise<0>>;

  // peephole row `row` of unit j (0 without peepholes)
  template <class T> FASTRNN_HD static typename AccType<T>::type peep(const T* p, int row, int64 H, int64 j) {
    using A = typename AccType<T>::type;
    if constexpr (Peephole) return A(p[row * H + j]);
    else return A(0);
  }

  template <class T> FASTRNN_HD static void forward(const ForwardRow<T>& r, int64 j, int64 ld, int64 H) {
    using A = typename AccType<T>::type;
    const A cp = A(r.c_prev[j]);
    auto pre = [&](int g) { return A(gate(r.gi, g, ld, j)) + A(gate(r.gh, g, ld, j)); };
    A i, f;
    if constexpr (Coupled) {
      f = sigmoid(Peephole ? pre(Gate::f) + peep(r.unit_params, Peep::f, H, j) * cp : pre(Gate::f));
      i = A(1) - f;
    } else {
      i = sigmoid(Peephole ? pre(Gate::i) + peep(r.unit_params, Peep::i, H, j) * cp : pre(Gate::i));
      f = sigmoid(Peephole ? pre(Gate::f) + peep(r.unit_params, Peep::f, H, j) * cp : pre(Gate::f));
    }
    const A g = fr_tanh(pre(Gate::g));
    const A c_raw = f * cp + i * g;
    const A C = A(r.cell_clip);
    const bool clip = r.cell_clip > 0;
    const A c = !clip ? c_raw : (c_raw < -C ? -C : (c_raw > C ? C : c_raw));
    const A keep = (!clip || (c_raw >= -C && c_raw <= C)) ? A(1) : A(0);
    const A o = sigmoid(Peephole ? pre(Gate::o) + peep(r.unit_params, Peep::o, H, j) * c : pre(Gate::o));
    r.c[j] = T(c);
    r.h[j] = T(o * fr_tanh(c));
    if (r.saved) {
      slot(r.saved, Saved::i, H, j) = T(i);
      slot(r.saved, Saved::f, H, j) = T(f);
      slot(r.saved, Saved::g, H, j) = T(g);
      slot(r.saved, Saved::o, H, j) = T(o);
      slot(r.saved, Saved::keep, H, j) = T(keep);
    }
  }

  template <class T> FASTRNN_HD static void backward(const BackwardRow<T>& r, int64 j, int64 H) {
    using A = typename AccType<T>::type;
    const A i = A(slot(r.saved, Saved::i, H, j)), f = A(slot(r.saved, Saved::f, H, j));
    const A g = A(slot(r.saved, Saved::g, H, j)), o = A(slot(r.saved, Saved::o, H, j));
    const A keep = A(slot(r.saved, Saved::keep, H, j));
    const A c = A(r.c[j]), cp = A(r.c_prev[j]);
    const A tc = fr_tanh(c);
    const A dh = A(r.dh[j]);
    const A da_o = dh * tc * o * (A(1) - o);
    // all paths into c: the next step, h through tanh, and o's peephole; that total is what the
    // grad_clip modifier clamps (the carried c is the clamped one, so before the clamp's derivative)
    A dc = A(r.dc[j]) + dh * o * (A(1) - tc * tc);
    if constexpr (Peephole) dc = dc + da_o * peep(r.unit_params, Peep::o, H, j);
    dc = clamp_if(dc, A(r.dc_clip));
    const A dc_raw = dc * keep;  // through the clamp
    A da_f, dcp = dc_raw * f;
    if constexpr (Coupled) {
      da_f = dc_raw * (cp - g) * f * (A(1) - f);  // c = f*c_prev + (1-f)*g
      gate(r.dgi, Gate::g, H, j) = T(dc_raw * (A(1) - f) * (A(1) - g * g));
    } else {
      const A da_i = dc_raw * g * i * (A(1) - i);
      da_f = dc_raw * cp * f * (A(1) - f);
      gate(r.dgi, Gate::i, H, j) = T(da_i);
      gate(r.dgi, Gate::g, H, j) = T(dc_raw * i * (A(1) - g * g));
      if constexpr (Peephole) {
        dcp = dcp + da_i * peep(r.unit_params, Peep::i, H, j);
        r.dunit_params[Peep::i * H + j] = T(da_i * cp);
      }
    }
    gate(r.dgi, Gate::f, H, j) = T(da_f);
    gate(r.dgi, Gate::o, H, j) = T(da_o);
    if constexpr (Peephole) {
      dcp = dcp + da_f * peep(r.unit_params, Peep::f, H, j);
      r.dunit_params[Peep::f * H + j] = T(da_f * cp);
      r.dunit_params[Peep::o * H + j] = T(da_o * c);
    }
    r.dc_prev[j] = T(dcp);
    r.dh_prev[j] = T(0);
  }
};

}  // namespace fastrnn
