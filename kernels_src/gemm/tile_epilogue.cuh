// The GEMM's epilogue, per math warpgroup: registers -> swizzled shared tile -> TMA store (which
// clips the M and N tails), or row by row where a grouped tile holds rows that are not its group's.
#pragma once
#include "../common/epilogue.cuh"
#include "scheduler.cuh"

namespace mategemm {

// A gated tile's act(gate, up) quantised 1x128 into the staging tile, its per-row scales stored to
// global memory. acc[0, kAcc) holds the gate half, acc[kAcc, 2 kAcc) the up half, the same (row,
// column) at the same index. The values are rounded to bf16 first, as a bf16 GEMM output read by the
// layer's activation kernel would be: both paths quantise the same numbers the same way.
template <class T>
__device__ __forceinline__ void store_gated_tile_to_smem(float* acc, const Tile& t, const GemmArgs& args,
                                                         u32 out_addr, int tile_row0, int warp, int lane) {
  constexpr int kAcc = T::kAcc;
  float amax_lo = 0.0f, amax_hi = 0.0f;  // the thread's rows r and r + 8
  #pragma unroll
  for (int i = 0; i < kAcc; i += 2) {
    const u32 gate = pack_bf16x2(acc[i], acc[i + 1]), up = pack_bf16x2(acc[kAcc + i], acc[kAcc + i + 1]);
    #pragma unroll
    for (int j = 0; j < 2; ++j) {
      const float g = __uint_as_float(j == 0 ? gate << 16 : gate & 0xffff0000u);
      const float u = __uint_as_float(j == 0 ? up << 16 : up & 0xffff0000u);
      const float x = gated_act<T::kGatedAct>(g, u, args.act_alpha, args.act_beta, args.act_limit);
      acc[i + j] = x;
      if (i % 4 == 0) {
        amax_lo = fmaxf(amax_lo, fabsf(x));
      } else {
        amax_hi = fmaxf(amax_hi, fabsf(x));
      }
    }
  }
  // a row's 128 columns lie with the 4 threads of a quad
  #pragma unroll
  for (int offset = 1; offset < 4; offset *= 2) {
    amax_lo = fmaxf(amax_lo, __shfl_xor_sync(0xffffffffu, amax_lo, offset));
    amax_hi = fmaxf(amax_hi, __shfl_xor_sync(0xffffffffu, amax_hi, offset));
  }
  #pragma unroll
  for (int i = 0; i < kAcc; ++i) acc[i] = fp8_group_value(acc[i], i % 4 < 2 ? amax_lo : amax_hi);
  store_accum_to_smem<T::BLOCK_M, T::BLOCK_N, T::kOutSwizzle, kOutE4M3, false>(acc, out_addr, tile_row0);
  const int row = t.row0 + tile_row0 + warp * 16 + lane / 4;
  if (lane % 4 == 0) {
    float* scales = args.act_scales + static_cast<i64>(t.n_block) * args.act_scales_stride_k;
    if (row < t.row_end) scales[static_cast<i64>(row) * args.act_scales_stride_m] = fp8_group_scale(amax_lo);
    if (row + 8 < t.row_end) scales[static_cast<i64>(row + 8) * args.act_scales_stride_m] = fp8_group_scale(amax_hi);
  }
}

// per_token: the group ids of this thread's rows of tile t (rows past m: -1), loaded when the tile
// starts so that the epilogue's row check does not wait on them.
template <class T>
struct RowIds {
  static constexpr int kCount = T::kGroupMode == kGroupIds ? T::kWaves * 2 : 0;
  int ids[kCount > 0 ? kCount : 1];

