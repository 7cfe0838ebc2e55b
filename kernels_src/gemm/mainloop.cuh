// The math warpgroups' main loops, one per recipe family. Each warpgroup owns BLOCK_M / kNumMathWG
// rows of the tile in waves of 64 and issues 4 wgmma (32 bytes of K each) per stage and wave.
//   promoted (block scales, kScaleGranN 128 or 1): per 128-K block into a scratch accumulator,
//     then added into the main one with the block's scales on the CUDA cores;
//   scale at end (per-row A / per-tensor B scales, or 16-bit operands): the wgmma accumulate over
//     all of K and the scales are applied once.
#pragma once
#include "../common/pipeline.cuh"
#include "../common/wgmma.cuh"
#include "scheduler.cuh"

namespace mategemm {

// The math threads' side of the ring: wait for a full stage, hand it back, address its tiles.
template <class T>
struct ConsumerStages {
  BarrierRing full, empty;
  PipelineState<T::kNumStages> pipe;
  u64 desc_a0, desc_b0;  // wgmma descriptors of stage 0, tile row 0
  u32 peer_cta;
  int lane;

  // Waits until the next stage is full; returns it.
  __device__ __forceinline__ int wait() {
    const int stage = pipe.stage;
    wait_in_turn(stage);
    pipe.advance();
    return stage;
  }

  // Waits until `stage` is full in the ring's current turn, without moving the ring position (a
  // whole turn unrolled: the stage is a compile-time constant; the caller flips the phase after it).
  __device__ __forceinline__ void wait_in_turn(int stage) const {
    full[stage].wait(pipe.phase);
    if constexpr (T::kGatherA) fence_proxy_async_smem();  // A's rows came by cp.async (generic proxy)
  }

  // At the start of an unrolled turn: an empty asm redefines stage 0's descriptors, so that ptxas
  // derives each stage's from them inside the turn. NOTES: without it, ptxas hoisted every stage's
  // descriptor sums out of the loop and the 128x192 kernel spilled (48 local loads and stores).
  __device__ __forceinline__ void refresh_descriptors() { asm volatile("" : "+l"(desc_a0), "+l"(desc_b0)); }

  // Hands a stage back once this thread's reads of it are done (its wgmma completed).
  __device__ __forceinline__ void release(int stage) const {
    empty[stage].arrive();
    if constexpr (T::kCluster > 1) {
      if (lane == 0) empty[stage].arrive_on(peer_cta);
    }
  }

  // The descriptors' address field is (address >> 4): stages and rows are constant steps.
  __device__ __forceinline__ u64 desc_a(int stage, int row0) const {
    return desc_a0 + (stage * T::Layout::kABytes + row0 * kBlockK) / 16;
  }
  __device__ __forceinline__ u64 desc_b(int stage) const { return desc_b0 + stage * (T::Layout::kBBytes / 16); }
};

// 4 wgmma over one stage's 128 bytes of K into acc (accumulating, or overwriting first if !accumulate).
template <class T>
__device__ __forceinline__ void mma_stage(float* acc, u64 desc_a, u64 desc_b, bool accumulate) {
  #pragma unroll
  for (int kk = 0; kk < kBlockK / 32; ++kk) {
    // Advancing the start address by 32 B walks K inside the 128-byte swizzled row.
    Wgmma<T::BLOCK_N>::template mma<T::kTypeA, T::kTypeB>(acc, desc_a + kk * 2, desc_b + kk * 2, accumulate || kk > 0);
  }
}

// One k-block's scales for one math thread's rows r (lo) and r + 8 (hi). (1,128,128): the products
// sa * sb with B scale block 0 and 1 of the tile. (1,1,128): sa in lo[0], hi[0].
struct BlockScales {
  float lo[2], hi[2];
};

// acc += part * scale for one 8-column chunk of the m64nN layout: row r (lo) and row r + 8 (hi).
__device__ __forceinline__ void promote_chunk(float* acc, const float* part, float scale_lo, float scale_hi) {
  acc[0] = fmaf(part[0], scale_lo, acc[0]);
  acc[1] = fmaf(part[1], scale_lo, acc[1]);
  acc[2] = fmaf(part[2], scale_hi, acc[2]);
  acc[3] = fmaf(part[3], scale_hi, acc[3]);
}

// kItemBScales: the B scales of a work item (its one or two 128-column blocks, each K block of the
// item) for a buffer of the tile's B scales. copy() moves them all, the math threads' shares in
// turn; load() and store() move one thread's share in two steps, so that the loads of the next
// item run under this item's main loop. The caller syncs the math threads before they are read.
template <class T>
struct ItemBScales {
  using Layout = typename T::Layout;
  static constexpr int kMathThreads = T::kNumMathWG * 128;
  static constexpr int kPer = ceil_div(Layout::kMaxTileKBlocks * (Layout::kTwoScaleBlocks ? 2 : 1), kMathThreads);
  float value[kPer];
  int offset[kPer];  // the value's float in the buffer, or -1: none

