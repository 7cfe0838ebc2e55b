// sm90_nvfp4_dequant_b: the weights of a grouped NVFP4 GEMM's groups decoded once to bf16 (exact),
// in group order, for the GEMM at many rows per group to load by TMA instead of decoding them again
// for every M tile: rows g * n .. g * n + n - 1 of `out` hold expert expert_ids[g]'s (n, k) weights
// (e2m1 values two per byte, low nibble first; e4m3 scales per 16 values in NVIDIA's 128x4 blocked
// layout, each expert's from its own ceil(n / 128) row tiles). The GEMM then takes group g's weights
// and scale from `group_experts` (g, or -1: skipped) and `group_scales` (expert_scales[expert_ids[g]]),
// both written here. Groups past the active count, or with an expert out of range, are not decoded.
#pragma once
#include "sm90_nvfp4_dequant_a.cuh"

namespace mategemm {

// One thread per 16 values (8 packed bytes, one scale): 32 bytes of bf16 out. `b_expert_ld` and
// `b_row_ld`: bytes between experts and between rows of `b`. `active` null: all num_groups count.
__global__ void __launch_bounds__(kDequantThreads) sm90_nvfp4_dequant_b(
    const u8* __restrict__ b, long long b_expert_ld, long long b_row_ld, const u8* __restrict__ b_scales,
    const int* __restrict__ expert_ids, const float* __restrict__ expert_scales, const int* __restrict__ active,
    int num_groups, int num_experts, int n, int k, void* __restrict__ out, int* __restrict__ group_experts,
    float* __restrict__ group_scales) {
  const int counted = active != nullptr ? min(max(__ldg(active), 0), num_groups) : num_groups;
  const long long first = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  const long long step = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long g = first; g < num_groups; g += step) {
    const int e = __ldg(expert_ids + g);
    const bool used = g < counted && e >= 0 && e < num_experts;
    group_experts[g] = used ? static_cast<int>(g) : -1;
    group_scales[g] = used ? __ldg(expert_scales + e) : 0.0f;
  }
  const int blocks = k / 16;  // 16-value blocks per row (k is a multiple of 32)
  const long long k_chunks = ceil_div(k, 64);
  const int n_tiles = ceil_div(n, 128);
  const long long items = static_cast<long long>(counted) * n * blocks;
  for (long long i = first; i < items; i += step) {
    const long long row = i / blocks;
    const int j = static_cast<int>(i % blocks);
    const int g = static_cast<int>(row / n), r = static_cast<int>(row % n);
    const int e = __ldg(expert_ids + g);
    if (e < 0 || e >= num_experts) continue;
    const int rr = r % 128;
    const u8* row_scales = b_scales + (static_cast<long long>(e) * n_tiles + r / 128) * k_chunks * 512 +
                           (rr % 32) * 16 + (rr / 32) * 4;
    store_decoded_e2m1x16(__ldg(reinterpret_cast<const uint2*>(b + e * b_expert_ld + r * b_row_ld + j * 8)),
                          __ldg(row_scales + (j / 4) * 512 + j % 4), static_cast<u8*>(out) + (row * k + j * 16) * 2);
  }
}

}  // namespace mategemm
