// Dense products: a tiled shared-memory block product used both by the stand-alone GEMM (input
// projection X W_ih^T, weight gradients dG^T X and dG^T H_prev, dX = dG W_ih) and, with gathered
// operands, inside the fused recurrent step kernels (layer.cuh). The stand-alone GEMM runs on
// cuBLAS when the build has FASTRNN_CUDA_CUBLAS and cuBLAS loads at run time (blas.h), and on the
// kernel here otherwise (under the CPU emulator unless it is built with its stand-in cuBLAS). Row-major throughout; op(A)/op(B) transposes are runtime flags
// (uniform across a block, so the branch costs nothing measurable next to the loads). Storage type T,
// accumulation type AccType<T> (float for half/bf16 storage). No split-K and no atomics: every
// output is one thread's sum in a fixed order, so results are bitwise reproducible.
// The own GEMM is a correct, portable baseline, not a tuned one.
#pragma once

#include <cuda_runtime.h>

#include <type_traits>

#include "check.cuh"
#include "common.h"
#include "dtypes.h"

#if defined(FASTRNN_CUDA_CUBLAS)  // (the emulator builds it only with a stand-in cuBLAS, cuda/emu/)
#include "blas.h"
#define FASTRNN_GEMM_ON_CUBLAS 1
#endif

