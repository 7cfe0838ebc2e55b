// The GEMM's work items: the persistent tile walk (common/scheduler.cuh) with each group mode's
// arithmetic (common/groups.cuh) — which group a tile belongs to, its rows and its K blocks.
// Every role walks the same sequence, each in its own copy.
#pragma once
#include "../common/groups.cuh"
#include "../common/scheduler.cuh"
#include "traits.cuh"

namespace mategemm {

// Items of no K blocks (kb_begin == kb_end): in the grouped M modes and ragged K, a tile with
// nothing to compute (padding rows, rows past a group's count, tiles past the last group's, an
// empty group) stays in the walk, and no role loads or computes for it. NOTES: the walk, and with
// it the math warps' ring position, then depends on no data; with the item's group and K range read
// through one warp_value per item, the compiler keeps the main loop's wgmma descriptors in uniform
// registers (SASS from the first to the last wgmma at 256x128: per_token, masked, per_expert
// 2040 -> 1530 instructions, dense 1519; ragged K 128x128 829 -> 754). Skipped tiles put them in
// vector registers with a move before every wgmma; so did per_token with a warp_value for each half
// of its tile (hence one for both).
struct Tile {
  int m_block, n_block, split;
  int group;     // the tile's group (0 for a dense GEMM)
  int row0;      // first row of the output (of its group's output for 3-D outputs)
  int a_row0;    // first row of A (and of A's scales)
  int row_end;   // end of the group's rows (m when the rows end with the tensor)
  int kb_begin, kb_end;  // the K blocks to accumulate
  int a_scale_row;  // kGroupOffsets: the tile's first row in A's 128-row scale tiles
  int next_group;  // a 256-row per_token tile over two segments: the upper one's group (else -1)
};

// A value all lanes of a warp hold, moved into a uniform register (REDUX) so that the compiler
// knows it warp-uniform; a single thread (the producer's) keeps it as it is.
template <bool kWarp>
__device__ __forceinline__ int warp_value(int x) {
  if constexpr (kWarp) {
    return __reduce_max_sync(0xffffffffu, x);
  } else {
    return x;
  }
}

template <class T>
struct GemmScheduler {
  // Whether the walk depends on no data (items of no K blocks instead of skipped tiles).
  static constexpr bool kStaticWalk = T::kGroupMode != kGroupNone && T::kGroupMode != kGroupBatched &&
                                      T::kGroupMode != kGroupOffsets;
  // kGroupIds: a 256-row tile may span two segments; it then runs twice (pass()), each pass
  // computing the whole tile with one segment's weights.
  static constexpr bool kTwoPasses = T::kGroupMode == kGroupIds && T::BLOCK_M > kIdsSegmentRows;
  static_assert(!kTwoPasses || T::BLOCK_M == 2 * kIdsSegmentRows, "a per_token tile spans at most two segments");

  TileScheduler<T::kClusterM, T::kClusterN, T::kSplitCluster> tiles;
  GroupTable table;
  const int* group_info;
  int num_groups, m, group_stride;
  int num_k_blocks, k_blocks_per_split;
  const int* group_experts;
  const u32* group_scale_tiles;
  int num_experts;

  // The table must be built (and the CTA synchronised) before this runs.
  __device__ __forceinline__ GemmScheduler(const GemmArgs& args, GroupTable table_, int num_k_blocks_,
                                           int k_blocks_per_split_)
      : tiles(num_m_blocks(args, table_), ceil_div(args.n, T::BLOCK_N), args.group_n, args.num_splits),
        table(table_), group_info(args.group_info), num_groups(args.num_groups), m(args.m),
        group_stride(args.group_stride), num_k_blocks(num_k_blocks_), k_blocks_per_split(k_blocks_per_split_),
        group_experts(args.group_experts), group_scale_tiles(args.group_scale_tiles),
        num_experts(args.num_experts) {}

  // M-blocks of the persistent loop, from the arguments (but NVFP4's, from the segment table): the
  // dense tiling of m rows (per_token: twice, kTwoPasses); masked: each group's tiles of its stride;
  // the packed modes: at most one partial tile more per group with rows; every group's tiling of its
  // m x n output (ragged K, batched).
  static __device__ __forceinline__ int num_m_blocks(const GemmArgs& args, const GroupTable& table) {
    constexpr GroupMode kMode = T::kGroupMode;
    const int blocks = ceil_div(args.m, T::BLOCK_M);
    if constexpr (group_out_3d<kMode>()) return blocks * args.num_groups;
    if constexpr (kMode == kGroupMasked) return args.num_groups * ceil_div(args.group_stride, T::BLOCK_M);
    if constexpr (kMode == kGroupCounts || kMode == kGroupPsum) return blocks + min(args.num_groups, args.m);
    if constexpr (group_has_table<kMode>()) return args.num_groups > 0 ? table.tile_end[args.num_groups - 1] : 0;
    return blocks;
  }

