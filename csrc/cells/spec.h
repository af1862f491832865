// The common machinery of the cell specs (csrc/cells/*.h) and the elementary functions they compute
// with, written once for host and device (FASTRNN_HD). A cell is a SPEC: a struct that declares its
// gate slots, its states and their widths, its parameters, what it saves per unit for backward (named
// slots), and its time step as a compile-time list of PHASES, with the pointwise forward and backward
// side by side. The layer loops (csrc/cpu/layer_kernels.inc, cuda/layer.cuh) never name a cell: they
// read these declarations (`Cell::kStates`, `Cell::kSaved`, the product phase's `kSeparateGrad`) and
// run the phases. csrc/cells/all.h lists the cells; docs/ARCHITECTURE.md draws the picture.
//
// A spec, field by field (LstmCell in lstm.h is the worked example):
//   kKind, kName            CellKind and the Python name ("lstm")
//   Gate::{i, f, ...}       gate slots in PyTorch's order; Gate::count = kGates; kGateNames
//   kStates, kStateDecls    the recurrent states: h (always first: the output and the product's input),
//                           then carried states (LSTM: c); each with its width (Width::Hidden = H)
//   kParams, kNumParams     the parameters (ParamDecl: name, shape rule, bias or not), matrices and
//                           per-unit vectors; param_shape() (rnn.h) turns a rule into a shape, once
//   Saved::{...}            what forward saves per unit and row, Saved::count = kSaved; kSavedNames
//   Step                    Phases<...> in forward order; backward runs them in reverse
//   forward(ForwardRow, j, ld, H), backward(BackwardRow, j, H)   the Pointwise phase of unit j
//
// How the coming variants plug in, file by file (docs/ARCHITECTURE.md has the longer version; none
// of them touches csrc/stack.h, the reserve layout code or the bindings beyond the cell table):
//   cell variants (each a spec, or a template parameter of one):
//   - peepholes: cells/lstm.h, LstmCell<Peephole>: a per-unit parameter weight_ch [3, H] declared as
//     ParamDecl{"w_ch", Dim::Units, ...} in kParams; ForwardRow/BackwardRow gain `unit_params`
//     (const T*) and `dunit_params` (T*, per-row partial gradients) that the pointwise phase reads and
//     writes; the loops (cpu/layer_kernels.inc, cuda/layer.cuh) sum dunit_params over rows after the
//     time loop like db (column_sums). o sees c_t: it stays inside the one Pointwise phase.
//   - coupled gates (CIFG): cells/lstm.h, Gate::{f, g, o}, kGates = 3; only the pointwise maths changes.
//   - cell clip: cells/lstm.h, a clip value in a per-call cell-options struct passed to forward/
//     backward next to the row (the loops pass it through untouched).
//   - reset-before GRU (done): cells/gru.h, GruResetBefore with
//       Step = Phases<RecurrentProduct<Operand::H, Weight::Hh, false, r, n> (gates r, z),
//                     Pointwise<0> (r, z; r*h into the ResetH operand), Barrier,
//                     RecurrentProduct<Operand::ResetH, Weight::Hh, false, n, G> (gate n), Pointwise<1> (n, h)>;
//     the CPU loop runs the ResetH operand, products over a gate range and Pointwise<N> for N > 0
//     (overloads taking the phase tag); CUDA refuses it (a split kernel at the Barrier is to come).
//   - layer norm (done): cells/layer_norm.h, LstmLayerNorm / GruLayerNorm: RowReduction<N> phases
//     (moments of W_ih x and W_hh h, and the LSTM's c, over the row) before the pointwise phases
//     that normalise; gains and biases in NormParams with per-row gradient shares; the row
//     statistics saved per unit. The CPU loop runs RowReduction (per-block partials, a barrier, a
//     merge in block order); CUDA refuses it.
//   - projection (proj_size = P): cells/lstm.h, kStateDecls {h: Width::Projection, c: Width::Hidden},
//     a second RecurrentProduct<Operand::M, Weight::Hr, ...> on m = o*tanh(c) (saved), w_hr [P, H] in
//     kParams; the loops and the stack read the state widths from kStateDecls instead of assuming H.
//   - identity-initialised RNN: Python only (initialisation), no spec change.
//   modifiers of every cell (not cells): zoneout, recurrent and weight dropout, gradient
//     clipping, dilation are template switches of the loops (a Modifiers parameter next to Cell, set at
//     one switch point in the stack): zoneout and recurrent dropout mask the state between Pointwise
//     and the next product, clipping clamps the state gradient before the product's backward, weight
//     dropout masks W_hh once per call, dilation changes which step's state a product reads.
//   16-bit types: AccType (common.h, cuda/dtypes.h) already makes every spec compute in
//     float; the CPU loops gain bf16/f16 storage instantiations, no spec changes.
#pragma once

