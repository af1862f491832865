// The layer-normalised LSTM and GRU (Ba et al. 2016 in haste's LayerNormLSTM form), as
// specs of the phase loops. LN(v) = (v - mean) / sqrt(var + 1e-5) over a whole row (biased variance,
// no bias inside the norm); the input and the recurrent product are normalised separately over all
// G*H gate values, then gained, then biased:
//   a_ih = LN(W_ih x) * g_ih + b_ih,  a_hh = LN(W_hh h_{t-1}) * g_hh + b_hh                  [G*H]
//   LSTM: i, f, o = sigmoid(a_ih + a_hh), g = tanh(a_ih + a_hh), c' = f*c + i*g (carried as it is),
//         h' = o * tanh(LN(c') * g_c + b_c)                                  (LN over the H units)
//   GRU:  r, z = sigmoid(a_ih + a_hh), n = tanh(a_ih,n + r * a_hh,n), h' = (1-z)*n + z*h
// A row's statistics need every unit of the row while each thread owns a slice of the units, so
// the step runs RowReduction phases (spec.h): the LSTM's is
//   product (no bias) -> RowReduction<0> (moments of W_ih x and W_hh h) -> Pointwise<0> (gates, c')
//   -> RowReduction<1> (moments of c') -> Pointwise<1> (h'),
// the GRU's product -> RowReduction<0> -> Pointwise<0>. Backward reverses it: the pointwise
// backward writes dL/da (before the biases) into dG_i (and the GRU's a_hh part into dG_h), a
// RowReduction's backward sums dL/d(normalised) and its product with the normalised values over the
// row and turns dL/da into the gradient of the un-normalised values, dv = inv_std * (dv^ -
// mean(dv^) - v^ * mean(dv^ v^)), dv^ = dL/da * gain. The gains' and biases' gradients are per-row
// shares (BackwardRow::dunit_params, rows NormRow::*) that the loop adds up over the rows, step
// by step, in an order that does not depend on the thread count. Saved per unit: the activations,
// the normalised products v^ (per gate) and the rows' inverse standard deviations (per unit: each
// thread keeps its own copy, so the reserve layout stays [T, B, S*H]).
#pragma once

#include "cells/gru.h"
#include "cells/spec.h"

