#!/usr/bin/env python3
"""TFLOPS per watt of FP8 GEMMs under a sustained load, ours beside DeepGEMM (a lab tool; GPU).

    python tools/experiments/power_compare.py --shapes 4096x7168x16384,4096x4096x7168,8x4096x4096x7168 \
        --configs "" "block_m=128,block_n=192" [--seconds 3] [--rounds 2]

MxNxK is a dense GEMM (A's scales MN-major); GxMxNxK the contiguous grouped GEMM of tools/bench.py
grouped: G groups of 0.7-1.3x M rows, each padded to 128 rows (per_token ids), timed on the padded
rows. Each config (MATEGEMM_FORCE_CONFIG values, '' = the heuristic's pick; with deep_gemm importable,
`source tools/deepgemm_build.sh`, DeepGEMM's fp8_gemm_nt or m_grouped_fp8_gemm_nt_contiguous as
"deepgemm") runs back to back for
--seconds while `nvidia-smi` samples the board's power and SM clock every 50 ms; the configs take
turns in rounds, the first one rotated. Per config: TFLOPS over the whole loop (CUDA events at its
ends), mean power and clock over the samples after the first half second (the clock and the power
cap settle), TFLOPS per watt. On a power-capped card a kernel that does the same work with fewer
joules also keeps a higher clock: that is what this shows and a per-call median does not.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SAMPLE_MS = 50
SETTLE_S = 0.5


def power_field(index: int) -> str:
    """nvidia-smi's instantaneous board power where the driver has it, else its 1 s average."""
    probe = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=power.draw.instant",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True)
    return "power.draw.instant" if probe.returncode == 0 and parse_float(probe.stdout) is not None else "power.draw"


