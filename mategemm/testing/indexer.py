"""Lightning indexer (MQA logits) inputs, float64 references and a plain torch peer.

logits[row, t] = sum_h weights[row, h] * relu((q[row, h] . k[t]) * k_scale[t]) for every kv position t
the row sees. Two forms:
  paged (decode): q e4m3 (batch, next_n, heads, 128), a fused uint8 KV cache (num_blocks, 64, 1, 132)
    (mategemm.quant.paged_kv_cache_split), a block table and context lengths; row = b * next_n + j.
    context_lens 1-D (batch,): draft token j sees [0, ctx[b] - next_n + j]; 2-D (batch, next_n):
    it sees [0, ctx[b, j] - 1].
  prefill: q e4m3 (seq_len, heads, head_dim), kv = (k e4m3 (seq_len_kv, head_dim), scale fp32
    (seq_len_kv,)), head_dim 32, 64 or 128; row i sees [ks[i], ke[i]); with max_seqlen_k > 0 column
    c of row i is kv position ks[i] + c.
References mark positions a kernel must not write (clean_logits=False) with NaN, the ones it must
clean with -inf. Everything runs on the tensors' own device, CPU too.
"""
from __future__ import annotations

import math

import torch

from mategemm.quant import (
    PAGED_BLOCK_TOKENS,
    paged_kv_cache_cast_to_fp8,
    paged_kv_cache_split,
    per_token_cast_to_fp8,
)

FP8 = torch.float8_e4m3fn
HEAD_DIM = 128
_MAX_CONTEXT_PAD = 17  # default max_context_len = longest visible length + this (not a multiple of 64)


def _draw(fn, shape, device, generator) -> torch.Tensor:
    """torch.randn / torch.rand drawn on the generator's device (CPU or CUDA), then moved to `device`."""
    return fn(shape, device=generator.device if generator is not None else device, generator=generator).to(device)


def _host_generator(generator):
    """A CPU generator for the bookkeeping draws (block shuffles, windows), derived from `generator`."""
    if generator is None or generator.device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), device=generator.device, generator=generator))
    return torch.Generator().manual_seed(seed)


def _magnitudes(shape, device, generator) -> torch.Tensor:
    """Random factors in [0.25, 4.25): a scale applied to the wrong token shows."""
    return _draw(torch.rand, shape, device, generator) * 4 + 0.25


# ---------------------------------------------------------------- visibility

def _visible_ends(context_lens: torch.Tensor, next_n: int) -> torch.Tensor:
    """int64 (batch * next_n,): row b * next_n + j sees kv positions [0, end)."""
    ctx = context_lens.to(torch.int64)
    if ctx.dim() == 1:
        return (ctx[:, None] - next_n + 1 + torch.arange(next_n, device=ctx.device)).clamp(min=0).flatten()
    if ctx.dim() == 2 and ctx.shape[1] == next_n:
        return ctx.clamp(min=0).flatten()
    raise ValueError(f"context_lens must have shape (batch,) or (batch, next_n={next_n}), "
                     f"got {tuple(context_lens.shape)}")


def visible_mask(context_lens: torch.Tensor, next_n: int, max_context_len: int) -> torch.Tensor:
    """bool (batch * next_n, max_context_len): True where row b * next_n + j sees the kv position."""
    ends = _visible_ends(torch.as_tensor(context_lens), next_n)
    return torch.arange(max_context_len, device=ends.device) < ends[:, None]


def _paged_shapes(q, weights, context_lens, block_table, max_context_len):
    """(batch, next_n, heads, ends) after checking the paged arguments agree."""
    if q.dim() != 4 or q.shape[3] != HEAD_DIM:
        raise ValueError(f"q must have shape (batch, next_n, heads, 128), got {tuple(q.shape)}")
    batch, next_n, heads, _ = q.shape
    if tuple(weights.shape) != (batch * next_n, heads):
        raise ValueError(f"weights must have shape ({batch * next_n}, {heads}), got {tuple(weights.shape)}")
    if block_table.dim() != 2 or block_table.shape[0] != batch:
        raise ValueError(f"block_table must have shape ({batch}, max_blocks), got {tuple(block_table.shape)}")
    ends = _visible_ends(context_lens, next_n).clamp(max=max_context_len)
    if ends.numel() != batch * next_n:
        raise ValueError(f"context_lens must have {batch} rows, got {tuple(context_lens.shape)}")
    if ends.numel() and int(ends.max()) > block_table.shape[1] * PAGED_BLOCK_TOKENS:
        raise ValueError(f"block_table has {block_table.shape[1]} blocks per request, too few for "
                         f"{int(ends.max())} visible tokens")
    return batch, next_n, heads, ends