#include <cmath>
#include <cstring>
#include <type_traits>

#include "common.h"

namespace fastrnn {

// The cells' ids as Python passes them (fastrnn.types.CELLS order).
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
// exp for double on the host: Cephes's exp (Pade form after reducing by n*ln2, |r| <= ln2/2; max.
// rel. error ~2e-16), branch-free like the float one, so that the float64 pointwise loops vectorise
// too (libm's exp is a call, and it left the float64 cells' loops scalar). 2^n is applied as two
// factors 2^n1 * 2^n2, each a normal double, so that results below the normal range round to
// denormals and 0 and results above it overflow to inf, as exp does (the clamp keeps |n| <= 1076).
FASTRNN_HD double fr_exp(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  x = x < -746.0 ? -746.0 : (x > 710.0 ? 710.0 : x);
  const double shift = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer (nearbyint is a call)
  const double n = (x * 1.4426950408889634074 + shift) - shift;
  const double r = (x - n * 6.93145751953125e-1) - n * 1.42860682030941723212e-6;  // x - n*ln2 in two parts
  const double rr = r * r;
  const double px = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr + 9.99999999999999999910e-1);
  const double qx = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr + 2.27265548208155028766e-1) * rr +
                    2.00000000000000000009e0;
  const double e = 1.0 + 2.0 * (px / (qx - px));
  // 2^k for an integer-valued k in [-1022, 1023]: k + 1023 lands in the low mantissa bits of
  // (k + 1023 + shift), and shifting those 11 bits into the exponent field gives 2^k.
  const double n1 = (n * 0.5 + shift) - shift, n2 = n - n1;
  const double t1 = n1 + (shift + 1023.0), t2 = n2 + (shift + 1023.0);
  std::uint64_t b1, b2;
  std::memcpy(&b1, &t1, sizeof b1);
  std::memcpy(&b2, &t2, sizeof b2);
  b1 <<= 52;
  b2 <<= 52;
  double s1, s2;
  std::memcpy(&s1, &b1, sizeof s1);
  std::memcpy(&s2, &b2, sizeof s2);
  return e * s1 * s2;
#endif
}

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


// ---- what a spec declares -------------------------------------------------------------------

// The width of a state or a parameter dimension, as a rule on the call's sizes.
enum class Dim : int {
  GateRows,  // G*H: one row per gate and hidden unit
  Input,     // I_l: the layer's input size (I for layer 0, D*H above)
  Hidden,    // H
  Units,     // H, a per-unit vector (peepholes, LN gains)
  UnitRows,  // Cell::kUnitRows: the rows of a per-unit parameter matrix (the LSTM's peepholes: 3 or 2)
  One,       // 1: the second dimension of a vector
};
using Width = Dim;  // a state's width: Dim::Hidden (a projected h would be P wide)

struct StateDecl {
  const char* name;  // "h", "c"
  Width width;
};

// One parameter of a layer and direction; `bias` ones are present only with bias=True.
struct ParamDecl {
  const char* name;  // PyTorch's suffix-free name: "w_ih", "b_hh"
  Dim rows, cols;    // cols == Dim::One for a vector
  bool bias;
};

