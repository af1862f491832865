// The projected LSTM (LstmProjection, csrc/cells/lstm.h: torch.nn.LSTM's proj_size = P, around the
// LSTM or any LstmVariant) on the GPU: one layer x direction, the CUDA twin of the CPU loop's product
// on m (csrc/cpu/layer_kernels.inc). Included at the end of layer.cuh, which dispatches
// layer_forward/layer_backward of a projected cell here. The spec's step is a product of h_{t-1}
// [B, P] with W_hh [G*H, P], the base cell's Pointwise<0> (c_t and m_t = o*tanh(c_t) [B, H]), a
// Barrier, and the product h_t = m_t W_hr^T [B, P] (W_hr [P, H]): two kernels per step, the launch
// boundary being the Barrier (every unit of m_t is written before any block's projection reads it).
//
// Forward, per step: projected_cell_kernel (forward_step_kernel's tiling with K = P: a block owns
// kUnits hidden units, all G gates of them, x kRows batch rows, so the gates never leave registers;
// it writes c_t, the saved gates and m_t, the latter into a [B, H] operand of the accumulation type
// and, training, into the reserve's projection slab), then projection_kernel (a block owns
// kProjUnits of h's P units x kRows rows: h_t = m_t W_hr^T, kept as the state and written to this
// step's rows of y). Backward, per step in reverse: projected_state_kernel over h's P units (dL/dh_t
// = dG(t+1) W_hh + dy_t + what passed through dead rows; kept per step for dW_hr, and the h_{t-1}
// the step saw for dW_hh), then projected_backward_kernel over the H units (dL/dm_t = dL/dh_t W_hr,
// then the base cell's backward with it as dL/dh). After the loop the GEMMs of every cell (dW_ih,
// dX; dW_hh [G*H, P] on h_{t-1}), the bias and peephole column sums, and dW_hr = dh^T m [P, H]: one
// GEMM over all steps. No atomics: every output is one thread's sum in a fixed order.
//
// The reserve is ReserveLayout's (csrc/rnn.h); its projection slab [T, B, H] holds m of row (t, b) at
// t*B + b, zeros where the row is dead (the CPU keeps the live rows packed there: a reserve is only
// read by the back end that wrote it). Lengths as everywhere (live iff t < len[b]): a dead row keeps
// h and c, outputs zeros, and in backward passes dL/dh and dL/dc through. The state h, c and the
// gradients carried between steps are of the accumulation type (float for 16-bit storage); the
// training modifiers do not run with proj_size (the stack refuses them first).
#pragma once