# ---------------------------------------------------------------- inputs

def make_paged_case(batch: int, next_n: int, heads: int, context_lens, num_blocks=None, shared_prefix_blocks=0,
                    generator=None, device="cpu", max_context_len=None) -> dict:
    """Fresh random paged inputs: dict with q e4m3 (batch, next_n, heads, 128), fused_kv_cache uint8
    (num_blocks, 64, 1, 132), weights fp32 (batch * next_n, heads), context_lens int32 (as given: a
    list (batch,) or a nested list (batch, next_n)), block_table int32 (batch, ceil(max_context_len / 64))
    and max_context_len (an int).

    Physical blocks are shuffled; every request maps its first `shared_prefix_blocks` logical blocks
    to the same physical blocks; the rest of its blocks are its own. Table entries past a request's
    blocks hold random valid block ids. Every cache block, used or not, holds random keys. num_blocks
    defaults to the blocks needed plus 3 spare; max_context_len to the longest visible length + 17.
    """
    ctx = torch.tensor(context_lens, dtype=torch.int32)
    if ctx.dim() not in (1, 2) or ctx.shape[0] != batch:
        raise ValueError(f"context_lens must be a list of {batch} ints or {batch} lists of {next_n}")
    ends = _visible_ends(ctx, next_n).view(batch, next_n)
    longest = ends.amax(dim=1).tolist()  # visible tokens per request
    if max_context_len is None:
        max_context_len = max(longest) + _MAX_CONTEXT_PAD
    if max_context_len < max(longest):
        raise ValueError(f"max_context_len {max_context_len} < the longest visible length {max(longest)}")

    # physical blocks: the shared prefix once, then each request's own blocks, all shuffled
    needed = [math.ceil(n / PAGED_BLOCK_TOKENS) for n in longest]
    shared = min(shared_prefix_blocks, max(needed))
    own = [max(0, n - shared) for n in needed]
    used = shared + sum(own)
    num_blocks = used + 3 if num_blocks is None else num_blocks
    if num_blocks < max(used, 1):
        raise ValueError(f"num_blocks {num_blocks} < the {used} blocks the context lengths need")
    table_blocks = math.ceil(max_context_len / PAGED_BLOCK_TOKENS)
    host = _host_generator(generator)
    perm = torch.randperm(num_blocks, generator=host)
    table = torch.randint(0, num_blocks, (batch, table_blocks), generator=host)
    start = shared
    for b in range(batch):
        table[b, :min(shared, needed[b])] = perm[:min(shared, needed[b])]
        table[b, shared:shared + own[b]] = perm[start:start + own[b]]
        start += own[b]

    k = _draw(torch.randn, (num_blocks, PAGED_BLOCK_TOKENS, 1, HEAD_DIM), device, generator)
    k *= _magnitudes((num_blocks, PAGED_BLOCK_TOKENS, 1, 1), device, generator)
    q = _draw(torch.randn, (batch, next_n, heads, HEAD_DIM), device, generator)
    return {
        "q": q.to(FP8),
        "fused_kv_cache": paged_kv_cache_cast_to_fp8(k),
        "weights": _draw(torch.randn, (batch * next_n, heads), device, generator),
        "context_lens": ctx.to(device),
        "block_table": table.to(device=device, dtype=torch.int32),
        "max_context_len": int(max_context_len),
    }


