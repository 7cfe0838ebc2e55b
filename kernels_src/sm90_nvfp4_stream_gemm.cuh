// sm90_nvfp4_stream_gemm: the NVFP4 grouped GEMM of sm90_nvfp4_grouped_gemm.cuh (same operands and
// semantics) for few rows per group, where the weights stream and their decode sets the pace. The
// operands swap: a tile is 128 rows of an expert's weights (two math warpgroups of 64) by kTokens
// rows of a group. The weights are the wgmma's A operand, decoded from their packed bytes straight
// into its registers (no bf16 copy through shared memory); the group's rows are the B operand,
// decoded into a bf16 tile by the producer warpgroup's warps 1-3.
//
// A stage is 256 values of K: 128 packed bytes per row, 16 k16 chunks. Math thread q = lane % 4
// takes bytes [32q, 32q + 32) of its two rows and their 4 scales; both operands are decoded by
// decode_e2m1_pairs, whose word m holds nibbles m and m + 4 of a 32-bit word of packed values.
// Chunk j = 4b + 2c + t takes word 2b + c of the thread's span: fragment words a0, a1 its nibbles
// 2t and 2t + 4 of the rows, a2, a3 nibbles 2t + 1 and 2t + 5. So K value 64q + 16b + 8c + 4e + 2t + h
// sits in chunk j's slot 8h + 2q + e, and the B tile puts it there too: one permutation of K for
// both operands leaves the sum unchanged. kDecodedTokens: the group's rows come decoded beforehand
// (sm90_nvfp4_dequant_a in stream order, a bf16 tensor in this B order) and TMA lands the B tile
// itself; warps 1-3 idle. kCtasPerSm: the CTAs an SM holds at once (the launch bounds); at 2 a
// thread keeps at most 80 registers and the ring fits half the SM's shared memory.
#pragma once
#include "common/e2m1.cuh"
#include "common/epilogue.cuh"
#include "common/pipeline.cuh"
#include "common/wgmma.cuh"
#include "gemm/scheduler.cuh"