  // The CTA's rank in its cluster.
  __device__ __forceinline__ u32 rank() const { return tiles.rank; }

  // The next work item of this CTA; false when none is left. kWarp: every lane of a warp calls it.
  template <bool kWarp = false>
  __device__ __forceinline__ bool next(Tile& t) {
    constexpr GroupMode kMode = T::kGroupMode;
    while (tiles.next(t.m_block, t.n_block, t.split)) {
      t.group = 0;
      t.next_group = -1;
      t.row0 = t.m_block * T::BLOCK_M;
      t.row_end = m;
      t.kb_begin = t.split * k_blocks_per_split;
      t.kb_end = min(num_k_blocks, t.kb_begin + k_blocks_per_split);
      bool computes = true;
      if constexpr (kMode == kGroupIds) {
        // Both halves' groups through one warp_value, 16 bits each (the host takes at most 1024
        // groups; 0xFFFF: none of this GEMM's).
        auto id16 = [&](int row) -> u32 {
          const int id = __ldg(group_info + min(row, m - 1));
          return row < m && id >= 0 && id < num_groups ? id : 0xFFFFu;
        };
        const u32 both = id16(t.row0) << 16 | (kTwoPasses ? id16(t.row0 + kIdsSegmentRows) : 0xFFFFu);
        const u32 ids = static_cast<u32>(warp_value<kWarp>(static_cast<int>(both)));
        const int lower = static_cast<int>(ids >> 16), upper = static_cast<int>(ids & 0xFFFFu);
        const bool lower_ok = lower != 0xFFFF;
        const bool upper_ok = upper != 0xFFFF && upper != lower;
        t.group = lower;
        computes = lower_ok;
        if constexpr (kTwoPasses) {
          // the lower half's segment (else the upper's), then the upper half's where both are
          // valid and differ. The epilogue stores each pass's rows of its group only.
          if (!lower_ok && upper_ok) t.group = upper;
          computes = lower_ok || upper_ok;
          if (lower_ok && upper_ok) t.next_group = upper;
        }
      } else if constexpr (kMode == kGroupBatched) {
        const int m_blocks_per_group = ceil_div(m, T::BLOCK_M);
        t.group = t.m_block / m_blocks_per_group;
        t.row0 = (t.m_block - t.group * m_blocks_per_group) * T::BLOCK_M;
      } else if constexpr (kMode == kGroupK) {
        const int m_blocks_per_group = ceil_div(m, T::BLOCK_M);
        t.group = t.m_block / m_blocks_per_group;
        t.row0 = (t.m_block - t.group * m_blocks_per_group) * T::BLOCK_M;
        const int k_row0 = warp_value<kWarp>(table.row_start[t.group]);
        t.kb_begin = k_row0 / T::kBlockKElems;
        t.kb_end = (k_row0 + warp_value<kWarp>(table.rows[t.group])) / T::kBlockKElems;  // an empty group: none
      } else if constexpr (kMode == kGroupMasked) {
        const int tiles_per_group = ceil_div(group_stride, T::BLOCK_M);
        t.group = t.m_block / tiles_per_group;
        const int first_row = t.group * group_stride;
        t.row0 = first_row + (t.m_block - t.group * tiles_per_group) * T::BLOCK_M;
        t.row_end = first_row + warp_value<kWarp>(table.rows[t.group]);
        computes = t.row0 < t.row_end;  // rows past the group's count
      } else if constexpr (kMode == kGroupCounts || kMode == kGroupPsum) {
        // the group of the tile, or 0xFFFF past the last group's tiles, through one REDUX
        const int tiles_used = num_groups > 0 ? table.tile_end[num_groups - 1] : 0;
        const int g = warp_value<kWarp>(t.m_block < tiles_used ? find_group<T::kMaxGroups>(table.tile_end, num_groups,
                                                                                          t.m_block)
                                                               : 0xFFFF);
        computes = g != 0xFFFF;
        t.group = computes ? g : 0;
        const int first_tile = t.group == 0 ? 0 : table.tile_end[t.group - 1];
        t.row0 = table.row_start[t.group] + (t.m_block - first_tile) * T::BLOCK_M;
        t.row_end = table.row_start[t.group] + table.rows[t.group];
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
      if (!computes) {
        t.group = 0;
        t.kb_end = t.kb_begin;
      }
      t.a_row0 = (kMode == kGroupBatched ? t.group * m : 0) + t.row0;
      return true;
    }
    return false;
  }

  // Passes over each tile the walk returns: a 256-row per_token tile over two segments runs once
  // for each. pass(t, 1) turns t into the second pass (the upper segment's group), or says none.
  static constexpr int kPasses = kTwoPasses ? 2 : 1;
  __device__ __forceinline__ bool pass(Tile& t, int p) const {
    if (p == 0) return true;
    if (t.next_group < 0) return false;
    t.group = t.next_group;
    return true;
  }
};

}  // namespace mategemm
