"""FlashInfer's names for mategemm's kernels (flashinfer.gemm / flashinfer.grouped_mm on Hopper)."""
from mategemm.api import batch_deepgemm_fp8_nt_groupwise, moe_gemm_mxfp8_nt_groupwise

__all__ = ["batch_deepgemm_fp8_nt_groupwise", "moe_gemm_mxfp8_nt_groupwise"]
