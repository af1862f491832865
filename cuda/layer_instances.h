// Which (cell spec, storage type) pairs the CUDA back end instantiates its layer forward and backward
// for (cuda/layer.cuh), as X-macro lists (base cells, LSTM variants, GRU variants, the projected LSTMs for every
// storage type; layer norm for float32/float64), so that the kernels compile in several translation units
// in parallel (nvcc took ~100 s for all of them in one unit): cuda/CMakeLists.txt generates one unit
// per storage type and group from layer_instances.cu; cuda/stack.cu declares every pair extern, so
// it instantiates none itself. A cell the kernels run (cuda_runs_step) must be in a group here, or
// the link fails naming it.
#pragma once

#include "cells/all.h"
#include "dtypes.h"

namespace fastrnn::cuda::instances {
// one-token names for the macro lists (a template argument list's comma would split a macro argument)
using RnnTanh = RnnCell<false>;
using RnnRelu = RnnCell<true>;
using LstmPlainVariant = LstmVariant<false, false>;  // cell_clip alone
using LstmPeephole = LstmVariant<true, false>;
using LstmCoupled = LstmVariant<false, true>;
using LstmPeepholeCoupled = LstmVariant<true, true>;
// the projected LSTM (proj_size) around the LSTM and each variant (dispatch_cell's five)
using LstmProjected = LstmProjection<LstmCell>;
using LstmProjectedClip = LstmProjection<LstmPlainVariant>;
using LstmProjectedPeephole = LstmProjection<LstmPeephole>;
using LstmProjectedCoupled = LstmProjection<LstmCoupled>;
using LstmProjectedPeepholeCoupled = LstmProjection<LstmPeepholeCoupled>;
}  // namespace fastrnn::cuda::instances

// The groups: X(Cell, T) for each cell of the group.
#define FASTRNN_CUDA_CELLS_BASE(X, T) \
  X(instances::RnnTanh, T) X(instances::RnnRelu, T) X(LstmCell, T) X(GruCell, T)
#define FASTRNN_CUDA_CELLS_LSTM_VARIANTS(X, T) \
  X(instances::LstmPlainVariant, T) X(instances::LstmPeephole, T) X(instances::LstmCoupled, T) \
  X(instances::LstmPeepholeCoupled, T)
#define FASTRNN_CUDA_CELLS_GRU_VARIANTS(X, T) X(GruResetBefore, T)
#define FASTRNN_CUDA_CELLS_PROJECTION(X, T) \
  X(instances::LstmProjected, T) X(instances::LstmProjectedClip, T) X(instances::LstmProjectedPeephole, T) \
  X(instances::LstmProjectedCoupled, T) X(instances::LstmProjectedPeepholeCoupled, T)
// layer norm: float32/float64 storage only (the stack refuses 16-bit storage with it)
#define FASTRNN_CUDA_CELLS_LAYER_NORM(X, T) X(LstmLayerNorm, T) X(GruLayerNorm, T)

#define FASTRNN_CUDA_ALL_CELLS(X, T)                                                              \
  FASTRNN_CUDA_CELLS_BASE(X, T) FASTRNN_CUDA_CELLS_LSTM_VARIANTS(X, T) FASTRNN_CUDA_CELLS_GRU_VARIANTS(X, T) \
  FASTRNN_CUDA_CELLS_PROJECTION(X, T)
#define FASTRNN_CUDA_ALL_INSTANCES(X) \
  FASTRNN_CUDA_ALL_CELLS(X, float) FASTRNN_CUDA_ALL_CELLS(X, double) FASTRNN_CUDA_ALL_CELLS(X, __half) \
  FASTRNN_CUDA_ALL_CELLS(X, __nv_bfloat16) FASTRNN_CUDA_CELLS_LAYER_NORM(X, float) \
  FASTRNN_CUDA_CELLS_LAYER_NORM(X, double)

// An explicit instantiation declaration (stack.cu) and definition (the generated units) of one pair.
#define FASTRNN_CUDA_LAYER_EXTERN(Cell, T)                                                              \
  extern template void layer_forward<Cell, T>(cudaStream_t, const RnnConfig&, const LayerForwardArgs<T>&); \
  extern template void layer_backward<Cell, T>(cudaStream_t, const RnnConfig&, const LayerBackwardArgs<T>&); \
  extern template PersistentPlan layer_persistent_plan<Cell, T>(const RnnConfig&, bool);
#define FASTRNN_CUDA_LAYER_INSTANCE(Cell, T)                                                     \
  template void layer_forward<Cell, T>(cudaStream_t, const RnnConfig&, const LayerForwardArgs<T>&); \
  template void layer_backward<Cell, T>(cudaStream_t, const RnnConfig&, const LayerBackwardArgs<T>&); \
  template PersistentPlan layer_persistent_plan<Cell, T>(const RnnConfig&, bool);
