// The GEMM core's compile-time description (GemmTraits: template arguments, derived constants,
// the checks on their combination), its shared-memory layout, and its run-time arguments.
#pragma once
#include "../common/barrier.cuh"
#include "../common/gated_act.cuh"
#include "../common/groups.cuh"
#include "../common/ptx.cuh"
#include "../common/types.cuh"

namespace mategemm {

constexpr int kBlockK = 128;  // bytes of K per stage row: one 128-byte swizzled row; one scale block of FP8

__host__ __device__ constexpr int const_gcd(int a, int b) { return b == 0 ? a : const_gcd(b, a % b); }

template <int BLOCK_M>
__host__ __device__ constexpr int gemm_math_warpgroups() { return BLOCK_M == 64 ? 1 : 2; }

// A producer warpgroup, the math warpgroups, and (NVFP4) kDecoderWGs more warpgroups that decode.
template <int BLOCK_M, int kDecoderWGs = 0>
__host__ __device__ constexpr int gemm_threads() { return (gemm_math_warpgroups<BLOCK_M>() + 1 + kDecoderWGs) * 128; }

// NVFP4 operands (kNvfp4): one stage is 64 values of K, two e2m1 per byte, so its packed rows are
// 32 bytes; their e4m3 scales come in NVIDIA's 128x4 blocked layout, 512 bytes per 128 rows and 64
// values of K (row r's 4 scales at (r % 32) * 16 + (r / 32) * 4). Per stage, TMA lands A's and B's
// packed tiles and the scale chunks covering their rows in a staging area; the producer's warps 1-3
// decode them into the bf16 tiles the wgmma read.
template <int BLOCK_M, int BLOCK_N>
struct Nvfp4StageLayout {
  static constexpr int kPackedRowBytes = 32;
  static constexpr int kScaleChunkBytes = 512;  // 128 rows x 4 scales
  static constexpr int kScaleChunkRows = 128;
  static constexpr int kAChunks = ceil_div(BLOCK_M, kScaleChunkRows), kBChunks = ceil_div(BLOCK_N, kScaleChunkRows);
  static constexpr int kOffA = 0;  // every part starts 128-byte aligned, as TMA destinations must
  static constexpr int kOffB = kOffA + BLOCK_M * kPackedRowBytes;
  static constexpr int kOffScalesA = kOffB + BLOCK_N * kPackedRowBytes;
  static constexpr int kOffScalesB = kOffScalesA + kAChunks * kScaleChunkBytes;
  static constexpr int kBytes = kOffScalesB + kBChunks * kScaleChunkBytes;
};

template <int BLOCK_M, int BLOCK_N, int kNumStages, int kScaleGranN, int kOutElemBytes, int kGroupMode, int kMaxGroups,
          int kMnMajor, bool kNvfp4 = false, int kScaleGranK = 128, bool kTmaScales = false, int kBHalves = 1,
          bool kNvfp4DecodedA = false, bool kNvfp4DecodedB = false, int kSplitCluster = 1>
struct GemmSmemLayout {
  // The epilogue's staging rows: the whole tile, or with NVFP4 weights decoded beforehand one 64-row
  // wave per math warpgroup, so that 256-row tiles keep a fourth stage (the waves go out in turn).
  static constexpr int kOutRows = kNvfp4DecodedB ? 64 * gemm_math_warpgroups<BLOCK_M>() : BLOCK_M;
  static constexpr int kOutBytes = kOutRows * BLOCK_N * kOutElemBytes;
  static constexpr int kABytes = BLOCK_M * kBlockK;
  static constexpr int kBHalfBytes = BLOCK_N * kBlockK;  // one half of a gated B tile (gate or up rows)
  static constexpr int kBBytes = kBHalves * kBHalfBytes;
  // Scales of one stage. (1,128,128): per row, the products sa * sb with the tile's first B scale
  // block, then (if the tile can straddle two) with the next; with kTmaScales only sa per row, as
  // TMA lands them. (1,1,128): sa per row, sb per column (kTmaScales: each as a bulk copy lands
  // it, 16-byte aligned); (1,1,32): those for each of the stage's four 32-value K blocks in turn.
  // A gated tile's two halves take a B scale block each.
  static constexpr bool kTwoScaleBlocks = kScaleGranN == 128 && (128 % BLOCK_N != 0 || kBHalves == 2);
  // kTmaScales with the (1,128,128) recipe: A's scales per stage by TMA, each work item's B scales in
  // a buffer of its own (ItemBScales); with ragged K's (1,1,128): each stage's row of sa and of sb
  // copied by bulk copies beside its tiles.
  static constexpr bool kItemBScales = kTmaScales && kScaleGranN == 128;
  static constexpr bool kBulkStageScales = kTmaScales && kScaleGranN == 1;
  // kTmaScales: a TMA box's first row must sit on 16 bytes (4 floats). Tiles of the grouped M modes
  // start on any row: their boxes (up to 128 rows, 4 more) start at the row rounded down to 4, the
  // next box 128 rows on (the boxes overlap by 4 rows); the stage holds BLOCK_M + 4 rows, 128-byte
  // aligned as TMA writes them.
  static constexpr int kScaleRowSlack = kTmaScales && group_rows_checked<kGroupMode>() ? 4 : 0;
  static constexpr int kScaleBoxStep = kScaleRowSlack && BLOCK_M > 128 ? 128 : BLOCK_M;
  static constexpr int kScaleBoxRows = kScaleBoxStep + kScaleRowSlack;
  static constexpr int kScaleBoxes = BLOCK_M / kScaleBoxStep;
  static constexpr int kSfFloats = kScaleGranN == 0                     ? 0
                                   : kItemBScales                     ? BLOCK_M + kScaleRowSlack
                                   : kScaleGranN == 128               ? BLOCK_M * (kTwoScaleBlocks ? 2 : 1)
                                                                      : (BLOCK_M + BLOCK_N) * (kBlockK / kScaleGranK);
  static constexpr int kSfAlign = kScaleRowSlack ? 128 : 16;
  static constexpr int kSfBytes = (kSfFloats * 4 + kSfAlign - 1) / kSfAlign * kSfAlign;
  // The first row of the scale box of a tile starting at row a_row0 of A.
  static __device__ __forceinline__ int scale_box_row(int a_row0) { return kScaleRowSlack ? a_row0 & ~3 : a_row0; }
  // MN-major operands (kMnMajor bit 0: A, bit 1: B) land untransposed in a staging area of the
  // stage: chunks of 128 K-rows x min(rows, 128) bytes, no swizzle.
  static constexpr int kStagingABytes = (kMnMajor & 1) ? kABytes : 0;
  static constexpr int kStagingBytes =
      // NVFP4: no staging of an operand decoded beforehand
      kNvfp4 ? Nvfp4StageLayout<kNvfp4DecodedA ? 0 : BLOCK_M, kNvfp4DecodedB ? 0 : BLOCK_N>::kBytes
             : kStagingABytes + ((kMnMajor & 2) ? kBBytes : 0);
  static constexpr int kOffA = kOutBytes;
  static constexpr int kOffB = kOffA + kNumStages * kABytes;
  static constexpr int kOffStaging = kOffB + kNumStages * kBBytes;
  static constexpr int kOffScales = kOffStaging + kNumStages * kStagingBytes;
  static constexpr int kOffBarriers = kOffScales + kNumStages * kSfBytes;
  // full and empty per stage; with staging also "staged" (the TMA loads landed)
  static constexpr int kNumBarrierSets = kMnMajor || kNvfp4 ? 3 : 2;
  // Split-K, 16 bytes: through the workspace, the flag "this CTA reduces"; in a cluster, two mbarriers
  // (rank 0's "the other ranks' partials landed", the others' "rank 0 has read them").
  static constexpr int kOffSplitFlag = kOffBarriers + kNumBarrierSets * kNumStages * 8;
  // Grouped M modes: a byte per tile row, "this row belongs to the tile's group".
  static constexpr int kRowOkBytes = group_rows_checked<kGroupMode>() ? (BLOCK_M + 15) & ~15 : 0;
  static constexpr int kOffRowOk = kOffSplitFlag + 16;
  static constexpr int kOffGroupTable = kOffRowOk + kRowOkBytes;  // GroupTable: 3 ints per group
  // kGroupOffsets: a fourth, each group's first 128-row tile of A's NVFP4 scales
  static constexpr int kGroupTableInts = kGroupMode == kGroupOffsets ? 4 : 3;
  // kItemBScales: a tile's B scales for each of its K blocks (at most kMaxTileKBlocks) and its one or
  // two B scale blocks, in two buffers that tiles take in turn.
  static constexpr int kMaxTileKBlocks = 256;
  static constexpr int kSfbTileFloats = kItemBScales ? kMaxTileKBlocks * (kTwoScaleBlocks ? 2 : 1) : 0;
  static constexpr int kOffSfbTiles = kOffGroupTable + kGroupTableInts * kMaxGroups * 4;
  // Split-K in a cluster: rank 0's slots for the other ranks' fp32 partial tiles (16-byte stores).
  static constexpr int kSplitSlotBytes = BLOCK_M * BLOCK_N * 4;
  static constexpr int kOffSplitSlots = kOffSfbTiles + 2 * kSfbTileFloats * 4;
  static_assert(kSplitCluster == 1 || kOffSplitSlots % 16 == 0, "split-K slots take 16-byte stores");
  // 1024 B of slack: the dynamic shared-memory base is aligned up to 1024 B in the kernel.
  static constexpr int kTotalBytes = kOffSplitSlots + (kSplitCluster - 1) * kSplitSlotBytes + 1024;
  static_assert(kOutBytes % 1024 == 0 && kABytes % 1024 == 0 && kBBytes % 1024 == 0,
                "swizzled tiles must stay 1024-byte aligned");
};

template <int BLOCK_M_, int BLOCK_N_, int kNumStages_, int kScaleGranN_, OperandType kTypeA_, OperandType kTypeB_,
          OutType kOutType_, int kOutSwizzle_, int kClusterM_, int kClusterN_, int kSplitK_, GroupMode kGroupMode_,
          int kMaxGroups_, int kMnMajor_, bool kNvfp4_ = false, int kScaleGranK_ = 128, bool kTmaScales_ = false,
          int kDecoderWGs_ = 0, int kGatedAct_ = kNoGatedAct, bool kGatherA_ = false, bool kNvfp4DecodedA_ = false,
          bool kAllowOverlap_ = true, bool kNvfp4DecodedB_ = false, bool kBEvictFirst_ = false,
          bool kScalesAheadAll_ = false>
struct GemmTraits {
  static constexpr int BLOCK_M = BLOCK_M_, BLOCK_N = BLOCK_N_, kNumStages = kNumStages_;
  // 128: B scales per (128-column block, 128-K block) (DeepSeek-V3's 1x128 / 128x128); 1: per
  // (column, 128-K block); both promoted per 128-K block. 0: per-row A and per-tensor B scales
  // (or none, 16-bit operands), applied once to the finished accumulator.
  static constexpr int kScaleGranN = kScaleGranN_;
  static constexpr OperandType kTypeA = kTypeA_, kTypeB = kTypeB_;
  static constexpr OutType kOutType = kOutType_;
  static constexpr int kOutSwizzle = kOutSwizzle_, kClusterM = kClusterM_, kClusterN = kClusterN_;
  // Split-K (Tile::split, split_k.cuh): 0 none; 1 a tile's work items reduce through a global
  // workspace; n > 1 its n work items run as the n CTAs of a cluster and reduce in rank 0's shared
  // memory.
  static constexpr int kSplitK = kSplitK_;
  static constexpr int kSplitCluster = kSplitK > 1 ? kSplitK : 1;
  static constexpr GroupMode kGroupMode = kGroupMode_;
  static constexpr int kMaxGroups = kMaxGroups_, kMnMajor = kMnMajor_;
  // NVFP4 operands decoded to bf16 in shared memory (kTypeA = kTypeB = kBF16: the wgmma's types),
  // with the expert's scale applied at the end.
  static constexpr bool kNvfp4 = kNvfp4_;
  // NVFP4: warpgroups after the math ones whose 4 warps decode beside the producer's warps 1-3.
  static constexpr int kDecoderWGs = kDecoderWGs_;
  static constexpr int kDecodeWarps = 3 + 4 * kDecoderWGs;
  // Scales per 128 (one per stage) or per 32 values of K (MXFP8's blocks: four per stage, each
  // promoting its own k32 wgmma; with per-column B scales only).
  static constexpr int kScaleGranK = kScaleGranK_;
  static constexpr int kScaleBlocksK = kBlockK / kScaleGranK;
  // Scales loaded with each stage's tiles (Layout::kItemBScales, kBulkStageScales); otherwise the
  // producer's warps 1-3 copy every stage's scales (any strides).
  static constexpr bool kTmaScales = kTmaScales_;
  // A gated GEMM (the MoE layer's first): B's rows per group are [gate (n) | up (n)]; a tile of n
  // columns multiplies both halves (two 128-row TMA boxes per stage, two wgmma per stage and wave)
  // and stores act(gate, up) quantised to FP8 per row and 128 columns, with the scales beside.
  static constexpr int kGatedAct = kGatedAct_;
  static constexpr bool kGated = kGatedAct != kNoGatedAct;
  static constexpr int kBHalves = kGated ? 2 : 1;
  // A's rows gathered (the MoE layer's first GEMM reading each token's FP8 row where it lies): GEMM
  // row r reads A row gather_pairs[r] / gather_div, copied 16 bytes a lane by the producer's warp
  // (cp.async into the swizzled places); A's scales through the same index by the scale warps.
  static constexpr bool kGatherA = kGatherA_;
  // NVFP4 with A's rows decoded to bf16 beforehand (sm90_nvfp4_dequant_a): TMA loads A's bf16 tile
  // straight into the stage; the decoding warps decode B alone.
  static constexpr bool kDecodedA = kNvfp4DecodedA_;
  // NVFP4 with the groups' weights decoded to bf16 beforehand (sm90_nvfp4_dequant_b, in group order):
  // TMA loads B's bf16 tile too and nothing is decoded in the kernel.
  static constexpr bool kDecodedB = kNvfp4DecodedB_;
  // The second scratch accumulator where the tile allows it (PromotedMainLoop::kOverlap); false: never.
  static constexpr bool kAllowOverlap = kAllowOverlap_;
  // K-major B tiles loaded evict-first from L2 (each B line read by one CTA once).
  static constexpr bool kBEvictFirst = kBEvictFirst_;
  // kItemBScales: one-wave tiles too stage the next item's B scales under the main loop (consume_tiles).
  static constexpr bool kScalesAheadAll = kScalesAheadAll_;

