"""DeepGEMM's names for mategemm's kernels (MATE's mate.deep_gemm): the FP8 and BF16 dense, masked,
contiguous and K-grouped GEMMs, the BF16 and FP8 einsum forms, the lightning indexer, the
hyperconnection pre-norm GEMM (on torch's matmul) and the mega MoE names (SM100 only: they raise),
DeepGEMM's runtime settings, `deep_gemm.utils` (its quantisation and scale-layout helpers, also at
the top level as DeepGEMM has them) and `deep_gemm.testing` (what its test files import)."""
from mategemm.api import fp8_mqa_logits, fp8_paged_mqa_logits
from mategemm.deep_gemm import testing, utils
from mategemm.deep_gemm.einsums import einsum, fp8_einsum
from mategemm.deep_gemm.gemm import (
    bf16_gemm_nn,
    bf16_gemm_nt,
    bf16_gemm_tn,
    bf16_gemm_tt,
    cublaslt_gemm_nn,
    cublaslt_gemm_nt,
    cublaslt_gemm_tn,
    cublaslt_gemm_tt,
    fp8_fp4_gemm_nn,
    fp8_fp4_gemm_nt,
    fp8_fp4_gemm_tn,
    fp8_fp4_gemm_tt,
    fp8_gemm_nn,
    fp8_gemm_nt,
    fp8_gemm_nt_skip_head_mid,
    fp8_gemm_tn,
    fp8_gemm_tt,
    fp8_m_grouped_gemm_nt_masked,
    k_grouped_bf16_gemm_tn_contiguous,
    k_grouped_fp8_gemm_nt_contiguous,
    m_grouped_bf16_gemm_nn_contiguous,
    m_grouped_bf16_gemm_nt_contiguous,
    m_grouped_bf16_gemm_nt_masked,
    m_grouped_fp8_fp4_gemm_nt_contiguous,
    m_grouped_fp8_fp4_gemm_nt_masked,
    m_grouped_fp8_gemm_nt_contiguous,
    m_grouped_fp8_gemm_nt_masked,
)
from mategemm.deep_gemm.hyperconnection import tf32_hc_prenorm_gemm
from mategemm.deep_gemm.indexer import fp8_fp4_mqa_logits, fp8_fp4_paged_mqa_logits, get_paged_mqa_logits_metadata
from mategemm.deep_gemm.mega import (
    bf16_mega_moe,
    fp8_fp4_mega_moe,
    get_symm_buffer_for_mega_moe,
    transform_weights_for_mega_moe,
)
from mategemm.deep_gemm.runtime import (
    get_num_sms,
    get_pdl,
    get_tc_util,
    set_block_size_multiple_of,
    set_ignore_compile_dims,
    set_num_sms,
    set_pdl,
    set_tc_util,
)
from mategemm.deep_gemm.utils import *  # noqa: F401,F403 - DeepGEMM's top level re-exports its utils

__all__ = ["bf16_gemm_nn", "bf16_gemm_nt", "bf16_gemm_tn", "bf16_gemm_tt", "k_grouped_bf16_gemm_tn_contiguous",
           "m_grouped_bf16_gemm_nn_contiguous", "m_grouped_bf16_gemm_nt_contiguous", "m_grouped_bf16_gemm_nt_masked", "cublaslt_gemm_nn", "cublaslt_gemm_nt",
           "cublaslt_gemm_tn", "cublaslt_gemm_tt", "einsum", "fp8_einsum", "fp8_fp4_gemm_nn", "fp8_fp4_gemm_nt",
           "fp8_fp4_gemm_tn", "fp8_fp4_gemm_tt", "fp8_gemm_nn", "fp8_gemm_nt", "fp8_gemm_nt_skip_head_mid", "fp8_gemm_tn",
           "fp8_gemm_tt", "fp8_m_grouped_gemm_nt_masked", "k_grouped_fp8_gemm_nt_contiguous",
           "m_grouped_fp8_fp4_gemm_nt_contiguous",
           "m_grouped_fp8_fp4_gemm_nt_masked", "m_grouped_fp8_gemm_nt_contiguous", "m_grouped_fp8_gemm_nt_masked",
           "fp8_fp4_mqa_logits", "fp8_fp4_paged_mqa_logits", "fp8_mqa_logits", "fp8_paged_mqa_logits", "get_num_sms", "get_paged_mqa_logits_metadata", "get_pdl",
           "get_tc_util", "set_block_size_multiple_of", "set_ignore_compile_dims", "set_num_sms", "set_pdl",
           "set_tc_util", "testing", "utils", "tf32_hc_prenorm_gemm", "bf16_mega_moe", "fp8_fp4_mega_moe",
           "get_symm_buffer_for_mega_moe", "transform_weights_for_mega_moe", *utils.__all__]