namespace fastrnn {

namespace layer_norm_detail {
// W_ih x and W_hh h of the thread's units: G gates x [j_begin, j_end), two passes (exact moments),
// in double; the sums are SIMD reductions (their order is fixed by the build's vector width, not by
// the data or the thread count).
template <class T>
FASTRNN_HD Moments gate_moments(const T* v, int G, int64 ld, int64 j_begin, int64 j_end) {
  double s = 0;
  for (int g = 0; g < G; ++g) {
    const T* row = v + g * ld;
#pragma omp simd reduction(+ : s)
    for (int64 j = j_begin; j < j_end; ++j) s += double(row[j]);
  }
  const double n = double(G) * double(j_end - j_begin), mean = s / n;
  double m2 = 0;
  for (int g = 0; g < G; ++g) {
    const T* row = v + g * ld;
#pragma omp simd reduction(+ : m2)
    for (int64 j = j_begin; j < j_end; ++j) {
      const double d = double(row[j]) - mean;
      m2 += d * d;
    }
  }
  return {n, mean, m2};
}
template <class T> FASTRNN_HD typename AccType<T>::type at(const T* p, int64 i) {
  using A = typename AccType<T>::type;
  return p ? A(p[i]) : A(0);
}
}  // namespace layer_norm_detail

// What both layer-normalised cells declare on top of their base cell's gates and states.
template <int G, bool Lstm> struct LayerNormParams {
  static constexpr ParamDecl kList[8] = {kGateParams[0], kGateParams[1], kGateParams[2], kGateParams[3],
                                         {"ln_weight_ih", Dim::GateRows, Dim::One, false},
                                         {"ln_weight_hh", Dim::GateRows, Dim::One, false},
                                         {"ln_weight_c", Dim::Units, Dim::One, false},
                                         {"ln_bias_c", Dim::Units, Dim::One, false}};
  static constexpr int kCount = Lstm ? 8 : 6;
  // the rows [kNormRows, H] of a backward row's parameter-gradient shares
  struct NormRow {
    enum : int { g_ih = 0, g_hh = G, b_ih = 2 * G, b_hh = 3 * G, g_c = 4 * G, b_c = 4 * G + 1, count = Lstm ? 4 * G + 2 : 4 * G };
  };
};

// The products' row norm, forward: stats = (mean_ih, inv_ih, mean_hh, inv_hh); gate k of unit j
// normalised (v^_ih, v^_hh) and a_ih + a_hh (gains, then biases).
template <class T> struct ProductNorm {
  using A = typename AccType<T>::type;
  A v_ih, v_hh, a_ih, a_hh;
  FASTRNN_HD ProductNorm(const ForwardRow<T>& r, int k, int64 j, int64 ld, int64 H) {
    using layer_norm_detail::at;
    const NormParams<T>& p = *r.norm;
    v_ih = (A(gate(r.gi, k, ld, j)) - A(r.stats[0])) * A(r.stats[1]);
    v_hh = (A(gate(r.gh, k, ld, j)) - A(r.stats[2])) * A(r.stats[3]);
    a_ih = v_ih * A(p.g_ih[k * H + j]) + at(p.b_ih, k * H + j);
    a_hh = v_hh * A(p.g_hh[k * H + j]) + at(p.b_hh, k * H + j);
  }
};

// The products' row norm, backward, for both cells: sums over the row of dv^ and dv^ v^ for each of
// the two products (s[0..1]: ih, s[2..3]: hh), from dL/da_ih in dG_i and dL/da_hh in `dhh` (dG_i
// again for the LSTM, whose a_ih and a_hh enter as their sum); then dG_i, dG_h = the un-normalised
// products' gradients and the gains' and biases' shares.
template <class Cell, class T>
FASTRNN_HD void product_norm_sums(const BackwardRow<T>& r, const T* dhh, int64 j_begin, int64 j_end, int64 H,
                                         double* s) {
  const NormParams<T>& p = *r.norm;
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (int k = 0; k < Cell::kGates; ++k) {
    const T *da_i = r.dgi + k * H, *da_h = dhh + k * H, *g_i = p.g_ih + k * H, *g_h = p.g_hh + k * H;
    const T *v_i = r.saved + (Cell::Saved::v_ih + k) * H, *v_h = r.saved + (Cell::Saved::v_hh + k) * H;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64 j = j_begin; j < j_end; ++j) {
      const double dvi = double(da_i[j]) * double(g_i[j]);
      const double dvh = double(da_h[j]) * double(g_h[j]);
      s0 += dvi;
      s1 += dvi * double(v_i[j]);
      s2 += dvh;
      s3 += dvh * double(v_h[j]);
    }
  }
  s[0] += s0;
  s[1] += s1;
  s[2] += s2;
  s[3] += s3;
}
template <class Cell, class T> FASTRNN_HD void product_norm_backward(const BackwardRow<T>& r, bool split, int64 j, int64 H) {
  using A = typename AccType<T>::type;
  using Row = typename Cell::NormRow;
  const NormParams<T>& p = *r.norm;
  constexpr int G = Cell::kGates;
  const A N = A(G) * A(H);
  const A m_i = A(r.stats[0]) / N, mv_i = A(r.stats[1]) / N, m_h = A(r.stats[2]) / N, mv_h = A(r.stats[3]) / N;
  const A inv_ih = A(slot(r.saved, Cell::Saved::inv_ih, H, j)), inv_hh = A(slot(r.saved, Cell::Saved::inv_hh, H, j));
  for (int k = 0; k < G; ++k) {
    const A da_i = A(gate(r.dgi, k, H, j)), da_h = split ? A(gate(r.dgh, k, H, j)) : da_i;
    const A v_i = A(slot(r.saved, Cell::Saved::v_ih + k, H, j)), v_h = A(slot(r.saved, Cell::Saved::v_hh + k, H, j));
    T* share = r.dunit_params;
    share[(Row::g_ih + k) * H + j] = T(da_i * v_i);
    share[(Row::g_hh + k) * H + j] = T(da_h * v_h);
    share[(Row::b_ih + k) * H + j] = T(da_i);
    share[(Row::b_hh + k) * H + j] = T(da_h);
    gate(r.dgi, k, H, j) = T(inv_ih * (da_i * A(p.g_ih[k * H + j]) - m_i - v_i * mv_i));
    gate(r.dgh, k, H, j) = T(inv_hh * (da_h * A(p.g_hh[k * H + j]) - m_h - v_h * mv_h));
  }
}