def parse_float(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        return None  # "[N/A]", a header


def parse_samples(text: str, span: float) -> list[tuple[float, float, float]]:
    """(seconds, W, MHz) of nvidia-smi's "power, clock" lines, spaced evenly over `span` seconds
    (its own timestamps have one-second resolution); unreadable lines are skipped."""
    pairs = []
    for line in text.splitlines():
        parts = line.split(",")
        values = [parse_float(p) for p in parts] if len(parts) == 2 else [None]
        if None not in values:
            pairs.append(values)
    return [(span * i / len(pairs), w, mhz) for i, (w, mhz) in enumerate(pairs)]


class Sampler:
    """nvidia-smi sampling one GPU's power and SM clock in the background."""

    def __init__(self, index: int, field: str):
        self.proc = subprocess.Popen(
            ["nvidia-smi", f"--id={index}", f"--query-gpu={field},clocks.sm", "--format=csv,noheader,nounits",
             f"-lms={SAMPLE_MS}"], stdout=subprocess.PIPE, text=True)
        self.start = time.monotonic()

    def stop(self) -> list[tuple[float, float, float]]:
        self.proc.terminate()
        out, _ = self.proc.communicate()
        return parse_samples(out, time.monotonic() - self.start)


def sustained(call, seconds: float, flops: float, index: int, field: str) -> dict:
    """Run `call` back to back for about `seconds`; TFLOPS, mean W and MHz after SETTLE_S."""
    import torch

    torch.cuda.synchronize()
    started = time.monotonic()
    calls = 0
    # one launch's time, to size the batches the host queues between checks of the wall clock
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    call()
    end.record()
    end.synchronize()
    batch = max(1, int(0.05e3 / max(begin.elapsed_time(end), 1e-3)))
    sampler = Sampler(index, field)
    begin.record()
    queued = None  # the batch before the last: waited for, so one batch is always queued behind the GPU
    while time.monotonic() - started < seconds:
        for _ in range(batch):
            call()
        calls += batch
        done = torch.cuda.Event()
        done.record()
        if queued is not None:
            queued.synchronize()
        queued = done
    end.record()
    end.synchronize()
    samples = sampler.stop()
    ms = begin.elapsed_time(end)
    steady = [(w, mhz) for t, w, mhz in samples if t >= SETTLE_S] or [(w, mhz) for _, w, mhz in samples]
    watts = statistics.mean(w for w, _ in steady) if steady else float("nan")
    mhz = statistics.mean(c for _, c in steady) if steady else float("nan")
    tflops = flops * calls / ms / 1e9
    return {"tflops": tflops, "watts": watts, "mhz": mhz, "tflops_per_watt": tflops / watts, "calls": calls}


def dense_calls(deep_gemm, m: int, n: int, k: int):
    """(flops, our call, DeepGEMM's call or None, the output, its check) of one dense GEMM."""
    from benchkit.timing import deepgemm_calls, peer_views, rotating_gemm_calls
    from mategemm.testing import calc_diff, fp8_gemm_reference

    sets, outs, ours = rotating_gemm_calls(m, n, k, 1, "MN")
    views = peer_views(sets, "MN")
    theirs = deepgemm_calls(deep_gemm, views, outs)[0] if deep_gemm is not None else None
    reference = fp8_gemm_reference(*views[0])
    return 2.0 * m * n * k, ours[0], theirs, outs[0], lambda out: calc_diff(out.float(), reference)


def grouped_calls(deep_gemm, groups: int, m_per_group: int, n: int, k: int):
    """As dense_calls, for the contiguous grouped GEMM on one routing of the grouped suite's kind."""
    import torch

    from benchkit.timing import contiguous_grouped_calls

    rows, outs, ours, theirs, check = contiguous_grouped_calls(groups, m_per_group, n, k, 1, deep_gemm,
                                                               torch.Generator().manual_seed(0))
    return 2.0 * rows * n * k, ours[0], theirs[0] if theirs else None, outs[0], check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="4096x7168x16384,4096x4096x7168",
                        help="comma-separated MxNxK (dense) or GxMxNxK (contiguous grouped)")
    parser.add_argument("--configs", nargs="+", default=[""], help="MATEGEMM_FORCE_CONFIG values ('' = heuristic)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import torch

    from benchkit.common import forcing, in_turns, live_deepgemm, require_gpu_or_exit
    require_gpu_or_exit("tools/experiments/power_compare.py")

    deep_gemm = live_deepgemm()
    configs = [*args.configs, *(["deepgemm"] if deep_gemm is not None else [])]
    index = torch.cuda.current_device()
    field = power_field(index)
    print(f"{torch.cuda.get_device_name()}: {args.seconds} s per config and round, {field} and SM clock from "
          f"nvidia-smi every {SAMPLE_MS} ms after the first {SETTLE_S} s", flush=True)
    for shape in args.shapes.split(","):
        dims = [int(x) for x in shape.split("x")]
        flops, ours, theirs, out, reference = (grouped_calls if len(dims) == 4 else dense_calls)(deep_gemm, *dims)

        def call_of(config):
            return theirs if config == "deepgemm" else forcing(ours, config)

        runnable = []
        for config in configs:
            out.fill_(float("nan"))
            try:
                call_of(config)()
            except ValueError as exc:
                print(f"{shape} [{config or 'heuristic'}] n/a: {exc}", flush=True)
                continue
            diff = reference(out)
            if diff > 1e-5:
                print(f"{shape} [{config or 'heuristic'}] WRONG: calc_diff {diff:.1e}", flush=True)
                continue
            runnable.append(config)
        results = {config: [] for config in runnable}
        for r in range(args.rounds):
            for config in in_turns(runnable, r):
                results[config].append(sustained(call_of(config), args.seconds, flops, index, field))
        for config, runs in results.items():
            med = {key: statistics.median(run[key] for run in runs) for key in ("tflops", "watts", "mhz",
                                                                                  "tflops_per_watt")}
            print(f"{shape} [{config or 'heuristic'}] {med['tflops']:.0f} TFLOPS  {med['watts']:.0f} W  "
                  f"{med['mhz']:.0f} MHz  {med['tflops_per_watt']:.3f} TFLOPS/W  (rounds: "
                  + ", ".join(f"{run['tflops']:.0f}/{run['watts']:.0f}W" for run in runs) + ")", flush=True)


if __name__ == "__main__":
    main()
