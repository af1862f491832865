// Device queries for the CUDA back end: how many GPUs the process can see (0 without a driver).
#include <cuda_runtime.h>

namespace fastrnn::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

}  // namespace fastrnn::cuda
