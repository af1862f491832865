// pybind11 entry points of the CUDA back end, registered as the `_core.cuda` submodule by
// csrc/bindings.cpp when the extension is built with CUDA. They take raw device pointers (Python
// ints, e.g. torch's tensor.data_ptr(); 0 = absent) so that a framework owns every buffer and no
// array library is needed here. They only validate and dispatch: sizes >= 1 and 64-bit products,
// required pointers present, every pointer device memory of the current device, then the kernels
// run on `stream` (an integer cudaStream_t, e.g. torch.cuda.current_stream().cuda_stream; 0 = the
// legacy default stream) with the GIL released and no device synchronisation. What cannot be checked
// here (buffer sizes, lengths values in [1, T]) is the caller's contract, as for any raw-pointer API.
//
//   reserve_size(cell, T, B, I, H, L, bidirectional, peephole=False, coupled=False, cell_clip=0.0,
//                reset_after=True, layer_norm=False, proj_size=0) -> int
//                                                          (elements; the CPU layout, rnn.h)
//   forward(cell, dtype, T, B, I, H, L, bidirectional,
//           x_ptr, weight_ptrs, h0_ptr, c0_ptr, lengths_ptr,
//           y_ptr, hn_ptr, cn_ptr, reserve_ptr, stream, allow_tf32=False,
//           recurrent_mask_ptr=0, zoneout_h_ptr=0, zoneout_c_ptr=0, pre_h_ptr=0, pre_c_ptr=0,
//           peephole=False, coupled=False, cell_clip=0.0, reset_after=True, layer_norm=False, proj_size=0) -> None
//   backward(cell, dtype, T, B, I, H, L, bidirectional,
//            x_ptr, weight_ptrs, h0_ptr, c0_ptr, lengths_ptr, reserve_ptr,
//            dy_ptr, dhn_ptr, dcn_ptr, dx_ptr, dh0_ptr, dc0_ptr, grad_ptrs, stream, allow_tf32=False,
//            recurrent_mask_ptr=0, grad_clip=0.0, zoneout_h_ptr=0, zoneout_c_ptr=0, pre_h_ptr=0, pre_c_ptr=0,
//            peephole=False, coupled=False, cell_clip=0.0, reset_after=True, layer_norm=False, proj_size=0) -> None
//   persistent_plan(cell, dtype, T, B, I, H, L, bidirectional, peephole=False, coupled=False, cell_clip=0.0,
//                   reset_after=True, layer_norm=False) -> dict
//                              whether forward's layers run on the persistent kernel now (persistent.cuh,
//                              FASTRNN_CUDA_PERSISTENT) and why not; needs a device (RuntimeError without)
//   device_count() -> int;  runtime_version() -> int;  driver_version() -> int   (e.g. 13000 = 13.0)
//   cublas_status() -> str      ("cuBLAS <version> (<library>)", or why the own GEMM runs instead)
//
// allow_tf32: float32 products on cuBLAS may use TF32 tensor cores (torch passes
// torch.backends.cuda.matmul.allow_tf32); the recurrent step kernels always compute in float32.
// cell: 0 rnn_tanh, 1 rnn_relu, 2 lstm, 3 gru (as _core.forward). dtype: "float32" | "float64" |
// "float16" | "bfloat16" (16-bit storage, float arithmetic and state; cuda/dtypes.h).
// All buffers time-major and C-contiguous, of dtype: x [T, B, I], y/dy [T, B, D*H], h0/c0/hn/cn/dhn/
// dcn/dh0/dc0 [L*D, B, H], reserve [reserve_size(...)], dx [T, B, I]; lengths: device int64 [B] in
// [1, T] or 0. weight_ptrs: L*D tuples (w_ih [G*H, I_l], w_hh [G*H, H][, b_ih [G*H], b_hh [G*H]]),
// index l*D + d, all with or all without bias; grad_ptrs mirrors weight_ptrs (fully overwritten).
// c0, cn, dcn, dc0 are the LSTM's cell states: 0 for the other cells; cn and dc0 required for the LSTM.
// The keywords after allow_tf32 are the CPU pointer entry points' (_core.forward_ptrs/backward_ptrs,
// csrc/pointer_args.h): the training modifiers (rnn.h's Modifiers: recurrent_mask [L*D, B, H],
// zoneout_h/_c [L*D, T, B, H], pre_h/_c [L*D, T, B, H] the zoned-out states' h~, c~ a training forward
// writes and backward reads, grad_clip C > 0 or 0 = off) and the LSTM variants (peephole: each
// weight tuple ends with w_ch [U, H]; coupled: G = 3; cell_clip C > 0 or 0 = none), and the GRU's
// reset_after=False (the reset-before GRU; without recurrent_mask), and layer_norm=True (each weight
// tuple ends with ln_weight_ih, ln_weight_hh [G*H][, ln_weight_c, ln_bias_c [H]]; float32/float64,
// without the modifiers: ValueError otherwise), and the LSTM's proj_size = P > 0 (torch.nn.LSTM's
// projection; each weight tuple ends with w_hr [P, H], w_hh is [G*H, P], and h is P wide wherever it
// appears: h0/hn/dhn/dh0 [L*D, B, P], y/dy [T, B, D*P], the layers above the first read D*P; c stays
// H wide; without the training modifiers: ValueError).
// forward: reserve_ptr 0 = inference (nothing saved). backward: reserve_ptr from a training forward
// with the same arguments; dhn/dcn 0 = zero; dx is overwritten.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "pointer_args.h"
#include "rnn_cuda.h"

