// One layer in one direction on the GPU: the phase loop around the cell specs (csrc/cells/), the
// CUDA twin of csrc/cpu/layer_kernels.inc with the same semantics and the same reserve layout.
// Nothing here knows which cell it runs: it reads the spec's declarations (csrc/cells/spec.h). A
// step without a Barrier runs as one fused kernel (RecurrentProduct of h with W_hh, then Pointwise:
// the block that computes a tile of gh applies the pointwise cell to it); a step with one Barrier
// between two products (the reset-before GRU) as two kernels, the launch boundary being the
// barrier; a layer-normalised step (RowReduction phases) as a GEMM and one kernel whose blocks own
// whole batch rows (layer_norm.cuh); the projected LSTM's step (a product on m after a Barrier) as
// two kernels (projection.cuh). fused_step_phases / split_step_phases / layer_norm_step_phases /
// projected_step_phases say which phase lists the kernels implement (cuda_runs_step).
//
// Forward: one GEMM for the input projection of all steps (bias b_ih fused), then one fused kernel
// per step. A block owns a tile of hidden units (all G gates of them) for a tile of batch rows: it
// computes gh = h_{t-1} W_hh^T (+ b_hh) for exactly those gate rows and applies the cell forward, so
// the gates never leave registers. Backward: one fused kernel per step (in reverse): a block first
// finishes dL/dh for its units, dh = (bypass part from the previous step) + dG_h(previous step)
// W_hh, then runs the cell backward for them; after the loop dW_ih, dW_hh, db (deterministic column
// sums) and dX are each one GEMM over all steps.
//
// The cell functions index a row as p[g*H + j]. A thread gathers one (batch row, unit) pair's values
// into small register arrays of the accumulation type A = AccType<T> and calls the cell with H = 1,
// j = 0 (exactly the same maths, since a cell is pointwise in j), then scatters the results: no
// shared/global round trip for the gates. The recurrent state (h, c, and dh, dc in backward) is
// scratch of type A between steps; what is stored (y, reserve, gate gradients) has type T. For
// float/double A == T and this is exactly the CPU path's arithmetic; for half/bf16 storage the gate
// pre-activations, the cell maths and the state stay in float.
//
// Variable lengths: row b is live at time t iff t < len[b], in both directions (csrc/cpu/layer.h).
// A dead row keeps its state and outputs zeros; in backward it passes dh/dc through unchanged and
// contributes zero gate gradients. Lengths outside [1, T] are the caller's to reject (they are read
// on the device only, never used as an index, so they cannot fault).
//
// The LSTM variants are specs like the others (LstmVariant, csrc/cells/lstm.h): a thread gathers
// its unit's peephole column w_ch[:, j] into registers like the gates, and backward writes each row's
// share of dL/dw_ch into a [T, B, U*H] buffer that is summed over the rows after the loop in a fixed
// order (column_sums, as db), so the peepholes' gradient is deterministic.
//
// The training modifiers (rnn.h, Modifiers; the same semantics as csrc/cpu/layer_kernels.inc):
// the recurrent-dropout mask m multiplies h_{t-1} where the product loads it (and dL/dh_{t-1}'s share
// from the product in backward; dW_hh reads m*h_{t-1}), zoneout mixes the states right after the cell
// (h~ and c~ kept for backward), grad_clip clamps the state gradients before the cell's backward.
// They are runtime switches (a null pointer, or grad_clip 0, is "off"), uniform over the grid, not
// template flags as on the CPU: each flag would double the step kernels' instantiations (cells x
// dtypes x forward/backward), and with them nvcc's time in CI.
//
// Every launch goes on the caller's stream; no step synchronises the device. One kernel launch per
// step is the default path; the persistent small-batch forward (one cooperative launch for all
// steps, persistent.cuh) runs instead where FASTRNN_CUDA_PERSISTENT selects it.
#pragma once

#include <utility>

#include "cells/all.h"
#include "check.cuh"
#include "gemm.cuh"
#include "rnn.h"