  static constexpr int kNumMathWG = gemm_math_warpgroups<BLOCK_M>();
  static constexpr int kWaves = BLOCK_M / 64 / kNumMathWG;  // 64-row waves per math warpgroup
  static constexpr int kAcc = BLOCK_N / 2;  // fp32 accumulators per thread for m64nBLOCK_N
  static constexpr int kSubTiles = kWaves * kBHalves;  // m64nBLOCK_N accumulators per math thread
  static constexpr int kCluster = kClusterM * kClusterN;  // CTAs sharing a multicast operand
  static constexpr int kCtasPerCluster = kCluster * kSplitCluster;
  static constexpr bool kOutAdd = kOutType == kOutF32Add;  // fp32 output, added into `out` (3-D outputs)
  static constexpr int kOutElemBytes = out_elem_bytes(kOutType);
  static constexpr bool kRowsChecked = group_rows_checked<kGroupMode>();
  static constexpr bool kScaleAtEnd = kScaleGranN == 0;
  // 16-bit operands (bmm_fp16): no scales at all; a stage row of 128 bytes holds 64 elements of K.
  static constexpr bool kUnscaled = operand_bytes(kTypeA) == 2 && !kNvfp4;
  static constexpr int kBlockKElems = kBlockK / operand_bytes(kTypeA);
  // B's rows: grouped M modes stack the groups' (n, k) weights.
  static constexpr bool kGroupedB = kGroupMode != kGroupNone && kGroupMode != kGroupK;
  using Layout = GemmSmemLayout<BLOCK_M, BLOCK_N, kNumStages, kScaleGranN, kOutElemBytes, kGroupMode, kMaxGroups,
                                kMnMajor, kNvfp4, kScaleGranK, kTmaScales, kBHalves, kNvfp4DecodedA_, kNvfp4DecodedB_,
                                kSplitCluster>;
  // NVFP4's staging of a stage: the packed rows and scale chunks of the operands decoded in the kernel
  using Nvfp4Stage = Nvfp4StageLayout<kNvfp4DecodedA_ ? 0 : BLOCK_M, kNvfp4DecodedB_ ? 0 : BLOCK_N>;
  static constexpr bool kItemBScales = Layout::kItemBScales, kBulkStageScales = Layout::kBulkStageScales;

