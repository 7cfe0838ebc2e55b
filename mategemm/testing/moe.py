"""Mixture-of-experts inputs, layouts and float64 references for the three grouped GEMM forms.

ragged M (tokens of all experts stacked along M: `per_token` ids, `per_expert` counts, `psum_expert`
prefix sums), masked (A (E, max_m, K), the first masked_m[e] rows live) and ragged K (tokens
stacked along K, the weight-gradient form). Everything runs on the tensors' own device, CPU too.
"""
from __future__ import annotations

import itertools
import math

import torch

from mategemm.quant import per_block_cast_to_fp8, per_token_cast_to_fp8
from mategemm.suites import GROUP_SIZE_LOW, GROUP_SIZE_SPREAD
from mategemm.testing.numerics import calc_diff
from mategemm.testing.reference import fp8_gemm_reference

FP8 = torch.float8_e4m3fn
GEMM_MODES = ("per_token", "per_expert", "psum_expert")


def _ints(x) -> list[int]:
    return [int(v) for v in (x.tolist() if isinstance(x, torch.Tensor) else x)]


def _magnitudes(shape, device, generator) -> torch.Tensor:
    """Random factors in [0.25, 4.25): a scale applied to the wrong row, column or block shows."""
    return torch.rand(shape, device=device, generator=generator) * 4 + 0.25


# ---------------------------------------------------------------- inputs

