// The CUDA stack: layers x directions around layer.cuh, the twin of csrc/cpu/stack.cpp (same reserve
// layout, so a reserve is only ever read by the back end that wrote it, but the layout is one
// definition). Layer l reads layer l-1's output [T, B, D*H]; direction d writes its H columns of it.
// Directions and layers run one after the other on the caller's stream (concurrent directions and a
// layer wavefront are planned, cuda/README.md); in backward both directions accumulate their share of
// dL/d(layer input) into one buffer in a fixed order, so results are deterministic.
#include <algorithm>

#include "check.cuh"
#include "layer.cuh"
#include "rnn_cuda.h"

namespace fastrnn::cuda {

namespace {
template <class T> const T* slice(const T* base, int64 index, int64 size) { return base ? base + index * size : nullptr; }
template <class T> T* slice(T* base, int64 index, int64 size) { return base ? base + index * size : nullptr; }

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
  const int64 widest_in = std::max(c.I, checked_mul(c.D, c.H, "D*H"));
  checked_mul(TB, GH, "T*B*G*H");
  checked_mul(TB, widest_in, "T*B*input size");
  check_grid(ceil_div(c.H, kUnits), ceil_div(c.B, kRows), "step kernel (H, B)");
  check_grid(ceil_div(std::max(TB, GH), GemmShape::BM), ceil_div(std::max({GH, widest_in, c.H}), GemmShape::BN),
             "GEMM (T*B or G*H, G*H or input size)");
  check_grid(ceil_div(GH, kColSumCols), 1, "bias gradient (G*H)");
}

template <class T> void forward(const RnnConfig& c, const ForwardArgs<T>& a, cudaStream_t stream) {
  check_sizes(c);
  const ReserveLayout lay(c);
  const int64 BH = c.B * c.H, DH = c.D * c.H, TBDH = c.T * c.B * DH;
  dispatch_cell(c.cell, [&](auto cell) {
    using Cell = decltype(cell);
    // Inference: the outputs of the layers below the last, ping-pong (one slot suffices for L = 2).
    const int64 slots = a.reserve ? 0 : std::min<int64>(c.L - 1, 2);
    Scratch<T> between(slots * TBDH, stream);
    const T* in = a.x;
    for (int64 l = 0; l < c.L; ++l) {
      T* out = a.reserve ? a.reserve + lay.layer_output(l) : l == c.L - 1 ? a.y : between.get() + (l % slots) * TBDH;
      for (int64 d = 0; d < c.D; ++d) {
        const int64 k = l * c.D + d;
        layer_forward<Cell>(stream, c, c.input_size(l), a.weights[k], in, slice(a.h0, k, BH), slice(a.c0, k, BH),
                            a.lengths, d == 1, out + d * c.H, DH, a.hn + k * BH, slice(a.cn, k, BH),
                            a.reserve ? a.reserve + lay.gates(l, d) : nullptr,
                            a.reserve && c.has_cell() ? a.reserve + lay.cells(l, d) : nullptr);
      }
      in = out;
    }
    if (a.reserve) FASTRNN_CUDA_CHECK(cudaMemcpyAsync(a.y, in, sizeof(T) * TBDH, cudaMemcpyDeviceToDevice, stream));
  });
}

template <class T> void backward(const RnnConfig& c, const BackwardArgs<T>& a, cudaStream_t stream) {
  check_sizes(c);
  const ReserveLayout lay(c);
  const int64 BH = c.B * c.H, DH = c.D * c.H, TBDH = c.T * c.B * DH;
  dispatch_cell(c.cell, [&](auto cell) {
    using Cell = decltype(cell);
    // dL/d(output of layer l-1) for l >= 1, ping-pong (one slot suffices for L = 2).
    const int64 slots = std::min<int64>(c.L - 1, 2);
    Scratch<T> between(slots * TBDH, stream);
    const T* dout = a.dy;
    for (int64 l = c.L - 1; l >= 0; --l) {
      const int64 in_size = c.input_size(l);
      const T* in = l == 0 ? a.x : a.reserve + lay.layer_output(l - 1);
      T* din = l == 0 ? a.dx : between.get() + (l % slots) * TBDH;
      FASTRNN_CUDA_CHECK(cudaMemsetAsync(din, 0, sizeof(T) * c.T * c.B * in_size, stream));
      const T* out = a.reserve + lay.layer_output(l);
      for (int64 d = 0; d < c.D; ++d) {
        const int64 k = l * c.D + d;
        layer_backward<Cell>(stream, c, in_size, a.weights[k], in, slice(a.h0, k, BH), slice(a.c0, k, BH), a.lengths,
                             d == 1, out + d * c.H, DH, a.reserve + lay.gates(l, d),
                             c.has_cell() ? a.reserve + lay.cells(l, d) : nullptr, dout + d * c.H,
                             slice(a.dhn, k, BH), slice(a.dcn, k, BH), din, a.dh0 + k * BH, slice(a.dc0, k, BH),
                             a.grads[k]);
      }
      dout = din;
    }
  });
}

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
