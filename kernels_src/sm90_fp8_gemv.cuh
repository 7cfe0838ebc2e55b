// sm90_fp8_gemv: out(r, n) = sum_k A(r, k) * B(n, k) * sa(r, k / 128) * sb(n / gran_n, k / 128) for
// the kRows (1-2) rows of a decode-size FP8 GEMM, on the CUDA cores: B streams once from memory with
// 16-byte loads and no shared memory, tensor map, barrier ring or tensor core, so a launch reaches its
// loads within a few hundred cycles.
//
// A CTA of 4 warps takes 4 / warps_per_col columns; the warps_per_col warps of a column split its K in
// 512-byte aligned slices and sum their partials in shared memory. A warp's lanes read 16 consecutive
// values each (512 bytes of K a warp step, kUnroll steps in flight): B's row once, A's rows (L1 and L2
// hits: every column reads them). Each lane's 16 values lie in one 128-value K block: its dot product
// in FP32 is scaled once by sa * sb and added to the lane's sum; the warp's sums meet by shuffles.
// K a multiple of 16 and 16-byte aligned rows (checked on the host).
#pragma once
#include "common/ptx.cuh"
#include "common/types.cuh"

namespace mategemm {

constexpr int kGemvWarps = 4;
constexpr int kGemvUnroll = 4;

// Two FP8 values (the low 16 bits of `pair`, the lower address first) as floats.
template <OperandType kType>
__device__ __forceinline__ float2 fp8x2_to_float2(u32 pair) {
  u32 halves;
  if constexpr (kType == kE4M3) {
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(halves) : "h"(static_cast<unsigned short>(pair)));
  } else {
    asm("cvt.rn.f16x2.e5m2x2 %0, %1;" : "=r"(halves) : "h"(static_cast<unsigned short>(pair)));
  }
  float lo, hi;
  asm("{\n .reg .f16 l, h;\n mov.b32 {l, h}, %2;\n cvt.f32.f16 %0, l;\n cvt.f32.f16 %1, h;\n}"
      : "=f"(lo), "=f"(hi) : "r"(halves));
  return make_float2(lo, hi);
}

// Sixteen FP8 values of A's row and of B's row (four words each): their dot product in FP32.
template <OperandType kTypeA, OperandType kTypeB>
__device__ __forceinline__ float dot16(const uint4& a, const uint4& b) {
  const u32 aw[4] = {a.x, a.y, a.z, a.w}, bw[4] = {b.x, b.y, b.z, b.w};
  float sum = 0.0f;
  #pragma unroll
  for (int w = 0; w < 4; ++w) {
    #pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float2 x = fp8x2_to_float2<kTypeA>(aw[w] >> (16 * half));
      const float2 y = fp8x2_to_float2<kTypeB>(bw[w] >> (16 * half));
      sum = fmaf(x.x, y.x, sum);
      sum = fmaf(x.y, y.y, sum);
    }
  }
  return sum;
}

__device__ __forceinline__ uint4 ld_global_stream_v4(const u8* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

template <int kRows, OperandType kTypeA, OperandType kTypeB, OutType kOutType>
__global__ void __launch_bounds__(kGemvWarps * 32) sm90_fp8_gemv(
    const u8* __restrict__ a, i64 a_ld, const u8* __restrict__ b, i64 b_ld, const float* __restrict__ sfa,
    int sfa_stride_m, int sfa_stride_k, const float* __restrict__ sfb, int sfb_stride_n, int sfb_stride_k,
    int sfb_gran_n, int n, int k, int warps_per_col, void* __restrict__ out, i64 out_ld) {
  static_assert(kRows >= 1 && kRows <= 4, "a GEMV of 1-4 rows");
  static_assert(kOutType == kOutBF16 || kOutType == kOutF16, "16-bit outputs");
  __shared__ float partial[kGemvWarps][kRows];
  grid_dependency_wait();  // MATEGEMM_PDL: the grid before may still be writing A or the scales
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int cols_per_cta = kGemvWarps / warps_per_col;
  const int col = blockIdx.x * cols_per_cta + warp / warps_per_col;
  const int slice = warp % warps_per_col;
  const int slice_bytes = ceil_div(ceil_div(k, warps_per_col), 512) * 512;
  const int begin = slice * slice_bytes, end = min(k, begin + slice_bytes);
  float acc[kRows];
  #pragma unroll
  for (int r = 0; r < kRows; ++r) acc[r] = 0.0f;
  if (col < n) {
    const u8* b_row = b + col * b_ld;
    const float* sb_col = sfb + (col / sfb_gran_n) * static_cast<i64>(sfb_stride_n);
    for (int base = begin + lane * 16; base < end; base += 512 * kGemvUnroll) {
      uint4 bv[kGemvUnroll], av[kGemvUnroll][kRows];
      #pragma unroll
      for (int u = 0; u < kGemvUnroll; ++u) {  // all loads first: kGemvUnroll steps in flight
        const int off = base + u * 512;
        if (off < end) {
          bv[u] = ld_global_stream_v4(b_row + off);
          #pragma unroll
          for (int r = 0; r < kRows; ++r) av[u][r] = __ldg(reinterpret_cast<const uint4*>(a + r * a_ld + off));
        }
      }
      #pragma unroll
      for (int u = 0; u < kGemvUnroll; ++u) {
        const int off = base + u * 512;
        if (off < end) {
          const int kb = off / 128;
          const float sb = __ldg(sb_col + kb * sfb_stride_k);
          #pragma unroll
          for (int r = 0; r < kRows; ++r) {
            const float sa = __ldg(sfa + r * sfa_stride_m + kb * sfa_stride_k);
            acc[r] = fmaf(dot16<kTypeA, kTypeB>(av[u][r], bv[u]), sa * sb, acc[r]);
          }
        }
      }
    }
  }
  #pragma unroll
  for (int r = 0; r < kRows; ++r) {
    #pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], offset);
  }
  if (warps_per_col > 1) {
    if (lane == 0) {
      #pragma unroll
      for (int r = 0; r < kRows; ++r) partial[warp][r] = acc[r];
    }
    __syncthreads();
    if (slice != 0) return;
    for (int s = 1; s < warps_per_col; ++s) {
      #pragma unroll
      for (int r = 0; r < kRows; ++r) acc[r] += partial[warp + s][r];
    }
  }
  if (lane != 0 || col >= n) return;
  #pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const u32 pair = kOutType == kOutF16 ? pack_f16x2(acc[r], 0.0f) : pack_bf16x2(acc[r], 0.0f);
    static_cast<unsigned short*>(out)[r * out_ld + col] = static_cast<unsigned short>(pair);
  }
}

}  // namespace mategemm