namespace fastrnn::cuda {

// Tiles of the step kernels: kUnits hidden units x kRows batch rows per block, one (row, unit) pair
// per thread (256 threads), K (the reduction over H or G*H) staged through shared memory kStepK at a time.
constexpr int kUnits = 16, kRows = 16, kStepK = 32, kStepThreads = kUnits * kRows;
template <int G> using ForwardStepShape = TileShape<kRows, G * kUnits, kStepK, 1, G>;  // thread: 1 row x G gates
using BackwardStepShape = TileShape<kRows, kUnits, kStepK, 1, 1>;                     // thread: 1 row x 1 unit
static_assert(ForwardStepShape<4>::kThreads == kStepThreads && BackwardStepShape::kThreads == kStepThreads, "");

// Right operand of the forward step: the G gate rows of W_hh [G*H, H] for units j0 .. j0+kUnits-1,
// as column n = g*kUnits + u of op(B) (row g*H + j0 + u of W_hh); zero past H.
template <class T> struct GateRowsOfWhh {
  const T* w;  // [G*H, H]
  int64 H, j0;
  int64 g0 = 0;  // the product's first gate block (the reset-before GRU's n product: 2)
  __device__ Acc<T> operator()(int64 n, int64 k) const {
    const int64 g = g0 + n / kUnits, j = j0 + n % kUnits;
    if (j >= H || k >= H) return Acc<T>(0);
    return Acc<T>(w[(g * H + j) * H + k]);
  }
  __device__ bool k_contiguous() const { return true; }
};

// Left operand of the forward step: the state h_{t-1} [B, H] (type A), times the recurrent-dropout
// mask m [B, H] where there is one (nullptr: none); zero outside [0, B) x [0, H).
template <class T> struct StateRows {
  const Acc<T>* h;  // [B, H]
  const T* m;       // [B, H] or nullptr
  int64 rows, K;
  __device__ Acc<T> operator()(int64 r, int64 k) const {
    if (r >= rows || k >= K) return Acc<T>(0);
    const int64 i = r * K + k;
    return m ? h[i] * Acc<T>(m[i]) : h[i];
  }
  __device__ bool k_contiguous() const { return true; }
};

template <class T> struct ForwardStep {
  using A = Acc<T>;
  int64 B, H, t;
  const T* w_hh;          // [G*H, H]
  const T* b_hh;          // [G*H] or nullptr
  const T* gi;            // [T, B, G*H] x W_ih^T + b_ih
  const A* h_cur;         // [B, H] state before the step
  const A* c_cur;         // [B, H] (cells with a cell state)
  A* h_next;              // [B, H] state after the step (never aliases h_cur: other blocks still read it)
  A* c_next;              // [B, H]
  const int64* lengths;   // [B] or nullptr
  T* y;                   // [T, B, ldy]: this direction's H columns
  int64 ldy;
  T* saved;               // [T, B, S*H] or nullptr (inference)
  T* cells;               // [T, B, H] or nullptr
  const T* w_ch;          // [U, H] per-unit parameters (LSTM peepholes) or nullptr
  double cell_clip;       // the LSTM variants' clip (0: none)
  const T* h_mask;        // [B, H] recurrent-dropout mask m, or nullptr
  const T* zone_h;        // [T, B, H] zoneout d_h, or nullptr
  const T* zone_c;        // [T, B, H] zoneout d_c, or nullptr
  T* pre_h;               // [T, B, H] h~ for backward (training with zone_h), or nullptr
  T* pre_c;               // [T, B, H] c~ (training with zone_c), or nullptr
  // the split step (a ResetH product, SpecTraits::kResetH): what its first kernel leaves for the second
  A* reset_h = nullptr;   // [B, H] the second product's operand r*h_{t-1}
  A* between = nullptr;   // [B, kBetween, H] the first Pointwise phase's values for the last (r, z)
};

// The phase lists the step kernels implement. Fused: one RecurrentProduct of h_{t-1} with W_hh, then
// Pointwise<0>, one kernel per step. Split (the reset-before GRU): a product of h_{t-1} over the first
// gate blocks [0, S), Pointwise<0> (which fills the ResetH operand r*h_{t-1}), the Barrier, a product
// of r*h_{t-1} over the other blocks [S, G), Pointwise<1>: two kernels per step, the kernel boundary
// being the Barrier (every block's units of r*h are written before any block's second product reads
// them). Backward runs two kernels per step too, in reverse (backward_step_kernel, backward_reset_kernel).
template <class Other> constexpr bool fused_step_phases(Other) { return false; }
template <Operand In, Weight W, bool Split, int N>
constexpr bool fused_step_phases(Phases<RecurrentProduct<In, W, Split>, Pointwise<N>>) {
  return In == Operand::H && W == Weight::Hh && N == 0;
}
template <class Other> constexpr bool split_step_phases(Other) { return false; }
template <Operand In1, bool Sep1, int B1, int E1, Operand In2, bool Sep2, int B2, int E2, int N1, int N2>
constexpr bool split_step_phases(Phases<RecurrentProduct<In1, Weight::Hh, Sep1, B1, E1>, Pointwise<N1>, Barrier,
                                        RecurrentProduct<In2, Weight::Hh, Sep2, B2, E2>, Pointwise<N2>>) {
  return In1 == Operand::H && In2 == Operand::ResetH && !Sep1 && !Sep2 && B1 == 0 && E1 == B2 && N1 == 0 && N2 == 1;
}
// Layer norm (cuda/layer_norm.cuh): the recurrent product of h_{t-1} over all gates (dG_h kept apart),
// then RowReduction<0>, Pointwise<0>, and optionally RowReduction<1>, Pointwise<1>: a GEMM and one
// kernel per step whose blocks own whole batch rows.
template <class Other> constexpr bool layer_norm_step_phases(Other) { return false; }
template <Operand In, bool Sep, int B0, int E0>
constexpr bool layer_norm_step_phases(Phases<RecurrentProduct<In, Weight::Hh, Sep, B0, E0>, RowReduction<0>, Pointwise<0>>) {
  return In == Operand::H && B0 == 0 && E0 == -1;
}
template <Operand In, bool Sep, int B0, int E0>
constexpr bool layer_norm_step_phases(Phases<RecurrentProduct<In, Weight::Hh, Sep, B0, E0>, RowReduction<0>, Pointwise<0>,
                                             RowReduction<1>, Pointwise<1>>) {
  return In == Operand::H && B0 == 0 && E0 == -1;
}
// The projected LSTM (cuda/projection.cuh): the product of h_{t-1} over all gates, Pointwise<0> (m),
// the Barrier, the product of m with W_hr: two kernels per step.
template <class Other> constexpr bool projected_step_phases(Other) { return false; }
template <Operand In, bool Sep, int B0, int E0, bool SepM, int BM, int EM>
constexpr bool projected_step_phases(Phases<RecurrentProduct<In, Weight::Hh, Sep, B0, E0>, Pointwise<0>, Barrier,
                                            RecurrentProduct<Operand::M, Weight::Hr, SepM, BM, EM>>) {
  return In == Operand::H && !Sep && B0 == 0 && E0 == -1;
}
// Whether the CUDA kernels run a spec's step (the stack refuses the others before anything is queued).
template <class Cell> constexpr bool cuda_runs_step() {
  return fused_step_phases(typename Cell::Step{}) || split_step_phases(typename Cell::Step{}) ||
         layer_norm_step_phases(typename Cell::Step{}) || projected_step_phases(typename Cell::Step{});
}
template <class Cell, class T>
void layer_norm_forward(cudaStream_t stream, const RnnConfig& cfg, const LayerForwardArgs<T>& a);
template <class Cell, class T>
void layer_norm_backward(cudaStream_t stream, const RnnConfig& cfg, const LayerBackwardArgs<T>& a);
template <class Cell, class T>
void projected_layer_forward(cudaStream_t stream, const RnnConfig& cfg, const LayerForwardArgs<T>& a);
template <class Cell, class T>
void projected_layer_backward(cudaStream_t stream, const RnnConfig& cfg, const LayerBackwardArgs<T>& a);

// The fused step (all G gate blocks on h_{t-1}), or the split step's second kernel (gate blocks
// [S, G) on the first kernel's r*h_{t-1}, then the last Pointwise phase): the cell's new states.
template <class Cell, class T>
__global__ void __launch_bounds__(kStepThreads) forward_step_kernel(const ForwardStep<T> p) {
  constexpr int G = Cell::kGates, S = Cell::kSaved, U = SpecTraits<Cell>::kUnitRows;
  constexpr bool kCarry = SpecTraits<Cell>::kCarriesState, kSplitStep = SpecTraits<Cell>::kResetH;
  constexpr int G0 = kSplitStep ? SpecTraits<Cell>::kResetHSplit : 0;  // the product's first gate block
  constexpr int NB = kSplitStep ? SpecTraits<Cell>::kBetween : 0;
  using Shape = ForwardStepShape<G - G0>;
  using A = Acc<T>;
  __shared__ TileSmem<Shape, A> smem;
  const int64 H = p.H, GH = G * H;
  const int64 j0 = int64(blockIdx.x) * kUnits, b0 = int64(blockIdx.y) * kRows;
  A acc[1][G - G0] = {};  // acc[0][g]: gate G0 + g of unit j0 + tx for row b0 + ty (columns n = tx + g*kUnits)
  const StateRows<T> operand =
      kSplitStep ? StateRows<T>{p.reset_h, nullptr, p.B, H} : StateRows<T>{p.h_cur, p.h_mask, p.B, H};
  tile_product<Shape>(operand, GateRowsOfWhh<T>{p.w_hh, H, j0, G0}, b0, 0, H, smem, acc);

  const int tx = threadIdx.x % Shape::kThreadsN, ty = threadIdx.x / Shape::kThreadsN;
  const int64 b = b0 + ty, j = j0 + tx, bj = b * H + j;
  if (b >= p.B || j >= H) return;
  const int64 tb = p.t * p.B + b;
  T* yv = p.y + tb * p.ldy + j;
  if (p.lengths && p.t >= p.lengths[b]) {  // dead: keep the state, output zero
    p.h_next[bj] = p.h_cur[bj];
    if (kCarry) p.c_next[bj] = p.c_cur[bj];
    *yv = T(0);
    return;
  }
  A gi[G], gh[G] = {}, saved[S > 0 ? S : 1], unit[U > 0 ? U : 1], between[NB > 0 ? NB : 1];
#pragma unroll
  for (int g = 0; g < G; ++g) gi[g] = A(p.gi[tb * GH + g * H + j]);
#pragma unroll
  for (int g = G0; g < G; ++g) gh[g] = acc[0][g - G0] + (p.b_hh ? A(p.b_hh[g * H + j]) : A(0));
#pragma unroll
  for (int u = 0; u < U; ++u) unit[u] = A(p.w_ch[u * H + j]);
  const A* unit_params = U > 0 ? unit : nullptr;
  const A hp = p.h_cur[bj];
  const A cp = kCarry ? p.c_cur[bj] : A(0);
  A h, c = A(0);
  if constexpr (kSplitStep) {
    // the first kernel's values: r and z, and (training) the saved slots it filled
#pragma unroll
    for (int k = 0; k < NB; ++k) between[k] = p.between[(b * NB + k) * H + j];
    if (p.saved)
#pragma unroll
      for (int s = 0; s < S; ++s) saved[s] = A(p.saved[tb * S * H + s * H + j]);
    ForwardRow<A> row{gi, gh, &hp, &cp, &h, &c, p.saved ? saved : nullptr, unit_params, p.cell_clip};
    row.between = between;
    Cell::forward(row, 0, 1, 1, Pointwise<SpecTraits<Cell>::kLastPointwise>{});
  } else if (p.saved) {
    // Two calls so that the cell's `if (saved)` folds away in each and `saved` stays in registers.
    Cell::forward(ForwardRow<A>{gi, gh, &hp, &cp, &h, &c, saved, unit_params, p.cell_clip}, 0, 1, 1);
  } else {
    Cell::forward(ForwardRow<A>{gi, gh, &hp, &cp, &h, &c, nullptr, unit_params, p.cell_clip}, 0, 1, 1);
  }
  // zoneout: the cell's new states are h~ (and c~); keep them for backward, then mix in the old ones
  if (p.zone_h) {
    if (p.pre_h) p.pre_h[tb * H + j] = T(h);
    const A d = A(p.zone_h[tb * H + j]);
    h = d * hp + (A(1) - d) * h;
  }
  if (kCarry && p.zone_c) {
    if (p.pre_c) p.pre_c[tb * H + j] = T(c);
    const A d = A(p.zone_c[tb * H + j]);
    c = d * cp + (A(1) - d) * c;
  }
  p.h_next[bj] = h;
  *yv = T(h);
  if (kCarry) {
    p.c_next[bj] = c;
    if (p.cells) p.cells[tb * H + j] = T(c);
  }
  if (p.saved)
#pragma unroll
    for (int s = 0; s < S; ++s) p.saved[tb * S * H + s * H + j] = T(saved[s]);
}

// The split step's first kernel: the product of h_{t-1} over the gate blocks [0, S) (r, z) and
// Pointwise<0>, which leaves r, z in p.between and r*h_{t-1} in p.reset_h (the second kernel's
// product operand), and fills its saved slots (r, z). Dead rows: r*h = 0 (their second product's
// result is never used).
template <class Cell, class T>
__global__ void __launch_bounds__(kStepThreads) forward_reset_kernel(const ForwardStep<T> p) {
  constexpr int G = Cell::kGates, S = Cell::kSaved, U = SpecTraits<Cell>::kUnitRows;
  constexpr int G1 = SpecTraits<Cell>::kResetHSplit, NB = SpecTraits<Cell>::kBetween;
  static_assert(SpecTraits<Cell>::kResetH && NB > 0, "a split step (csrc/cells/gru.h, GruResetBefore)");
  using Shape = ForwardStepShape<G1>;
  using A = Acc<T>;
  __shared__ TileSmem<Shape, A> smem;
  const int64 H = p.H, GH = G * H;
  const int64 j0 = int64(blockIdx.x) * kUnits, b0 = int64(blockIdx.y) * kRows;
  A acc[1][G1] = {};
  tile_product<Shape>(StateRows<T>{p.h_cur, p.h_mask, p.B, H}, GateRowsOfWhh<T>{p.w_hh, H, j0}, b0, 0, H, smem, acc);

  const int tx = threadIdx.x % Shape::kThreadsN, ty = threadIdx.x / Shape::kThreadsN;
  const int64 b = b0 + ty, j = j0 + tx, bj = b * H + j;
  if (b >= p.B || j >= H) return;
  const int64 tb = p.t * p.B + b;
  if (p.lengths && p.t >= p.lengths[b]) {
    p.reset_h[bj] = A(0);
    return;
  }
  A gi[G], gh[G] = {}, saved[S] = {}, unit[U > 0 ? U : 1], between[NB], reset_h = A(0);
#pragma unroll
  for (int g = 0; g < G; ++g) gi[g] = A(p.gi[tb * GH + g * H + j]);
#pragma unroll
  for (int g = 0; g < G1; ++g) gh[g] = acc[0][g] + (p.b_hh ? A(p.b_hh[g * H + j]) : A(0));
#pragma unroll
  for (int u = 0; u < U; ++u) unit[u] = A(p.w_ch[u * H + j]);
  const A hp = p.h_cur[bj], cp = A(0);
  A h = A(0), c = A(0);
  ForwardRow<A> row{gi, gh, &hp, &cp, &h, &c, p.saved ? saved : nullptr, U > 0 ? unit : nullptr, p.cell_clip};
  row.between = between;
  row.reset_h = &reset_h;
  Cell::forward(row, 0, 1, 1);
  p.reset_h[bj] = reset_h;
#pragma unroll
  for (int k = 0; k < NB; ++k) p.between[(b * NB + k) * H + j] = between[k];
  if (p.saved)  // all slots: those of the last phase are rewritten by the second kernel
#pragma unroll
    for (int s = 0; s < S; ++s) p.saved[tb * S * H + s * H + j] = T(saved[s]);
}

template <class T> struct BackwardStep {
  using A = Acc<T>;
  int64 T_, B, H;
  int64 t;       // step to run, or -1: only finish dh for the initial state (writes dh0, dc0)
  int64 t_prev;  // the step processed just before (its dG_h feeds this one), or -1 for the first
  bool reverse;
  const T* w_hh;          // [G*H, H]
  const int64* lengths;   // [B] or nullptr
  const T* h0;            // [B, H] or nullptr (zeros)
  const T* c0;            // [B, H] or nullptr
  const T* y;             // [T, B, ldy] this direction's outputs (saved by forward)
  int64 ldy;
  const T* saved;         // [T, B, S*H]
  const T* cells;         // [T, B, H] or nullptr
  const T* dy;            // [T, B, ldy] same layout as y
  A* dh_carry;            // [B, H] in/out: the part of dL/dh_t that bypasses W_hh (each element one thread's)
  A* dc_carry;            // [B, H] in/out: dL/dc_t (cells with a cell state)
  T* dgi;                 // [T, B, G*H] out
  T* dgh;                 // [T, B, G*H] out; the same buffer as dgi unless the product declares kSeparateGrad
  T* h_prev;              // [T, B, H] out: the h_{t-1} each step saw (zero for dead rows), for dW_hh
  T* dh0;                 // [B, H] out (t == -1 only)
  T* dc0;                 // [B, H] out (t == -1 only, cells with a cell state)
  const T* w_ch;          // [U, H] per-unit parameters (LSTM peepholes) or nullptr
  T* dunit;               // [T, B, U*H] out: each row's share of dL/dw_ch (summed after the loop), or nullptr
  double cell_clip;       // the LSTM variants' clip (0: none)
  const T* h_mask;        // [B, H] the forward's recurrent-dropout mask, or nullptr
  double grad_clip;       // > 0: clamp dL/dh_t (and dL/dc_t) to [-C, C]; 0: off
  const T* zone_h;        // [T, B, H] the forward's zoneout d_h, or nullptr
  const T* zone_c;        // [T, B, H] d_c, or nullptr
  const T* pre_h;         // [T, B, H] h~ (with zone_h)
  const T* pre_c;         // [T, B, H] c~ (with zone_c)
  T* reset_h = nullptr;   // [T, B, H] out (split step): r*h_{t-1} per step, what dW_hh's ResetH rows read
};

// The fused step's backward, or the split step's first backward kernel (its last Pointwise phase:
// for the reset-before GRU dz, dn and the z*dh bypass; backward_reset_kernel then runs the rest).
template <class Cell, class T>
__global__ void __launch_bounds__(kStepThreads) backward_step_kernel(const BackwardStep<T> p) {
  constexpr int G = Cell::kGates, S = Cell::kSaved, U = SpecTraits<Cell>::kUnitRows;
  constexpr bool kCarry = SpecTraits<Cell>::kCarriesState, kSplit = SpecTraits<Cell>::kSeparateHiddenGrad;
  constexpr bool kSplitStep = SpecTraits<Cell>::kResetH;
  // the gate blocks whose product reads h_{t-1}: all, or [0, S) of a split step (the others read r*h)
  constexpr int GK = kSplitStep ? SpecTraits<Cell>::kResetHSplit : G;
  using Shape = BackwardStepShape;
  using A = Acc<T>;
  __shared__ TileSmem<Shape, A> smem;
  const int64 B = p.B, H = p.H, GH = G * H;
  const int64 j0 = int64(blockIdx.x) * kUnits, b0 = int64(blockIdx.y) * kRows;
  A acc[1][1] = {};
  // dL/dh_{t} += dG_h(t_prev) [B, GK*H] . W_hh [GK*H, H], for this block's rows and units. The branch
  // is uniform over the grid, so every thread of a block reaches the same barriers.
  if (p.t_prev >= 0)
    tile_product<Shape>(MatOp<T>{p.dgh + p.t_prev * B * GH, GH, B, GK * H, false},
                        MatOp<T>{p.w_hh, H, H, GK * H, true}, b0, j0, GK * H, smem, acc);

  const int tx = threadIdx.x % Shape::kThreadsN, ty = threadIdx.x / Shape::kThreadsN;
  const int64 b = b0 + ty, j = j0 + tx;
  if (b >= B || j >= H) return;
  const int64 bj = b * H + j;
  // the product's share of dL/dh reaches h through the recurrent-dropout mask
  const A dh_in = p.dh_carry[bj] + (p.h_mask ? A(p.h_mask[bj]) * acc[0][0] : acc[0][0]);
  if (p.t < 0) {
    p.dh0[bj] = T(dh_in);
    if (kCarry) p.dc0[bj] = T(p.dc_carry[bj]);
    return;
  }
  const int64 t = p.t, tb = t * B + b;
  const int64 len = p.lengths ? p.lengths[b] : p.T_;
  if (t >= len) {  // dead: pass dh/dc through, no gate gradient
#pragma unroll
    for (int g = 0; g < G; ++g) {
      p.dgi[tb * GH + g * H + j] = T(0);
      if (kSplit) p.dgh[tb * GH + g * H + j] = T(0);
    }
    p.h_prev[tb * H + j] = T(0);
    if (kSplitStep) p.reset_h[tb * H + j] = T(0);
#pragma unroll
    for (int u = 0; u < U; ++u) p.dunit[(tb * U + u) * H + j] = T(0);
    p.dh_carry[bj] = dh_in;
    return;
  }
  // The state this step started from: the previous step in processing order, or the initial state.
  const bool has_prev = p.reverse ? t + 1 < len : t > 0;
  const int64 tb_prev = (p.reverse ? t + 1 : t - 1) * B + b;
  const T hp_stored = has_prev ? p.y[tb_prev * p.ldy + j] : (p.h0 ? p.h0[bj] : T(0));
  const A hp = A(hp_stored);
  const A cp = !kCarry ? A(0) : A(has_prev ? p.cells[tb_prev * H + j] : (p.c0 ? p.c0[bj] : T(0)));
  A saved[S > 0 ? S : 1], unit[U > 0 ? U : 1], dunit[U > 0 ? U : 1];
#pragma unroll
  for (int s = 0; s < S; ++s) saved[s] = A(p.saved[tb * S * H + s * H + j]);
#pragma unroll
  for (int u = 0; u < U; ++u) unit[u] = A(p.w_ch[u * H + j]);
  // grad_clip: the total reaching h_t (from y_t and from step t+1) clamped before it flows into step t
  const A clip = A(p.grad_clip);
  const A dh_total = clamp_if(dh_in + A(p.dy[tb * p.ldy + j]), clip);
  // zoneout: the cell saw h~ (c~) and gets the (1 - d) share; h_{t-1} (c_{t-1}) the d share
  const bool zone_h = p.zone_h != nullptr, zone_c = kCarry && p.zone_c != nullptr;
  const A d_h = zone_h ? A(p.zone_h[tb * H + j]) : A(0), d_c = zone_c ? A(p.zone_c[tb * H + j]) : A(0);
  const A h = A(zone_h ? p.pre_h[tb * H + j] : p.y[tb * p.ldy + j]);
  const A c = !kCarry ? A(0) : A(zone_c ? p.pre_c[tb * H + j] : p.cells[tb * H + j]);
  const A dh = zone_h ? (A(1) - d_h) * dh_total : dh_total;
  const A dc_later = kCarry ? p.dc_carry[bj] : A(0);  // dL/dc_t from step t+1
  // with zoneout of c the clamp acts on what comes from the later steps (the cell's dc_clip is off)
  const A dc = zone_c ? (A(1) - d_c) * clamp_if(dc_later, clip) : dc_later;
  A dgi[G] = {}, dgh_split[G], dh_prev = A(0), dc_prev = A(0);
  A* dgh = kSplit ? dgh_split : dgi;
  const BackwardRow<A> row{saved, &hp, &cp, &h, &c, &dh, &dc, dgi, dgh, &dh_prev, &dc_prev,
                           U > 0 ? unit : nullptr, U > 0 ? dunit : nullptr, p.cell_clip, zone_c ? A(0) : clip};
  if constexpr (kSplitStep) Cell::backward(row, 0, 1, Pointwise<SpecTraits<Cell>::kLastPointwise>{});
  else Cell::backward(row, 0, 1);
  if (zone_h) dh_prev += d_h * dh_total;
  if (zone_c) dc_prev += d_c * clamp_if(dc_later, clip);
#pragma unroll
  for (int g = 0; g < G; ++g) {
    p.dgi[tb * GH + g * H + j] = T(dgi[g]);
    if (kSplit) p.dgh[tb * GH + g * H + j] = T(dgh[g]);
  }
#pragma unroll
  for (int u = 0; u < U; ++u) p.dunit[(tb * U + u) * H + j] = T(dunit[u]);
  // what dW_hh = dG_h^T H_prev reads: the h_{t-1} the product saw (m * h_{t-1} with recurrent dropout)
  p.h_prev[tb * H + j] = p.h_mask ? T(A(p.h_mask[bj]) * hp) : hp_stored;
  p.dh_carry[bj] = dh_prev;
  if (kCarry) p.dc_carry[bj] = dc_prev;
}

// The split step's second backward kernel, after backward_step_kernel of the same step: dL/d(r*h_{t-1})
// = dG(t)[gate blocks S..G) . W_hh[those rows] (every unit's dG of the row: the kernel boundary is the
// Barrier), then Pointwise<0>'s backward: dG of the blocks [0, S) (dr; dz from the first kernel is
// read back and kept), r's share of dL/dh_{t-1} added to the bypass in dh_carry, and r*h_{t-1} again
// (the forward's arithmetic) for dW_hh's ResetH rows. Dead rows were finished by the first kernel.
template <class Cell, class T>
__global__ void __launch_bounds__(kStepThreads) backward_reset_kernel(const BackwardStep<T> p) {
  constexpr int G = Cell::kGates, S = Cell::kSaved, U = SpecTraits<Cell>::kUnitRows;
  constexpr int G1 = SpecTraits<Cell>::kResetHSplit;
  static_assert(SpecTraits<Cell>::kResetH && !SpecTraits<Cell>::kCarriesState && !SpecTraits<Cell>::kSeparateHiddenGrad,
                "a split step (csrc/cells/gru.h, GruResetBefore)");
  using Shape = BackwardStepShape;
  using A = Acc<T>;
  __shared__ TileSmem<Shape, A> smem;
  const int64 B = p.B, H = p.H, GH = G * H, t = p.t;
  const int64 j0 = int64(blockIdx.x) * kUnits, b0 = int64(blockIdx.y) * kRows;
  A acc[1][1] = {};
  tile_product<Shape>(MatOp<T>{p.dgi + t * B * GH + G1 * H, GH, B, (G - G1) * H, false},
                      MatOp<T>{p.w_hh + G1 * H * H, H, H, (G - G1) * H, true}, b0, j0, (G - G1) * H, smem, acc);

  const int tx = threadIdx.x % Shape::kThreadsN, ty = threadIdx.x / Shape::kThreadsN;
  const int64 b = b0 + ty, j = j0 + tx;
  if (b >= B || j >= H) return;
  const int64 bj = b * H + j, tb = t * B + b;
  const int64 len = p.lengths ? p.lengths[b] : p.T_;
  if (t >= len) return;
  const bool has_prev = p.reverse ? t + 1 < len : t > 0;
  const int64 tb_prev = (p.reverse ? t + 1 : t - 1) * B + b;
  const A hp = A(has_prev ? p.y[tb_prev * p.ldy + j] : (p.h0 ? p.h0[bj] : T(0)));
  A saved[S], dgi[G] = {}, unit[U > 0 ? U : 1], dunit[U > 0 ? U : 1];
#pragma unroll
  for (int s = 0; s < S; ++s) saved[s] = A(p.saved[tb * S * H + s * H + j]);
#pragma unroll
  for (int g = 0; g < G1; ++g) dgi[g] = A(p.dgi[tb * GH + g * H + j]);
#pragma unroll
  for (int u = 0; u < U; ++u) unit[u] = A(p.w_ch[u * H + j]);
  const A cp = A(0), h = A(0), c = A(0), dh = A(0), dc = A(0), dreset_h = acc[0][0];
  A dh_prev = p.dh_carry[bj], dc_prev = A(0), reset_h = A(0);
  BackwardRow<A> row{saved, &hp, &cp, &h, &c, &dh, &dc, dgi, dgi, &dh_prev, &dc_prev,
                     U > 0 ? unit : nullptr, U > 0 ? dunit : nullptr, p.cell_clip, A(0)};
  row.dreset_h = &dreset_h;
  row.reset_h = &reset_h;
  Cell::backward(row, 0, 1);
#pragma unroll
  for (int g = 0; g < G1; ++g) p.dgi[tb * GH + g * H + j] = T(dgi[g]);
  p.reset_h[tb * H + j] = T(reset_h);
  p.dh_carry[bj] = dh_prev;
}

// dst[i] = To(src[i]) for i < n, or zeros when src is nullptr: states in and out of the A-typed scratch.
template <class To, class From> __global__ void convert_kernel(int64 n, const From* src, To* dst) {
  const int64 i = int64(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = src ? To(Acc<From>(src[i])) : To(0);
}

template <class To, class From> void convert(cudaStream_t stream, int64 n, const From* src, To* dst) {
  constexpr int kThreads = 256;
  launch(convert_kernel<To, From>, static_cast<unsigned>(ceil_div(n, kThreads)), kThreads, stream, n, src, dst);
}

// dst = src with the rows of dead steps (t >= lengths[b]) zeroed, both [T, B, n]: what the weight
// gradient dW_ih = dG^T X reads, since 0 * NaN is NaN and padding may hold anything.
template <class T>
__global__ void zero_dead_rows_kernel(int64 T_, int64 B, int64 n, const int64* lengths, const T* src, T* dst) {
  const int64 i = int64(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T_ * B * n) return;
  const int64 tb = i / n;
  dst[i] = tb / B < lengths[tb % B] ? src[i] : T(0);
}

// After a layer's backward loop: dW_ih = dG^T X and dX += dG W_ih, one GEMM each over all T*B rows
// (dG [T, B, G*H] is zero in dead rows; x's dead rows are zeroed in a copy, since 0 * NaN is NaN and
// padding may hold anything).
template <class T>
void layer_input_grads(cudaStream_t stream, const RnnConfig& cfg, const LayerBackwardArgs<T>& a, int64 GH, const T* dgi) {
  const int64 TB = cfg.T * cfg.B, in_size = a.in_size;
  Scratch<T> x_live(a.lengths ? checked_mul(TB, in_size, "x") : 0, stream);  // [T, B, in_size]
  const T* x_gemm = a.x;
  if (a.lengths) {
    constexpr int kThreads = 256;
    launch(zero_dead_rows_kernel<T>, static_cast<unsigned>(ceil_div(TB * in_size, kThreads)), kThreads, stream, cfg.T,
           cfg.B, in_size, a.lengths, a.x, x_live.get());
    x_gemm = x_live.get();
  }
  gemm<T>(stream, true, false, GH, in_size, TB, Acc<T>(1), dgi, GH, x_gemm, in_size, Acc<T>(0), a.g.dw_ih, in_size);
  gemm<T>(stream, false, false, TB, in_size, GH, Acc<T>(1), dgi, GH, a.w.w_ih, in_size, Acc<T>(1), a.dx, in_size);
}

inline dim3 step_grid(int64 B, int64 H) {
  return dim3(static_cast<unsigned>(ceil_div(H, kUnits)), static_cast<unsigned>(ceil_div(B, kRows)));
}

// The persistent small-batch forward (persistent.cuh): runs the whole layer and returns true where
// FASTRNN_CUDA_PERSISTENT selects it and it fits the device, else returns false.
template <class Cell, class T>
bool persistent_layer_forward(cudaStream_t stream, const RnnConfig& cfg, const LayerForwardArgs<T>& a);

template <class Cell, class T>
void step_layer_forward(cudaStream_t stream, const RnnConfig& cfg, const LayerForwardArgs<T>& a) {
  static_assert(cuda_runs_step<Cell>(), "the CUDA step kernels run the fused or the split step (fused_step_phases)");
  if (persistent_layer_forward<Cell>(stream, cfg, a)) return;
  constexpr bool kCarry = SpecTraits<Cell>::kCarriesState, kSplitStep = SpecTraits<Cell>::kResetH;
  if (kSplitStep && a.h_mask) throw ArgumentError("recurrent dropout is not implemented for the reset-before GRU");
  const int64 in_size = a.in_size, ldy = a.ldy;
  const auto& w = a.w;
  const T *x = a.x, *h0 = a.h0, *c0 = a.c0;
  const int64* lengths = a.lengths;
  const bool reverse = a.reverse;
  T *y = a.y, *hn = a.hn, *cn = a.cn, *saved = a.saved, *cells = a.cells;
  using A = Acc<T>;
  constexpr int64 G = Cell::kGates;
  const int64 T_ = cfg.T, B = cfg.B, H = cfg.H, GH = G * H, TB = T_ * B, BH = B * H;
  Scratch<T> gi(TB * GH, stream);                              // [T, B, G*H]
  Scratch<A> hstate(2 * BH, stream);                           // ping-pong [2, B, H]
  Scratch<A> cstate(kCarry ? 2 * BH : 0, stream);
  Scratch<A> reset_h(kSplitStep ? BH : 0, stream);                                   // [B, H] r*h_{t-1}
  Scratch<A> between(kSplitStep ? B * SpecTraits<Cell>::kBetween * H : 0, stream);  // [B, kBetween, H]
  gemm<T>(stream, false, true, TB, GH, in_size, A(1), x, in_size, w.w_ih, in_size, A(0), gi.get(), GH, w.b_ih);
  convert(stream, BH, h0, hstate.get());
  if (kCarry) convert(stream, BH, c0, cstate.get());

  A *h_cur = hstate.get(), *h_next = h_cur + BH;
  A *c_cur = cstate.get(), *c_next = kCarry ? c_cur + BH : nullptr;
  for (int64 s = 0; s < T_; ++s) {
    ForwardStep<T> p{B,          H,        reverse ? T_ - 1 - s : s,
                           w.w_hh,     w.b_hh,   gi.get(),
                           h_cur,      c_cur,    h_next,
                           c_next,     lengths,  y,
                           ldy,        saved,    cells,
                           w.w_ch,     cfg.options.cell_clip,
                           a.h_mask,   a.zone_h, kCarry ? a.zone_c : nullptr,
                           saved ? a.pre_h : nullptr, saved && kCarry ? a.pre_c : nullptr};
    if constexpr (kSplitStep) {  // the first products and Pointwise<0>, then (the Barrier) the rest
      p.reset_h = reset_h.get();
      p.between = between.get();
      launch(forward_reset_kernel<Cell, T>, step_grid(B, H), kStepThreads, stream, p);
    }
    launch(forward_step_kernel<Cell, T>, step_grid(B, H), kStepThreads, stream, p);
    std::swap(h_cur, h_next);
    std::swap(c_cur, c_next);
  }
  convert(stream, BH, static_cast<const A*>(h_cur), hn);
  if (kCarry) convert(stream, BH, static_cast<const A*>(c_cur), cn);
}

template <class Cell, class T>
void step_layer_backward(cudaStream_t stream, const RnnConfig& cfg, const LayerBackwardArgs<T>& a) {
  static_assert(cuda_runs_step<Cell>(), "the CUDA step kernels run the fused or the split step (fused_step_phases)");
  constexpr bool kCarry = SpecTraits<Cell>::kCarriesState, kSplit = SpecTraits<Cell>::kSeparateHiddenGrad;
  constexpr bool kSplitStep = SpecTraits<Cell>::kResetH;
  if (kSplitStep && a.h_mask) throw ArgumentError("recurrent dropout is not implemented for the reset-before GRU");
  const int64 ldy = a.ldy;
  const auto& w = a.w;
  const auto& g = a.g;
  const T *h0 = a.h0, *c0 = a.c0, *y = a.y, *saved = a.saved, *cells = a.cells, *dy = a.dy;
  const T *dhn = a.dhn, *dcn = a.dcn;
  const int64* lengths = a.lengths;
  const bool reverse = a.reverse;
  T *dh0 = a.dh0, *dc0 = a.dc0;
  using A = Acc<T>;
  constexpr int64 G = Cell::kGates;
  const int64 T_ = cfg.T, B = cfg.B, H = cfg.H, GH = G * H, TB = T_ * B, BH = B * H;
  Scratch<T> dgi(TB * GH, stream);                                        // [T, B, G*H]
  Scratch<T> dgh_split(kSplit ? TB * GH : 0, stream);
  T* dgh = kSplit ? dgh_split.get() : dgi.get();
  Scratch<T> h_prev(TB * H, stream);                                      // [T, B, H]
  Scratch<T> reset_h(kSplitStep ? TB * H : 0, stream);                    // [T, B, H] r*h_{t-1} (split step)
  Scratch<A> dh_carry(BH, stream), dc_carry(kCarry ? BH : 0, stream);
  constexpr int64 U = SpecTraits<Cell>::kUnitRows;
  Scratch<T> dunit(TB * U * H, stream);  // [T, B, U*H] each row's share of dL/dw_ch (LSTM peepholes)
  convert(stream, BH, dhn, dh_carry.get());
  if (kCarry) convert(stream, BH, dcn, dc_carry.get());

  BackwardStep<T> p{T_,        B,           H,        0,        -1,          reverse,
                    w.w_hh,    lengths,     h0,       c0,       y,           ldy,
                    saved,     cells,       dy,       dh_carry.get(),        dc_carry.get(),
                    dgi.get(), dgh,         h_prev.get(),       dh0,         dc0,
                    w.w_ch,    dunit.get(), cfg.options.cell_clip,           a.h_mask,
                    a.grad_clip, a.zone_h,  kCarry ? a.zone_c : nullptr,     a.pre_h,
                    kCarry ? a.pre_c : nullptr};
  p.reset_h = reset_h.get();
  for (int64 s = 0; s <= T_; ++s) {  // s == T_: finish dh0 from the last step processed
    p.t = s == T_ ? -1 : reverse ? s : T_ - 1 - s;
    launch(backward_step_kernel<Cell, T>, step_grid(B, H), kStepThreads, stream, p);
    if constexpr (kSplitStep)
      if (p.t >= 0) launch(backward_reset_kernel<Cell, T>, step_grid(B, H), kStepThreads, stream, p);
    p.t_prev = p.t;
  }

  // One GEMM each over all T*B rows; dead rows of dG and h_prev are zero.
  layer_input_grads(stream, cfg, a, GH, dgi.get());  // dW_ih, dX
  if constexpr (kSplitStep) {  // W_hh's first gate blocks saw h_{t-1}, the others r*h_{t-1}
    const int64 G1H = SpecTraits<Cell>::kResetHSplit * H;
    gemm<T>(stream, true, false, G1H, H, TB, A(1), dgh, GH, h_prev.get(), H, A(0), g.dw_hh, H);
    gemm<T>(stream, true, false, GH - G1H, H, TB, A(1), dgh + G1H, GH, reset_h.get(), H, A(0), g.dw_hh + G1H * H, H);
  } else {
    gemm<T>(stream, true, false, GH, H, TB, A(1), dgh, GH, h_prev.get(), H, A(0), g.dw_hh, H);
  }
  if (g.db_ih) column_sums<T>(stream, dgi.get(), TB, GH, GH, g.db_ih);
  if (g.db_hh) column_sums<T>(stream, dgh, TB, GH, GH, g.db_hh);
  if (U > 0) column_sums<T>(stream, dunit.get(), TB, U * H, U * H, g.dw_ch);
}

// One layer and direction: the step kernels above, layer norm's row kernels (cuda/layer_norm.cuh), or
// the projected LSTM's two kernels per step (cuda/projection.cuh).
template <class Cell, class T>
void layer_forward(cudaStream_t stream, const RnnConfig& cfg, const LayerForwardArgs<T>& a) {
  if constexpr (SpecTraits<Cell>::kLayerNorm) layer_norm_forward<Cell>(stream, cfg, a);
  else if constexpr (SpecTraits<Cell>::kProjected) projected_layer_forward<Cell>(stream, cfg, a);
  else step_layer_forward<Cell>(stream, cfg, a);
}
template <class Cell, class T>
void layer_backward(cudaStream_t stream, const RnnConfig& cfg, const LayerBackwardArgs<T>& a) {
  if constexpr (SpecTraits<Cell>::kLayerNorm) layer_norm_backward<Cell>(stream, cfg, a);
  else if constexpr (SpecTraits<Cell>::kProjected) projected_layer_backward<Cell>(stream, cfg, a);
  else step_layer_backward<Cell>(stream, cfg, a);
}

}  // namespace fastrnn::cuda

#include "layer_norm.cuh"
#include "persistent.cuh"
#include "projection.cuh"
