// The GEMM's producer: one thread streams the A and B tiles (and, kTmaScales, the stage's scales) of every
// work item through the ring of stages with TMA; gathered A rows (kGatherA): the warp, B by TMA
// and A's rows 16 bytes a lane by cp.async (gather_a_rows). K-major operands land swizzled where
// the wgmma read them; MN-major ones land untransposed in the stage's staging area (the scale warps
// transpose them); a tile shared by a cluster pair is loaded half by each CTA into both (multicast).
#pragma once
#include "../common/pipeline.cuh"
#include "scheduler.cuh"

namespace mategemm {

// Gathered A rows: each lane copies tile rows lane / 2 + 16 i (i < kGatherRows), 16-byte chunks
// 2 j + lane % 2 of each, so a warp instruction reads 16 rows' 32-byte sectors whole.
template <class T>
inline constexpr int kGatherRows = T::BLOCK_M / 16;

// One stage's A tile of gathered rows (`rows`: the A rows of this lane's tile rows) by cp.async into
// the 128-byte swizzle the wgmma descriptor reads: chunk c of tile row r at chunk c ^ (r % 8), the
// stage being 1024-byte aligned; a lane's rows share r % 8, so its four chunk places are fixed.
// K is whole 128-byte blocks (the host checks). The lane's copies arrive on `bar` once they have landed.
template <class T>
__device__ __forceinline__ void gather_a_rows(u8* a_dst, const GemmArgs& args, const int* rows, int kb, int lane,
                                              u32 bar) {
  const int half = lane % 2, row = lane / 2;
  const u32 dst = smem_addr(a_dst) + row * kBlockK;
  const u8* src = args.gather_src + kb * kBlockK + half * 16;
  const u32 ld = static_cast<u32>(args.gather_ld);  // rows and strides are non-negative: one IMAD.WIDE.U32
  #pragma unroll
  for (int i = 0; i < kGatherRows<T>; ++i) {
    u32 a_row = static_cast<u32>(rows[i]);
    asm volatile("" : "+r"(a_row));  // keeps row x ld per stage: hoisted out of the K loop, 16 of them spill
    const u8* row_src = src + static_cast<u64>(a_row) * ld;
    #pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int chunk = 2 * j + half;
      cp_async_16(dst + i * 16 * kBlockK + ((chunk ^ (row % 8)) << 4), row_src + 32 * j);
    }
  }
  cp_async_arrive_noinc(bar);
}

