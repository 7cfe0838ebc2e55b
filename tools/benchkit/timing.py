"""CUDA-event timing of the benchmarks (the method: docs/benchmarks.md)."""
from __future__ import annotations

import statistics

WARMUP, TIMED, SLEEP_CYCLES = 5, 30, 20_000_000  # ~10 ms of GPU sleep at 1.98 GHz


def median_ms(calls: list, warmup: int = WARMUP, timed: int = TIMED) -> float:
    """Median CUDA-event time of one call, rotating over `calls` (one per input set).

    The timed calls are queued behind a GPU sleep so the host stays ahead of the GPU and launch
    overhead does not leak into the kernel times.
    """
    import torch

    for i in range(warmup):
        calls[i % len(calls)]()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(timed)]
    torch.cuda._sleep(SLEEP_CYCLES)
    for i, (start, end) in enumerate(events):
        start.record()
        calls[i % len(calls)]()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def rotating_gemm_calls(m: int, n: int, k: int, num_sets: int, scale_major: str = "K") -> tuple[list, list, list]:
    """`num_sets` FP8 GEMM input sets of (m, n, k) (scales `scale_major`, "K" or "MN"), a bf16
    output for each, and one gemm_fp8_nt_groupwise call per set: rotate over them with median_ms
    to defeat L2 reuse."""
    import torch

    import mategemm
    from mategemm.testing.reference import make_fp8_gemm_inputs

    sets = [make_fp8_gemm_inputs(m, n, k, scale_major_mode=scale_major) for _ in range(num_sets)]
    outs = [torch.empty((m, n), dtype=torch.bfloat16, device="cuda") for _ in sets]
    calls = [lambda s=s, o=o: mategemm.gemm_fp8_nt_groupwise(*s, scale_major_mode=scale_major, out=o)
             for s, o in zip(sets, outs)]
    return sets, outs, calls


def peer_views(sets: list, scale_major: str) -> list:
    """Input sets of rotating_gemm_calls as the peers and the fp64 reference take them: with MN-major
    scales A's as an (m, k/128) view with unit M stride and B's K-major (a copy); K-major ones as they are."""
    if scale_major != "MN":
        return sets
    return [(a, b, sa.t(), sb.t().contiguous()) for a, b, sa, sb in sets]


def contiguous_grouped_calls(groups: int, m_per_group: int, n: int, k: int, num_sets: int, deep_gemm=None,
                             generator=None, reference_flops: float = 2e11) -> tuple:
    """One routing of the contiguous grouped GEMM as `tools/bench.py grouped` draws it (groups of
    0.7-1.3x m_per_group rows, each padded to 128 rows: per_token ids) with `num_sets` input sets:
    (rows, a bf16 output per set, our per_token call per set, DeepGEMM's m_grouped contiguous call per
    set or None without deep_gemm, a check: calc_diff of an output of set 0 against the fp64
    reference on the experts that fit `reference_flops`)."""
    import torch

    import mategemm
    from mategemm.testing import moe

    counts = moe.deepgemm_group_sizes(groups, m_per_group, generator=generator)
    ids, _ = moe.per_token_layout(counts, 128)
    rows = ids.numel()
    sets = [(*moe.make_tokens(rows, k), *moe.make_expert_weights(groups, n, k)) for _ in range(num_sets)]
    outs = [torch.empty((rows, n), dtype=torch.bfloat16, device="cuda") for _ in sets]
    ours = [lambda s=s, o=o: mategemm.ragged_m_moe_gemm_8bit((s[0], s[1]), (s[2], s[3]), ids, o,
                                                             gemm_mode="per_token", alignment_m=128)
            for s, o in zip(sets, outs)]
    theirs = None if deep_gemm is None else [
        lambda s=s, o=o: deep_gemm.m_grouped_fp8_gemm_nt_contiguous((s[0], s[1]), (s[2], s[3]), o, ids,
                                                                    disable_ue8m0_cast=True)
        for s, o in zip(sets, outs)]
    experts = moe.spot_check_experts(counts, 2 * n * k, reference_flops)
    reference = moe.ragged_m_reference(*sets[0], ids, "per_token", (1, 128, 128), experts)
    return rows, outs, ours, theirs, lambda out: moe.calc_diff_rows(out.float(), reference)


def deepgemm_calls(deep_gemm, views: list, outs: list) -> list:
    """DeepGEMM's fp8_gemm_nt on each of `views` (peer_views) into the matching output."""
    return [lambda s=s, o=o: deep_gemm.fp8_gemm_nt((s[0], s[2]), (s[1], s[3]), o, disable_ue8m0_cast=True)
            for s, o in zip(views, outs)]