  // Where item t's scales are: scale i's address, and (slot) its float in the buffer.
  struct Source {
    const float* sfb;
    int num_blocks, count, block0, last_block, kb_begin;

    __device__ __forceinline__ Source(const GemmArgs& args, const Tile& t)
        : sfb(args.sfb + (T::kGroupedB ? static_cast<i64>(t.group) * args.sfb_stride_group : 0)),
          num_blocks(t.kb_end - t.kb_begin), count(num_blocks * (Layout::kTwoScaleBlocks ? 2 : 1)),
          block0(t.n_block * T::BLOCK_N / 128), last_block(ceil_div(args.n, 128) - 1), kb_begin(t.kb_begin) {}

    __device__ __forceinline__ const float* at(const GemmArgs& args, int i, int& slot) const {
      const int which = i / num_blocks, kb = i % num_blocks;
      // the next block, or (gated) the up rows' block of the same columns
      const int block = T::kGated ? block0 + which * (args.n / 128) : min(block0 + which, last_block);
      slot = which * Layout::kMaxTileKBlocks + kb;
      return sfb + (block * args.sfb_stride_n + (kb_begin + kb) * args.sfb_stride_k);
    }
  };

  __device__ __forceinline__ static void copy(const GemmArgs& args, const Tile& t, u32 buffer) {
    const Source source(args, t);
    for (int i = threadIdx.x - 128; i < source.count; i += kMathThreads) {
      int slot;
      const float* from = source.at(args, i, slot);
      st_shared_f32(buffer + slot * 4, ldg_nc(from));
    }
  }

  __device__ __forceinline__ void load(const GemmArgs& args, const Tile& t) {
    const Source source(args, t);
    #pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int i = static_cast<int>(threadIdx.x) - 128 + j * kMathThreads;
      offset[j] = -1;
      if (i < source.count) value[j] = ldg_nc(source.at(args, i, offset[j]));
    }
  }

  __device__ __forceinline__ void store(u32 buffer) const {
    #pragma unroll
    for (int j = 0; j < kPer; ++j) {
      if (offset[j] >= 0) st_shared_f32(buffer + offset[j] * 4, value[j]);
    }
  }
};

