#!/usr/bin/env python3
"""SM clock and board power while a GEMM runs back to back (GPU; a lab tool).

    python tools/clock_probe.py [--shape 4096x7168x16384] [--seconds 3]

Runs mategemm's kernel, cuBLAS blockwise and cuBLAS tensorwise, each in a loop for --seconds,
while `nvidia-smi` samples the SM clock and power every 100 ms; prints the median clock, power
and TFLOPS of each. Tells whether a kernel is slower per clock or clocked lower (power-bound).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def sample_while(run, seconds: float) -> tuple[float, float, int]:
    """Run `run()` repeatedly for `seconds`; (median SM MHz, median W, calls) sampled meanwhile."""
    import torch

    sampler = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
                                "-lms", "100"], stdout=subprocess.PIPE, text=True)
    calls = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(20):
            run()
        calls += 20
        torch.cuda.synchronize()
    sampler.terminate()
    lines = sampler.communicate()[0].strip().splitlines()[2:]  # the first samples predate the load
    clocks = [float(line.split(",")[0]) for line in lines if "," in line]
    watts = [float(line.split(",")[1]) for line in lines if "," in line]
    return statistics.median(clocks), statistics.median(watts), calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="4096x7168x16384")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    import torch

    import mategemm
    from benchkit import peers
    from mategemm.testing import make_fp8_gemm_inputs

    m, n, k = (int(x) for x in args.shape.split("x"))
    a, b, sa, sb = make_fp8_gemm_inputs(m, n, k)
    out = torch.empty((m, n), dtype=torch.bfloat16, device="cuda")
    runs = {
        "mategemm": lambda: mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out),
        "cublas_blockwise": peers.cublas_blockwise(a, b, sa, sb),
        "cublas_tensorwise": peers.cublas_tensorwise(a, b),
    }
    print(f"{torch.cuda.get_device_name()} {args.shape}")
    for name, run in runs.items():
        run()
        torch.cuda.synchronize()
        start = time.perf_counter()
        mhz, watts, calls = sample_while(run, args.seconds)
        seconds = time.perf_counter() - start
        tflops = 2 * m * n * k * calls / seconds / 1e12
        print(f"{name:18s} SM {mhz:6.0f} MHz  {watts:5.0f} W  {tflops:7.1f} TFLOPS  "
              f"{tflops / mhz * 1e3:6.1f} TFLOPS/GHz", flush=True)


if __name__ == "__main__":
    main()
