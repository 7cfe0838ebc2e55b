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

REFERENCE_FLOPS = 2e11


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

    import mategemm
    from benchkit.timing import median_ms
    from mategemm.testing import moe

    deep_gemm = live_deepgemm()
    generator = torch.Generator().manual_seed(0)
    for shape in args.shapes.split(","):
        groups, m_per_group, n, k = (int(v) for v in shape.split("x"))
        counts = moe.deepgemm_group_sizes(groups, m_per_group, generator=generator)
        ids, _ = moe.per_token_layout(counts, 128)
        rows = ids.numel()
        sets = []
        for _ in range(args.input_sets):
            a, sfa = moe.make_tokens(rows, k)
            b, sfb = moe.make_expert_weights(groups, n, k)
            sets.append((a, sfa, b, sfb, torch.empty((rows, n), dtype=torch.bfloat16, device="cuda")))
        experts = moe.spot_check_experts(counts, 2 * n * k, REFERENCE_FLOPS)
        a, sfa, b, sfb, out = sets[0]
        reference = moe.ragged_m_reference(a, sfa, b, sfb, ids, "per_token", (1, 128, 128), experts)

        def calls(config):
            if config == "deepgemm":
                return [lambda s=s: deep_gemm.m_grouped_fp8_gemm_nt_contiguous(
                    (s[0], s[1]), (s[2], s[3]), s[4], ids, disable_ue8m0_cast=True) for s in sets]
            return [lambda s=s: mategemm.ragged_m_moe_gemm_8bit((s[0], s[1]), (s[2], s[3]), ids, s[4],
                                                               gemm_mode="per_token", alignment_m=128)
                    for s in sets]

        def use(config):
            os.environ["MATEGEMM_FORCE_CONFIG"] = "" if config == "deepgemm" else config
            return calls(config)

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
            diff = moe.calc_diff_rows(out.float(), reference)
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
