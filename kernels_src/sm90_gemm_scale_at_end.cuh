// sm90_gemm_scale_at_end: D(m, n) = A(m, k) * B(n, k)^T with the wgmma accumulating over all of K
// and the scales applied once to the finished tile: FP8 operands with per-row A scales and a
// per-tensor B scale (per group), or 16-bit operands without scales (bmm_fp16). No promotion, no
// scale warps, no split-K. The pieces are the GEMM core's (gemm/, see sm90_fp8_gemm_blockscaled.cuh).
#pragma once
#include "gemm/kernel.cuh"

namespace mategemm {

template <int BLOCK_M, int BLOCK_N, int kNumStages, OperandType kTypeA, OperandType kTypeB, OutType kOutType,
          int kOutSwizzle, int kClusterM, int kClusterN, GroupMode kGroupMode, int kMaxGroups, int kMnMajor>
__global__ void __launch_bounds__(gemm_threads<BLOCK_M>(), 1) sm90_gemm_scale_at_end(MATEGEMM_GEMM_PARAMS) {
  using Traits = GemmTraits<BLOCK_M, BLOCK_N, kNumStages, 0, kTypeA, kTypeB, kOutType, kOutSwizzle, kClusterM,
                            kClusterN, false, kGroupMode, kMaxGroups, kMnMajor>;
  gemm_kernel_body<Traits>(MATEGEMM_GEMM_ARGS);
}

}  // namespace mategemm
