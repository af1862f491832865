// The CUDA back end of the shared stack (csrc/stack.h; the same stack and reserve layout as the CPU's,
// though a reserve is only ever read by the back end that wrote it), and the size checks of the
// kernels' launch limits. Directions and layers run one after the other on the caller's stream
// (concurrent directions and a layer wavefront are planned, cuda/README.md); in backward both
// directions accumulate their share of dL/d(layer input) into one buffer in a fixed order, so
// results are deterministic.
#include <algorithm>
#include <type_traits>

#include "check.cuh"
#include "layer.cuh"
#include "layer_instances.h"
#include "rnn_cuda.h"
#include "stack.h"

namespace fastrnn::cuda {

// The layers' kernels are compiled in the units generated from layer_instances.cu, not here.
FASTRNN_CUDA_ALL_INSTANCES(FASTRNN_CUDA_LAYER_EXTERN)

namespace {

void check_grid(int64 x, int64 y, const char* what) {
  if (x > kMaxGridX || y > kMaxGridY)
    throw ArgumentError(std::string(what) + ": sizes exceed the CUDA grid limits (grid " + std::to_string(x) + " x " +
                        std::to_string(y) + ", at most " + std::to_string(kMaxGridX) + " x " + std::to_string(kMaxGridY) + ")");
}
}  // namespace

void check_sizes(const RnnConfig& c) {
  if (c.T < 1 || c.B < 1 || c.I < 1 || c.H < 1 || c.L < 1 || (c.D != 1 && c.D != 2))
    throw ArgumentError("sizes must be >= 1 (and directions 1 or 2), got T=" + std::to_string(c.T) + " B=" +
                        std::to_string(c.B) + " I=" + std::to_string(c.I) + " H=" + std::to_string(c.H) + " L=" +
                        std::to_string(c.L) + " D=" + std::to_string(c.D));
  (void)ReserveLayout(c);  // every reserve product fits 64 bits
  const int64 TB = checked_mul(c.T, c.B, "T*B"), GH = checked_mul(c.gates(), c.H, "G*H");
  const int64 HW = c.h_size();  // h's width: H, or P (projected)
  const int64 widest_in = std::max(c.I, checked_mul(c.D, HW, "D*H"));
  checked_mul(TB, GH, "T*B*G*H");
  checked_mul(TB, widest_in, "T*B*input size");
  check_grid(ceil_div(c.H, kUnits), ceil_div(c.B, kRows), "step kernel (H, B)");
  if (c.options.layer_norm) check_grid(c.B, 1, "layer norm's row kernel (one block per batch row: B)");
  if (c.projected()) {
    checked_mul(TB, HW, "T*B*P");
    check_grid(ceil_div(HW, kUnits), ceil_div(c.B, kRows), "projected state kernel (P, B)");
  }
  check_grid(ceil_div(std::max({TB, GH, HW}), GemmShape::BM), ceil_div(std::max({GH, widest_in, c.H}), GemmShape::BN),
             "GEMM (T*B, G*H or P; G*H, input size or H)");
  check_grid(ceil_div(GH, kColSumCols), 1, "bias gradient (G*H)");
  (void)persistent_mode();  // the switches' values (FASTRNN_CUDA_PERSISTENT, persistent.cuh), before any work
  (void)persistent_units_override();
}

// The stack's CUDA back end (the interface is described in csrc/stack.h): everything on `stream`.
struct CudaBackend {
  cudaStream_t stream;
  template <class T> struct Buffer {
    Scratch<T> scratch;
    Buffer(const CudaBackend& be, int64 n, const char*) : scratch(n, be.stream) {}
    T* data() { return scratch.get(); }
  };
  template <class T> void zero(T* p, int64 n) const { FASTRNN_CUDA_CHECK(cudaMemsetAsync(p, 0, sizeof(T) * n, stream)); }
  template <class T> void copy(T* dst, const T* src, int64 n) const {
    FASTRNN_CUDA_CHECK(cudaMemcpyAsync(dst, src, sizeof(T) * n, cudaMemcpyDeviceToDevice, stream));
  }
  template <class Body> void for_each_direction(const RnnConfig& c, Body body) const {
    for (int64 d = 0; d < c.D; ++d) body(d, stream);
  }
  // One after the other, both into din: the layer's GEMM accumulates dL/d(input) (fixed order).
  template <class T, class Body> void accumulate_directions(const RnnConfig& c, T* din, int64, Body body) const {
    for (int64 d = 0; d < c.D; ++d) body(d, din, stream);
  }
  // Layer norm runs float32/float64 storage (its row kernels keep the state in the storage type).
  template <class Cell, class T> static constexpr bool kRuns = !SpecTraits<Cell>::kLayerNorm || std::is_same_v<Acc<T>, T>;
  template <class Cell, class T>
  void layer_forward(const RnnConfig& c, const LayerForwardArgs<T>& a, cudaStream_t s) const {
    // every spec's step has kernels (cuda_runs_step); layer norm runs float32/float64 storage
    if constexpr (!cuda::cuda_runs_step<Cell>()) throw ArgumentError("this cell's step is not implemented on CUDA");
    else if constexpr (!kRuns<Cell, T>)
      throw ArgumentError("layer norm on CUDA runs float32/float64 storage, not float16/bfloat16");
    else cuda::layer_forward<Cell>(s, c, a);
  }
  template <class Cell, class T>
  void layer_backward(const RnnConfig& c, const LayerBackwardArgs<T>& a, cudaStream_t s) const {
    if constexpr (!cuda::cuda_runs_step<Cell>()) throw ArgumentError("this cell's step is not implemented on CUDA");
    else if constexpr (!kRuns<Cell, T>)
      throw ArgumentError("layer norm on CUDA runs float32/float64 storage, not float16/bfloat16");
    else cuda::layer_backward<Cell>(s, c, a);
  }
};

// The CPU kernels clamp the projected LSTM's state gradients (grad_clip); the CUDA projection kernels
// do not yet (csrc/stack.h refuses the masked modifiers on both back ends).
template <class T> void refuse_projected_grad_clip(const RnnConfig& c, const Modifiers<T>& m) {
  if (c.projected() && m.grad_clip > 0)
    throw ArgumentError("the training modifiers (grad_clip included) do not run with proj_size on CUDA");
}

template <class T> void forward(const RnnConfig& c, const ForwardArgs<T>& a, cudaStream_t stream) {
  check_sizes(c);
  refuse_projected_grad_clip(c, a.mods);
  stack_forward(CudaBackend{stream}, c, a);
}

template <class T> void backward(const RnnConfig& c, const BackwardArgs<T>& a, cudaStream_t stream) {
  check_sizes(c);
  refuse_projected_grad_clip(c, a.mods);
  stack_backward(CudaBackend{stream}, c, a);
}

template <class T> PersistentPlan persistent_plan(const RnnConfig& c) {
  check_sizes(c);
  return dispatch_cell(c.cell, c.options, [&](auto cell) {
    using Cell = decltype(cell);
    if constexpr (!cuda::cuda_runs_step<Cell>()) {
      PersistentPlan plan;
      plan.reason = "this cell does not run on the CUDA kernels";
      return plan;
    } else {
      return layer_persistent_plan<Cell, T>(c, false);
    }
  });
}

template PersistentPlan persistent_plan<float>(const RnnConfig&);
template PersistentPlan persistent_plan<double>(const RnnConfig&);
#if defined(FASTRNN_CUDA_HALF)
template PersistentPlan persistent_plan<__half>(const RnnConfig&);
template PersistentPlan persistent_plan<__nv_bfloat16>(const RnnConfig&);
#endif

template void forward<float>(const RnnConfig&, const ForwardArgs<float>&, cudaStream_t);
template void forward<double>(const RnnConfig&, const ForwardArgs<double>&, cudaStream_t);
template void backward<float>(const RnnConfig&, const BackwardArgs<float>&, cudaStream_t);
template void backward<double>(const RnnConfig&, const BackwardArgs<double>&, cudaStream_t);
#if defined(FASTRNN_CUDA_HALF)
template void forward<__half>(const RnnConfig&, const ForwardArgs<__half>&, cudaStream_t);
template void forward<__nv_bfloat16>(const RnnConfig&, const ForwardArgs<__nv_bfloat16>&, cudaStream_t);
template void backward<__half>(const RnnConfig&, const BackwardArgs<__half>&, cudaStream_t);
template void backward<__nv_bfloat16>(const RnnConfig&, const BackwardArgs<__nv_bfloat16>&, cudaStream_t);
#endif

}  // namespace fastrnn::cuda