def make_prefill_case(seq_len: int, seq_len_kv: int, heads: int, generator=None, device="cpu",
                      causal_chunks=False, head_dim=HEAD_DIM) -> dict:
    """Fresh random prefill inputs: dict with q e4m3 (seq_len, heads, head_dim), kv = (k e4m3
    (seq_len_kv, head_dim), scale fp32 (seq_len_kv,)), weights fp32 (seq_len, heads), ks and ke int32
    (seq_len,), and max_seqlen_k = max(ke - ks) (an int).

    causal_chunks=False: each row sees a random window 0 <= ks <= ke <= seq_len_kv (some empty).
    causal_chunks=True: kv packs up to 4 sequences back to back; query i sits at kv position
    p = seq_len_kv - seq_len + i and sees its own sequence causally, [start of its sequence, p + 1).
    """
    if not 0 < head_dim <= HEAD_DIM:
        raise ValueError(f"head_dim must be in [1, {HEAD_DIM}], got {head_dim}")
    if causal_chunks and seq_len > seq_len_kv:
        raise ValueError(f"causal_chunks needs seq_len <= seq_len_kv, got {seq_len} > {seq_len_kv}")
    host = _host_generator(generator)
    if causal_chunks:
        cuts = torch.randint(1, max(seq_len_kv, 2), (3,), generator=host).tolist()
        starts = torch.tensor(sorted({0, *[c for c in cuts if c < seq_len_kv]}), dtype=torch.int64)
        pos = torch.arange(seq_len_kv - seq_len, seq_len_kv)
        ks = starts[torch.searchsorted(starts, pos, right=True) - 1]
        ke = pos + 1
    else:
        a = torch.randint(0, seq_len_kv + 1, (seq_len,), generator=host)
        b = torch.randint(0, seq_len_kv + 1, (seq_len,), generator=host)
        ks, ke = torch.minimum(a, b), torch.maximum(a, b)

    k = _draw(torch.randn, (seq_len_kv, head_dim), device, generator)
    k *= _magnitudes((seq_len_kv, 1), device, generator)
    # one scale per key: per_token_cast_to_fp8's one 128-column group, zero-padded past head_dim
    # (zeros leave the amax as it is)
    padded = torch.nn.functional.pad(k, (0, HEAD_DIM - head_dim))
    k_fp8, k_scale = per_token_cast_to_fp8(padded)
    k_fp8 = k_fp8[:, :head_dim].contiguous()
    q = _draw(torch.randn, (seq_len, heads, head_dim), device, generator)
    return {
        "q": q.to(FP8),
        "kv": (k_fp8, k_scale[:, 0].contiguous()),
        "weights": _draw(torch.randn, (seq_len, heads), device, generator),
        "ks": ks.to(device=device, dtype=torch.int32),
        "ke": ke.to(device=device, dtype=torch.int32),
        "max_seqlen_k": int((ke - ks).max()) if seq_len else 0,
    }


# ---------------------------------------------------------------- references

def _request_keys(keys, scales, blocks, tokens, dtype):
    """Dequantised keys (tokens, 128) of one request whose logical blocks are `blocks` (int64)."""
    kb = keys.view(torch.uint8)[blocks].view(FP8).to(dtype) * scales[blocks].to(dtype)[..., None]
    return kb.reshape(-1, HEAD_DIM)[:tokens]


def paged_reference(q, fused_kv_cache, weights, context_lens, block_table, max_context_len, clean_logits=True):
    """float32 (batch * next_n, max_context_len), computed in float64 on q's device.

    Positions a row does not see are -inf when clean_logits, else NaN (the kernel must not write them).
    """
    batch, next_n, _, ends = _paged_shapes(q, weights, context_lens, block_table, max_context_len)
    keys, scales = paged_kv_cache_split(fused_kv_cache)
    out = torch.full((batch * next_n, max_context_len), -math.inf if clean_logits else math.nan,
                     dtype=torch.float64, device=q.device)
    mask = visible_mask(context_lens, next_n, max_context_len).to(q.device)
    ends = ends.view(batch, next_n).amax(dim=1).tolist()
    for b in range(batch):
        rows = slice(b * next_n, (b + 1) * next_n)
        if ends[b] == 0:
            continue
        blocks = block_table[b, :math.ceil(ends[b] / PAGED_BLOCK_TOKENS)].to(torch.int64)
        k = _request_keys(keys, scales, blocks, ends[b], torch.float64)  # (T, 128)
        scores = torch.relu(torch.einsum("jhd,td->jht", q[b].double(), k))
        logits = (scores * weights[rows].double()[:, :, None]).sum(dim=1)  # (next_n, T)
        out[rows, :ends[b]] = torch.where(mask[rows, :ends[b]], logits, out[rows, :ends[b]])
    return out.float()


