// sm90_nvfp4_grouped_gemm: token-packed MoE groups times their experts' weights, both NVFP4 (e2m1
// values two per byte along K, e4m3 scales per 16 values in NVIDIA's 128x4 blocked layout):
// c[rows of group g] = expert_scales[e] * A[rows] . B[e]^T with e = expert_ids[g]; groups with
// expert -1 are skipped and their rows of c left as they were.
//
// The GEMM core (gemm/) in its offsets group mode with NVFP4 staging (gemm/nvfp4_staging.cuh): the
// producer thread TMA-loads each 64-value K step's packed tiles and scale chunks, warps 1-3 decode
// them into bf16 tiles (exact: an e2m1 value times an e4m3 scale fits bf16's 8-bit significand), the
// bf16 wgmma accumulate in fp32 over all of K and the scale-at-end epilogue multiplies by the
// expert's scale; tiles holding rows of another group are stored row by row.
#pragma once
#include "gemm/kernel.cuh"

namespace mategemm {

// The scale-at-end epilogue's per-row A scale, read through a zero stride: 1 for every row, so a
// tile is scaled by its expert's scale alone.
__device__ const float kNvfp4UnitRowScale = 1.0f;

// kDecoderWGs: warpgroups of 4 more decoding warps each beside the producer's 3 (1 or 2).
// kDecodedA: tmap_a is A's rows decoded to bf16 (64 values by BLOCK_M rows, 128-byte swizzled);
// tmap_sfa is not read. kDecodedB (with kDecodedA): tmap_b is the groups' weights decoded to bf16 in
// group order (64 values by BLOCK_N rows, 128-byte swizzled; sm90_nvfp4_dequant_b), expert_ids and
// expert_scales are that kernel's group_experts and group_scales, num_experts the groups; tmap_sfb
// is not read and nothing is decoded here.
template <int BLOCK_M, int BLOCK_N, int kNumStages, OutType kOutType, int kOutSwizzle, int kMaxGroups,
          int kDecoderWGs = 0, bool kDecodedA = false, bool kDecodedB = false>
__global__ void __launch_bounds__(gemm_threads<BLOCK_M, kDecoderWGs>(), 1)
    sm90_nvfp4_grouped_gemm(const __grid_constant__ TmaDesc tmap_a, const __grid_constant__ TmaDesc tmap_b,
                            const __grid_constant__ TmaDesc tmap_d, const __grid_constant__ TmaDesc tmap_sfa,
                            const __grid_constant__ TmaDesc tmap_sfb, const float* __restrict__ expert_scales,
                            const int* __restrict__ group_offsets, const int* __restrict__ expert_ids,
                            const u32* __restrict__ group_scale_tiles, const int* __restrict__ active_groups,
                            int num_groups, int num_experts, int m, int n, int k, int group_n,
                            void* __restrict__ out_ptr, int out_ld) {
  using Traits = GemmTraits<BLOCK_M, BLOCK_N, kNumStages, 0, kBF16, kBF16, kOutType, kOutSwizzle, 1, 1, false,
                            kGroupOffsets, kMaxGroups, 0, true, 128, false, kDecoderWGs, kNoGatedAct, false,
                            kDecodedA, true, kDecodedB>;
  // A's rows are boxes of BLOCK_M from each tile's first row; one split; no masked signal.
  const GemmArgs args{&tmap_a, &tmap_b, &tmap_d, &kNvfp4UnitRowScale, 0, 0, expert_scales, 0, 0, m, n, k, group_n,
                      BLOCK_M, 1, nullptr, nullptr, group_offsets, num_groups, 0, 0, 1, out_ptr, out_ld, nullptr, 0,
                      expert_ids, active_groups, group_scale_tiles, num_experts, &tmap_sfa, &tmap_sfb};
  gemm_kernel_body<Traits>(args);
}

}  // namespace mategemm