namespace fastrnn::cuda {

// The projection kernel's tile: kRows batch rows x kProjUnits of h's units, a thread 1 row x 4 units.
constexpr int kProjUnits = 64;
using ProjectionShape = TileShape<kRows, kProjUnits, kStepK, 1, 4>;
static_assert(ProjectionShape::kThreads == kStepThreads, "the step kernels' block size");

// Right operand of the projected step's product: the G gate rows of W_hh [G*H, P] for units j0 ..
// j0+kUnits-1, as column n = g*kUnits + u of op(B) (row g*H + j0 + u of W_hh); K = P.
template <class T> struct GateRowsOfProjectedWhh {
  const T* w;  // [G*H, P]
  int64 H, P, j0;
  __device__ Acc<T> operator()(int64 n, int64 k) const {
    const int64 g = n / kUnits, j = j0 + n % kUnits;
    if (j >= H || k >= P) return Acc<T>(0);
    return Acc<T>(w[(g * H + j) * P + k]);
  }
  __device__ bool k_contiguous() const { return true; }
};

template <class T> struct ProjectedForwardStep {
  using A = Acc<T>;
  int64 B, H, P, t;
  const T* w_hh;         // [G*H, P]
  const T* b_hh;         // [G*H] or nullptr
  const T* w_hr;         // [P, H]
  const T* gi;           // [T, B, G*H] x W_ih^T + b_ih
  const A* h_cur;        // [B, P] state before the step
  A* h_next;             // [B, P] state after it (never aliases h_cur: other blocks still read it)
  const A* c_cur;        // [B, H]
  A* c_next;             // [B, H]
  A* m;                  // [B, H] m_t, the projection's operand (zero for dead rows)
  const int64* lengths;  // [B] or nullptr
  T* y;                  // [T, B, ldy]: this direction's P columns
  int64 ldy;
  T* saved;              // [T, B, S*H] or nullptr (inference)
  T* cells;              // [T, B, H] or nullptr (inference)
  T* m_saved;            // [T, B, H] the reserve's projection slab, or nullptr (inference)
  const T* w_ch;         // [U, H] per-unit parameters (peepholes) or nullptr
  double cell_clip;      // the LSTM variants' clip (0: none)
};

// The step's product h_{t-1} W_hh^T (+ b_hh) for this block's units and rows, then the base cell's
// pointwise forward, which writes m_t where it writes h for the unprojected cell.
template <class Cell, class T>
__global__ void __launch_bounds__(kStepThreads) projected_cell_kernel(const ProjectedForwardStep<T> p) {
  constexpr int G = Cell::kGates, S = Cell::kSaved, U = SpecTraits<Cell>::kUnitRows;
  using Shape = ForwardStepShape<G>;
  using A = Acc<T>;
  __shared__ TileSmem<Shape, A> smem;
  const int64 H = p.H, GH = G * H;
  const int64 j0 = int64(blockIdx.x) * kUnits, b0 = int64(blockIdx.y) * kRows;
  A acc[1][G] = {};  // acc[0][g]: gate g of unit j0 + tx for row b0 + ty
  tile_product<Shape>(StateRows<T>{p.h_cur, nullptr, p.B, p.P}, GateRowsOfProjectedWhh<T>{p.w_hh, H, p.P, j0}, b0, 0,
                      p.P, smem, acc);

  const int tx = threadIdx.x % Shape::kThreadsN, ty = threadIdx.x / Shape::kThreadsN;
  const int64 b = b0 + ty, j = j0 + tx, bj = b * H + j;
  if (b >= p.B || j >= H) return;
  const int64 tb = p.t * p.B + b;
  if (p.lengths && p.t >= p.lengths[b]) {  // dead: keep c; m = 0 (the projection keeps h)
    p.c_next[bj] = p.c_cur[bj];
    p.m[bj] = A(0);
    if (p.m_saved) p.m_saved[tb * H + j] = T(0);  // dW_hr reads every row of the slab
    return;
  }
  A gi[G], gh[G], saved[S], unit[U > 0 ? U : 1];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    gi[g] = A(p.gi[tb * GH + g * H + j]);
    gh[g] = acc[0][g] + (p.b_hh ? A(p.b_hh[g * H + j]) : A(0));
  }
#pragma unroll
  for (int u = 0; u < U; ++u) unit[u] = A(p.w_ch[u * H + j]);
  const A* unit_params = U > 0 ? unit : nullptr;
  const A hp = A(0);  // the LSTM's pointwise maths does not read h_{t-1} (which is P wide here)
  const A cp = p.c_cur[bj];
  A m, c;
  // Two calls so that the cell's `if (saved)` folds away in each and `saved` stays in registers.
  if (p.saved) Cell::forward(ForwardRow<A>{gi, gh, &hp, &cp, &m, &c, saved, unit_params, p.cell_clip}, 0, 1, 1);
  else Cell::forward(ForwardRow<A>{gi, gh, &hp, &cp, &m, &c, nullptr, unit_params, p.cell_clip}, 0, 1, 1);
  p.m[bj] = m;
  p.c_next[bj] = c;
  if (p.cells) p.cells[tb * H + j] = T(c);
  if (p.m_saved) p.m_saved[tb * H + j] = T(m);
  if (p.saved)
#pragma unroll
    for (int s = 0; s < S; ++s) p.saved[tb * S * H + s * H + j] = T(saved[s]);
}

