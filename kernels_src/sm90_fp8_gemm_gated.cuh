// sm90_fp8_gemm_gated: the MoE layer's first GEMM with its gated activation in the epilogue.
// For the packed token rows of each expert e (per_expert / psum_expert groups):
//   h = A . B[e]^T with B[e] = [gate rows (n) | up rows (n)] of the (1,128,128) recipe,
//   q = act(h[:, :n], h[:, n:]) quantised to FP8 per row and 128 columns (common/gated_act.cuh),
// written as q (rows, n) e4m3 and its scales. A tile of 128 columns multiplies the gate and the up
// rows of those columns (gemm/ with kGatedAct): the activation's inputs never leave the registers.
#pragma once
#include "gemm/kernel.cuh"

namespace mategemm {

template <int BLOCK_M, int kNumStages, GroupMode kGroupMode, int kMaxGroups, bool kTmaScales, int kActivation,
          bool kGatherA>
__global__ void __launch_bounds__(gemm_threads<BLOCK_M>(), 1) sm90_fp8_gemm_gated(
    MATEGEMM_GEMM_PARAMS, float act_alpha, float act_beta, float act_limit, float* __restrict__ act_scales,
    int act_scales_stride_m, int act_scales_stride_k) {
  using Traits = GemmTraits<BLOCK_M, 128, kNumStages, 128, kE4M3, kE4M3, kOutE4M3, 128, 1, 1, false, kGroupMode,
                            kMaxGroups, 0, false, 128, kTmaScales, 0, kActivation, kGatherA>;
  GemmArgs args = MATEGEMM_GEMM_ARGS;
  args.act_alpha = act_alpha;
  args.act_beta = act_beta;
  args.act_limit = act_limit;
  args.act_scales = act_scales;
  args.act_scales_stride_m = act_scales_stride_m;
  args.act_scales_stride_k = act_scales_stride_k;
  gemm_kernel_body<Traits>(args);
}

}  // namespace mategemm