  __device__ __forceinline__ void load(const Tile& t, const GemmArgs& args, int math_wg, int warp, int lane) {
    #pragma unroll
    for (int i = 0; i < kCount; ++i) {
      const int row = t.row0 + (math_wg * T::kWaves + i / 2) * 64 + warp * 16 + lane / 4 + 8 * (i % 2);
      ids[i] = row < args.m ? __ldg(args.group_info + row) : -1;
    }
  }
};

// One 64-row wave of a staged tile (from row `stage_row` of a staging tile of kRows rows, laid out
// chunk by chunk) to output rows [row, row + 64): a TMA store (or reduce-add) per swizzle chunk.
template <class T, int kRows>
__device__ __forceinline__ void tma_store_wave(const GemmArgs& args, const u8* staged, int stage_row, int n0, int row,
                                               int group) {
  constexpr int kChunkCols = T::kOutSwizzle / T::kOutElemBytes;
  #pragma unroll
  for (int chunk = 0; chunk < T::BLOCK_N / kChunkCols; ++chunk) {
    const u8* src = staged + chunk * kRows * T::kOutSwizzle + stage_row * T::kOutSwizzle;
    if constexpr (T::kOutAdd) {
      tma_reduce_add_3d(args.tmap_d, src, n0 + chunk * kChunkCols, row, group);
    } else if constexpr (group_out_3d<T::kGroupMode>()) {
      tma_store_3d(args.tmap_d, src, n0 + chunk * kChunkCols, row, group);
    } else {
      tma_store_2d(args.tmap_d, src, n0 + chunk * kChunkCols, row);
    }
  }
}

// store_tile where the staging tile holds one 64-row wave per math warpgroup (Layout::kOutRows <
// BLOCK_M): each wave is staged, checked and stored before the next one overwrites it.
template <class T>
__device__ __forceinline__ void store_tile_by_wave(float* acc, const Tile& t, const GemmArgs& args,
                                                   const GemmSmem<T>& smem, int math_wg, int warp, int lane) {
  static_assert(T::kRowsChecked && !T::kGated && !T::kOutAdd && T::kOutType != kOutE4M3, "the NVFP4 kernel's tiles");
  constexpr int kRows = T::Layout::kOutRows;
  const bool wg_leader = (threadIdx.x % 128) == 0;
  const int barrier_id = 1 + math_wg;
  const int n0 = t.n_block * T::BLOCK_N;
  const int stage_row0 = math_wg * 64;  // this warpgroup's rows of the staging tile
  u32 out_addr = smem_addr(smem.out);
  asm volatile("" : "+r"(out_addr));
  #pragma unroll
  for (int wave = 0; wave < T::kWaves; ++wave) {
    const int row0 = (math_wg * T::kWaves + wave) * 64;  // the wave's first row in the tile
    if (wg_leader) tma_store_wait_read();  // the previous wave's (or tile's) store has left shared memory
    named_barrier_sync(barrier_id, 128);
    store_accum_to_smem<kRows, T::BLOCK_N, T::kOutSwizzle, T::kOutType>(acc + wave * T::kAcc, out_addr, stage_row0);
    fence_proxy_async_smem();
    bool rows_ok = true;
    #pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = warp * 16 + lane / 4 + 8 * i;
      const bool ok = t.row0 + row0 + row < t.row_end;
      if (lane % 4 == 0) st_shared_u8(smem.row_ok + stage_row0 + row, ok ? 1u : 0u);
      rows_ok = rows_ok && ok;
    }
    if (warp_value<true>(named_barrier_and(barrier_id, 128, rows_ok)) != 0) {
      if (wg_leader) {
        tma_store_wave<T, kRows>(args, smem.out, stage_row0, n0, t.row0 + row0, t.group);
        tma_store_commit();
      }
    } else {
      u8* dst = static_cast<u8*>(args.out_ptr) +
                (static_cast<i64>(t.row0 + row0) * args.out_ld + n0) * T::kOutElemBytes;
      copy_rows_from_smem<kRows, T::BLOCK_N, T::kOutSwizzle, T::kOutElemBytes>(out_addr, smem.row_ok, stage_row0, 64,
                                                                                 dst, args.out_ld, args.n - n0);
    }
  }
}

