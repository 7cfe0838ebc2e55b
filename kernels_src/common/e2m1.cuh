// e2m1 (NVFP4) values to bf16 times their e4m3 block scale, exactly: every product of an e2m1
// value (two significant bits) and an e4m3 scale (four) fits bf16's eight.
// And where NVIDIA's 128x4 blocked layout keeps a row's scales.
#pragma once
#include "ptx.cuh"

namespace mategemm {

__device__ __forceinline__ u32 prmt(u32 a, u32 b, u32 selector) {
  u32 r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(selector));
  return r;
}

// Both halves multiplied in bf16 (round to nearest; every product here is exact).
__device__ __forceinline__ u32 mul_bf16x2(u32 a, u32 b) {
  u32 r;
  asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  return r;
}

// The bf16 values of the 8 e2m1 magnitudes times one block's scale, split into their low and high
// bytes: byte i of (lo0, lo1) is the low byte of magnitude i's product, of (hi0, hi1) its high byte.
// Selector nibbles of prmt pick from 8 bytes: one prmt per 4 values and byte half.
struct E2m1Table {
  u32 lo0, lo1, hi0, hi1;
};

// NOTES: the scale's 7 magnitude bits shifted left by 4 are a bf16 of value scale x 2^-120 (e4m3
// subnormals included: both formats' denormals line up), so a bf16 multiply by (magnitude x 2^120)
// gives each entry exactly; magnitude 0 multiplies into +0. The scale's sign bit is ignored (block
// scales are non-negative). Cost: 1 LOP3 + 1 IMAD + 4 HMUL2 + 4 PRMT per 16 values.
__device__ __forceinline__ E2m1Table e2m1_table(u32 scale_byte) {
  const u32 scaled = (scale_byte & 0x7Fu) * 0x00100010u;  // bf16 scale x 2^-120 in both halves
  // (low, high) halves: (0, 0.5), (1, 1.5), (2, 3), (4, 6), each x 2^120
  const u32 w01 = mul_bf16x2(scaled, 0x7B000000u), w23 = mul_bf16x2(scaled, 0x7BC07B80u);
  const u32 w45 = mul_bf16x2(scaled, 0x7C407C00u), w67 = mul_bf16x2(scaled, 0x7CC07C80u);
  return {prmt(w01, w23, 0x6420), prmt(w45, w67, 0x6420), prmt(w01, w23, 0x7531), prmt(w45, w67, 0x7531)};
}

// 8 e2m1 values (nibble i = value i, sign in its bit 3) -> 4 words of 2 bf16 (value 2i in the low half).
// NOTES: 15 ALU instructions per 8 values: a mask and a shift for the selectors, 4 table PRMT, the
// 8 sign bits moved to bit 7 of each high byte (a shift, 2 PRMT, 2 LOP3), 4 PRMT interleaving
// low and high bytes.
__device__ __forceinline__ void decode_e2m1x8(u32 packed, const E2m1Table& table, u32* out) {
  const u32 magnitudes = packed & 0x77777777u;  // a selector nibble's bit 3 would replicate a sign instead
  const u32 upper = magnitudes >> 16;           // prmt reads the low 4 selector nibbles only
  const u32 lo_first = prmt(table.lo0, table.lo1, magnitudes), lo_second = prmt(table.lo0, table.lo1, upper);
  u32 hi_first = prmt(table.hi0, table.hi1, magnitudes), hi_second = prmt(table.hi0, table.hi1, upper);
  // Value i's sign is bit 4i + 3: (packed << 4) holds the even values' signs at bit 7 of their byte,
  // packed the odd values'; interleaved bytewise they sit at bit 7 of byte i for value i.
  const u32 shifted = packed << 4;
  hi_first |= prmt(shifted, packed, 0x5140) & 0x80808080u;
  hi_second |= prmt(shifted, packed, 0x7362) & 0x80808080u;
  out[0] = prmt(lo_first, hi_first, 0x5140);
  out[1] = prmt(lo_first, hi_first, 0x7362);
  out[2] = prmt(lo_second, hi_second, 0x5140);
  out[3] = prmt(lo_second, hi_second, 0x7362);
}