// Block-scaled recipes: acc (kWaves x kAcc, zeroed by the caller) = the tile's sum over its K blocks.
template <class T>
struct PromotedMainLoop {
  using Layout = typename T::Layout;
  static constexpr int kAcc = T::kAcc;
  // NOTES: with a second scratch accumulator, the wgmma of k-block kb + 1 runs while kb is
  // promoted, so the tensor cores are not idle during promotion. It costs BLOCK_N / 2 more
  // registers per thread: affordable up to BLOCK_N 128 with one wave (acc + 2 scratch = 192
  // of 232). With two waves (BLOCK_M 256) the other warpgroup's wgmma covers the promotion.
  // Per-column B scales in ragged K too (H200, live DeepGEMM, the grouped suite's ragged-K rows, 2
  // rounds in turns: 0.72/0.71 -> 0.83/0.85 of DeepGEMM); since then off there by default
  // (heuristics/grouped.py: on the H100 with the main loop of 2026-12 faster without). NOTES:
  // elsewhere ptxas spilled (batched, MN-major operands, clusters); (1,1,32) reads several scale
  // blocks per stage, which it does not do.
  static constexpr bool kOverlapPerColumn = T::kScaleGranN == 1 && T::kScaleBlocksK == 1 &&
                                            T::kGroupMode == kGroupK && T::kMnMajor == 0 &&
                                            T::kCluster == 1;
  static constexpr bool kOverlap = T::kAllowOverlap && (T::kScaleGranN == 128 || kOverlapPerColumn) &&
                                   T::BLOCK_N <= 128 && T::kSubTiles == 1;
  // (1,1,32): the floats of one 32-value K block's scales in a stage (sa per row, then sb per column)
  static constexpr int kScaleBlockFloats = T::BLOCK_M + T::BLOCK_N;

  ConsumerStages<T>& stages;
  u32 scales_addr;
  int math_wg, warp, lane;
  int thread_row;    // the row of wave 0 this thread owns (wgmma layout: lane/4 and lane/4 + 8 of its warp's 16)
  int first_chunks;  // with 128-column B blocks: 8-column chunks before it use the tile's first block
  u32 sfb_tile = 0;  // kItemBScales: the tile's B scales per K block (ItemBScales)
  int scale_row_shift = 0;  // kItemBScales: the tile's first row in the stage's scale rows

  // Wave w of this warpgroup covers tile rows wave_row0(w) .. + 63.
  __device__ __forceinline__ int wave_row0(int wave) const { return (math_wg * T::kWaves + wave) * 64; }

  // Issues wave `wave`'s 4 wgmma of `stage` (the work item's K block `kb`; gated: with B half `half`)
  // into `part` (with (1,1,32) scales: the one of 32-value K block `j`), then reads the wave's scales.
  __device__ __forceinline__ void issue(float* part, BlockScales& sc, int stage, int wave, int kb, int j = 0,
                                        int half = 0) const {
    #pragma unroll
    for (int i = 0; i < kAcc; ++i) fence_operand(part[i]);
    wgmma_fence();
    const u64 desc_a = stages.desc_a(stage, wave_row0(wave));
    const u64 desc_b = stages.desc_b(stage) + half * (Layout::kBHalfBytes / 16);
    if constexpr (T::kScaleBlocksK == 1) {
      mma_stage<T>(part, desc_a, desc_b, false);
    } else {
      Wgmma<T::BLOCK_N>::template mma<T::kTypeA, T::kTypeB>(part, desc_a + j * 2, desc_b + j * 2, false);
    }
    wgmma_commit();
    // The scales are needed only at promotion: read while the wgmma runs.
    const int row = thread_row + wave * 64 + (Layout::kScaleRowSlack ? scale_row_shift : 0);
    const u32 sf = scales_addr + stage * Layout::kSfBytes + (j * kScaleBlockFloats + row) * 4;
    sc.lo[0] = ld_shared_f32(sf);
    sc.hi[0] = ld_shared_f32(sf + 8 * 4);
    if constexpr (T::kItemBScales) {  // the stage holds sa; sb of K block kb from the tile's buffer
      const float sa_lo = sc.lo[0], sa_hi = sc.hi[0];
      const float sb0 = ld_shared_f32(sfb_tile + kb * 4);
      sc.lo[0] = sa_lo * sb0;
      sc.hi[0] = sa_hi * sb0;
      if constexpr (Layout::kTwoScaleBlocks) {
        const float sb1 = ld_shared_f32(sfb_tile + (Layout::kMaxTileKBlocks + kb) * 4);
        sc.lo[1] = sa_lo * sb1;
        sc.hi[1] = sa_hi * sb1;
        // NOTES: unfenced, ptxas multiplied the selected sb into sa again in every 8-column chunk
        // of promote (36 FMUL at BLOCK_N 144 instead of 4).
        #pragma unroll
        for (int i = 0; i < 2; ++i) {
          fence_operand(sc.lo[i]);
          fence_operand(sc.hi[i]);
        }
      }
    } else if constexpr (Layout::kTwoScaleBlocks) {
      sc.lo[1] = ld_shared_f32(sf + T::BLOCK_M * 4);
      sc.hi[1] = ld_shared_f32(sf + (T::BLOCK_M + 8) * 4);
    }
  }

