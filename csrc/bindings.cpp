// pybind11 bindings. forward/backward take NumPy arrays and check every one (dtype, C-contiguity,
// exact shape, writeability), release the GIL and dispatch on dtype to the back end; friendlier
// validation (layouts, batch_first, defaults) lives in python/fastrnn/functional.py, the checks here
// make these entry points safe on their own. forward_ptrs/backward_ptrs take data pointers, as the
// CUDA entry points do (csrc/pointer_args.h): fastrnn.ops calls them with torch tensors it has
// checked itself. Callers allocate every output, so a framework owns its memory.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>


#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "cell_step.h"
#include "cpu/prepared.h"
#include "cpu/storage16.h"
#include "pointer_args.h"
#include "rnn.h"

namespace py = pybind11;
using fastrnn::int64;

#ifdef FASTRNN_WITH_CUDA
namespace fastrnn::cuda {
// Defined in cuda/bindings_cuda.cpp: adds the `_core.cuda` submodule (the CUDA entry points).
void register_bindings(py::module_& m);
}  // namespace fastrnn::cuda
#endif

namespace {

std::string shape_str(const std::vector<int64>& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + (s.size() == 1 ? ",)" : ")");
}

// The NumPy name of T's dtype (bfloat16: ml_dtypes' dtype, whose kind is 'V').
template <class T> std::string dtype_name() {
  if constexpr (std::is_same<T, fastrnn::bf16>::value) return "bfloat16";
  else if constexpr (std::is_same<T, fastrnn::fp16>::value) return "float16";
  else return std::string(py::str(py::dtype::of<T>()));
}
template <class T> bool has_dtype(const py::array& arr) {
  if (arr.itemsize() != static_cast<py::ssize_t>(sizeof(T))) return false;
  if constexpr (std::is_same<T, fastrnn::bf16>::value) return std::string(py::str(arr.dtype())) == "bfloat16";
  else return arr.dtype().kind() == (std::is_integral<T>::value ? 'i' : 'f');
}

// Returns the data pointer of `obj` after checking it is a C-contiguous array of T with `shape`.
// None gives nullptr when `optional`.
template <class T> T* checked(py::handle obj, const char* name, const std::vector<int64>& shape, bool optional,
                              bool writeable) {
  if (obj.is_none()) {
    if (optional) return nullptr;
    throw py::type_error(std::string(name) + " must be an array, got None");
  }
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy array, got " + std::string(py::str(py::type::of(obj))));
  auto arr = py::reinterpret_borrow<py::array>(obj);
  if (!has_dtype<T>(arr))
    throw py::type_error(std::string(name) + " must have dtype " + dtype_name<T>() + ", got " +
                         std::string(py::str(arr.dtype())));
  std::vector<int64> actual(arr.shape(), arr.shape() + arr.ndim());
  if (actual != shape)
    throw py::value_error(std::string(name) + " must have shape " + shape_str(shape) + ", got " + shape_str(actual));
  if (!(arr.flags() & py::array::c_style)) throw py::value_error(std::string(name) + " must be C-contiguous");
  if (writeable && !arr.writeable()) throw py::value_error(std::string(name) + " must be writeable");
  return static_cast<T*>(const_cast<void*>(arr.data()));
}

// The step entry points' outputs are written by some threads while others still read every input:
// an output may overlap no input and not the other output, by a single byte. All are C-contiguous,
// so their byte ranges are exactly the memory they use (bytes = 0: absent).
struct Span {
  const char* name;
  const void* p;
  int64 bytes;
};
void refuse_overlaps(std::initializer_list<Span> inputs, const Span& h_out, const Span& c_out) {
  auto overlap = [](const Span& a, const Span& b) {
    const auto a0 = reinterpret_cast<std::uintptr_t>(a.p), b0 = reinterpret_cast<std::uintptr_t>(b.p);
    return a.bytes > 0 && b.bytes > 0 && a0 < b0 + std::uintptr_t(b.bytes) && b0 < a0 + std::uintptr_t(a.bytes);
  };
  for (const Span* o : {&h_out, &c_out})
    for (const Span& i : inputs)
      if (overlap(*o, i))
        throw py::value_error(std::string(o->name) + " overlaps " + i.name +
                              " in memory: h_out/c_out must not be the arrays h/c nor overlap x, h, c or each other");
  if (overlap(h_out, c_out))
    throw py::value_error("h_out overlaps c_out in memory: h_out/c_out must not overlap x, h, c or each other");
}

fastrnn::RnnConfig make_config(int cell, py::array x, int64 H, int64 L, bool bidirectional,
                               const fastrnn::CellOptions& options) {
  if (x.ndim() != 3) throw py::value_error("x must be 3-D [T, B, I], got " + std::to_string(x.ndim()) + "-D");
  return fastrnn::pointer_args::make_config(cell, x.shape(0), x.shape(1), x.shape(2), H, L, bidirectional, options);
}

using fastrnn::pointer_args::cell_options;  // the cell options as keywords (defaults: the base cells)
using fastrnn::pointer_args::checked_grad_clip;

// mask_seed: None, or (seed, stream, zoneout, zoneout_cell, recurrent_dropout): the masks the CPU
// kernels draw themselves (rnn.h SeededMasks, csrc/philox.h) for the modifiers whose p > 0. seed:
// an int, taken modulo 2^64; stream >= 0: the generator's stream of layer 0, direction 0.
fastrnn::SeededMasks checked_mask_seed(py::handle mask_seed, const fastrnn::RnnConfig& c) {
  fastrnn::SeededMasks s;
  if (mask_seed.is_none()) return s;
  if (!py::isinstance<py::tuple>(mask_seed) || py::len(mask_seed) != 5)
    throw py::type_error("mask_seed must be None or a tuple (seed, stream, zoneout, zoneout_cell, recurrent_dropout)");
  const auto t = py::reinterpret_borrow<py::tuple>(mask_seed);
  if (!py::isinstance<py::int_>(t[0]) || py::isinstance<py::bool_>(t[0]))
    throw py::type_error("mask_seed's seed must be an int, got " + std::string(py::str(py::type::of(t[0]))));
  s.on = true;
  const py::object seed = py::reinterpret_borrow<py::object>(t[0]);
  s.seed = py::cast<std::uint64_t>(seed & py::int_(std::numeric_limits<std::uint64_t>::max()));
  s.stream = py::cast<int64>(t[1]);
  if (s.stream < 0) throw py::value_error("mask_seed's stream must be >= 0, got " + std::to_string(s.stream));
  const char* names[3] = {"zoneout", "zoneout_cell", "recurrent_dropout"};
  double* ps[3] = {&s.zoneout_h, &s.zoneout_c, &s.recurrent};
  for (int i = 0; i < 3; ++i) {
    *ps[i] = py::cast<double>(t[2 + i]);
    if (!(*ps[i] >= 0 && *ps[i] < 1))
      throw py::value_error(std::string("mask_seed's ") + names[i] + " must be a probability in [0, 1), got " +
                            std::to_string(*ps[i]));
  }
  if (s.zoneout_c > 0 && !c.has_cell_state())
    throw py::value_error("mask_seed's zoneout_cell is for cells with a cell state (the LSTM)");
  return s;
}

const int64* checked_lengths(py::handle obj, const fastrnn::RnnConfig& c) {
  const int64* p = checked<int64>(obj, "lengths", {c.B}, true, false);
  if (p)
    for (int64 b = 0; b < c.B; ++b)
      if (p[b] < 1 || p[b] > c.T)
        throw py::value_error("lengths[" + std::to_string(b) + "] = " + std::to_string(p[b]) + " is outside [1, T=" +
                              std::to_string(c.T) + "]");
  return p;
}

// weights: a list of L*D tuples (w_ih, w_hh) or (w_ih, w_hh, b_ih, b_hh); all with or all without
// bias. Counts, names and shapes are the cell's parameters (fastrnn::param_shape, rnn.h).
template <class T>
std::vector<fastrnn::LayerWeights<T>> checked_weights(py::list weights, const fastrnn::RnnConfig& c) {
  if (static_cast<int64>(weights.size()) != c.L * c.D)
    throw py::value_error("weights must hold num_layers*num_directions = " + std::to_string(c.L * c.D) +
                          " entries, got " + std::to_string(weights.size()));
  const auto counts = fastrnn::param_counts(c.cell, c.options);
  std::vector<fastrnn::LayerWeights<T>> out;
  for (int64 k = 0; k < c.L * c.D; ++k) {
    if (!py::isinstance<py::sequence>(weights[k]))
      throw py::type_error("weights[" + std::to_string(k) + "] must be a tuple (w_ih, w_hh[, b_ih, b_hh])");
    auto t = py::reinterpret_borrow<py::sequence>(weights[k]);
    const int64 n = static_cast<int64>(t.size());
    if (n != counts.without_bias && n != counts.with_bias)
      throw py::value_error("weights[" + std::to_string(k) + "] must hold " + std::to_string(counts.without_bias) +
                            " or " + std::to_string(counts.with_bias) + " arrays");
    const std::string p = "weights[" + std::to_string(k) + "]";
    const int64 in = c.input_size(k / c.D);
    const T* given[8] = {};  // the spec's kParams order (fastrnn::layer_weights)
    for (int64 k = 0; k < n; ++k) {
      const int i = fastrnn::param_index(c.cell, int(k), n == counts.with_bias, c.options);
      const std::string name = p + "." + fastrnn::param_decl(c.cell, i, c.options).name;
      given[i] = checked<T>(t[k], name.c_str(), fastrnn::param_shape(c.cell, in, c.H, i, c.options), false, false);
    }
    out.push_back(fastrnn::layer_weights<T>(given, int(counts.with_bias), c.cell, c.options));
  }
  return out;
}

template <class T>
void forward_t(const fastrnn::RnnConfig& c, py::array x, py::list weights, py::object h0, py::object c0,
               py::object lengths, py::object y, py::object hn, py::object cn, py::object reserve,
               py::object recurrent_mask, py::object zoneout_h, py::object zoneout_c, py::object pre_h,
               py::object pre_c, py::object mask_seed) {
  // h is h_size() wide (P for the projected LSTM), c and the modifiers' arrays H wide
  const std::vector<int64> state{c.L * c.D, c.B, c.H}, steps{c.L * c.D, c.T, c.B, c.H};
  const std::vector<int64> hstate{c.L * c.D, c.B, c.h_size()};
  const bool lstm = c.has_cell_state();
  fastrnn::ForwardArgs<T> a{checked<T>(x, "x", {c.T, c.B, c.I}, false, false),
                            checked<T>(h0, "h0", hstate, true, false),
                            lstm ? checked<T>(c0, "c0", state, true, false) : nullptr,
                            checked_lengths(lengths, c),
                            checked_weights<T>(weights, c),
                            checked<T>(y, "y", {c.T, c.B, c.D * c.h_size()}, false, true),
                            checked<T>(hn, "hn", hstate, false, true),
                            lstm ? checked<T>(cn, "cn", state, false, true) : nullptr,
                            checked<T>(reserve, "reserve", {fastrnn::ReserveLayout(c).total}, true, true)};
  a.mods.recurrent_mask = checked<T>(recurrent_mask, "recurrent_mask", state, true, false);
  a.mods.zoneout_h = checked<T>(zoneout_h, "zoneout_h", steps, true, false);
  a.mods.zoneout_c = lstm ? checked<T>(zoneout_c, "zoneout_c", steps, true, false) : nullptr;
  a.mods.pre_h = checked<T>(pre_h, "pre_h", steps, true, true);
  a.mods.pre_c = lstm ? checked<T>(pre_c, "pre_c", steps, true, true) : nullptr;
  a.mods.seeded = checked_mask_seed(mask_seed, c);
  py::gil_scoped_release release;
  fastrnn::cpu::forward<T>(c, a);
}

template <class T>
void backward_t(const fastrnn::RnnConfig& c, py::array x, py::list weights, py::object h0, py::object c0,
                py::object lengths, py::object reserve, py::object dy, py::object dhn, py::object dcn, py::object dx,
                py::object dh0, py::object dc0, py::list grads, py::object recurrent_mask, double grad_clip,
                py::object zoneout_h, py::object zoneout_c, py::object pre_h, py::object pre_c, py::object mask_seed) {
  const std::vector<int64> state{c.L * c.D, c.B, c.H}, steps{c.L * c.D, c.T, c.B, c.H};
  const std::vector<int64> hstate{c.L * c.D, c.B, c.h_size()};
  const bool lstm = c.has_cell_state();
  fastrnn::BackwardArgs<T> a{checked<T>(x, "x", {c.T, c.B, c.I}, false, false),
                             checked<T>(h0, "h0", hstate, true, false),
                             lstm ? checked<T>(c0, "c0", state, true, false) : nullptr,
                             checked_lengths(lengths, c),
                             checked_weights<T>(weights, c),
                             checked<T>(reserve, "reserve", {fastrnn::ReserveLayout(c).total}, false, false),
                             checked<T>(dy, "dy", {c.T, c.B, c.D * c.h_size()}, false, false),
                             checked<T>(dhn, "dhn", hstate, true, false),
                             lstm ? checked<T>(dcn, "dcn", state, true, false) : nullptr,
                             checked<T>(dx, "dx", {c.T, c.B, c.I}, false, true),
                             checked<T>(dh0, "dh0", hstate, false, true),
                             lstm ? checked<T>(dc0, "dc0", state, false, true) : nullptr,
                             {}};
  a.mods.recurrent_mask = checked<T>(recurrent_mask, "recurrent_mask", state, true, false);
  a.mods.grad_clip = checked_grad_clip(grad_clip);
  a.mods.zoneout_h = checked<T>(zoneout_h, "zoneout_h", steps, true, false);
  a.mods.zoneout_c = lstm ? checked<T>(zoneout_c, "zoneout_c", steps, true, false) : nullptr;
  a.mods.seeded = checked_mask_seed(mask_seed, c);
  // h~ (c~) are required with zoneout of h (c), given or seeded
  const bool zoned_h = a.mods.zoneout_h || a.mods.seeded.zoneout_h > 0;
  const bool zoned_c = a.mods.zoneout_c || a.mods.seeded.zoneout_c > 0;
  a.mods.pre_h = checked<T>(pre_h, "pre_h", steps, !zoned_h, false);
  a.mods.pre_c = lstm ? checked<T>(pre_c, "pre_c", steps, !zoned_c, false) : nullptr;
  // grads mirrors weights: same count, same shapes, writeable.
  auto gw = checked_weights<T>(grads, c);
  for (int64 k = 0; k < c.L * c.D; ++k) {
    auto t = py::cast<py::sequence>(grads[k]);
    if (t.size() != py::cast<py::sequence>(weights[k]).size())
      throw py::value_error("grads[" + std::to_string(k) + "] must match weights[" + std::to_string(k) + "] in length");
    for (auto item : t)
      if (!py::reinterpret_borrow<py::array>(item).writeable())
        throw py::value_error("grads[" + std::to_string(k) + "] must be writeable");
    a.grads.push_back(fastrnn::layer_grads(gw[k]));
  }
  py::gil_scoped_release release;
  fastrnn::cpu::backward<T>(c, a);
}

// The raw-pointer entry points (csrc/pointer_args.h; what fastrnn.ops calls with torch tensors):
// dtype "float32" | "float64" | "bfloat16" | "float16" -> f(T{}) (16-bit: csrc/cpu/storage16.h).
template <class F> void dispatch_dtype(const std::string& dtype, F&& f) {
  if (dtype == "float32") return f(float{});
  if (dtype == "float64") return f(double{});
  if (dtype == "bfloat16") return f(fastrnn::bf16{});
  if (dtype == "float16") return f(fastrnn::fp16{});
  throw fastrnn::ArgumentError("dtype must be 'float32', 'float64', 'bfloat16' or 'float16', got '" + dtype + "'");
}

// The NumPy entry points: x's dtype -> f(T{}).
template <class F> void dispatch_array_dtype(py::array x, F&& f) {
  if (has_dtype<float>(x)) return f(float{});
  if (has_dtype<double>(x)) return f(double{});
  if (has_dtype<fastrnn::bf16>(x)) return f(fastrnn::bf16{});
  if (has_dtype<fastrnn::fp16>(x)) return f(fastrnn::fp16{});
  throw py::type_error("x must have dtype float32, float64, bfloat16 or float16, got " + std::string(py::str(x.dtype())));
}

bool is_float64(py::array x) {
  if (x.dtype().kind() != 'f' || (x.itemsize() != 4 && x.itemsize() != 8))
    throw py::type_error("x must have dtype float32 or float64, got " + std::string(py::str(x.dtype())));
  return x.itemsize() == 8;
}

// The layer norm's vectors (ln_weight_ih, ln_weight_hh[, ln_weight_c, ln_bias_c]) of a prepared cell
// with these options, checked against the cell's parameter shapes; all null without layer_norm.
template <class T>
fastrnn::NormParams<T> norm_params(fastrnn::CellKind kind, const fastrnn::CellOptions& o, int64 in, int64 H,
                                   py::tuple norm, const std::string& where) {
  fastrnn::NormParams<T> np{};
  if (!o.layer_norm) {
    if (norm.size()) throw py::value_error(where + "the layer norm's vectors are for layer_norm=True only");
    return np;
  }
  const bool lstm = kind == fastrnn::CellKind::Lstm;
  const size_t n = lstm ? 4 : 2;
  static const char* names[] = {"ln_weight_ih", "ln_weight_hh", "ln_weight_c", "ln_bias_c"};
  if (norm.size() != n)
    throw py::value_error(where + "layer_norm=True needs " + std::to_string(n) + " vectors (ln_weight_ih, ln_weight_hh" +
                          (lstm ? ", ln_weight_c, ln_bias_c" : "") + "), got " + std::to_string(norm.size()));
  const T* p[4] = {nullptr, nullptr, nullptr, nullptr};
  for (size_t i = 0; i < n; ++i)
    p[i] = checked<T>(norm[i], (where + names[i]).c_str(), fastrnn::param_shape(kind, in, H, int(4 + i), o), false, false);
  np.g_ih = p[0];
  np.g_hh = p[1];
  np.g_c = p[2];
  np.b_c = p[3];
  return np;
}

// The hidden size H of a cell whose w_hh is [G*H, HW]: HW itself, or w_hh's rows / G for the
// projected LSTM (HW = P).
int64 prepared_hidden_size(fastrnn::CellKind kind, const fastrnn::CellOptions& o, py::array w_hh) {
  if (o.proj_size <= 0) return w_hh.shape(1);
  const int64 G = fastrnn::dispatch_cell(kind, o, [](auto c) { return int64(decltype(c)::kGates); });
  if (w_hh.shape(0) % G || w_hh.shape(1) != o.proj_size)
    throw py::value_error("w_hh must have shape (" + std::to_string(G) + "*H, P=" + std::to_string(o.proj_size) +
                          "), got (" + std::to_string(w_hh.shape(0)) + ", " + std::to_string(w_hh.shape(1)) + ")");
  return w_hh.shape(0) / G;
}

// _core.PreparedCell: one cell's weights packed once (see csrc/cpu/prepared.h) and a step() that
// checks its arrays and runs with the GIL released. One Python class for every dtype/storage.
// With proj_size = P: w_hr [P, H], h and h_out [B, P].
class PreparedCellBinding {
 public:
  PreparedCellBinding(int cell, py::array w_ih, py::array w_hh, py::object b_ih, py::object b_hh, bool half,
                      bool peephole, bool coupled, double cell_clip, py::object w_ch, bool reset_after,
                      bool layer_norm, py::tuple norm, int64 proj_size, py::object w_hr)
      : options_(cell_options(peephole, coupled, cell_clip, reset_after, layer_norm, proj_size)) {
    if (!fastrnn::valid_cell_id(cell))
      throw py::value_error("cell must be 0.." + std::to_string(fastrnn::kNumCells - 1) + ", got " + std::to_string(cell));
    const auto kind = static_cast<fastrnn::CellKind>(cell);
    if (!(cell_clip >= 0)) throw py::value_error("cell_clip must be > 0 (0: no clipping)");
    (void)fastrnn::param_counts(kind, options_);  // options the cell does not have: ArgumentError
    if (proj_size < 0) throw py::value_error("proj_size must be >= 0, got " + std::to_string(proj_size));
    if (w_hh.ndim() != 2 || w_ih.ndim() != 2)
      throw py::value_error("w_ih and w_hh must be 2-D, got " + std::to_string(w_ih.ndim()) + "-D and " +
                            std::to_string(w_hh.ndim()) + "-D");
    H_ = prepared_hidden_size(kind, options_, w_hh);
    HW_ = proj_size > 0 ? proj_size : H_;
    I_ = w_ih.shape(1);
    if (H_ < 1 || I_ < 1) throw py::value_error("input and hidden sizes must be >= 1");
    if (is_float64(w_ih)) {
      if (half) throw py::value_error("float16 weight storage is for float32 weights only");
      make<double, double>(kind, w_ih, w_hh, b_ih, b_hh, w_ch, norm, w_hr, f64_);
    } else if (half) {
      make<float, _Float16>(kind, w_ih, w_hh, b_ih, b_hh, w_ch, norm, w_hr, f16_);
    } else {
      make<float, float>(kind, w_ih, w_hh, b_ih, b_hh, w_ch, norm, w_hr, f32_);
    }
    lstm_ = fastrnn::dispatch_cell(kind, [](auto c) { return fastrnn::SpecTraits<decltype(c)>::kCarriesState; });
  }

