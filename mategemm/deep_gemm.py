"""DeepGEMM's names for mategemm's kernels (MATE's mate.deep_gemm): the lightning indexer so far."""
from mategemm.api import fp8_mqa_logits, fp8_paged_mqa_logits, get_paged_mqa_logits_metadata

__all__ = ["fp8_mqa_logits", "fp8_paged_mqa_logits", "get_paged_mqa_logits_metadata"]
