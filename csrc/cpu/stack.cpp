// The CPU stack: layers x directions around layer.h, and the thread-count setting. Layer l reads
// layer l-1's output [T, B, D*H]; direction d writes its H columns of it. A training forward keeps
// every layer's output and the cells' saved values in the reserve (layout in rnn.h); backward walks
// the layers top-down, each direction accumulating its share of dL/d(layer input).
#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/layer.h"
#include "rnn.h"

namespace fastrnn::cpu {

namespace {
int default_threads() {
#ifdef _OPENMP
  return std::max(1, omp_get_max_threads());
#else
  return 1;
#endif
}
std::atomic<int> g_threads{default_threads()};
const bool g_blas_single = (blas_single_threaded(), true);

template <class T> const T* slice(const T* base, int64 index, int64 size) { return base ? base + index * size : nullptr; }
template <class T> T* slice(T* base, int64 index, int64 size) { return base ? base + index * size : nullptr; }
}  // namespace

int num_threads() { return g_threads.load(std::memory_order_relaxed); }
int get_num_threads() { return num_threads(); }
void set_num_threads(int n) {
  if (n < 1) throw ArgumentError("num_threads must be >= 1, got " + std::to_string(n));
  g_threads.store(n);
}

template <class T> void forward(const RnnConfig& c, const ForwardArgs<T>& a) {
  const ReserveLayout lay(c);
  const int64 BH = c.B * c.H, DH = c.D * c.H;
  dispatch_cell(c.cell, [&](auto cell) {
    using Cell = decltype(cell);
    std::vector<T> between[2];  // inference: outputs of the layers below the last, ping-pong
    const T* in = a.x;
    for (int64 l = 0; l < c.L; ++l) {
      T* out;
      if (a.reserve) out = a.reserve + lay.layer_output(l);
      else if (l == c.L - 1) out = a.y;
      else {
        between[l % 2].resize(c.T * c.B * DH);
        out = between[l % 2].data();
      }
      for (int64 d = 0; d < c.D; ++d) {
        const int64 k = l * c.D + d;
        layer_forward<Cell>(c, c.input_size(l), a.weights[k], in, slice(a.h0, k, BH), slice(a.c0, k, BH), a.lengths,
                            d == 1, out + d * c.H, DH, a.hn + k * BH, slice(a.cn, k, BH),
                            a.reserve ? a.reserve + lay.gates(l, d) : nullptr,
                            a.reserve && c.has_cell() ? a.reserve + lay.cells(l, d) : nullptr);
      }
      in = out;
    }
    if (a.reserve) std::memcpy(a.y, in, sizeof(T) * c.T * c.B * DH);
  });
}

template <class T> void backward(const RnnConfig& c, const BackwardArgs<T>& a) {
  const ReserveLayout lay(c);
  const int64 BH = c.B * c.H, DH = c.D * c.H;
  dispatch_cell(c.cell, [&](auto cell) {
    using Cell = decltype(cell);
    std::vector<T> between[2];  // dL/d(output of layer l-1), ping-pong
    const T* dout = a.dy;
    for (int64 l = c.L - 1; l >= 0; --l) {
      const int64 in_size = c.input_size(l);
      const T* in = l == 0 ? a.x : a.reserve + lay.layer_output(l - 1);
      T* din;
      if (l == 0) din = a.dx;
      else {
        between[l % 2].resize(c.T * c.B * DH);
        din = between[l % 2].data();
      }
      std::memset(din, 0, sizeof(T) * c.T * c.B * in_size);
      const T* out = a.reserve + lay.layer_output(l);
      for (int64 d = 0; d < c.D; ++d) {
        const int64 k = l * c.D + d;
        layer_backward<Cell>(c, in_size, a.weights[k], in, slice(a.h0, k, BH), slice(a.c0, k, BH), a.lengths, d == 1,
                             out + d * c.H, DH, a.reserve + lay.gates(l, d),
                             c.has_cell() ? a.reserve + lay.cells(l, d) : nullptr, dout + d * c.H,
                             slice(a.dhn, k, BH), slice(a.dcn, k, BH), din, a.dh0 + k * BH, slice(a.dc0, k, BH),
                             a.grads[k]);
      }
      dout = din;
    }
  });
}

template void forward<float>(const RnnConfig&, const ForwardArgs<float>&);
template void forward<double>(const RnnConfig&, const ForwardArgs<double>&);
template void backward<float>(const RnnConfig&, const BackwardArgs<float>&);
template void backward<double>(const RnnConfig&, const BackwardArgs<double>&);

}  // namespace fastrnn::cpu