  void step(py::array x, py::array h, py::object c, py::array h_out, py::object c_out) {
    if (x.ndim() != 2) throw py::value_error("x must be 2-D [B, I], got " + std::to_string(x.ndim()) + "-D");
    const int64 B = x.shape(0);
    if (f64_) run<double>(*f64_, B, x, h, c, h_out, c_out);
    else if (f16_) run<float>(*f16_, B, x, h, c, h_out, c_out);
    else run<float>(*f32_, B, x, h, c, h_out, c_out);
  }

 private:
  template <class T, class W>
  void make(fastrnn::CellKind kind, py::array w_ih, py::array w_hh, py::object b_ih, py::object b_hh, py::object w_ch,
            py::tuple norm, py::object w_hr, std::unique_ptr<fastrnn::cpu::PreparedCell<T, W>>& out) {
    using fastrnn::param_shape;
    const auto& o = options_;
    const T* wi = checked<T>(w_ih, "w_ih", param_shape(kind, I_, H_, 0, o), false, false);
    const T* wh = checked<T>(w_hh, "w_hh", param_shape(kind, I_, H_, 1, o), false, false);
    const T* bi = checked<T>(b_ih, "b_ih", param_shape(kind, I_, H_, 2, o), true, false);
    const T* bh = checked<T>(b_hh, "b_hh", param_shape(kind, I_, H_, 3, o), true, false);
    const T* ch = o.peephole ? checked<T>(w_ch, "w_ch", param_shape(kind, I_, H_, 4, o), false, false) : nullptr;
    if (o.proj_size <= 0 && !w_hr.is_none()) throw py::value_error("w_hr is for proj_size > 0 only");
    const T* hr = o.proj_size > 0 ? checked<T>(w_hr, "w_hr", {o.proj_size, H_}, false, false) : nullptr;
    if ((bi == nullptr) != (bh == nullptr)) throw py::value_error("give both b_ih and b_hh, or neither");
    const fastrnn::NormParams<T> np = norm_params<T>(kind, o, I_, H_, norm, "");
    py::gil_scoped_release release;
    out = std::make_unique<fastrnn::cpu::PreparedCell<T, W>>(kind, I_, H_, wi, wh, bi, bh, o, ch, &np, hr);
  }

