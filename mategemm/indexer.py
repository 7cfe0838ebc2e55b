"""DeepSeek's lightning indexer: FP8 MQA logits over a paged or a contiguous key cache.

    logits[row, t] = sum_h weights[row, h] * relu((q[row, h, :] . k[t, :]) * k_scale[t])

for the key positions t each query row sees; -inf at the others with clean_logits. The paged form
(decode) reads the fused cache DeepGEMM lays out: per 64-token block, 64 x 128 FP8 keys then
their 64 fp32 scales (mategemm.quant.paged_kv_cache_cast_to_fp8 writes it). The schedule
metadata splits all requests' key blocks evenly over the SMs, computed on the GPU (no host sync,
CUDA-graph safe); pass the same context_lens to both calls.
"""
from __future__ import annotations

import torch

from mategemm import plan, validate
from mategemm.kernels import sm90_fp8_mqa_logits as kernel
from mategemm.runtime import device as rt_device

FP8 = (torch.float8_e4m3fn,)
HEADS_MULTIPLE, MAX_TILE_HEADS, MAX_NEXT_N = 8, 256, 4
MAX_MPS = 1 << 16  # schedule rows: one per CTA of the persistent grid


def get_paged_mqa_logits_metadata(context_lens: torch.Tensor, block_kv: int, num_mps: int = 0) -> torch.Tensor:
    """int32 (num_mps + 1, 2): row s is the (request, block) where SM s starts; row num_mps is
    (batch, 0). Every request counts ceil(len / block_kv) blocks (2-D lens: its longest draft
    token's). num_mps = 0: every SM of the current device."""
    _int32_lens(context_lens)
    if block_kv != kernel.KV_BLOCK:
        raise ValueError(f"block_kv must be {kernel.KV_BLOCK}, got {block_kv!r}")
    if not isinstance(num_mps, int) or isinstance(num_mps, bool) or not 0 <= num_mps <= MAX_MPS:
        raise ValueError(f"num_mps must be an int in [0, {MAX_MPS}], got {num_mps!r}")
    if num_mps == 0:
        if not context_lens.is_cuda:
            raise ValueError("num_mps=0 (all SMs) needs context_lens on a CUDA device")
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
                         max_context_len: int, clean_logits: bool) -> torch.Tensor:
    """fp32 logits (batch * next_n, max_context_len) of q (batch, next_n, heads, 128) FP8 against the
    paged cache. 1-D context_lens (batch,): draft token j of request b sees [0, len_b - next_n + j];
    2-D (batch, next_n): it sees [0, len_bj - 1]. Positions outside: -inf with clean_logits, else
    not written. Block-table entries out of range read zero keys, never outside the cache."""
    batch, next_n, _, _ = _paged_checks(q, fused_kv_cache, weights, context_lens, block_table, schedule_meta,
                                         max_context_len, clean_logits)
    logits = torch.empty((batch * next_n, max_context_len), dtype=torch.float32, device=q.device)
    return _paged_into(logits, q, fused_kv_cache, weights, context_lens, block_table, schedule_meta, clean_logits)


def _paged_into(logits, q, fused_kv_cache, weights, context_lens, block_table, schedule_meta, clean_logits):
    """fp8_paged_mqa_logits writing a given logits tensor (checked arguments; tests poison it)."""
    batch, next_n, heads, _ = q.shape
    mqa_plan = plan.mqa_logits(next_n, heads, True, rt_device.device_info(q.device.index))
    launch = kernel.MqaLogitsLaunch(
        mqa_plan, q=q, keys=fused_kv_cache, scales=None, weights=weights, lens=context_lens, lens_end=None,
        lens_2d=context_lens.dim() == 2, block_table=block_table, schedule=schedule_meta, logits=logits,
        num_rows=batch, compressed=False, clean=clean_logits, grid=schedule_meta.shape[0] - 1)
    rt_device.run_on_current_stream(q.device.index, launch)
    return logits


