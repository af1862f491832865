// A stand-in for libcublas.so under the CPU emulator (cuda/emu/): the five entry points that
// cuda/blas.cpp loads, on host memory, written from the cuBLAS guide's definition of cublasGemmEx
// (column-major; op(X) = X or X^T; beta == 0 never reads C), not from blas.cpp's mapping, so that
// running tests/cuda/test_cuda.py on an emulator built with it (build.sh, FASTRNN_EMU_CUBLAS=1) checks
// the row-major -> column-major mapping, the bias broadcast and beta of the cuBLAS path without a
// GPU. float32 and float64 only (the emulator has no 16-bit types); sums in double.
#include <cstddef>

enum { kR32F = 0, kR64F = 1, kOpN = 0, kInvalidValue = 7, kNotSupported = 15 };

template <class T>
void gemm(int transa, int transb, int m, int n, int k, const void* alpha, const T* A, int lda, const T* B, int ldb,
          const void* beta, T* C, int ldc) {
  const double a = *static_cast<const T*>(alpha), b = *static_cast<const T*>(beta);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      double s = 0;
      for (int p = 0; p < k; ++p) {
        const double x = transa == kOpN ? A[i + static_cast<size_t>(p) * lda] : A[p + static_cast<size_t>(i) * lda];
        const double y = transb == kOpN ? B[p + static_cast<size_t>(j) * ldb] : B[j + static_cast<size_t>(p) * ldb];
        s += x * y;
      }
      T& c = C[i + static_cast<size_t>(j) * ldc];
      c = static_cast<T>(b == 0 ? a * s : a * s + b * c);
    }
}

extern "C" {

int cublasCreate_v2(void** handle) {
  static int dummy;
  *handle = &dummy;
  return 0;
}
int cublasSetStream_v2(void*, void*) { return 0; }
int cublasSetWorkspace_v2(void*, void*, size_t) { return 0; }
int cublasGetProperty(int type, int* value) {  // "99.0.0": not a real cuBLAS
  *value = type == 0 ? 99 : 0;
  return 0;
}

int cublasGemmEx(void*, int transa, int transb, int m, int n, int k, const void* alpha, const void* A, int Atype,
                 int lda, const void* B, int Btype, int ldb, const void* beta, void* C, int Ctype, int ldc, int, int) {
  if (Atype != Btype || Atype != Ctype) return kNotSupported;
  if (lda < (transa == kOpN ? m : k) || ldb < (transb == kOpN ? k : n) || ldc < m) return kInvalidValue;
  if (Atype == kR32F)
    gemm(transa, transb, m, n, k, alpha, static_cast<const float*>(A), lda, static_cast<const float*>(B), ldb, beta,
         static_cast<float*>(C), ldc);
  else if (Atype == kR64F)
    gemm(transa, transb, m, n, k, alpha, static_cast<const double*>(A), lda, static_cast<const double*>(B), ldb, beta,
         static_cast<double*>(C), ldc);
  else
    return kNotSupported;
  return 0;
}

}  // extern "C"