  template <class T, class P>
  void run(const P& cell, int64 B, py::array x, py::array h, py::object c, py::array h_out, py::object c_out) {
    const T* xp = checked<T>(x, "x", {B, I_}, false, false);
    const T* hp = checked<T>(h, "h", {B, HW_}, false, false);
    const T* cp = lstm_ ? checked<T>(c, "c", {B, H_}, false, false) : nullptr;
    T* hop = checked<T>(h_out, "h_out", {B, HW_}, false, true);
    T* cop = lstm_ ? checked<T>(c_out, "c_out", {B, H_}, false, true) : nullptr;
    const int64 bh = B * H_ * int64(sizeof(T)), bhw = B * HW_ * int64(sizeof(T));
    refuse_overlaps({{"x", xp, B * I_ * int64(sizeof(T))}, {"h", hp, bhw}, {"c", cp, lstm_ ? bh : 0}},
                    {"h_out", hop, bhw}, {"c_out", cop, lstm_ ? bh : 0});
    py::gil_scoped_release release;
    cell.step(B, xp, hp, cp, hop, cop);
  }

  fastrnn::CellOptions options_;
  int64 I_ = 0, H_ = 0, HW_ = 0;  // HW_: h's width (P projected, else H)
  bool lstm_ = false;
  std::unique_ptr<fastrnn::cpu::PreparedCell<float, float>> f32_;
  std::unique_ptr<fastrnn::cpu::PreparedCell<float, _Float16>> f16_;
  std::unique_ptr<fastrnn::cpu::PreparedCell<double, double>> f64_;
};

// _core.PreparedStack: L unidirectional layers packed once (csrc/cpu/prepared.h's PreparedStack),
// stepped all together in one call with the GIL released: step() checks its arrays; step_ptrs()
// takes data pointers (what fastrnn.nn's stepper passes for torch tensors it has checked itself,
// so a step costs no array conversions).
class PreparedStackBinding {
  using Ptr = fastrnn::pointer_args::Ptr;

