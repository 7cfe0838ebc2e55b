// sm90_fp8_mqa_logits: DeepSeek's lightning indexer on Hopper,
//   logits[row, t] = sum_h weights[row, h] * relu((q[row, h, :] . k[t, :]) * k_scale[t])
// for the key positions t a row sees, -inf at the others (when clean), in two forms:
// - paged (kPaged): a request's kRows draft tokens form a tile. Its keys live in 64-key blocks of
//   a fused cache (a block: 64 x 128 FP8 keys, then their 64 fp32 scales) named by a block table;
//   the head dimension is 128.
//   Draft token j sees [0, hi_j). A persistent CTA per SM walks the (request, block) range the
//   schedule metadata gives it.
// - non-paged: kRows consecutive query rows form a tile (one CTA each); row r sees [ks_r, ke_r)
//   of a contiguous key array with a separate scale array. With `compressed`, column c of row r
//   holds key ks_r + c (DeepGEMM's max_seqlen_k form). Head dimension kHeadDim: 32, 64 or 128.
// Per 64-key block: kHeadDim / 32 x wgmma m64nNk32, the keys as A (64 rows of kHeadDim bytes, in
// the swizzle of that span) and the tile's queries as B (N = kRows x kHeads rows, the same
// layout); each thread scales, rectifies and weights its accumulators, and the 4 lanes that share
// a key row sum the heads. Logits are fp32 or bf16 (Logit), each written once by one thread: the
// result does not depend on timing.
// Warp roles: kMathWG math warpgroups each take every kMathWG-th block of a tile from their own
// ring of stages, so their waits and epilogues overlap; producer warp r feeds ring r by TMA (its
// lanes hold the next 32 block-table entries, lane 0 issues; warp 0 also loads the tile's
// queries). When clean, the producer warps then set the positions no block covers to -inf.
// Block-table entries are not trusted: an entry out of range reads zeros (TMA's out-of-bounds
// fill), never memory outside the cache.
#pragma once
#include "common/pipeline.cuh"
#include "common/ptx.cuh"
#include "common/wgmma.cuh"

namespace mategemm {

constexpr int kIndexDim = 128;          // bytes of one FP8 key or query head of the paged cache
constexpr int kKvBlock = 64;            // keys per block
constexpr int kFusedBlockRows = 66;     // a fused block as rows of 128 bytes: 64 keys, then 2 rows of scales
__device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }

// A logit as the output holds it: fp32, or bf16 by a 2-byte store (-inf stays -inf).
__device__ __forceinline__ void store_logit(float* p, float x) { *p = x; }
__device__ __forceinline__ void store_logit(Bf16* p, float x) { *p = to_bf16(x); }

template <int kRows, int kHeads, int kHeadDim, int kStages>
struct MqaLogitsSmem {
  static constexpr int kN = kRows * kHeads;
  static constexpr int kQBytes = kN * kHeadDim;
  static constexpr int kKeyBytes = kKvBlock * kHeadDim;
  static constexpr int kWeightBytes = (kN * 4 + 127) / 128 * 128;  // the tile's fp32 weights
  // two buffers of a tile's queries and weights: the next tile's loads while this one runs
  static constexpr int kOffQ = 0;
  static constexpr int kOffWeights = 2 * kQBytes;
  static constexpr int kOffKeys = (kOffWeights + 2 * kWeightBytes + 1023) / 1024 * 1024;
  static constexpr int kOffScales = kOffKeys + kStages * kKeyBytes;
  static constexpr int kOffBarriers = kOffScales + kStages * kKvBlock * 4;
  static constexpr int kTotalBytes = kOffBarriers + (2 * kStages + 4) * 8 + 1024;  // + alignment slack
  // NOTES: a swizzled tile starts on its pattern's repeat, 8 rows of kHeadDim bytes (1024 B at 128)
  static_assert(kQBytes % (8 * kHeadDim) == 0, "query buffers start on a swizzle repeat");
};

// The key window [lo, hi) of row j of a tile, and the tile's blocks [block_begin, block_end).
template <int kRows, bool kPaged>
struct MqaTile {
  int lo[kRows], hi[kRows];
  int block_begin, block_end;
  int all_lo, all_hi;  // the positions every row sees: [all_lo, all_hi)