template <class T>
__device__ __forceinline__ void produce_tiles(const GemmArgs& args, const GemmSmem<T>& smem,
                                              GemmScheduler<T>& scheduler) {
  using Layout = typename T::Layout;
  const int lane = threadIdx.x % 32;
  PipelineState<T::kNumStages> pipe;
  Tile t;
  while (scheduler.next(t)) {
    for (int pass = 0; pass < GemmScheduler<T>::kPasses; ++pass) {  // GemmScheduler::pass
      if (!scheduler.pass(t, pass)) break;
      [[maybe_unused]] int gather_rows[T::kGatherA ? kGatherRows<T> : 1];
      if constexpr (T::kGatherA) {
        #pragma unroll
        for (int i = 0; i < kGatherRows<T>; ++i) gather_rows[i] = args.gathered_row(t.a_row0 + lane / 2 + 16 * i);
      }
      // a gated GEMM's group holds gate rows, then up rows: 2 n rows
      const int b_row0 = (T::kGroupedB ? t.group * args.n * T::kBHalves : 0) + t.n_block * T::BLOCK_N;
      [[maybe_unused]] const float* sfa_tile = args.sfa + t.row0;  // kBulkStageScales: K block 0's rows
      [[maybe_unused]] const float* sfb_tile = args.sfb + t.n_block * T::BLOCK_N;
      [[maybe_unused]] const u32 sa_bytes = min(T::BLOCK_M, args.m - t.row0) * 4;
      [[maybe_unused]] const u32 scale_bytes = sa_bytes + min(T::BLOCK_N, args.n - t.n_block * T::BLOCK_N) * 4;
      for (int kb = t.kb_begin; kb < t.kb_end; ++kb) {
        const Barrier loaded = (T::kMnMajor ? smem.staged : smem.full)[pipe.stage];
        smem.empty[pipe.stage].wait(pipe.phase ^ 1);
        u8* a_dst = smem.a + pipe.stage * Layout::kABytes;
        u8* b_dst = smem.b + pipe.stage * Layout::kBBytes;
        auto load_k_major_b = [&] {
          if constexpr (T::kBEvictFirst) {
            tma_load_2d_hinted(b_dst, args.tmap_b, loaded.addr, kb * T::kBlockKElems, b_row0, kL2EvictFirst);
          } else {
            tma_load_2d(b_dst, args.tmap_b, loaded.addr, kb * T::kBlockKElems, b_row0);
          }
          if constexpr (T::kGated) {  // the up rows of the tile's columns
            tma_load_2d(b_dst + Layout::kBHalfBytes, args.tmap_b, loaded.addr, kb * T::kBlockKElems, b_row0 + args.n);
          }
        };
        if constexpr (T::kGatherA) {
          if (lane == 0) {
            loaded.arrive_expect_tx(Layout::kBBytes);
            load_k_major_b();
          }
          gather_a_rows<T>(a_dst, args, gather_rows, kb, lane, loaded.addr);
          pipe.advance();
          continue;
        }
        loaded.arrive_expect_tx(((T::kMnMajor & 1) ? T::BLOCK_M : args.a_box_rows) * kBlockK + Layout::kBBytes +
                                (T::kItemBScales ? Layout::kScaleBoxes * Layout::kScaleBoxRows * 4 : 0) +
                                (T::kBulkStageScales ? scale_bytes : 0));
        if constexpr (T::kBulkStageScales) {
          // sa of the tile's rows, then sb of its columns: MN-major rows of m and n floats (the host
          // checks 16-byte alignment and m, n multiples of 4). Rows and columns past m and n keep
          // stale values; they meet only zero-filled A rows and B columns, and are never stored.
          const u32 sf = smem.scales + pipe.stage * Layout::kSfBytes;
          bulk_load(sf, sfa_tile + kb * args.sfa_stride_k, sa_bytes, loaded.addr);
          bulk_load(sf + T::BLOCK_M * 4, sfb_tile + kb * args.sfb_stride_k, scale_bytes - sa_bytes, loaded.addr);
        }
        if constexpr (T::kItemBScales) {  // A's scales of the tile's rows (rows past m zero-filled)
          #pragma unroll
          for (int c = 0; c < Layout::kScaleBoxes; ++c) {
            tma_load_2d(smem.scales + pipe.stage * Layout::kSfBytes + c * Layout::kScaleBoxStep * 4, args.tmap_sfa,
                        loaded.addr, Layout::scale_box_row(t.a_row0) + c * Layout::kScaleBoxStep, kb);
          }
        }
        // A shared tile: this CTA loads its half (the descriptor's box is half the rows) into both.
        // MN-major operands: boxes of 128 K-rows x min(rows, 128) bytes into the staging area;
        // the descriptors view them as (K rows of all groups, MN).
        u8* staging = smem.staging + pipe.stage * Layout::kStagingBytes;
        const int mn_k_row = kb * kBlockK;
        if constexpr (T::kMnMajor & 1) {
          constexpr int kWidth = T::BLOCK_M < 128 ? T::BLOCK_M : 128;
          const int k_row = (T::kGroupMode == kGroupBatched ? t.group * args.k : 0) + mn_k_row;
          #pragma unroll
          for (int c = 0; c < T::BLOCK_M / kWidth; ++c) {
            tma_load_2d(staging + c * kWidth * kBlockK, args.tmap_a, loaded.addr, t.row0 + c * kWidth, k_row);
          }
        } else if constexpr (T::kClusterN == 1) {
          tma_load_2d(a_dst, args.tmap_a, loaded.addr, kb * T::kBlockKElems, t.a_row0);
        } else {
          constexpr int kHalfRows = T::BLOCK_M / 2;
          const int offset = scheduler.rank() * kHalfRows;
          tma_load_2d_multicast(a_dst + offset * kBlockK, args.tmap_a, loaded.addr, kb * T::kBlockKElems,
                                t.a_row0 + offset, 0x3);
        }
        if constexpr (T::kMnMajor & 2) {
          constexpr int kWidth = T::BLOCK_N < 128 ? T::BLOCK_N : 128;
          const int k_row = (T::kGroupedB ? t.group * args.k : 0) + mn_k_row;
          #pragma unroll
          for (int c = 0; c < T::BLOCK_N / kWidth; ++c) {
            tma_load_2d(staging + Layout::kStagingABytes + c * kWidth * kBlockK, args.tmap_b, loaded.addr,
                        t.n_block * T::BLOCK_N + c * kWidth, k_row);
          }
        } else if constexpr (T::kClusterM == 1) {
          load_k_major_b();
        } else {
          constexpr int kHalfRows = T::BLOCK_N / 2;
          const int offset = scheduler.rank() * kHalfRows;
          tma_load_2d_multicast(b_dst + offset * kBlockK, args.tmap_b, loaded.addr, kb * T::kBlockKElems,
                                b_row0 + offset, 0x3);
        }
        pipe.advance();
      }
    }
  }
}

}  // namespace mategemm