 public:
  PreparedStackBinding(int cell, py::list weights, bool half, bool peephole, bool coupled, double cell_clip,
                       bool reset_after, bool layer_norm, int64 proj_size)
      : options_(cell_options(peephole, coupled, cell_clip, reset_after, layer_norm, proj_size)) {
    if (cell < 0 || cell > 3) throw py::value_error("cell must be 0..3, got " + std::to_string(cell));
    const auto kind = static_cast<fastrnn::CellKind>(cell);
    if (!(cell_clip >= 0)) throw py::value_error("cell_clip must be > 0 (0: no clipping)");
    (void)fastrnn::param_counts(kind, options_);  // options the cell does not have: ArgumentError
    lstm_ = kind == fastrnn::CellKind::Lstm;
    L_ = static_cast<int64>(weights.size());
    if (L_ < 1) throw py::value_error("weights must hold at least one layer");
    if (proj_size < 0) throw py::value_error("proj_size must be >= 0, got " + std::to_string(proj_size));
    // arrays after (w_ih, w_hh[, b_ih, b_hh]): w_ch, then the layer norm's vectors, then w_hr
    extra_ = (options_.peephole ? 1 : 0) + (options_.layer_norm ? (lstm_ ? 4 : 2) : 0) + (proj_size > 0 ? 1 : 0);
    auto first = py::cast<py::sequence>(weights[0]);
    if (first.size() != size_t(2 + extra_) && first.size() != size_t(4 + extra_))
      throw py::value_error("weights[0] must hold " + std::to_string(2 + extra_) + " or " + std::to_string(4 + extra_) +
                            " arrays");
    auto w_ih = py::cast<py::array>(first[0]), w_hh = py::cast<py::array>(first[1]);
    if (w_ih.ndim() != 2 || w_hh.ndim() != 2) throw py::value_error("weights[0]'s w_ih and w_hh must be 2-D");
    I_ = w_ih.shape(1);
    H_ = prepared_hidden_size(kind, options_, w_hh);
    HW_ = proj_size > 0 ? proj_size : H_;
    if (H_ < 1 || I_ < 1) throw py::value_error("input and hidden sizes must be >= 1");
    const int64 G = fastrnn::dispatch_cell(kind, options_, [](auto c) { return int64(decltype(c)::kGates); });
    if (is_float64(w_ih)) {
      if (half) throw py::value_error("float16 weight storage is for float32 weights only");
      make<double, double>(kind, G, weights, f64_);
    } else if (half) {
      make<float, _Float16>(kind, G, weights, f16_);
    } else {
      make<float, float>(kind, G, weights, f32_);
    }
  }