def fp8_mqa_logits(q: torch.Tensor, kv: tuple, weights: torch.Tensor, cu_seq_len_k_start: torch.Tensor,
                   cu_seq_len_k_end: torch.Tensor, clean_logits: bool = True, max_seqlen_k: int = 0) -> torch.Tensor:
    """The prefill form (DeepGEMM's signature): q (seq_len, heads, 128) FP8, kv = (k (seq_len_kv, 128)
    FP8, k_scale (seq_len_kv,) fp32), weights (seq_len, heads) fp32; row i sees keys
    [cu_seq_len_k_start[i], cu_seq_len_k_end[i]). Returns fp32 (seq_len, seq_len_kv), or with
    max_seqlen_k > 0 (seq_len, max_seqlen_k) whose column c of row i is key start_i + c."""
    seq_len, _, seq_len_kv = _prefill_checks(q, kv, weights, cu_seq_len_k_start, cu_seq_len_k_end, clean_logits,
                                                 max_seqlen_k)
    num_cols = max_seqlen_k if max_seqlen_k > 0 else seq_len_kv
    logits = torch.empty((seq_len, num_cols), dtype=torch.float32, device=q.device)
    return _prefill_into(logits, q, kv, weights, cu_seq_len_k_start, cu_seq_len_k_end, clean_logits, max_seqlen_k)