def prefill_reference(q, kv, weights, ks, ke, clean_logits=True, max_seqlen_k=0):
    """float32 (seq_len, seq_len_kv), or (seq_len, max_seqlen_k) when max_seqlen_k > 0 (column c of
    row i = kv position ks[i] + c), computed in float64 on q's device.

    Positions outside [ks[i], ke[i]) are -inf when clean_logits, else NaN.
    Raises ValueError unless 0 <= ks and ke <= seq_len_kv.
    """
    k_fp8, k_scale = kv
    seq_len, heads, _ = q.shape
    seq_len_kv = k_fp8.shape[0]
    ks, ke = ks.to(q.device, torch.int64)[:, None], ke.to(q.device, torch.int64)[:, None]
    if seq_len and (int(ks.min()) < 0 or int(ke.max()) > seq_len_kv):
        raise ValueError(f"ks and ke must lie in [0, seq_len_kv = {seq_len_kv}]")
    k = k_fp8.double() * k_scale.double()[:, None]
    full = torch.empty((seq_len, seq_len_kv), dtype=torch.float64, device=q.device)
    chunk = max(1, (1 << 24) // max(1, heads * seq_len_kv))  # rows per step: ~128 MiB of scores
    for r in range(0, seq_len, chunk):
        scores = torch.relu(torch.einsum("shd,td->sht", q[r:r + chunk].double(), k))
        full[r:r + chunk] = (scores * weights[r:r + chunk].double()[:, :, None]).sum(dim=1)

    fill = -math.inf if clean_logits else math.nan
    if max_seqlen_k <= 0:
        pos = torch.arange(seq_len_kv, device=q.device)
        return torch.where((pos >= ks) & (pos < ke), full, fill).float()
    pos = ks + torch.arange(max_seqlen_k, device=q.device)
    seen = pos < ke
    picked = full.gather(1, pos.clamp(max=seq_len_kv - 1)) if seq_len_kv else pos.double()
    return torch.where(seen, picked, fill).float()


# ---------------------------------------------------------------- torch peer

def torch_paged_logits(q, fused_kv_cache, weights, context_lens, block_table, max_context_len, clean_logits=True):
    """The plain torch implementation (benchmark peer): float32 (batch * next_n, max_context_len) on q's
    device. Gathers every request's table blocks at once, one batched matmul, relu, weighted head sum.

    Positions a row does not see are -inf when clean_logits, else whatever the gathered blocks give.
    """
    batch, next_n, heads, _ = _paged_shapes(q, weights, context_lens, block_table, max_context_len)
    keys, scales = paged_kv_cache_split(fused_kv_cache)
    table = block_table[:, :math.ceil(max_context_len / PAGED_BLOCK_TOKENS)].to(torch.int64)
    k = keys.view(torch.uint8)[table].view(FP8).float() * scales[table][..., None]  # (B, nb, 64, 128)
    k = k.view(batch, -1, HEAD_DIM)[:, :max_context_len]
    k = torch.nn.functional.pad(k, (0, 0, 0, max_context_len - k.shape[1]))  # a table shorter than the logits
    scores = torch.relu(torch.bmm(q.float().view(batch, next_n * heads, HEAD_DIM), k.transpose(1, 2)))
    scores = scores.view(batch, next_n, heads, -1) * weights.float().view(batch, next_n, heads, 1)
    logits = scores.sum(dim=2).view(batch * next_n, -1)
    if clean_logits:
        mask = visible_mask(context_lens, next_n, max_context_len).to(q.device)
        logits = logits.masked_fill(~mask, -math.inf)
    return logits
