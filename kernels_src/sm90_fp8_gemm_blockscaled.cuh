// sm90_fp8_gemm_blockscaled: D(m, n) = A(m, k) * B(n, k)^T with FP8 operands and FP32 block scales,
// promoted per 128-K block.
//
// Recipes: A scales per (row, 128-K block); B scales per (128-column block, 128-K block) when
// kScaleGranN == 128 (DeepSeek-V3's 1x128 / 128x128), or per (column, 128-K block) when 1; with
// kScaleGranK == 32 (MXFP8's blocks, kScaleGranN 1) both per 32 values of K instead.
// Scale tensors are read with run-time strides, so K-major and MN-major layouts share a binary;
// with kTmaScales ((1,128,128), dense or tokens stacked along M) A's scales come MN-major, loaded
// by TMA with each stage; ragged K's (1,1,128) both operands' MN-major scale rows, by bulk copies.
//
// The pieces, by role (gemm/): traits.cuh (template arguments, shared-memory layout), scheduler.cuh
// (tiles and group modes), producer.cuh (TMA loads), scale_staging.cuh (scale warps, MN-major
// transposes), mainloop.cuh (wgmma and promotion), split_k.cuh, tile_epilogue.cuh, kernel.cuh (set-up
// and roles).
//
// Clusters: with kClusterM = 2 the two CTAs of a cluster take vertically adjacent tiles of one
// N-block and each loads half of the shared B tile into both (TMA multicast); with kClusterN = 2
// they take horizontally adjacent tiles of one M-block and share A the same way. With kSplitK = n > 1
// the n CTAs of a cluster take the n K slices of one tile and reduce in shared memory (split_k.cuh).
//
// Grouped GEMMs (kGroupMode, common/groups.cuh) run on the same core: the M modes stack the
// groups' weights in B (rows group * n + ...) and their tokens in A; tiles follow the groups'
// rows, and tiles holding rows of another group are stored row by row. Ragged K walks each
// group's slice of K and adds its fp32 tile into out[group] with a TMA reduce; the batched mode
// (bmm) tiles each batch entry's output and stores it with a 3-D TMA (or reduces, for fp32).
#pragma once
#include "gemm/kernel.cuh"

namespace mategemm {

template <int BLOCK_M, int BLOCK_N, int kNumStages, int kScaleGranN, int kScaleGranK, OperandType kTypeA,
          OperandType kTypeB, OutType kOutType, int kOutSwizzle, int kClusterM, int kClusterN, int kSplitK,
          GroupMode kGroupMode, int kMaxGroups, int kMnMajor, bool kGatherA, bool kTmaScales,
          bool kAllowOverlap = true, bool kBEvictFirst = false, bool kScalesAheadAll = false>
__global__ void __launch_bounds__(gemm_threads<BLOCK_M>(), 1) sm90_fp8_gemm_blockscaled(MATEGEMM_GEMM_PARAMS) {
  static_assert(kScaleGranN == 128 || kScaleGranN == 1, "block scales per 128 or per 1 column of B");
  using Traits = GemmTraits<BLOCK_M, BLOCK_N, kNumStages, kScaleGranN, kTypeA, kTypeB, kOutType, kOutSwizzle,
                            kClusterM, kClusterN, kSplitK, kGroupMode, kMaxGroups, kMnMajor, false, kScaleGranK,
                            kTmaScales, 0, kNoGatedAct, kGatherA, false, kAllowOverlap, false, kBEvictFirst,
                            kScalesAheadAll>;
  gemm_kernel_body<Traits>(MATEGEMM_GEMM_ARGS);
}

}  // namespace mategemm