// h_t = m_t W_hr^T for this block's kProjUnits units of h and kRows rows: the new state and this
// step's rows of y; a dead row keeps its state and outputs zeros.
template <class T>
__global__ void __launch_bounds__(kStepThreads) projection_kernel(const ProjectedForwardStep<T> p) {
  using Shape = ProjectionShape;
  using A = Acc<T>;
  __shared__ TileSmem<Shape, A> smem;
  const int64 P = p.P;
  const int64 u0 = int64(blockIdx.x) * Shape::BN, b0 = int64(blockIdx.y) * Shape::BM;
  A acc[1][Shape::TN] = {};  // acc[0][i]: unit u0 + tx + i*kThreadsN of row b0 + ty
  tile_product<Shape>(StateRows<T>{p.m, nullptr, p.B, p.H}, MatOp<T>{p.w_hr, p.H, P, p.H, false}, b0, u0, p.H, smem,
                      acc);

  const int tx = threadIdx.x % Shape::kThreadsN, ty = threadIdx.x / Shape::kThreadsN;
  const int64 b = b0 + ty;
  if (b >= p.B) return;
  const bool live = !p.lengths || p.t < p.lengths[b];
  T* yrow = p.y + (p.t * p.B + b) * p.ldy;
#pragma unroll
  for (int i = 0; i < Shape::TN; ++i) {
    const int64 u = u0 + tx + i * Shape::kThreadsN;
    if (u < P) {
      const A h = live ? acc[0][i] : p.h_cur[b * P + u];
      p.h_next[b * P + u] = h;
      yrow[u] = live ? T(h) : T(0);
    }
  }
}

template <class T> struct ProjectedBackwardStep {
  using A = Acc<T>;
  int64 T_, B, H, P;
  int64 t;       // step to run, or -1: only finish dh for the initial state (writes dh0)
  int64 t_prev;  // the step processed just before (its dG feeds this one), or -1 for the first
  bool reverse;
  const T* w_hh;         // [G*H, P]
  const T* w_hr;         // [P, H]
  const int64* lengths;  // [B] or nullptr
  const T* h0;           // [B, P] or nullptr (zeros)
  const T* c0;           // [B, H] or nullptr
  const T* y;            // [T, B, ldy] this direction's outputs h (saved by forward)
  int64 ldy;
  const T* saved;        // [T, B, S*H]
  const T* cells;        // [T, B, H]
  const T* m_saved;      // [T, B, H] the forward's m
  const T* dy;           // [T, B, ldy] same layout as y
  A* dh_carry;           // [B, P] in/out: what passed through dead rows (dL/dh from later steps), else 0
  A* dh;                 // [B, P] dL/dh_t of the step: the second kernel's operand
  A* dc_carry;           // [B, H] in/out: dL/dc_t
  T* dgi;                // [T, B, G*H] out (zero for dead rows)
  T* dh_steps;           // [T, B, P] out: dL/dh_t per step (zero for dead rows), for dW_hr
  T* h_prev;             // [T, B, P] out: the h_{t-1} each step saw (zero for dead rows), for dW_hh
  T* dh0;                // [B, P] out (t == -1 only)
  const T* w_ch;         // [U, H] per-unit parameters (peepholes) or nullptr
  T* dunit;              // [T, B, U*H] out: each row's share of dL/dw_ch (summed after the loop)
  double cell_clip;      // the LSTM variants' clip (0: none)
};