  // NOTES: every math thread arrives on the stage's empty barrier itself, so its scale reads are
  // ordered before the scale warp's next write by the barrier alone (racecheck follows that, not
  // a __syncwarp before one lane's arrive). The peer CTA's producer also overwrites this CTA's
  // stage (multicast): one lane per math warp arrives on the peer's barrier.
  static constexpr int kEmptyArrivals = kNumMathWG * 128 + (kCluster - 1) * kNumMathWG * 4;
  // The full barrier: the TMA thread and every lane of the stage's scale warp; with staging, every
  // lane of the three warps that transpose (or decode) the stage together (after the scales, if any);
  // the TMA thread alone when no scales are copied (or NVFP4 operands decoded beforehand, both);
  // with gathered A rows also every lane of the producer's warp once its copies have landed.
  static constexpr int kFullArrivals = kNvfp4     ? (kDecodedB ? 1 : kDecodeWarps * 32)
                                       : kMnMajor ? 3 * 32
                                                  : (kScaleAtEnd || kTmaScales ? 1 : 1 + 32) + (kGatherA ? 32 : 0);

  // NOTES: setmaxnreg moves registers inside the CTA's launch allocation (168 x 384 threads
  // under __launch_bounds__(384, 1)); asking for more than the producer released blocks forever.
  // Transposing MN-major operands takes the producer's warps 1-3 past 40 registers: 56, or 64
  // beside per-column B scales (56 spilled there); the promoted 128x128 math spilled at 216.
  // Decoding NVFP4 holds a 16-entry table and a 16-value block's words per thread: 64 beside
  // 216 for the math (a scale-at-end 128-wide tile needs 64 accumulators per thread and wave).
  // Gathered A rows: the producer's lanes keep the tile's row indices (16 at BLOCK_M 256).
  // Decoder warpgroups beside two math ones keep the producer's 64 too; the math warpgroups take
  // what is left of the launch's allocation (64K registers over the threads, in steps of 8).
  static constexpr int kProducerRegs = kNvfp4 ? 64 : kGatherA ? 56 : !kMnMajor ? 40 : kScaleGranN == 1 ? 64 : 56;
  static constexpr int kThreads = gemm_threads<BLOCK_M, kDecoderWGs>();
  static constexpr int kLaunchRegs = 65536 / kThreads / 8 * 8;
  static constexpr int kMathRegsLeft =
      (kLaunchRegs * kThreads - (1 + kDecoderWGs) * 128 * kProducerRegs) / (kNumMathWG * 128) / 8 * 8;
  static constexpr int kMathRegs = kNvfp4 ? (kMathRegsLeft < 216 ? kMathRegsLeft : 216)
                                 : kGatherA ? 224 : !kMnMajor ? 232 : kScaleGranN == 1 ? 216 : 224;

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
  static_assert((!kOutAdd || group_out_3d<kGroupMode>()) &&
                    (kGroupMode != kGroupK || (kOutAdd && (kScaleGranN == 1 || operand_bytes(kTypeA) == 2))),
                "fp32 output is added into a 3-D output; ragged K adds fp32, with the (1,1,128) recipe or unscaled");
  static_assert(!kSplitK || (kCluster == 1 && kWaves == 1), "split-K is for one-wave tiles without clusters");
  static_assert(kSplitK >= 0 && kSplitK <= 8, "split-K in a cluster: at most 8 CTAs");
  static_assert(kOutType != kOutE4M3 || ((!kRowsChecked || kGated) && !kNvfp4),
                "FP8 output: whole tiles stored by TMA (dense or batched), or a gated GEMM's");
  static_assert(!kGated || (BLOCK_N == 128 && kWaves == 1 && kScaleGranN == 128 && kScaleGranK == 128 &&
                            kOutType == kOutE4M3 && kOutSwizzle == 128 && kCluster == 1 && !kSplitK && kMnMajor == 0 &&
                            (kGroupMode == kGroupCounts || kGroupMode == kGroupPsum) && !kNvfp4),
                "gated: 64 or 128 x 128 tiles of the (1,128,128) recipe, packed token rows, K-major, FP8 output");
  static_assert(!kGatherA || ((kGroupMode == kGroupCounts || kGroupMode == kGroupPsum) && !kTmaScales &&
                              kScaleGranN == 128 && kScaleGranK == 128 && kMnMajor == 0 && kCluster == 1 &&
                              !kNvfp4 && BLOCK_M % 32 == 0),
                "gathered A rows: packed token rows of the (1,128,128) recipe, A's scales by the scale warps, "
                "K-major, no cluster");
  static_assert(kCluster <= 2 && (kClusterM == 1 || BLOCK_N % 16 == 0) && (kClusterN == 1 || BLOCK_M % 16 == 0),
                "a cluster is 1 or 2 CTAs; each CTA's half of the shared tile must stay 1024-byte aligned");
  // NOTES: a tile may straddle at most two 128-column scale blocks of B (checked for every
  // aligned start n0 = j * BLOCK_N): BLOCK_N <= 128 + gcd(BLOCK_N, 128).
  static_assert(kScaleGranN == 0 || kScaleGranN == 1 ||
                    (kScaleGranN == 128 && BLOCK_N <= 128 + const_gcd(BLOCK_N, 128)),
                "BLOCK_N would straddle three B scale blocks");
  static_assert(!kScaleAtEnd || !kSplitK, "scales applied at the end: no split-K");
  static_assert(kScaleGranK == 128 || (kScaleGranK == 32 && kScaleGranN == 1 && kMnMajor == 0),
                "scales per 32 values of K: with per-column B scales, K-major operands");
  static_assert(operand_bytes(kTypeA) == operand_bytes(kTypeB) && (!kUnscaled || (kTypeA == kTypeB && kScaleAtEnd)),
                "16-bit operands: the same type on both sides, unscaled");
  static_assert(!kNvfp4 || (kTypeA == kBF16 && kTypeB == kBF16 && kScaleAtEnd && kGroupMode == kGroupOffsets &&
                            kCluster == 1 && kMnMajor == 0 && BLOCK_N % 64 == 0 &&
                            (BLOCK_M <= 128 || (kDecodedA && kDecoderWGs == 0))),
                "NVFP4: decoded to bf16, scaled at the end, token-packed groups, no cluster, K-major, "
                "BLOCK_M 64 or 128 (256 with A decoded beforehand and no decoder warpgroups), BLOCK_N 64, 128 or 256");
  static_assert(kGroupMode != kGroupOffsets || kNvfp4, "the offsets group mode serves the NVFP4 kernel");
  static_assert(!kDecodedA || kNvfp4, "A decoded beforehand: NVFP4");
  static_assert(!kDecodedB || (kNvfp4 && kDecodedA), "B decoded beforehand: NVFP4, with A decoded beforehand");
  // NOTES: with one math warpgroup the kernel sets no register split (all warps keep the launch's
  // share); beside two math ones the decoder warpgroups give theirs back as the producer's does.
  static_assert(kDecoderWGs == 0 || (kNvfp4 && kDecoderWGs <= 2), "decoder warpgroups: NVFP4, one or two");
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
  static_assert(!kTmaScales || (kScaleGranK == 128 && kMnMajor == 0 && !kUnscaled && !kNvfp4 &&
                                ((kScaleGranN == 128 && (kGroupMode == kGroupNone || kGroupMode == kGroupIds ||
                                                         kGroupMode == kGroupCounts || kGroupMode == kGroupPsum ||
                                                         kGroupMode == kGroupMasked)) ||
                                 (kScaleGranN == 1 && kGroupMode == kGroupK))),
                "scales by TMA: K-major FP8 operands; the (1,128,128) recipe dense or with the groups' tokens "
                "stacked along M (A's scales rows of all tokens per K block), or ragged K's (1,1,128)");
  static_assert(kNumMathWG == 1 ||
                    (1 + kDecoderWGs) * kProducerRegs * 128 + kMathRegs * kNumMathWG * 128 <= kLaunchRegs * kThreads,
                "register split exceeds the CTA's allocation");
};

// The kernel's run-time arguments (its parameters, gathered).
struct GemmArgs {
  const TmaDesc* tmap_a;
  const TmaDesc* tmap_b;
  const TmaDesc* tmap_d;
  const float* sfa;
  int sfa_stride_m, sfa_stride_k;
  const float* sfb;
  int sfb_stride_n, sfb_stride_k;
  int m, n, k;
  int group_n;     // N-blocks per rasterisation group
  int a_box_rows;  // rows of A one CTA loads per stage (the TMA box)
  int num_splits;
  float* split_workspace;
  int* split_counters;
  const int* group_info;
  int num_groups, group_stride, sfa_stride_group, sfb_stride_group;
  void* out_ptr;
  int out_ld;
  int* signal;  // masked overlap counters, or null
  int signal_blocks;
  // kGroupOffsets (NVFP4): each group's expert (-1 or out of range: skipped), the device count of
  // groups that count (null: num_groups), each group's first 128-row tile of A's scales, and the
  // descriptors of the scale chunks (rows of 128 bytes). Without group_scale_tiles each group's
  // scales start a new 128-row tile after the previous group's.
  const int* group_experts = nullptr;
  const int* active_groups = nullptr;
  const u32* group_scale_tiles = nullptr;
  int num_experts = 0;
  const TmaDesc* tmap_sfa = nullptr;  // also (kTmaScales) A's scales: rows of M floats, one per K block
  const TmaDesc* tmap_sfb = nullptr;
  const float* out_scale = nullptr;  // kOutE4M3: the output is result / *out_scale
  const i64* gather_pairs = nullptr;  // kGatherA: GEMM row r reads A row gather_pairs[r] / gather_div
  int gather_div = 1;
  const u8* gather_src = nullptr;  // kGatherA: A's rows (K contiguous bytes each), gather_ld bytes apart
  int gather_ld = 0;
  // kGated: the activation's parameters, and its FP8 output's scales, one per row and 128 columns
  // at act_scales[row * stride_m + (column / 128) * stride_k].
  float act_alpha = 1.0f, act_beta = 0.0f, act_limit = 0.0f;
  float* act_scales = nullptr;
  int act_scales_stride_m = 0, act_scales_stride_k = 0;