  // x [B, I], h [L, B, HW], c [L, B, H] -> h_out [L, B, HW], c_out [L, B, H] (c, c_out: LSTM only, else
  // None; HW = P for the projected LSTM, else H).
  void step(py::array x, py::array h, py::object c, py::array h_out, py::object c_out) {
    if (x.ndim() != 2) throw py::value_error("x must be 2-D [B, I], got " + std::to_string(x.ndim()) + "-D");
    const int64 B = x.shape(0);
    if (f64_) run<double>(*f64_, B, x, h, c, h_out, c_out);
    else if (f16_) run<float>(*f16_, B, x, h, c, h_out, c_out);
    else run<float>(*f32_, B, x, h, c, h_out, c_out);
  }

  // The same on data pointers (ints): buffers of the stack's dtype, C-contiguous, of the shapes
  // above, outputs not overlapping inputs: the caller's contract.
  void step_ptrs(int64 B, Ptr x, Ptr h, Ptr c, Ptr h_out, Ptr c_out) {
    if (B < 1) throw py::value_error("B must be >= 1, got " + std::to_string(B));
    if (!x || !h || !h_out || (lstm_ && (!c || !c_out)) || (!lstm_ && (c || c_out)))
      throw py::value_error("step_ptrs: x, h, h_out (and c, c_out for the LSTM only) must be non-null");
    py::gil_scoped_release release;
    if (f64_) f64_->step(B, ptr<double>(x), ptr<double>(h), ptr<double>(c), ptr<double>(h_out), ptr<double>(c_out));
    else if (f16_) f16_->step(B, ptr<float>(x), ptr<float>(h), ptr<float>(c), ptr<float>(h_out), ptr<float>(c_out));
    else f32_->step(B, ptr<float>(x), ptr<float>(h), ptr<float>(c), ptr<float>(h_out), ptr<float>(c_out));
  }

 private:
  template <class T> static T* ptr(Ptr p) { return reinterpret_cast<T*>(p); }

  template <class T, class W>
  void make(fastrnn::CellKind kind, int64 G, py::list weights, std::unique_ptr<fastrnn::cpu::PreparedStack<T, W>>& out) {
    const int64 GH = fastrnn::checked_mul(G, H_, "G*H");
    using Layer = typename fastrnn::cpu::PreparedStack<T, W>::Layer;
    std::vector<Layer> layers;
    for (int64 l = 0; l < L_; ++l) {
      if (!py::isinstance<py::sequence>(weights[l]))
        throw py::type_error("weights[" + std::to_string(l) + "] must be a tuple (w_ih, w_hh[, b_ih, b_hh])");
      auto t = py::reinterpret_borrow<py::sequence>(weights[l]);
      const size_t n = t.size();
      if (n != size_t(2 + extra_) && n != size_t(4 + extra_))
        throw py::value_error("weights[" + std::to_string(l) + "] must hold " + std::to_string(2 + extra_) + " or " +
                              std::to_string(4 + extra_) + " arrays");
      const std::string p = "weights[" + std::to_string(l) + "]";
      const int64 in = l ? HW_ : I_;
      Layer w{checked<T>(t[0], (p + ".w_ih").c_str(), {GH, in}, false, false),
              checked<T>(t[1], (p + ".w_hh").c_str(), {GH, HW_}, false, false), nullptr, nullptr};
      size_t next = 2;
      if (n == size_t(4 + extra_)) {
        w.b_ih = checked<T>(t[2], (p + ".b_ih").c_str(), {GH}, false, false);
        w.b_hh = checked<T>(t[3], (p + ".b_hh").c_str(), {GH}, false, false);
        next = 4;
      }
      if (options_.peephole)
        w.w_ch = checked<T>(t[next++], (p + ".w_ch").c_str(), fastrnn::param_shape(kind, in, H_, 4, options_), false,
                            false);
      const size_t norm_end = options_.proj_size > 0 ? n - 1 : n;  // w_hr last
      py::tuple norm(norm_end - next);
      for (size_t i = next; i < norm_end; ++i) norm[i - next] = t[i];
      w.norm = norm_params<T>(kind, options_, in, H_, norm, p + ".");
      if (options_.proj_size > 0)
        w.w_hr = checked<T>(t[n - 1], (p + ".w_hr").c_str(), {options_.proj_size, H_}, false, false);
      layers.push_back(w);
    }
    py::gil_scoped_release release;
    out = std::make_unique<fastrnn::cpu::PreparedStack<T, W>>(kind, I_, H_, layers, options_);
  }

  template <class T, class P>
  void run(const P& stack, int64 B, py::array x, py::array h, py::object c, py::array h_out, py::object c_out) {
    const std::vector<int64> state{L_, B, H_}, h_state{L_, B, HW_};
    const T* xp = checked<T>(x, "x", {B, I_}, false, false);
    const T* hp = checked<T>(h, "h", h_state, false, false);
    const T* cp = lstm_ ? checked<T>(c, "c", state, false, false) : nullptr;
    T* hop = checked<T>(h_out, "h_out", h_state, false, true);
    T* cop = lstm_ ? checked<T>(c_out, "c_out", state, false, true) : nullptr;
    // Each layer's threads read all of its h (and layer l+1 reads h_out[l]) while writing h_out.
    const int64 states = L_ * B * H_ * int64(sizeof(T)), h_states = L_ * B * HW_ * int64(sizeof(T));
    refuse_overlaps({{"x", xp, B * I_ * int64(sizeof(T))}, {"h", hp, h_states}, {"c", cp, lstm_ ? states : 0}},
                    {"h_out", hop, h_states}, {"c_out", cop, lstm_ ? states : 0});
    py::gil_scoped_release release;
    stack.step(B, xp, hp, cp, hop, cop);
  }