// Over h's P units: dL/dh_t = dG(t_prev) W_hh (the later step's share) + what passed through + dy_t.
template <class Cell, class T>
__global__ void __launch_bounds__(kStepThreads) projected_state_kernel(const ProjectedBackwardStep<T> p) {
  constexpr int G = Cell::kGates;
  using Shape = BackwardStepShape;
  using A = Acc<T>;
  __shared__ TileSmem<Shape, A> smem;
  const int64 B = p.B, P = p.P, GH = G * p.H;
  const int64 u0 = int64(blockIdx.x) * kUnits, b0 = int64(blockIdx.y) * kRows;
  A acc[1][1] = {};
  // dG(t_prev) [B, G*H] . W_hh [G*H, P] for this block's rows and units; uniform over the grid.
  if (p.t_prev >= 0)
    tile_product<Shape>(MatOp<T>{p.dgi + p.t_prev * B * GH, GH, B, GH, false}, MatOp<T>{p.w_hh, P, P, GH, true}, b0,
                        u0, GH, smem, acc);

  const int tx = threadIdx.x % Shape::kThreadsN, ty = threadIdx.x / Shape::kThreadsN;
  const int64 b = b0 + ty, u = u0 + tx;
  if (b >= B || u >= P) return;
  const int64 bu = b * P + u;
  const A dh_in = p.dh_carry[bu] + acc[0][0];
  if (p.t < 0) {
    p.dh0[bu] = T(dh_in);
    return;
  }
  const int64 t = p.t, tb = t * B + b;
  const int64 len = p.lengths ? p.lengths[b] : p.T_;
  if (t >= len) {  // dead: dL/dh passes through; nothing for the weight gradients
    p.dh_carry[bu] = dh_in;
    p.dh[bu] = A(0);
    p.dh_steps[tb * P + u] = T(0);
    p.h_prev[tb * P + u] = T(0);
    return;
  }
  const A dh_t = dh_in + A(p.dy[tb * p.ldy + u]);
  p.dh[bu] = dh_t;
  p.dh_steps[tb * P + u] = T(dh_t);
  // the state this step started from: the previous step in processing order, or the initial state
  const bool has_prev = p.reverse ? t + 1 < len : t > 0;
  const int64 tb_prev = (p.reverse ? t + 1 : t - 1) * B + b;
  p.h_prev[tb * P + u] = has_prev ? p.y[tb_prev * p.ldy + u] : (p.h0 ? p.h0[bu] : T(0));
  p.dh_carry[bu] = A(0);  // dL/dh_{t-1} is dG(t) W_hh alone (the next launch's product)
}

