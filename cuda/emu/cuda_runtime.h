// A CPU stand-in for the parts of the CUDA runtime the back end uses, so that the CUDA sources
// (stack.cu, device.cu, bindings_cuda.cpp) compile with g++ and run on the host: a development tool
// for checking the kernels' indexing and semantics on a machine without a GPU (build.sh, README).
// Each launch runs its blocks one after another, each block as blockDim real threads that meet at
// __syncthreads (a std::barrier), so shared-memory tiling is exercised faithfully; what it cannot
// show is anything about concurrency BETWEEN blocks, memory coalescing or speed. A cooperative launch
// (cudaLaunchCooperativeKernel's stand-in, run_cooperative) runs ALL its blocks at once, every thread
// of every block a real thread, each block with its own __syncthreads barrier and its own dynamic
// shared memory, and cooperative_groups::this_grid().sync() a barrier over every thread of the grid
// (a std::barrier: it orders memory like the CUDA grid barrier, so plain loads see the other blocks'
// stores after it), so a persistent kernel's exchange between blocks runs as on a GPU. The device's
// properties a cooperative launch checks (SM count, shared memory per SM and per block) are settable
// for tests: FASTRNN_EMU_SMS (default 4) and FASTRNN_EMU_SMEM_KB per SM (default 228, Hopper's; a
// block may take all but 1 KB of it). "Device" memory is host memory; fresh allocations are filled
// with NaN bytes so that reading unwritten scratch shows.
#pragma once

#include <barrier>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Blocks of a normal launch run one at a time, so one static object per kernel instantiation is the
// block's memory. (A cooperative launch runs its blocks at once: its kernels use dynamic shared
// memory only, emu::dynamic_shared, one buffer per block.)
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace emu {
// The executing thread's block barrier and dynamic shared memory (set by the launch in each thread).
inline thread_local std::barrier<>* block_barrier = nullptr;
inline thread_local unsigned char* dynamic_shared = nullptr;
inline thread_local std::barrier<>* grid_barrier = nullptr;

template <class F> void run_kernel(dim3 grid, dim3 block, F&& body) {
  gridDim = grid;
  blockDim = block;
  const unsigned n = block.x * block.y * block.z;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::barrier<> bar(n);
        std::vector<std::thread> threads;
        threads.reserve(n);
        for (unsigned t = 0; t < n; ++t)
          threads.emplace_back([&, t] {
            block_barrier = &bar;
            blockIdx = dim3(bx, by, bz);
            threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            body();
            bar.arrive_and_drop();  // a thread that returned early no longer holds the others up
          });
        for (auto& th : threads) th.join();
      }
}

// The emulated device's properties (environment variables above).
inline int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}
inline int sm_count() { return env_int("FASTRNN_EMU_SMS", 4); }
inline int smem_per_sm() { return env_int("FASTRNN_EMU_SMEM_KB", 228) * 1024; }
inline int smem_per_block_optin() { return smem_per_sm() - 1024; }
constexpr int kMaxThreadsPerSm = 2048;

// Every block at once (a cooperative launch): grid.x * grid.y * grid.z * blockDim real threads.
template <class F> void run_cooperative(dim3 grid, dim3 block, size_t smem_bytes, F&& body) {
  gridDim = grid;
  blockDim = block;
  const unsigned n = block.x * block.y * block.z, blocks = grid.x * grid.y * grid.z;
  std::barrier<> grid_bar(std::ptrdiff_t(n) * blocks);
  std::deque<std::barrier<>> block_bars;  // (a barrier cannot move: no vector)
  for (unsigned k = 0; k < blocks; ++k) block_bars.emplace_back(n);
  // one dynamic shared-memory buffer per block, 16-byte aligned, NaN bytes like fresh scratch
  std::vector<std::vector<long double>> smem(blocks, std::vector<long double>(smem_bytes / sizeof(long double) + 1));
  for (auto& m : smem) std::memset(m.data(), 0xff, m.size() * sizeof(long double));
  std::vector<std::thread> threads;
  threads.reserve(std::size_t(n) * blocks);
  for (unsigned k = 0; k < blocks; ++k)
    for (unsigned t = 0; t < n; ++t)
      threads.emplace_back([&, k, t] {
        block_barrier = &block_bars[k];
        grid_barrier = &grid_bar;
        dynamic_shared = reinterpret_cast<unsigned char*>(smem[k].data());
        blockIdx = dim3(k % grid.x, (k / grid.x) % grid.y, k / (grid.x * grid.y));
        threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
        body();
        block_bars[k].arrive_and_drop();
        grid_bar.arrive_and_drop();
      });
  for (auto& th : threads) th.join();
}
}  // namespace emu

// cooperative_groups' grid group, as far as a persistent kernel uses it (this_grid().sync()).
namespace cooperative_groups {
struct grid_group {
  void sync() const { emu::grid_barrier->arrive_and_wait(); }
};
inline grid_group this_grid() { return {}; }
}  // namespace cooperative_groups

// A load through L2 only (on a GPU: not from a possibly stale L1 line); here a plain load.
template <class T> inline T __ldcg(const T* p) { return *p; }

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

using cudaStream_t = struct CUstream_st*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorCooperativeLaunchTooLarge = 720 };
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrCooperativeLaunch = 95,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaMemcpyKind { cudaMemcpyDeviceToDevice = 3 };
enum cudaMemoryType { cudaMemoryTypeUnregistered = 0, cudaMemoryTypeHost = 1, cudaMemoryTypeDevice = 2, cudaMemoryTypeManaged = 3 };
struct cudaPointerAttributes {
  cudaMemoryType type;
  int device;
};

inline const char* cudaGetErrorName(cudaError_t) { return "cudaErrorEmulated"; }
inline const char* cudaGetErrorString(cudaError_t) { return "emulated error"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaRuntimeGetVersion(int* v) { *v = 0; return cudaSuccess; }
inline cudaError_t cudaDriverGetVersion(int* v) { *v = 0; return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* a, const void*) {
  a->type = cudaMemoryTypeDevice;
  a->device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  *p = std::malloc(bytes ? bytes : 1);
  std::memset(*p, 0xff, bytes);  // NaN in every float type
  return *p ? cudaSuccess : cudaErrorInvalidValue;
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) { std::free(p); return cudaSuccess; }
inline cudaError_t cudaMalloc(void** p, size_t bytes) { return cudaMallocAsync(p, bytes, nullptr); }
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t) {
  std::memmove(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t) { std::memset(d, v, n); return cudaSuccess; }

inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *v = emu::sm_count(); return cudaSuccess;
    case cudaDevAttrCooperativeLaunch: *v = 1; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = emu::smem_per_block_optin(); return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
template <class F> cudaError_t cudaFuncSetAttribute(F*, cudaFuncAttribute, int bytes) {
  return bytes <= emu::smem_per_block_optin() ? cudaSuccess : cudaErrorInvalidValue;
}
// Blocks of `threads` threads and `smem` bytes of dynamic shared memory that fit on one SM.
template <class F> cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, F*, int threads, size_t smem) {
  const int by_threads = emu::kMaxThreadsPerSm / threads;
  const int by_smem = smem ? int(size_t(emu::smem_per_sm()) / smem) : by_threads;
  *n = by_threads < by_smem ? by_threads : by_smem;
  return cudaSuccess;
}