  // paged: `lens` holds context lengths per request (lens_2d: per draft token); non-paged: ks, ke.
  __device__ __forceinline__ void load(int tile, const int* lens, const int* lens_end, int lens_2d, int num_rows) {
    int min_lo = 0x7fffffff, max_hi = 0;
    all_lo = 0;
    all_hi = 0x7fffffff;
    #pragma unroll
    for (int j = 0; j < kRows; ++j) {
      if constexpr (kPaged) {
        lo[j] = 0;
        hi[j] = lens_2d ? __ldg(lens + tile * kRows + j) : __ldg(lens + tile) - kRows + j + 1;
      } else {
        const int row = tile * kRows + j;
        lo[j] = row < num_rows ? max(__ldg(lens + row), 0) : 0;
        hi[j] = row < num_rows ? __ldg(lens_end + row) : 0;
      }
      if (hi[j] > lo[j]) {
        min_lo = min(min_lo, lo[j]);
        max_hi = max(max_hi, hi[j]);
      }
      all_lo = max(all_lo, lo[j]);
      all_hi = min(all_hi, hi[j]);
    }
    block_begin = max_hi > 0 ? min_lo / kKvBlock : 0;
    block_end = max_hi > 0 ? ceil_div(max_hi, kKvBlock) : 0;
  }
};

// Paged: the blocks of request b (as get_paged_mqa_logits_metadata counts them).
template <int kRows>
__device__ __forceinline__ int paged_num_blocks(const int* lens, int lens_2d, int b) {
  int len = 0;
  if (lens_2d) {
    #pragma unroll
    for (int j = 0; j < kRows; ++j) len = max(len, __ldg(lens + b * kRows + j));
  } else {
    len = __ldg(lens + b);
  }
  return len > 0 ? ceil_div(len, kKvBlock) : 0;
}

// Walks a CTA's tiles in order, each with the blocks [begin, end) of it the CTA covers. Paged: from
// schedule[cta] up to schedule[cta + 1] (each a (request, block) pair), skipping requests with no
// block; non-paged: tile blockIdx.x with its blocks.
template <int kRows, bool kPaged>
struct MqaWalker {
  int tile, block, end_tile, end_block;
  const int* lens;
  int lens_2d;

  __device__ __forceinline__ MqaWalker(const int* schedule, const int* lens_, int lens_2d_, int first_block,
                                       int last_block)
      : lens(lens_), lens_2d(lens_2d_) {
    if constexpr (kPaged) {
      tile = __ldg(schedule + 2 * blockIdx.x);
      block = __ldg(schedule + 2 * blockIdx.x + 1);
      end_tile = __ldg(schedule + 2 * blockIdx.x + 2);
      end_block = __ldg(schedule + 2 * blockIdx.x + 3);
    } else {
      tile = end_tile = blockIdx.x;
      block = first_block;
      end_block = last_block;
    }
  }

  __device__ __forceinline__ bool next(int& t, int& begin, int& end) {
    while (tile < end_tile || (tile == end_tile && block < end_block)) {
      const int blocks = kPaged ? paged_num_blocks<kRows>(lens, lens_2d, tile) : end_block;
      t = tile;
      begin = block;
      end = tile == end_tile ? min(blocks, end_block) : blocks;
      ++tile;
      block = 0;
      if (begin < end) return true;
    }
    return false;
  }
};

// Math warpgroup `ring` takes every kMathWG-th block of a tile, starting where the tile's index
// rotates it (short tiles spread over the warpgroups).
template <int kMathWG>
__device__ __forceinline__ int first_block_of(int ring, int tile, int begin) {
  return begin + (ring + kMathWG - tile % kMathWG) % kMathWG;
}

// This thread's share of sum_h w[h] * relu(acc[h] (* scale)) for each row j of a tile, for its two
// key rows (accumulator pairs 4c, 4c+1 and 4c+2, 4c+3 of 8-column chunk c). Even and odd columns
// sum apart: four independent chains per row.
template <int kRows, int kHeads, int kN, bool kScaleFirst>
__device__ __forceinline__ void head_sums(const float* acc, const float* w, float scale0, float scale1,
                                          float (&sum0)[kRows], float (&sum1)[kRows]) {
  float part[kRows][4];
  #pragma unroll
  for (int j = 0; j < kRows; ++j) part[j][0] = part[j][1] = part[j][2] = part[j][3] = 0.0f;
  #pragma unroll
  for (int c = 0; c < kN / 8; ++c) {
    const int j = c * 8 / kHeads;  // an 8-column chunk lies inside one row's heads
    #pragma unroll
    for (int q = 0; q < 4; ++q) {
      const float x = kScaleFirst ? acc[c * 4 + q] * (q < 2 ? scale0 : scale1) : acc[c * 4 + q];
      part[j][q] = fmaf(w[c * 2 + q % 2], fmaxf(x, 0.0f), part[j][q]);
    }
  }
  #pragma unroll
  for (int j = 0; j < kRows; ++j) {
    sum0[j] = part[j][0] + part[j][1];
    sum1[j] = part[j][2] + part[j][3];
  }
}

