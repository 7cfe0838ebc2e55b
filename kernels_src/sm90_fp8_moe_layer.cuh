// sm90_fp8_moe_layer: the MoE layer's steps around its two grouped GEMMs (token-packed rows,
// per_expert mode), each one pass over its rows.
//
//   route:     each (token, slot) pair's local expert (expert_map's entry, or the id; none when
//              out of range), the rows per expert, and the pairs sorted by expert, stable: packed
//              row r holds pair order[r], pair p sits at row inv[p]; live = rows of local experts.
//   permute:   a[r] = the FP8 row of the (token, slot) pair order[r], with its 1x128 scales: a bf16
//              input quantised here, optionally times the pair's router weight; rows r < live.
//   gated_act: q[r] = act(gate, up) of GEMM1's bf16 output h[r] = [gate | up], quantised 1x128.
//   unpermute: out[m] = sum over the slots j of w[m, j] * y[inv[m * topk + j]] (GEMM2's bf16 rows),
//              in slot order (deterministic); pairs at packed rows >= live (off-rank) add nothing.
//
// Quantisation and activations: common/gated_act.cuh. One warp per (row, 128-column group), 4
// values per lane, the amax reduced by shuffles. `live` is read on the device (the routing's count
// of local pairs): no launch depends on the routing from the host.
#pragma once
#include "common/gated_act.cuh"

