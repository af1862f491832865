// The CUDA back end's C++ interface, used by its bindings (bindings_cuda.cpp): the stack-level
// forward and backward (the same RnnConfig / ForwardArgs / BackwardArgs / reserve layout as the CPU
// back end, csrc/rnn.h, with every pointer on the current device and every launch on `stream`), and
// the device queries that make the bindings safe to call without a GPU or with a host pointer.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "dtypes.h"
#include "rnn.h"

namespace fastrnn::cuda {

template <class T> void forward(const RnnConfig& cfg, const ForwardArgs<T>& a, cudaStream_t stream);
template <class T> void backward(const RnnConfig& cfg, const BackwardArgs<T>& a, cudaStream_t stream);

// The persistent small-batch forward (persistent.cuh): whether a layer of `cfg` runs on it now
// (FASTRNN_CUDA_PERSISTENT, the cell, the device's SMs and shared memory), and if not, why not.
struct PersistentPlan {
  bool runs = false;
  std::string reason;       // why not (empty when it runs)
  int units = 0;            // hidden units per block (all G gate rows of each)
  int blocks = 0;           // ceil(H / units), all co-resident
  int k_slices = 0;         // the recurrent product's reduction over H in this many slices per output
  int threads = 0;          // per block
  long long smem_bytes = 0; // dynamic shared memory per block: W_hh's slice, h_{t-1}, the slices' sums
  long long smem_limit = 0; // what the device allows per block
  int sms = 0;              // the device's multiprocessors
  int blocks_per_sm = 0;    // co-resident blocks per SM at smem_bytes (the occupancy calculator)
};
// The plan of one layer of `cfg` (every layer has the same H and B) in storage type T.
template <class T> PersistentPlan persistent_plan(const RnnConfig& cfg);

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