// The streaming kernel's decode: one bf16 multiply per 2 values instead of table lookups, the
// nibbles placed by an integer multiply (FMA pipe), so that the ALU pipe (PRMT, LOP3, SHF) does not
// set its pace. A pair-decoded value is value x scale x 2^-8 (kE2m1PairScale): both operands decoded
// this way give products 2^-16 of the true ones, exact, taken back in the epilogue.
constexpr float kE2m1PairScale = 1.0f / 256.0f;

// Two e4m3 block scales' 7 magnitude bits, each at bits 4-10 of a bf16 half (a bf16 of scale x
// 2^-120, denormals included, as in e2m1_table) -> the factors of decode_e2m1_pairs, scale x 2^118:
// two exact multiplies by 2^119 (the result stays below 2^127).
__device__ __forceinline__ u32 e2m1_factors_from_placed(u32 placed) {
  return mul_bf16x2(mul_bf16x2(placed, 0x7B007B00u), 0x7B007B00u);
}

// One e4m3 block scale as the bf16 factor of decode_e2m1_pairs in both halves.
__device__ __forceinline__ u32 e2m1_pair_factor(u32 scale_byte) {
  return e2m1_factors_from_placed((scale_byte & 0x7Fu) * 0x00100010u);
}

// Two of e2m1_pair_factor's factors at once: scale byte 2p of `scales` in the low half, byte 2p + 1
// in the high half (one PRMT and one shift spread both bytes, the two multiplies serve both).
__device__ __forceinline__ u32 e2m1_pair_factors(u32 scales, int p) {
  return e2m1_factors_from_placed(prmt(scales & 0x7F7F7F7Fu, 0u, p ? 0x4342u : 0x4140u) << 4);
}

// Half `h` of a bf16x2 word in both halves. NOTES: as a multiply's operand ptxas folds it into
// HMUL2's half select (.H0_H0 / .H1_H1): no instruction of its own.
__device__ __forceinline__ u32 bf16_broadcast(u32 two, int h) {
  u32 r;
  if (h) {
    asm("{.reg .b16 l, u; mov.b32 {l, u}, %1; mov.b32 %0, {u, u};}" : "=r"(r) : "r"(two));
  } else {
    asm("{.reg .b16 l, u; mov.b32 {l, u}, %1; mov.b32 %0, {l, l};}" : "=r"(r) : "r"(two));
  }
  return r;
}

// 8 e2m1 values (nibble i = value i, sign in its bit 3) times their block's factor -> 4 words of 2
// bf16: word m holds value m (low half) and value m + 4 (high half), each value x scale x 2^-8.
// NOTES: a nibble's sign at bit 15 and its 3 magnitude bits at bits 6-8 make a bf16 of the value x
// 2^-126 (codes 0 and 1 as denormals), so one multiply by the factor gives the product exactly (at
// most 5 significant bits, between 2^-18 and 2^4). Nibbles m and m + 4 lie 16 bits apart, at bits s
// and s + 16 (s = 0 or 4) of `packed` or `packed >> 8`: masked, one multiply by 2^(6-s) + 2^(12-s)
// places two copies of each, at bits 6-9 and 12-15 (22-25 and 28-31), which cannot carry into each
// other; one mask keeps the magnitude from the first copy and the sign from the second. Per 8
// values: 1 SHF, 8 LOP3, 4 IMAD, 4 HMUL2.
__device__ __forceinline__ void decode_e2m1_pairs(u32 packed, u32 factor, u32* out) {
  const u32 high = packed >> 8;  // nibbles 2, 3, 6, 7 where nibbles 0, 1, 4, 5 were
  #pragma unroll
  for (int m = 0; m < 4; ++m) {
    const u32 s = 4 * (m % 2);
    const u32 nibbles = (m < 2 ? packed : high) & (0x000F000Fu << s);
    const u32 placed = nibbles * ((1u << (6 - s)) + (1u << (12 - s)));
    out[m] = mul_bf16x2(placed & 0x81C081C0u, factor);
  }
}

// Row r of a run of 128-row scale chunks keeps its 4 scales at (r / 128) * 512 + (r % 32) * 16 +
// (r / 32 % 4) * 4; `kOneChunk`: r < 128.
template <bool kOneChunk>
__device__ __forceinline__ u32 nvfp4_scale_offset(u32 row) {
  return (kOneChunk ? 0 : (row >> 7) * 512) + (row & 31) * 16 + ((row >> 5) & 3) * 4;
}

}  // namespace mategemm