namespace mategemm {

constexpr int kMoeThreads = 256;
constexpr int kMoeWarps = kMoeThreads / 32;
constexpr int kQuantGroup = 128;  // columns per scale
// NOTES: a bf16 permute work item is kGroupsPerItem 128-column groups of one row, their loads issued
// together (H200, Qwen3-30B-A3B, 16384 tokens: 527 -> 396 us against one group per item). The
// gated activation keeps one group per item: with four, the same run measured 264 -> 316 us.
constexpr int kGroupsPerItem = 4;
// An FP8 row is copied 16 bytes per lane, kFp8LoadsPerLane loads in flight before the stores: a
// warp item is 2 KB of the row (16 scale groups). NOTES: 4 bytes per lane and group (512 B per
// item) gathered 268 MB of pair rows in 168 us on the H200 (Qwen3-30B-A3B, 16384 tokens), 1.6 TB/s.
constexpr int kFp8LoadsPerLane = 4;
constexpr int kFp8ItemBytes = 32 * 16 * kFp8LoadsPerLane;  // the host's PERMUTE_GROUPS_PER_ITEM[True] * 128

__device__ __forceinline__ float bf16_lo(u32 pair) { return __uint_as_float(pair << 16); }
__device__ __forceinline__ float bf16_hi(u32 pair) { return __uint_as_float(pair & 0xffff0000u); }

__device__ __forceinline__ int live_count(const int* live, int rows) {
  return live == nullptr ? rows : min(max(*live, 0), rows);
}

// The warp's 128-column group quantised: lane holds columns 4 * lane .. 4 * lane + 3 in x.
__device__ __forceinline__ void quantize_group(const float (&x)[4], u8* q, float* scale_out, int lane) {
  float amax = fmaxf(fmaxf(fabsf(x[0]), fabsf(x[1])), fmaxf(fabsf(x[2]), fabsf(x[3])));
  #pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
  *reinterpret_cast<u32*>(q + lane * 4) = e4m3x2(fp8_group_value(x[0], amax), fp8_group_value(x[1], amax)) |
                                          e4m3x2(fp8_group_value(x[2], amax), fp8_group_value(x[3], amax)) << 16;
  if (lane == 0) *scale_out = fp8_group_scale(amax);
}

__device__ __forceinline__ void load_bf16x4(const u8* from, float (&x)[4]) {
  const uint2 v = __ldg(reinterpret_cast<const uint2*>(from));
  x[0] = bf16_lo(v.x);
  x[1] = bf16_hi(v.x);
  x[2] = bf16_lo(v.y);
  x[3] = bf16_hi(v.y);
}

// ---- route -------------------------------------------------------------------------------------
// Pairs are placed by key (key = local expert, or `experts` for a pair with none), stably: within a
// key in pair order. Counting: each key's pairs in shared memory. Placing 1024 pairs at a time:
// lanes with the same key find their rank by __match_any_sync, each warp's count per key goes to a
// per-warp histogram, a prefix over the warps (per key) gives each warp its rows, and the chunk's
// totals move each key's next row on. For few pairs (the host's ROUTE_ONE_CTA) one CTA does all of
// it (sm90_fp8_moe_route); more pairs are split into kRouteChunk-pair ranges, one CTA each: one
// kernel counts each range's keys (sm90_fp8_moe_route_count), the next (sm90_fp8_moe_route_place)
// starts each range's keys after the earlier keys and the earlier ranges' pairs of the same key.
// Shared memory: 33 x (experts + 1) ints (experts <= 1024: 135 KB).
constexpr int kRouteThreads = 1024;
constexpr int kRouteChunk = 4 * kRouteThreads;

template <bool kIds64>
__device__ __forceinline__ int local_expert(const void* ids, int pair, const int* expert_map, int global_experts,
                                            int experts) {
  const i64 g = kIds64 ? __ldg(static_cast<const i64*>(ids) + pair) : __ldg(static_cast<const int*>(ids) + pair);
  if (g < 0 || g >= global_experts) return experts;
  const int e = expert_map == nullptr ? static_cast<int>(g) : __ldg(expert_map + g);
  return e < 0 || e >= experts ? experts : e;
}

// The pairs [begin, end) counted per key into `counts` (shared, zeroed here). Ends with a barrier.
template <bool kIds64>
__device__ __forceinline__ void count_keys(const void* ids, int begin, int end, const int* expert_map,
                                           int global_experts, int experts, int* counts) {
  for (int b = threadIdx.x; b <= experts; b += kRouteThreads) counts[b] = 0;
  __syncthreads();
  for (int p = begin + threadIdx.x; p < end; p += kRouteThreads)
    atomicAdd(counts + local_expert<kIds64>(ids, p, expert_map, global_experts, experts), 1);
  __syncthreads();
}

// The pairs [begin, end) placed, each key's from next_row[key] on (shared; moved past them).
template <bool kIds64>
__device__ __forceinline__ void place_pairs(const void* ids, int begin, int end, const int* expert_map,
                                            int global_experts, int experts, int* next_row, int* warp_rows,
                                            i64* order, i64* inv) {
  const int bins = experts + 1;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  for (int chunk = begin; chunk < end; chunk += kRouteThreads) {
    for (int i = tid; i < 32 * bins; i += kRouteThreads) warp_rows[i] = 0;
    __syncthreads();
    const int p = chunk + tid;
    const int key = p < end ? local_expert<kIds64>(ids, p, expert_map, global_experts, experts) : -1;
    const unsigned same = __match_any_sync(0xffffffffu, key);
    const int rank = __popc(same & ((1u << lane) - 1u));
    if (key >= 0 && rank == 0) warp_rows[warp * bins + key] = __popc(same);
    __syncthreads();
    for (int b = tid; b < bins; b += kRouteThreads) {
      int row = next_row[b];
      for (int w = 0; w < 32; ++w) {
        const int count = warp_rows[w * bins + b];
        warp_rows[w * bins + b] = row;
        row += count;
      }
      next_row[b] = row;
    }
    __syncthreads();
    if (key >= 0) {
      const int row = warp_rows[warp * bins + key] + rank;
      order[row] = p;
      inv[p] = row;
    }
    __syncthreads();  // warp_rows is cleared for the next chunk
  }
}

// rows[b] (shared, bins entries) turned into each key's first row: the exclusive prefix sum, by
// warp 0 in steps of 32 keys. Ends with a barrier.
__device__ __forceinline__ void first_rows(int* rows, int bins) {
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    int carry = 0;
    for (int base = 0; base < bins; base += 32) {
      const int b = base + lane;
      const int count = b < bins ? rows[b] : 0;
      int sum = count;
      #pragma unroll
      for (int offset = 1; offset < 32; offset *= 2) {
        const int other = __shfl_up_sync(0xffffffffu, sum, offset);
        if (lane >= offset) sum += other;
      }
      if (b < bins) rows[b] = carry + sum - count;
      carry += __shfl_sync(0xffffffffu, sum, 31);
    }
  }
  __syncthreads();
}

template <bool kIds64>
__global__ void __launch_bounds__(kRouteThreads) sm90_fp8_moe_route(
    const void* __restrict__ ids, int pairs, const int* __restrict__ expert_map, int global_experts, int experts,
    int* __restrict__ counts, int* __restrict__ live, i64* __restrict__ order, i64* __restrict__ inv) {
  extern __shared__ int route_smem[];
  const int bins = experts + 1;
  int* next_row = route_smem;            // bins: each key's next packed row
  int* warp_rows = route_smem + bins;    // 32 x bins: a chunk's pairs per (warp, key), then their first row
  count_keys<kIds64>(ids, 0, pairs, expert_map, global_experts, experts, next_row);
  for (int b = threadIdx.x; b < bins; b += kRouteThreads) counts[b] = next_row[b];
  __syncthreads();
  first_rows(next_row, bins);
  if (threadIdx.x == 0) *live = next_row[experts];  // the rows of the local experts come first
  place_pairs<kIds64>(ids, 0, pairs, expert_map, global_experts, experts, next_row, warp_rows, order, inv);
}