// With clean logits: -inf at the columns of output row `row` that no block of the main loop
// covers (paged: from the request's last block on; non-paged: outside its tile's blocks). One warp.
template <int kRows, bool kPaged, typename Logit>
__device__ __forceinline__ void fill_uncovered(int row, const int* lens, const int* lens_end, int lens_2d,
                                               Logit* logits, i64 logits_ld, int num_rows, int num_cols,
                                               int compressed) {
  const int tile = row / kRows;
  MqaTile<kRows, kPaged> info;
  info.load(tile, lens, lens_end, lens_2d, num_rows);
  int covered_begin = info.block_begin * kKvBlock, covered_end = info.block_end * kKvBlock;
  if constexpr (kPaged) {
    covered_begin = 0;
    covered_end = paged_num_blocks<kRows>(lens, lens_2d, tile) * kKvBlock;
  }
  if (!kPaged && compressed) {
    const int shift = max(__ldg(lens + row), 0);  // the row's window start (info.lo[row % kRows])
    covered_begin -= shift;
    covered_end -= shift;
  }
  // Only the uncovered columns are walked: [0, covered_begin) and [covered_end, num_cols).
  Logit* out_row = logits + static_cast<i64>(row) * logits_ld;
  const int lane = threadIdx.x % 32;
  for (int col = lane; col < min(covered_begin, num_cols); col += 32) store_logit(out_row + col, neg_inf());
  for (int col = max(covered_end, 0) + lane; col < num_cols; col += 32) store_logit(out_row + col, neg_inf());
}

// One key block's logits of a tile of one or two rows, for this thread's two key rows (sum0: row
// key_row0, sum1: key_row0 + 8, one per tile row j), stored to the rows' logits.
template <int kRows, bool kPaged, typename Logit>
__device__ __forceinline__ void store_logits_by_pairs(float (&sum0)[kRows], float (&sum1)[kRows],
                                                   const MqaTile<kRows, kPaged>& tile_info, int t, int block,
                                                   int key_row0, Logit* __restrict__ logits, i64 logits_ld,
                                                   int num_rows, int num_cols, int compressed, int clean) {
  const int lane = threadIdx.x % 32;
  const bool upper = lane & 2, odd = lane & 1;  // this lane's share of its quad's logits (see below)
  const int store_row0 = key_row0 + (odd ? 8 : 0);
  constexpr int kValuesPerLane = (kRows + 1) / 2;  // of the 2 x kRows logits per key row pair
  // The quad's 4 lanes hold partial sums of all 2 x kRows values (row j, key half h: value
  // 2j + h). A reduce-scatter per group of 4 leaves lane l with the full value l + 4i of group
  // i: 3 shuffles per 4 values (an all-reduce took 8); lane l then stores it. A block every row
  // sees in full (the common case) stores without per-position checks.
  const bool whole = !compressed && block * kKvBlock >= tile_info.all_lo &&
                     (block + 1) * kKvBlock <= min(tile_info.all_hi, num_cols);
  const int position = block * kKvBlock + store_row0;
  #pragma unroll
  for (int i = 0; i < kValuesPerLane; ++i) {
    float v[4];
    #pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int index = 4 * i + r;
      v[r] = index >= 2 * kRows ? 0.0f : index % 2 ? sum1[index / 2] : sum0[index / 2];
    }
    float keep0 = upper ? v[2] : v[0], keep1 = upper ? v[3] : v[1];
    keep0 += __shfl_xor_sync(0xffffffffu, upper ? v[0] : v[2], 2);
    keep1 += __shfl_xor_sync(0xffffffffu, upper ? v[1] : v[3], 2);
    const float value = (odd ? keep1 : keep0) + __shfl_xor_sync(0xffffffffu, odd ? keep0 : keep1, 1);
    const int j = 2 * i + (upper ? 1 : 0);
    const int row = t * kRows + j;
    if (j >= kRows || (!kPaged && row >= num_rows)) continue;
    Logit* out_row = logits + static_cast<i64>(row) * logits_ld;
    if (whole) {
      store_logit(out_row + position, value);
      continue;
    }
    int lo = 0, hi = 0;
    #pragma unroll
    for (int jj = 2 * i; jj < kRows && jj < 2 * i + 2; ++jj) {  // rows 2i and 2i + 1: this group's
      if (jj == j) {
        lo = tile_info.lo[jj];
        hi = tile_info.hi[jj];
      }
    }
    const bool visible = position >= lo && position < hi;
    const int col = compressed ? position - lo : position;
    if ((visible || clean) && col >= 0 && col < num_cols) store_logit(out_row + col, visible ? value : neg_inf());
  }
}

