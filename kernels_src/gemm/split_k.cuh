// Split-K: every work item of a tile leaves its partial tile in a global workspace; the tile's last
// one to finish sums all partials in split order (deterministic) and goes on to the epilogue. In a
// cluster (kSplitCluster > 1) rank r computes slice r, ranks 1.. store their partials into slots in
// rank 0's shared memory, and rank 0 sums them in the same order: the same bits, without the
// workspace's memory round trips.
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

// Returns true in rank 0, with the whole sum in acc. `tiles_before`: the tiles this CTA reduced
// before (the barriers' phase).
template <class T>
__device__ __forceinline__ bool split_k_reduce_in_cluster(float* acc, const Tile& t, const GemmSmem<T>& smem,
                                                          int tiles_before) {
  constexpr int kSplitBarrier = 1 + T::kNumMathWG;
  constexpr int kMathThreads = T::kNumMathWG * 128;
  constexpr u32 kSlotBytes = T::Layout::kSplitSlotBytes;
  static_assert(kSlotBytes == kMathThreads * T::kAcc * 4, "a slot holds every math thread's accumulators");
  const int tid = threadIdx.x - 128;
  const u32 parity = tiles_before & 1;
  // A thread's accumulators i..i+3 at byte (i / 4 * kMathThreads + tid) * 16 of a slot.
  auto offset = [&](int i) { return static_cast<u32>((i / 4 * kMathThreads + tid) * 16); };
  if (t.split != 0) {
    smem.split_read.wait(parity ^ 1);  // rank 0 has read this CTA's previous partial
    const u32 slot = map_to_cta(smem.split_slots + (t.split - 1) * kSlotBytes, 0);
    const u32 landed = map_to_cta(smem.split_landed.addr, 0);
    #pragma unroll
    for (int i = 0; i < T::kAcc; i += 4) {
      st_async_v4(slot + offset(i), acc[i], acc[i + 1], acc[i + 2], acc[i + 3], landed);
    }
    return false;
  }
  if (tid == 0) smem.split_landed.arrive_expect_tx((T::kSplitCluster - 1) * kSlotBytes);
  smem.split_landed.wait(parity);
  #pragma unroll
  for (int s = 1; s < T::kSplitCluster; ++s) {
    #pragma unroll
    for (int i = 0; i < T::kAcc; i += 4) {
      const uint4 v = ld_shared_v4(smem.split_slots + (s - 1) * kSlotBytes + offset(i));
      acc[i] += __uint_as_float(v.x);
      acc[i + 1] += __uint_as_float(v.y);
      acc[i + 2] += __uint_as_float(v.z);
      acc[i + 3] += __uint_as_float(v.w);
    }
  }
  named_barrier_sync(kSplitBarrier, kMathThreads);  // every slot read
  if (tid > 0 && tid < T::kSplitCluster) smem.split_read.arrive_on(tid);
  return true;
}

}  // namespace mategemm
