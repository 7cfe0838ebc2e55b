// Grouped (Mixture-of-Experts) GEMMs: how a persistent tile index maps to a group's rows.
//
// Modes (kernel template argument kGroupMode):
//   kGroupNone     dense GEMM.
//   kGroupIds      per_token: one int32 group id per row of A, -1 on padding rows; segments
//                  start at multiples of kIdsSegmentRows. The dense M tiling: a tile belongs to
//                  its first row's group (none if that is invalid); a 256-row tile is two items,
//                  one for each half's group where they differ.
//   kGroupCounts   per_expert: counts per group, rows packed in group order.
//   kGroupPsum     psum_expert: inclusive prefix sums of those counts.
//   kGroupMasked   masked: group g owns rows [g * stride, g * stride + count_g), count_g <= stride.
//   kGroupK        ragged K: counts of K rows per group (multiples of a stage's K: 128 FP8, 64
//                  16-bit); every group computes the whole (m, n) output of its own, over its slice of K.
//   kGroupBatched  a batch of equal GEMMs: group g's A rows g * m ..., B rows g * n ..., out[g].
//   kGroupOffsets  token-packed groups by row offsets: group g owns rows [offsets[g], offsets[g + 1]);
//                  the first `*active` groups count (a device count; all when null), and a group's
//                  weights are those of its expert id (-1: the group is skipped).
// The segment modes tile each group's rows from the group's first row, so a tile never spans
// two groups; a table of the segments is built in shared memory at kernel start.
//
// Robustness: the group info lives on the GPU and is never checked on the host. Counts are
// clamped to [0, rows], prefix sums made monotone and clamped, ids out of range skip the tile:
// whatever the info holds, no tile reads or writes outside the tensors.
#pragma once
#include "ptx.cuh"