  fastrnn::CellOptions options_;
  int64 I_ = 0, H_ = 0, HW_ = 0, L_ = 0, extra_ = 0;  // HW_: h's width (P projected, else H)
  bool lstm_ = false;
  std::unique_ptr<fastrnn::cpu::PreparedStack<float, float>> f32_;
  std::unique_ptr<fastrnn::cpu::PreparedStack<float, _Float16>> f16_;
  std::unique_ptr<fastrnn::cpu::PreparedStack<double, double>> f64_;
};

// _core.cells(): what every cell's spec declares (csrc/cells/), as plain data for Python.
py::dict cell_table() {
  py::dict table;
  for (const fastrnn::CellKind kind : fastrnn::kCellKinds) {
    fastrnn::dispatch_cell(kind, [&](auto cell) {
      using Cell = decltype(cell);
      using Traits = fastrnn::SpecTraits<Cell>;
      auto names = [](const char* const* list, int n) {
        py::list out;
        for (int i = 0; i < n; ++i) out.append(list[i]);
        return py::tuple(out);
      };
      auto dim = [](fastrnn::Dim d) -> py::object {
        switch (d) {
          case fastrnn::Dim::GateRows: return py::str("G*H");
          case fastrnn::Dim::Input: return py::str("I");
          case fastrnn::Dim::Hidden: return py::str("H");
          case fastrnn::Dim::Units: return py::str("H");
          case fastrnn::Dim::UnitRows: return py::str("U");
          case fastrnn::Dim::One: return py::none();
          case fastrnn::Dim::Projection: return py::str("P");
        }
        return py::none();
      };
      py::list states, params;
      for (int i = 0; i < Cell::kStates; ++i)
        states.append(py::make_tuple(Cell::kStateDecls[i].name, dim(Cell::kStateDecls[i].width)));
      for (int i = 0; i < Cell::kNumParams; ++i) {
        const fastrnn::ParamDecl& p = Cell::kParams[i];
        py::dict d;
        d["name"] = p.name;
        d["shape"] = p.cols == fastrnn::Dim::One ? py::tuple(py::make_tuple(dim(p.rows)))
                                                 : py::tuple(py::make_tuple(dim(p.rows), dim(p.cols)));
        d["bias"] = p.bias;
        params.append(d);
      }
      py::dict e;
      e["id"] = static_cast<int>(Cell::kKind);
      e["gates"] = Cell::kGates;
      e["gate_names"] = names(Cell::kGateNames, Cell::kGates);
      e["states"] = py::tuple(states);
      e["has_cell_state"] = Traits::kCarriesState;
      e["saved_per_unit"] = Cell::kSaved;
      e["saved_names"] = names(Cell::kSavedNames, Cell::kSaved);
      e["params"] = py::tuple(params);
      e["separate_hidden_grad"] = Traits::kSeparateHiddenGrad;
      table[Cell::kName] = e;
    });
  }
  return table;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastrnn's compiled kernels. Use fastrnn.functional; these entry points expect validated, "
            "time-major, C-contiguous arrays and caller-allocated outputs.";

  m.def("cells", &cell_table,
        "The cell table: for each cell name, what its spec declares (csrc/cells/): id (the `cell` argument "
        "of the entry points), gates, gate_names, states ((name, width), h first), has_cell_state, "
        "saved_per_unit, saved_names, params (name, shape rule over 'G*H', 'I' (the layer's input size), "
        "'H', bias) and separate_hidden_grad.");

  m.def("param_shapes",
        [](int cell, int64 input_size, int64 hidden_size, int64 num_layers, bool bidirectional, bool bias,
           bool peephole, bool coupled, double cell_clip, bool reset_after, bool layer_norm,
           int64 proj_size) {
          const auto c = fastrnn::pointer_args::make_config(cell, 1, 1, input_size, hidden_size, num_layers, bidirectional,
                                                            cell_options(peephole, coupled, cell_clip, reset_after, layer_norm, proj_size));
          const auto counts = fastrnn::param_counts(c.cell, c.options);
          py::list out;
          for (int64 k = 0; k < c.L * c.D; ++k) {
            py::list shapes;
            for (int64 i = 0; i < (bias ? counts.with_bias : counts.without_bias); ++i) {
              const int index = fastrnn::param_index(c.cell, int(i), bias, c.options);
              shapes.append(py::tuple(py::cast(fastrnn::param_shape(c.cell, c.input_size(k / c.D), c.H, index, c.options))));
            }
            out.append(py::tuple(shapes));
          }
          return out;
        },
        py::arg("cell"), py::arg("input_size"), py::arg("hidden_size"), py::arg("num_layers"),
        py::arg("bidirectional"), py::arg("bias"), py::arg("peephole") = false, py::arg("coupled") = false,
        py::arg("cell_clip") = 0.0, py::arg("reset_after") = true, py::arg("layer_norm") = false,
        py::arg("proj_size") = 0,
        "The shapes of the weight tuples (index l*D + d) the entry points expect: the weight rule, once.");

  m.def("reserve_size",
        [](int cell, int64 T, int64 B, int64 I, int64 H, int64 L, bool bidirectional, bool peephole, bool coupled,
           double cell_clip, bool reset_after, bool layer_norm,
           int64 proj_size) {
          return fastrnn::ReserveLayout(fastrnn::pointer_args::make_config(cell, T, B, I, H, L, bidirectional,
                                                                           cell_options(peephole, coupled, cell_clip, reset_after, layer_norm, proj_size)))
              .total;
        },
        py::arg("cell"), py::arg("T"), py::arg("B"), py::arg("I"), py::arg("H"), py::arg("L"), py::arg("bidirectional"),
        py::arg("peephole") = false, py::arg("coupled") = false, py::arg("cell_clip") = 0.0, py::arg("reset_after") = true, py::arg("layer_norm") = false,
        py::arg("proj_size") = 0,
        "Number of elements the reserve of a training forward holds.");

  m.def("forward",
        [](int cell, py::array x, py::list weights, py::object h0, py::object c0, py::object lengths, py::object y,
           py::object hn, py::object cn, py::object reserve, int64 H, int64 L, bool bidirectional,
           py::object recurrent_mask, py::object zoneout_h, py::object zoneout_c, py::object pre_h, py::object pre_c, bool peephole, bool coupled,
           double cell_clip, bool reset_after, bool layer_norm,
           int64 proj_size, py::object mask_seed) {
          const auto c = make_config(cell, x, H, L, bidirectional, cell_options(peephole, coupled, cell_clip, reset_after, layer_norm, proj_size));
          dispatch_array_dtype(x, [&](auto tag) {
            forward_t<decltype(tag)>(c, x, weights, h0, c0, lengths, y, hn, cn, reserve, recurrent_mask, zoneout_h,
                                     zoneout_c, pre_h, pre_c, mask_seed);
          });
        },
        py::arg("cell"), py::arg("x"), py::arg("weights"), py::arg("h0"), py::arg("c0"), py::arg("lengths"),
        py::arg("y"), py::arg("hn"), py::arg("cn"), py::arg("reserve"), py::arg("hidden_size"), py::arg("num_layers"),
        py::arg("bidirectional"), py::arg("recurrent_mask") = py::none(), py::arg("zoneout_h") = py::none(),
        py::arg("zoneout_c") = py::none(), py::arg("pre_h") = py::none(), py::arg("pre_c") = py::none(), py::arg("peephole") = false,
        py::arg("coupled") = false, py::arg("cell_clip") = 0.0, py::arg("reset_after") = true, py::arg("layer_norm") = false,
        py::arg("proj_size") = 0, py::arg("mask_seed") = py::none());

  m.def("backward",
        [](int cell, py::array x, py::list weights, py::object h0, py::object c0, py::object lengths,
           py::object reserve, py::object dy, py::object dhn, py::object dcn, py::object dx, py::object dh0,
           py::object dc0, py::list grads, int64 H, int64 L, bool bidirectional, py::object recurrent_mask,
           double grad_clip, py::object zoneout_h, py::object zoneout_c, py::object pre_h, py::object pre_c, bool peephole,
           bool coupled, double cell_clip, bool reset_after, bool layer_norm,
           int64 proj_size, py::object mask_seed) {
          const auto c = make_config(cell, x, H, L, bidirectional, cell_options(peephole, coupled, cell_clip, reset_after, layer_norm, proj_size));
          dispatch_array_dtype(x, [&](auto tag) {
            backward_t<decltype(tag)>(c, x, weights, h0, c0, lengths, reserve, dy, dhn, dcn, dx, dh0, dc0, grads,
                                      recurrent_mask, grad_clip, zoneout_h, zoneout_c, pre_h, pre_c, mask_seed);
          });
        },
        py::arg("cell"), py::arg("x"), py::arg("weights"), py::arg("h0"), py::arg("c0"), py::arg("lengths"),
        py::arg("reserve"), py::arg("dy"), py::arg("dhn"), py::arg("dcn"), py::arg("dx"), py::arg("dh0"),
        py::arg("dc0"), py::arg("grads"), py::arg("hidden_size"), py::arg("num_layers"), py::arg("bidirectional"),
        py::arg("recurrent_mask") = py::none(), py::arg("grad_clip") = 0.0, py::arg("zoneout_h") = py::none(),
        py::arg("zoneout_c") = py::none(), py::arg("pre_h") = py::none(), py::arg("pre_c") = py::none(), py::arg("peephole") = false,
        py::arg("coupled") = false, py::arg("cell_clip") = 0.0, py::arg("reset_after") = true, py::arg("layer_norm") = false,
        py::arg("proj_size") = 0, py::arg("mask_seed") = py::none());

  using fastrnn::pointer_args::Ptr;
  m.def("forward_ptrs",
        [](int cell, const std::string& dtype, int64 T, int64 B, int64 I, int64 H, int64 L, bool bidirectional, Ptr x,
           const py::list& weights, Ptr h0, Ptr c0, Ptr lengths, Ptr y, Ptr hn, Ptr cn, Ptr reserve,
           Ptr recurrent_mask, Ptr zoneout_h, Ptr zoneout_c, Ptr pre_h, Ptr pre_c, bool peephole, bool coupled, double cell_clip, bool reset_after, bool layer_norm,
           int64 proj_size, Ptr batch_sizes, int64 packed_rows, py::object mask_seed) {
          const auto c = fastrnn::pointer_args::make_config(cell, T, B, I, H, L, bidirectional,
                                                            cell_options(peephole, coupled, cell_clip, reset_after, layer_norm, proj_size));
          dispatch_dtype(dtype, [&](auto tag) {
            using T_ = decltype(tag);
            fastrnn::pointer_args::Pointers ptrs;
            auto a = fastrnn::pointer_args::forward_args<T_>(c, x, weights, h0, c0, lengths, y, hn, cn, reserve, ptrs);
            a.mods = fastrnn::pointer_args::forward_modifiers<T_>(c, recurrent_mask, zoneout_h, zoneout_c, pre_h, pre_c,
                                                                  ptrs);
            a.mods.seeded = checked_mask_seed(mask_seed, c);
            py::gil_scoped_release release;
            if (batch_sizes) fastrnn::cpu::forward_packed<T_>(c, a, reinterpret_cast<const int64*>(batch_sizes), packed_rows);
            else fastrnn::cpu::forward<T_>(c, a);
          });
        },
        py::arg("cell"), py::arg("dtype"), py::arg("T"), py::arg("B"), py::arg("I"), py::arg("H"), py::arg("L"),
        py::arg("bidirectional"), py::arg("x_ptr"), py::arg("weight_ptrs"), py::arg("h0_ptr"), py::arg("c0_ptr"),
        py::arg("lengths_ptr"), py::arg("y_ptr"), py::arg("hn_ptr"), py::arg("cn_ptr"), py::arg("reserve_ptr"),
        py::arg("recurrent_mask_ptr") = 0, py::arg("zoneout_h_ptr") = 0, py::arg("zoneout_c_ptr") = 0,
        py::arg("pre_h_ptr") = 0, py::arg("pre_c_ptr") = 0,
        py::arg("peephole") = false, py::arg("coupled") = false, py::arg("cell_clip") = 0.0, py::arg("reset_after") = true, py::arg("layer_norm") = false,
        py::arg("proj_size") = 0, py::arg("batch_sizes_ptr") = 0, py::arg("packed_rows") = 0,
        py::arg("mask_seed") = py::none(),
        "forward on host pointers (ints; 0 = absent): the CUDA entry point's arguments without the stream. "
        "Buffer sizes, dtypes and lengths' values are the caller's contract (csrc/pointer_args.h). With "
        "batch_sizes_ptr (int64 [T], a PackedSequence's) x and y are packed [packed_rows, .] arrays and "
        "lengths_ptr is 0 (rnn.h: forward_packed).");

  m.def("backward_ptrs",
        [](int cell, const std::string& dtype, int64 T, int64 B, int64 I, int64 H, int64 L, bool bidirectional, Ptr x,
           const py::list& weights, Ptr h0, Ptr c0, Ptr lengths, Ptr reserve, Ptr dy, Ptr dhn, Ptr dcn, Ptr dx, Ptr dh0,
           Ptr dc0, const py::list& grads, Ptr recurrent_mask, double grad_clip, Ptr zoneout_h, Ptr zoneout_c,
           Ptr pre_h, Ptr pre_c, bool peephole, bool coupled, double cell_clip, bool reset_after, bool layer_norm,
           int64 proj_size, Ptr batch_sizes, int64 packed_rows, py::object mask_seed) {
          const auto c = fastrnn::pointer_args::make_config(cell, T, B, I, H, L, bidirectional,
                                                            cell_options(peephole, coupled, cell_clip, reset_after, layer_norm, proj_size));
          dispatch_dtype(dtype, [&](auto tag) {
            using T_ = decltype(tag);
            fastrnn::pointer_args::Pointers ptrs;
            auto a = fastrnn::pointer_args::backward_args<T_>(c, x, weights, h0, c0, lengths, reserve, dy, dhn, dcn, dx,
                                                              dh0, dc0, grads, ptrs);
            a.mods = fastrnn::pointer_args::backward_modifiers<T_>(c, recurrent_mask, grad_clip, zoneout_h, zoneout_c,
                                                                   pre_h, pre_c, ptrs);
            a.mods.seeded = checked_mask_seed(mask_seed, c);
            if ((a.mods.seeded.zoneout_h > 0 && !a.mods.pre_h) || (a.mods.seeded.zoneout_c > 0 && !a.mods.pre_c))
              throw fastrnn::ArgumentError("pre_h_ptr / pre_c_ptr (the forward's h~, c~) are required with seeded zoneout");
            py::gil_scoped_release release;
            if (batch_sizes) fastrnn::cpu::backward_packed<T_>(c, a, reinterpret_cast<const int64*>(batch_sizes), packed_rows);
            else fastrnn::cpu::backward<T_>(c, a);
          });
        },
        py::arg("cell"), py::arg("dtype"), py::arg("T"), py::arg("B"), py::arg("I"), py::arg("H"), py::arg("L"),
        py::arg("bidirectional"), py::arg("x_ptr"), py::arg("weight_ptrs"), py::arg("h0_ptr"), py::arg("c0_ptr"),
        py::arg("lengths_ptr"), py::arg("reserve_ptr"), py::arg("dy_ptr"), py::arg("dhn_ptr"), py::arg("dcn_ptr"),
        py::arg("dx_ptr"), py::arg("dh0_ptr"), py::arg("dc0_ptr"), py::arg("grad_ptrs"),
        py::arg("recurrent_mask_ptr") = 0, py::arg("grad_clip") = 0.0, py::arg("zoneout_h_ptr") = 0,
        py::arg("zoneout_c_ptr") = 0, py::arg("pre_h_ptr") = 0, py::arg("pre_c_ptr") = 0,
        py::arg("peephole") = false, py::arg("coupled") = false, py::arg("cell_clip") = 0.0, py::arg("reset_after") = true, py::arg("layer_norm") = false,
        py::arg("proj_size") = 0, py::arg("batch_sizes_ptr") = 0, py::arg("packed_rows") = 0,
        py::arg("mask_seed") = py::none(),
        "backward on host pointers, as forward_ptrs (the CUDA entry point's arguments without the stream; "
        "batch_sizes_ptr: x, dy and dx packed).");

  py::class_<PreparedCellBinding>(m, "PreparedCell", "One cell's weights packed once for repeated single steps.")
      .def(py::init<int, py::array, py::array, py::object, py::object, bool, bool, bool, double, py::object, bool, bool,
                    py::tuple, int64, py::object>(),
           py::arg("cell"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("half"),
           py::arg("peephole") = false, py::arg("coupled") = false, py::arg("cell_clip") = 0.0,
           py::arg("w_ch") = py::none(), py::arg("reset_after") = true, py::arg("layer_norm") = false,
           py::arg("norm") = py::tuple(), py::arg("proj_size") = 0, py::arg("w_hr") = py::none())
      .def("step", &PreparedCellBinding::step, py::arg("x"), py::arg("h"), py::arg("c"), py::arg("h_out"),
           py::arg("c_out"));

  py::class_<PreparedStackBinding>(m, "PreparedStack",
                                   "L unidirectional layers' weights packed once, stepped together in one call.")
      .def(py::init<int, py::list, bool, bool, bool, double, bool, bool, int64>(), py::arg("cell"), py::arg("weights"),
           py::arg("half"), py::arg("peephole") = false, py::arg("coupled") = false, py::arg("cell_clip") = 0.0,
           py::arg("reset_after") = true, py::arg("layer_norm") = false, py::arg("proj_size") = 0)
      .def("step", &PreparedStackBinding::step, py::arg("x"), py::arg("h"), py::arg("c"), py::arg("h_out"),
           py::arg("c_out"))
      .def("step_ptrs", &PreparedStackBinding::step_ptrs, py::arg("B"), py::arg("x_ptr"), py::arg("h_ptr"),
           py::arg("c_ptr"), py::arg("h_out_ptr"), py::arg("c_out_ptr"),
           "step on host data pointers (ints; 0 = absent): dtype, shapes and contiguity are the caller's contract.");

  fastrnn::cell_step::register_cell_step(m);

  m.def("cpu_isa", [] { return std::string(fastrnn::cpu::cpu_isa_name()); },
        "The instruction set the CPU kernels use: avx512_bf16, avx512, avx2 or baseline (see FASTRNN_CPU_ISA).");

  m.def("set_num_threads", &fastrnn::cpu::set_num_threads, py::arg("n"));
  m.def("empty_cache", &fastrnn::cpu::empty_cache, "Free the scratch blocks every thread keeps for its next call (fastrnn.empty_cache).");
  m.def("scratch_cache_bytes", &fastrnn::cpu::scratch_cache_bytes,
        "Bytes of scratch blocks all threads keep for their next calls.");
  // A training call's reserve whose memory comes from, and goes back to, the kernels' scratch cache:
  // a reserve above glibc's mmap threshold (32 MB at most) was otherwise mapped afresh on every call,
  // and its page faults and page clearing were a large share of a big training forward.
  m.def(
      "reserve_buffer",
      [](int64 nbytes) {
        if (nbytes < 0) throw py::value_error("nbytes must be >= 0, got " + std::to_string(nbytes));
        struct Block {
          void* p;
          size_t bytes;
        };
        auto* block = new Block{nullptr, size_t(std::max<int64>(nbytes, 1))};
        try {
          block->p = fastrnn::cpu::take_reserve_block(block->bytes);
        } catch (...) {
          delete block;
          throw;
        }
        py::capsule owner(block, [](void* b) {
          auto* blk = static_cast<Block*>(b);
          fastrnn::cpu::give_reserve_block(blk->p, blk->bytes);
          delete blk;
        });
        return py::array_t<std::uint8_t>({nbytes}, {int64(1)}, static_cast<std::uint8_t*>(block->p), owner);
      },
      py::arg("nbytes"),
      "An uninitialised uint8 array of nbytes in memory the CPU kernels' scratch cache keeps for later calls "
      "once the array is freed (fastrnn.empty_cache frees it).");
  m.def("get_num_threads", &fastrnn::cpu::get_num_threads);
#ifdef FASTRNN_WITH_CUDA
  m.attr("built_with_cuda") = true;
  auto cuda = m.def_submodule("cuda", "The CUDA back end's entry points.");
  fastrnn::cuda::register_bindings(cuda);
#else
  m.attr("built_with_cuda") = false;
#endif
}
