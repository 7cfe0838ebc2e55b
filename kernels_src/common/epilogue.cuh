// Epilogue helpers: fp32 accumulator fragments to a swizzled shared-memory tile for a TMA store.
//
// The output tile is stored as column chunks of kSwizzleBytes (128, 64 or 32) per row, each chunk
// BLOCK_M rows deep, in the matching TMA swizzle: 16-byte unit u of row r lands at unit
// u ^ ((address >> 7) & (kSwizzleBytes / 16 - 1)). A warp's eight rows then hit eight different
// 16-byte units: no bank conflicts.
#pragma once
#include "ptx.cuh"

namespace mategemm {

template <int kSwizzleBytes>
__device__ __forceinline__ u32 swizzle_offset(u32 offset) {
  constexpr u32 kMask = kSwizzleBytes / 16 - 1;
  return offset ^ (((offset >> 7) & kMask) << 4);
}

// Output element codes shared with the Python side.
enum OutType : int { kOutBF16 = 0, kOutF16 = 1 };

template <int kOutType>
__device__ __forceinline__ u32 pack_out2(float lo, float hi) {
  if constexpr (kOutType == kOutBF16) {
    return pack_bf16x2(lo, hi);
  } else {
    return pack_f16x2(lo, hi);
  }
}

// Writes one warpgroup's 64 x BLOCK_N accumulator (wgmma m64nN layout) into the staging tile.
// `tile_row0` is the warpgroup's first row inside the BLOCK_M-row tile.
template <int BLOCK_M, int BLOCK_N, int kSwizzleBytes, int kOutType>
__device__ __forceinline__ void store_accum_to_smem(const float* acc, u32 smem_base, int tile_row0) {
  constexpr int kChunkCols = kSwizzleBytes / 2;
  const int warp = (threadIdx.x / 32) % 4;
  const int lane = threadIdx.x % 32;
  const int row = tile_row0 + warp * 16 + lane / 4;
  #pragma unroll
  for (int c = 0; c < BLOCK_N / 8; ++c) {
    const int col = c * 8 + (lane % 4) * 2;
    const u32 chunk_base = static_cast<u32>(col / kChunkCols) * (BLOCK_M * kSwizzleBytes);
    const u32 byte_in_row = static_cast<u32>(col % kChunkCols) * 2;
    #pragma unroll
    for (int i = 0; i < 2; ++i) {
      const u32 offset = chunk_base + static_cast<u32>(row + 8 * i) * kSwizzleBytes + byte_in_row;
      st_shared_u32(smem_base + swizzle_offset<kSwizzleBytes>(offset),
                    pack_out2<kOutType>(acc[c * 4 + i * 2], acc[c * 4 + i * 2 + 1]));
    }
  }
}

}  // namespace mategemm
