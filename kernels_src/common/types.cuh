// Element types named in kernel template arguments; the host names them the same way.
#pragma once

namespace mategemm {

// Operand types; 16-bit types pair only with themselves (the generated wgmma take them as ints).
enum OperandType : int { kE4M3 = 0, kE5M2 = 1, kBF16 = 2, kF16 = 3 };

__host__ __device__ constexpr int operand_bytes(int type) { return type >= kBF16 ? 2 : 1; }

// Output types. kOutF32Add: fp32, added into the output by a TMA reduce. kOutE4M3: FP8 e4m3,
// the result divided by a device-side output scale, rounded and saturated to +-448.
enum OutType : int { kOutBF16 = 0, kOutF16 = 1, kOutF32Add = 2, kOutE4M3 = 3 };

__host__ __device__ constexpr int out_elem_bytes(int type) { return type == kOutF32Add ? 4 : type == kOutE4M3 ? 1 : 2; }

}  // namespace mategemm