def make_expert_weights(num_experts: int, n: int, k: int, recipe=(1, 128, 128), dtype=FP8, device="cuda",
                        generator=None):
    """(b (E, n, k) fp8, sfb) with each expert quantised on its own.

    recipe (1,128,128): sfb (E, ceil(n/128), k/128) per 128x128 block; (1,1,128): sfb (E, n, k/128)
    per row and 128 columns. Rows and columns have random magnitudes, as in make_fp8_gemm_inputs.
    Experts are drawn one at a time, so E x n x k never exists in fp32.
    """
    if recipe[1] not in (1, 128):
        raise ValueError(f"recipe {recipe}: the weights' row granularity must be 1 or 128")
    b = torch.empty((num_experts, n, k), dtype=dtype, device=device)
    sfb = torch.empty((num_experts, n if recipe[1] == 1 else math.ceil(n / 128), k // 128),
                      dtype=torch.float32, device=device)
    cast = per_token_cast_to_fp8 if recipe[1] == 1 else per_block_cast_to_fp8
    for e in range(num_experts):
        w = torch.randn((n, k), device=device, generator=generator)
        w *= _magnitudes((n, 1), device, generator)
        w *= _magnitudes((1, k), device, generator)
        b[e], sfb[e] = cast(w, dtype)
    return b, sfb


def make_tokens(rows: int, k: int, dtype=FP8, device="cuda", generator=None):
    """(a (rows, k) fp8, sfa (rows, k/128) fp32): per-token 1x128 quantised, rows and columns of random
    magnitudes."""
    x = torch.randn((rows, k), device=device, generator=generator)
    x *= _magnitudes((rows, 1), device, generator)
    x *= _magnitudes((1, k), device, generator)
    return per_token_cast_to_fp8(x, dtype)


def make_k_grouped_operand(sum_k: int, cols: int, dtype=FP8, device="cuda", generator=None):
    """(x (sum_k, cols) row-major fp8, sx (sum_k/128, cols) fp32): one scale per 128 K-rows per column.

    The ragged-K operands (A with cols = m, B with cols = n); `k_major(x)` gives the same values
    with K-major strides.
    """
    x = torch.randn((cols, sum_k), device=device, generator=generator)
    x *= _magnitudes((cols, 1), device, generator)
    x *= _magnitudes((1, sum_k), device, generator)
    q, s = per_token_cast_to_fp8(x, dtype)
    return q.t().contiguous(), s.t().contiguous()


def k_major(x: torch.Tensor) -> torch.Tensor:
    """The same (sum_k, cols) values stored K-major: strides (1, sum_k), i.e. `.t()` of a contiguous tensor."""
    return x.t().contiguous().t()


# ---------------------------------------------------------------- routing and layouts

def routing_counts(num_tokens: int, num_experts: int, topk: int, skew: float = 0.5, generator=None) -> list[int]:
    """Tokens per expert when each of `num_tokens` tokens picks `topk` distinct experts.

    Expert popularity is lognormal with sigma `skew` (0.5: the hottest expert gets ~3x the mean of
    256), and one expert in 16 is cold (never picked), so some experts are empty at any token count.
    Sums to num_tokens * topk. `generator` is a CPU torch.Generator.
    """
    if not 0 < topk <= num_experts:
        raise ValueError(f"topk must be in [1, num_experts={num_experts}], got {topk}")
    weights = torch.exp(skew * torch.randn(num_experts, dtype=torch.float64, generator=generator))
    cold = min(num_experts // 16, num_experts - topk)
    weights[torch.randperm(num_experts, generator=generator)[:cold]] = 0
    if num_tokens == 0:
        return [0] * num_experts
    picks = torch.multinomial(weights.expand(num_tokens, -1), topk, replacement=False, generator=generator)
    return torch.bincount(picks.flatten(), minlength=num_experts).tolist()


def deepgemm_group_sizes(groups: int, m_per_group: int, generator=None) -> list[int]:
    """DeepGEMM's test generator: each group int(m_per_group * U(0.7, 1.3)) rows."""
    u = torch.rand(groups, dtype=torch.float64, generator=generator)
    return [int(m_per_group * (GROUP_SIZE_LOW + GROUP_SIZE_SPREAD * float(x))) for x in u]


def align(x: int, alignment: int) -> int:
    return -(-x // alignment) * alignment


def per_token_layout(counts, alignment_m: int = 128, device="cuda"):
    """(expert_ids int32 (rows,), starts): expert e's counts[e] rows start at starts[e], a multiple of
    alignment_m, in expert order; -1 rows pad each segment up to the next multiple (empty experts
    take no rows). rows = sum(align(c, alignment_m))."""
    counts = _ints(counts)
    starts, rows = [], 0
    for c in counts:
        starts.append(rows)
        rows += align(c, alignment_m)
    ids = torch.full((rows,), -1, dtype=torch.int32)
    for e, (start, c) in enumerate(zip(starts, counts)):
        ids[start:start + c] = e
    return ids.to(device), starts


def packed_layout(counts, device="cuda"):
    """(counts int32 (E,), psum int32 (E,)): the `per_expert` and `psum_expert` infos (inclusive prefix sum)."""
    counts = torch.tensor(_ints(counts), dtype=torch.int32)
    return counts.to(device), torch.cumsum(counts, 0, dtype=torch.int32).to(device)


def _take_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    if x.element_size() == 1 and x.is_floating_point():  # fp8: index through bytes
        return x.view(torch.uint8)[index].view(x.dtype)
    return x[index]


def pack_rows(x: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
    """The rows of x (tokens, activations, or a reference) whose expert id is not -1, in order."""
    return _take_rows(x, (expert_ids >= 0).nonzero().flatten().to(x.device))


def expert_rows(info, gemm_mode: str, num_experts: int) -> list[torch.Tensor]:
    """Row indices of each expert, from a ragged-M tokens info in any of the three gemm modes."""
    if gemm_mode == "per_token":
        ids = info.to(torch.int64)
        return [(ids == e).nonzero().flatten() for e in range(num_experts)]
    if gemm_mode not in GEMM_MODES:
        raise ValueError(f"gemm_mode must be one of {GEMM_MODES}, got {gemm_mode!r}")
    ends = _ints(info)
    if gemm_mode == "per_expert":
        ends = list(itertools.accumulate(ends))
    begins = [0] + ends[:-1]
    return [torch.arange(b, e) for b, e in zip(begins, ends)]


def spot_check_experts(counts, flops_per_row: float, budget_flops: float) -> list[int]:
    """Non-empty experts whose reference fits in budget_flops: the last, the first and the hottest
    first (segment boundaries and the longest run), then the rest in order; at least one."""
    counts = _ints(counts)
    live = [e for e, c in enumerate(counts) if c]
    if not live:
        return []
    hottest = max(live, key=lambda e: counts[e])
    chosen, spent = [], 0.0
    for e in dict.fromkeys([live[-1], live[0], hottest] + live):
        cost = counts[e] * flops_per_row
        if chosen and spent + cost > budget_flops:
            continue
        chosen.append(e)
        spent += cost
    return sorted(chosen)


# ---------------------------------------------------------------- references

def ragged_m_reference(a, sfa, b, sfb, ids_or_counts, gemm_mode: str, recipe=(1, 128, 128), experts=None):
    """float32 (rows, n): row r of expert e = (a[r] * sfa[r]) @ (b[e] * sfb[e])^T, in float64.

    Rows that must stay untouched (id -1, or past the last expert's rows) are NaN. `experts`: only
    these are computed and the other experts' rows are NaN too (a cheap spot check).
    """
    rows, n = a.shape[0], b.shape[1]
    out = torch.full((rows, n), float("nan"), dtype=torch.float32, device=a.device)
    for e, index in enumerate(expert_rows(ids_or_counts, gemm_mode, b.shape[0])):
        if index.numel() == 0 or (experts is not None and e not in experts):
            continue
        index = index.to(a.device)
        out[index] = fp8_gemm_reference(_take_rows(a, index), b[e], sfa[index], sfb[e], recipe)
    return out


def masked_reference(a, sfa, b, sfb, masked_m, recipe=(1, 128, 128), experts=None):
    """float32 (E, max_m, n): out[e, :masked_m[e]] in float64; rows past masked_m[e] are NaN."""
    num_experts, max_m, _ = a.shape
    out = torch.full((num_experts, max_m, b.shape[1]), float("nan"), dtype=torch.float32, device=a.device)
    for e, m in enumerate(_ints(masked_m)):
        if m and (experts is None or e in experts):
            out[e, :m] = fp8_gemm_reference(a[e, :m], b[e], sfa[e, :m], sfb[e], recipe)
    return out


def ragged_k_reference(a, sfa, b, sfb, counts, out_init, experts=None):
    """float32 (E, m, n): out_init[e] + A_e^T B_e in float64, A_e = a[k_start_e:k_end_e] (any strides)
    scaled per (128-row K block, column) by sfa (sum_k/128, m); the same for B with sfb.

    counts[e] must be multiples of 128 (ValueError otherwise). `experts`: only these are computed,
    the others are NaN.
    """
    counts = _ints(counts)
    if any(c % 128 for c in counts):
        raise ValueError(f"ragged-K counts must be multiples of 128, got {counts}")
    out = out_init.double().clone()
    start = 0
    for e, c in enumerate(counts):
        end = start + c
        if experts is not None and e not in experts:
            out[e] = float("nan")
        elif c:
            a_e = a[start:end].double() * sfa[start // 128:end // 128].double().repeat_interleave(128, 0)
            b_e = b[start:end].double() * sfb[start // 128:end // 128].double().repeat_interleave(128, 0)
            out[e] += a_e.t() @ b_e
        start = end
    return out.float()


def calc_diff_rows(out: torch.Tensor, ref: torch.Tensor) -> float:
    """calc_diff over the rows (last dimension) where ref is defined, i.e. not NaN."""
    defined = torch.isfinite(ref).all(dim=-1)
    return calc_diff(out[defined], ref[defined])
