#!/usr/bin/env python3
"""Time forced kernel configs side by side on chosen dense shapes (GPU; a lab tool).

    python tools/compare_configs.py --shapes 4096x7168x16384,64x2112x7168 \
        --configs "" "block_m=256,block_n=128,cluster_n=2" "block_m=64,block_n=64,num_splits=4"

An empty config is the heuristic's pick. Each cell is TFLOPS (CUDA events, as tools/bench.py), the
median of --rounds rounds in which the configs take turns with the starting one rotated (under the
card's power cap the clock drifts within a run, and a fixed order favours whoever goes first), with
the rounds' spread; calc_diff is checked against the fp64 reference; configs that do not fit a shape
print n/a. With deep_gemm importable (`source tools/deepgemm_build.sh`), DeepGEMM's fp8_gemm_nt takes
its turn in every round as the config named "deepgemm". Writes the rows as JSON with --out.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", required=True, help="comma-separated MxNxK")
    parser.add_argument("--configs", nargs="+", required=True, help="MATEGEMM_FORCE_CONFIG values ('' = heuristic)")
    parser.add_argument("--input-sets", type=int, default=4, help="input sets rotated per shape (L2 residency)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of turns per shape")
    parser.add_argument("--scale-major", choices=("K", "MN"), default="K", help="layout of A's and B's scales")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()

    import torch

    from benchkit.common import in_turns, live_deepgemm, require_gpu_or_exit
    require_gpu_or_exit("tools/compare_configs.py")

    from mategemm.testing import calc_diff, fp8_gemm_reference
    from benchkit.timing import deepgemm_calls, median_ms, peer_views, rotating_gemm_calls

    deep_gemm = live_deepgemm()
    configs = [*args.configs, *(["deepgemm"] if deep_gemm is not None else [])]

    rows = []
    for shape in args.shapes.split(","):
        m, n, k = (int(x) for x in shape.split("x"))
        sets, outs, ours = rotating_gemm_calls(m, n, k, args.input_sets, args.scale_major)
        sets = peer_views(sets, args.scale_major)  # the reference's and DeepGEMM's, as tools/bench.py dense_fp8
        theirs = deepgemm_calls(deep_gemm, sets, outs)
        reference = fp8_gemm_reference(*sets[0])

        def use(config):  # the config's calls, with MATEGEMM_FORCE_CONFIG set for them
            os.environ["MATEGEMM_FORCE_CONFIG"] = "" if config == "deepgemm" else config
            return theirs if config == "deepgemm" else ours

        runnable, cells = [], {}
        for config in configs:
            calls = use(config)
            outs[0].fill_(float("nan"))
            try:
                calls[0]()
            except ValueError:
                cells[config] = "n/a"
                continue
            diff = calc_diff(outs[0].float(), reference)
            runnable.append(config)
            rows.append({"m": m, "n": n, "k": k, "config": config, "diff": diff, "us_rounds": []})
        by_config = {row["config"]: row for row in rows[len(rows) - len(runnable):]}
        for r in range(args.rounds):
            for config in in_turns(runnable, r):
                by_config[config]["us_rounds"].append(round(median_ms(use(config)) * 1e3, 2))
        for config, row in by_config.items():
            us = statistics.median(row["us_rounds"])
            tflops = [2 * m * n * k / t / 1e6 for t in row["us_rounds"]]
            row.update(us=us, tflops=round(2 * m * n * k / us / 1e6, 1))
            cells[config] = (f"{row['tflops']:.0f} ({min(tflops):.0f}-{max(tflops):.0f})"
                             + ("" if row["diff"] < 1e-5 else f" WRONG {row['diff']:.1e}"))
        os.environ.pop("MATEGEMM_FORCE_CONFIG", None)
        print(f"{shape}: " + "  ".join(f"[{c or 'heuristic'}] {cells[c]}" for c in configs), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"card": torch.cuda.get_device_name(), "scale_major": args.scale_major,
                                              "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