// Over the H units: dL/dm_t = dL/dh_t W_hr, then the base cell's backward with it as dL/dh: dG(t),
// dL/dc_{t-1}, the peepholes' shares. Dead rows: no gate gradient, dL/dc passes through.
template <class Cell, class T>
__global__ void __launch_bounds__(kStepThreads) projected_backward_kernel(const ProjectedBackwardStep<T> p) {
  constexpr int G = Cell::kGates, S = Cell::kSaved, U = SpecTraits<Cell>::kUnitRows;
  static_assert(!SpecTraits<Cell>::kSeparateHiddenGrad, "the LSTM's dG_h is its dG");
  using Shape = BackwardStepShape;
  using A = Acc<T>;
  __shared__ TileSmem<Shape, A> smem;
  const int64 B = p.B, H = p.H, GH = G * H, t = p.t;
  const int64 j0 = int64(blockIdx.x) * kUnits, b0 = int64(blockIdx.y) * kRows;
  A acc[1][1] = {};
  // dL/dh_t [B, P] . W_hr [P, H] for this block's rows and units
  tile_product<Shape>(StateRows<T>{p.dh, nullptr, B, p.P}, MatOp<T>{p.w_hr, H, H, p.P, true}, b0, j0, p.P, smem, acc);

  const int tx = threadIdx.x % Shape::kThreadsN, ty = threadIdx.x / Shape::kThreadsN;
  const int64 b = b0 + ty, j = j0 + tx;
  if (b >= B || j >= H) return;
  const int64 bj = b * H + j, tb = t * B + b;
  const int64 len = p.lengths ? p.lengths[b] : p.T_;
  if (t >= len) {
#pragma unroll
    for (int g = 0; g < G; ++g) p.dgi[tb * GH + g * H + j] = T(0);
#pragma unroll
    for (int u = 0; u < U; ++u) p.dunit[(tb * U + u) * H + j] = T(0);
    return;
  }
  const bool has_prev = p.reverse ? t + 1 < len : t > 0;
  const int64 tb_prev = (p.reverse ? t + 1 : t - 1) * B + b;
  const A cp = A(has_prev ? p.cells[tb_prev * H + j] : (p.c0 ? p.c0[bj] : T(0)));
  A saved[S], unit[U > 0 ? U : 1], dunit[U > 0 ? U : 1];
#pragma unroll
  for (int s = 0; s < S; ++s) saved[s] = A(p.saved[tb * S * H + s * H + j]);
#pragma unroll
  for (int u = 0; u < U; ++u) unit[u] = A(p.w_ch[u * H + j]);
  const A hp = A(0), m = A(p.m_saved[tb * H + j]), c = A(p.cells[tb * H + j]);
  const A dm = acc[0][0], dc = p.dc_carry[bj];
  A dgi[G] = {}, dh_unused = A(0), dc_prev = A(0);  // the LSTM's dh bypass is zero (and H wide)
  const BackwardRow<A> row{saved, &hp, &cp, &m, &c, &dm, &dc, dgi, dgi, &dh_unused, &dc_prev,
                           U > 0 ? unit : nullptr, U > 0 ? dunit : nullptr, p.cell_clip, A(0)};
  Cell::backward(row, 0, 1);
#pragma unroll
  for (int g = 0; g < G; ++g) p.dgi[tb * GH + g * H + j] = T(dgi[g]);
#pragma unroll
  for (int u = 0; u < U; ++u) p.dunit[(tb * U + u) * H + j] = T(dunit[u]);
  p.dc_carry[bj] = dc_prev;
}

template <class Cell, class T>
void projected_layer_forward(cudaStream_t stream, const RnnConfig& cfg, const LayerForwardArgs<T>& a) {
  static_assert(projected_step_phases(typename Cell::Step{}), "the projected LSTM's phase list");
  using A = Acc<T>;
  constexpr int64 G = Cell::kGates;
  const int64 T_ = cfg.T, B = cfg.B, H = cfg.H, P = cfg.h_size(), GH = G * H, TB = T_ * B, BH = B * H, BP = B * P;
  const auto& w = a.w;
  Scratch<T> gi(TB * GH, stream);                                         // [T, B, G*H]
  Scratch<A> hstate(2 * BP, stream), cstate(2 * BH, stream), m(BH, stream);  // ping-pong [2, B, P], [2, B, H]; [B, H]
  gemm<T>(stream, false, true, TB, GH, a.in_size, A(1), a.x, a.in_size, w.w_ih, a.in_size, A(0), gi.get(), GH, w.b_ih);
  convert(stream, BP, a.h0, hstate.get());
  convert(stream, BH, a.c0, cstate.get());
  A *h_cur = hstate.get(), *h_next = h_cur + BP, *c_cur = cstate.get(), *c_next = c_cur + BH;
  const dim3 projection_grid(static_cast<unsigned>(ceil_div(P, ProjectionShape::BN)),
                             static_cast<unsigned>(ceil_div(B, ProjectionShape::BM)));
  for (int64 s = 0; s < T_; ++s) {
    const ProjectedForwardStep<T> p{B,       H,        P,       a.reverse ? T_ - 1 - s : s,
                                    w.w_hh,  w.b_hh,   w.w_hr,  gi.get(),
                                    h_cur,   h_next,   c_cur,   c_next,
                                    m.get(), a.lengths, a.y,    a.ldy,
                                    a.saved, a.cells,  a.saved ? a.projection_in : nullptr,
                                    w.w_ch,  cfg.options.cell_clip};
    launch(projected_cell_kernel<Cell, T>, step_grid(B, H), kStepThreads, stream, p);
    launch(projection_kernel<T>, projection_grid, kStepThreads, stream, p);  // after every unit of m (the Barrier)
    std::swap(h_cur, h_next);
    std::swap(c_cur, c_next);
  }
  convert(stream, BP, static_cast<const A*>(h_cur), a.hn);
  convert(stream, BH, static_cast<const A*>(c_cur), a.cn);
}

