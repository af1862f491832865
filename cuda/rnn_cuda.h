// The CUDA back end's C++ interface, used by its bindings (bindings_cuda.cpp): the stack-level
// forward and backward (the same RnnConfig / ForwardArgs / BackwardArgs / reserve layout as the CPU
// back end, csrc/rnn.h, with every pointer on the current device and every launch on `stream`), and
// the device queries that make the bindings safe to call without a GPU or with a host pointer.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dtypes.h"
#include "rnn.h"

namespace fastrnn::cuda {

template <class T> void forward(const RnnConfig& cfg, const ForwardArgs<T>& a, cudaStream_t stream);
template <class T> void backward(const RnnConfig& cfg, const BackwardArgs<T>& a, cudaStream_t stream);

// Throws ArgumentError when a size would exceed a launch limit of the kernels (grid dimensions) or
// overflow 64 bits; called by forward/backward before anything is queued.
void check_sizes(const RnnConfig& cfg);

// Number of CUDA devices visible to the process (0 without a driver or without a GPU).
int device_count();
// The CUDA runtime fastrnn was built with, and the CUDA version the driver supports (1000 * major
// + 10 * minor, e.g. 13000; 0 when unknown or without a driver).
int runtime_version();
int driver_version();
// Throws std::runtime_error (RuntimeError) when no device is usable.
void require_device();
// Throws ArgumentError (ValueError) unless `p` is device (or managed) memory of the current device.
void check_device_pointer(std::uintptr_t p, const char* name);

}  // namespace fastrnn::cuda
