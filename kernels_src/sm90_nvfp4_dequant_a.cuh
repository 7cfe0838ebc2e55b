// sm90_nvfp4_dequant_a: the token rows of a grouped NVFP4 GEMM (e2m1 values two per byte, low nibble
// first; e4m3 scales per 16 values in NVIDIA's 128x4 blocked layout, each group's from its own
// 128-row scale tiles) decoded once to bf16 (exact), for the GEMM at many rows per group to load by
// TMA instead of decoding them again for every N tile. Rows outside the groups are not written.
// kStreamOrder: each 256 values of K in the order sm90_nvfp4_stream_gemm's B tile holds them
// (decode_e2m1_pairs' values, x kE2m1PairScale), for that kernel's group rows.
#pragma once
#include "gemm/nvfp4_staging.cuh"

namespace mategemm {

constexpr int kDequantThreads = 256;

// 16 values (8 packed bytes) times their e4m3 scale, as 32 bytes of bf16 at `dst`.
__device__ __forceinline__ void store_decoded_e2m1x16(uint2 packed, u32 scale, u8* dst) {
  const E2m1Table table = e2m1_table(scale);
  u32 lo_words[4], hi_words[4];
  decode_e2m1x8(packed.x, table, lo_words);
  decode_e2m1x8(packed.y, table, hi_words);
  st_global_v4(dst, make_uint4(lo_words[0], lo_words[1], lo_words[2], lo_words[3]));
  st_global_v4(dst + 16, make_uint4(hi_words[0], hi_words[1], hi_words[2], hi_words[3]));
}

// One thread per 16 values (8 packed bytes, one scale): 32 bytes of bf16 out. `a_ld`: bytes between
// A's rows; `group_scale_tiles` null: each group's scales from a new 128-row tile after the last's.
// In stream order a thread takes word w % 8 of the four 32-byte spans of a row's 128-byte stage
// (w / 8), the stream kernel's decode unit: 64 contiguous bytes out, B-order chunks 4w .. 4w + 3.
template <int kMaxGroups, bool kStreamOrder = false>
__global__ void __launch_bounds__(kDequantThreads) sm90_nvfp4_dequant_a(
    const u8* __restrict__ a, long long a_ld, const u8* __restrict__ a_scales, const int* __restrict__ group_offsets,
    const u32* __restrict__ group_scale_tiles, const int* __restrict__ active, int num_groups, int m, int k,
    void* __restrict__ out) {
  __shared__ int group_ints[4 * kMaxGroups];
  const GroupTable groups{group_ints, group_ints + kMaxGroups, group_ints + 2 * kMaxGroups,
                          group_ints + 3 * kMaxGroups};
  if (threadIdx.x < 32) build_group_table<kGroupOffsets>(groups, group_offsets, num_groups, m, 0, 128, active);
  __syncthreads();
  const int blocks = k / 16;  // 16-value blocks per row (k is a multiple of 32)
  const long long k_chunks = ceil_div(k, 64);
  // stream order: rows of whole 256-value stages (zeros past k), 8 items a stage
  const int row_items = kStreamOrder ? ceil_div(k, 256) * 8 : blocks;
  const long long out_ld = kStreamOrder ? ceil_div(k, 256) * 256 : k;
  const long long items = static_cast<long long>(m) * row_items;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < items;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int row = static_cast<int>(i / row_items), j = static_cast<int>(i % row_items);
    // the row's group: the last whose rows start at or before it (empty groups share a start with
    // the next), if its rows reach it
    int lo = 0, hi = num_groups - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (groups.row_start[mid] <= row) lo = mid; else hi = mid - 1;
    }
    const int in_group = row - groups.row_start[lo];
    if (in_group < 0 || in_group >= groups.rows[lo]) continue;
    const int scale_tile = group_scale_tiles != nullptr ? static_cast<int>(__ldg(group_scale_tiles + lo))
                                                        : groups.scale_tile_start[lo];
    const int scale_row = scale_tile * 128 + in_group;
    const int r = scale_row % 128;
    const u8* row_scales = a_scales + (scale_row / 128) * k_chunks * 512 + (r % 32) * 16 + (r / 32) * 4;
    if constexpr (kStreamOrder) {
      // item j: word w = j % 8 of the spans of stage j / 8; span q's 16-value block 16 * (j / 8) + 4q + w / 2
      const int stage = j / 8, w = j % 8;
      u32 words[4][4];  // [span q][nibble pair c]
      #pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int block = 16 * stage + 4 * q + w / 2;
        if (block < blocks) {  // the last stage may hold fewer than 256 values
          const u32 word = __ldg(reinterpret_cast<const u32*>(a + row * a_ld + 128 * stage + 32 * q + 4 * w));
          decode_e2m1_pairs(word, e2m1_pair_factor(__ldg(row_scales + (block / 4) * 512 + block % 4)), words[q]);
        } else {
          words[q][0] = words[q][1] = words[q][2] = words[q][3] = 0;
        }
      }
      u8* dst = static_cast<u8*>(out) + (row * out_ld + 256 * stage + 32 * w) * 2;
      #pragma unroll
      for (int c = 0; c < 4; ++c) {
        st_global_v4(dst + 16 * c, make_uint4(words[0][c], words[1][c], words[2][c], words[3][c]));
      }
      continue;
    }
    store_decoded_e2m1x16(__ldg(reinterpret_cast<const uint2*>(a + row * a_ld + j * 8)),
                          __ldg(row_scales + (j / 4) * 512 + j % 4),
                          static_cast<u8*>(out) + (row * out_ld + j * 16) * 2);
  }
}

}  // namespace mategemm
