// cuBLAS loaded at run time (see blas.h): the loader, one handle per (host thread, device) with a
// workspace of its own, and the row-major -> column-major mapping of gemm.cuh's products onto
// cublasGemmEx. Host code only.
//
// Handles and workspaces are made on first use and never destroyed: destroying them at process
// exit can run after the CUDA driver has shut down; the OS reclaims them. A handle made during CUDA
// graph capture would allocate its workspace inside the capture, so callers that capture make one
// call before capturing (torch's own cuBLAS use has the same rule).
#include "blas.h"

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "check.cuh"

namespace fastrnn::cuda::blas {

namespace {

// From cublas_api.h and library_types.h (CUDA 12/13; stable values of the C API).
using cublasHandle_t = struct cublasContext*;
using cublasStatus_t = int;
constexpr int CUBLAS_STATUS_SUCCESS = 0;
constexpr int CUBLAS_OP_N = 0, CUBLAS_OP_T = 1;
constexpr int CUDA_R_32F = 0, CUDA_R_64F = 1, CUDA_R_16F = 2, CUDA_R_16BF = 14;
constexpr int CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_FAST_TF32 = 77, CUBLAS_COMPUTE_64F = 70;
constexpr int CUBLAS_GEMM_DEFAULT = -1;
constexpr int MAJOR_VERSION = 0, MINOR_VERSION = 1, PATCH_LEVEL = 2;  // libraryPropertyType
// What cuBLAS recommends for Hopper (the cuBLAS guide, "cublasSetWorkspace").
constexpr size_t kWorkspaceBytes = size_t(32) << 20;

struct Api {
  void* lib = nullptr;
  std::string library, error, version;
  cublasStatus_t (*create)(cublasHandle_t*) = nullptr;
  cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t) = nullptr;
  cublasStatus_t (*set_workspace)(cublasHandle_t, void*, size_t) = nullptr;
  cublasStatus_t (*get_property)(int, int*) = nullptr;
  cublasStatus_t (*gemm_ex)(cublasHandle_t, int, int, int, int, int, const void*, const void*, int, int, const void*,
                            int, int, const void*, void*, int, int, int, int) = nullptr;
};

template <class F> bool bind(void* lib, const char* name, F& f) {
  f = reinterpret_cast<F>(dlsym(lib, name));
  return f != nullptr;
}

Api load() {
  Api a;
  std::vector<std::string> names;
  if (const char* path = std::getenv("FASTRNN_CUBLAS_LIBRARY"); path && *path) names.emplace_back(path);
  // By soname first: where torch has loaded its cuBLAS (the nvidia-cublas wheel), this finds that one.
  for (const char* n : {"libcublas.so.13", "libcublas.so.12", "libcublas.so", "/usr/local/cuda/lib64/libcublas.so"})
    names.emplace_back(n);
  std::string tried;
  for (const auto& n : names) {
    a.lib = dlopen(n.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (a.lib) {
      a.library = n;
      break;
    }
    tried += (tried.empty() ? "" : ", ") + n;
  }
  if (!a.lib) {
    a.error = "not found (tried " + tried + ")";
    return a;
  }
  if (!bind(a.lib, "cublasCreate_v2", a.create) || !bind(a.lib, "cublasSetStream_v2", a.set_stream) ||
      !bind(a.lib, "cublasSetWorkspace_v2", a.set_workspace) || !bind(a.lib, "cublasGetProperty", a.get_property) ||
      !bind(a.lib, "cublasGemmEx", a.gemm_ex)) {
    a.error = "unusable: " + a.library + " lacks an entry point fastrnn needs";
    a.lib = nullptr;
    return a;
  }
  int major = 0, minor = 0, patch = 0;
  a.get_property(MAJOR_VERSION, &major);
  a.get_property(MINOR_VERSION, &minor);
  a.get_property(PATCH_LEVEL, &patch);
  a.version = std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
  return a;
}

const Api& api() {
  static const Api a = load();  // once per process, thread-safe
  return a;
}

bool switched_off() {
  const char* v = std::getenv("FASTRNN_CUBLAS");
  return v && std::strcmp(v, "0") == 0;
}

thread_local bool tf32_allowed = false;

[[noreturn]] void fail(cublasStatus_t s, const char* what) {
  throw std::runtime_error(std::string("cuBLAS error ") + std::to_string(s) + " in " + what);
}

struct Handle {
  cublasHandle_t handle = nullptr;
  void* workspace = nullptr;
};

// This thread's handle for the current device.
const Handle& handle() {
  thread_local std::unordered_map<int, Handle> handles;
  int device = 0;
  FASTRNN_CUDA_CHECK(cudaGetDevice(&device));
  Handle& h = handles[device];
  if (!h.handle) {
    if (const cublasStatus_t s = api().create(&h.handle); s != CUBLAS_STATUS_SUCCESS) {
      h.handle = nullptr;
      fail(s, "cublasCreate");
    }
    FASTRNN_CUDA_CHECK(cudaMalloc(&h.workspace, kWorkspaceBytes));
  }
  return h;
}

bool fits_int(std::initializer_list<int64> values) {
  for (int64 v : values)
    if (v < 0 || v > INT_MAX) return false;
  return true;
}

}  // namespace

bool gemm(cudaStream_t stream, DType dtype, bool trans_a, bool trans_b, int64 M, int64 N, int64 K, const void* alpha,
          const void* A, int64 lda, const void* B, int64 ldb, const void* beta, void* C, int64 ldc) {
  if (switched_off() || !api().lib || !fits_int({M, N, K, lda, ldb, ldc})) return false;
  int type = CUDA_R_32F, compute = CUBLAS_COMPUTE_32F;
  switch (dtype) {
    case DType::f32: compute = tf32_allowed ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F; break;
    case DType::f64: type = CUDA_R_64F, compute = CUBLAS_COMPUTE_64F; break;
    case DType::f16: type = CUDA_R_16F; break;
    case DType::bf16: type = CUDA_R_16BF; break;
  }
  const Handle& h = handle();
  const Api& a = api();
  if (const cublasStatus_t s = a.set_stream(h.handle, stream); s != CUBLAS_STATUS_SUCCESS) fail(s, "cublasSetStream");
  // After every cublasSetStream, which resets the workspace to cuBLAS's own pool.
  if (const cublasStatus_t s = a.set_workspace(h.handle, h.workspace, kWorkspaceBytes); s != CUBLAS_STATUS_SUCCESS)
    fail(s, "cublasSetWorkspace");
  // Row-major C [M, N] = op(A) op(B) is column-major C^T [N, M] = op(B)^T op(A)^T: the row-major
  // buffers read column-major are the transposes, so B goes first and each keeps its own flag.
  const cublasStatus_t s =
      a.gemm_ex(h.handle, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, int(N), int(M),
                int(K), alpha, B, type, int(ldb), A, type, int(lda), beta, C, type, int(ldc), compute, CUBLAS_GEMM_DEFAULT);
  if (s != CUBLAS_STATUS_SUCCESS) fail(s, "cublasGemmEx");
  return true;
}

bool will_run(int64 M, int64 N, int64 K, int64 lda, int64 ldb, int64 ldc) {
  return !switched_off() && api().lib && fits_int({M, N, K, lda, ldb, ldc});
}

std::string status() {
  if (switched_off()) return "off (FASTRNN_CUBLAS=0)";
  const Api& a = api();
  return a.lib ? "cuBLAS " + a.version + " (" + a.library + ")" : a.error;
}

ScopedTf32::ScopedTf32(bool allow) : saved_(tf32_allowed) { tf32_allowed = allow; }
ScopedTf32::~ScopedTf32() { tf32_allowed = saved_; }

}  // namespace fastrnn::cuda::blas