// The same for tiles of three rows or more.
template <int kRows, bool kPaged, typename Logit>
__device__ __forceinline__ void store_logits_by_quads(float (&sum0)[kRows], float (&sum1)[kRows],
                                                   const MqaTile<kRows, kPaged>& tile_info, int t, int block,
                                                   int key_row0, Logit* __restrict__ logits, i64 logits_ld,
                                                   int num_rows, int num_cols, int compressed, int clean) {
  const int lane = threadIdx.x % 32;
  constexpr int kValuesPerLane = (kRows + 1) / 2;
  #pragma unroll
  for (int j = 0; j < kRows; ++j) {
    sum0[j] += __shfl_xor_sync(0xffffffffu, sum0[j], 1);
    sum0[j] += __shfl_xor_sync(0xffffffffu, sum0[j], 2);
    sum1[j] += __shfl_xor_sync(0xffffffffu, sum1[j], 1);
    sum1[j] += __shfl_xor_sync(0xffffffffu, sum1[j], 2);
  }
  // The quad's 2 x kRows values (row j, key half h) are stored by its lanes in turn: lane l takes
  // values l, l + 4, ..., so each lane issues one store per two rows. A block every row sees in
  // full (the common case) stores without per-position checks. NOTES: the checked store repeats
  // the branch above on purpose: one shared helper with `whole` hoisted measured 5% slower at
  // next_n 3, 64 heads (H200: 36.0 -> 38.3 us; 1-2 rows compiled to the same SASS).
  const bool whole = !compressed && block * kKvBlock >= tile_info.all_lo &&
                     (block + 1) * kKvBlock <= min(tile_info.all_hi, num_cols);
  #pragma unroll
  for (int i = 0; i < kValuesPerLane; ++i) {
    const int index = lane % 4 + 4 * i;
    const int j = index / 2, half = index % 2;
    const int row = t * kRows + j;
    if (j >= kRows || (!kPaged && row >= num_rows)) continue;
    float value = 0.0f;
    int lo = 0, hi = 0;
    #pragma unroll
    for (int jj = i * 2; jj < kRows && jj < i * 2 + 2; ++jj) {  // rows 2i and 2i + 1, this turn's
      if (jj == j) {
        value = half ? sum1[jj] : sum0[jj];
        lo = tile_info.lo[jj];
        hi = tile_info.hi[jj];
      }
    }
    Logit* out_row = logits + static_cast<i64>(row) * logits_ld;
    const int position = block * kKvBlock + key_row0 + half * 8;
    if (whole) {
      store_logit(out_row + position, value);
      continue;
    }
    const bool visible = position >= lo && position < hi;
    const int col = compressed ? position - lo : position;
    if ((visible || clean) && col >= 0 && col < num_cols) store_logit(out_row + col, visible ? value : neg_inf());
  }
}

