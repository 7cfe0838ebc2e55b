// sm90_fp8_gemm_blockscaled: D(m, n) = A(m, k) * B(n, k)^T with FP8 operands and FP32 block scales.
//
// Recipes: A scales per (row, 128-K block); B scales per (128-column block, 128-K block) when
// kScaleGranN == 128 (DeepSeek-V3's 1x128 / 128x128), or per (column, 128-K block) when 1.
// Scale tensors are read with run-time strides, so K-major and MN-major layouts share a binary.
//
// Warp roles: warpgroup 0 produces: one thread issues TMA loads of A and B into a ring of
// kNumStages swizzled stages, and warps 1-3 copy the stage's A and B scales (any strides) into
// shared memory beside them, so scale-load latency hides behind the whole ring. Warpgroups
// 1..kNumMathWG consume: each owns BLOCK_M / kNumMathWG rows of the tile in waves of 64, issues
// 4 x wgmma k32 per 128-K block and wave into a scratch accumulator, then promotes it into the
// main accumulator with the block scales on the CUDA cores. Persistent grid over the tiles.
//
// Clusters: with kClusterM = 2 the two CTAs of a cluster take vertically adjacent tiles of one
// N-block and each loads half of the shared B tile into both (TMA multicast); with kClusterN = 2
// they take horizontally adjacent tiles of one M-block and share A the same way.
//
// Grouped GEMMs (kGroupMode, common/groups.cuh) run on the same core: the M modes stack the
// groups' weights in B (rows group * n + ...) and their tokens in A; tiles follow the groups'
// rows, and tiles holding rows of another group are stored row by row. Ragged K walks each
// group's slice of K and adds its fp32 tile into out[group] with a TMA reduce; the batched mode
// (bmm) tiles each batch entry's output and stores it with a 3-D TMA (or reduces, for fp32).
//
// kScaleGranN == 0 (per-row A / per-tensor B scales, and 16-bit operands, which have none): no
// promotion; the wgmma accumulate over all of K and the scales are applied once at the end.
#pragma once
#include "common/epilogue.cuh"
#include "common/groups.cuh"
#include "common/pipeline.cuh"
#include "common/ptx.cuh"
#include "common/scheduler.cuh"
#include "common/wgmma.cuh"

