// Epilogue helpers: fp32 accumulator fragments to a swizzled shared-memory tile for a TMA store.
//
// The output tile is stored as column chunks of kSwizzleBytes (128, 64 or 32) per row, each chunk
// BLOCK_M rows deep, in the matching TMA swizzle: 16-byte unit u of row r lands at unit
// u ^ ((address >> 7) & (kSwizzleBytes / 16 - 1)). A warp's eight rows then hit eight different
// 16-byte units: no bank conflicts.
#pragma once
#include "ptx.cuh"
#include "types.cuh"

namespace mategemm {

template <int kSwizzleBytes>
__device__ __forceinline__ u32 swizzle_offset(u32 offset) {
  constexpr u32 kMask = kSwizzleBytes / 16 - 1;
  return offset ^ (((offset >> 7) & kMask) << 4);
}

template <int kOutType>
__device__ __forceinline__ u32 pack_out2(float lo, float hi) {
  if constexpr (kOutType == kOutBF16) {
    return pack_bf16x2(lo, hi);
  } else {
    return pack_f16x2(lo, hi);
  }
}

// Byte offset of (row, col) in the staging tile: column chunks of kSwizzleBytes per row.
template <int BLOCK_M, int kSwizzleBytes, int kElemBytes>
__device__ __forceinline__ u32 staging_offset(int row, int col) {
  constexpr int kChunkCols = kSwizzleBytes / kElemBytes;
  const u32 offset = static_cast<u32>(col / kChunkCols) * (BLOCK_M * kSwizzleBytes) +
                     static_cast<u32>(row) * kSwizzleBytes + static_cast<u32>(col % kChunkCols) * kElemBytes;
  return swizzle_offset<kSwizzleBytes>(offset);
}

// Writes one warpgroup's 64 x BLOCK_N accumulator (wgmma m64nN layout) into the staging tile.
// `tile_row0` is the warpgroup's first row inside the BLOCK_M-row tile. FP8 output: each value
// divided by `out_scale` (IEEE division, as torch's result / output_scale), then rounded; without
// kDivide rounded as it is.
template <int BLOCK_M, int BLOCK_N, int kSwizzleBytes, int kOutType, bool kDivide = true>
__device__ __forceinline__ void store_accum_to_smem(const float* acc, u32 smem_base, int tile_row0,
                                                    float out_scale = 1.0f) {
  constexpr int kElemBytes = out_elem_bytes(kOutType);
  const int warp = (threadIdx.x / 32) % 4;
  const int lane = threadIdx.x % 32;
  if constexpr (kElemBytes == 2 && BLOCK_N % 16 == 0) {
    // 16-bit values by stmatrix: a warp's 16 rows of two 8-column chunks in one instruction, where
    // 32-bit stores took four (the fragments are in stmatrix's order as wgmma leaves them).
    const int block = lane / 8;  // rows 0-7 of chunk c, rows 8-15 of it, then the same of chunk c + 1
    const int block_row = tile_row0 + warp * 16 + (block % 2) * 8 + lane % 8;
    #pragma unroll
    for (int c = 0; c < BLOCK_N / 8; c += 2) {
      const float* v = acc + c * 4;
      stsm_x4(smem_base + staging_offset<BLOCK_M, kSwizzleBytes, 2>(block_row, (c + block / 2) * 8),
              pack_out2<kOutType>(v[0], v[1]), pack_out2<kOutType>(v[2], v[3]), pack_out2<kOutType>(v[4], v[5]),
              pack_out2<kOutType>(v[6], v[7]));
    }
    return;
  }
  const int row = tile_row0 + warp * 16 + lane / 4;
  // NOTES: 8-byte stores go by half-warps (4 rows). With fp32 in the 128-byte swizzle, chunk c's
  // columns of row r sit in 16-byte units 2 (c % 4) + {0, 1} XOR r % 8: the half-warp's 4 rows met
  // one half of the row's units twice (ncu, ragged K 128x128: 2.8 bank conflicts per store). Lanes
  // 2 and 3 of a quad store chunk c ^ 2 meanwhile, whose units lie XOR 4 away: 8 units, one
  // wavefront per half-warp. (Selects between two registers: an index would go to local memory.)
  constexpr bool kSwapChunks = kOutType == kOutF32Add && kSwizzleBytes == 128 && BLOCK_N % 32 == 0;
  const bool other = kSwapChunks && lane % 4 >= 2;
  #pragma unroll
  for (int c = 0; c < BLOCK_N / 8; ++c) {
    const int partner = kSwapChunks ? c ^ 2 : c;  // the chunk lanes 2 and 3 store in c's turn
    const int col = (other ? partner : c) * 8 + (lane % 4) * 2;
    #pragma unroll
    for (int i = 0; i < 2; ++i) {
      const u32 addr = smem_base + staging_offset<BLOCK_M, kSwizzleBytes, kElemBytes>(row + 8 * i, col);
      const float lo = other ? acc[partner * 4 + i * 2] : acc[c * 4 + i * 2];
      const float hi = other ? acc[partner * 4 + i * 2 + 1] : acc[c * 4 + i * 2 + 1];
      if constexpr (kOutType == kOutF32Add) {
        st_shared_f32x2(addr, lo, hi);
      } else if constexpr (kOutType == kOutE4M3) {
        st_shared_u16(addr, kDivide ? e4m3x2(__fdiv_rn(lo, out_scale), __fdiv_rn(hi, out_scale)) : e4m3x2(lo, hi));
      } else {
        st_shared_u32(addr, pack_out2<kOutType>(lo, hi));
      }
    }
  }
}

// Copies `rows` rows x BLOCK_N columns (of kElemBytes, 2 or 1) of the staging tile from tile row
// `tile_row0` to global memory at `out` (row stride `ld` elements) with 16-byte stores, all
// threads of a warpgroup; a row is stored only where row_ok[row] (shared bytes) is set, a column
// only below `cols`.
template <int BLOCK_M, int BLOCK_N, int kSwizzleBytes, int kElemBytes = 2>
__device__ __forceinline__ void copy_rows_from_smem(u32 smem_base, u32 row_ok, int tile_row0, int rows, u8* out,
                                                    int ld, int cols) {
  constexpr int kUnitCols = 16 / kElemBytes;
  constexpr int kUnits = BLOCK_N / kUnitCols;  // 16-byte units per row
  for (int idx = threadIdx.x % 128; idx < rows * kUnits; idx += 128) {
    const int r = idx / kUnits, col = (idx % kUnits) * kUnitCols;
    const int row = tile_row0 + r;
    if (col < cols && ld_shared_u8(row_ok + row) != 0) {
      const uint4 v = ld_shared_v4(smem_base + staging_offset<BLOCK_M, kSwizzleBytes, kElemBytes>(row, col));
      st_global_v4(out + (static_cast<long long>(r) * ld + col) * kElemBytes, v);
    }
  }
}

}  // namespace mategemm
