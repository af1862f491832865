// The explicit instantiations of the layer forward and backward (cuda/layer.cuh) and with them their
// step kernels. cuda/CMakeLists.txt compiles this file once per storage type and cell group (it
// defines FASTRNN_CUDA_INSTANCE_TYPE and FASTRNN_CUDA_INSTANCE_GROUP, layer_instances.h), so that
// nvcc runs in parallel; without them (the CPU emulator's build, cuda/emu/build.sh) it instantiates
// every pair.
#include "layer.cuh"
#include "layer_instances.h"

namespace fastrnn::cuda {
#if defined(FASTRNN_CUDA_INSTANCE_TYPE) && defined(FASTRNN_CUDA_INSTANCE_GROUP)
FASTRNN_CUDA_INSTANCE_GROUP(FASTRNN_CUDA_LAYER_INSTANCE, FASTRNN_CUDA_INSTANCE_TYPE)
#else
FASTRNN_CUDA_ALL_INSTANCES(FASTRNN_CUDA_LAYER_INSTANCE)
#endif
}  // namespace fastrnn::cuda
