// transpose_8bit: dst[g][c][r] = src[g][r][c] for 1-byte elements: an FP8 operand given MN-major
// (rows of K, MN contiguous) copied K-major before a GEMM that reads it K-major.
//
// A CTA of 256 threads moves 64 x 64-byte tiles through shared memory, persistent over the tiles
// of all groups: each thread loads 16 bytes of a source row (one 16-byte load when the row
// stride, base and tile columns allow it, else byte loads), then gathers the 16 bytes of one
// destination row from 16 tile rows and stores them with one 16-byte store. The destination
// rows are K: a multiple of 128 bytes (FP8 GEMMs need K % 128 == 0), so every store is whole.
// Tile rows keep their 16-byte chunks XOR-swizzled by (row / 16) % 4: a warp's gathers then hit
// 8 different banks (byte loads of one word share it).
#pragma once
#include "common/ptx.cuh"

namespace mategemm {

constexpr int kTransposeTile = 64;

template <bool kVectorLoads>
__global__ void __launch_bounds__(256) transpose_8bit(const u8* __restrict__ src, u8* __restrict__ dst, int rows,
                                                      int cols, i64 src_ld, i64 dst_ld, i64 src_group_stride,
                                                      i64 dst_group_stride, int groups) {
  __shared__ __align__(16) u8 tile[kTransposeTile * kTransposeTile];
  const int t = threadIdx.x;
  const int row_tiles = rows / kTransposeTile;  // rows (K) % 128 == 0: checked on the host
  const int col_tiles = ceil_div(cols, kTransposeTile);
  const i64 tiles_per_group = static_cast<i64>(row_tiles) * col_tiles;
  for (i64 tile_index = blockIdx.x; tile_index < tiles_per_group * groups; tile_index += gridDim.x) {
    const int group = static_cast<int>(tile_index / tiles_per_group);
    const i64 in_group = tile_index - group * tiles_per_group;
    const int r0 = static_cast<int>(in_group / col_tiles) * kTransposeTile;
    const int c0 = static_cast<int>(in_group % col_tiles) * kTransposeTile;
    const u8* src_tile = src + group * src_group_stride + r0 * src_ld + c0;
    u8* dst_tile = dst + group * dst_group_stride + static_cast<i64>(c0) * dst_ld + r0;

    // Load: thread t takes 16 bytes of tile row t / 4 (columns past `cols` read as zero).
    {
      const int row = t / 4, chunk = t % 4;
      const int col = chunk * 16;
      uint4 v = make_uint4(0, 0, 0, 0);
      const u8* from = src_tile + row * src_ld + col;
      if (kVectorLoads && c0 + col + 16 <= cols) {
        v = __ldg(reinterpret_cast<const uint4*>(from));
      } else {
        u32 words[4] = {0, 0, 0, 0};
        #pragma unroll
        for (int i = 0; i < 16; ++i) words[i / 4] |= (c0 + col + i < cols ? u32(__ldg(from + i)) : 0u) << (8 * (i % 4));
        v = make_uint4(words[0], words[1], words[2], words[3]);
      }
      const int swizzled = (chunk ^ ((row / 16) % 4)) * 16;
      *reinterpret_cast<uint4*>(tile + row * kTransposeTile + swizzled) = v;
    }
    __syncthreads();
    // Store: thread t writes 16 bytes of destination row c0 + t / 4: tile rows 16j .. 16j + 15 of
    // column t / 4, j = t % 4.
    {
      const int col = t / 4, j = t % 4;
      if (c0 + col < cols) {
        const int swizzled = ((col / 16) ^ j) * 16 + col % 16;  // rows 16j + i share (row / 16) % 4 = j
        u32 words[4] = {0, 0, 0, 0};
        #pragma unroll
        for (int i = 0; i < 16; ++i) words[i / 4] |= u32(tile[(16 * j + i) * kTransposeTile + swizzled]) << (8 * (i % 4));
        *reinterpret_cast<uint4*>(dst_tile + col * dst_ld + 16 * j) = make_uint4(words[0], words[1], words[2], words[3]);
      }
    }
    __syncthreads();  // the tile is reused by the next iteration
  }
}

}  // namespace mategemm