  // After `part`'s wgmma completed: out += part * scales in FP32. With per-column B scales the
  // stage's scales are read here, so the caller releases the stage afterwards. Gated: B half
  // `half` lies in B scale block `half` of the tile.
  __device__ __forceinline__ void promote(float* out, float* part, const BlockScales& sc, int stage, int j = 0,
                                          int half = 0) const {
    #pragma unroll
    for (int i = 0; i < kAcc; ++i) fence_operand(part[i]);
    if constexpr (T::kScaleGranN == 128) {
      if constexpr (T::kGated) {
        #pragma unroll
        for (int c = 0; c < T::BLOCK_N / 8; ++c) {
          promote_chunk(out + c * 4, part + c * 4, half ? sc.lo[1] : sc.lo[0], half ? sc.hi[1] : sc.hi[0]);
        }
      } else if constexpr (!Layout::kTwoScaleBlocks) {
        // The tile lies inside one 128-column scale block: one scale pair for all columns.
        #pragma unroll
        for (int c = 0; c < T::BLOCK_N / 8; ++c) promote_chunk(out + c * 4, part + c * 4, sc.lo[0], sc.hi[0]);
      } else {
        // Offsets of tile and block boundary are multiples of gcd(BLOCK_N, 128), kGroup chunks: the
        // chunks of a group share their block. The first group takes the first block and groups from
        // chunk 16 the second at compile time; each other group selects once (one group of the three
        // at BLOCK_N 192: 2 selects a K block where a select per chunk took 16). NOTES (H100, live
        // DeepGEMM, 2 passes): against a select per chunk, 4096x2112x7168 +3.5%, 128x144 rows +7..11%.
        constexpr int kGroup = (T::BLOCK_N & -T::BLOCK_N) / 8;
        #pragma unroll
        for (int g = 0; g < T::BLOCK_N / 8 / kGroup; ++g) {
          // a select: an index would put sc in local memory
          const bool first = g == 0 || (g * kGroup < 16 && g * kGroup < first_chunks);
          const float lo = first ? sc.lo[0] : sc.lo[1], hi = first ? sc.hi[0] : sc.hi[1];
          #pragma unroll
          for (int c = g * kGroup; c < (g + 1) * kGroup; ++c) promote_chunk(out + c * 4, part + c * 4, lo, hi);
        }
      }
    } else {
      const u32 sf = scales_addr + stage * Layout::kSfBytes + (j * kScaleBlockFloats + T::BLOCK_M + (lane % 4) * 2) * 4;
      #pragma unroll
      for (int c = 0; c < T::BLOCK_N / 8; ++c) {
        const float sb_lo = ld_shared_f32(sf + c * 32), sb_hi = ld_shared_f32(sf + c * 32 + 4);
        out[c * 4 + 0] = fmaf(part[c * 4 + 0], sc.lo[0] * sb_lo, out[c * 4 + 0]);
        out[c * 4 + 1] = fmaf(part[c * 4 + 1], sc.lo[0] * sb_hi, out[c * 4 + 1]);
        out[c * 4 + 2] = fmaf(part[c * 4 + 2], sc.hi[0] * sb_lo, out[c * 4 + 2]);
        out[c * 4 + 3] = fmaf(part[c * 4 + 3], sc.hi[0] * sb_hi, out[c * 4 + 3]);
      }
    }
  }