def _prefill_into(logits, q, kv, weights, cu_seq_len_k_start, cu_seq_len_k_end, clean_logits, max_seqlen_k):
    """fp8_mqa_logits writing a given logits tensor (checked arguments; tests poison it)."""
    if logits.numel() == 0:
        return logits
    seq_len, heads, _ = q.shape
    k, k_scale = kv
    rows = plan.mqa_prefill_rows(heads)
    mqa_plan = plan.mqa_logits(rows, heads, False, rt_device.device_info(q.device.index))
    launch = kernel.MqaLogitsLaunch(
        mqa_plan, q=q, keys=k, scales=k_scale, weights=weights, lens=cu_seq_len_k_start, lens_end=cu_seq_len_k_end, lens_2d=False,
        block_table=None, schedule=None, logits=logits, num_rows=seq_len, compressed=max_seqlen_k > 0,
        clean=clean_logits, grid=-(-seq_len // rows))
    rt_device.run_on_current_stream(q.device.index, launch)
    return logits


# ---- argument checks: every one before any launch, messages naming the argument ----------------
def _contiguous(name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous, got strides {t.stride()}")
    if t.data_ptr() % 16:
        raise ValueError(f"{name} data pointer must be 16-byte aligned")


def _int32_lens(context_lens) -> None:
    if not isinstance(context_lens, torch.Tensor):
        raise TypeError(f"context_lens must be a torch.Tensor, got {type(context_lens).__name__}")
    if context_lens.dtype != torch.int32:
        raise TypeError(f"context_lens must be int32, got {context_lens.dtype}")
    if context_lens.dim() not in (1, 2) or context_lens.shape[0] == 0:
        raise ValueError(f"context_lens must be (batch,) or (batch, next_n) with batch >= 1, got shape "
                         f"{tuple(context_lens.shape)}")
    if not context_lens.is_contiguous():
        raise ValueError(f"context_lens must be contiguous, got strides {context_lens.stride()}")


def _heads(name: str, heads: int, rows: int, dim: int) -> None:
    if dim != kernel.INDEX_DIM:
        raise ValueError(f"{name}: index_dim must be {kernel.INDEX_DIM}, got {dim}")
    if heads % HEADS_MULTIPLE or heads == 0 or rows * heads > MAX_TILE_HEADS:
        raise ValueError(f"{name}: heads must be a positive multiple of {HEADS_MULTIPLE} with next_n x heads <= "
                         f"{MAX_TILE_HEADS}, got heads={heads}, next_n={rows}")


def _paged_checks(q, cache, weights, context_lens, block_table, schedule_meta, max_context_len, clean_logits):
    validate.tensor("q", q, 4, FP8)
    batch, next_n, heads, dim = q.shape
    if not 1 <= next_n <= MAX_NEXT_N:
        raise ValueError(f"q: next_n (dimension 1) must be in [1, {MAX_NEXT_N}], got {next_n}")
    _heads("q", heads, next_n, dim)
    _contiguous("q", q)
    validate.tensor("fused_kv_cache", cache, 4, (torch.uint8,) + FP8)
    if tuple(cache.shape[1:]) != (kernel.KV_BLOCK, 1, dim + 4):
        raise ValueError(f"fused_kv_cache must have shape (num_blocks, {kernel.KV_BLOCK}, 1, {dim + 4}), got "
                         f"{tuple(cache.shape)}")
    _contiguous("fused_kv_cache", cache)
    validate.tensor("weights", weights, 2, (torch.float32,))
    if tuple(weights.shape) != (batch * next_n, heads):
        raise ValueError(f"weights must have shape (batch * next_n, heads) = {(batch * next_n, heads)}, got "
                         f"{tuple(weights.shape)}")
    _contiguous("weights", weights)
    _int32_lens(context_lens)
    expected = (batch,) if context_lens.dim() == 1 else (batch, next_n)
    if tuple(context_lens.shape) != expected:
        raise ValueError(f"context_lens must have shape {expected}, got {tuple(context_lens.shape)}")
    validate.tensor("block_table", block_table, 2, (torch.int32,))
    if block_table.shape[0] != batch or block_table.stride(1) != 1:
        raise ValueError(f"block_table must be (batch={batch}, max_blocks) int32 with unit column stride, got shape "
                         f"{tuple(block_table.shape)}, strides {block_table.stride()}")
    validate.tensor("schedule_meta", schedule_meta, 2, (torch.int32,))
    if schedule_meta.shape[0] < 2 or schedule_meta.shape[1] != 2 or not schedule_meta.is_contiguous():
        raise ValueError(f"schedule_meta must be (num_mps + 1, 2) int32 from get_paged_mqa_logits_metadata, got "
                         f"shape {tuple(schedule_meta.shape)}")
    if not isinstance(max_context_len, int) or isinstance(max_context_len, bool) or not 0 < max_context_len < 2**31:
        raise ValueError(f"max_context_len must be a positive int, got {max_context_len!r}")
    if not isinstance(clean_logits, bool):
        raise TypeError(f"clean_logits must be a bool, got {type(clean_logits).__name__}")
    validate.cuda("q", q)
    validate.same_device("q", q.device, fused_kv_cache=cache, weights=weights, context_lens=context_lens,
                         block_table=block_table, schedule_meta=schedule_meta)
    return batch, next_n, heads, dim


def _prefill_checks(q, kv, weights, ks, ke, clean_logits, max_seqlen_k):
    validate.tensor("q", q, 3, FP8)
    seq_len, heads, dim = q.shape
    _heads("q", heads, max(1, 128 // max(heads, 1)), dim)
    _contiguous("q", q)
    if not isinstance(kv, (tuple, list)) or len(kv) != 2:
        raise TypeError("kv must be a pair (k (seq_len_kv, 128) FP8, k_scale (seq_len_kv,) fp32)")
    k, k_scale = kv
    validate.tensor("kv[0]", k, 2, FP8)
    if k.shape[1] != dim:
        raise ValueError(f"kv[0] must be (seq_len_kv, {dim}), got {tuple(k.shape)}")
    _contiguous("kv[0]", k)
    validate.tensor("kv[1]", k_scale, 1, (torch.float32,))
    if k_scale.shape[0] != k.shape[0]:
        raise ValueError(f"kv[1] must hold one scale per key: shape ({k.shape[0]},), got {tuple(k_scale.shape)}")
    _contiguous("kv[1]", k_scale)
    validate.tensor("weights", weights, 2, (torch.float32,))
    if tuple(weights.shape) != (seq_len, heads):
        raise ValueError(f"weights must have shape (seq_len, heads) = {(seq_len, heads)}, got {tuple(weights.shape)}")
    _contiguous("weights", weights)
    for name, t in (("cu_seq_len_k_start", ks), ("cu_seq_len_k_end", ke)):
        validate.tensor(name, t, 1, (torch.int32,))
        if t.shape[0] != seq_len or not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous ({seq_len},) int32, got shape {tuple(t.shape)}")
    if not isinstance(clean_logits, bool):
        raise TypeError(f"clean_logits must be a bool, got {type(clean_logits).__name__}")
    if not isinstance(max_seqlen_k, int) or isinstance(max_seqlen_k, bool) or not 0 <= max_seqlen_k < 2**31:
        raise ValueError(f"max_seqlen_k must be a non-negative int, got {max_seqlen_k!r}")
    if k.shape[0] >= 2**31:
        raise ValueError(f"kv[0] must have fewer than 2**31 keys, got {k.shape[0]}")
    validate.cuda("q", q)
    validate.same_device("q", q.device, **{"kv[0]": k, "kv[1]": k_scale, "weights": weights,
                                           "cu_seq_len_k_start": ks, "cu_seq_len_k_end": ke})
    return seq_len, heads, k.shape[0]
