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
