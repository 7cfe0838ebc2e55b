// The producer warpgroup's warps 1-3: they copy each stage's block scales (any strides) from
// global memory into shared memory beside its tiles, so scale-load latency hides behind the whole
// ring; warp w takes the k-block iterations i with i % 3 == w - 1. With MN-major operands all three
// transpose every stage's staged tiles into the K-major layout the wgmma read.
#pragma once
#include "scheduler.cuh"

namespace mategemm {

// Warps copy a stage's MN-major FP8 tile of kRows rows (as staged: parts of 128 K-rows x kWidth
// bytes) into the K-major 128-byte-swizzled layout the wgmma descriptors read: row r, 16-byte K
// chunk c at (c ^ r % 8). Lane l owns MN rows 4l .. 4l + 3; steps first_step, first_step +
// kNumWarps, ... of the 8 go to this warp, and step s is K chunk (s + l) % 8: 16 loads of 4 bytes
// (one per K row), byte permutes, one 16-byte store per row. No access has bank conflicts.
template <int kRows, int kNumWarps>
__device__ __forceinline__ void transpose_stage_to_k_major(u32 src, u32 dst, int lane, int first_step) {
  constexpr int kWidth = kRows < 128 ? kRows : 128;
  static_assert(kRows % kWidth == 0 && kWidth % 64 == 0, "MN-major tiles are 64, 128 or 256 rows");
  if (lane * 4 >= kWidth) return;
  #pragma unroll
  for (int part = 0; part < kRows / kWidth; ++part) {
    const u32 part_src = src + part * kWidth * kBlockK + lane * 4;
    const u32 rows_dst = dst + (part * kWidth + lane * 4) * kBlockK;
    #pragma unroll 1
    for (int step = first_step; step < kBlockK / 16; step += kNumWarps) {
      const int chunk = (step + lane) % (kBlockK / 16);
      u32 v[16];  // K rows 16 chunk .. + 15, 4 MN bytes each
      #pragma unroll
      for (int r = 0; r < 16; ++r) v[r] = ld_shared_u32(part_src + (chunk * 16 + r) * kWidth);
      u32 rows[4][4];  // [MN row][4 K bytes]
      #pragma unroll
      for (int quad = 0; quad < 4; ++quad) {
        const u32* q = v + quad * 4;
        const u32 even01 = __byte_perm(q[0], q[1], 0x5140), even23 = __byte_perm(q[2], q[3], 0x5140);  // bytes 0, 1
        const u32 odd01 = __byte_perm(q[0], q[1], 0x7362), odd23 = __byte_perm(q[2], q[3], 0x7362);    // bytes 2, 3
        rows[0][quad] = __byte_perm(even01, even23, 0x5410);
        rows[1][quad] = __byte_perm(even01, even23, 0x7632);
        rows[2][quad] = __byte_perm(odd01, odd23, 0x5410);
        rows[3][quad] = __byte_perm(odd01, odd23, 0x7632);
      }
      #pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int swizzle = (lane * 4 + j) % 8;  // the row's index mod 8 (parts start at multiples of 64)
        st_shared_v4(rows_dst + j * kBlockK + (chunk ^ swizzle) * 16, rows[j][0], rows[j][1], rows[j][2], rows[j][3]);
      }
    }
  }
}

template <class T>
constexpr int kScaleRowSlots = ceil_div(T::BLOCK_M, 32);  // a scale warp's lane: rows lane, lane + 32, ...

