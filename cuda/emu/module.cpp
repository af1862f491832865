// The emulated CUDA back end as its own Python module, `_cuda_emu`, with the same entry points as
// `fastrnn._core.cuda` (see build.sh).
#include <pybind11/pybind11.h>

namespace fastrnn::cuda {
void register_bindings(pybind11::module_& m);
}

PYBIND11_MODULE(_cuda_emu, m) { fastrnn::cuda::register_bindings(m); }
