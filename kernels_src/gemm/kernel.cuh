// The GEMM core's kernel body: set-up, then the roles. Warpgroup 0 produces (one thread issues the
// TMA loads, warps 1-3 stage the block scales, transpose MN-major operands or decode NVFP4); warpgroups
// 1..kNumMathWG consume (main loop, split-K reduction, epilogue). Persistent grid over the tiles.
#pragma once
#include "mainloop.cuh"
#include "nvfp4_staging.cuh"
#include "producer.cuh"
#include "scale_staging.cuh"
#include "split_k.cuh"
#include "tile_epilogue.cuh"

namespace mategemm {

template <class T>
__device__ __forceinline__ void consume_tiles(const GemmArgs& args, const GemmSmem<T>& smem,
                                              GemmScheduler<T>& scheduler, int math_wg) {
  const int warp = (threadIdx.x / 32) % 4;
  const int lane = threadIdx.x % 32;
  ConsumerStages<T> stages{smem.full, smem.empty, {}, smem_desc_k128_sw128(smem.a), smem_desc_k128_sw128(smem.b),
                           scheduler.rank() ^ 1, lane};
  const int thread_row = math_wg * T::kWaves * 64 + warp * 16 + lane / 4;
  PromotedMainLoop<T> promoted{stages, smem.scales, math_wg, warp, lane, thread_row, 0};
  float acc[T::kSubTiles * T::kAcc];
  float part0[T::kScaleAtEnd ? 1 : T::kAcc];
  float part1[PromotedMainLoop<T>::kOverlap ? T::kAcc : 1];
  // kItemBScales: each item's B scales go into one of two buffers in turn (a warpgroup may start the
  // next item while the other still reads this one's). Two-wave tiles of one pass also issue the
  // next item's loads when an item starts and store them after its main loop (faster at short K);
  // one-wave tiles where kScalesAheadAll (heuristics.fp8_gemm.scales_ahead).
  constexpr bool kScalesAhead = T::kItemBScales && GemmScheduler<T>::kPasses == 1 &&
                                (T::kWaves == 2 || T::kScalesAheadAll);
  constexpr int kScaleBarrier = 2 + T::kNumMathWG;  // after the epilogue's and split-K's barriers
  int tile_parity = 0;
  auto sfb_buffer = [&](int parity) { return smem.sfb_tiles + parity * T::Layout::kSfbTileFloats * 4; };
  [[maybe_unused]] bool ahead_staged = false;  // the coming item's B scales are in buffer tile_parity
  [[maybe_unused]] ItemBScales<T> ahead_scales;
  [[maybe_unused]] int consumed = 0;  // stages consumed so far
  [[maybe_unused]] int split_tiles = 0;  // split-K in a cluster: tiles reduced so far
  Tile t;
  [[maybe_unused]] Tile ahead;
  [[maybe_unused]] bool more = kScalesAhead && scheduler.template next<true>(ahead);
  while (kScalesAhead ? more : scheduler.template next<true>(t)) {
    if constexpr (kScalesAhead) {
      t = ahead;
      more = scheduler.template next<true>(ahead);
    }
    for (int pass = 0; pass < GemmScheduler<T>::kPasses; ++pass) {  // GemmScheduler::pass
      if (!scheduler.pass(t, pass)) break;
      if constexpr (GemmScheduler<T>::kStaticWalk) {
        // The ring position from a count that depends on no data (see Tile); items of no K blocks
        // neither compute nor store.
        stages.pipe.stage = consumed % T::kNumStages;
        stages.pipe.phase = (consumed / T::kNumStages) & 1;
        consumed += t.kb_end - t.kb_begin;
        if (t.kb_begin == t.kb_end) continue;
      }
      RowIds<T> row_ids;
      if constexpr (RowIds<T>::kCount > 0) row_ids.load(t, args, math_wg, warp, lane);
      #pragma unroll
      for (int i = 0; i < T::kSubTiles * T::kAcc; ++i) acc[i] = 0.0f;
      if constexpr (T::kItemBScales) {
        promoted.sfb_tile = sfb_buffer(tile_parity);
        if (!ahead_staged) ItemBScales<T>::copy(args, t, promoted.sfb_tile);
        named_barrier_sync(kScaleBarrier, T::kNumMathWG * 128);
        promoted.scale_row_shift = t.a_row0 - T::Layout::scale_box_row(t.a_row0);
        tile_parity ^= 1;
        ahead_staged = kScalesAhead && more && ahead.kb_begin < ahead.kb_end;
        if (ahead_staged) ahead_scales.load(args, ahead);
      }
      if constexpr (T::kScaleAtEnd) {
        scale_at_end_mainloop<T>(stages, acc, t, args, math_wg, warp, lane);
      } else {
        // B scales: with 128-column blocks, chunks of 8 columns before `first_chunks` use block
        // n0 / 128, the rest the next block.
        promoted.first_chunks = (128 - t.n_block * T::BLOCK_N % 128) / 8;
        promoted.run(acc, part0, part1, t);
      }
      if constexpr (kScalesAhead) {
        if (ahead_staged) ahead_scales.store(sfb_buffer(tile_parity));
      }
      if constexpr (T::kSplitCluster > 1) {
        if (!split_k_reduce_in_cluster<T>(acc, t, smem, split_tiles++)) continue;
      } else if constexpr (T::kSplitK) {
        if (!split_k_reduce<T>(acc, t, args, smem.split_flag)) continue;
      }
      store_tile<T>(acc, t, args, smem, math_wg, warp, lane, row_ids);
    }
  }
  if ((threadIdx.x % 128) == 0) tma_store_wait_all();
}

template <class T>
__device__ __forceinline__ void gemm_kernel_body(const GemmArgs& args) {
  extern __shared__ __align__(1024) u8 smem_raw[];
  u8* smem_base = reinterpret_cast<u8*>((reinterpret_cast<u64>(smem_raw) + 1023) & ~static_cast<u64>(1023));
  const GemmSmem<T> smem(smem_base);
  const int warpgroup = warp_uniform(threadIdx.x / 128);
  // A K tail past the last whole block is zero-filled by TMA. FP8 (the tail block with its own
  // scales): the host passes K rounded up to whole blocks. NOTES: a ceil_div here tipped the
  // batched 128x128 (1,1,128) kernel into local memory (3 LDL, 1 STL).
  const int num_k_blocks = T::kUnscaled || T::kNvfp4 ? ceil_div(args.k, T::kBlockKElems) : args.k / kBlockK;
  // Split-K: work item `split` of a tile covers k-blocks [split, split + 1) * k_blocks_per_split
  // (the host picks num_splits so that none is empty; it passes 1 unless kSplitK).
  const int k_blocks_per_split = T::kSplitK ? ceil_div(num_k_blocks, args.num_splits) : num_k_blocks;

  // ---- set-up: barriers and descriptor prefetch ----
  if (threadIdx.x == 0) {
    tma_prefetch_desc(args.tmap_a);
    tma_prefetch_desc(args.tmap_b);
    tma_prefetch_desc(args.tmap_d);
    if constexpr (T::kItemBScales) tma_prefetch_desc(args.tmap_sfa);
    if constexpr (T::kNvfp4) {
      tma_prefetch_desc(args.tmap_sfa);
      tma_prefetch_desc(args.tmap_sfb);
    }
    #pragma unroll
    for (int s = 0; s < T::kNumStages; ++s) {
      smem.full[s].init(T::kFullArrivals);
      smem.empty[s].init(T::kEmptyArrivals);
      if constexpr (T::kMnMajor != 0 || T::kNvfp4) smem.staged[s].init(1);
    }
    if constexpr (T::kSplitCluster > 1) {
      smem.split_landed.init(1);
      smem.split_read.init(1);
    }
    fence_mbar_init();
  }
  grid_dependency_wait();  // the launch's set-up above may overlap the previous kernel (MATEGEMM_PDL)
  const GroupTable table{smem.group_ints, smem.group_ints + T::kMaxGroups, smem.group_ints + 2 * T::kMaxGroups,
                         smem.group_ints + 3 * T::kMaxGroups};
  if constexpr (group_has_table<T::kGroupMode>()) {
    if (threadIdx.x / 32 == 1) {
      build_group_table<T::kGroupMode>(table, args.group_info, args.num_groups,
                                       T::kGroupMode == kGroupK ? args.k : args.m, args.group_stride, T::BLOCK_M,
                                       args.active_groups);
    }
  }
  // The peers' multicast loads, stores and arrivals target these barriers: they must exist first.
  if constexpr (T::kCtasPerCluster > 1) cluster_sync(); else __syncthreads();

  GemmScheduler<T> scheduler(args, table, num_k_blocks, k_blocks_per_split);
  if (warpgroup == 0) {
    if constexpr (T::kNumMathWG > 1) setmaxnreg_dec<T::kProducerRegs>();
    const int warp = threadIdx.x / 32;
    if (warp == 0 && (T::kGatherA || elect_one_sync())) {  // gathered A rows: the warp's lanes load them
      if constexpr (T::kNvfp4) {
        produce_nvfp4_tiles<T>(args, smem, scheduler);
      } else {
        produce_tiles<T>(args, smem, scheduler);
      }
    } else if (warp > 0 && ((!T::kScaleAtEnd && !T::kTmaScales) || T::kMnMajor != 0 || T::kNvfp4)) {
      if constexpr (T::kNvfp4) {
        if constexpr (!T::kDecodedB) decode_nvfp4_stages<T>(smem, scheduler, threadIdx.x - 32);
      } else {
        stage_scales_and_operands<T>(args, smem, scheduler, warp);
      }
    }
  } else if (warpgroup <= T::kNumMathWG) {
    if constexpr (T::kNumMathWG > 1) setmaxnreg_inc<T::kMathRegs>();
    consume_tiles<T>(args, smem, scheduler, warpgroup - 1);
  } else if constexpr (T::kDecoderWGs > 0) {  // decoder warpgroups: decoding threads 96 on
    if constexpr (T::kNumMathWG > 1) setmaxnreg_dec<T::kProducerRegs>();
    decode_nvfp4_stages<T>(smem, scheduler, 96 + threadIdx.x - (T::kNumMathWG + 1) * 128);
  }
  // A CTA's barriers must outlive the peers' last arrivals on them.
  if constexpr (T::kCtasPerCluster > 1) cluster_sync();
}

// The kernel parameters, as every GEMM kernel takes them (the host's Launch.TYPES); tmap_sfa is
// read only with kTmaScales, out_scale only with kOutE4M3, the gather_* only with kGatherA.
#define MATEGEMM_GEMM_PARAMS                                                                                       \
  const __grid_constant__ TmaDesc tmap_a, const __grid_constant__ TmaDesc tmap_b,                                  \
      const __grid_constant__ TmaDesc tmap_d, const __grid_constant__ TmaDesc tmap_sfa,                          \
      const float *__restrict__ sfa, int sfa_stride_m, int sfa_stride_k,                                          \
      const float *__restrict__ sfb, int sfb_stride_n, int sfb_stride_k, int m, int n, int k, int group_n,        \
      int a_box_rows, int num_splits, float *__restrict__ split_workspace, int *__restrict__ split_counters,      \
      const int *__restrict__ group_info, int num_groups, int group_stride, int sfa_stride_group,                 \
      int sfb_stride_group, const long long *__restrict__ gather_pairs, int gather_div,                            \
      const unsigned char *__restrict__ gather_src, int gather_ld, void *__restrict__ out_ptr, int out_ld,         \
      int *__restrict__ signal, int signal_blocks, const float *__restrict__ out_scale
#define MATEGEMM_GEMM_ARGS                                                                                         \
  GemmArgs {                                                                                                       \
    &tmap_a, &tmap_b, &tmap_d, sfa, sfa_stride_m, sfa_stride_k, sfb, sfb_stride_n, sfb_stride_k, m, n, k, group_n, \
        a_box_rows, num_splits, split_workspace, split_counters, group_info, num_groups, group_stride,            \
        sfa_stride_group, sfb_stride_group, out_ptr, out_ld, signal, signal_blocks, nullptr, nullptr, nullptr, 0,  \
        &tmap_sfa, nullptr, out_scale, gather_pairs, gather_div, gather_src, gather_ld                             \
  }

}  // namespace mategemm
