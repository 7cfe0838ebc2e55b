// Element types named in kernel template arguments; the host names them the same way.
#pragma once

namespace mategemm {

// Operand types; 16-bit types pair only with themselves (the generated wgmma take them as ints).
enum OperandType : int { kE4M3 = 0, kE5M2 = 1, kBF16 = 2, kF16 = 3 };

__host__ __device__ constexpr int operand_bytes(int type) { return type >= kBF16 ? 2 : 1; }

// Output types. kOutF32Add: fp32, added into the output by a TMA reduce.
enum OutType : int { kOutBF16 = 0, kOutF16 = 1, kOutF32Add = 2 };

}  // namespace mategemm
