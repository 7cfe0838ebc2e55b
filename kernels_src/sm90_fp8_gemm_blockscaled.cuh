// sm90_fp8_gemm_blockscaled: D(m, n) = A(m, k) * B(n, k)^T with FP8 operands and FP32 block scales.
//
// Recipes: A scales per (row, 128-K block); B scales per (128-column block, 128-K block) when
// kScaleGranN == 128 (DeepSeek-V3's 1x128 / 128x128), or per (column, 128-K block) when 1.
// Scale tensors are read with run-time strides, so K-major and MN-major layouts share a binary.
//
// Warp roles: warpgroup 0 produces: one thread issues TMA loads of A and B into a ring of
// kNumStages swizzled stages, and warps 1-3 copy the stage's A and B scales (any strides) into
// shared memory beside them, so scale-load latency hides behind the whole ring. Warpgroups
// 1..kNumMathWG consume (each owns 64 rows of the tile,
// issues 4 x wgmma k32 per 128-K block into a scratch accumulator, then promotes it into the
// main accumulator with the block scales on the CUDA cores). Persistent grid over the tiles.
#pragma once
#include "common/epilogue.cuh"
#include "common/pipeline.cuh"
#include "common/ptx.cuh"
#include "common/scheduler.cuh"
#include "common/wgmma.cuh"

