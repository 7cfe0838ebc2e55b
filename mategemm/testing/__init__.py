"""Reference implementations, the tolerance table, calc_diff and input generators for tests/benchmarks."""
from mategemm.testing.moe import (
    calc_diff_rows,
    deepgemm_group_sizes,
    make_expert_weights,
    make_k_grouped_operand,
    make_tokens,
    masked_reference,
    packed_layout,
    per_token_layout,
    ragged_k_reference,
    ragged_m_reference,
    routing_counts,
)
from mategemm.testing.numerics import TOLERANCE, assert_close, calc_diff
from mategemm.testing.reference import fp8_gemm_reference, make_fp8_gemm_inputs

__all__ = [
    "TOLERANCE", "assert_close", "calc_diff", "calc_diff_rows", "deepgemm_group_sizes", "fp8_gemm_reference",
    "make_expert_weights", "make_fp8_gemm_inputs", "make_k_grouped_operand", "make_tokens", "masked_reference",
    "packed_layout", "per_token_layout", "ragged_k_reference", "ragged_m_reference", "routing_counts",
]