struct LstmLayerNorm : LayerNormParams<4, true> {
  static constexpr CellKind kKind = CellKind::Lstm;
  static constexpr const char* kName = "lstm";
  static constexpr bool kIsVariant = true;
  static constexpr bool kLayerNorm = true;

  struct Gate {
    enum : int { i, f, g, o, count };
  };
  static constexpr int kGates = Gate::count;
  static constexpr int kStates = 2;
  static constexpr StateDecl kStateDecls[kStates] = {{"h", Width::Hidden}, {"c", Width::Hidden}};
  static constexpr const ParamDecl* kParams = kList;
  static constexpr int kNumParams = kCount, kNormParams = 4;
  static constexpr int kUnitRows = 0;
  static constexpr int kNormRows = NormRow::count;

  struct Saved {
    enum : int { i, f, g, o, v_ih, v_hh = v_ih + 4, c_hat = v_hh + 4, inv_ih, inv_hh, inv_c, count };
  };
  static constexpr int kSaved = Saved::count;
  static constexpr int kBetween = 1;      // o, from Pointwise<0> to Pointwise<1>
  static constexpr int kBetweenGrad = 1;  // dL/d(c^), then dL/dc' through the norm

  using Step = Phases<RecurrentProduct<Operand::H, Weight::Hh, true>, RowReduction<0>, Pointwise<0>, RowReduction<1>,
                      Pointwise<1>>;
  static constexpr int reduced(RowReduction<0>) { return 2; }  // W_ih x, W_hh h
  static constexpr int reduced(RowReduction<1>) { return 1; }  // c'
  static constexpr int reduced_grad(RowReduction<0>) { return 4; }
  static constexpr int reduced_grad(RowReduction<1>) { return 2; }

  template <class T>
  FASTRNN_HD static void row_moments(const ForwardRow<T>& r, int64 j_begin, int64 j_end, int64 ld, int64, RowReduction<0>,
                                     Moments* m) {
    m[0] = layer_norm_detail::gate_moments(r.gi, kGates, ld, j_begin, j_end);
    m[1] = layer_norm_detail::gate_moments(r.gh, kGates, ld, j_begin, j_end);
  }
  template <class T>
  FASTRNN_HD static void row_moments(const ForwardRow<T>& r, int64 j_begin, int64 j_end, int64, int64, RowReduction<1>,
                                     Moments* m) {
    m[0] = layer_norm_detail::gate_moments(r.c, 1, 0, j_begin, j_end);
  }

  // Pointwise<0>: the normalised products, the gates and c'
  template <class T> FASTRNN_HD static void forward(const ForwardRow<T>& r, int64 j, int64 ld, int64 H) {
    using A = typename AccType<T>::type;
    A act[kGates];
    for (int k = 0; k < kGates; ++k) {
      const ProductNorm<T> v(r, k, j, ld, H);
      act[k] = v.a_ih + v.a_hh;
      if (r.saved) {
        slot(r.saved, Saved::v_ih + k, H, j) = T(v.v_ih);
        slot(r.saved, Saved::v_hh + k, H, j) = T(v.v_hh);
      }
    }
    const A i = sigmoid(act[Gate::i]), f = sigmoid(act[Gate::f]), g = fr_tanh(act[Gate::g]), o = sigmoid(act[Gate::o]);
    r.c[j] = T(f * A(r.c_prev[j]) + i * g);
    gate(r.between, 0, ld, j) = T(o);
    if (r.saved) {
      slot(r.saved, Saved::i, H, j) = T(i);
      slot(r.saved, Saved::f, H, j) = T(f);
      slot(r.saved, Saved::g, H, j) = T(g);
      slot(r.saved, Saved::o, H, j) = T(o);
      slot(r.saved, Saved::inv_ih, H, j) = T(r.stats[1]);
      slot(r.saved, Saved::inv_hh, H, j) = T(r.stats[3]);
    }
  }
  // Pointwise<1>: h' from the normalised c'
  template <class T>
  FASTRNN_HD static void forward(const ForwardRow<T>& r, int64 j, int64 ld, int64 H, Pointwise<1>) {
    using A = typename AccType<T>::type;
    const A c_hat = (A(r.c[j]) - A(r.stats[0])) * A(r.stats[1]);
    const A o = A(gate(r.between, 0, ld, j));
    r.h[j] = T(o * fr_tanh(c_hat * A(r.norm->g_c[j]) + A(r.norm->b_c[j])));
    if (r.saved) {
      slot(r.saved, Saved::c_hat, H, j) = T(c_hat);
      slot(r.saved, Saved::inv_c, H, j) = T(r.stats[1]);
    }
  }

