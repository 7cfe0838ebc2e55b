// Split-K: every work item of a tile leaves its partial tile in a global workspace; the tile's last
// one to finish sums all partials in split order (deterministic) and goes on to the epilogue.
#pragma once
#include "scheduler.cuh"

namespace mategemm {

// Returns true in the work item that finishes the tile, with the whole sum in acc.
template <class T>
__device__ __forceinline__ bool split_k_reduce(float* acc, const Tile& t, const GemmArgs& args, u32 split_flag) {
  constexpr int kSplitBarrier = 1 + T::kNumMathWG;  // after the epilogue's per-warpgroup barriers
  constexpr int kMathThreads = T::kNumMathWG * 128;
  constexpr int kTileFloats = T::BLOCK_M * T::BLOCK_N;
  constexpr int kAccFloats = T::kWaves * T::kAcc;
  const int tid = threadIdx.x - 128;
  const int tile = t.m_block * ceil_div(args.n, T::BLOCK_N) + t.n_block;
  float* partials = args.split_workspace + static_cast<i64>(tile) * args.num_splits * kTileFloats;
  #pragma unroll
  for (int i = 0; i < kAccFloats; ++i) partials[t.split * kTileFloats + i * kMathThreads + tid] = acc[i];
  __threadfence();  // the partial is visible GPU-wide before the counter says so
  named_barrier_sync(kSplitBarrier, kMathThreads);
  if (tid == 0) {
    const int done_before = atomicAdd(args.split_counters + tile, 1);
    st_shared_u32(split_flag, done_before == args.num_splits - 1 ? 1u : 0u);
  }
  named_barrier_sync(kSplitBarrier, kMathThreads);
  if (ld_shared_u32(split_flag) == 0) return false;  // another work item of this tile finishes it
  __threadfence();
  // Sum the partials in split order (deterministic), this item's own from its registers; the loads
  // of kInFlight slices at a time are in flight together: about (num_splits - 1) / kInFlight memory
  // latencies. NOTES: 2 at a time only for 64-column tiles and narrower (four copies of the tile's
  // accumulators in registers).
  constexpr int kInFlight = kAccFloats <= 32 ? 2 : 1;
  float own[kAccFloats];
  #pragma unroll
  for (int i = 0; i < kAccFloats; ++i) {
    own[i] = acc[i];
    acc[i] = 0.0f;
  }
  for (int s0 = 0; s0 < args.num_splits; s0 += kInFlight) {
    float slices[kInFlight][kAccFloats];
    #pragma unroll
    for (int j = 0; j < kInFlight; ++j) {
      const int s = s0 + j;
      if (s < args.num_splits && s != t.split) {
        #pragma unroll
        for (int i = 0; i < kAccFloats; ++i) slices[j][i] = __ldcg(partials + s * kTileFloats + i * kMathThreads + tid);
      }
    }
    #pragma unroll
    for (int j = 0; j < kInFlight; ++j) {
      const int s = s0 + j;
      if (s < args.num_splits) {
        #pragma unroll
        for (int i = 0; i < kAccFloats; ++i) acc[i] += s == t.split ? own[i] : slices[j][i];
      }
    }
  }
  if (tid == 0) args.split_counters[tile] = 0;  // ready for the next launch
  return true;
}

}  // namespace mategemm
