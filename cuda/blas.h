// cuBLAS for the large products of the CUDA back end (the input projection of all steps, the
// weight gradients and dX; gemm.cuh calls it, and runs its own GEMM when this declines), loaded at
// run time with dlopen: nothing is linked or included at build time, so the same build compiles
// where the toolkit has no cuBLAS (CI) and uses the toolkit's or the nvidia-cublas wheel's
// libcublas.so (the one torch has already loaded) where there is one. The few entry points and
// enum values used are declared in blas.cpp, copied from cublas_api.h / library_types.h.
//
// Switches: FASTRNN_CUBLAS=0 in the environment (read on every call) keeps every product on the own
// GEMM; FASTRNN_CUBLAS_LIBRARY=<path> names the library to load first. TF32 (fp32 storage, tensor
// cores) only inside a ScopedTf32(true), which the bindings open when the caller allows it (torch:
// torch.backends.cuda.matmul.allow_tf32). float16/bfloat16 run on tensor cores with fp32
// accumulation. Not under the CPU emulator (cuda/emu/), which has no cuBLAS.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "common.h"

namespace fastrnn::cuda::blas {

enum class DType { f32, f64, f16, bf16 };

// C [M, N] (row-major, ldc) = alpha * op(A) op(B) + beta * C with gemm.cuh's conventions (op(A) is
// A [M, K] or, with trans_a, A^T of A [K, M]; likewise B). alpha/beta point to host values of the
// accumulation type (double for f64, else float). Returns false, having queued nothing, when
// cuBLAS is switched off, not loadable, or a size exceeds its 32-bit API: the caller then runs its
// own GEMM. Throws std::runtime_error when cuBLAS fails.
bool gemm(cudaStream_t stream, DType dtype, bool trans_a, bool trans_b, int64 M, int64 N, int64 K, const void* alpha,
          const void* A, int64 lda, const void* B, int64 ldb, const void* beta, void* C, int64 ldc);

// Whether gemm() would run these sizes on cuBLAS (and not decline), so that a caller can prepare
// C (e.g. the bias broadcast) for it first.
bool will_run(int64 M, int64 N, int64 K, int64 lda, int64 ldb, int64 ldc);

// "cuBLAS <version> (<library>)" when loaded (loading it if need be), else why not, e.g.
// "off (FASTRNN_CUBLAS=0)" or "not found (tried libcublas.so.13, ...)".
std::string status();

// TF32 for fp32 products on this thread while the guard lives (the bindings' calls run on one thread).
class ScopedTf32 {
 public:
  explicit ScopedTf32(bool allow);
  ~ScopedTf32();
  ScopedTf32(const ScopedTf32&) = delete;
  ScopedTf32& operator=(const ScopedTf32&) = delete;

 private:
  bool saved_;
};

}  // namespace fastrnn::cuda::blas
