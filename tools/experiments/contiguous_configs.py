#!/usr/bin/env python3
"""Forced configs of the contiguous grouped GEMM side by side with live DeepGEMM (GPU; a lab tool).

    python tools/experiments/contiguous_configs.py --shapes 8x4096x6144x7168,4x8192x4096x4096 \
        --configs "" "block_m=128,block_n=192" "group_n=8"

Each shape is one routing as `tools/bench.py grouped` draws it (G groups of 0.7-1.3x M rows, each
padded to 128 rows; per_token ids, K-major scales), timed on the padded rows as the bench does. An
empty config is the heuristic's pick; "deepgemm" (m_grouped_fp8_gemm_nt_contiguous) takes its turn
in every round when deep_gemm imports. Each cell is TFLOPS, the median of --rounds rounds in which
the configs take turns (the first rotated), with the rounds' spread; calc_diff against the fp64
reference on a few experts is checked once per config (a poisoned output first).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", required=True, help="comma-separated GxMxNxK")
    parser.add_argument("--configs", nargs="+", required=True, help="MATEGEMM_FORCE_CONFIG values ('' = heuristic)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--input-sets", type=int, default=2)
    args = parser.parse_args()

    from benchkit.common import in_turns, live_deepgemm, require_gpu_or_exit
    require_gpu_or_exit("tools/experiments/contiguous_configs.py")

    import torch

    from benchkit.timing import contiguous_grouped_calls, median_ms

    deep_gemm = live_deepgemm()
    generator = torch.Generator().manual_seed(0)
    for shape in args.shapes.split(","):
        groups, m_per_group, n, k = (int(v) for v in shape.split("x"))
        rows, outs, ours, theirs, check = contiguous_grouped_calls(groups, m_per_group, n, k, args.input_sets,
                                                                   deep_gemm, generator)
        out = outs[0]

        def use(config):
            os.environ["MATEGEMM_FORCE_CONFIG"] = "" if config == "deepgemm" else config
            return theirs if config == "deepgemm" else ours

        configs = [*args.configs, *(["deepgemm"] if deep_gemm is not None else [])]
        runnable, cells, times = [], {}, {}
        for config in configs:
            call = use(config)[0]
            out.fill_(float("nan"))
            try:
                call()
            except ValueError as error:
                cells[config] = f"n/a ({error})"[:80]
                continue
            diff = check(out)
            runnable.append(config)
            times[config] = []
            cells[config] = "" if diff < 1e-5 else f" WRONG {diff:.1e}"
        for r in range(args.rounds):
            for config in in_turns(runnable, r):
                times[config].append(median_ms(use(config)))
        os.environ.pop("MATEGEMM_FORCE_CONFIG", None)
        flops = 2 * rows * n * k
        for config in runnable:
            tflops = sorted(flops / (ms * 1e9) for ms in times[config])
            cells[config] = f"{statistics.median(tflops):.0f} ({tflops[0]:.0f}-{tflops[-1]:.0f})" + cells[config]
        print(f"{shape} ({rows} rows): " + "  ".join(f"[{c or 'heuristic'}] {cells[c]}" for c in configs), flush=True)


if __name__ == "__main__":
    main()
