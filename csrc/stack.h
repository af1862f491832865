// THE stack, shared by the CPU and CUDA back ends: layers x directions x lengths x h0/c0 around a
// back end's phase loop, and the reserve layout (rnn.h) that a training forward fills. Layer l
// reads layer l-1's output [T, B, D*H]; direction d writes its H columns of it (the projected LSTM:
// D*P and P, RnnConfig::h_size(); its c stays H wide). A training forward
// keeps every layer's output and the cells' saved values in the reserve; backward walks the layers
// top-down, each direction adding its share of dL/d(layer input). No cell maths and no memory
// space here: the back end (Backend) says how to run a layer, allocate, clear, copy, and run the
// two directions (the CPU runs them concurrently, CUDA one after the other on the stream).
//
// A Backend provides (csrc/cpu/stack.cpp's CpuBackend, cuda/stack.cu's CudaBackend):
//   template <class T> struct Buffer { Buffer(const Backend&, int64 n, const char* what); T* data(); }
//                                        scratch of n elements (`what` names it in out-of-memory errors)
//   zero(T* p, int64 n), copy(T* dst, const T* src, int64 n)                           its memory
//   for_each_direction(cfg, body)        body(d, ctx) for d < D; ctx is what a layer runs on
//   accumulate_directions(cfg, din, n, body)   body(d, T* din_d, ctx): each direction's dL/d(input)
//                                        into din_d; afterwards din [n] holds their sum
//   layer_forward<Cell>(cfg, LayerForwardArgs<T>, ctx), layer_backward<Cell>(cfg, LayerBackwardArgs<T>, ctx)
#pragma once

#include <algorithm>

#include "rnn.h"