namespace mategemm {

constexpr int kBlockK = 128;  // bytes of K per stage row: one 128-byte swizzled row; one scale block of FP8

// Operand codes (mategemm.types.OPERAND_CODES): 0 e4m3, 1 e5m2, 2 bf16, 3 fp16.
__host__ __device__ constexpr int operand_bytes(int type) { return type >= 2 ? 2 : 1; }

__host__ __device__ constexpr int const_gcd(int a, int b) { return b == 0 ? a : const_gcd(b, a % b); }

template <int BLOCK_M, int BLOCK_N, int kNumStages, int kScaleGranN, int kOutElemBytes, int kGroupMode, int kMaxGroups,
          int kMnMajor>
struct Fp8GemmSmemLayout {
  static constexpr int kOutBytes = BLOCK_M * BLOCK_N * kOutElemBytes;
  static constexpr int kABytes = BLOCK_M * kBlockK;
  static constexpr int kBBytes = BLOCK_N * kBlockK;
  // Scales of one stage. (1,128,128): per row, the products sa * sb with the tile's first B scale
  // block, then (if the tile can straddle two) with the next. (1,1,128): sa per row, sb per column.
  static constexpr bool kTwoScaleBlocks = kScaleGranN == 128 && 128 % BLOCK_N != 0;
  static constexpr int kSfFloats = kScaleGranN == 0     ? 0
                                   : kScaleGranN == 128 ? BLOCK_M * (kTwoScaleBlocks ? 2 : 1)
                                                        : BLOCK_M + BLOCK_N;
  static constexpr int kSfBytes = (kSfFloats * 4 + 15) & ~15;
  // MN-major operands (kMnMajor bit 0: A, bit 1: B) land untransposed in a staging area of the
  // stage: chunks of 128 K-rows x min(rows, 128) bytes, no swizzle.
  static constexpr int kStagingABytes = (kMnMajor & 1) ? kABytes : 0;
  static constexpr int kStagingBytes = kStagingABytes + ((kMnMajor & 2) ? kBBytes : 0);
  static constexpr int kOffA = kOutBytes;
  static constexpr int kOffB = kOffA + kNumStages * kABytes;
  static constexpr int kOffStaging = kOffB + kNumStages * kBBytes;
  static constexpr int kOffScales = kOffStaging + kNumStages * kStagingBytes;
  static constexpr int kOffBarriers = kOffScales + kNumStages * kSfBytes;
  // full and empty per stage; with staging also "staged" (the TMA loads landed)
  static constexpr int kNumBarrierSets = kMnMajor ? 3 : 2;
  static constexpr int kOffSplitFlag = kOffBarriers + kNumBarrierSets * kNumStages * 8;  // split-K: "this CTA reduces"
  // Grouped M modes: a byte per tile row, "this row belongs to the tile's group".
  static constexpr int kRowOkBytes = group_rows_checked<kGroupMode>() ? (BLOCK_M + 15) & ~15 : 0;
  static constexpr int kOffRowOk = kOffSplitFlag + 16;
  static constexpr int kOffGroupTable = kOffRowOk + kRowOkBytes;  // GroupTable: 3 ints per group
  // 1024 B of slack: the dynamic shared-memory base is aligned up to 1024 B in the kernel.
  static constexpr int kTotalBytes = kOffGroupTable + 3 * kMaxGroups * 4 + 1024;
  static_assert(kOutBytes % 1024 == 0 && kABytes % 1024 == 0 && kBBytes % 1024 == 0,
                "swizzled tiles must stay 1024-byte aligned");
};

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

template <int BLOCK_M>
__host__ __device__ constexpr int fp8_gemm_math_warpgroups() { return BLOCK_M == 64 ? 1 : 2; }

template <int BLOCK_M, int BLOCK_N, int kNumStages, int kScaleGranN, int kTypeA, int kTypeB, int kOutType,
          int kOutSwizzle, int kClusterM, int kClusterN, bool kSplitK, int kGroupMode, int kMaxGroups, int kMnMajor>
__global__ void __launch_bounds__((fp8_gemm_math_warpgroups<BLOCK_M>() + 1) * 128, 1)
sm90_fp8_gemm_blockscaled(const __grid_constant__ TmaDesc tmap_a, const __grid_constant__ TmaDesc tmap_b,
                          const __grid_constant__ TmaDesc tmap_d,
                          const float* __restrict__ sfa, int sfa_stride_m, int sfa_stride_k,
                          const float* __restrict__ sfb, int sfb_stride_n, int sfb_stride_k,
                          int m, int n, int k, int group_n, int a_box_rows, int num_splits,
                          float* __restrict__ split_workspace, int* __restrict__ split_counters,
                          const int* __restrict__ group_info, int num_groups, int group_stride, int sfa_stride_group,
                          int sfb_stride_group,
                          void* __restrict__ out_ptr, int out_ld, int* __restrict__ signal, int signal_blocks) {
  constexpr int kNumMathWG = fp8_gemm_math_warpgroups<BLOCK_M>();
  constexpr int kWaves = BLOCK_M / 64 / kNumMathWG;  // 64-row waves per math warpgroup
  constexpr int kAcc = BLOCK_N / 2;  // fp32 accumulators per thread for m64nBLOCK_N
  constexpr int kCluster = kClusterM * kClusterN;
  constexpr bool kOutAdd = kOutType == kOutF32Add;  // fp32 output, added into `out` (3-D outputs)
  constexpr int kOutElemBytes = kOutAdd ? 4 : 2;
  constexpr bool kRowsChecked = group_rows_checked<kGroupMode>();
  using Layout = Fp8GemmSmemLayout<BLOCK_M, BLOCK_N, kNumStages, kScaleGranN, kOutElemBytes, kGroupMode, kMaxGroups,
                                   kMnMajor>;
  static_assert(BLOCK_M == 64 || BLOCK_M == 128 || BLOCK_M == 256, "BLOCK_M is 64, 128 or 256");
  // NOTES: the three scale warps fill stages out of order; a warp may run at most one ring
  // ahead of the consumers (mbarrier parity tells only one phase apart) only if the ring has
  // at least as many stages as there are scale warps.
  static_assert(kNumStages >= 3, "the scale warps need at least 3 stages");
  static_assert(BLOCK_N % 8 == 0 && BLOCK_N >= 8 && BLOCK_N <= 256, "BLOCK_N is a multiple of 8 in [8, 256]");
  static_assert(BLOCK_N % (kOutSwizzle / kOutElemBytes) == 0, "output swizzle chunk must divide BLOCK_N");
  static_assert(group_has_table<kGroupMode>() == (kMaxGroups > 0) && (kMaxGroups & (kMaxGroups - 1)) == 0,
                "the group table's capacity is a power of two, present exactly in the segment modes");
  static_assert(kGroupMode == kGroupNone || (!kSplitK && kClusterM == 1),
                "grouped GEMMs: no split-K; no cluster along M (its two tiles may belong to different groups)");
  static_assert((!kOutAdd || group_out_3d<kGroupMode>()) && (kGroupMode != kGroupK || (kOutAdd && kScaleGranN == 1)),
                "fp32 output is added into a 3-D output; ragged K adds fp32, with the (1,1,128) recipe");
  static_assert(!kSplitK || (kCluster == 1 && kWaves == 1), "split-K is for one-wave tiles without clusters");
  static_assert(kCluster <= 2 && (kClusterM == 1 || BLOCK_N % 16 == 0) && (kClusterN == 1 || BLOCK_M % 16 == 0),
                "a cluster is 1 or 2 CTAs; each CTA's half of the shared tile must stay 1024-byte aligned");
  // NOTES: a tile may straddle at most two 128-column scale blocks of B (checked for every
  // aligned start n0 = j * BLOCK_N): BLOCK_N <= 128 + gcd(BLOCK_N, 128).
  static_assert(kScaleGranN == 0 || kScaleGranN == 1 || (kScaleGranN == 128 && BLOCK_N <= 128 + const_gcd(BLOCK_N, 128)),
                "BLOCK_N would straddle three B scale blocks");
  // kScaleGranN == 0: scales per row of A and per tensor of B, applied once to the finished
  // accumulator; the wgmma accumulate across all of K with no promotion and no scale warps.
  constexpr bool kScaleAtEnd = kScaleGranN == 0;
  static_assert(!kScaleAtEnd || !kSplitK, "scales applied at the end: no split-K");
  // 16-bit operands (bmm_fp16): no scales at all; a stage row of 128 bytes holds 64 elements of K.
  constexpr bool kUnscaled = operand_bytes(kTypeA) == 2;
  constexpr int kBlockKElems = kBlockK / operand_bytes(kTypeA);
  static_assert(operand_bytes(kTypeA) == operand_bytes(kTypeB) &&
                    (!kUnscaled || (kTypeA == kTypeB && kScaleAtEnd &&
                                    (kGroupMode == kGroupNone || kGroupMode == kGroupBatched))),
                "16-bit operands: the same type on both sides, unscaled, dense or batched");
  // MN-major FP8 operands are transposed in shared memory by the producer's warps 1-3; an operand
  // shared by a cluster pair stays K-major (each CTA would need the whole staged tile). A TMA box
  // must start 16-byte aligned along its contiguous dimension: an M-major A only in the modes
  // whose tiles start at multiples of BLOCK_M (not the packed segments, which start anywhere).
  static_assert(kMnMajor == 0 || (!kUnscaled && kMnMajor <= 3 &&
                                  (!(kMnMajor & 1) || (kClusterN == 1 && BLOCK_M % 64 == 0 &&
                                                       kGroupMode != kGroupCounts && kGroupMode != kGroupPsum &&
                                                       kGroupMode != kGroupMasked)) &&
                                  (!(kMnMajor & 2) || (kClusterM == 1 && BLOCK_N % 64 == 0))),
                "MN-major operands: FP8, tiles of 64, 128 or 256 rows, not shared by a cluster, aligned A tiles");

  // NOTES: every math thread arrives on the stage's empty barrier itself, so its scale reads are
  // ordered before the scale warp's next write by the barrier alone (racecheck follows that, not
  // a __syncwarp before one lane's arrive). The peer CTA's producer also overwrites this CTA's
  // stage (multicast): one lane per math warp arrives on the peer's barrier.
  constexpr int kEmptyArrivals = kNumMathWG * 128 + (kCluster - 1) * kNumMathWG * 4;

  // NOTES: setmaxnreg moves registers inside the CTA's launch allocation (168 x 384 threads
  // under __launch_bounds__(384, 1)); asking for more than the producer released blocks forever.
  // Transposing MN-major operands takes the producer's warps 1-3 past 40 registers: 56, or 64
  // beside per-column B scales (56 spilled there); the promoted 128x128 math spilled at 216.
  constexpr int kProducerRegs = !kMnMajor ? 40 : kScaleGranN == 1 ? 64 : 56;
  constexpr int kMathRegs = !kMnMajor ? 232 : kScaleGranN == 1 ? 216 : 224;
  static_assert(kNumMathWG == 1 || kProducerRegs * 128 + kMathRegs * kNumMathWG * 128 <= 168 * 384,
                "register split exceeds the CTA's allocation");

  extern __shared__ __align__(1024) u8 smem_raw[];
  u8* smem = reinterpret_cast<u8*>((reinterpret_cast<u64>(smem_raw) + 1023) & ~static_cast<u64>(1023));
  u8* smem_out = smem;
  u8* smem_a = smem + Layout::kOffA;
  u8* smem_b = smem + Layout::kOffB;
  // Scales and barriers by 32-bit shared-memory address: stage s's at base + s * size.
  const u32 scales_addr = smem_addr(smem + Layout::kOffScales);
  const u32 full_bar = smem_addr(smem + Layout::kOffBarriers);
  const u32 empty_bar = full_bar + kNumStages * 8;
  const u32 staged_bar = empty_bar + kNumStages * 8;  // with MN-major operands: the stage's TMA loads landed

  const int warpgroup = warp_uniform(threadIdx.x / 128);
  // A 16-bit K tail is zero-filled by TMA; FP8's K is a multiple of 128 (checked on the host).
  const int num_k_blocks = kUnscaled ? ceil_div(k, kBlockKElems) : k / kBlockK;
  // Split-K: work item `split` of a tile covers k-blocks [split, split + 1) * k_blocks_per_split
  // (the host picks num_splits so that none is empty; it passes 1 unless kSplitK).
  const int k_blocks_per_split = kSplitK ? ceil_div(num_k_blocks, num_splits) : num_k_blocks;

  // ---- set-up: barriers and descriptor prefetch ----
  if (threadIdx.x == 0) {
    tma_prefetch_desc(&tmap_a);
    tma_prefetch_desc(&tmap_b);
    tma_prefetch_desc(&tmap_d);
    #pragma unroll
    for (int s = 0; s < kNumStages; ++s) {
      // Arrivals: the TMA thread and every lane of the stage's scale warp; with staging, every lane
      // of the three warps that transpose the stage together (after the scales, if any).
      mbar_init(full_bar + s * 8, kMnMajor ? 3 * 32 : kScaleAtEnd ? 1 : 1 + 32);
      mbar_init(empty_bar + s * 8, kEmptyArrivals);
      if constexpr (kMnMajor != 0) mbar_init(staged_bar + s * 8, 1);
    }
    fence_mbar_init();
  }
  int* group_ints = reinterpret_cast<int*>(smem + Layout::kOffGroupTable);
  const GroupTable table{group_ints, group_ints + kMaxGroups, group_ints + 2 * kMaxGroups};
  if constexpr (group_has_table<kGroupMode>()) {
    if (threadIdx.x / 32 == 1) {
      build_group_table<kGroupMode>(table, group_info, num_groups, kGroupMode == kGroupK ? k : m, group_stride, BLOCK_M);
    }
  }
  // The peer's multicast loads and arrivals target these barriers: they must exist first.
  if constexpr (kCluster > 1) cluster_sync(); else __syncthreads();

  // M-blocks of the persistent loop: the dense tiling of m rows; the groups' tiles (segment
  // modes); every group's tiling of its m x n output (ragged K).
  int num_m_blocks = ceil_div(m, BLOCK_M);
  if constexpr (group_out_3d<kGroupMode>()) {
    num_m_blocks *= num_groups;
  } else if constexpr (group_has_table<kGroupMode>()) {
    num_m_blocks = num_groups > 0 ? table.tile_end[num_groups - 1] : 0;
  }
  TileScheduler<kClusterM, kClusterN> scheduler(num_m_blocks, ceil_div(n, BLOCK_N), group_n, num_splits);
  const u32 peer_cta = scheduler.rank ^ 1;
  PipelineState<kNumStages> pipe;

  // The next work item of this CTA, skipping tiles with nothing to compute; false when none is left.
  // Every role walks the same sequence.
  struct Tile {
    int m_block, n_block, split;
    int group;     // the tile's group (0 for a dense GEMM)
    int row0;      // first row of the output (of its group's output for 3-D outputs)
    int a_row0;    // first row of A (and of A's scales)
    int row_end;   // end of the group's rows (m when the rows end with the tensor)
    int kb_begin, kb_end;  // the K blocks to accumulate
  };
  auto next_tile = [&](Tile& t) -> bool {
    while (scheduler.next(t.m_block, t.n_block, t.split)) {
      t.group = 0;
      t.row0 = t.m_block * BLOCK_M;
      t.row_end = m;
      t.kb_begin = t.split * k_blocks_per_split;
      t.kb_end = min(num_k_blocks, t.kb_begin + k_blocks_per_split);
      if constexpr (kGroupMode == kGroupIds) {
        t.group = __ldg(group_info + t.row0);
        if (t.group < 0 || t.group >= num_groups) continue;  // padding rows: nothing to compute
      } else if constexpr (kGroupMode == kGroupBatched) {
        const int m_blocks_per_group = ceil_div(m, BLOCK_M);
        t.group = t.m_block / m_blocks_per_group;
        t.row0 = (t.m_block - t.group * m_blocks_per_group) * BLOCK_M;
      } else if constexpr (kGroupMode == kGroupK) {
        const int m_blocks_per_group = ceil_div(m, BLOCK_M);
        t.group = t.m_block / m_blocks_per_group;
        t.row0 = (t.m_block - t.group * m_blocks_per_group) * BLOCK_M;
        t.kb_begin = table.row_start[t.group] / kBlockK;
        t.kb_end = (table.row_start[t.group] + table.rows[t.group]) / kBlockK;
        if (t.kb_begin == t.kb_end) continue;  // an empty group adds nothing
      } else if constexpr (group_has_table<kGroupMode>()) {
        t.group = find_group<kMaxGroups>(table.tile_end, num_groups, t.m_block);
        const int first_tile = t.group == 0 ? 0 : table.tile_end[t.group - 1];
        t.row0 = table.row_start[t.group] + (t.m_block - first_tile) * BLOCK_M;
        t.row_end = table.row_start[t.group] + table.rows[t.group];
      }
      t.a_row0 = (kGroupMode == kGroupBatched ? t.group * m : 0) + t.row0;
      return true;
    }
    return false;
  };
  // B's rows: grouped M modes stack the groups' (n, k) weights.
  constexpr bool kGroupedB = kGroupMode != kGroupNone && kGroupMode != kGroupK;

  if (warpgroup == 0) {
    if constexpr (kNumMathWG > 1) setmaxnreg_dec<kProducerRegs>();
    const int warp = threadIdx.x / 32;
    if (threadIdx.x == 0) {
      // ---- producer: one thread streams A and B tiles through the ring ----
      Tile t;
      while (next_tile(t)) {
        const int b_row0 = (kGroupedB ? t.group * n : 0) + t.n_block * BLOCK_N;
        for (int kb = t.kb_begin; kb < t.kb_end; ++kb) {
          const u32 bar = (kMnMajor ? staged_bar : full_bar) + pipe.stage * 8;
          mbar_wait(empty_bar + pipe.stage * 8, pipe.phase ^ 1);
          mbar_arrive_expect_tx(bar, ((kMnMajor & 1) ? BLOCK_M : a_box_rows) * kBlockK + Layout::kBBytes);
          // A shared tile: this CTA loads its half (the descriptor's box is half the rows) into both.
          u8* a_dst = smem_a + pipe.stage * Layout::kABytes;
          u8* b_dst = smem_b + pipe.stage * Layout::kBBytes;
          // MN-major operands: boxes of 128 K-rows x min(rows, 128) bytes into the staging area;
          // the descriptors view them as (K rows of all groups, MN).
          u8* staging = smem + Layout::kOffStaging + pipe.stage * Layout::kStagingBytes;
          const int mn_k_row = kb * kBlockK;
          if constexpr (kMnMajor & 1) {
            constexpr int kWidth = BLOCK_M < 128 ? BLOCK_M : 128;
            const int k_row = (kGroupMode == kGroupBatched ? t.group * k : 0) + mn_k_row;
            #pragma unroll
            for (int c = 0; c < BLOCK_M / kWidth; ++c) {
              tma_load_2d(staging + c * kWidth * kBlockK, &tmap_a, bar, t.row0 + c * kWidth, k_row);
            }
          } else if constexpr (kClusterN == 1) {
            tma_load_2d(a_dst, &tmap_a, bar, kb * kBlockKElems, t.a_row0);
          } else {
            constexpr int kHalfRows = BLOCK_M / 2;
            const int offset = scheduler.rank * kHalfRows;
            tma_load_2d_multicast(a_dst + offset * kBlockK, &tmap_a, bar, kb * kBlockKElems, t.a_row0 + offset, 0x3);
          }
          if constexpr (kMnMajor & 2) {
            constexpr int kWidth = BLOCK_N < 128 ? BLOCK_N : 128;
            const int k_row = (kGroupedB ? t.group * k : 0) + mn_k_row;
            #pragma unroll
            for (int c = 0; c < BLOCK_N / kWidth; ++c) {
              tma_load_2d(staging + Layout::kStagingABytes + c * kWidth * kBlockK, &tmap_b, bar,
                          t.n_block * BLOCK_N + c * kWidth, k_row);
            }
          } else if constexpr (kClusterM == 1) {
            tma_load_2d(b_dst, &tmap_b, bar, kb * kBlockKElems, b_row0);
          } else {
            constexpr int kHalfRows = BLOCK_N / 2;
            const int offset = scheduler.rank * kHalfRows;
            tma_load_2d_multicast(b_dst + offset * kBlockK, &tmap_b, bar, kb * kBlockKElems, b_row0 + offset, 0x3);
          }
          pipe.advance();
        }
      }
    } else if (warp > 0 && (!kScaleAtEnd || kMnMajor != 0)) {
      // ---- scale warps 1-3: warp w fills the scales of iterations i with i % 3 == w - 1; with
      // MN-major operands all three transpose every stage's staged tiles into its K-major ones ----
      constexpr int kNumScaleWarps = 3;
      const int lane = threadIdx.x % 32;
      const int num_n_scale_blocks = ceil_div(n, 128);
      int iter = 0;
      Tile t;
      while (next_tile(t)) {
        const int m0 = t.row0, n0 = t.n_block * BLOCK_N;
        const float* sfa_tile = sfa + (kGroupMode == kGroupBatched ? static_cast<i64>(t.group) * sfa_stride_group : 0);
        const float* sfb_group = sfb + t.group * sfb_stride_group;
        for (int kb = t.kb_begin; kb < t.kb_end; ++kb, ++iter) {
          const bool scales_here = iter % kNumScaleWarps == warp - 1;
          if (!kMnMajor && !scales_here) continue;
          const int stage = iter % kNumStages;
          mbar_wait(empty_bar + stage * 8, ((iter / kNumStages) & 1) ^ 1);
          if (!kScaleAtEnd && scales_here) {
            const u32 sf = scales_addr + stage * Layout::kSfBytes;
            // Issue every load of the stage, then store: one memory latency per stage.
            float va[ceil_div(BLOCK_M, 32)];
            #pragma unroll
            for (int i = 0; i < ceil_div(BLOCK_M, 32); ++i) {
              const int row = m0 + lane + 32 * i;
              va[i] = row < m ? ldg_nc(sfa_tile + (row * sfa_stride_m + kb * sfa_stride_k)) : 0.0f;  // < 2^31: checked on the host
            }
            if constexpr (kScaleGranN == 128) {
              // NOTES: the products are formed here, so the math warps' promotion needs no FMUL
              // waiting on a shared-memory load; ptxas had put those between the wgmma of a batch.
              const int block0 = n0 / 128;
              const float sb0 = ldg_nc(sfb_group + (block0 * sfb_stride_n + kb * sfb_stride_k));
              const float sb1 = Layout::kTwoScaleBlocks
                                    ? ldg_nc(sfb_group + (min(block0 + 1, num_n_scale_blocks - 1) * sfb_stride_n + kb * sfb_stride_k))
                                    : 0.0f;
              #pragma unroll
              for (int i = 0; i < ceil_div(BLOCK_M, 32); ++i) {
                const int row = lane + 32 * i;
                if (row < BLOCK_M) {
                  st_shared_f32(sf + row * 4, va[i] * sb0);
                  if constexpr (Layout::kTwoScaleBlocks) st_shared_f32(sf + (BLOCK_M + row) * 4, va[i] * sb1);
                }
              }
            } else {
              float vb[ceil_div(BLOCK_N, 32)];
              #pragma unroll
              for (int i = 0; i < ceil_div(BLOCK_N, 32); ++i) {
                const int col = n0 + lane + 32 * i;
                vb[i] = lane + 32 * i < BLOCK_N && col < n ? ldg_nc(sfb_group + (col * sfb_stride_n + kb * sfb_stride_k)) : 0.0f;
              }
              #pragma unroll
              for (int i = 0; i < ceil_div(BLOCK_M, 32); ++i) {
                if (lane + 32 * i < BLOCK_M) st_shared_f32(sf + (lane + 32 * i) * 4, va[i]);
              }
              #pragma unroll
              for (int i = 0; i < ceil_div(BLOCK_N, 32); ++i) {
                if (lane + 32 * i < BLOCK_N) st_shared_f32(sf + (BLOCK_M + lane + 32 * i) * 4, vb[i]);
              }
            }
          }
          if constexpr (kMnMajor != 0) {
            mbar_wait(staged_bar + stage * 8, (iter / kNumStages) & 1);
            const u32 staging = smem_addr(smem + Layout::kOffStaging + stage * Layout::kStagingBytes);
            if constexpr (kMnMajor & 1) {
              transpose_stage_to_k_major<BLOCK_M, kNumScaleWarps>(
                  staging, smem_addr(smem_a + stage * Layout::kABytes), lane, warp - 1);
            }
            if constexpr (kMnMajor & 2) {
              transpose_stage_to_k_major<BLOCK_N, kNumScaleWarps>(
                  staging + Layout::kStagingABytes, smem_addr(smem_b + stage * Layout::kBBytes), lane, warp - 1);
            }
            fence_proxy_async_smem();  // the wgmma (async proxy) read what these stores wrote
          }
          mbar_arrive(full_bar + stage * 8);  // release: the stores above are visible to the waiters
        }
      }
    }
  } else {
    // ---- consumers: wgmma per 128-K block, promotion with the block scales, epilogue ----
    if constexpr (kNumMathWG > 1) setmaxnreg_inc<kMathRegs>();
    const int math_wg = warpgroup - 1;
    const int warp = (threadIdx.x / 32) % 4;
    const int lane = threadIdx.x % 32;
    const bool wg_leader = (threadIdx.x % 128) == 0;
    const u32 smem_out_addr = smem_addr(smem_out);
    const u32 split_flag = smem_addr(smem + Layout::kOffSplitFlag);
    const u32 row_ok_addr = smem_addr(smem + Layout::kOffRowOk);
    constexpr int kSplitBarrier = 1 + kNumMathWG;  // after the epilogue's per-warpgroup barriers
    const u64 desc_a0 = smem_desc_k128_sw128(smem_a);  // stage 0, tile row 0
    const u64 desc_b0 = smem_desc_k128_sw128(smem_b);
    // Wave w of this warpgroup covers tile rows wave_row0(w) .. + 63.
    auto wave_row0 = [&](int wave) { return (math_wg * kWaves + wave) * 64; };

    // NOTES: with a second scratch accumulator, the wgmma of k-block kb + 1 runs while kb is
    // promoted, so the tensor cores are not idle during promotion. It costs BLOCK_N / 2 more
    // registers per thread: affordable up to BLOCK_N 128 with one wave (acc + 2 scratch = 192
    // of 232). With two waves (BLOCK_M 256) the other warpgroup's wgmma covers the promotion.
    // NOTES (experiment, off until timed: tools/experiments/promotion_cost.sh, variant "pingpong"):
    // the two math warpgroups take turns issuing their k-block batches (a named-barrier hand-off),
    // so one warpgroup's batch is queued while the other waits and promotes; in lockstep both wait
    // at the same moment and the tensor queue drains (notebook v9).
    constexpr bool kPingPongEnabled = false;
    constexpr bool kPingPong = kPingPongEnabled && kNumMathWG == 2 && kWaves == 1 && !kScaleAtEnd;
    constexpr int kTurnBarrier0 = 2 + kNumMathWG, kTurnBarrier1 = 3 + kNumMathWG;  // after split-K's
    bool first_turn = true;  // warpgroup 0's very first batch waits for no one
    // Before issuing a batch: wait until the other warpgroup issued its batch of the k-block before
    // (warpgroup 0) or of the same k-block (warpgroup 1). After: let the other one go.
    auto take_turn = [&]() {
      if constexpr (kPingPong) {
        if (math_wg == 1) {
          named_barrier_sync(kTurnBarrier1, 256);
        } else if (!first_turn) {
          named_barrier_sync(kTurnBarrier0, 256);
        }
        first_turn = false;
      }
    };
    auto pass_turn = [&]() {
      if constexpr (kPingPong) named_barrier_arrive(math_wg == 0 ? kTurnBarrier1 : kTurnBarrier0, 256);
    };
    constexpr bool kOverlap = kScaleGranN == 128 && BLOCK_N <= 128 && kWaves == 1 && !kPingPong;
    float acc[kWaves * kAcc];
    float part0[kAcc];
    float part1[kOverlap ? kAcc : 1];

    Tile t;
    while (next_tile(t)) {
      const int m0 = t.row0;
      const int n0 = t.n_block * BLOCK_N;
      const int num_blocks = t.kb_end - t.kb_begin;  // k-blocks of this work item

      // The rows of wave 0 this thread owns (wgmma layout: lane/4 and lane/4 + 8 of its warp's 16).
      const int thread_row = wave_row0(0) + warp * 16 + lane / 4;
      // B scales: with 128-column blocks, chunks of 8 columns before `first_chunks` use block
      // n0 / 128, the rest the next block.
      const int first_chunks = (128 - n0 % 128) / 8;

      #pragma unroll
      for (int i = 0; i < kWaves * kAcc; ++i) acc[i] = 0.0f;

      // Waits until the next stage is full; returns it.
      auto wait_stage = [&]() -> int {
        const int stage = pipe.stage;
        mbar_wait(full_bar + stage * 8, pipe.phase);
        pipe.advance();
        return stage;
      };

      // Issues wave `wave`'s 4 wgmma of `stage` into `part`, then reads the wave's scales.
      auto issue = [&](float* part, BlockScales& sc, int stage, int wave) {
        // The descriptors' address field is (address >> 4): stages and rows are constant steps.
        const u64 desc_a = desc_a0 + (stage * Layout::kABytes + wave_row0(wave) * kBlockK) / 16;
        const u64 desc_b = desc_b0 + stage * (Layout::kBBytes / 16);
        #pragma unroll
        for (int i = 0; i < kAcc; ++i) fence_operand(part[i]);
        wgmma_fence();
        #pragma unroll
        for (int kk = 0; kk < kBlockK / 32; ++kk) {
          // Advancing the start address by 32 B walks K inside the 128-byte swizzled row.
          Wgmma<BLOCK_N>::template mma<kTypeA, kTypeB>(part, desc_a + kk * 2, desc_b + kk * 2, kk > 0);
        }
        wgmma_commit();
        // The scales are needed only at promotion: read while the wgmma runs.
        const u32 sf = scales_addr + stage * Layout::kSfBytes + (thread_row + wave * 64) * 4;
        sc.lo[0] = ld_shared_f32(sf);
        sc.hi[0] = ld_shared_f32(sf + 8 * 4);
        if constexpr (Layout::kTwoScaleBlocks) {
          sc.lo[1] = ld_shared_f32(sf + BLOCK_M * 4);
          sc.hi[1] = ld_shared_f32(sf + (BLOCK_M + 8) * 4);
        }
      };

      // Hands a stage back once this thread's reads of it are done (its wgmma completed).
      auto release = [&](int stage) {
        mbar_arrive(empty_bar + stage * 8);
        if constexpr (kCluster > 1) {
          if (lane == 0) mbar_arrive_cluster(empty_bar + stage * 8, peer_cta);
        }
      };

      // After `part`'s wgmma completed: out += part * scales in FP32. With per-column B scales
      // the stage's scales are read here, so the caller releases the stage afterwards.
      auto promote = [&](float* out, float* part, const BlockScales& sc, int stage) {
        #pragma unroll
        for (int i = 0; i < kAcc; ++i) fence_operand(part[i]);
        if constexpr (kScaleGranN == 128) {
          if constexpr (!Layout::kTwoScaleBlocks) {
            // The tile lies inside one 128-column scale block: one scale pair for all columns.
            #pragma unroll
            for (int c = 0; c < BLOCK_N / 8; ++c) promote_chunk(out + c * 4, part + c * 4, sc.lo[0], sc.hi[0]);
          } else {
            #pragma unroll
            for (int c = 0; c < BLOCK_N / 8; ++c) {
              const bool first = c < first_chunks;  // a select: an index would put sc in local memory
              promote_chunk(out + c * 4, part + c * 4, first ? sc.lo[0] : sc.lo[1], first ? sc.hi[0] : sc.hi[1]);
            }
          }
        } else {
          const u32 sf = scales_addr + stage * Layout::kSfBytes + (BLOCK_M + (lane % 4) * 2) * 4;
          #pragma unroll
          for (int c = 0; c < BLOCK_N / 8; ++c) {
            const float sb_lo = ld_shared_f32(sf + c * 32), sb_hi = ld_shared_f32(sf + c * 32 + 4);
            out[c * 4 + 0] = fmaf(part[c * 4 + 0], sc.lo[0] * sb_lo, out[c * 4 + 0]);
            out[c * 4 + 1] = fmaf(part[c * 4 + 1], sc.lo[0] * sb_hi, out[c * 4 + 1]);
            out[c * 4 + 2] = fmaf(part[c * 4 + 2], sc.hi[0] * sb_lo, out[c * 4 + 2]);
            out[c * 4 + 3] = fmaf(part[c * 4 + 3], sc.hi[0] * sb_hi, out[c * 4 + 3]);
          }
        }
      };

      if constexpr (kOverlap) {
        // Two scratch accumulators in turn: k-block kb + 1's wgmma runs while kb is promoted.
        // NOTES: no wgmma is in flight across the loop's back edge or a conditional issue; with
        // either, ptxas serialised every wgmma (C7514) or injected waits before promotion (C7517).
        BlockScales sc0, sc1;
        int stage0 = wait_stage(), stage1;
        issue(part0, sc0, stage0, 0);
        wgmma_wait<0>();
        int kb = 0;
        for (; kb + 2 < num_blocks; kb += 2) {  // part0 holds k-block kb, complete
          stage1 = wait_stage();
          issue(part1, sc1, stage1, 0);
          release(stage0);
          promote(acc, part0, sc0, stage0);
          wgmma_wait<0>();
          stage0 = wait_stage();
          issue(part0, sc0, stage0, 0);
          release(stage1);
          promote(acc, part1, sc1, stage1);
          wgmma_wait<0>();
        }
        if (kb + 1 < num_blocks) {
          stage1 = wait_stage();
          issue(part1, sc1, stage1, 0);
          release(stage0);
          promote(acc, part0, sc0, stage0);
          wgmma_wait<0>();
          release(stage1);
          promote(acc, part1, sc1, stage1);
        } else {
          release(stage0);
          promote(acc, part0, sc0, stage0);
        }
      } else if constexpr (kScaleAtEnd) {
        // Every wave accumulates in place over all of K; a stage is released once the next
        // k-block's wgmma are issued and its own have completed (one batch stays in flight).
        int previous = -1;
        for (int kb = 0; kb < num_blocks; ++kb) {
          const int stage = wait_stage();
          #pragma unroll
          for (int i = 0; i < kWaves * kAcc; ++i) fence_operand(acc[i]);
          wgmma_fence();
          #pragma unroll
          for (int wave = 0; wave < kWaves; ++wave) {
            const u64 desc_a = desc_a0 + (stage * Layout::kABytes + wave_row0(wave) * kBlockK) / 16;
            const u64 desc_b = desc_b0 + stage * (Layout::kBBytes / 16);
            #pragma unroll
            for (int kk = 0; kk < kBlockK / 32; ++kk) {
              Wgmma<BLOCK_N>::template mma<kTypeA, kTypeB>(acc + wave * kAcc, desc_a + kk * 2, desc_b + kk * 2,
                                                              kb > 0 || kk > 0);
            }
          }
          wgmma_commit();
          #pragma unroll
          for (int i = 0; i < kWaves * kAcc; ++i) fence_operand(acc[i]);
          wgmma_wait<1>();
          if (previous >= 0) release(previous);
          previous = stage;
        }
        wgmma_wait<0>();
        #pragma unroll
        for (int i = 0; i < kWaves * kAcc; ++i) fence_operand(acc[i]);
        if (previous >= 0) release(previous);
        // acc *= sa(row) * sb: per-row (or broadcast per-tensor) A scales, one B scale per group.
        if constexpr (!kUnscaled) {
          const float* sfa_rows = sfa + (kGroupMode == kGroupBatched ? static_cast<i64>(t.group) * sfa_stride_group : 0);
          const float sb = ldg_nc(sfb + static_cast<i64>(t.group) * sfb_stride_group);
          #pragma unroll
          for (int wave = 0; wave < kWaves; ++wave) {
            const int row = m0 + wave_row0(wave) + warp * 16 + lane / 4;
            const float s_lo = row < m ? ldg_nc(sfa_rows + static_cast<i64>(row) * sfa_stride_m) * sb : 0.0f;
            const float s_hi = row + 8 < m ? ldg_nc(sfa_rows + static_cast<i64>(row + 8) * sfa_stride_m) * sb : 0.0f;
            #pragma unroll
            for (int c = 0; c < BLOCK_N / 8; ++c) {
              acc[wave * kAcc + c * 4 + 0] *= s_lo;
              acc[wave * kAcc + c * 4 + 1] *= s_lo;
              acc[wave * kAcc + c * 4 + 2] *= s_hi;
              acc[wave * kAcc + c * 4 + 3] *= s_hi;
            }
          }
        }
      } else {
        for (int kb = 0; kb < num_blocks; ++kb) {
          const int stage = wait_stage();
          #pragma unroll
          for (int wave = 0; wave < kWaves; ++wave) {
            BlockScales sc;
            take_turn();
            issue(part0, sc, stage, wave);
            pass_turn();
            wgmma_wait<0>();
            if (kScaleGranN == 128 && wave == kWaves - 1) release(stage);
            promote(acc + wave * kAcc, part0, sc, stage);
          }
          if constexpr (kScaleGranN != 128) release(stage);
        }
      }

      // ---- split-K: every work item leaves its partial tile in the workspace; the tile's last
      // one to finish sums all partials in split order (deterministic) and stores the result ----
      if constexpr (kSplitK) {
        constexpr int kMathThreads = kNumMathWG * 128;
        constexpr int kTileFloats = BLOCK_M * BLOCK_N;
        const int tid = threadIdx.x - 128;
        const int tile = t.m_block * ceil_div(n, BLOCK_N) + t.n_block;
        float* partials = split_workspace + static_cast<i64>(tile) * num_splits * kTileFloats;
        #pragma unroll
        for (int i = 0; i < kWaves * kAcc; ++i) partials[t.split * kTileFloats + i * kMathThreads + tid] = acc[i];
        __threadfence();  // the partial is visible GPU-wide before the counter says so
        named_barrier_sync(kSplitBarrier, kMathThreads);
        if (tid == 0) {
          const int done_before = atomicAdd(split_counters + tile, 1);
          st_shared_u32(split_flag, done_before == num_splits - 1 ? 1u : 0u);
        }
        named_barrier_sync(kSplitBarrier, kMathThreads);
        if (ld_shared_u32(split_flag) == 0) continue;  // another work item of this tile finishes it
        __threadfence();
        // Sum the partials in split order (this item's own one read back too): one slice's loads
        // are all in flight together, so the reduction costs num_splits memory latencies.
        #pragma unroll
        for (int i = 0; i < kWaves * kAcc; ++i) acc[i] = 0.0f;
        for (int s = 0; s < num_splits; ++s) {
          float slice[kWaves * kAcc];
          #pragma unroll
          for (int i = 0; i < kWaves * kAcc; ++i) slice[i] = __ldcg(partials + s * kTileFloats + i * kMathThreads + tid);
          #pragma unroll
          for (int i = 0; i < kWaves * kAcc; ++i) acc[i] += slice[i];
        }
        if (tid == 0) split_counters[tile] = 0;  // ready for the next launch
      }

      // ---- epilogue: registers -> swizzled shared tile -> TMA store (clips the M and N tails) ----
      const int barrier_id = 1 + math_wg;
      if (wg_leader) tma_store_wait_read();  // the previous tile's store has left shared memory
      named_barrier_sync(barrier_id, 128);
      // NOTES: opaque per tile, so the compiler computes the store addresses here instead of
      // hoisting them out of the tile loop, where they spilled with BLOCK_M 256's accumulators.
      u32 out_addr = smem_out_addr;
      asm volatile("" : "+r"(out_addr));
      #pragma unroll
      for (int wave = 0; wave < kWaves; ++wave) {
        store_accum_to_smem<BLOCK_M, BLOCK_N, kOutSwizzle, kOutType>(acc + wave * kAcc, out_addr, wave_row0(wave));
      }
      fence_proxy_async_smem();
      // Grouped M modes: a tile whose rows all belong to its group is stored whole (TMA); one
      // with rows of another group, padding or rows past a masked count goes row by row.
      bool whole_tile = true;
      if constexpr (kRowsChecked) {
        bool rows_ok = true;
        #pragma unroll
        for (int wave = 0; wave < kWaves; ++wave) {
          #pragma unroll
          for (int i = 0; i < 2; ++i) {
            const int row = wave_row0(wave) + warp * 16 + lane / 4 + 8 * i;
            const int global_row = m0 + row;
            bool ok = global_row < t.row_end;
            if constexpr (kGroupMode == kGroupIds) ok = ok && __ldg(group_info + global_row) == t.group;
            if (lane % 4 == 0) st_shared_u8(row_ok_addr + row, ok ? 1u : 0u);
            rows_ok = rows_ok && ok;
          }
        }
        // NOTES: with an overlap signal every tile goes row by row: the signal's release then
        // covers plain stores, with no wait for TMA stores to complete.
        whole_tile = named_barrier_and(barrier_id, 128, rows_ok) && signal == nullptr;
      } else {
        named_barrier_sync(barrier_id, 128);
      }
      if (whole_tile) {
        if (wg_leader) {
          constexpr int kChunkCols = kOutSwizzle / kOutElemBytes;
          #pragma unroll
          for (int wave = 0; wave < kWaves; ++wave) {
            const int row0 = wave_row0(wave);
            if (m0 + row0 >= m) break;  // rows past the end: nothing to store
            #pragma unroll
            for (int chunk = 0; chunk < BLOCK_N / kChunkCols; ++chunk) {
              const u8* src = smem_out + chunk * BLOCK_M * kOutSwizzle + row0 * kOutSwizzle;
              if constexpr (kOutAdd) {
                tma_reduce_add_3d(&tmap_d, src, n0 + chunk * kChunkCols, m0 + row0, t.group);
              } else if constexpr (group_out_3d<kGroupMode>()) {
                tma_store_3d(&tmap_d, src, n0 + chunk * kChunkCols, m0 + row0, t.group);
              } else {
                tma_store_2d(&tmap_d, src, n0 + chunk * kChunkCols, m0 + row0);
              }
            }
          }
          tma_store_commit();
        }
      } else if constexpr (kRowsChecked) {
        u8* out_bytes = static_cast<u8*>(out_ptr);
        #pragma unroll
        for (int wave = 0; wave < kWaves; ++wave) {
          const int row0 = wave_row0(wave);
          u8* dst = out_bytes + (static_cast<i64>(m0 + row0) * out_ld + n0) * 2;
          copy_rows_from_smem<BLOCK_M, BLOCK_N, kOutSwizzle>(out_addr, row_ok_addr, row0, 64, dst, out_ld, n - n0);
        }
        if (signal != nullptr) {
          // Every row of the warpgroup's waves is written: count each 64-row block once more
          // (a block is final when all its N-blocks have counted).
          __threadfence();
          named_barrier_sync(barrier_id, 128);
          if (wg_leader) {
            #pragma unroll
            for (int wave = 0; wave < kWaves; ++wave) {
              const int row0 = m0 + wave_row0(wave);
              if (row0 < t.row_end) {
                const int block = (row0 - t.group * group_stride) / 64;
                red_release_gpu_add(signal + t.group * signal_blocks + block, 1);
              }
            }
          }
        }
      }
    }
    // Ping-pong: warpgroup 1's hand-off after its last batch is still pending; take it.
    if constexpr (kPingPong) {
      if (math_wg == 0 && !first_turn) named_barrier_sync(kTurnBarrier0, 256);
    }
    if (wg_leader) tma_store_wait_all();
  }
  // A CTA's barriers must outlive the peer's last arrivals on them.
  if constexpr (kCluster > 1) cluster_sync();
}

}  // namespace mategemm
