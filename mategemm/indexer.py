"""DeepSeek's lightning indexer: FP8 MQA logits over a paged or a contiguous key cache.

    logits[row, t] = sum_h weights[row, h] * relu((q[row, h, :] . k[t, :]) * k_scale[t])

for the key positions t each query row sees; -inf at the others with clean_logits. Logits are
float32 or bfloat16 (`logits_dtype`, rounded by the kernel). The paged form (decode) reads the fused
cache DeepGEMM lays out: per 64-token block, 64 x 128 FP8 keys then their 64 fp32 scales
(mategemm.quant.paged_kv_cache_cast_to_fp8 writes it); the prefill form takes heads of 32, 64 or 128. The schedule
metadata splits all requests' key blocks evenly over the SMs, computed on the GPU (no host sync,
CUDA-graph safe); pass the same context_lens to both calls.
"""
from __future__ import annotations

import torch

from mategemm import plan, validate
from mategemm.kernels import sm90_fp8_mqa_logits as kernel
from mategemm.runtime import device as rt_device


def get_paged_mqa_logits_metadata(context_lens: torch.Tensor, block_kv: int, num_mps: int = 0) -> torch.Tensor:
    """int32 (num_mps + 1, 2): row s is the (request, block) where SM s starts; row num_mps is
    (batch, 0). Every request counts ceil(len / block_kv) blocks (2-D lens: its longest draft
    token's). num_mps = 0: every SM of the current device."""
    validate.paged_mqa_metadata(context_lens, block_kv, num_mps)
    if num_mps == 0:
        num_mps = rt_device.device_info(context_lens.device.index).num_sms
    lens = context_lens if context_lens.dim() == 1 else context_lens.amax(dim=1)
    blocks = (lens.to(torch.int64).clamp(min=0) + block_kv - 1) // block_kv
    ends = blocks.cumsum(0)
    total = ends[-1:]
    starts = torch.arange(num_mps + 1, device=lens.device, dtype=torch.int64) * total // num_mps
    request = torch.searchsorted(ends, starts, right=True)
    before = torch.where(request > 0, ends[(request - 1).clamp(min=0)], torch.zeros_like(starts))
    return torch.stack([request, starts - before], dim=1).to(torch.int32)


def fp8_paged_mqa_logits(q: torch.Tensor, fused_kv_cache: torch.Tensor, weights: torch.Tensor,
                         context_lens: torch.Tensor, block_table: torch.Tensor, schedule_meta: torch.Tensor,
                         max_context_len: int, clean_logits: bool,
                         logits_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """logits_dtype (float32 or bfloat16) logits (batch * next_n, max_context_len) of q (batch, next_n,
    heads, 128) FP8 against the paged cache. 1-D context_lens (batch,): draft token j of request b
    sees [0, len_b - next_n + j]; 2-D (batch, next_n): it sees [0, len_bj - 1]. Positions outside:
    -inf with clean_logits, else not written. Block-table entries out of range read zero keys, never
    outside the cache. Raises TypeError / ValueError naming the argument (logits_dtype included)."""
    checked = validate.paged_mqa_logits(q, fused_kv_cache, weights, context_lens, block_table, schedule_meta,
                                        max_context_len, clean_logits, logits_dtype)
    logits = torch.empty((checked.batch * checked.next_n, max_context_len), dtype=logits_dtype, device=q.device)
    return _paged_into(logits, q, fused_kv_cache, weights, context_lens, block_table, schedule_meta, clean_logits)


def _paged_into(logits, q, fused_kv_cache, weights, context_lens, block_table, schedule_meta, clean_logits):
    """fp8_paged_mqa_logits writing a given logits tensor, of its dtype (checked arguments; tests poison it)."""
    batch, next_n, heads, head_dim = q.shape
    mqa_plan = plan.mqa_logits(next_n, heads, head_dim, True, logits.dtype, rt_device.device_info(q.device.index))
    launch = kernel.MqaLogitsLaunch(
        mqa_plan, q=q, keys=fused_kv_cache, scales=None, weights=weights, lens=context_lens, lens_end=None,
        lens_2d=context_lens.dim() == 2, block_table=block_table, schedule=schedule_meta, logits=logits,
        num_rows=batch, compressed=False, clean=clean_logits, grid=schedule_meta.shape[0] - 1)
    rt_device.run_on_current_stream(q.device.index, launch)
    return logits


def fp8_mqa_logits(q: torch.Tensor, kv: tuple, weights: torch.Tensor, cu_seq_len_k_start: torch.Tensor,
                   cu_seq_len_k_end: torch.Tensor, clean_logits: bool = True, max_seqlen_k: int = 0,
                   logits_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The prefill form (DeepGEMM's signature): q (seq_len, heads, head_dim) FP8 with head_dim 32, 64
    or 128, kv = (k (seq_len_kv, head_dim) FP8, k_scale (seq_len_kv,) fp32), weights (seq_len, heads)
    fp32; row i sees keys [cu_seq_len_k_start[i], cu_seq_len_k_end[i]). Returns logits_dtype (float32
    or bfloat16) (seq_len, seq_len_kv), or with max_seqlen_k > 0 (seq_len, max_seqlen_k) whose column
    c of row i is key start_i + c. Raises TypeError / ValueError naming the argument."""
    checked = validate.mqa_logits(q, kv, weights, cu_seq_len_k_start, cu_seq_len_k_end, clean_logits, max_seqlen_k,
                                  logits_dtype)
    num_cols = max_seqlen_k if max_seqlen_k > 0 else checked.seq_len_kv
    logits = torch.empty((checked.seq_len, num_cols), dtype=logits_dtype, device=q.device)
    return _prefill_into(logits, q, kv, weights, cu_seq_len_k_start, cu_seq_len_k_end, clean_logits, max_seqlen_k)


def _prefill_into(logits, q, kv, weights, cu_seq_len_k_start, cu_seq_len_k_end, clean_logits, max_seqlen_k):
    """fp8_mqa_logits writing a given logits tensor, of its dtype (checked arguments; tests poison it)."""
    if logits.numel() == 0:
        return logits
    seq_len, heads, head_dim = q.shape
    k, k_scale = kv
    rows = plan.mqa_prefill_rows(heads)
    mqa_plan = plan.mqa_logits(rows, heads, head_dim, False, logits.dtype, rt_device.device_info(q.device.index))
    launch = kernel.MqaLogitsLaunch(
        mqa_plan, q=q, keys=k, scales=k_scale, weights=weights, lens=cu_seq_len_k_start, lens_end=cu_seq_len_k_end,
        lens_2d=False, block_table=None, schedule=None, logits=logits, num_rows=seq_len, compressed=max_seqlen_k > 0,
        clean=clean_logits, grid=-(-seq_len // rows))
    rt_device.run_on_current_stream(q.device.index, launch)
    return logits