// The four parameters every cell has today, in PyTorch's order: w_ih [G*H, I_l], w_hh [G*H, H],
// b_ih [G*H], b_hh [G*H].
inline constexpr ParamDecl kGateParams[] = {{"w_ih", Dim::GateRows, Dim::Input, false},
                                            {"w_hh", Dim::GateRows, Dim::Hidden, false},
                                            {"b_ih", Dim::GateRows, Dim::One, true},
                                            {"b_hh", Dim::GateRows, Dim::One, true}};

// THE weight-shape rule: a dimension of a parameter for gates G, input size `in` and hidden size H.
// Both the NumPy-array bindings (shapes) and the pointer bindings (counts) read it.
constexpr int64 dim_size(Dim d, int64 G, int64 in, int64 H) {
  switch (d) {
    case Dim::GateRows: return G * H;
    case Dim::Input: return in;
    case Dim::Hidden: return H;
    case Dim::Units: return H;
    case Dim::UnitRows: return 0;  // the cell's kUnitRows: param_shape (rnn.h) reads it from the spec
    case Dim::One: return 1;
  }
  return 0;
}

// The per-call options of a cell (the cell variants), chosen at the one switch point
// dispatch_cell (cells/all.h): the flags select a spec type, cell_clip is a runtime value the
// loops hand to the pointwise phase in the rows (ForwardRow / BackwardRow::cell_clip). The
// defaults are today's cells, run by their untouched specs.
struct CellOptions {
  bool peephole = false;  // LSTM: weight_ch [3, H] (rows i, f, o), or [2, H] (f, o) when coupled
  bool coupled = false;   // LSTM: gate blocks (f, g, o), i = 1 - f (CIFG)
  double cell_clip = 0;   // LSTM: c_t clamped to [-cell_clip, cell_clip]; 0 = no clipping
  bool reset_after = true;  // GRU: false applies r to h_{t-1} before the n product (GruResetBefore)
  bool layer_norm = false;  // LSTM, GRU: haste's layer-normalised cell (LstmLayerNorm, GruLayerNorm)
  bool any() const { return peephole || coupled || cell_clip > 0 || !reset_after || layer_norm; }
};

// ---- phases: the time step as a compile-time list ---------------------------------------------
// A loop runs a spec's Step with `for_each_phase` (a fold over the types: no runtime list, no virtual
// call, so every phase inlines and the pointwise loops vectorise). Forward runs the list in order,
// backward in reverse. Between steps the loop synchronises (the next step's product reads every
// unit of h); within a step, a phase that reads other threads' units must follow a Barrier.

enum class PhaseKind : int { RecurrentProduct, Pointwise, RowReduction, Barrier };

// What a recurrent product multiplies.
enum class Operand : int {
  H,       // h_{t-1}
  ResetH,  // r * h_{t-1} (the reset-before GRU): a [B, H] buffer a Pointwise phase fills (ForwardRow::reset_h)
  M,       // o * tanh(c) (the LSTM projection; not implemented yet)
};
enum class Weight : int {
  Hh,  // W_hh [G*H, H]
  Hr,  // W_hr [P, H] (the LSTM projection; not implemented yet)
};

// gh = In W^T (+ b_hh) for the gate blocks [GateBegin, GateEnd) (GateEnd = -1: all G) of the
// thread's units. SeparateGrad: dL/d(gh) differs from dL/d(gi) (GRU: gh_n enters scaled by r), so
// backward keeps dG_h in its own buffer and dW_hh, db_hh and dL/dh_prev read it; otherwise dG_h is
// dG_i. A product over some gates only reads and writes those gates' blocks of gh / dG_h, and
// dW_hh's rows of those gates read its own operand (h_{t-1}, or r*h_{t-1} for ResetH).
template <Operand In, Weight W, bool SeparateGrad, int GateBegin = 0, int GateEnd = -1> struct RecurrentProduct {
  static constexpr PhaseKind kKind = PhaseKind::RecurrentProduct;
  static constexpr Operand kInput = In;
  static constexpr Weight kWeight = W;
  static constexpr bool kSeparateGrad = SeparateGrad;
  static constexpr int kGateBegin = GateBegin;
  static constexpr int kGateEnd = GateEnd;  // -1: up to Cell::kGates
};

