// THE cell maths: the pointwise forward and backward step of every cell (RNN tanh/ReLU, LSTM, GRU),
// written once for host and device. A cell sees one batch row at one time step and one hidden
// unit j; it never sees a GEMM, a time loop, a direction or a sequence length (that is the layer's
// job, csrc/cpu/layer.h and cuda/). Gate order and equations are PyTorch's (DESIGN.md):
//   LSTM  i,f,g,o:  c' = f*c + i*g,  h' = o*tanh(c')
//   GRU   r,z,n:    n = tanh(gi_n + r*gh_n),  h' = (1-z)*n + z*h      (gh_n includes b_hn)
//   RNN:            h' = tanh|relu(gi + gh)
// gi = W_ih x + b_ih and gh = W_hh h + b_hh arrive precomputed, gate g of unit j at g*ld + j of a
// row (ld = H for a whole row; the CPU forward keeps each thread's units together, ld = its share).
#pragma once

#include <cmath>
#include <cstring>

#include "common.h"

namespace fastrnn {

enum class CellKind : int { RnnTanh = 0, RnnRelu = 1, Lstm = 2, Gru = 3 };

// ---- elementary functions ------------------------------------------------------------------
// exp for float on the host is a branch-free polynomial (Cephes-style range reduction, degree-6
// minimax; max rel. error ~2 ulp) so that the compiler vectorises the pointwise loops; libm's
// expf is a call that blocks vectorisation. Inputs are clamped so exp never over/underflows to
// inf/denormals: sigmoid and tanh saturate long before |x| = 87.
FASTRNN_HD float fr_exp(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  x = x < -87.0f ? -87.0f : (x > 87.0f ? 87.0f : x);
  // round to nearest by adding and removing 1.5 * 2^23 (nearbyint is a call GCC will not vectorise)
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // x - n*ln2 in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
#endif
}
FASTRNN_HD double fr_exp(double x) { return ::exp(x); }

template <class A> FASTRNN_HD A sigmoid(A x) { return A(1) / (A(1) + fr_exp(-x)); }

// tanh near zero: an odd polynomial in x, exact in relative terms for every small |x| (denormals,
// and +-0 kept as they are), where (1 - e)/(1 + e) below cancels (it loses all digits by |x| ~ 1e-8
// in float). Cephes's tanhf/tanh minimax fits for |x| < 0.625, max. relative error ~2 ulp in float,
// ~3e-16 in double (a rational fit there).
FASTRNN_HD float tanh_small(float x) {
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  return x + x * (z * p);
}
FASTRNN_HD double tanh_small(double x) {
  const double z = x * x;
  const double p = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z - 1.61468768441708447952e3;
  const double q = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z + 4.84406305325125486048e3;
  return x + x * (z * p / q);
}
// tanh through exp of a non-positive argument (no overflow, vectorisable like fr_exp), and the
// polynomial for |x| < 0.625. Both are computed and one is selected, so the loops stay branch-free
// and vectorised. NaN falls through to the exp formula and stays NaN.
template <class A> FASTRNN_HD A fr_tanh(A x) {
  const A ax = x < A(0) ? -x : x;
  const A e = fr_exp(A(-2) * ax);
  const A t = (A(1) - e) / (A(1) + e);
  const A large = x < A(0) ? -t : t;
  return ax < A(0.625) ? tanh_small(x) : large;
}

// ReLU as torch computes it: NaN stays NaN (a select on `pre > 0` would turn it into 0).
template <class A> FASTRNN_HD A fr_relu(A x) { return x < A(0) ? A(0) : x; }
// Its backward as torch's threshold_backward(dh, h, 0): zero where h <= 0, dh elsewhere, NaN h included.
template <class A> FASTRNN_HD A fr_relu_backward(A h, A dh) { return h <= A(0) ? A(0) : dh; }

// ---- one row of one step -----------------------------------------------------------------
// Pointers point at one batch row. Shapes per row; G = Cell::kGates, S = Cell::kSaved.
template <class T> struct ForwardRow {
  const T* gi;      // [G*ld] W_ih x + b_ih
  const T* gh;      // [G*ld] W_hh h_prev + b_hh
  const T* h_prev;  // [H]
  const T* c_prev;  // [H] (LSTM only)
  T* h;             // [H] new hidden state
  T* c;             // [H] new cell state (LSTM only)
  T* saved;         // [S*H] what backward needs, or nullptr in inference
};

template <class T> struct BackwardRow {
  const T* saved;   // [S*H] from forward
  const T* h_prev;  // [H]
  const T* c_prev;  // [H] (LSTM only)
  const T* h;       // [H] this step's output (RNN needs it for the derivative)
  const T* c;       // [H] this step's cell state (LSTM only)
  const T* dh;      // [H] dL/dh of this step: from the output and from the next step
  const T* dc;      // [H] dL/dc of this step from the next step (LSTM only)
  T* dgi;           // [G*H] dL/d(gi)
  T* dgh;           // [G*H] dL/d(gh); the same buffer as dgi unless Cell::kSplitHiddenGrad
  T* dh_prev;       // [H] the part of dL/dh_prev that bypasses W_hh (GRU's z*dh, else 0)
  T* dc_prev;       // [H] dL/dc_prev (LSTM only)
};

template <bool Relu> struct RnnCell {
  static constexpr int kGates = 1;
  static constexpr int kSaved = 0;  // backward needs only h, which the layer keeps anyway
  static constexpr bool kHasCell = false;
  static constexpr bool kSplitHiddenGrad = false;

  template <class T> FASTRNN_HD static void forward(const ForwardRow<T>& r, int64 j, int64, int64) {
    using A = typename AccType<T>::type;
    const A pre = A(r.gi[j]) + A(r.gh[j]);
    r.h[j] = T(Relu ? fr_relu(pre) : fr_tanh(pre));
  }
  template <class T> FASTRNN_HD static void backward(const BackwardRow<T>& r, int64 j, int64) {
    using A = typename AccType<T>::type;
    const A h = A(r.h[j]), dh = A(r.dh[j]);
    const A dpre = Relu ? fr_relu_backward(h, dh) : dh * (A(1) - h * h);
    r.dgi[j] = T(dpre);
    r.dgh[j] = T(dpre);
    r.dh_prev[j] = T(0);
  }
};

struct LstmCell {
  static constexpr int kGates = 4;
  static constexpr int kSaved = 4;  // i, f, g, o after their activations
  static constexpr bool kHasCell = true;
  static constexpr bool kSplitHiddenGrad = false;