// One stage's scales: A's per row of the tile (kGatherA: of the A rows `a_rows` the lane's tile rows
// read); with 128-column B blocks the products sa * sb with the tile's (one or two) B blocks, else
// B's per column after A's.
template <class T>
__device__ __forceinline__ void stage_scales(const GemmArgs& args, u32 sf, const float* sfa_tile,
                                             const float* sfb_group, int m0, int n0, int kb, int lane,
                                             const int (&a_rows)[kScaleRowSlots<T>]) {
  using Layout = typename T::Layout;
  constexpr int kRowSlots = kScaleRowSlots<T>;
  // A's scales of K block `block` for this lane's rows (int offsets: < 2^31, checked on the host).
  auto load_rows = [&](float (&va)[kRowSlots], int block) {
    #pragma unroll
    for (int i = 0; i < kRowSlots; ++i) {
      const int row = m0 + lane + 32 * i;
      const int a_row = T::kGatherA ? a_rows[i] : row;
      va[i] = row < args.m ? ldg_nc(sfa_tile + (a_row * args.sfa_stride_m + block * args.sfa_stride_k)) : 0.0f;
    }
  };
  // Issue every load of the stage, then store: one memory latency per stage (per 32-value K block
  // with (1,1,32) scales).
  float va[kRowSlots];
  load_rows(va, kb * T::kScaleBlocksK);
  if constexpr (T::kScaleGranN == 128) {
    // NOTES: the products are formed here, so the math warps' promotion needs no FMUL
    // waiting on a shared-memory load; ptxas had put those between the wgmma of a batch.
    const int num_n_scale_blocks = ceil_div(args.n, 128);
    const int block0 = n0 / 128;
    const float sb0 = ldg_nc(sfb_group + (block0 * args.sfb_stride_n + kb * args.sfb_stride_k));
    // the second block: the next one, or (gated) the up rows' block of the same columns
    const int block1 = T::kGated ? (args.n + n0) / 128 : min(block0 + 1, num_n_scale_blocks - 1);
    const float sb1 =
        Layout::kTwoScaleBlocks ? ldg_nc(sfb_group + (block1 * args.sfb_stride_n + kb * args.sfb_stride_k)) : 0.0f;
    #pragma unroll
    for (int i = 0; i < kRowSlots; ++i) {
      const int row = lane + 32 * i;
      if (row < T::BLOCK_M) {
        st_shared_f32(sf + row * 4, va[i] * sb0);
        if constexpr (Layout::kTwoScaleBlocks) st_shared_f32(sf + (T::BLOCK_M + row) * 4, va[i] * sb1);
      }
    }
  } else {
    constexpr int kColSlots = ceil_div(T::BLOCK_N, 32);
    // NOTES: one K block at a time: unrolled, the four blocks' addresses spilled the producer's 40
    // registers (128x128 tiles).
    #pragma unroll 1
    for (int j = 0; j < T::kScaleBlocksK; ++j) {
      const int block = kb * T::kScaleBlocksK + j;
      const u32 sf_block = sf + j * (T::BLOCK_M + T::BLOCK_N) * 4;
      if (j > 0) load_rows(va, block);
      float vb[kColSlots];
      #pragma unroll
      for (int i = 0; i < kColSlots; ++i) {
        const int col = n0 + lane + 32 * i;
        vb[i] = lane + 32 * i < T::BLOCK_N && col < args.n
                    ? ldg_nc(sfb_group + (col * args.sfb_stride_n + block * args.sfb_stride_k))
                    : 0.0f;
      }
      #pragma unroll
      for (int i = 0; i < kRowSlots; ++i) {
        if (lane + 32 * i < T::BLOCK_M) st_shared_f32(sf_block + (lane + 32 * i) * 4, va[i]);
      }
      #pragma unroll
      for (int i = 0; i < kColSlots; ++i) {
        if (lane + 32 * i < T::BLOCK_N) st_shared_f32(sf_block + (T::BLOCK_M + lane + 32 * i) * 4, vb[i]);
      }
    }
  }
}

template <class T>
__device__ __forceinline__ void stage_scales_and_operands(const GemmArgs& args, const GemmSmem<T>& smem,
                                                          GemmScheduler<T>& scheduler, int warp) {
  using Layout = typename T::Layout;
  constexpr int kNumScaleWarps = 3;
  const int lane = threadIdx.x % 32;
  int iter = 0;
  Tile t;
  while (scheduler.next(t)) {
    for (int pass = 0; pass < GemmScheduler<T>::kPasses; ++pass) {  // GemmScheduler::pass
      if (!scheduler.pass(t, pass)) break;
      const int m0 = t.row0, n0 = t.n_block * T::BLOCK_N;
      const float* sfa_tile =
          args.sfa + (T::kGroupMode == kGroupBatched ? static_cast<i64>(t.group) * args.sfa_stride_group : 0);
      int a_rows[kScaleRowSlots<T>] = {};  // kGatherA: the A rows of this lane's tile rows
      if constexpr (T::kGatherA) {
        #pragma unroll
        for (int i = 0; i < kScaleRowSlots<T>; ++i) {
          if (t.kb_begin < t.kb_end) a_rows[i] = args.gathered_row(m0 + lane + 32 * i);
        }
      }
      const float* sfb_group = args.sfb + t.group * args.sfb_stride_group;
      for (int kb = t.kb_begin; kb < t.kb_end; ++kb, ++iter) {
        const bool scales_here = iter % kNumScaleWarps == warp - 1;
        if (!T::kMnMajor && !scales_here) continue;
        const int stage = iter % T::kNumStages;
        smem.empty[stage].wait(((iter / T::kNumStages) & 1) ^ 1);
        if (!T::kScaleAtEnd && scales_here) {
          stage_scales<T>(args, smem.scales + stage * Layout::kSfBytes, sfa_tile, sfb_group, m0, n0, kb, lane,
                          a_rows);
        }
        if constexpr (T::kMnMajor != 0) {
          smem.staged[stage].wait((iter / T::kNumStages) & 1);
          const u32 staging = smem_addr(smem.staging + stage * Layout::kStagingBytes);
          if constexpr (T::kMnMajor & 1) {
            transpose_stage_to_k_major<T::BLOCK_M, kNumScaleWarps>(
                staging, smem_addr(smem.a + stage * Layout::kABytes), lane, warp - 1);
          }
          if constexpr (T::kMnMajor & 2) {
            transpose_stage_to_k_major<T::BLOCK_N, kNumScaleWarps>(
                staging + Layout::kStagingABytes, smem_addr(smem.b + stage * Layout::kBBytes), lane, warp - 1);
          }
          fence_proxy_async_smem();  // the wgmma (async proxy) read what these stores wrote
        }
        smem.full[stage].arrive();  // release: the stores above are visible to the waiters
      }
    }
  }
}

}  // namespace mategemm