namespace mategemm {

constexpr int kStreamRows = 128;         // weight rows per tile
constexpr int kStreamRowBytes = 128;     // packed bytes per row and stage
constexpr int kStreamScaleBytes = 2048;  // per stage and operand: four 512-byte chunks (128 rows x 4 scales)
constexpr int kStreamDecoders = 96;      // the producer warpgroup's warps 1-3

template <int kTokens, int kNumStages_, int kMaxGroups, bool kDecodedTokens = false>
struct StreamLayout {
  static constexpr int kNumStages = kNumStages_;
  static_assert(kTokens % 8 == 0 && kTokens <= 64, "B tiles of 8-row core groups");
  static constexpr int kWeightBytes = kStreamRows * kStreamRowBytes;  // TMA's 128-byte swizzle
  static constexpr int kTokenSlabBytes = kTokens * 128;  // 64 bf16 of K per row, 128-byte swizzle
  static constexpr int kOffWeights = 0;
  static constexpr int kOffTokenTile = kOffWeights + kWeightBytes;  // the B tile: 4 slabs
  static constexpr int kOffTokenPacked = kOffTokenTile + 4 * kTokenSlabBytes;  // (none when decoded)
  static constexpr int kOffWeightScales = kOffTokenPacked + (kDecodedTokens ? 0 : kTokens * kStreamRowBytes);
  static constexpr int kOffTokenScales = kOffWeightScales + kStreamScaleBytes;
  static constexpr int kStageBytes = kOffTokenScales + (kDecodedTokens ? 0 : kStreamScaleBytes);
  static constexpr int kTokenTxBytes =  // the B tile, or the packed rows and their scales
      kDecodedTokens ? 4 * kTokenSlabBytes : kTokens * kStreamRowBytes + kStreamScaleBytes;
  static constexpr u32 kTxBytes = kWeightBytes + kStreamScaleBytes + kTokenTxBytes;
  static constexpr int kOffBarriers = kNumStages * kStageBytes;  // full, decoded and empty per stage
  static constexpr int kOffGroupTable = kOffBarriers + 3 * kNumStages * 8;
  static constexpr int kTotalBytes = kOffGroupTable + 4 * kMaxGroups * 4 + 1024;  // + the base's alignment
  static_assert(kStageBytes % 1024 == 0, "swizzled tiles stay 1024-byte aligned");
};

// What the group walk (GemmScheduler) reads of a kernel's traits: tiles of kTokens rows of a group
// by 128 weight rows.
template <int kTokens, int kMaxGroups_>
struct StreamWalk {
  static constexpr int BLOCK_M = kTokens, BLOCK_N = kStreamRows;
  static constexpr GroupMode kGroupMode = kGroupOffsets;
  static constexpr int kMaxGroups = kMaxGroups_, kClusterM = 1, kClusterN = 1, kSplitCluster = 1;
};

template <class L, bool kDecodedTokens, class W>
__device__ __forceinline__ void stream_produce(u8* smem, BarrierRing full, BarrierRing empty, GemmScheduler<W>& walk,
                                               const TmaDesc* tmap_a, const TmaDesc* tmap_b, const TmaDesc* tmap_sfa,
                                               const TmaDesc* tmap_sfb, int n, int k) {
  const int k_chunks = ceil_div(k, 64);  // 64-value K steps of the scale layout
  const int n_scale_tiles = ceil_div(n, 128);
  PipelineState<L::kNumStages> pipe;
  Tile t;
  while (walk.next(t)) {
    const int w_row0 = t.group * n + t.n_block * kStreamRows;
    // scale descriptors' rows are 128 bytes: a stage's four chunks are 16 rows
    const int w_scale_row = (t.group * n_scale_tiles + t.n_block) * k_chunks * 4;
    const int a_scale_row = t.a_scale_row / 128 * k_chunks * 4;
    for (int kb = t.kb_begin; kb < t.kb_end; ++kb) {
      empty[pipe.stage].wait(pipe.phase ^ 1);
      const Barrier loaded = full[pipe.stage];
      loaded.arrive_expect_tx(L::kTxBytes);
      u8* stage = smem + pipe.stage * L::kStageBytes;
      tma_load_2d(stage + L::kOffWeights, tmap_b, loaded.addr, kb * kStreamRowBytes, w_row0);
      tma_load_2d(stage + L::kOffWeightScales, tmap_sfb, loaded.addr, 0, w_scale_row + kb * 16);
      if constexpr (kDecodedTokens) {  // four boxes of 64 bf16 by the tile's rows
        #pragma unroll
        for (int slab = 0; slab < 4; ++slab) {
          tma_load_2d(stage + L::kOffTokenTile + slab * L::kTokenSlabBytes, tmap_a, loaded.addr,
                      kb * 2 * kStreamRowBytes + slab * 64, t.a_row0);
        }
      } else {
        tma_load_2d(stage + L::kOffTokenPacked, tmap_a, loaded.addr, kb * kStreamRowBytes, t.a_row0);
        tma_load_2d(stage + L::kOffTokenScales, tmap_sfa, loaded.addr, 0, a_scale_row + kb * 16);
      }
      pipe.advance();
    }
  }
}

// Warps 1-3: each stage's rows of the group to the bf16 B tile. A unit is 32 values of a row: word
// w (bytes 4w..4w+3) of each thread-q span [32q, 32q + 32), whose byte i lands in slot 2q of the
// 8-value chunk 4w + i of the B order, so a unit fills four whole 16-byte chunks.
template <class L, int kTokens, class W>
__device__ __forceinline__ void stream_decode_tokens(u8* smem, BarrierRing full, BarrierRing decoded,
                                                     GemmScheduler<W>& walk, u32 thread) {
  PipelineState<L::kNumStages> pipe;
  Tile t;
  while (walk.next(t)) {
    const u32 rows = min(kTokens, t.row_end - t.row0);
    const u32 scale_row0 = static_cast<u32>(t.a_scale_row) % 128;
    for (int kb = t.kb_begin; kb < t.kb_end; ++kb) {
      full[pipe.stage].wait(pipe.phase);
      const u32 stage = smem_addr(smem) + pipe.stage * L::kStageBytes;
      for (u32 unit = thread; unit < rows * 8; unit += kStreamDecoders) {
        const u32 row = unit / 8, w = unit % 8;
        const u32 scale = stage + L::kOffTokenScales + nvfp4_scale_offset<true>(scale_row0 + row) + w / 2;
        u32 out[4][4];
        #pragma unroll
        for (int q = 0; q < 4; ++q) {
          const u32 word = ld_shared_u32(stage + L::kOffTokenPacked + row * kStreamRowBytes + q * 32 + w * 4);
          decode_e2m1_pairs(word, e2m1_pair_factor(ld_shared_u8(scale + q * 512)), out[q]);
        }
        const u32 dst = stage + L::kOffTokenTile + (w / 2) * L::kTokenSlabBytes + row * 128;
        #pragma unroll
        for (int c = 0; c < 4; ++c) {
          st_shared_v4(dst + ((4 * (w % 2) + c) ^ (row % 8)) * 16, out[0][c], out[1][c], out[2][c], out[3][c]);
        }
      }
      fence_proxy_async_smem();  // the wgmma (async proxy) read what these stores wrote
      decoded[pipe.stage].arrive();
      pipe.advance();
    }
  }
}

// Math warpgroup `wg`: weight rows row and row + 8 of the tile (row = wg * 64 + warp * 16 + lane / 4).
template <class L, int kTokens, int kCtasPerSm, OutType kOutType, bool kDecodedTokens, class W>
__device__ __forceinline__ void stream_consume(u8* smem, BarrierRing full, BarrierRing decoded, BarrierRing empty,
                                               GemmScheduler<W>& walk, int wg, const float* expert_scales, int n,
                                               void* out_ptr, int out_ld) {
  const u32 lane = threadIdx.x % 32, q = lane % 4;
  const u32 row = wg * 64 + (threadIdx.x / 32) % 4 * 16 + lane / 4;
  const u32 swizzle = lane / 4;  // row % 8: the 128-byte swizzle's chunk mask for both rows
  // row + 8 stays in row's 32-row block (row % 16 < 8): its scales lie 8 x 16 bytes further
  const u32 scale_offset = q * 512 + nvfp4_scale_offset<true>(row);
  const u64 desc0 = smem_desc_k128_sw128(smem + L::kOffTokenTile);
  float acc[kTokens / 2];
  PipelineState<L::kNumStages> pipe;
  Tile t;
  while (walk.next(t)) {
    #pragma unroll
    for (int i = 0; i < kTokens / 2; ++i) acc[i] = 0.0f;
    int previous = -1;
    for (int kb = t.kb_begin; kb < t.kb_end; ++kb) {
      const int stage = warp_value<true>(pipe.stage);  // uniform: the wgmma descriptors stay in uniform registers
      full[stage].wait(pipe.phase);
      if constexpr (!kDecodedTokens) decoded[stage].wait(pipe.phase);
      pipe.advance();
      const u32 base = smem_addr(smem) + stage * L::kStageBytes;
      uint4 packed[2][2];  // [row, row + 8][bytes 32q + 16c ..]
      u32 scales[2];
      #pragma unroll
      for (int r = 0; r < 2; ++r) {
        const u32 at = base + L::kOffWeights + (row + 8 * r) * kStreamRowBytes;
        packed[r][0] = ld_shared_v4(at + ((2 * q) ^ swizzle) * 16);
        packed[r][1] = ld_shared_v4(at + ((2 * q + 1) ^ swizzle) * 16);
        scales[r] = ld_shared_u32(base + L::kOffWeightScales + scale_offset + r * 8 * 16);
      }
      // the 8 scale factors, [row, row + 8][batches 0-1, 2-3]: batch b's is half b % 2 of word b / 2
      const u32 factors[2][2] = {{e2m1_pair_factors(scales[0], 0), e2m1_pair_factors(scales[0], 1)},
                                 {e2m1_pair_factors(scales[1], 0), e2m1_pair_factors(scales[1], 1)}};
      const u64 desc_stage = desc0 + static_cast<u64>(stage * L::kStageBytes / 16);
      // Four batches of 16 values per row (one scale each), each 4 wgmma; a batch's decode overlaps
      // the previous batch's wgmma, whose registers are free again after the wait.
      // NOTES: 64x8 wgmma at 80 registers (two CTAs per SM) with a batch in flight over the next
      // one's decode: ptxas (NVRTC 13.5) serialises every wgmma (C7512, a wait after each); waiting
      // for each batch before the next decode keeps its 4 wgmma back to back, in 71 registers.
      constexpr int kPendingBatches = kTokens == 8 && kCtasPerSm > 1 ? 0 : 1;
      #pragma unroll
      for (int b = 0; b < 4; ++b) {
        const u32 factor0 = bf16_broadcast(factors[0][b / 2], b % 2);
        const u32 factor1 = bf16_broadcast(factors[1][b / 2], b % 2);
        const uint4& v0 = packed[0][b / 2];
        const uint4& v1 = packed[1][b / 2];
        u32 lo[2][4], hi[2][4];  // [word c][nibble pair] of row and row + 8
        decode_e2m1_pairs(b % 2 ? v0.z : v0.x, factor0, lo[0]);
        decode_e2m1_pairs(b % 2 ? v0.w : v0.y, factor0, lo[1]);
        decode_e2m1_pairs(b % 2 ? v1.z : v1.x, factor1, hi[0]);
        decode_e2m1_pairs(b % 2 ? v1.w : v1.y, factor1, hi[1]);
        wgmma_fence();
        #pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
          const int j = 4 * b + jj, word = jj / 2, pair = 2 * (jj % 2);
          const u32 a[4] = {lo[word][pair], hi[word][pair], lo[word][pair + 1], hi[word][pair + 1]};
          // chunk j: slab j / 4, 32 bytes of K per chunk inside the 128-byte row
          WgmmaRegA<kTokens>::mma(acc, a, desc_stage + (j / 4) * (L::kTokenSlabBytes / 16) + (j % 4) * 2, 1);
        }
        wgmma_commit();
        wgmma_wait<kPendingBatches>();
        if (b == 0 && previous >= 0) empty[previous].arrive();  // its last batch completed
      }
      previous = stage;
    }
    wgmma_wait<0>();
    #pragma unroll
    for (int i = 0; i < kTokens / 2; ++i) fence_operand(acc[i]);
    if (previous >= 0) empty[previous].arrive();
    // acc[4i + 2r + e]: weight row (row + 8r), group row 8i + 2q + e of the tile; both operands'
    // pair-decoded values carry kE2m1PairScale, taken back exactly before the expert's scale
    constexpr float kUnscale = 1.0f / (kE2m1PairScale * kE2m1PairScale);
    const float scale = __ldg(expert_scales + t.group) * kUnscale;
    unsigned short* out = static_cast<unsigned short*>(out_ptr);
    #pragma unroll
    for (int i = 0; i < kTokens / 8; ++i) {
      #pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int token = t.row0 + 8 * i + 2 * static_cast<int>(q) + e;
        if (token >= t.row_end) continue;
        #pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int col = t.n_block * kStreamRows + static_cast<int>(row) + 8 * r;
          if (col < n) {
            out[static_cast<i64>(token) * out_ld + col] =
                static_cast<unsigned short>(pack_out2<kOutType>(acc[4 * i + 2 * r + e] * scale, 0.0f) & 0xFFFFu);
          }
        }
      }
    }
  }
}

