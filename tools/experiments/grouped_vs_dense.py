#!/usr/bin/env python3
"""Our grouped FP8 GEMM against our dense one on the same work, with what differs between them
toggled one thing at a time (GPU; a lab tool). The contiguous grouped kernel ran ~20% below the
dense one at the same 256x128 tile (with A's scales read by the scale warps, and a tile walk that
took the main loop off the uniform datapath); each variant below removes one difference:

    dense            (G*m, n, k), A's scales MN-major by TMA (the dense default)
    per_token        G experts of m rows (per_token ids; A's scales by TMA at these sizes: the default)
    per_token_one_b  per_token with every row on expert 0 (one B for all tiles, as in dense)
    masked           G experts of m rows in the masked layout (the segment table instead of ids)
    <variant>_warps  any of them with A's scales read by the scale warps (tma_scales=0)

    python tools/experiments/grouped_vs_dense.py [--shapes 4x8192x4096x7168,8x4096x7168x2048] [--rounds 3]

Each cell is TFLOPS (CUDA events behind a GPU sleep, as tools/bench.py), the median of the rounds in
which the variants take turns (the first rotated each round), with the rounds' spread. A's scales
are MN-major for every variant, so all read the same bytes.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BASE_VARIANTS = ("dense", "per_token", "per_token_one_b", "masked")
VARIANTS = BASE_VARIANTS + tuple(f"{name}_warps" for name in BASE_VARIANTS)


def variant_calls(name: str, groups: int, m: int, n: int, k: int, sets: int) -> list:
    """`sets` calls of one variant on fresh inputs (rotated by the timing to defeat L2 reuse)."""
    import torch

    import mategemm
    from benchkit.common import forcing
    from mategemm.testing import moe

    calls = []
    for _ in range(sets):
        a, sfa = moe.make_tokens(groups * m, k)
        sfa = sfa.t().contiguous().t()  # MN-major: TMA reads it in place, the scale warps coalesce
        b, sfb = moe.make_expert_weights(groups, n, k)
        out = torch.empty((groups * m, n), dtype=torch.bfloat16, device="cuda")
        force = "tma_scales=0" if name.endswith("_warps") else ""
        if name.startswith("dense"):
            call = (lambda a=a, sfa=sfa, b=b[0], sfb=sfb[0], out=out:
                    mategemm.gemm_fp8_nt_groupwise(a, b, sfa.t(), sfb.t(), scale_major_mode="MN", out=out))
        elif name.startswith("masked"):
            counts = torch.full((groups,), m, dtype=torch.int32, device="cuda")
            call = (lambda a=a.view(groups, m, k), sfa=sfa.view(groups, m, -1), b=b, sfb=sfb, out=out, counts=counts:
                    mategemm.masked_moe_gemm_8bit((a, sfa), (b, sfb), counts, out.view(groups, m, n)))
        else:
            ids = torch.arange(groups, dtype=torch.int32, device="cuda").repeat_interleave(m)
            if name.startswith("per_token_one_b"):
                ids.zero_()
            call = (lambda a=a, sfa=sfa, b=b, sfb=sfb, out=out, ids=ids:
                    mategemm.ragged_m_moe_gemm_8bit((a, sfa), (b, sfb), ids, out, gemm_mode="per_token"))
        calls.append(forcing(call, force))
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="4x8192x4096x7168,8x4096x7168x2048",
                        help="comma-separated GxMxNxK: G experts of M rows (M a multiple of 256)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--input-sets", type=int, default=2)
    args = parser.parse_args()

    from benchkit.common import require_gpu_or_exit
    require_gpu_or_exit("tools/experiments/grouped_vs_dense.py")
    from benchkit.timing import median_ms

    for shape in args.shapes.split(","):
        groups, m, n, k = (int(v) for v in shape.split("x"))
        calls = {name: variant_calls(name, groups, m, n, k, args.input_sets) for name in args.variants}
        for name in args.variants:  # compile and warm each outside the timing
            for call in calls[name]:
                call()
        times = {name: [] for name in args.variants}
        for r in range(args.rounds):
            order = args.variants[r % len(args.variants):] + args.variants[:r % len(args.variants)]
            for name in order:
                times[name].append(median_ms(calls[name]))
        flops = 2 * groups * m * n * k
        cells = []
        for name in args.variants:
            tflops = sorted(flops / (ms * 1e9) for ms in times[name])
            cells.append(f"[{name}] {statistics.median(tflops):.0f} ({tflops[0]:.0f}-{tflops[-1]:.0f})")
        print(f"{shape}: " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