  // Pointwise<1>'s backward: dL/da_o, the cell norm's gain and bias shares, dL/d(c^) into between
  template <class T> FASTRNN_HD static void backward(const BackwardRow<T>& r, int64 j, int64 H, Pointwise<1>) {
    using A = typename AccType<T>::type;
    const A o = A(slot(r.saved, Saved::o, H, j)), c_hat = A(slot(r.saved, Saved::c_hat, H, j));
    const A gc = A(r.norm->g_c[j]);
    const A tc = fr_tanh(c_hat * gc + A(r.norm->b_c[j]));
    const A dh = A(r.dh[j]);
    const A d_pre = dh * o * (A(1) - tc * tc);  // dL/d(LN(c') g_c + b_c)
    gate(r.dgi, Gate::o, H, j) = T(dh * tc * o * (A(1) - o));
    r.dunit_params[NormRow::g_c * H + j] = T(d_pre * c_hat);
    r.dunit_params[NormRow::b_c * H + j] = T(d_pre);
    r.between[j] = T(d_pre * gc);
    r.dh_prev[j] = T(0);
  }
  // RowReduction<1>'s backward: sums of dL/d(c^) and dL/d(c^) c^; then dL/dc' through the norm
  template <class T>
  FASTRNN_HD static void row_sums(const BackwardRow<T>& r, int64 j_begin, int64 j_end, int64 H, RowReduction<1>,
                                  double* s) {
    double s0 = 0, s1 = 0;
    const T* c_hat = r.saved + Saved::c_hat * H;
#pragma omp simd reduction(+ : s0, s1)
    for (int64 j = j_begin; j < j_end; ++j) {
      const double d = double(r.between[j]);
      s0 += d;
      s1 += d * double(c_hat[j]);
    }
    s[0] += s0;
    s[1] += s1;
  }
  template <class T> FASTRNN_HD static void backward(const BackwardRow<T>& r, int64 j, int64 H, RowReduction<1>) {
    using A = typename AccType<T>::type;
    const A inv = A(slot(r.saved, Saved::inv_c, H, j)), c_hat = A(slot(r.saved, Saved::c_hat, H, j));
    const A m = A(r.stats[0]) / A(H), mv = A(r.stats[1]) / A(H);
    r.between[j] = T(inv * (A(r.between[j]) - m - c_hat * mv));
  }
  // Pointwise<0>'s backward: dL/dc' (the next step's, through h's norm, clamped by grad_clip), the
  // gates' dL/da (i, f, g; o came from Pointwise<1>) into dG_i, dL/dc_prev
  template <class T> FASTRNN_HD static void backward(const BackwardRow<T>& r, int64 j, int64 H) {
    using A = typename AccType<T>::type;
    const A i = A(slot(r.saved, Saved::i, H, j)), f = A(slot(r.saved, Saved::f, H, j));
    const A g = A(slot(r.saved, Saved::g, H, j));
    const A dc = clamp_if(A(r.dc[j]) + A(r.between[j]), A(r.dc_clip));
    gate(r.dgi, Gate::i, H, j) = T(dc * g * i * (A(1) - i));
    gate(r.dgi, Gate::f, H, j) = T(dc * A(r.c_prev[j]) * f * (A(1) - f));
    gate(r.dgi, Gate::g, H, j) = T(dc * i * (A(1) - g * g));
    r.dc_prev[j] = T(dc * f);
  }
  // RowReduction<0>'s backward: the products' norm (a_ih and a_hh have the same dL/da)
  template <class T>
  FASTRNN_HD static void row_sums(const BackwardRow<T>& r, int64 j_begin, int64 j_end, int64 H, RowReduction<0>,
                                  double* s) {
    product_norm_sums<LstmLayerNorm>(r, r.dgi, j_begin, j_end, H, s);
  }
  template <class T> FASTRNN_HD static void backward(const BackwardRow<T>& r, int64 j, int64 H, RowReduction<0>) {
    product_norm_backward<LstmLayerNorm>(r, false, j, H);
  }
};

struct GruLayerNorm : LayerNormParams<3, false> {
  static constexpr CellKind kKind = CellKind::Gru;
  static constexpr const char* kName = "gru";
  static constexpr bool kIsVariant = true;
  static constexpr bool kLayerNorm = true;