// The cell's pointwise forward / backward over the thread's units. N numbers the pointwise phases
// of a step: N = 0 calls Cell::forward(row, j, ld, H) / Cell::backward(row, j, H), N > 0 the
// overloads with a trailing Pointwise<N>{} tag. The last one of a step (the largest N) writes the
// new states; an earlier one leaves its values for a later one in ForwardRow::between (and may fill
// a product's operand, ForwardRow::reset_h). Backward runs them from the largest N down.
template <int N = 0> struct Pointwise {
  static constexpr PhaseKind kKind = PhaseKind::Pointwise;
  static constexpr int kIndex = N;
};

// A reduction over a whole row across the threads that own its slices of units (layer norm).
// Forward: the spec gives, per block of kReduceBlock units, the moments (count, mean, M2) of its
// kReduced<N> quantities (Cell::row_moments(row, j_begin, j_end, ld, H, RowReduction<N>, Moments*));
// the loop combines the blocks in block order (Chan's formula; independent of the thread count)
// into the row's (mean, 1/sqrt(var + eps)) per quantity, ForwardRow::stats of the next Pointwise
// phase. Backward: after the later phases' backward, the spec gives per block the sums of its
// kReducedGrad<N> quantities (Cell::row_sums(row, j_begin, j_end, H, RowReduction<N>, double*)), the
// loop adds the blocks in block order into BackwardRow::stats and runs Cell::backward(row, j, H,
// RowReduction<N>{}) on the thread's units (the norm's backward). CPU: per-block partials in a shared
// buffer, one barrier; deterministic.
template <int N = 0> struct RowReduction {
  static constexpr PhaseKind kKind = PhaseKind::RowReduction;
  static constexpr int kIndex = N;
};
inline constexpr int kReduceBlock = 16;  // units per partial of a RowReduction (the loops' kUnitAlign)
inline constexpr double kLayerNormEps = 1e-5;

// Moments of a set of values: count, mean and the sum of squared deviations from it.
struct Moments {
  double n, mean, m2;
};
// The moments of a and b together (Chan et al.'s pairwise update).
FASTRNN_HD Moments merge_moments(Moments a, Moments b) {
  if (b.n == 0) return a;
  const double n = a.n + b.n, delta = b.mean - a.mean;
  return {n, a.mean + delta * (b.n / n), a.m2 + b.m2 + delta * delta * (a.n * b.n / n)};
}

// The layer norm's vectors of one layer and direction (fastrnn.nn's ln_weight_ih/hh, ln_weight_c,
// ln_bias_c) and the biases it adds after the norm; nullptr where absent (no biases; GRU: no c).
template <class T> struct NormParams {
  const T* g_ih;  // [G*H] gain of LN(W_ih x)
  const T* g_hh;  // [G*H] gain of LN(W_hh h)
  const T* b_ih;  // [G*H] or nullptr
  const T* b_hh;  // [G*H] or nullptr
  const T* g_c;   // [H] gain of LN(c) (LSTM)
  const T* b_c;   // [H] bias of LN(c) (LSTM)
};

struct Barrier {
  static constexpr PhaseKind kKind = PhaseKind::Barrier;
};

template <class... P> struct Phases {
  static constexpr int kCount = sizeof...(P);
};

// f(P{}) for each phase P of the list, in order; for_each_phase_reversed: last to first.
template <class... P, class F> inline void for_each_phase(Phases<P...>, F&& f) { (f(P{}), ...); }
template <class F> inline void for_each_phase_reversed(Phases<>, F&&) {}
template <class P0, class... P, class F> inline void for_each_phase_reversed(Phases<P0, P...>, F&& f) {
  for_each_phase_reversed(Phases<P...>{}, f);
  f(P0{});
}

