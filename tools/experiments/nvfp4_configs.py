#!/usr/bin/env python3
"""Time forced configs of the NVFP4 grouped GEMM side by side (a lab tool; GPU): compare_configs.py
for grouped_matmul_dynamic_scaled_nvfp4.

    python tools/experiments/nvfp4_configs.py --rows 32x4096x7168@4096,32x2048x768@16 \
        --configs "" stages=2 "block_m=128,block_n=256,decoded_a=1,decoded_b=1"

A row is GROUPSxNxK@TOKENS: GROUPS experts of N x K weights, TOKENS rows each (the nvfp4 suite's
input sets: tools/benchkit/nvfp4_suite.make_set). A config is a MATEGEMM_FORCE_CONFIG value for
the NVFP4 call alone ('' = the heuristic's pick; keys: mategemm.heuristics.nvfp4.FORCE_KEYS);
"torch" is torch._grouped_mm on the weights dequantised beforehand and "fp8" our FP8 per_expert
GEMM on the same shapes, the nvfp4 suite's peers. Each cell is the median over --rounds rounds
(configs in turns, the first rotated) of the bench's event median, in ms, with the rounds' spread;
each NVFP4 config's output is compared with the first one's (calc_diff; both are exact products
summed in fp32, so any difference above ~1e-6 is a wrong result); configs that do not fit print n/a.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PEERS = ("torch", "fp8")


def parse_row(text: str) -> dict:
    """GROUPSxNxK@TOKENS -> the nvfp4 suite's row fields."""
    try:
        shape, tokens = text.split("@")
        groups, n, k = (int(x) for x in shape.split("x"))
        row = {"active_experts": groups, "n": n, "k": k, "tokens_per_expert": int(tokens)}
    except ValueError:
        raise ValueError(f"row {text!r}: expected GROUPSxNxK@TOKENS, e.g. 32x4096x7168@16") from None
    if min(row.values()) < 1 or row["k"] % 32 or row["n"] % 8:
        raise ValueError(f"row {text!r}: positive sizes, K a multiple of 32 and N of 8")
    return row


def cell(times_ms: list[float]) -> str:
    return f"{statistics.median(times_ms):.4f} ({min(times_ms):.4f}-{max(times_ms):.4f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", required=True, help="comma-separated GROUPSxNxK@TOKENS")
    parser.add_argument("--configs", nargs="+", default=[""],
                        help="MATEGEMM_FORCE_CONFIG values for the NVFP4 call ('' = heuristic), torch, fp8")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    try:
        rows = [parse_row(r) for r in args.rows.split(",")]
    except ValueError as exc:
        parser.error(str(exc))

    import torch

    from benchkit import peers
    from benchkit.common import forcing, in_turns, require_gpu_or_exit, rotation_sets
    from benchkit.nvfp4_suite import fp8_call, make_set, nvfp4_call, row_bytes, tokens_bf16
    from benchkit.timing import median_ms
    from mategemm.testing import calc_diff
    require_gpu_or_exit("tools/experiments/nvfp4_configs.py")

    l2_bytes = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 * 1024 * 1024)
    print(torch.cuda.get_device_name(), flush=True)
    for row in rows:
        groups, tokens = row["active_experts"], row["tokens_per_expert"]
        gen = torch.Generator(device="cuda").manual_seed(tokens * 7 + row["n"] + row["k"])
        sets = [make_set(row, gen) for _ in range(rotation_sets(row_bytes(row)["mategemm_nvfp4"], l2_bytes))]

        def calls(config: str) -> list:
            if config == "torch":
                return [peers.torch_grouped_bf16(tokens_bf16(s, row), s["b16"], s["offsets"][1:]) for s in sets]
            if config == "fp8":
                return [fp8_call(s) for s in sets]
            return [forcing(nvfp4_call(s, groups), config) for s in sets]

        prepared, cells, reference = {}, {}, None
        for config in args.configs:
            if config == "fp8" and sets[0]["fp8_a"] is None:
                cells[config] = "n/a (K not a multiple of 128)"
                continue
            try:
                config_calls = calls(config)
                sets[0]["out"].fill_(float("nan"))
                config_calls[0]()
            except ValueError as exc:
                cells[config] = f"n/a ({exc})"
                continue
            if config not in PEERS:  # every NVFP4 config against the first one's output
                if reference is None:
                    reference = sets[0]["out"].float().clone()
                else:
                    diff = calc_diff(sets[0]["out"].float(), reference)
                    if not diff < 1e-6:
                        cells[config] = f"WRONG (diff {diff:.1e} against the first config)"
                        continue
            prepared[config] = config_calls
        runnable = list(prepared)
        times = {config: [] for config in runnable}
        for r in range(args.rounds):
            for config in in_turns(runnable, r):
                times[config].append(median_ms(prepared[config]))
        cells.update({config: cell(times[config]) for config in runnable})
        name = f"{groups}x{row['n']}x{row['k']}@{tokens}"
        print(f"{name}: " + "  ".join(f"[{c or 'heuristic'}] {cells[c]}" for c in args.configs), flush=True)
        del sets, prepared
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