  // Promotes `part` and frees its stage: the stage first where the scales are in registers (the
  // producer refills it sooner), after the promotion where that reads per-column B scales from it.
  __device__ __forceinline__ void promote_release(float* out, float* part, const BlockScales& sc, int stage) const {
    if constexpr (T::kScaleGranN == 128) {
      stages.release(stage);
      promote(out, part, sc, stage);
    } else {
      promote(out, part, sc, stage);
      stages.release(stage);
    }
  }

  __device__ __forceinline__ void run(float* acc, float* part0, float* part1, const Tile& t) {
    const int num_blocks = t.kb_end - t.kb_begin;  // k-blocks of this work item
    if constexpr (kOverlap) {
      // Two scratch accumulators in turn: k-block kb + 1's wgmma runs while kb is promoted.
      // NOTES: no wgmma is in flight across the loop's back edge or a conditional issue; with
      // either, ptxas serialised every wgmma (C7514) or injected waits before promotion (C7517).
      BlockScales sc0, sc1;
      int stage0 = stages.wait(), stage1;
      issue(part0, sc0, stage0, 0, 0);
      wgmma_wait<0>();
      int kb = 0;
      for (; kb + 2 < num_blocks; kb += 2) {  // part0 holds k-block kb, complete
        stage1 = stages.wait();
        issue(part1, sc1, stage1, 0, kb + 1);
        promote_release(acc, part0, sc0, stage0);
        wgmma_wait<0>();
        stage0 = stages.wait();
        issue(part0, sc0, stage0, 0, kb + 2);
        promote_release(acc, part1, sc1, stage1);
        wgmma_wait<0>();
      }
      if (kb + 1 < num_blocks) {
        stage1 = stages.wait();
        issue(part1, sc1, stage1, 0, kb + 1);
        promote_release(acc, part0, sc0, stage0);
        wgmma_wait<0>();
        promote_release(acc, part1, sc1, stage1);
      } else {
        promote_release(acc, part0, sc0, stage0);
      }
    } else if constexpr (T::kScaleBlocksK == 1) {
      // The K blocks before the ring reaches stage 0 one at a time, then whole turns of the ring
      // unrolled with each stage a compile-time constant (the ring position, descriptor and barrier
      // addresses fold into immediates), then the rest one at a time. A gated tile's two halves are
      // two 64 x 128 sub-tiles, as two waves. NOTES (H100, live DeepGEMM, 2 passes): against the
      // loop one K block at a time (two-wave tiles: 8 deep with the stage a run-time value) 256x128
      // +1..2%, 128x192 4096x2112x7168 +1.4% (2048x3072x7168 -0.5%), 128x144 4096x576x7168 +1.4%
      // (2048x2112x7168 -2.5%), k-grouped +1.3%.
      int kb = 0;
      for (; kb < num_blocks && stages.pipe.stage != 0; ++kb) k_block(acc, part0, stages.wait(), kb);
      for (; kb + T::kNumStages <= num_blocks; kb += T::kNumStages) {
        stages.refresh_descriptors();
        #pragma unroll
        for (int stage = 0; stage < T::kNumStages; ++stage) {
          stages.wait_in_turn(stage);
          k_block(acc, part0, stage, kb + stage);
        }
        stages.pipe.phase ^= 1;
      }
      for (; kb < num_blocks; ++kb) k_block(acc, part0, stages.wait(), kb);
    } else {
      static_assert(T::kScaleGranN == 1 && !T::kGated, "(1,1,32) scales: per-column B, no gated halves");
      for (int kb = 0; kb < num_blocks; ++kb) {
        const int stage = stages.wait();
        #pragma unroll
        for (int wave = 0; wave < T::kWaves; ++wave) {
          // (1,1,32): each 32-value K block's wgmma promoted alone. NOTES: a loop, not unrolled:
          // unrolled, the four blocks' scale loads were hoisted and 128x128 tiles spilled.
          BlockScales sc;
          #pragma unroll 1
          for (int j = 0; j < T::kScaleBlocksK; ++j) {
            issue(part0, sc, stage, wave, kb, j);
            wgmma_wait<0>();
            promote(acc + wave * kAcc, part0, sc, stage, j);
          }
        }
        stages.release(stage);
      }
    }
  }

