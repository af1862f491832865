// pybind11 entry points of the CUDA back end, registered as the `_core.cuda` submodule by
// csrc/bindings.cpp when the extension is built with CUDA.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace fastrnn::cuda {

int device_count();

void register_bindings(py::module_& m) {
  m.def("device_count", &device_count, "Number of CUDA devices visible to the process (0 without a driver).");
}

}  // namespace fastrnn::cuda