namespace mategemm {

constexpr int kBlockK = 128;  // one scale block of K; one 128-byte swizzled row of FP8

__host__ __device__ constexpr int const_gcd(int a, int b) { return b == 0 ? a : const_gcd(b, a % b); }

template <int BLOCK_M, int BLOCK_N, int kNumStages, int kScaleGranN>
struct Fp8GemmSmemLayout {
  static constexpr int kOutBytes = BLOCK_M * BLOCK_N * 2;
  static constexpr int kABytes = BLOCK_M * kBlockK;
  static constexpr int kBBytes = BLOCK_N * kBlockK;
  static constexpr int kNumSfb = kScaleGranN == 128 ? 2 : BLOCK_N;  // B scales per stage
  static constexpr int kSfBytes = ((BLOCK_M + kNumSfb) * 4 + 15) & ~15;  // A then B scales, one stage
  static constexpr int kOffA = kOutBytes;
  static constexpr int kOffB = kOffA + kNumStages * kABytes;
  static constexpr int kOffScales = kOffB + kNumStages * kBBytes;
  static constexpr int kOffBarriers = kOffScales + kNumStages * kSfBytes;
  // 1024 B of slack: the dynamic shared-memory base is aligned up to 1024 B in the kernel.
  static constexpr int kTotalBytes = kOffBarriers + 2 * kNumStages * 8 + 1024;
  static_assert(kOutBytes % 1024 == 0 && kABytes % 1024 == 0 && kBBytes % 1024 == 0,
                "swizzled tiles must stay 1024-byte aligned");
};

// One k-block's scales, as one math thread needs them: its two rows of A, and B's (up to two)
// 128-column blocks (b0, b1 are unused with per-column B scales).
struct BlockScales {
  float a0, a1, b0, b1;
};

// acc += part * scale for one 8-column chunk of the m64nN layout: row r (lo) and row r + 8 (hi).
__device__ __forceinline__ void promote_chunk(float* acc, const float* part, float scale_lo, float scale_hi) {
  acc[0] = fmaf(part[0], scale_lo, acc[0]);
  acc[1] = fmaf(part[1], scale_lo, acc[1]);
  acc[2] = fmaf(part[2], scale_hi, acc[2]);
  acc[3] = fmaf(part[3], scale_hi, acc[3]);
}

template <int BLOCK_M, int BLOCK_N, int kNumStages, int kScaleGranN, int kTypeA, int kTypeB, int kOutType,
          int kOutSwizzle>
__global__ void __launch_bounds__((BLOCK_M / 64 + 1) * 128, 1)
sm90_fp8_gemm_blockscaled(const __grid_constant__ TmaDesc tmap_a, const __grid_constant__ TmaDesc tmap_b,
                          const __grid_constant__ TmaDesc tmap_d,
                          const float* __restrict__ sfa, int sfa_stride_m, int sfa_stride_k,
                          const float* __restrict__ sfb, int sfb_stride_n, int sfb_stride_k,
                          int m, int n, int k, int group_n, int a_box_rows) {
  constexpr int kNumMathWG = BLOCK_M / 64;
  constexpr int kAcc = BLOCK_N / 2;  // fp32 accumulators per thread for m64nBLOCK_N
  using Layout = Fp8GemmSmemLayout<BLOCK_M, BLOCK_N, kNumStages, kScaleGranN>;
  static_assert(BLOCK_M == 64 || BLOCK_M == 128, "BLOCK_M is 64 or 128");
  // NOTES: the three scale warps fill stages out of order; a warp may run at most one ring
  // ahead of the consumers (mbarrier parity tells only one phase apart) only if the ring has
  // at least as many stages as there are scale warps.
  static_assert(kNumStages >= 3, "the scale warps need at least 3 stages");
  static_assert(BLOCK_N % 8 == 0 && BLOCK_N >= 8 && BLOCK_N <= 256, "BLOCK_N is a multiple of 8 in [8, 256]");
  static_assert(BLOCK_N % (kOutSwizzle / 2) == 0, "output swizzle chunk must divide BLOCK_N");
  // NOTES: a tile may straddle at most two 128-column scale blocks of B (checked for every
  // aligned start n0 = j * BLOCK_N): BLOCK_N <= 128 + gcd(BLOCK_N, 128).
  static_assert(kScaleGranN == 1 || (kScaleGranN == 128 && BLOCK_N <= 128 + const_gcd(BLOCK_N, 128)),
                "BLOCK_N would straddle three B scale blocks");

  // NOTES: setmaxnreg moves registers inside the CTA's launch allocation (168 x 384 threads
  // under __launch_bounds__(384, 1)); asking for more than the producer released blocks forever.
  constexpr int kProducerRegs = 40, kMathRegs = 232;
  static_assert(kNumMathWG == 1 || kProducerRegs * 128 + kMathRegs * kNumMathWG * 128 <= 168 * 384,
                "register split exceeds the CTA's allocation");

  extern __shared__ __align__(1024) u8 smem_raw[];
  u8* smem = reinterpret_cast<u8*>((reinterpret_cast<u64>(smem_raw) + 1023) & ~static_cast<u64>(1023));
  u8* smem_out = smem;
  u8* smem_a = smem + Layout::kOffA;
  u8* smem_b = smem + Layout::kOffB;
  float* smem_scales = reinterpret_cast<float*>(smem + Layout::kOffScales);  // stage s at s * kSfBytes / 4
  u64* full_bar = reinterpret_cast<u64*>(smem + Layout::kOffBarriers);
  u64* empty_bar = full_bar + kNumStages;

  const int warpgroup = warp_uniform(threadIdx.x / 128);
  const int num_k_blocks = k / kBlockK;

  // ---- set-up: barriers and descriptor prefetch ----
  if (threadIdx.x == 0) {
    tma_prefetch_desc(&tmap_a);
    tma_prefetch_desc(&tmap_b);
    tma_prefetch_desc(&tmap_d);
    #pragma unroll
    for (int s = 0; s < kNumStages; ++s) {
      mbar_init(&full_bar[s], 1 + 32);  // the TMA thread + every lane of the stage's scale warp
      mbar_init(&empty_bar[s], kNumMathWG * 4);  // lane 0 of every math warp
    }
    fence_mbar_init();
  }
  __syncthreads();

  TileScheduler scheduler(m, n, BLOCK_M, BLOCK_N, group_n);
  PipelineState<kNumStages> pipe;
  int m_block, n_block;

  if (warpgroup == 0) {
    if constexpr (kNumMathWG > 1) setmaxnreg_dec<kProducerRegs>();
    const int warp = threadIdx.x / 32;
    if (threadIdx.x == 0) {
      // ---- producer: one thread streams A and B tiles through the ring ----
      while (scheduler.next(m_block, n_block)) {
        for (int kb = 0; kb < num_k_blocks; ++kb) {
          mbar_wait(&empty_bar[pipe.stage], pipe.phase ^ 1);
          mbar_arrive_expect_tx(&full_bar[pipe.stage], a_box_rows * kBlockK + Layout::kBBytes);
          tma_load_2d(smem_a + pipe.stage * Layout::kABytes, &tmap_a, &full_bar[pipe.stage], kb * kBlockK,
                      m_block * BLOCK_M);
          tma_load_2d(smem_b + pipe.stage * Layout::kBBytes, &tmap_b, &full_bar[pipe.stage], kb * kBlockK,
                      n_block * BLOCK_N);
          pipe.advance();
        }
      }
    } else if (warp > 0) {
      // ---- scale warps 1-3: warp w fills the stages of iterations i with i % 3 == w - 1 ----
      constexpr int kNumScaleWarps = 3;
      const int lane = threadIdx.x % 32;
      const int num_n_scale_blocks = ceil_div(n, 128);
      int iter = 0;
      while (scheduler.next(m_block, n_block)) {
        const int m0 = m_block * BLOCK_M, n0 = n_block * BLOCK_N;
        for (int kb = 0; kb < num_k_blocks; ++kb, ++iter) {
          if (iter % kNumScaleWarps != warp - 1) continue;
          const int stage = iter % kNumStages;
          mbar_wait(&empty_bar[stage], ((iter / kNumStages) & 1) ^ 1);
          float* sf = smem_scales + stage * (Layout::kSfBytes / 4);
          float va[ceil_div(BLOCK_M, 32)], vb[ceil_div(Layout::kNumSfb, 32)];
          // Issue every load of the stage, then store: one memory latency per stage.
          #pragma unroll
          for (int i = 0; i < ceil_div(BLOCK_M, 32); ++i) {
            const int row = m0 + lane + 32 * i;
            va[i] = row < m ? ldg_nc(sfa + (row * sfa_stride_m + kb * sfa_stride_k)) : 0.0f;  // < 2^31: checked on the host
          }
          #pragma unroll
          for (int i = 0; i < ceil_div(Layout::kNumSfb, 32); ++i) {
            const int j = lane + 32 * i;
            const int col = kScaleGranN == 128 ? min(n0 / 128 + j, num_n_scale_blocks - 1) : n0 + j;
            const bool valid = j < Layout::kNumSfb && (kScaleGranN == 128 || col < n);
            vb[i] = valid ? ldg_nc(sfb + (col * sfb_stride_n + kb * sfb_stride_k)) : 0.0f;
          }
          #pragma unroll
          for (int i = 0; i < ceil_div(BLOCK_M, 32); ++i) {
            if (lane + 32 * i < BLOCK_M) sf[lane + 32 * i] = va[i];
          }
          #pragma unroll
          for (int i = 0; i < ceil_div(Layout::kNumSfb, 32); ++i) {
            if (lane + 32 * i < Layout::kNumSfb) sf[BLOCK_M + lane + 32 * i] = vb[i];
          }
          mbar_arrive(&full_bar[stage]);  // release: the stores above are visible to the waiters
        }
      }
    }
    return;
  }

  // ---- consumers: wgmma per 128-K block, promotion with the block scales, epilogue ----
  if constexpr (kNumMathWG > 1) setmaxnreg_inc<kMathRegs>();
  const int math_wg = warpgroup - 1;
  const int warp = (threadIdx.x / 32) % 4;
  const int lane = threadIdx.x % 32;
  const bool wg_leader = (threadIdx.x % 128) == 0;
  const u32 smem_out_addr = smem_addr(smem_out);

  // NOTES: with a second scratch accumulator, the wgmma of k-block kb + 1 runs while kb is
  // promoted, so the tensor cores are not idle during promotion. It costs BLOCK_N / 2 more
  // registers per thread: affordable up to BLOCK_N 128 (acc + 2 scratch = 192 of 232).
  constexpr bool kOverlap = kScaleGranN == 128 && BLOCK_N <= 128;
  float acc[kAcc];
  float part0[kAcc];
  float part1[kOverlap ? kAcc : 1];

  while (scheduler.next(m_block, n_block)) {
    const int m0 = m_block * BLOCK_M;
    const int n0 = n_block * BLOCK_N;

    // The tile rows this thread owns (wgmma layout: lane/4 and lane/4 + 8 of its warp's 16).
    const int row_in_tile = math_wg * 64 + warp * 16 + lane / 4;
    // B scales: with 128-column blocks, chunks of 8 columns before `first_chunks` use block
    // n0 / 128, the rest the next block.
    const int first_chunks = (128 - n0 % 128) / 8;

    #pragma unroll
    for (int i = 0; i < kAcc; ++i) acc[i] = 0.0f;

    // Waits for the next stage, takes its scales into registers, issues its 4 wgmma into `part`.
    auto issue = [&](float* part, BlockScales& sc) -> int {
      const int stage = pipe.stage;
      mbar_wait(&full_bar[stage], pipe.phase);
      pipe.advance();
      const float* sf = smem_scales + stage * (Layout::kSfBytes / 4);
      sc.a0 = sf[row_in_tile];
      sc.a1 = sf[row_in_tile + 8];
      if constexpr (kScaleGranN == 128) {
        sc.b0 = sf[BLOCK_M];
        sc.b1 = sf[BLOCK_M + 1];
      }
      const u64 desc_a = smem_desc_k128_sw128(smem_a + stage * Layout::kABytes + math_wg * 64 * kBlockK);
      const u64 desc_b = smem_desc_k128_sw128(smem_b + stage * Layout::kBBytes);
      #pragma unroll
      for (int i = 0; i < kAcc; ++i) fence_operand(part[i]);
      wgmma_fence();
      #pragma unroll
      for (int kk = 0; kk < kBlockK / 32; ++kk) {
        // Advancing the start address by 32 B walks K inside the 128-byte swizzled row.
        WgmmaFp8<BLOCK_N>::template mma<kTypeA, kTypeB>(part, desc_a + kk * 2, desc_b + kk * 2, kk > 0);
      }
      wgmma_commit();
      return stage;
    };

    // After `part`'s wgmma completed: hand its stage back, then acc += part * scales in FP32.
    auto retire = [&](float* part, const BlockScales& sc, int stage) {
      #pragma unroll
      for (int i = 0; i < kAcc; ++i) fence_operand(part[i]);
      if constexpr (kScaleGranN == 128) {
        __syncwarp();  // every lane's scale reads happen before lane 0 releases the stage
        if (lane == 0) mbar_arrive(&empty_bar[stage]);
        const float s00 = sc.a0 * sc.b0, s10 = sc.a1 * sc.b0;
        if constexpr (128 % BLOCK_N == 0) {
          // The tile lies inside one 128-column scale block: one scale pair for all columns.
          #pragma unroll
          for (int c = 0; c < BLOCK_N / 8; ++c) promote_chunk(acc + c * 4, part + c * 4, s00, s10);
        } else {
          const float s01 = sc.a0 * sc.b1, s11 = sc.a1 * sc.b1;
          #pragma unroll
          for (int c = 0; c < BLOCK_N / 8; ++c) {
            const bool first = c < first_chunks;
            promote_chunk(acc + c * 4, part + c * 4, first ? s00 : s01, first ? s10 : s11);
          }
        }
      } else {
        // Per-column B scales are read from the stage here, so it is handed back afterwards.
        const float* sf = smem_scales + stage * (Layout::kSfBytes / 4) + BLOCK_M;
        #pragma unroll
        for (int c = 0; c < BLOCK_N / 8; ++c) {
          const float sb_lo = sf[c * 8 + (lane % 4) * 2], sb_hi = sf[c * 8 + (lane % 4) * 2 + 1];
          acc[c * 4 + 0] = fmaf(part[c * 4 + 0], sc.a0 * sb_lo, acc[c * 4 + 0]);
          acc[c * 4 + 1] = fmaf(part[c * 4 + 1], sc.a0 * sb_hi, acc[c * 4 + 1]);
          acc[c * 4 + 2] = fmaf(part[c * 4 + 2], sc.a1 * sb_lo, acc[c * 4 + 2]);
          acc[c * 4 + 3] = fmaf(part[c * 4 + 3], sc.a1 * sb_hi, acc[c * 4 + 3]);
        }
        __syncwarp();
        if (lane == 0) mbar_arrive(&empty_bar[stage]);
      }
    };

    if constexpr (kOverlap) {
      // Two scratch accumulators in turn: k-block kb + 1's wgmma runs while kb is promoted.
      // NOTES: no wgmma is in flight across the loop's back edge or a conditional issue; with
      // either, ptxas serialised every wgmma (C7514) or injected waits before promotion (C7517).
      BlockScales sc0, sc1;
      int stage0 = issue(part0, sc0), stage1;
      wgmma_wait<0>();
      int kb = 0;
      for (; kb + 2 < num_k_blocks; kb += 2) {  // part0 holds k-block kb, complete
        stage1 = issue(part1, sc1);
        retire(part0, sc0, stage0);
        wgmma_wait<0>();
        stage0 = issue(part0, sc0);
        retire(part1, sc1, stage1);
        wgmma_wait<0>();
      }
      if (kb + 1 < num_k_blocks) {
        stage1 = issue(part1, sc1);
        retire(part0, sc0, stage0);
        wgmma_wait<0>();
        retire(part1, sc1, stage1);
      } else {
        retire(part0, sc0, stage0);
      }
    } else {
      for (int kb = 0; kb < num_k_blocks; ++kb) {
        BlockScales sc;
        const int stage = issue(part0, sc);
        wgmma_wait<0>();
        retire(part0, sc, stage);
      }
    }

    // ---- epilogue: registers -> swizzled shared tile -> TMA store (clips the M and N tails) ----
    const int barrier_id = 1 + math_wg;
    if (wg_leader) tma_store_wait_read();  // the previous tile's store has left shared memory
    named_barrier_sync(barrier_id, 128);
    store_accum_to_smem<BLOCK_M, BLOCK_N, kOutSwizzle, kOutType>(acc, smem_out_addr, math_wg * 64);
    fence_proxy_async_smem();
    named_barrier_sync(barrier_id, 128);
    if (wg_leader && m0 + math_wg * 64 < m) {
      constexpr int kChunkCols = kOutSwizzle / 2;
      #pragma unroll
      for (int chunk = 0; chunk < BLOCK_N / kChunkCols; ++chunk) {
        tma_store_2d(&tmap_d, smem_out + chunk * BLOCK_M * kOutSwizzle + math_wg * 64 * kOutSwizzle,
                     n0 + chunk * kChunkCols, m0 + math_wg * 64);
      }
      tma_store_commit();
    }
  }
  if (wg_leader) tma_store_wait_all();
}

}  // namespace mategemm