  template <class T> FASTRNN_HD static void forward(const ForwardRow<T>& r, int64 j, int64 ld, int64 H) {
    using A = typename AccType<T>::type;
    const A i = sigmoid(A(r.gi[j]) + A(r.gh[j]));
    const A f = sigmoid(A(r.gi[ld + j]) + A(r.gh[ld + j]));
    const A g = fr_tanh(A(r.gi[2 * ld + j]) + A(r.gh[2 * ld + j]));
    const A o = sigmoid(A(r.gi[3 * ld + j]) + A(r.gh[3 * ld + j]));
    const A c = f * A(r.c_prev[j]) + i * g;
    r.c[j] = T(c);
    r.h[j] = T(o * fr_tanh(c));
    if (r.saved) {
      r.saved[j] = T(i);
      r.saved[H + j] = T(f);
      r.saved[2 * H + j] = T(g);
      r.saved[3 * H + j] = T(o);
    }
  }
  template <class T> FASTRNN_HD static void backward(const BackwardRow<T>& r, int64 j, int64 H) {
    using A = typename AccType<T>::type;
    const A i = A(r.saved[j]), f = A(r.saved[H + j]), g = A(r.saved[2 * H + j]), o = A(r.saved[3 * H + j]);
    const A tc = fr_tanh(A(r.c[j]));
    const A dh = A(r.dh[j]);
    const A dc = A(r.dc[j]) + dh * o * (A(1) - tc * tc);
    r.dgi[j] = T(dc * g * i * (A(1) - i));
    r.dgi[H + j] = T(dc * A(r.c_prev[j]) * f * (A(1) - f));
    r.dgi[2 * H + j] = T(dc * i * (A(1) - g * g));
    r.dgi[3 * H + j] = T(dh * tc * o * (A(1) - o));
    r.dc_prev[j] = T(dc * f);
    r.dh_prev[j] = T(0);
  }
};

struct GruCell {
  static constexpr int kGates = 3;
  static constexpr int kSaved = 4;  // r, z, n after their activations, and gh_n (= W_hn h + b_hn)
  static constexpr bool kHasCell = false;
  static constexpr bool kSplitHiddenGrad = true;  // dL/d(gh_n) = dL/d(gi_n) * r

  template <class T> FASTRNN_HD static void forward(const ForwardRow<T>& r, int64 j, int64 ld, int64 H) {
    using A = typename AccType<T>::type;
    const A rg = sigmoid(A(r.gi[j]) + A(r.gh[j]));
    const A z = sigmoid(A(r.gi[ld + j]) + A(r.gh[ld + j]));
    const A ghn = A(r.gh[2 * ld + j]);
    const A n = fr_tanh(A(r.gi[2 * ld + j]) + rg * ghn);
    r.h[j] = T((A(1) - z) * n + z * A(r.h_prev[j]));
    if (r.saved) {
      r.saved[j] = T(rg);
      r.saved[H + j] = T(z);
      r.saved[2 * H + j] = T(n);
      r.saved[3 * H + j] = T(ghn);
    }
  }
  template <class T> FASTRNN_HD static void backward(const BackwardRow<T>& r, int64 j, int64 H) {
    using A = typename AccType<T>::type;
    const A rg = A(r.saved[j]), z = A(r.saved[H + j]), n = A(r.saved[2 * H + j]), ghn = A(r.saved[3 * H + j]);
    const A dh = A(r.dh[j]);
    const A dn = dh * (A(1) - z) * (A(1) - n * n);
    const A dz = dh * (A(r.h_prev[j]) - n) * z * (A(1) - z);
    const A dr = dn * ghn * rg * (A(1) - rg);
    r.dgi[j] = T(dr);
    r.dgi[H + j] = T(dz);
    r.dgi[2 * H + j] = T(dn);
    r.dgh[j] = T(dr);
    r.dgh[H + j] = T(dz);
    r.dgh[2 * H + j] = T(dn * rg);
    r.dh_prev[j] = T(dh * z);
  }
};

// Runtime cell kind -> the cell type, at one switch point (style: flags become template types).
template <class F> decltype(auto) dispatch_cell(CellKind kind, F&& f) {
  switch (kind) {
    case CellKind::RnnTanh: return f(RnnCell<false>{});
    case CellKind::RnnRelu: return f(RnnCell<true>{});
    case CellKind::Lstm: return f(LstmCell{});
    case CellKind::Gru: return f(GruCell{});
  }
  throw ArgumentError("unknown cell kind");
}

}  // namespace fastrnn