// CTA c counts the keys of pairs [c * kRouteChunk, (c + 1) * kRouteChunk) into range_counts[c][key].
template <bool kIds64>
__global__ void __launch_bounds__(kRouteThreads) sm90_fp8_moe_route_count(
    const void* __restrict__ ids, int pairs, const int* __restrict__ expert_map, int global_experts, int experts,
    int* __restrict__ range_counts) {
  extern __shared__ int route_smem[];
  const int bins = experts + 1;
  const int begin = blockIdx.x * kRouteChunk;
  count_keys<kIds64>(ids, begin, min(pairs, begin + kRouteChunk), expert_map, global_experts, experts, route_smem);
  for (int b = threadIdx.x; b < bins; b += kRouteThreads) range_counts[blockIdx.x * bins + b] = route_smem[b];
}

// CTA c places its range's pairs: key b's from (the pairs of keys before b) + (the pairs of key b
// in ranges before c). CTA 0 also writes the counts per key and `live`.
template <bool kIds64>
__global__ void __launch_bounds__(kRouteThreads) sm90_fp8_moe_route_place(
    const void* __restrict__ ids, int pairs, const int* __restrict__ expert_map, int global_experts, int experts,
    const int* __restrict__ range_counts, int* __restrict__ counts, int* __restrict__ live,
    i64* __restrict__ order, i64* __restrict__ inv) {
  extern __shared__ int route_smem[];
  const int bins = experts + 1;
  int* next_row = route_smem;
  int* warp_rows = route_smem + bins;  // its first bins ints: the pairs of each key in earlier ranges
  for (int b = threadIdx.x; b < bins; b += kRouteThreads) {
    int total = 0, before = 0;
    for (int c = 0; c < gridDim.x; ++c) {
      const int count = range_counts[c * bins + b];
      before += c < blockIdx.x ? count : 0;
      total += count;
    }
    next_row[b] = total;
    warp_rows[b] = before;
    if (blockIdx.x == 0) counts[b] = total;
  }
  __syncthreads();
  first_rows(next_row, bins);
  if (blockIdx.x == 0 && threadIdx.x == 0) *live = next_row[experts];  // the rows of the local experts
  __syncthreads();
  for (int b = threadIdx.x; b < bins; b += kRouteThreads) next_row[b] += warp_rows[b];
  __syncthreads();
  const int begin = blockIdx.x * kRouteChunk;
  place_pairs<kIds64>(ids, begin, min(pairs, begin + kRouteChunk), expert_map, global_experts, experts, next_row,
                      warp_rows, order, inv);
}

// ---- permute -----------------------------------------------------------------------------------
template <bool kInputFp8>
__global__ void __launch_bounds__(kMoeThreads) sm90_fp8_moe_permute(
    const u8* __restrict__ x, i64 x_ld, const float* __restrict__ x_scale, i64 x_scale_ld,
    const i64* __restrict__ order, int topk, const float* __restrict__ weights, int weight_input,
    u8* __restrict__ a, i64 a_ld, float* __restrict__ a_scale, i64 a_scale_ld, int rows,
    const int* __restrict__ live, int k) {
  const int lane = threadIdx.x % 32;
  const int groups = k / kQuantGroup;
  // FP8 rows (16-byte aligned, as validated for TMA) in 2 KB items; bf16 rows in kGroupsPerItem groups
  const int items_per_row = kInputFp8 ? ceil_div(k, kFp8ItemBytes) : ceil_div(groups, kGroupsPerItem);
  const i64 items = static_cast<i64>(live_count(live, rows)) * items_per_row;
  for (i64 item = blockIdx.x * kMoeWarps + threadIdx.x / 32; item < items; item += gridDim.x * kMoeWarps) {
    const i64 r = item / items_per_row;
    const int part = static_cast<int>(item % items_per_row);
    const i64 pair = __ldg(order + r);
    const i64 token = pair / topk;
    const float w = weight_input ? __ldg(weights + pair) : 1.0f;
    if constexpr (kInputFp8) {
      const int c0 = part * kFp8ItemBytes;
      uint4 v[kFp8LoadsPerLane];
      #pragma unroll
      for (int u = 0; u < kFp8LoadsPerLane; ++u) {
        const int col = c0 + (u * 32 + lane) * 16;
        if (col < k) v[u] = __ldg(reinterpret_cast<const uint4*>(x + token * x_ld + col));
      }
      #pragma unroll
      for (int u = 0; u < kFp8LoadsPerLane; ++u) {
        const int col = c0 + (u * 32 + lane) * 16;
        if (col < k) *reinterpret_cast<uint4*>(a + r * a_ld + col) = v[u];
      }
      const int g = c0 / kQuantGroup + lane;
      if (lane < kFp8ItemBytes / kQuantGroup && g < groups) {
        a_scale[r * a_scale_ld + g] = __ldg(x_scale + token * x_scale_ld + g) * w;
      }
    } else {
      const int g0 = part * kGroupsPerItem;
      float v[kGroupsPerItem][4];
      #pragma unroll
      for (int u = 0; u < kGroupsPerItem; ++u) {
        if (g0 + u < groups) load_bf16x4(x + (token * x_ld + (g0 + u) * kQuantGroup + lane * 4) * 2, v[u]);
      }
      #pragma unroll
      for (int u = 0; u < kGroupsPerItem; ++u) {
        const int g = g0 + u;
        if (g >= groups) break;  // the same for the whole warp: quantize_group's shuffles stay full
        #pragma unroll
        for (int i = 0; i < 4; ++i) v[u][i] *= w;
        quantize_group(v[u], a + r * a_ld + g * kQuantGroup, a_scale + r * a_scale_ld + g, lane);
      }
    }
  }
}