template <class Cell, class T>
void projected_layer_backward(cudaStream_t stream, const RnnConfig& cfg, const LayerBackwardArgs<T>& a) {
  static_assert(projected_step_phases(typename Cell::Step{}), "the projected LSTM's phase list");
  using A = Acc<T>;
  constexpr int64 G = Cell::kGates, U = SpecTraits<Cell>::kUnitRows;
  const int64 T_ = cfg.T, B = cfg.B, H = cfg.H, P = cfg.h_size(), GH = G * H, TB = T_ * B, BH = B * H, BP = B * P;
  const auto& w = a.w;
  const auto& g = a.g;
  Scratch<T> dgi(TB * GH, stream);                            // [T, B, G*H]
  Scratch<T> dh_steps(TB * P, stream), h_prev(TB * P, stream);  // [T, B, P]
  Scratch<T> dunit(TB * U * H, stream);                       // [T, B, U*H] each row's share of dL/dw_ch
  Scratch<A> dh_carry(BP, stream), dh(BP, stream), dc_carry(BH, stream);
  convert(stream, BP, a.dhn, dh_carry.get());
  convert(stream, BH, a.dcn, dc_carry.get());

  ProjectedBackwardStep<T> p{T_,          B,           H,        P,       0,       -1,
                             a.reverse,   w.w_hh,      w.w_hr,   a.lengths, a.h0,  a.c0,
                             a.y,         a.ldy,       a.saved,  a.cells, a.projection_in, a.dy,
                             dh_carry.get(), dh.get(), dc_carry.get(), dgi.get(), dh_steps.get(), h_prev.get(),
                             a.dh0,       w.w_ch,      dunit.get(), cfg.options.cell_clip};
  const dim3 state_grid(static_cast<unsigned>(ceil_div(P, kUnits)), static_cast<unsigned>(ceil_div(B, kRows)));
  for (int64 s = 0; s <= T_; ++s) {  // s == T_: finish dh0 from the last step processed
    p.t = s == T_ ? -1 : a.reverse ? s : T_ - 1 - s;
    launch(projected_state_kernel<Cell, T>, state_grid, kStepThreads, stream, p);
    if (p.t >= 0) launch(projected_backward_kernel<Cell, T>, step_grid(B, H), kStepThreads, stream, p);
    p.t_prev = p.t;
  }
  convert(stream, BH, static_cast<const A*>(dc_carry.get()), a.dc0);

  // One GEMM each over all T*B rows (dead rows of dG, h_prev, dh_steps and m are zero)
  layer_input_grads(stream, cfg, a, GH, dgi.get());  // dW_ih, dX
  gemm<T>(stream, true, false, GH, P, TB, A(1), dgi.get(), GH, h_prev.get(), P, A(0), g.dw_hh, P);
  gemm<T>(stream, true, false, P, H, TB, A(1), dh_steps.get(), P, a.projection_in, H, A(0), g.dw_hr, H);
  if (g.db_ih) column_sums<T>(stream, dgi.get(), TB, GH, GH, g.db_ih);
  if (g.db_hh) column_sums<T>(stream, dgi.get(), TB, GH, GH, g.db_hh);
  if (U > 0) column_sums<T>(stream, dunit.get(), TB, U * H, U * H, g.dw_ch);
}

}  // namespace fastrnn::cuda