template <class Phase> constexpr bool is_phase(PhaseKind k) { return Phase::kKind == k; }
// A Pointwise phase other than the step's last (index `last`): one that leaves values for a later one.
template <class Phase> constexpr bool is_earlier_pointwise(int last) {
  if constexpr (Phase::kKind == PhaseKind::Pointwise) return Phase::kIndex != last;
  else return false;
}
template <class> constexpr bool kUnsupportedPhase = false;  // for static_assert in a loop's `else` branch

namespace spec_detail {
template <class P> constexpr bool separate_grad_of() {
  if constexpr (P::kKind == PhaseKind::RecurrentProduct) return P::kSeparateGrad;
  else return false;
}
template <class... P> constexpr bool any_separate_grad(Phases<P...>) { return (false || ... || separate_grad_of<P>()); }
template <class P> constexpr int pointwise_index_of() {
  if constexpr (P::kKind == PhaseKind::Pointwise) return P::kIndex;
  else return -1;
}
template <class... P> constexpr int last_pointwise(Phases<P...>) {
  int n = -1;
  ((n = pointwise_index_of<P>() > n ? pointwise_index_of<P>() : n), ...);
  return n;
}
template <class P> constexpr bool reads_reset_h() {
  if constexpr (P::kKind == PhaseKind::RecurrentProduct) return P::kInput == Operand::ResetH;
  else return false;
}
template <class... P> constexpr bool any_reset_h(Phases<P...>) { return (false || ... || reads_reset_h<P>()); }
// the first gate of the ResetH product, or G when there is none
template <class P> constexpr int reset_h_begin_of(int G) {
  if constexpr (P::kKind == PhaseKind::RecurrentProduct) return P::kInput == Operand::ResetH ? P::kGateBegin : G;
  else return G;
}
template <class... P> constexpr int reset_h_begin(Phases<P...>, int G) {
  int n = G;
  ((n = reset_h_begin_of<P>(G) < n ? reset_h_begin_of<P>(G) : n), ...);
  return n;
}
// every product on h_{t-1} covers exactly the gates below the ResetH product's, which covers the rest
template <class P> constexpr bool product_split_ok(int G, int split) {
  if constexpr (P::kKind == PhaseKind::RecurrentProduct) {
    const int end = P::kGateEnd < 0 ? G : P::kGateEnd;
    return P::kInput == Operand::ResetH ? (P::kGateBegin == split && end == G) : (P::kGateBegin == 0 && end == split);
  } else {
    return true;
  }
}
template <class... P> constexpr bool products_split_ok(Phases<P...>, int G, int split) {
  return (true && ... && product_split_ok<P>(G, split));
}
// Cell::kBetween where the spec declares it, else 0 (the single-phase cells need no such values).
template <class Cell, class = void> struct between_of { static constexpr int value = 0; };
template <class Cell> struct between_of<Cell, std::void_t<decltype(Cell::kBetween)>> {
  static constexpr int value = Cell::kBetween;
};
template <class Cell, class = void> struct between_grad_of { static constexpr int value = 0; };
template <class Cell> struct between_grad_of<Cell, std::void_t<decltype(Cell::kBetweenGrad)>> {
  static constexpr int value = Cell::kBetweenGrad;
};
template <class Cell, class = void> struct layer_norm_of {
  static constexpr bool value = false;
  static constexpr int rows = 0, params = 0;
};
template <class Cell> struct layer_norm_of<Cell, std::void_t<decltype(Cell::kLayerNorm)>> {
  static constexpr bool value = Cell::kLayerNorm;
  static constexpr int rows = Cell::kNormRows, params = Cell::kNormParams;
};
}  // namespace spec_detail

