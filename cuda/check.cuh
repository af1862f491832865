// What every CUDA translation unit needs: the one macro that checks a CUDA call (and, after a launch,
// cudaGetLastError), turning a failure into std::runtime_error (Python's RuntimeError through
// pybind11); and a stream-ordered scratch buffer. Scratch comes from cudaMallocAsync on the caller's
// stream: no device synchronisation, freed in stream order after the kernels that use it, and
// capturable in a CUDA graph (a later version can take a workspace from the caller instead).
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "common.h"

namespace fastrnn::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t e, const char* what, const char* file, int line) {
  throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
                           ") in " + what + " at " + file + ":" + std::to_string(line));
}

#define FASTRNN_CUDA_CHECK(call)                                                           \
  do {                                                                                     \
    const cudaError_t fastrnn_err_ = (call);                                               \
    if (fastrnn_err_ != cudaSuccess) ::fastrnn::cuda::throw_cuda_error(fastrnn_err_, #call, __FILE__, __LINE__); \
  } while (0)

// After every launch: a bad launch configuration is reported here; faults inside a kernel surface
// at the caller's next synchronising call (we never synchronise).
#define FASTRNN_LAUNCH_CHECK() FASTRNN_CUDA_CHECK(cudaGetLastError())

// The one way kernels are launched (no dynamic shared memory): on `stream`, checked. Under the CPU
// emulator (cuda/emu/, FASTRNN_CUDA_EMULATION) the same call runs the kernel on host threads. Only
// in CUDA translation units (host-only C++ such as blas.cpp includes this header for the checks).
#if defined(__CUDACC__) || defined(FASTRNN_CUDA_EMULATION)
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, const Args&... args) {
#if defined(FASTRNN_CUDA_EMULATION)
  emu::run_kernel(grid, block, [&] { kernel(args...); });
#else
  kernel<<<grid, block, 0, stream>>>(args...);
#endif
  FASTRNN_LAUNCH_CHECK();
}

// A cooperative launch (every block co-resident, so that the kernel may use a grid-wide barrier,
// cooperative_groups::this_grid().sync()) of a kernel taking one parameter struct, with `smem` bytes
// of dynamic shared memory; checked. The caller has made sure the grid fits (persistent.cuh's plan):
// otherwise the launch fails with cudaErrorCooperativeLaunchTooLarge. Under the emulator every block
// runs at once on host threads.
template <class P>
void launch_cooperative(void (*kernel)(P), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, const P& p) {
#if defined(FASTRNN_CUDA_EMULATION)
  (void)stream;
  emu::run_cooperative(grid, block, smem, [&] { kernel(p); });
#else
  void* args[] = {const_cast<P*>(&p)};
  FASTRNN_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid, block, args, smem, stream));
#endif
  FASTRNN_LAUNCH_CHECK();
}
#endif

// n elements of T on the device, allocated and freed in the order of `stream`.
template <class T> class Scratch {
 public:
  Scratch(int64 n, cudaStream_t stream) : stream_(stream) {
    if (n > 0)
      FASTRNN_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&p_),
                                         static_cast<size_t>(checked_mul(n, int64(sizeof(T)), "scratch bytes")), stream));
  }
  ~Scratch() {
    if (p_) cudaFreeAsync(p_, stream_);  // nothing to do about a failure here; the next check reports it
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
  cudaStream_t stream_;
};

}  // namespace fastrnn::cuda
