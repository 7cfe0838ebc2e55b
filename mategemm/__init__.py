"""mategemm: JIT-compiled FP8 GEMM kernels for NVIDIA Hopper."""
from mategemm.api import (batch_deepgemm_fp8_nt_groupwise, bmm_fp8, bmm_fp16, fp8_mqa_logits, fp8_paged_mqa_logits,
                          fused_moe, gemm_fp8_nt_groupwise, get_paged_mqa_logits_metadata,
                          grouped_matmul_dynamic_scaled_nvfp4, masked_moe_gemm_8bit, moe_gemm_mxfp8_nt_groupwise,
                          nvfp4_grouped_gemm, ragged_k_moe_gemm_8bit, ragged_m_moe_gemm_8bit)
from mategemm.runtime.device import get_num_mp, set_num_mp
from mategemm import deep_gemm  # noqa: E402 - DeepGEMM's names (mategemm.deep_gemm.fp8_mqa_logits, ...)
from mategemm import flashinfer  # noqa: E402 - FlashInfer's names
from mategemm import ep  # noqa: E402 - expert parallelism over torch.distributed (mategemm.ep.EPMoE)
from mategemm.version import __version__

__all__ = ["batch_deepgemm_fp8_nt_groupwise", "bmm_fp8", "bmm_fp16", "fp8_mqa_logits",
           "fp8_paged_mqa_logits", "fused_moe", "gemm_fp8_nt_groupwise", "get_num_mp", "get_paged_mqa_logits_metadata",
           "grouped_matmul_dynamic_scaled_nvfp4", "masked_moe_gemm_8bit", "moe_gemm_mxfp8_nt_groupwise",
           "nvfp4_grouped_gemm", "ragged_k_moe_gemm_8bit", "ragged_m_moe_gemm_8bit", "set_num_mp", "__version__"]
