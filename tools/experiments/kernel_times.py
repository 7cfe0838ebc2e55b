#!/usr/bin/env python3
"""Where a dense GEMM's bench time goes: the bench's CUDA-event median beside the device time of
each kernel the same loop launched (a lab tool; GPU).

    python tools/experiments/kernel_times.py --shapes 64x2112x7168,128x4096x7168 [--configs "" block_n=32]

For each shape and config (MATEGEMM_FORCE_CONFIG values, '' = the heuristic's pick; with deep_gemm
importable, `source tools/deepgemm_build.sh`, DeepGEMM's fp8_gemm_nt as "deepgemm"), in two rounds:
the event median of tools/bench.py (benchkit.timing.median_ms), then the same loop of calls under
torch.profiler: the kernels launched per call, the longest one's median device time and the median
gap between its starts. An event time above the kernel's device time is the launch's or the
method's; a start-to-start gap above the event time means the GPU waited for the host. First line:
the method's floor, a one-element add timed the same way. MN-major scales, as tools/bench.py
dense_fp8 --scale-major MN.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CALLS = 30


def summarise(records: list[tuple[str, float, float]], calls: int) -> dict:
    """Kernel records (name, start us, end us) of `calls` calls -> kernels per call by name, the
    longest-running kernel's name, its median duration and the median gap between its starts."""
    per_name: dict[str, list[tuple[float, float]]] = {}
    for name, start, end in sorted(records, key=lambda r: r[1]):
        per_name.setdefault(name, []).append((start, end))
    if not per_name:
        return {"per_call": {}, "main": None, "kernel_us": None, "start_to_start_us": None}
    main = max(per_name, key=lambda n: sum(e - s for s, e in per_name[n]))
    spans = per_name[main]
    starts = [s for s, _ in spans]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    return {"per_call": {n: round(len(v) / calls, 2) for n, v in per_name.items()}, "main": main,
            "kernel_us": statistics.median(e - s for s, e in spans),
            "start_to_start_us": statistics.median(gaps) if gaps else None}


def profiled(calls: list) -> dict:
    """The bench's loop (warm-up, a GPU sleep, CALLS calls) under torch.profiler, summarised."""
    import torch

    from benchkit.timing import SLEEP_CYCLES, WARMUP

    for i in range(WARMUP):
        calls[i % len(calls)]()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        torch.cuda._sleep(SLEEP_CYCLES)
        for i in range(CALLS):
            calls[i % len(calls)]()
        torch.cuda.synchronize()
    # spin_kernel: torch.cuda._sleep's
    records = [(e.name, e.time_range.start, e.time_range.end) for e in prof.events()
               if e.device_type == torch.autograd.DeviceType.CUDA and "spin_kernel" not in e.name]
    return summarise(records, CALLS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", required=True, help="comma-separated MxNxK")
    parser.add_argument("--configs", nargs="+", default=[""], help="MATEGEMM_FORCE_CONFIG values ('' = heuristic)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pdl", action="store_true",
                        help="programmatic dependent launch for ours (MATEGEMM_PDL) and DeepGEMM (its set_pdl): "
                             "the back-to-back calls' start-to-start gap shows what it overlaps; the event "
                             "median, one call between two events, cannot")
    args = parser.parse_args()

    import torch

    from benchkit.common import forcing, live_deepgemm, require_gpu_or_exit
    from benchkit.timing import deepgemm_calls, median_ms, peer_views, rotating_gemm_calls
    require_gpu_or_exit("tools/experiments/kernel_times.py")

    deep_gemm = live_deepgemm()
    if args.pdl:
        from mategemm.runtime import launch

        launch.set_pdl(True)
        if deep_gemm is not None:
            deep_gemm.set_pdl(True)
    one = torch.zeros(1, device="cuda")
    print(f"{torch.cuda.get_device_name()}: floor (one-element add) {median_ms([lambda: one.add_(1)]) * 1e3:.2f} us "
          f"event median", flush=True)
    for shape in args.shapes.split(","):
        m, n, k = (int(x) for x in shape.split("x"))
        sets, outs, ours = rotating_gemm_calls(m, n, k, 4, "MN")
        runs = [(config, [forcing(call, config) for call in ours]) for config in args.configs]
        if deep_gemm is not None:
            runs.append(("deepgemm", deepgemm_calls(deep_gemm, peer_views(sets, "MN"), outs)))
        for r in range(args.rounds):
            for config, calls in runs:
                event_us = median_ms(calls) * 1e3
                got = profiled(calls)
                kernel, gap = (f"{got[key]:.2f}" if got[key] is not None else "-"
                               for key in ("kernel_us", "start_to_start_us"))
                print(f"{shape} [{config or 'heuristic'}] round {r + 1}: event {event_us:.2f} us, kernel {kernel} us, "
                      f"start to start {gap} us, kernels per call {got['per_call']}", flush=True)


if __name__ == "__main__":
    main()