#if defined(FASTRNN_CUDA_CUBLAS)
#include "blas.h"
#define FASTRNN_BINDINGS_CUBLAS 1
#endif

namespace py = pybind11;

namespace fastrnn::cuda {

namespace {

using pointer_args::Ptr;
using pointer_args::Pointers;

RnnConfig make_config(int cell, int64 T, int64 B, int64 I, int64 H, int64 L, bool bidirectional, bool peephole,
                      bool coupled, double cell_clip, bool reset_after, bool layer_norm, int64 proj_size) {
  const CellOptions options =
      pointer_args::cell_options(peephole, coupled, cell_clip, reset_after, layer_norm, proj_size);
  const RnnConfig c = pointer_args::make_config(cell, T, B, I, H, L, bidirectional, options);
  check_sizes(c);  // and the kernels' launch limits
  return c;
}

// dtype name -> f(T{}) with T the storage type, at one switch point.
template <class F> void dispatch_dtype(const std::string& dtype, F&& f) {
  if (dtype == "float32") return f(float{});
  if (dtype == "float64") return f(double{});
#if defined(FASTRNN_CUDA_HALF)
  if (dtype == "float16") return f(__half{});
  if (dtype == "bfloat16") return f(__nv_bfloat16{});
  throw ArgumentError("dtype must be 'float32', 'float64', 'float16' or 'bfloat16', got '" + dtype + "'");
#else
  throw ArgumentError("dtype must be 'float32' or 'float64' (this build has no 16-bit types), got '" + dtype + "'");
#endif
}

// Every given pointer must be device memory of the current device (which must exist).
void check_on_device(const Pointers& ptrs) {
  require_device();
  for (const auto& [p, name] : ptrs.given) check_device_pointer(p, name.c_str());
}

cudaStream_t as_stream(Ptr s) { return reinterpret_cast<cudaStream_t>(s); }

// TF32 for the call's cuBLAS products (on this thread), where the build has cuBLAS.
struct MathMode {
#if defined(FASTRNN_BINDINGS_CUBLAS)
  explicit MathMode(bool allow_tf32) : tf32(allow_tf32) {}
  blas::ScopedTf32 tf32;
#else
  explicit MathMode(bool) {}
#endif
};

template <class T>
void forward_t(const RnnConfig& c, Ptr x, const py::list& weights, Ptr h0, Ptr c0, Ptr lengths, Ptr y, Ptr hn, Ptr cn,
               Ptr reserve, Ptr stream, bool allow_tf32, Ptr recurrent_mask, Ptr zoneout_h, Ptr zoneout_c, Ptr pre_h,
               Ptr pre_c) {
  Pointers ptrs;
  auto a = pointer_args::forward_args<T>(c, x, weights, h0, c0, lengths, y, hn, cn, reserve, ptrs);
  a.mods = pointer_args::forward_modifiers<T>(c, recurrent_mask, zoneout_h, zoneout_c, pre_h, pre_c, ptrs);
  check_on_device(ptrs);
  py::gil_scoped_release release;
  const MathMode math(allow_tf32);
  forward<T>(c, a, as_stream(stream));
}

template <class T>
void backward_t(const RnnConfig& c, Ptr x, const py::list& weights, Ptr h0, Ptr c0, Ptr lengths, Ptr reserve, Ptr dy,
                Ptr dhn, Ptr dcn, Ptr dx, Ptr dh0, Ptr dc0, const py::list& grads, Ptr stream, bool allow_tf32,
                Ptr recurrent_mask, double grad_clip, Ptr zoneout_h, Ptr zoneout_c, Ptr pre_h, Ptr pre_c) {
  Pointers ptrs;
  auto a = pointer_args::backward_args<T>(c, x, weights, h0, c0, lengths, reserve, dy, dhn, dcn, dx, dh0, dc0, grads,
                                          ptrs);
  a.mods = pointer_args::backward_modifiers<T>(c, recurrent_mask, grad_clip, zoneout_h, zoneout_c, pre_h, pre_c, ptrs);
  check_on_device(ptrs);
  py::gil_scoped_release release;
  const MathMode math(allow_tf32);
  backward<T>(c, a, as_stream(stream));
}

}  // namespace

void register_bindings(py::module_& m) {
  m.def("device_count", &device_count, "Number of CUDA devices visible to the process (0 without a driver).");
  m.def("runtime_version", &runtime_version, "The CUDA runtime fastrnn was built with (e.g. 13000 for 13.0).");
  m.def("driver_version", &driver_version, "The CUDA version the driver supports (e.g. 13000; 0 without a driver).");

  m.def("cublas_status",
        [] {
#if defined(FASTRNN_BINDINGS_CUBLAS)
          return blas::status();
#elif defined(FASTRNN_CUDA_EMULATION)
          return std::string("not built (the CPU emulator without its stand-in cuBLAS)");
#else
          return std::string("not built (FASTRNN_CUDA_CUBLAS=OFF)");
#endif
        },
        "Whether the large products run on cuBLAS (its version and library) or why they run on the own GEMM.");

  m.def("persistent_plan",
        [](int cell, const std::string& dtype, int64 T, int64 B, int64 I, int64 H, int64 L, bool bidirectional,
           bool peephole, bool coupled, double cell_clip, bool reset_after, bool layer_norm) {
          const auto c = make_config(cell, T, B, I, H, L, bidirectional, peephole, coupled, cell_clip, reset_after,
                                     layer_norm, 0);
          PersistentPlan plan;
          dispatch_dtype(dtype, [&](auto tag) {
            require_device();
            plan = persistent_plan<decltype(tag)>(c);
          });
          py::dict d;
          d["runs"] = plan.runs;
          d["reason"] = plan.reason;
          d["units"] = plan.units;
          d["blocks"] = plan.blocks;
          d["k_slices"] = plan.k_slices;
          d["threads"] = plan.threads;
          d["smem_bytes"] = plan.smem_bytes;
          d["smem_limit"] = plan.smem_limit;
          d["sms"] = plan.sms;
          d["blocks_per_sm"] = plan.blocks_per_sm;
          return d;
        },
        py::arg("cell"), py::arg("dtype"), py::arg("T"), py::arg("B"), py::arg("I"), py::arg("H"), py::arg("L"),
        py::arg("bidirectional"), py::arg("peephole") = false, py::arg("coupled") = false, py::arg("cell_clip") = 0.0,
        py::arg("reset_after") = true, py::arg("layer_norm") = false,
        "Whether forward runs its layers on the persistent small-batch kernel now, with its shape or why not.");

  m.def("reserve_size",
        [](int cell, int64 T, int64 B, int64 I, int64 H, int64 L, bool bidirectional, bool peephole, bool coupled,
           double cell_clip, bool reset_after, bool layer_norm, int64 proj_size) {
          return ReserveLayout(make_config(cell, T, B, I, H, L, bidirectional, peephole, coupled, cell_clip, reset_after,
                                           layer_norm, proj_size))
              .total;
        },
        py::arg("cell"), py::arg("T"), py::arg("B"), py::arg("I"), py::arg("H"), py::arg("L"), py::arg("bidirectional"),
        py::arg("peephole") = false, py::arg("coupled") = false, py::arg("cell_clip") = 0.0,
        py::arg("reset_after") = true, py::arg("layer_norm") = false, py::arg("proj_size") = 0,
        "Number of elements the reserve of a training forward holds (the same as the CPU back end's).");

  m.def("forward",
        [](int cell, const std::string& dtype, int64 T, int64 B, int64 I, int64 H, int64 L, bool bidirectional, Ptr x,
           const py::list& weights, Ptr h0, Ptr c0, Ptr lengths, Ptr y, Ptr hn, Ptr cn, Ptr reserve, Ptr stream,
           bool allow_tf32, Ptr recurrent_mask, Ptr zoneout_h, Ptr zoneout_c, Ptr pre_h, Ptr pre_c, bool peephole,
           bool coupled, double cell_clip, bool reset_after, bool layer_norm, int64 proj_size) {
          const auto c = make_config(cell, T, B, I, H, L, bidirectional, peephole, coupled, cell_clip, reset_after,
                                     layer_norm, proj_size);
          dispatch_dtype(dtype, [&](auto tag) {
            forward_t<decltype(tag)>(c, x, weights, h0, c0, lengths, y, hn, cn, reserve, stream, allow_tf32,
                                     recurrent_mask, zoneout_h, zoneout_c, pre_h, pre_c);
          });
        },
        py::arg("cell"), py::arg("dtype"), py::arg("T"), py::arg("B"), py::arg("I"), py::arg("H"), py::arg("L"),
        py::arg("bidirectional"), py::arg("x_ptr"), py::arg("weight_ptrs"), py::arg("h0_ptr"), py::arg("c0_ptr"),
        py::arg("lengths_ptr"), py::arg("y_ptr"), py::arg("hn_ptr"), py::arg("cn_ptr"), py::arg("reserve_ptr"),
        py::arg("stream"), py::arg("allow_tf32") = false, py::arg("recurrent_mask_ptr") = 0, py::arg("zoneout_h_ptr") = 0,
        py::arg("zoneout_c_ptr") = 0, py::arg("pre_h_ptr") = 0, py::arg("pre_c_ptr") = 0, py::arg("peephole") = false,
        py::arg("coupled") = false, py::arg("cell_clip") = 0.0, py::arg("reset_after") = true,
        py::arg("layer_norm") = false, py::arg("proj_size") = 0,
        "Forward of a stack of recurrent layers on the GPU (see the top of cuda/bindings_cuda.cpp).");

  m.def("backward",
        [](int cell, const std::string& dtype, int64 T, int64 B, int64 I, int64 H, int64 L, bool bidirectional, Ptr x,
           const py::list& weights, Ptr h0, Ptr c0, Ptr lengths, Ptr reserve, Ptr dy, Ptr dhn, Ptr dcn, Ptr dx, Ptr dh0,
           Ptr dc0, const py::list& grads, Ptr stream, bool allow_tf32, Ptr recurrent_mask, double grad_clip,
           Ptr zoneout_h, Ptr zoneout_c, Ptr pre_h, Ptr pre_c, bool peephole, bool coupled, double cell_clip,
           bool reset_after, bool layer_norm, int64 proj_size) {
          const auto c = make_config(cell, T, B, I, H, L, bidirectional, peephole, coupled, cell_clip, reset_after,
                                     layer_norm, proj_size);
          dispatch_dtype(dtype, [&](auto tag) {
            backward_t<decltype(tag)>(c, x, weights, h0, c0, lengths, reserve, dy, dhn, dcn, dx, dh0, dc0, grads, stream,
                                      allow_tf32, recurrent_mask, grad_clip, zoneout_h, zoneout_c, pre_h, pre_c);
          });
        },
        py::arg("cell"), py::arg("dtype"), py::arg("T"), py::arg("B"), py::arg("I"), py::arg("H"), py::arg("L"),
        py::arg("bidirectional"), py::arg("x_ptr"), py::arg("weight_ptrs"), py::arg("h0_ptr"), py::arg("c0_ptr"),
        py::arg("lengths_ptr"), py::arg("reserve_ptr"), py::arg("dy_ptr"), py::arg("dhn_ptr"), py::arg("dcn_ptr"),
        py::arg("dx_ptr"), py::arg("dh0_ptr"), py::arg("dc0_ptr"), py::arg("grad_ptrs"), py::arg("stream"),
        py::arg("allow_tf32") = false, py::arg("recurrent_mask_ptr") = 0, py::arg("grad_clip") = 0.0,
        py::arg("zoneout_h_ptr") = 0, py::arg("zoneout_c_ptr") = 0, py::arg("pre_h_ptr") = 0, py::arg("pre_c_ptr") = 0,
        py::arg("peephole") = false, py::arg("coupled") = false, py::arg("cell_clip") = 0.0,
        py::arg("reset_after") = true, py::arg("layer_norm") = false, py::arg("proj_size") = 0,
        "Backpropagation through time on the GPU for a training forward (see the top of cuda/bindings_cuda.cpp).");
}

}  // namespace fastrnn::cuda
