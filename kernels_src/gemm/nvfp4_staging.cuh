// NVFP4 operands on the GEMM core (traits kNvfp4): the producer thread TMA-loads each stage's packed
// e2m1 tiles and their e4m3 scale chunks into the stage's staging area (Nvfp4StageLayout); the
// producer warpgroup's warps 1-3 decode them into the bf16 tiles, K-major and 128-byte swizzled,
// that the wgmma read, then arrive on the stage's full barrier. Every product of an e2m1 value (two
// significant bits) and an e4m3 scale (four) is exact in bf16 (eight), so the bf16 wgmma with fp32
// accumulation computes the block-scaled product exactly up to the order of its fp32 additions.
#pragma once
#include "../common/e2m1.cuh"
#include "scheduler.cuh"

namespace mategemm {

// ---- the producer thread ----------------------------------------------------------------------
template <class T>
__device__ __forceinline__ void produce_nvfp4_tiles(const GemmArgs& args, const GemmSmem<T>& smem,
                                                    GemmScheduler<T>& scheduler) {
  using Stage = typename T::Nvfp4Stage;
  // per operand: its bf16 tile where decoded beforehand, else its packed rows and scale chunks
  constexpr u32 kABytes = T::kDecodedA ? T::Layout::kABytes
      : T::BLOCK_M * Stage::kPackedRowBytes + Stage::kAChunks * Stage::kScaleChunkBytes;
  constexpr u32 kBBytes = T::kDecodedB ? T::Layout::kBBytes
      : T::BLOCK_N * Stage::kPackedRowBytes + Stage::kBChunks * Stage::kScaleChunkBytes;
  constexpr u32 kStageBytes = kABytes + kBBytes;
  constexpr int kChunkBoxRows = Stage::kScaleChunkBytes / 128;  // the scale descriptors' rows are 128 bytes
  const int n_scale_tiles = ceil_div(args.n, Stage::kScaleChunkRows);
  PipelineState<T::kNumStages> pipe;
  Tile t;
  while (scheduler.next(t)) {
    const int n0 = t.n_block * T::BLOCK_N;
    const int b_row0 = t.group * args.n + n0;  // decoded B: t.group is the group (group_experts)
    // The chunks of 128 scale rows holding the tile's rows; each spans K in steps of 64 values.
    const int a_tile0 = t.a_scale_row / Stage::kScaleChunkRows;
    const int b_tile0 = t.group * n_scale_tiles + n0 / Stage::kScaleChunkRows;
    const int k_chunks = scheduler.num_k_blocks;
    for (int kb = t.kb_begin; kb < t.kb_end; ++kb) {
      // with both operands decoded beforehand the loads complete the full barrier themselves
      const Barrier loaded = (T::kDecodedB ? smem.full : smem.staged)[pipe.stage];
      smem.empty[pipe.stage].wait(pipe.phase ^ 1);
      loaded.arrive_expect_tx(kStageBytes);
      u8* staging = smem.staging + pipe.stage * T::Layout::kStagingBytes;
      const int k_byte = kb * Stage::kPackedRowBytes;
      if constexpr (T::kDecodedA) {  // the bf16 tile itself (the stage's bf16 tiles are free: empty above)
        tma_load_2d(smem.a + pipe.stage * T::Layout::kABytes, args.tmap_a, loaded.addr, kb * T::kBlockKElems, t.a_row0);
      } else {
        tma_load_2d(staging + Stage::kOffA, args.tmap_a, loaded.addr, k_byte, t.a_row0);
        #pragma unroll
        for (int c = 0; c < Stage::kAChunks; ++c) {
          tma_load_2d(staging + Stage::kOffScalesA + c * Stage::kScaleChunkBytes, args.tmap_sfa, loaded.addr, 0,
                      ((a_tile0 + c) * k_chunks + kb) * kChunkBoxRows);
        }
      }
      if constexpr (T::kDecodedB) {
        tma_load_2d(smem.b + pipe.stage * T::Layout::kBBytes, args.tmap_b, loaded.addr, kb * T::kBlockKElems, b_row0);
      } else {
        tma_load_2d(staging + Stage::kOffB, args.tmap_b, loaded.addr, k_byte, b_row0);
        #pragma unroll
        for (int c = 0; c < Stage::kBChunks; ++c) {
          tma_load_2d(staging + Stage::kOffScalesB + c * Stage::kScaleChunkBytes, args.tmap_sfb, loaded.addr, 0,
                      ((b_tile0 + c) * k_chunks + kb) * kChunkBoxRows);
        }
      }
      pipe.advance();
    }
  }
}

// ---- warps 1-3: decode -------------------------------------------------------------------------
// One operand's rows [row, rows) in steps of kStep (the decoding threads, 2 per row): each thread
// decodes half `half` of its rows' 64 values, 32 values of two scale blocks (16 packed bytes, 2
// scales) into four 16-byte chunks of the bf16 row. kStep is a multiple of 8, so those chunks keep
// their swizzled places (chunk c of row r at c ^ r % 8: the 128-byte swizzle; tiles 1024-B aligned).
template <bool kOneChunk, u32 kStep>
__device__ __forceinline__ void decode_nvfp4_rows(u32 row, u32 rows, u32 half, u32 packed, u32 scales,
                                                  u32 scale_row0, u32 tile) {
  static_assert(kStep % 8 == 0, "rows kStep apart keep their swizzled chunk places");
  constexpr u32 kPackedRowBytes = 32;
  u32 chunk[4];
  #pragma unroll
  for (int c = 0; c < 4; ++c) chunk[c] = ((4 * half + c) ^ (row % 8)) * 16;
  #pragma unroll 1
  for (; row < rows; row += kStep) {
    const uint4 values = ld_shared_v4(packed + row * kPackedRowBytes + half * 16);
    const u32 two_scales = ld_shared_u16(scales + nvfp4_scale_offset<kOneChunk>(scale_row0 + row) + half * 2);
    const E2m1Table first = e2m1_table(two_scales), second = e2m1_table(two_scales >> 8);
    const u32 row_addr = tile + row * kBlockK;
    u32 out[4];
    decode_e2m1x8(values.x, first, out);
    st_shared_v4(row_addr + chunk[0], out[0], out[1], out[2], out[3]);
    decode_e2m1x8(values.y, first, out);
    st_shared_v4(row_addr + chunk[1], out[0], out[1], out[2], out[3]);
    decode_e2m1x8(values.z, second, out);
    st_shared_v4(row_addr + chunk[2], out[0], out[1], out[2], out[3]);
    decode_e2m1x8(values.w, second, out);
    st_shared_v4(row_addr + chunk[3], out[0], out[1], out[2], out[3]);
  }
}

// One stage: A's rows of the tile's group (rows past them feed only output rows that are never
// stored), then all of B's. Thread i of the decoding threads takes half i % 2 of rows i / 2,
// i / 2 + kRowsPerPass, ... of A's rows followed by B's. A warp's packed loads are 512 contiguous
// bytes and each quarter-warp's stores hit the 8 chunks of four rows: no bank conflicts (the 2-byte
// scale loads of 16 rows 16 bytes apart: two-way).
template <class T>
__device__ __forceinline__ void decode_nvfp4_stage(u32 staging, u32 tile_a, u32 tile_b, u32 a_rows, u32 a_scale_row0,
                                                   u32 b_scale_row0, u32 thread) {
  using Stage = typename T::Nvfp4Stage;
  constexpr u32 kRowsPerPass = T::kDecodeWarps * 32 / 2;
  const u32 half = thread % 2;
  const u32 first = thread / 2;
  // a tile of at most 128 rows lies in one scale chunk (a 64-row one starts at row 0 or 64 of it)
  decode_nvfp4_rows<Stage::kAChunks == 1, kRowsPerPass>(first, a_rows, half, staging + Stage::kOffA,
                                                        staging + Stage::kOffScalesA, a_scale_row0, tile_a);
  // where this thread's rows continue in B: its passes over A covered ceil((a_rows - first) / kRowsPerPass) rows
  const u32 a_passes = first < a_rows ? (a_rows - first + kRowsPerPass - 1) / kRowsPerPass : 0;
  decode_nvfp4_rows<Stage::kBChunks == 1, kRowsPerPass>(first + a_passes * kRowsPerPass - a_rows, T::BLOCK_N, half,
                                                        staging + Stage::kOffB, staging + Stage::kOffScalesB,
                                                        b_scale_row0, tile_b);
}

// `thread`: this thread's index among the decoding ones (warps 1-3 of the producer warpgroup, then
// the decoder warpgroups' warps).
template <class T>
__device__ __forceinline__ void decode_nvfp4_stages(const GemmSmem<T>& smem, GemmScheduler<T>& scheduler,
                                                    u32 thread) {
  using Layout = typename T::Layout;
  using Stage = typename T::Nvfp4Stage;
  int iter = 0;
  Tile t;
  while (scheduler.next(t)) {
    const u32 a_rows = T::kDecodedA ? 0 : min(T::BLOCK_M, t.row_end - t.row0);  // A's rows to decode
    // A tile's rows within its scale chunks: a 64-row tile may start half-way into a 128-row chunk
    const u32 a_scale_row0 = static_cast<u32>(t.a_scale_row) % Stage::kScaleChunkRows;
    const u32 b_scale_row0 = static_cast<u32>(t.n_block * T::BLOCK_N) % Stage::kScaleChunkRows;
    for (int kb = t.kb_begin; kb < t.kb_end; ++kb, ++iter) {
      const int stage = iter % T::kNumStages;
      // NOTES: no wait on the empty barrier: the TMA loads completing `staged` were issued after
      // the producer saw the consumers release this stage, so its bf16 tiles are free by then.
      smem.staged[stage].wait((iter / T::kNumStages) & 1);
      decode_nvfp4_stage<T>(smem_addr(smem.staging + stage * Layout::kStagingBytes),
                            smem_addr(smem.a + stage * Layout::kABytes), smem_addr(smem.b + stage * Layout::kBBytes),
                            a_rows, a_scale_row0, b_scale_row0, thread);
      fence_proxy_async_smem();   // the wgmma (async proxy) read what these stores wrote
      smem.full[stage].arrive();  // release: the stores above are visible to the waiters
    }
  }
}

}  // namespace mategemm
