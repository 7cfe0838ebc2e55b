// sm90_mxfp8_scales: MXFP8's int32-packed UE8M0 exponents -> fp32 scales, in one launch, for the FP8
// grouped core (recipe (1,1,128)):
//
//   sa[r][j] = 2^(e - 127) of token row r's exponent for K block j, read from its expert's scale
//              rows (each expert's rows start at a multiple of 4: first_row[e] + r - m_indptr[e]);
//   sb[i][j] = the same for row i of B (all experts' rows stacked).
//
// Byte e = 0 is the float32 subnormal 2^-127; otherwise the scale's bits are e << 23 (exact).
// Each CTA first scans the experts' 4-aligned row counts into shared memory (experts <= 1024), then
// the grid strides over the rows of A and B, a thread per (row, K block).
#pragma once
#include "common/ptx.cuh"

namespace mategemm {

constexpr int kScalesThreads = 256;

__device__ __forceinline__ float ue8m0_to_float(u32 e) {
  return e == 0 ? __uint_as_float(0x00400000u) : __uint_as_float(e << 23);
}

__global__ void __launch_bounds__(kScalesThreads) sm90_mxfp8_scales(
    const u8* __restrict__ a_scale, int a_words, int a_rows, const int* __restrict__ m_indptr, int experts, int cum_m,
    const u8* __restrict__ b_scale, int b_words, int b_rows, int blocks, float* __restrict__ sa,
    float* __restrict__ sb) {
  extern __shared__ int first_row[];  // experts + 1
  if (threadIdx.x == 0) {
    int row = 0;
    for (int e = 0; e < experts; ++e) {
      first_row[e] = row;
      row += (__ldg(m_indptr + e + 1) - __ldg(m_indptr + e) + 3) / 4 * 4;
    }
    first_row[experts] = row;
  }
  __syncthreads();
  const i64 a_items = static_cast<i64>(cum_m) * blocks;
  const i64 items = a_items + static_cast<i64>(b_rows) * blocks;
  for (i64 item = blockIdx.x * static_cast<i64>(kScalesThreads) + threadIdx.x; item < items;
       item += static_cast<i64>(gridDim.x) * kScalesThreads) {
    if (item < a_items) {
      const int r = static_cast<int>(item / blocks), j = static_cast<int>(item % blocks);
      int lo = 0, hi = experts - 1;  // the expert whose rows hold r: the last e with m_indptr[e] <= r
      while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (__ldg(m_indptr + mid) <= r) lo = mid; else hi = mid - 1;
      }
      // offsets on the GPU are not checked: a row outside a_scale reads its nearest row instead
      const int row = min(max(first_row[lo] + r - __ldg(m_indptr + lo), 0), a_rows - 1);
      sa[item] = ue8m0_to_float(__ldg(a_scale + static_cast<i64>(row) * a_words * 4 + j));
    } else {
      const i64 b_item = item - a_items;
      const i64 i = b_item / blocks;
      const int j = static_cast<int>(b_item % blocks);
      sb[b_item] = ue8m0_to_float(__ldg(b_scale + i * b_words * 4 + j));
    }
  }
}

}  // namespace mategemm