// The gate blocks [begin, end) a RecurrentProduct phase P of a cell with G gates covers.
template <class P> constexpr int product_gate_begin() { return P::kGateBegin; }
template <class P> constexpr int product_gate_end(int G) { return P::kGateEnd < 0 ? G : P::kGateEnd; }

// What the loops ask of a spec, derived from its declarations.
template <class Cell> struct SpecTraits {
  static constexpr int kGates = Cell::kGates;
  static constexpr int kSaved = Cell::kSaved;
  // carried states beyond h (LSTM: c); the loops keep, save and return each like h
  static constexpr bool kCarriesState = Cell::kStates > 1;
  // backward keeps dG_h apart from dG_i (some product's gradient differs from the input's)
  static constexpr bool kSeparateHiddenGrad = spec_detail::any_separate_grad(typename Cell::Step{});
  // rows of per-unit parameters [kUnitRows, H] (LSTM peepholes); 0 for the base cells
  static constexpr int kUnitRows = Cell::kUnitRows;
  // the largest Pointwise index of Step (the phase that writes the new states)
  static constexpr int kLastPointwise = spec_detail::last_pointwise(typename Cell::Step{});
  // a product reads r*h_{t-1} (Operand::ResetH): the loops keep that [B, H] operand per step
  static constexpr bool kResetH = spec_detail::any_reset_h(typename Cell::Step{});
  // values per unit and row that an earlier Pointwise phase leaves for a later one (ForwardRow::between)
  static constexpr int kBetween = spec_detail::between_of<Cell>::value;
  // the same in backward (BackwardRow::between, kBetweenGrad*H per row)
  static constexpr int kBetweenGrad = spec_detail::between_grad_of<Cell>::value;
  // a layer-normalised cell: its products start without biases, rows carry NormParams
  static constexpr bool kLayerNorm = spec_detail::layer_norm_of<Cell>::value;
  // per-row shares of the norm's parameter gradients [kNormRows, H], summed over rows after the loop
  static constexpr int kNormRows = spec_detail::layer_norm_of<Cell>::rows;
  // W_hh's gate blocks [0, kResetHSplit) are the h_{t-1} product's, [kResetHSplit, G) the ResetH one's
  static constexpr int kResetHSplit = spec_detail::reset_h_begin(typename Cell::Step{}, Cell::kGates);
  static_assert(spec_detail::products_split_ok(typename Cell::Step{}, Cell::kGates, kResetHSplit),
                "the loops run a product of h_{t-1} over the first gate blocks and at most one ResetH product over "
                "the rest");
  static_assert(kLastPointwise >= 0, "a step has a Pointwise phase");
  static_assert(Cell::kStates >= 1 && Cell::kStates <= 2, "the stacks pass h and at most one carried state (c)");
  static_assert(Cell::kNumParams == 4 + (Cell::kUnitRows > 0 ? 1 : 0) + spec_detail::layer_norm_of<Cell>::params,
                "LayerWeights holds the four kGateParams, w_ch (the per-unit matrix, kUnitRows > 0) and the layer "
                "norm's vectors (2, LSTM 4); another parameter needs its field there (see above)");
  static_assert(Cell::kStateDecls[0].name[0] == 'h', "state 0 is h");
};