namespace fastrnn::cuda {

template <class T> using Acc = typename AccType<T>::type;

// A block computes a BM x BN tile of C with BM/TM x BN/TN threads, each a TM x TN micro-tile whose
// rows are ty, ty + BM/TM, ... and columns tx, tx + BN/TN, ... (strided so that a warp reads
// consecutive shared-memory words of B and broadcasts one of A: no bank conflicts).
template <int BM_, int BN_, int BK_, int TM_, int TN_> struct TileShape {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr int kThreadsM = BM / TM, kThreadsN = BN / TN, kThreads = kThreadsM * kThreadsN;
  static_assert(BM % TM == 0 && BN % TN == 0, "micro-tile must divide the tile");
};

template <class Shape, class A> struct TileSmem {
  A a[Shape::BK][Shape::BM];  // op(A) tile, k-major
  A b[Shape::BK][Shape::BN];  // op(B)^T tile, k-major
};

// op(X)(r, k) of a row-major matrix X; zero outside [0, rows) x [0, K) so tiles need no edge cases.
// For the left operand r is the output row m; for the right operand r is the output column n and
// the value is op(B)(k, n) (so a non-transposed B is read with trans = true).
template <class T> struct MatOp {
  const T* p;
  int64 ld, rows, K;
  bool trans;  // element (r, k) at p[k*ld + r] instead of p[r*ld + k]
  __device__ Acc<T> operator()(int64 r, int64 k) const {
    if (r >= rows || k >= K) return Acc<T>(0);
    return Acc<T>(trans ? p[k * ld + r] : p[r * ld + k]);
  }
  // Consecutive threads should walk the contiguous index: k when not transposed.
  __device__ bool k_contiguous() const { return !trans; }
};

// acc[i][j] += sum_k la(r0 + m_i, k) * lb(c0 + n_j, k) over k in [0, K), for this thread's micro-tile.
// Every thread of the block must call it (it synchronises the block).
template <class Shape, class A, class LA, class LB>
__device__ __forceinline__ void tile_product(const LA& la, const LB& lb, int64 r0, int64 c0, int64 K,
                                             TileSmem<Shape, A>& s, A (&acc)[Shape::TM][Shape::TN]) {
  constexpr int BM = Shape::BM, BN = Shape::BN, BK = Shape::BK;
  const int tid = threadIdx.x, tx = tid % Shape::kThreadsN, ty = tid / Shape::kThreadsN;
  const bool a_along_k = la.k_contiguous(), b_along_k = lb.k_contiguous();
  for (int64 k0 = 0; k0 < K; k0 += BK) {
    for (int idx = tid; idx < BM * BK; idx += Shape::kThreads) {
      const int m = a_along_k ? idx / BK : idx % BM, k = a_along_k ? idx % BK : idx / BM;
      s.a[k][m] = la(r0 + m, k0 + k);
    }
    for (int idx = tid; idx < BN * BK; idx += Shape::kThreads) {
      const int n = b_along_k ? idx / BK : idx % BN, k = b_along_k ? idx % BK : idx / BN;
      s.b[k][n] = lb(c0 + n, k0 + k);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      A av[Shape::TM], bv[Shape::TN];
#pragma unroll
      for (int i = 0; i < Shape::TM; ++i) av[i] = s.a[k][ty + i * Shape::kThreadsM];
#pragma unroll
      for (int j = 0; j < Shape::TN; ++j) bv[j] = s.b[k][tx + j * Shape::kThreadsN];
#pragma unroll
      for (int i = 0; i < Shape::TM; ++i)
#pragma unroll
        for (int j = 0; j < Shape::TN; ++j) acc[i][j] += av[i] * bv[j];
    }
    __syncthreads();
  }
}

using GemmShape = TileShape<64, 64, 16, 4, 4>;  // 256 threads

// C [M, N] = alpha * op(A) op(B) + beta * C + bias (bias [N] broadcast over rows, or nullptr).
// beta == 0 never reads C (it may hold garbage or NaN).
template <class T>
__global__ void __launch_bounds__(GemmShape::kThreads)
gemm_kernel(int64 M, int64 N, int64 K, MatOp<T> a, MatOp<T> b, Acc<T> alpha, Acc<T> beta, T* C, int64 ldc,
            const T* bias) {
  using S = GemmShape;
  __shared__ TileSmem<S, Acc<T>> smem;
  const int64 m0 = int64(blockIdx.x) * S::BM, n0 = int64(blockIdx.y) * S::BN;
  Acc<T> acc[S::TM][S::TN] = {};
  tile_product<S>(a, b, m0, n0, K, smem, acc);
  const int tx = threadIdx.x % S::kThreadsN, ty = threadIdx.x / S::kThreadsN;
#pragma unroll
  for (int i = 0; i < S::TM; ++i) {
    const int64 m = m0 + ty + i * S::kThreadsM;
#pragma unroll
    for (int j = 0; j < S::TN; ++j) {
      const int64 n = n0 + tx + j * S::kThreadsN;
      if (m < M && n < N) {
        Acc<T> v = alpha * acc[i][j];
        if (beta != Acc<T>(0)) v += beta * Acc<T>(C[m * ldc + n]);
        if (bias) v += Acc<T>(bias[n]);
        C[m * ldc + n] = T(v);
      }
    }
  }
}

// Largest grid.x and grid.y (and grid.z) a launch may have.
constexpr int64 kMaxGridX = 2147483647, kMaxGridY = 65535;

inline int64 ceil_div(int64 a, int64 b) { return (a + b - 1) / b; }

// C[m, n] = bias[n] for m < M, n < N: the bias of a product that cuBLAS then adds onto (beta = 1).
template <class T> __global__ void broadcast_rows_kernel(int64 M, int64 N, const T* bias, T* C, int64 ldc) {
  const int64 i = int64(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < M * N) C[(i / N) * ldc + i % N] = bias[i % N];
}

#if defined(FASTRNN_GEMM_ON_CUBLAS)
template <class T> constexpr blas::DType blas_dtype() {
  if constexpr (std::is_same_v<T, double>) return blas::DType::f64;
#if defined(FASTRNN_CUDA_HALF)
  else if constexpr (std::is_same_v<T, __half>) return blas::DType::f16;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return blas::DType::bf16;
#endif
  else return blas::DType::f32;
}

// gemm() on cuBLAS; false (nothing queued) when cuBLAS declines these sizes or is not there.
template <class T>
bool gemm_on_cublas(cudaStream_t stream, bool trans_a, bool trans_b, int64 M, int64 N, int64 K, Acc<T> alpha,
                    const T* A, int64 lda, const T* B, int64 ldb, Acc<T> beta, T* C, int64 ldc, const T* bias) {
  constexpr int kThreads = 256;  // of the bias broadcast, over a 1-D grid
  if ((bias && (beta != Acc<T>(0) || ceil_div(M * N, kThreads) > kMaxGridX)) || !blas::will_run(M, N, K, lda, ldb, ldc))
    return false;
  if (bias) {
    launch(broadcast_rows_kernel<T>, static_cast<unsigned>(ceil_div(M * N, kThreads)), kThreads, stream, M, N, bias,
           C, ldc);
    beta = Acc<T>(1);
  }
  return blas::gemm(stream, blas_dtype<T>(), trans_a, trans_b, M, N, K, &alpha, A, lda, B, ldb, &beta, C, ldc);
}
#endif

// C [M, N] (ldc) = alpha * op(A) [M, K] * op(B) [K, N] + beta * C (+ bias [N]). op(A) is A [M, K]
// (lda) or, with trans_a, A^T of A [K, M]; op(B) is B [K, N] (ldb) or, with trans_b, B^T of B [N, K].
template <class T>
void gemm(cudaStream_t stream, bool trans_a, bool trans_b, int64 M, int64 N, int64 K, Acc<T> alpha, const T* A,
          int64 lda, const T* B, int64 ldb, Acc<T> beta, T* C, int64 ldc, const T* bias = nullptr) {
  if (M == 0 || N == 0) return;
#if defined(FASTRNN_GEMM_ON_CUBLAS)
  if (gemm_on_cublas<T>(stream, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias)) return;
#endif
  const dim3 grid(static_cast<unsigned>(ceil_div(M, GemmShape::BM)), static_cast<unsigned>(ceil_div(N, GemmShape::BN)));
  launch(gemm_kernel<T>, grid, GemmShape::kThreads, stream, M, N, K, MatOp<T>{A, lda, M, K, trans_a},
         MatOp<T>{B, ldb, N, K, !trans_b}, alpha, beta, C, ldc, bias);
}

// out[c] = sum_r X[r, c] for c < cols: the bias gradients. A block takes 32 columns; its 8 thread
// rows each sum every 8th row in order, then one thread adds the 8 partial sums in order: a fixed
// summation order (deterministic, no atomics) with coalesced reads along each row.
constexpr int kColSumCols = 32, kColSumRows = 8;

template <class T>
__global__ void __launch_bounds__(kColSumCols* kColSumRows)
column_sums_kernel(const T* X, int64 rows, int64 cols, int64 ld, T* out) {
  __shared__ Acc<T> part[kColSumRows][kColSumCols];
  const int64 c = int64(blockIdx.x) * kColSumCols + threadIdx.x;
  Acc<T> s(0);
  if (c < cols)
    for (int64 r = threadIdx.y; r < rows; r += kColSumRows) s += Acc<T>(X[r * ld + c]);
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    Acc<T> total = part[0][threadIdx.x];
#pragma unroll
    for (int i = 1; i < kColSumRows; ++i) total += part[i][threadIdx.x];
    out[c] = T(total);
  }
}

template <class T> void column_sums(cudaStream_t stream, const T* X /*[rows, ld]*/, int64 rows, int64 cols, int64 ld,
                                    T* out /*[cols]*/) {
  if (cols == 0) return;
  launch(column_sums_kernel<T>, static_cast<unsigned>(ceil_div(cols, kColSumCols)), dim3(kColSumCols, kColSumRows),
         stream, X, rows, cols, ld, out);
}

}  // namespace fastrnn::cuda
