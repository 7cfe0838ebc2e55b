// Persistent tile scheduler: CTA b takes tiles b, b + grid, b + 2 grid, ...
// Tiles are walked in groups of `group_n` N-blocks; inside a group the N-block varies fastest,
// so CTAs running at the same time share A rows and a narrow band of B columns in L2.
#pragma once
#include "ptx.cuh"

namespace mategemm {

struct TileScheduler {
  int num_m_blocks;
  int num_n_blocks;
  int group_n;
  int next_tile;

  __device__ __forceinline__ TileScheduler(int m, int n, int block_m, int block_n, int group_n_)
      : num_m_blocks(ceil_div(m, block_m)), num_n_blocks(ceil_div(n, block_n)), group_n(group_n_),
        next_tile(blockIdx.x) {}

  __device__ __forceinline__ bool next(int& m_block, int& n_block) {
    const int tile = next_tile;
    if (tile >= num_m_blocks * num_n_blocks) return false;
    next_tile += gridDim.x;
    const int tiles_per_group = num_m_blocks * group_n;
    const int group = tile / tiles_per_group;
    const int first_n = group * group_n;
    const int width = min(group_n, num_n_blocks - first_n);
    const int local = tile - group * tiles_per_group;
    m_block = local / width;
    n_block = first_n + local - m_block * width;
    return true;
  }
};

}  // namespace mategemm
