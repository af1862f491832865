// The storage types of the CUDA back end: float32 and float64, and float16 and bfloat16, whose
// arithmetic type is float (AccType, csrc/common.h): GEMMs accumulate, the cell maths runs and the
// recurrent state is kept in float; only what is stored (outputs, reserve, gradients) is rounded to
// 16 bits. Under the CPU emulator (cuda/emu/) the 16-bit types are its stand-ins (emu/cuda_fp16_bf16.h).
#pragma once

#include "common.h"

#if defined(FASTRNN_CUDA_EMULATION)
#include "cuda_fp16_bf16.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif
#define FASTRNN_CUDA_HALF 1

namespace fastrnn {
template <> struct AccType<__half> { using type = float; };
template <> struct AccType<__nv_bfloat16> { using type = float; };
}  // namespace fastrnn
