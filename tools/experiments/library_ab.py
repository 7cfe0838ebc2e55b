#!/usr/bin/env python3
"""Time a few cases through the public API of whichever mategemm is first on PYTHONPATH (a lab
tool; GPU). Of the benchmark code it takes only benchkit.timing (tools/bench.py's CUDA-event
timing and dense inputs, which use the library's public API), so an older tree's library runs the
same inputs under the same timing as today's: run the trees in turns, e.g.

    for r in 1 2; do for t in . .baseline; do
      PYTHONPATH=$t python3 tools/experiments/library_ab.py --label $t --dense 1x2112x7168 --k-grouped 8x4096x4096x2048
    done; done

--dense MxNxK,...: gemm_fp8_nt_groupwise, (1,128,128) recipe, K-major scales, bf16 out.
--k-grouped GxMxNxK,...: ragged_k_moe_gemm_8bit, G groups of about K each (0.7-1.3x, aligned to 128,
seeded), K-major operands, fp32 out. Each line: label, case, median ms of --timed calls (CUDA
events, queued behind a GPU sleep so launch overhead stays out; input sets rotated past the L2).
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/: benchkit's timing, not the library

import mategemm  # noqa: E402
from benchkit.timing import median_ms, rotating_gemm_calls  # noqa: E402
from mategemm.testing import moe  # noqa: E402

SETS = 4


def k_grouped_calls(groups: int, m: int, n: int, k_per_group: int) -> list:
    gen = torch.Generator().manual_seed(groups * k_per_group)
    ks = [moe.align(c, 128) for c in moe.deepgemm_group_sizes(groups, k_per_group, gen)]
    counts = torch.tensor(ks, dtype=torch.int32, device="cuda")
    calls = []
    for _ in range(SETS):
        a, sfa = moe.make_k_grouped_operand(sum(ks), m)
        b, sfb = moe.make_k_grouped_operand(sum(ks), n)
        a, b = moe.k_major(a), moe.k_major(b)
        out = torch.zeros((groups, m, n), dtype=torch.float32, device="cuda")
        calls.append(lambda a=a, sfa=sfa, b=b, sfb=sfb, out=out: mategemm.ragged_k_moe_gemm_8bit(
            (a, sfa), (b, sfb), counts, out, major_a_mode="K", major_b_mode="K", scale_granularity_mnk=(1, 1, 128)))
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="")
    parser.add_argument("--dense", default="")
    parser.add_argument("--k-grouped", default="")
    parser.add_argument("--timed", type=int, default=50)
    args = parser.parse_args()
    print(f"# mategemm from {mategemm.__file__}")
    cases = [(f"dense {s}", lambda m, n, k: rotating_gemm_calls(m, n, k, SETS)[2], s)
             for s in filter(None, args.dense.split(","))]
    cases += [(f"k_grouped {s}", k_grouped_calls, s) for s in filter(None, args.k_grouped.split(","))]
    for name, make, shape in cases:
        ms = median_ms(make(*(int(v) for v in shape.split("x"))), timed=args.timed)
        print(f"{args.label}\t{name}\t{ms:.5f}")


if __name__ == "__main__":
    main()
