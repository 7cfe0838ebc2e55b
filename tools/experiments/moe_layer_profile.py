#!/usr/bin/env python3
"""Where `mategemm.fused_moe`'s time goes, kernel by kernel (a lab tool; GPU).

    python tools/experiments/moe_layer_profile.py [--model qwen3_30b_a3b] [--tokens 16384] [--routing uniform]

Builds one layer of a `moe_layers` model of mategemm/shapes/shapes.json with random FP8 weights,
warms it up, then records a few calls under torch.profiler and prints each kernel's GPU time per
layer call, its share of the layer, and the bytes it must move at the least with the GB/s that
gives (for the layer's own kernels: route, permute, gated activation, unpermute). The share outside
the two GEMMs is what `tools/bench.py moe_layer` reports as one number.
"""
import argparse
import collections
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import mategemm  # noqa: E402
import mategemm.plan  # noqa: E402
from mategemm.testing import moe_layer as layer_testing  # noqa: E402

CALLS = 5


def least_bytes(name: str, tokens: int, topk: int, hidden: int, intermediate: int) -> int | None:
    """Bytes a kernel of the layer must read and write at the least (bf16 input), or None (GEMMs)."""
    pairs = tokens * topk
    fp8_row = hidden + hidden // 128 * 4  # a row quantised 1x128, with its scales
    if "route" in name:
        return pairs * (4 + 8 + 8)  # ids in, order and inverse out
    if "moe_permute<false>" in name:  # quantised per token first (plan.moe_quantize_first), else per pair
        rows = tokens if mategemm.plan.moe_quantize_first(False, tokens, topk) else pairs
        return tokens * hidden * 2 + rows * fp8_row
    if "moe_permute<true>" in name:  # the pairs' rows gathered from the tokens' FP8 rows
        return tokens * fp8_row + pairs * fp8_row
    if "gated_act" in name:
        return pairs * (2 * intermediate * 2 + intermediate + intermediate // 128 * 4)
    if "unpermute" in name:
        return pairs * hidden * 2 + tokens * hidden * 2
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen3_30b_a3b")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--routing", default="uniform", choices=layer_testing.ROUTINGS)
    args = parser.parse_args()
    models = json.loads((ROOT / "mategemm" / "shapes" / "shapes.json").read_text())["moe_layers"]
    model = models.get(args.model)
    if model is None:
        parser.error(f"--model must be one of {sorted(models)}")
    hidden, inter, experts, topk = model["hidden"], model["intermediate"], model["experts"], model["topk"]
    case = layer_testing.make_moe_layer_inputs(args.tokens, hidden, inter, experts, topk, routing=args.routing)
    for _ in range(3):
        mategemm.fused_moe(**case)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(CALLS):
            mategemm.fused_moe(**case)
        torch.cuda.synchronize()
    per_kernel = collections.defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[event.name] += event.device_time_total / CALLS
    total = sum(per_kernel.values())
    print(f"{args.model}, {args.tokens} tokens, {args.routing} routing: {total:.1f} us of GPU time per layer call")
    print(f"{'kernel':70s} {'us':>9s} {'share':>6s} {'GB/s':>7s}")
    for name, us in sorted(per_kernel.items(), key=lambda item: -item[1]):
        nbytes = least_bytes(name, args.tokens, topk, hidden, inter)
        rate = f"{nbytes / us / 1e3:7.0f}" if nbytes and us > 0 else "      -"
        print(f"{name[:70]:70s} {us:9.1f} {us / total:6.1%} {rate}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
