// The MoE layer's gated activations and its 1x128 FP8 quantisation rule, shared by the layer's
// activation kernel and the gated GEMM's epilogue (both quantise the same values the same way).
//
// Activations, limit = +inf when none is given:
//   kGatedSigmoid: gate' = min(gate, limit), up' = clamp(up, -limit, limit),
//                  act = (up' + beta) * gate' * sigmoid(alpha * gate')   (silu: alpha 1, beta 0)
//   kSwigluStep:   act = min(silu(gate), limit) * clamp(up, -limit, limit)
// Quantisation (mategemm.quant.per_token_cast_to_fp8's rule): per row and 128 columns,
// scale = max(amax, 1e-4) / 448, q = saturate_rn(x / scale).
#pragma once
#include "ptx.cuh"

namespace mategemm {

constexpr int kNoGatedAct = -1, kGatedSigmoid = 0, kSwigluStep = 1;

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

template <int kActivation>
__device__ __forceinline__ float gated_act(float gate, float up, float alpha, float beta, float limit) {
  up = fminf(fmaxf(up, -limit), limit);
  if constexpr (kActivation == kGatedSigmoid) {
    gate = fminf(gate, limit);
    return (up + beta) * gate * sigmoid(alpha * gate);
  } else {
    return fminf(gate * sigmoid(gate), limit) * up;
  }
}

// A group's scale, stored beside its values, from its amax (the largest |x| of its 128 values).
__device__ __forceinline__ float fp8_group_scale(float amax) { return fmaxf(amax, 1e-4f) / 448.0f; }

// What x of a group with that amax is rounded to e4m3 from.
__device__ __forceinline__ float fp8_group_value(float x, float amax) { return x / fp8_group_scale(amax); }

}  // namespace mategemm