// ---- one row of one step: what the pointwise phase sees ---------------------------------------
// Pointers point at one batch row. Shapes per row; G = Cell::kGates, S = Cell::kSaved. Gate g of
// unit j is at g*ld + j (ld = H for a whole row; the CPU forward keeps each thread's units
// together, ld = its share); saved slot s of unit j at s*H + j.
template <class T> struct ForwardRow {
  const T* gi;      // [G*ld] W_ih x + b_ih
  const T* gh;      // [G*ld] W_hh h_prev + b_hh
  const T* h_prev;  // [H]
  const T* c_prev;  // [H] the carried state (cells with kStates == 2)
  T* h;             // [H] new hidden state
  T* c;             // [H] new carried state (kStates == 2)
  T* saved;         // [S*H] what backward needs, or nullptr in inference
  // the cell variants (trailing, so that the base cells' rows stay as they were):
  const T* unit_params = nullptr;  // [U*H] per-unit parameters (LSTM peepholes [U, H]), absolute unit index
  double cell_clip = 0;            // CellOptions::cell_clip (read by cells that clip)
  // cells of several Pointwise phases (the reset-before GRU):
  T* between = nullptr;  // [kBetween*ld] values for a later Pointwise phase of this step (gate(between, k, ld, j))
  T* reset_h = nullptr;  // [H] the ResetH product's operand r*h_{t-1} (absolute unit index)
  // layer-normalised cells: the norm's parameters, and the preceding RowReduction's (mean, inv_std)
  // per quantity (the products then start without their biases: the cell adds them after the norm)
  const NormParams<T>* norm = nullptr;
  const double* stats = nullptr;
};

template <class T> struct BackwardRow {
  const T* saved;   // [S*H] from forward
  const T* h_prev;  // [H]
  const T* c_prev;  // [H] (kStates == 2)
  const T* h;       // [H] this step's output (RNN needs it for the derivative)
  const T* c;       // [H] this step's carried state (kStates == 2)
  const T* dh;      // [H] dL/dh of this step: from the output and from the next step
  const T* dc;      // [H] dL/dc of this step from the next step (kStates == 2)
  T* dgi;           // [G*H] dL/d(gi)
  T* dgh;           // [G*H] dL/d(gh); the same buffer as dgi unless the product's kSeparateGrad
  T* dh_prev;       // [H] the part of dL/dh_prev that bypasses W_hh (GRU's z*dh, else 0)
  T* dc_prev;       // [H] dL/dc_prev (kStates == 2)
  // the cell variants:
  const T* unit_params = nullptr;  // [U*H] as in ForwardRow
  T* dunit_params = nullptr;       // [U*H] this row's share of dL/d(unit_params); the loop sums the rows
  double cell_clip = 0;
  T dc_clip = T(0); // grad_clip modifier: > 0 clamps the total dL/dc of this step to
                    // [-dc_clip, dc_clip] (cells with a carried state); 0: off
  // cells with a ResetH product (the reset-before GRU):
  const T* dreset_h = nullptr;  // [H] dL/d(r*h_{t-1}) = dG_h(its gates) W_hh(its gates), all units' sum
  T* reset_h = nullptr;         // [H] r*h_{t-1} again, for dW_hh's rows of that product
  // layer-normalised cells: the norm's parameters, a RowReduction's row sums, and per-row values
  // the backward phases of a step pass on ([kBetweenGrad*H], slot k of unit j at k*H + j)
  const NormParams<T>* norm = nullptr;
  const double* stats = nullptr;
  T* between = nullptr;
};

// x clamped to [-c, c] (c > 0), NaN kept; the grad_clip modifier's clamp, written once.
template <class A> FASTRNN_HD A clamp_abs(A x, A c) { return x < -c ? -c : (x > c ? c : x); }
// clamp_abs where c > 0, x itself where c == 0 (off): a select, so the loops stay vectorised.
template <class A> FASTRNN_HD A clamp_if(A x, A c) { return c > A(0) ? clamp_abs(x, c) : x; }

// Named access to a row: gate slot g of unit j (row stride ld), saved slot s of unit j (H apart).
template <class T> FASTRNN_HD T& gate(T* row, int g, int64 ld, int64 j) { return row[g * ld + j]; }
template <class T> FASTRNN_HD const T& gate(const T* row, int g, int64 ld, int64 j) { return row[g * ld + j]; }
template <class T> FASTRNN_HD T& slot(T* saved, int s, int64 H, int64 j) { return saved[s * H + j]; }
template <class T> FASTRNN_HD const T& slot(const T* saved, int s, int64 H, int64 j) { return saved[s * H + j]; }

}  // namespace fastrnn