  // One K block of one scale block (kScaleBlocksK == 1) in `stage`: each sub-tile (wave, B half)
  // into `part`, then promoted; the stage is released once its last wgmma completed.
  __device__ __forceinline__ void k_block(float* acc, float* part, int stage, int kb) const {
    #pragma unroll
    for (int sub = 0; sub < T::kSubTiles; ++sub) {
      const int wave = sub / T::kBHalves, half = sub % T::kBHalves;
      BlockScales sc;
      issue(part, sc, stage, wave, kb, 0, half);
      wgmma_wait<0>();
      if (T::kScaleGranN == 128 && sub == T::kSubTiles - 1) stages.release(stage);
      promote(acc + sub * kAcc, part, sc, stage, 0, half);
    }
    if constexpr (T::kScaleGranN != 128) stages.release(stage);
  }
};

// Per-row A and per-tensor B scales (or none): every wave accumulates in place over all of K; a
// stage is released once the next k-block's wgmma are issued and its own have completed (one
// batch stays in flight). Then acc *= sa(row) * sb.
template <class T>
__device__ __forceinline__ void scale_at_end_mainloop(ConsumerStages<T>& stages, float* acc, const Tile& t,
                                                      const GemmArgs& args, int math_wg, int warp, int lane) {
  constexpr int kAcc = T::kAcc;
  auto wave_row0 = [&](int wave) { return (math_wg * T::kWaves + wave) * 64; };
  const int num_blocks = t.kb_end - t.kb_begin;
  int previous = -1;
  for (int kb = 0; kb < num_blocks; ++kb) {
    const int stage = stages.wait();
    #pragma unroll
    for (int i = 0; i < T::kWaves * kAcc; ++i) fence_operand(acc[i]);
    wgmma_fence();
    #pragma unroll
    for (int wave = 0; wave < T::kWaves; ++wave) {
      mma_stage<T>(acc + wave * kAcc, stages.desc_a(stage, wave_row0(wave)), stages.desc_b(stage), kb > 0);
    }
    wgmma_commit();
    #pragma unroll
    for (int i = 0; i < T::kWaves * kAcc; ++i) fence_operand(acc[i]);
    wgmma_wait<1>();
    if (previous >= 0) stages.release(previous);
    previous = stage;
  }
  wgmma_wait<0>();
  #pragma unroll
  for (int i = 0; i < T::kWaves * kAcc; ++i) fence_operand(acc[i]);
  if (previous >= 0) stages.release(previous);
  if constexpr (!T::kUnscaled) {
    const float* sfa_rows =
        args.sfa + (T::kGroupMode == kGroupBatched ? static_cast<i64>(t.group) * args.sfa_stride_group : 0);
    const float sb = ldg_nc(args.sfb + static_cast<i64>(t.group) * args.sfb_stride_group);
    const int m0 = t.row0;
    #pragma unroll
    for (int wave = 0; wave < T::kWaves; ++wave) {
      const int row = m0 + wave_row0(wave) + warp * 16 + lane / 4;
      const float* sfa_row = sfa_rows + static_cast<i64>(row) * args.sfa_stride_m;
      const float s_lo = row < args.m ? ldg_nc(sfa_row) * sb : 0.0f;
      const float s_hi = row + 8 < args.m ? ldg_nc(sfa_row + 8 * static_cast<i64>(args.sfa_stride_m)) * sb : 0.0f;
      #pragma unroll
      for (int c = 0; c < T::BLOCK_N / 8; ++c) {
        acc[wave * kAcc + c * 4 + 0] *= s_lo;
        acc[wave * kAcc + c * 4 + 1] *= s_lo;
        acc[wave * kAcc + c * 4 + 2] *= s_hi;
        acc[wave * kAcc + c * 4 + 3] *= s_hi;
      }
    }
  }
}

}  // namespace mategemm