  // kGatherA: the A row GEMM row `row` reads (rows past m read the last one's: their outputs are
  // never stored). Pair indices are below m, so the division is a 32-bit one.
  __device__ __forceinline__ int gathered_row(int row) const {
    return static_cast<int>(static_cast<u32>(__ldg(gather_pairs + min(row, m - 1))) / static_cast<u32>(gather_div));
  }
};

// Where everything lives in the CTA's shared memory.
template <class T>
struct GemmSmem {
  u8* out;  // the epilogue's staging tile
  u8* a;    // stage s's A tile at a + s * kABytes
  u8* b;
  u8* staging;  // stage s's untransposed MN-major tiles at staging + s * kStagingBytes
  u32 scales;   // stage s's scales at scales + s * kSfBytes
  u32 sfb_tiles;  // kTmaScales: B scale buffer p of the tiles at sfb_tiles + p * kSfbTileFloats * 4
  BarrierRing full, empty;
  BarrierRing staged;  // with MN-major operands: the stage's TMA loads landed
  u32 split_flag;
  Barrier split_landed, split_read;  // split-K in a cluster (rank 0's, the other ranks')
  u32 split_slots;
  u32 row_ok;
  int* group_ints;

  __device__ __forceinline__ explicit GemmSmem(u8* smem)
      : out(smem), a(smem + T::Layout::kOffA), b(smem + T::Layout::kOffB),
        staging(smem + T::Layout::kOffStaging), scales(smem_addr(smem + T::Layout::kOffScales)),
        sfb_tiles(smem_addr(smem + T::Layout::kOffSfbTiles)),
        full{smem_addr(smem + T::Layout::kOffBarriers)}, empty{full.base + T::kNumStages * 8},
        staged{empty.base + T::kNumStages * 8}, split_flag(smem_addr(smem + T::Layout::kOffSplitFlag)),
        split_landed{split_flag}, split_read{split_flag + 8}, split_slots(smem_addr(smem + T::Layout::kOffSplitSlots)),
        row_ok(smem_addr(smem + T::Layout::kOffRowOk)),
        group_ints(reinterpret_cast<int*>(smem + T::Layout::kOffGroupTable)) {}
};

}  // namespace mategemm