// Producer warp `warp` feeds ring `warp` with its blocks' keys and scales by TMA (lane 0 issues);
// warp 0 also loads each tile's queries and weights into the two query buffers.
template <int kRows, int kHeads, int kHeadDim, int kStages, bool kPaged, int kMathWG>
__device__ __forceinline__ void mqa_produce(MqaWalker<kRows, kPaged>& walker, u8* smem, const TmaDesc* tmap_q,
                                            const TmaDesc* tmap_keys, const TmaDesc* tmap_scales,
                                            const TmaDesc* tmap_weights, const int* __restrict__ block_table,
                                            int block_table_ld, int warp, int lane) {
  using Smem = MqaLogitsSmem<kRows, kHeads, kHeadDim, kStages>;
  constexpr int kN = Smem::kN;
  constexpr int kRingStages = kStages / kMathWG;
  const u32 full_bar = smem_addr(smem + Smem::kOffBarriers);
  const u32 empty_bar = full_bar + kStages * 8;
  const u32 q_full_bar = empty_bar + kStages * 8;
  const u32 q_empty_bar = q_full_bar + 2 * 8;
  // NOTES: the whole warp walks the ring's blocks, so that lane l holds the table entry of the
  // l-th of the next 32 (one load per 32 blocks, handed out by shuffle); lane 0 issues. A load
  // per block put its ~600 cycles of L2 latency into every refill of the ring.
  PipelineState<kRingStages> pipe;
  int t, begin, end, q_loads = 0;
  while (walker.next(t, begin, end)) {
    if (warp == 0 && lane == 0) {
      const int buf = q_loads & 1;
      mbar_wait(q_empty_bar + buf * 8, ((q_loads >> 1) & 1) ^ 1);
      mbar_arrive_expect_tx(q_full_bar + buf * 8, Smem::kQBytes + kN * 4);
      tma_load_2d(smem + Smem::kOffQ + buf * Smem::kQBytes, tmap_q, q_full_bar + buf * 8, 0, t * kN);
      // the tile's kRows x kHeads weights; rows past the last are zero-filled
      tma_load_2d(smem + Smem::kOffWeights + buf * Smem::kWeightBytes, tmap_weights, q_full_bar + buf * 8, 0,
                  t * kRows);
      ++q_loads;
    }
    int entries = 0;
    int k = 0;  // the block's index in this ring's walk of the tile
    for (int block = first_block_of<kMathWG>(warp, t, begin); block < end; block += kMathWG, ++k) {
      int physical = block;
      if constexpr (kPaged) {
        if (k % 32 == 0) {
          const int mine = block + lane * kMathWG;
          entries = mine < end ? __ldg(block_table + static_cast<i64>(t) * block_table_ld + mine) : 0;
        }
        physical = __shfl_sync(0xffffffffu, entries, k % 32);
      }
      const int stage = warp * kRingStages + pipe.stage;
      const u32 bar = full_bar + stage * 8;
      mbar_wait(empty_bar + stage * 8, pipe.phase ^ 1);
      pipe.advance();
      if (lane != 0) continue;
      mbar_arrive_expect_tx(bar, Smem::kKeyBytes + kKvBlock * 4);
      u8* keys = smem + Smem::kOffKeys + stage * Smem::kKeyBytes;
      u8* scales = smem + Smem::kOffScales + stage * kKvBlock * 4;
      if constexpr (kPaged) {
        // NOTES: evict-first: a block is read once, and the logits written meanwhile keep their
        // L2 lines (H200: -0.5 us at next_n 1, -1.4 us at next_n 2).
        tma_load_2d_hinted(keys, tmap_keys, bar, 0, physical * kFusedBlockRows, kL2EvictFirst);
        tma_load_2d_hinted(scales, tmap_scales, bar, 0, physical * kFusedBlockRows + kKvBlock, kL2EvictFirst);
      } else {
        tma_load_2d(keys, tmap_keys, bar, 0, block * kKvBlock);
        tma_load_2d(scales, tmap_scales, bar, block * kKvBlock, 0);
      }
    }
  }
}