template <int kTokens, int kNumStages, int kCtasPerSm, OutType kOutType, int kMaxGroups,
          bool kDecodedTokens = false>
__global__ void __launch_bounds__(384, kCtasPerSm)
    sm90_nvfp4_stream_gemm(const __grid_constant__ TmaDesc tmap_a, const __grid_constant__ TmaDesc tmap_b,
                           const __grid_constant__ TmaDesc tmap_sfa, const __grid_constant__ TmaDesc tmap_sfb,
                           const float* __restrict__ expert_scales, const int* __restrict__ group_offsets,
                           const int* __restrict__ expert_ids, const u32* __restrict__ group_scale_tiles,
                           const int* __restrict__ active_groups, int num_groups, int num_experts, int m, int n, int k,
                           int group_n, void* __restrict__ out_ptr, int out_ld) {
  using L = StreamLayout<kTokens, kNumStages, kMaxGroups, kDecodedTokens>;
  using W = StreamWalk<kTokens, kMaxGroups>;
  extern __shared__ __align__(1024) u8 smem_raw[];
  u8* smem = reinterpret_cast<u8*>((reinterpret_cast<u64>(smem_raw) + 1023) & ~static_cast<u64>(1023));
  const u32 barriers = smem_addr(smem + L::kOffBarriers);
  const BarrierRing full{barriers}, decoded{barriers + kNumStages * 8}, empty{barriers + 2 * kNumStages * 8};
  int* ints = reinterpret_cast<int*>(smem + L::kOffGroupTable);
  const GroupTable table{ints, ints + kMaxGroups, ints + 2 * kMaxGroups, ints + 3 * kMaxGroups};
  if (threadIdx.x == 0) {
    tma_prefetch_desc(&tmap_a);
    tma_prefetch_desc(&tmap_b);
    tma_prefetch_desc(&tmap_sfa);
    tma_prefetch_desc(&tmap_sfb);
    #pragma unroll
    for (int s = 0; s < kNumStages; ++s) {
      full[s].init(1);
      decoded[s].init(kStreamDecoders);
      empty[s].init(2 * 128);
    }
    fence_mbar_init();
  }
  grid_dependency_wait();  // the launch's set-up above may overlap the previous kernel (MATEGEMM_PDL)
  if (threadIdx.x / 32 == 1) {
    build_group_table<kGroupOffsets>(table, group_offsets, num_groups, m, 0, kTokens, active_groups);
  }
  __syncthreads();

  GemmArgs args{};
  args.m = m;
  args.n = n;
  args.k = k;
  args.group_n = group_n;
  args.num_splits = 1;
  args.group_info = group_offsets;
  args.num_groups = num_groups;
  args.group_experts = expert_ids;
  args.active_groups = active_groups;
  args.group_scale_tiles = group_scale_tiles;
  args.num_experts = num_experts;
  const int num_k_blocks = ceil_div(k, 2 * kStreamRowBytes);
  GemmScheduler<W> walk(args, table, num_k_blocks, num_k_blocks);
  const int warpgroup = warp_uniform(threadIdx.x / 128);
  if (warpgroup == 0) {
    if (threadIdx.x == 0) {
      stream_produce<L, kDecodedTokens>(smem, full, empty, walk, &tmap_a, &tmap_b, &tmap_sfa, &tmap_sfb, n, k);
    } else if (!kDecodedTokens && threadIdx.x >= 32) {
      stream_decode_tokens<L, kTokens>(smem, full, decoded, walk, threadIdx.x - 32);
    }
  } else {
    stream_consume<L, kTokens, kCtasPerSm, kOutType, kDecodedTokens>(smem, full, decoded, empty, walk,
                                                                     warpgroup - 1, expert_scales, n, out_ptr,
                                                                     out_ld);
  }
}

}  // namespace mategemm