template <class T>
__device__ __forceinline__ void store_tile(float* acc, const Tile& t, const GemmArgs& args,
                                           const GemmSmem<T>& smem, int math_wg, int warp, int lane,
                                           const RowIds<T>& row_ids) {
  if constexpr (T::Layout::kOutRows < T::BLOCK_M) {
    store_tile_by_wave<T>(acc, t, args, smem, math_wg, warp, lane);
    return;
  }
  auto wave_row0 = [&](int wave) { return (math_wg * T::kWaves + wave) * 64; };
  const bool wg_leader = (threadIdx.x % 128) == 0;
  const int m0 = t.row0;
  const int n0 = t.n_block * T::BLOCK_N;
  const int barrier_id = 1 + math_wg;
  if (wg_leader) tma_store_wait_read();  // the previous tile's store has left shared memory
  named_barrier_sync(barrier_id, 128);
  // NOTES: opaque per tile, so the compiler computes the store addresses here instead of
  // hoisting them out of the tile loop, where they spilled with BLOCK_M 256's accumulators.
  u32 out_addr = smem_addr(smem.out);
  asm volatile("" : "+r"(out_addr));
  if constexpr (T::kGated) {
    store_gated_tile_to_smem<T>(acc, t, args, out_addr, wave_row0(0), warp, lane);
  } else {
    float out_scale = 1.0f;
    if constexpr (T::kOutType == kOutE4M3) out_scale = __ldg(args.out_scale);
    #pragma unroll
    for (int wave = 0; wave < T::kWaves; ++wave) {
      store_accum_to_smem<T::BLOCK_M, T::BLOCK_N, T::kOutSwizzle, T::kOutType>(acc + wave * T::kAcc, out_addr,
                                                                               wave_row0(wave), out_scale);
    }
  }
  fence_proxy_async_smem();
  // Grouped M modes: a tile whose rows all belong to its group is stored whole (TMA); one
  // with rows of another group, padding or rows past a masked count goes row by row.
  bool whole_tile = true;
  if constexpr (T::kRowsChecked) {
    bool rows_ok = true;
    #pragma unroll
    for (int wave = 0; wave < T::kWaves; ++wave) {
      #pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int row = wave_row0(wave) + warp * 16 + lane / 4 + 8 * i;
        const int global_row = m0 + row;
        bool ok = global_row < t.row_end;
        if constexpr (T::kGroupMode == kGroupIds) ok = ok && row_ids.ids[wave * 2 + i] == t.group;
        if (lane % 4 == 0) st_shared_u8(smem.row_ok + row, ok ? 1u : 0u);
        rows_ok = rows_ok && ok;
      }
    }
    // NOTES: with an overlap signal every tile goes row by row: the signal's release then
    // covers plain stores, with no wait for TMA stores to complete. The flag through REDUX: from
    // the barrier's predicate NVRTC 13.0 lost that the tile walk is warp-uniform, and the main
    // loop's wgmma descriptors left the uniform registers (284 R2UR at 256x128).
    whole_tile = warp_value<true>(named_barrier_and(barrier_id, 128, rows_ok)) != 0 && args.signal == nullptr;
  } else {
    named_barrier_sync(barrier_id, 128);
  }
  if (whole_tile) {
    if (wg_leader) {
      #pragma unroll
      for (int wave = 0; wave < T::kWaves; ++wave) {
        const int row0 = wave_row0(wave);
        if (m0 + row0 >= args.m) break;  // rows past the end: nothing to store
        tma_store_wave<T, T::BLOCK_M>(args, smem.out, row0, n0, m0 + row0, t.group);
      }
      tma_store_commit();
    }
  } else if constexpr (T::kRowsChecked) {
    u8* out_bytes = static_cast<u8*>(args.out_ptr);
    #pragma unroll
    for (int wave = 0; wave < T::kWaves; ++wave) {
      const int row0 = wave_row0(wave);
      u8* dst = out_bytes + (static_cast<i64>(m0 + row0) * args.out_ld + n0) * T::kOutElemBytes;
      copy_rows_from_smem<T::BLOCK_M, T::BLOCK_N, T::kOutSwizzle, T::kOutElemBytes>(out_addr, smem.row_ok, row0, 64,
                                                                                    dst, args.out_ld, args.n - n0);
    }
    if (args.signal != nullptr) {
      // Every row of the warpgroup's waves is written: count each 64-row block once more
      // (a block is final when all its N-blocks have counted).
      __threadfence();
      named_barrier_sync(barrier_id, 128);
      if (wg_leader) {
        #pragma unroll
        for (int wave = 0; wave < T::kWaves; ++wave) {
          const int row0 = m0 + wave_row0(wave);
          if (row0 < t.row_end) {
            const int block = (row0 - t.group * args.group_stride) / 64;
            red_release_gpu_add(args.signal + t.group * args.signal_blocks + block, 1);
          }
        }
      }
    }
  }
}

}  // namespace mategemm