namespace fastrnn {

namespace stack_detail {
template <class T> const T* slice(const T* base, int64 index, int64 size) { return base ? base + index * size : nullptr; }
template <class T> T* slice(T* base, int64 index, int64 size) { return base ? base + index * size : nullptr; }
}  // namespace stack_detail

// The masked training modifiers run with the unprojected cells only (grad_clip runs with both).
template <class T> void refuse_projected_modifiers(const RnnConfig& c, const Modifiers<T>& m) {
  if (c.projected() && (m.recurrent_mask || m.zoneout_h || m.zoneout_c || m.seeded.draws_recurrent() ||
                        m.seeded.draws_zoneout()))
    throw ArgumentError("the training modifiers recurrent dropout and zoneout do not run with proj_size");
}

template <class Backend, class T> void stack_forward(const Backend& be, const RnnConfig& c, const ForwardArgs<T>& a) {
  using stack_detail::slice;
  refuse_projected_modifiers(c, a.mods);
  const ReserveLayout lay(c);
  // h's width HW: H, or P for the projected LSTM (h0, hn, the outputs); c is H wide (BH)
  const int64 HW = c.h_size(), BH = c.B * c.H, BHW = c.B * HW, DH = c.D * HW, TBDH = c.T * c.B * DH;
  dispatch_cell(c.cell, c.options, [&](auto cell) {
    using Cell = decltype(cell);
    // Inference: the outputs of the layers below the last, ping-pong (one slot suffices for L = 2;
    // every element is written by the layer).
    const int64 slots = a.reserve ? 0 : std::min<int64>(c.L - 1, 2);
    typename Backend::template Buffer<T> between(be, slots * TBDH, "the outputs between layers [T, B, D*H]");
    const T* in = a.x;
    for (int64 l = 0; l < c.L; ++l) {
      T* out = a.reserve ? a.reserve + lay.layer_output(l) : l == c.L - 1 ? a.y : between.data() + (l % slots) * TBDH;
      be.for_each_direction(c, [&](int64 d, auto ctx) {
        const int64 k = l * c.D + d;
        LayerForwardArgs<T> layer{c.input_size(l), a.weights[k], in, slice(a.h0, k, BHW), slice(a.c0, k, BH),
                                        a.lengths, d == 1, out + d * HW, DH, a.hn + k * BHW, slice(a.cn, k, BH),
                                        a.reserve ? a.reserve + lay.gates(l, d) : nullptr,
                                        a.reserve && c.has_cell_state() ? a.reserve + lay.cells(l, d) : nullptr};
        layer.h_mask = slice(a.mods.recurrent_mask, k, BH);
        layer.zone_h = slice(a.mods.zoneout_h, k, c.T * BH);
        layer.zone_c = slice(a.mods.zoneout_c, k, c.T * BH);
        layer.pre_h = a.reserve ? slice(a.mods.pre_h, k, c.T * BH) : nullptr;
        layer.pre_c = a.reserve ? slice(a.mods.pre_c, k, c.T * BH) : nullptr;
        layer.projection_in = a.reserve && lay.projection_size ? a.reserve + lay.projection(l, d) : nullptr;
        layer.seeded = a.mods.seeded;
        layer.seeded.stream += k;
        be.template layer_forward<Cell>(c, layer, ctx);
      });
      in = out;
    }
    if (a.reserve) be.copy(a.y, in, TBDH);
  });
}

template <class Backend, class T> void stack_backward(const Backend& be, const RnnConfig& c, const BackwardArgs<T>& a) {
  using stack_detail::slice;
  refuse_projected_modifiers(c, a.mods);
  const ReserveLayout lay(c);
  const int64 HW = c.h_size(), BH = c.B * c.H, BHW = c.B * HW, DH = c.D * HW, TBDH = c.T * c.B * DH;
  dispatch_cell(c.cell, c.options, [&](auto cell) {
    using Cell = decltype(cell);
    // dL/d(output of layer l-1) for l >= 1, ping-pong (one slot suffices for L = 2).
    const int64 slots = std::min<int64>(c.L - 1, 2);
    typename Backend::template Buffer<T> between(be, slots * TBDH, "the layers' input gradients [T, B, D*H]");
    const T* dout = a.dy;
    for (int64 l = c.L - 1; l >= 0; --l) {
      const int64 in_size = c.input_size(l), in_count = c.T * c.B * in_size;
      const T* in = l == 0 ? a.x : a.reserve + lay.layer_output(l - 1);
      T* din = l == 0 ? a.dx : between.data() + (l % slots) * TBDH;
      be.zero(din, in_count);  // the layers accumulate into it
      const T* out = a.reserve + lay.layer_output(l);
      be.accumulate_directions(c, din, in_count, [&](int64 d, T* din_d, auto ctx) {
        const int64 k = l * c.D + d;
        LayerBackwardArgs<T> layer{in_size, a.weights[k], in, slice(a.h0, k, BHW), slice(a.c0, k, BH), a.lengths,
                                         d == 1, out + d * HW, DH, a.reserve + lay.gates(l, d),
                                         c.has_cell_state() ? a.reserve + lay.cells(l, d) : nullptr, dout + d * HW,
                                         slice(a.dhn, k, BHW), slice(a.dcn, k, BH), din_d, a.dh0 + k * BHW,
                                         slice(a.dc0, k, BH), a.grads[k]};
        layer.h_mask = slice(a.mods.recurrent_mask, k, BH);
        layer.grad_clip = a.mods.grad_clip;
        layer.zone_h = slice(a.mods.zoneout_h, k, c.T * BH);
        layer.zone_c = slice(a.mods.zoneout_c, k, c.T * BH);
        layer.pre_h = slice(static_cast<const T*>(a.mods.pre_h), k, c.T * BH);
        layer.pre_c = slice(static_cast<const T*>(a.mods.pre_c), k, c.T * BH);
        layer.projection_in = lay.projection_size ? a.reserve + lay.projection(l, d) : nullptr;
        layer.seeded = a.mods.seeded;
        layer.seeded.stream += k;
        be.template layer_backward<Cell>(c, layer, ctx);
      });
      dout = din;
    }
  });
}

}  // namespace fastrnn