  struct Gate {
    enum : int { r, z, n, count };
  };
  static constexpr int kGates = Gate::count;
  static constexpr int kStates = 1;
  static constexpr StateDecl kStateDecls[kStates] = {{"h", Width::Hidden}};
  static constexpr const ParamDecl* kParams = kList;
  static constexpr int kNumParams = kCount, kNormParams = 2;
  static constexpr int kUnitRows = 0;
  static constexpr int kNormRows = NormRow::count;

  // r, z, n, a_hh,n (= LN(W_hn h) g_hn + b_hn, which r multiplies), v^ per gate, inverse std devs
  struct Saved {
    enum : int { r, z, n, a_hn, v_ih, v_hh = v_ih + 3, inv_ih = v_hh + 3, inv_hh, count };
  };
  static constexpr int kSaved = Saved::count;

  using Step = Phases<RecurrentProduct<Operand::H, Weight::Hh, true>, RowReduction<0>, Pointwise<0>>;
  static constexpr int reduced(RowReduction<0>) { return 2; }
  static constexpr int reduced_grad(RowReduction<0>) { return 4; }

  template <class T>
  FASTRNN_HD static void row_moments(const ForwardRow<T>& r, int64 j_begin, int64 j_end, int64 ld, int64, RowReduction<0>,
                                     Moments* m) {
    m[0] = layer_norm_detail::gate_moments(r.gi, kGates, ld, j_begin, j_end);
    m[1] = layer_norm_detail::gate_moments(r.gh, kGates, ld, j_begin, j_end);
  }

  template <class T> FASTRNN_HD static void forward(const ForwardRow<T>& r, int64 j, int64 ld, int64 H) {
    using A = typename AccType<T>::type;
    const ProductNorm<T> vr(r, Gate::r, j, ld, H), vz(r, Gate::z, j, ld, H), vn(r, Gate::n, j, ld, H);
    const A rg = sigmoid(vr.a_ih + vr.a_hh), z = sigmoid(vz.a_ih + vz.a_hh);
    const A n = fr_tanh(vn.a_ih + rg * vn.a_hh);
    r.h[j] = T((A(1) - z) * n + z * A(r.h_prev[j]));
    if (r.saved) {
      slot(r.saved, Saved::r, H, j) = T(rg);
      slot(r.saved, Saved::z, H, j) = T(z);
      slot(r.saved, Saved::n, H, j) = T(n);
      slot(r.saved, Saved::a_hn, H, j) = T(vn.a_hh);
      slot(r.saved, Saved::v_ih + Gate::r, H, j) = T(vr.v_ih);
      slot(r.saved, Saved::v_hh + Gate::r, H, j) = T(vr.v_hh);
      slot(r.saved, Saved::v_ih + Gate::z, H, j) = T(vz.v_ih);
      slot(r.saved, Saved::v_hh + Gate::z, H, j) = T(vz.v_hh);
      slot(r.saved, Saved::v_ih + Gate::n, H, j) = T(vn.v_ih);
      slot(r.saved, Saved::v_hh + Gate::n, H, j) = T(vn.v_hh);
      slot(r.saved, Saved::inv_ih, H, j) = T(r.stats[1]);
      slot(r.saved, Saved::inv_hh, H, j) = T(r.stats[3]);
    }
  }
  // dL/da_ih into dG_i, dL/da_hh into dG_h (they differ in n: a_hh,n enters scaled by r)
  template <class T> FASTRNN_HD static void backward(const BackwardRow<T>& r, int64 j, int64 H) {
    using A = typename AccType<T>::type;
    const A rg = A(slot(r.saved, Saved::r, H, j)), z = A(slot(r.saved, Saved::z, H, j));
    const A n = A(slot(r.saved, Saved::n, H, j)), a_hn = A(slot(r.saved, Saved::a_hn, H, j));
    GruCell::gru_reset_after_backward(r, j, H, rg, z, n, a_hn);
  }
  template <class T>
  FASTRNN_HD static void row_sums(const BackwardRow<T>& r, int64 j_begin, int64 j_end, int64 H, RowReduction<0>,
                                  double* s) {
    product_norm_sums<GruLayerNorm>(r, r.dgh, j_begin, j_end, H, s);
  }
  template <class T> FASTRNN_HD static void backward(const BackwardRow<T>& r, int64 j, int64 H, RowReduction<0>) {
    product_norm_backward<GruLayerNorm>(r, true, j, H);
  }
};

}  // namespace fastrnn