template <int kRows, int kHeads, int kHeadDim, int kStages, bool kPaged, int kMathWG, typename Logit>
__global__ void __launch_bounds__((kMathWG + 1) * 128, 1)
sm90_fp8_mqa_logits(const __grid_constant__ TmaDesc tmap_q, const __grid_constant__ TmaDesc tmap_keys,
                    const __grid_constant__ TmaDesc tmap_scales, const __grid_constant__ TmaDesc tmap_weights,
                    const int* __restrict__ lens, const int* __restrict__ lens_end, int lens_2d,
                    const int* __restrict__ block_table, int block_table_ld, const int* __restrict__ schedule,
                    Logit* __restrict__ logits, i64 logits_ld, int num_rows, int num_cols, int compressed,
                    int clean) {
  using Smem = MqaLogitsSmem<kRows, kHeads, kHeadDim, kStages>;
  constexpr int kN = Smem::kN;
  constexpr int kRingStages = kStages / kMathWG;  // each math warpgroup has its own ring of key blocks
  static_assert(kHeads % 8 == 0 && kN <= 256 && kRows <= 8, "a tile is at most 256 query heads");
  static_assert(kMathWG == 1 || kMathWG == 2 || kMathWG == 4, "one, two or four math warpgroups");
  static_assert(kStages % kMathWG == 0 && kRingStages >= 2, "rings of two stages or more");
  static_assert(kHeadDim == 32 || kHeadDim == 64 || kHeadDim == 128, "a head is one swizzle span");
  static_assert(!kPaged || kHeadDim == kIndexDim, "the paged cache holds 128-byte keys");
  // NOTES: the producer warpgroup hands its registers to the math warps, whose accumulators and
  // weights take 3/4 N registers (N <= 128 fits four warpgroups, 256 two). setmaxnreg.inc waits
  // until the CTA's pool (launch registers x threads) has the registers: what the math warps gain
  // must not exceed what the producer gives back, or they wait forever.
  constexpr int kProducerRegs = kMathWG == 2 ? 40 : 32, kMathRegs = kMathWG == 2 ? 232 : 112;
  constexpr int kLaunchRegs = (65536 / ((kMathWG + 1) * 128)) & ~7;
  static_assert(kMathWG == 1 || kMathWG * (kMathRegs - kLaunchRegs) <= kLaunchRegs - kProducerRegs,
                "the math warps' registers come from the producer's");
  extern __shared__ __align__(1024) u8 smem_raw[];
  u8* smem = reinterpret_cast<u8*>((reinterpret_cast<u64>(smem_raw) + 1023) & ~static_cast<u64>(1023));
  const u32 full_bar = smem_addr(smem + Smem::kOffBarriers);
  const u32 empty_bar = full_bar + kStages * 8;
  const u32 q_full_bar = empty_bar + kStages * 8;  // 2 query buffers
  const u32 q_empty_bar = q_full_bar + 2 * 8;
  const int warpgroup = warp_uniform(threadIdx.x / 128);
  const int warp = warp_uniform((threadIdx.x / 32) % 4);
  const int lane = threadIdx.x % 32;

  // Non-paged: this CTA's tile and its blocks.
  MqaTile<kRows, kPaged> tile_info;
  int first_block = 0, last_block = 0;
  if constexpr (!kPaged) {
    tile_info.load(blockIdx.x, lens, lens_end, 0, num_rows);
    first_block = tile_info.block_begin;
    last_block = tile_info.block_end;
  }

  if (threadIdx.x == 0) {
    tma_prefetch_desc(&tmap_q);
    tma_prefetch_desc(&tmap_keys);
    tma_prefetch_desc(&tmap_scales);
    tma_prefetch_desc(&tmap_weights);
    #pragma unroll
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full_bar + s * 8, 1);
      mbar_init(empty_bar + s * 8, 128);
    }
    #pragma unroll
    for (int s = 0; s < 2; ++s) {
      mbar_init(q_full_bar + s * 8, 1);
      mbar_init(q_empty_bar + s * 8, kMathWG * 128);
    }
    fence_mbar_init();
  }
  __syncthreads();

  MqaWalker<kRows, kPaged> walker(schedule, lens, lens_2d, first_block, last_block);
  if (warpgroup == 0) {
    // ---- producer: warp r feeds ring r with its blocks' keys and scales (warp 0 also loads each
    // tile's queries); then the four warps set uncovered positions to -inf ----
    if constexpr (kMathWG > 1) setmaxnreg_dec<kProducerRegs>();
    if (warp < kMathWG) {
      mqa_produce<kRows, kHeads, kHeadDim, kStages, kPaged, kMathWG>(walker, smem, &tmap_q, &tmap_keys,
                                                                     &tmap_scales, &tmap_weights, block_table,
                                                                     block_table_ld, warp, lane);
    }
    __syncwarp();
    if (clean) {
      const int out_rows = kPaged ? num_rows * kRows : num_rows;
      for (int row = blockIdx.x * 4 + warp; row < out_rows; row += gridDim.x * 4) {
        fill_uncovered<kRows, kPaged, Logit>(row, lens, lens_end, lens_2d, logits, logits_ld, num_rows, num_cols,
                                             compressed);
      }
    }
    return;
  }

  // ---- math warpgroup r: the blocks of ring r ----
  if constexpr (kMathWG > 1) setmaxnreg_inc<kMathRegs>();
  const int ring = warpgroup - 1;
  const int key_row0 = warp * 16 + lane / 4;  // this thread's key rows in a block: key_row0, key_row0 + 8
  PipelineState<kRingStages> pipe;
  float acc[kN / 2];
  float w[kN / 4];  // the weights of this thread's columns: 2 per 8-column chunk
  int t, begin, end, q_loads = 0;
  while (walker.next(t, begin, end)) {
    if (q_loads > 0) mbar_arrive(q_empty_bar + ((q_loads - 1) & 1) * 8);  // the previous tile's queries are read
    const int buf = q_loads & 1;
    // NOTES: wait for every tile's queries, blocks or not: a warpgroup with no block here must not
    // run ahead and arrive on a query buffer again before that buffer's phase has completed.
    mbar_wait(q_full_bar + buf * 8, (q_loads >> 1) & 1);
    ++q_loads;
    const int first = first_block_of<kMathWG>(ring, t, begin);
    if (first < end) {
      if constexpr (kPaged) tile_info.load(t, lens, lens_end, lens_2d, num_rows);
      const u32 tile_weights = smem_addr(smem + Smem::kOffWeights + buf * Smem::kWeightBytes);
      #pragma unroll
      for (int c = 0; c < kN / 8; ++c) {
        #pragma unroll
        for (int e = 0; e < 2; ++e) w[c * 2 + e] = ld_shared_f32(tile_weights + (c * 8 + (lane % 4) * 2 + e) * 4);
      }
    }
    for (int block = first; block < end; block += kMathWG) {
      const int stage = ring * kRingStages + pipe.stage;
      mbar_wait(full_bar + stage * 8, pipe.phase);
      pipe.advance();
      const u64 desc_keys = smem_desc_k_major_swizzled<kHeadDim>(smem + Smem::kOffKeys + stage * Smem::kKeyBytes);
      const u64 desc_q = smem_desc_k_major_swizzled<kHeadDim>(smem + Smem::kOffQ + buf * Smem::kQBytes);
      #pragma unroll
      for (int i = 0; i < kN / 2; ++i) fence_operand(acc[i]);
      wgmma_fence();
      #pragma unroll
      for (int kk = 0; kk < kHeadDim / 32; ++kk) {
        Wgmma<kN>::template mma<kE4M3, kE4M3>(acc, desc_keys + kk * 2, desc_q + kk * 2, kk > 0);
      }
      wgmma_commit();
      const u32 scales = smem_addr(smem + Smem::kOffScales + stage * kKvBlock * 4);
      const float scale0 = ld_shared_f32(scales + key_row0 * 4), scale1 = ld_shared_f32(scales + (key_row0 + 8) * 4);
      wgmma_wait<0>();
      #pragma unroll
      for (int i = 0; i < kN / 2; ++i) fence_operand(acc[i]);
      mbar_arrive(empty_bar + stage * 8);

      // Weighted sum over the heads of each draft token / query row j, for both key rows. With a
      // non-negative scale s, relu(x * s) = s * relu(x) rounds the same: one multiply per key row.
      float sum0[kRows], sum1[kRows];
      if (scale0 >= 0.0f && scale1 >= 0.0f) {
        head_sums<kRows, kHeads, kN, false>(acc, w, scale0, scale1, sum0, sum1);
        #pragma unroll
        for (int j = 0; j < kRows; ++j) {
          sum0[j] *= scale0;
          sum1[j] *= scale1;
        }
      } else {
        head_sums<kRows, kHeads, kN, true>(acc, w, scale0, scale1, sum0, sum1);
      }
      if constexpr (kRows <= 2) {
        store_logits_by_pairs<kRows, kPaged, Logit>(sum0, sum1, tile_info, t, block, key_row0, logits, logits_ld,
                                                    num_rows, num_cols, compressed, clean);
      } else {  // NOTES: the reduce-scatter spilled at 4 rows x 32 heads (112 registers)
        store_logits_by_quads<kRows, kPaged, Logit>(sum0, sum1, tile_info, t, block, key_row0, logits, logits_ld,
                                                    num_rows, num_cols, compressed, clean);
      }
    }
  }
}

}  // namespace mategemm
