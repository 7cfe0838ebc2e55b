"""Reference implementations, the tolerance table, calc_diff and input generators for tests/benchmarks."""
from mategemm.testing.numerics import TOLERANCE, assert_close, calc_diff
from mategemm.testing.reference import fp8_gemm_reference, make_fp8_gemm_inputs

__all__ = ["TOLERANCE", "assert_close", "calc_diff", "fp8_gemm_reference", "make_fp8_gemm_inputs"]