// ---- gated activation --------------------------------------------------------------------------
template <int kActivation>
__global__ void __launch_bounds__(kMoeThreads) sm90_fp8_moe_gated_act(
    const u8* __restrict__ h, i64 h_ld, u8* __restrict__ q, i64 q_ld, float* __restrict__ scales, i64 scale_ld,
    int rows, const int* __restrict__ live, int n, float alpha, float beta, float limit) {
  const int lane = threadIdx.x % 32;
  const int groups = n / kQuantGroup;
  const i64 items = static_cast<i64>(live_count(live, rows)) * groups;
  for (i64 item = blockIdx.x * kMoeWarps + threadIdx.x / 32; item < items; item += gridDim.x * kMoeWarps) {
    const i64 r = item / groups;
    const int g = static_cast<int>(item % groups), col = g * kQuantGroup + lane * 4;
    float gate[4], up[4], x[4];
    load_bf16x4(h + (r * h_ld + col) * 2, gate);
    load_bf16x4(h + (r * h_ld + n + col) * 2, up);
    #pragma unroll
    for (int i = 0; i < 4; ++i) x[i] = gated_act<kActivation>(gate[i], up[i], alpha, beta, limit);
    quantize_group(x, q + r * q_ld + g * kQuantGroup, scales + r * scale_ld + g, lane);
  }
}

// ---- unpermute ---------------------------------------------------------------------------------
// A CTA per output row (grid-stride), 8 columns (16 bytes of bf16) per thread and step.
__global__ void __launch_bounds__(kMoeThreads) sm90_fp8_moe_unpermute(
    const u8* __restrict__ y, i64 y_ld, const i64* __restrict__ inv, int topk, const float* __restrict__ weights,
    int weight_output, u8* __restrict__ out, i64 out_ld, int tokens, int rows, const int* __restrict__ live,
    int k) {
  // NOTES: the token's pairs go in batches of kBatch: their rows and weights first, then their
  // rows of y, all in flight together (one at a time, each load waited on the row index before it,
  // left the kernel latency-bound); the sum still runs in slot order.
  constexpr int kBatch = 4;
  const int used = live_count(live, rows);
  for (int m = blockIdx.x; m < tokens; m += gridDim.x) {
    for (int col = threadIdx.x * 8; col < k; col += kMoeThreads * 8) {
      float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      for (int j0 = 0; j0 < topk; j0 += kBatch) {
        i64 r[kBatch];
        float w[kBatch];
        uint4 v[kBatch];
        #pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          const i64 pair = static_cast<i64>(m) * topk + j0 + u;
          r[u] = j0 + u < topk ? __ldg(inv + pair) : used;  // past topk: skipped like another rank's pair
          w[u] = j0 + u < topk && weight_output ? __ldg(weights + pair) : 1.0f;
        }
        #pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          if (r[u] < used) v[u] = __ldg(reinterpret_cast<const uint4*>(y + (r[u] * y_ld + col) * 2));
        }
        #pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          if (r[u] >= used) continue;  // routed to another rank
          const u32 words[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
          #pragma unroll
          for (int i = 0; i < 4; ++i) {
            acc[2 * i] += w[u] * bf16_lo(words[i]);
            acc[2 * i + 1] += w[u] * bf16_hi(words[i]);
          }
        }
      }
      const uint4 packed = make_uint4(pack_bf16x2(acc[0], acc[1]), pack_bf16x2(acc[2], acc[3]),
                                      pack_bf16x2(acc[4], acc[5]), pack_bf16x2(acc[6], acc[7]));
      *reinterpret_cast<uint4*>(out + (static_cast<i64>(m) * out_ld + col) * 2) = packed;
    }
  }
}

}  // namespace mategemm
