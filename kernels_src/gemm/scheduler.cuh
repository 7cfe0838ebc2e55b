// The GEMM's work items: the persistent tile walk (common/scheduler.cuh) with each group mode's
// arithmetic (common/groups.cuh) — which group a tile belongs to, its rows and its K blocks.
// Every role walks the same sequence, each in its own copy.
#pragma once
#include "../common/groups.cuh"
#include "../common/scheduler.cuh"
#include "traits.cuh"

namespace mategemm {

struct Tile {
  int m_block, n_block, split;
  int group;     // the tile's group (0 for a dense GEMM)
  int row0;      // first row of the output (of its group's output for 3-D outputs)
  int a_row0;    // first row of A (and of A's scales)
  int row_end;   // end of the group's rows (m when the rows end with the tensor)
  int kb_begin, kb_end;  // the K blocks to accumulate
  int a_scale_row;  // kGroupOffsets: the tile's first row in A's 128-row scale tiles
};

template <class T>
struct GemmScheduler {
  TileScheduler<T::kClusterM, T::kClusterN> tiles;
  GroupTable table;
  const int* group_info;
  int num_groups, m;
  int num_k_blocks, k_blocks_per_split;
  const int* group_experts;
  const u32* group_scale_tiles;
  int num_experts;
  int pending_group = -1;  // kGroupIds: the second group of the tile just returned

  // The table must be built (and the CTA synchronised) before this runs.
  __device__ __forceinline__ GemmScheduler(const GemmArgs& args, GroupTable table_, int num_k_blocks_,
                                           int k_blocks_per_split_)
      : tiles(num_m_blocks(args, table_), ceil_div(args.n, T::BLOCK_N), args.group_n, args.num_splits),
        table(table_), group_info(args.group_info), num_groups(args.num_groups), m(args.m),
        num_k_blocks(num_k_blocks_), k_blocks_per_split(k_blocks_per_split_), group_experts(args.group_experts),
        group_scale_tiles(args.group_scale_tiles), num_experts(args.num_experts) {}

  // M-blocks of the persistent loop: the dense tiling of m rows; the groups' tiles (segment
  // modes); every group's tiling of its m x n output (ragged K, batched).
  static __device__ __forceinline__ int num_m_blocks(const GemmArgs& args, const GroupTable& table) {
    int blocks = ceil_div(args.m, T::BLOCK_M);
    if constexpr (group_out_3d<T::kGroupMode>()) {
      blocks *= args.num_groups;
    } else if constexpr (group_has_table<T::kGroupMode>()) {
      blocks = args.num_groups > 0 ? table.tile_end[args.num_groups - 1] : 0;
    }
    return blocks;
  }

  // The CTA's rank in its cluster.
  __device__ __forceinline__ u32 rank() const { return tiles.rank; }

  // The next work item of this CTA, skipping tiles with nothing to compute; false when none is left.
  __device__ __forceinline__ bool next(Tile& t) {
    constexpr GroupMode kMode = T::kGroupMode;
    if constexpr (kMode == kGroupIds && T::BLOCK_M > kIdsSegmentRows) {
      if (pending_group >= 0) {  // the same tile again (t unchanged), for its upper half's group
        t.group = pending_group;
        pending_group = -1;
        return true;
      }
    }
    while (tiles.next(t.m_block, t.n_block, t.split)) {
      t.group = 0;
      t.row0 = t.m_block * T::BLOCK_M;
      t.row_end = m;
      t.kb_begin = t.split * k_blocks_per_split;
      t.kb_end = min(num_k_blocks, t.kb_begin + k_blocks_per_split);
      if constexpr (kMode == kGroupIds) {
        t.group = __ldg(group_info + t.row0);
        if constexpr (T::BLOCK_M > kIdsSegmentRows) {
          static_assert(T::BLOCK_M == 2 * kIdsSegmentRows, "a per_token tile spans at most two segments");
          const int upper_row = t.row0 + kIdsSegmentRows;
          const int upper = upper_row < m ? __ldg(group_info + upper_row) : t.group;
          if (upper != t.group && upper >= 0 && upper < num_groups) {
            if (t.group >= 0 && t.group < num_groups) {
              pending_group = upper;  // the epilogue stores each pass's rows of its group only
            } else {
              t.group = upper;
            }
          }
        }
        if (t.group < 0 || t.group >= num_groups) continue;  // padding rows: nothing to compute
      } else if constexpr (kMode == kGroupBatched) {
        const int m_blocks_per_group = ceil_div(m, T::BLOCK_M);
        t.group = t.m_block / m_blocks_per_group;
        t.row0 = (t.m_block - t.group * m_blocks_per_group) * T::BLOCK_M;
      } else if constexpr (kMode == kGroupK) {
        const int m_blocks_per_group = ceil_div(m, T::BLOCK_M);
        t.group = t.m_block / m_blocks_per_group;
        t.row0 = (t.m_block - t.group * m_blocks_per_group) * T::BLOCK_M;
        t.kb_begin = table.row_start[t.group] / T::kBlockKElems;
        t.kb_end = (table.row_start[t.group] + table.rows[t.group]) / T::kBlockKElems;
        if (t.kb_begin == t.kb_end) continue;  // an empty group adds nothing
      } else if constexpr (group_has_table<kMode>()) {
        t.group = find_group<T::kMaxGroups>(table.tile_end, num_groups, t.m_block);
        const int first_tile = t.group == 0 ? 0 : table.tile_end[t.group - 1];
        t.row0 = table.row_start[t.group] + (t.m_block - first_tile) * T::BLOCK_M;
        t.row_end = table.row_start[t.group] + table.rows[t.group];
      }
      if constexpr (kMode == kGroupOffsets) {
        // From here on the tile's group is its expert (B's rows, the epilogue's scale); a group
        // whose expert is -1 (or out of range) is skipped, its rows of the output untouched.
        const int segment = t.group;
        t.group = __ldg(group_experts + segment);
        if (t.group < 0 || t.group >= num_experts) continue;
        // A's scales: each group's from the tile given, else from a new 128-row tile after the last group's
        const int scale_tile = group_scale_tiles != nullptr ? static_cast<int>(__ldg(group_scale_tiles + segment))
                                                            : table.scale_tile_start[segment];
        t.a_scale_row = scale_tile * 128 + (t.row0 - table.row_start[segment]);
      }
      t.a_row0 = (kMode == kGroupBatched ? t.group * m : 0) + t.row0;
      return true;
    }
    return false;
  }
};

}  // namespace mategemm
