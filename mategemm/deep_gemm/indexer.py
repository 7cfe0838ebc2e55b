"""The lightning indexer under DeepGEMM's names. The legacy names keep MATE's signatures
(`fused_kv_cache`, `num_mps`); the `fp8_fp4_` names take DeepGEMM 2.6's (`q` as a (tensor, scale)
pair, `kv_cache`, `logits_dtype` float32 or bfloat16, `indices`). FP4 queries or keys and varlen
`indices` are DeepGEMM's SM100 features: NotImplementedError."""
from __future__ import annotations

import torch

from mategemm import api


def _sm100_only(func: str, what: str):
    return NotImplementedError(f"{func}: {what} is DeepGEMM's SM100 (Blackwell) feature; Hopper takes FP8 "
                               "queries and keys")


def _fp8_query(q, func: str) -> torch.Tensor:
    """q, or the tensor of a (q, None) pair; a scale means FP4 queries."""
    if isinstance(q, (tuple, list)):
        if len(q) != 2:
            raise TypeError(f"q must be a tensor or a (tensor, scale or None) pair, got {len(q)} elements")
        q, q_scale = q
        if q_scale is not None:
            raise _sm100_only(func, "an FP4 q with scales")
    return q


def get_paged_mqa_logits_metadata(context_lens: torch.Tensor, block_kv: int, num_mps: int = 0,
                                  indices: torch.Tensor | None = None) -> torch.Tensor:
    """mategemm.get_paged_mqa_logits_metadata; the third argument is DeepGEMM's num_sms."""
    if indices is not None:
        raise _sm100_only("get_paged_mqa_logits_metadata", "varlen indices")
    return api.get_paged_mqa_logits_metadata(context_lens, block_kv, num_mps)


def fp8_fp4_mqa_logits(q, kv: tuple, weights: torch.Tensor, cu_seq_len_k_start: torch.Tensor,
                       cu_seq_len_k_end: torch.Tensor, clean_logits: bool = True, max_seqlen_k: int = 0,
                       logits_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    func = "fp8_fp4_mqa_logits"
    q = _fp8_query(q, func)
    if isinstance(kv, (tuple, list)) and kv and isinstance(kv[0], torch.Tensor) and kv[0].dtype == torch.int8:
        raise _sm100_only(func, "FP4 keys")
    return api.fp8_mqa_logits(q, kv, weights, cu_seq_len_k_start, cu_seq_len_k_end, clean_logits, max_seqlen_k,
                              logits_dtype)


def fp8_fp4_paged_mqa_logits(q, kv_cache: torch.Tensor, weights: torch.Tensor, context_lens: torch.Tensor,
                             block_table: torch.Tensor, schedule_meta: torch.Tensor, max_context_len: int,
                             clean_logits: bool = False, logits_dtype: torch.dtype = torch.float32,
                             indices: torch.Tensor | None = None) -> torch.Tensor:
    func = "fp8_fp4_paged_mqa_logits"
    q = _fp8_query(q, func)
    if indices is not None:
        raise _sm100_only(func, "varlen indices")
    return api.fp8_paged_mqa_logits(q, kv_cache, weights, context_lens, block_table, schedule_meta, max_context_len,
                                    clean_logits, logits_dtype)
