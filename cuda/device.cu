// Device queries for the CUDA back end: how many GPUs the process can see (0 without a driver), and
// the pointer checks that turn "a host pointer or another GPU's pointer" into a Python ValueError
// instead of a device fault. cudaPointerGetAttributes does not synchronise.
#include <cuda_runtime.h>

#include <string>

#include "check.cuh"
#include "rnn_cuda.h"

namespace fastrnn::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the "no driver" / "no device" error so later calls don't see it
    return 0;
  }
  return n;
}

int runtime_version() {
  int v = 0;
  return cudaRuntimeGetVersion(&v) == cudaSuccess ? v : 0;
}

int driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return v;
}

void require_device() {
  if (device_count() == 0)
    throw std::runtime_error("fastrnn CUDA back end: no CUDA device is available (no GPU or no driver)");
}

void check_device_pointer(std::uintptr_t p, const char* name) {
  cudaPointerAttributes attr{};
  const cudaError_t e = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(p));
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw ArgumentError(std::string(name) + " is not a CUDA pointer (" + cudaGetErrorString(e) + ")");
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    throw ArgumentError(std::string(name) + " must point to GPU memory, got " +
                        (attr.type == cudaMemoryTypeHost ? "pinned host memory" : "host memory"));
  int current = 0;
  FASTRNN_CUDA_CHECK(cudaGetDevice(&current));
  if (attr.device != current)
    throw ArgumentError(std::string(name) + " is on CUDA device " + std::to_string(attr.device) +
                        " but the current device is " + std::to_string(current) + " (make it current first)");
}

}  // namespace fastrnn::cuda