namespace mategemm {

enum GroupMode : int {
  kGroupNone = 0, kGroupIds = 1, kGroupCounts = 2, kGroupPsum = 3, kGroupMasked = 4, kGroupK = 5, kGroupBatched = 6,
  kGroupOffsets = 7
};

// kGroupIds: the segment alignment the tiling relies on (the host's default alignment_m).
constexpr int kIdsSegmentRows = 128;

// Modes whose output is 3-D (group, m, n), stored per group by a 3-D TMA (which clips each
// group's M and N tails).
template <int kGroupMode>
__host__ __device__ constexpr bool group_out_3d() { return kGroupMode == kGroupK || kGroupMode == kGroupBatched; }

template <int kGroupMode>
__host__ __device__ constexpr bool group_has_table() {
  return kGroupMode == kGroupCounts || kGroupMode == kGroupPsum || kGroupMode == kGroupMasked ||
         kGroupMode == kGroupK || kGroupMode == kGroupOffsets;
}

// Modes whose tiles may hold rows of other groups (or padding): stored row by row.
template <int kGroupMode>
__host__ __device__ constexpr bool group_rows_checked() {
  return kGroupMode == kGroupIds || kGroupMode == kGroupCounts || kGroupMode == kGroupPsum ||
         kGroupMode == kGroupMasked || kGroupMode == kGroupOffsets;
}

// Shared-memory table of the groups' segments: first row, row count, and the running total of
// BLOCK_M tiles up to and including the group (row units are rows of K for kGroupK).
// kGroupOffsets also counts 128-row tiles before each group (where its NVFP4 scales start when
// every group's scales begin a new 128-row tile).
struct GroupTable {
  int* row_start;
  int* rows;
  int* tile_end;
  int* scale_tile_start;
};

// Fills the table (one warp; the caller synchronises the CTA before anyone reads it).
// `limit`: rows of A (M modes) or of K (kGroupK); `stride`: kGroupMasked's rows per group;
// `active`: kGroupOffsets' device count of the groups that count (null: all num_groups).
template <int kGroupMode>
__device__ void build_group_table(GroupTable table, const int* __restrict__ info, int num_groups, int limit,
                                  int stride, int block_m, const int* __restrict__ active = nullptr) {
  const int lane = threadIdx.x % 32;
  constexpr bool kOffsets = kGroupMode == kGroupOffsets;
  // Offsets: info[0] is where the first group starts, group g ends at info[g + 1]; groups past the
  // active count get no rows.
  const int counted = kOffsets && active != nullptr ? min(max(__ldg(active), 0), num_groups) : num_groups;
  int row_carry = kOffsets ? min(max(__ldg(info), 0), limit) : 0;  // rows before this chunk of 32 groups
  int tile_carry = 0;  // tiles before it
  int scale_tile_carry = 0;  // kGroupOffsets: 128-row tiles before it
  for (int base = 0; base < num_groups; base += 32) {
    const int g = base + lane;
    const int v = g < counted ? __ldg(info + g + (kOffsets ? 1 : 0)) : 0;
    int start, count;
    if constexpr (kGroupMode == kGroupMasked) {
      start = g * stride;
      count = g < num_groups ? min(max(v, 0), stride) : 0;
    } else if constexpr (kGroupMode == kGroupPsum || kOffsets) {
      // Ends made monotone (a running max) and clamped to the rows there are.
      int end = g < num_groups ? min(max(v, 0), limit) : 0;
      #pragma unroll
      for (int offset = 1; offset < 32; offset *= 2) {
        const int other = __shfl_up_sync(0xffffffffu, end, offset);
        if (lane >= offset) end = max(end, other);
      }
      end = max(end, row_carry);
      const int before = __shfl_up_sync(0xffffffffu, end, 1);
      start = lane == 0 ? row_carry : before;
      count = g < num_groups ? end - start : 0;
    } else {  // kGroupCounts, kGroupK: an exclusive saturating scan of the counts
      const int c = g < num_groups ? min(max(v, 0), limit) : 0;
      int inclusive = c;
      #pragma unroll
      for (int offset = 1; offset < 32; offset *= 2) {
        const int other = __shfl_up_sync(0xffffffffu, inclusive, offset);
        // A saturating sum: associative for values in [0, limit], limit < 2^30 (checked on the host).
        if (lane >= offset) inclusive = min(inclusive + other, limit);
      }
      const int before = __shfl_up_sync(0xffffffffu, inclusive, 1);  // every lane takes part
      const int exclusive = lane == 0 ? 0 : before;
      start = min(row_carry + exclusive, limit);
      count = min(row_carry + inclusive, limit) - start;
    }
    const int tiles = ceil_div(count, block_m);
    int tiles_inclusive = tiles;
    #pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const int other = __shfl_up_sync(0xffffffffu, tiles_inclusive, offset);
      if (lane >= offset) tiles_inclusive += other;
    }
    if (g < num_groups) {
      table.row_start[g] = start;
      table.rows[g] = count;
      table.tile_end[g] = tile_carry + tiles_inclusive;
    }
    if constexpr (kOffsets) {
      const int scale_tiles = ceil_div(count, 128);
      int scale_tiles_inclusive = scale_tiles;
      #pragma unroll
      for (int offset = 1; offset < 32; offset *= 2) {
        const int other = __shfl_up_sync(0xffffffffu, scale_tiles_inclusive, offset);
        if (lane >= offset) scale_tiles_inclusive += other;
      }
      if (g < num_groups) table.scale_tile_start[g] = scale_tile_carry + scale_tiles_inclusive - scale_tiles;
      scale_tile_carry += __shfl_sync(0xffffffffu, scale_tiles_inclusive, 31);
    }
    row_carry = __shfl_sync(0xffffffffu, start + count, 31);
    tile_carry += __shfl_sync(0xffffffffu, tiles_inclusive, 31);
  }
}

// The group whose tiles include `tile` (< the table's total): a branchless binary search over
// the non-decreasing tile_end, kMaxGroups a power of two >= num_groups.
template <int kMaxGroups>
__device__ __forceinline__ int find_group(const int* tile_end, int num_groups, int tile) {
  int g = 0;
  #pragma unroll
  for (int step = kMaxGroups / 2; step > 0; step /= 2) {
    const int probe = g + step - 1;
    if (probe < num_groups && tile_end[probe] <= tile) g += step;
  }
  return g;
}

}  // namespace mategemm
