// Persistent tile scheduler: cluster c takes tile units c, c + clusters, c + 2 clusters, ...
// A unit is kClusterM x kClusterN tiles (one per CTA of a cluster; at most one of the two is 2):
// the CTAs of a cluster share one N-block (kClusterM = 2, they multicast its B tile) or one
// M-block (kClusterN = 2, A tile); CTA rank r of the cluster takes the unit's r-th tile.
// Units are walked in groups of `group_n` N-units; inside a group the N-unit varies fastest,
// so CTAs running at the same time share A rows and a narrow band of B columns in L2.
// Split-K (num_splits > 1, no multicast cluster): each tile is `num_splits` consecutive work items,
// one per slice of the K blocks; with kClusterK = num_splits a cluster takes a tile, rank r its
// slice r.
#pragma once
#include "ptx.cuh"

namespace mategemm {

template <int kClusterM, int kClusterN, int kClusterK = 1>
struct TileScheduler {
  static constexpr int kCluster = kClusterM * kClusterN * kClusterK;
  int num_m_units;  // the host launches clusters only where the blocks divide into units
  int num_n_units;
  int group_n;
  int num_splits;
  int next_item;
  int rank;

  __device__ __forceinline__ TileScheduler(int num_m_blocks, int num_n_blocks, int group_n_, int num_splits_)
      : num_m_units(num_m_blocks / kClusterM), num_n_units(num_n_blocks / kClusterN),
        group_n(group_n_), num_splits(num_splits_), next_item(blockIdx.x / kCluster),
        rank(kCluster == 1 ? 0 : static_cast<int>(cluster_cta_rank())) {}

  // The next tile and K slice of this CTA; false when there is none.
  __device__ __forceinline__ bool next(int& m_block, int& n_block, int& split) {
    const int item = next_item;
    const int items_per_unit = kClusterK > 1 ? 1 : num_splits;
    if (item >= num_m_units * num_n_units * items_per_unit) return false;
    next_item += gridDim.x / kCluster;
    const int unit = item / items_per_unit;
    split = kClusterK > 1 ? rank : item - unit * items_per_unit;
    const int units_per_group = num_m_units * group_n;
    const int group = unit / units_per_group;
    const int first_n = group * group_n;
    const int width = min(group_n, num_n_units - first_n);
    const int local = unit - group * units_per_group;
    const int m_unit = local / width;
    const int n_unit = first_n + local - m_unit * width;
    m_block = m_unit * kClusterM + (kClusterM > 1 ? rank : 0);
    n_block = n_unit * kClusterN + (kClusterN > 1 ? rank : 0);
    return true;
  }
};

}  // namespace mategemm
