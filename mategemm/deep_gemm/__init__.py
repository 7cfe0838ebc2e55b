"""DeepGEMM's names for mategemm's kernels (MATE's mate.deep_gemm): the lightning indexer so far, and
DeepGEMM's `deep_gemm.utils` (its quantisation helpers, also at the top level as DeepGEMM has them)
and `deep_gemm.testing` (what its test files import)."""
from mategemm.api import fp8_mqa_logits, fp8_paged_mqa_logits, get_paged_mqa_logits_metadata
from mategemm.deep_gemm import testing, utils
from mategemm.deep_gemm.utils import *  # noqa: F401,F403 - DeepGEMM's top level re-exports its utils

__all__ = ["fp8_mqa_logits", "fp8_paged_mqa_logits", "get_paged_mqa_logits_metadata", "testing", "utils",
           *utils.__all__]
