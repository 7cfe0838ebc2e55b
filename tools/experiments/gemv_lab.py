#!/usr/bin/env python3
"""The lab GEMV (kernels_src/sm90_fp8_gemv.cuh) against our GEMM and live DeepGEMM at 1-2 rows (GPU).

    python tools/experiments/gemv_lab.py [--shapes 1x2112x7168,2x4096x7168] [--rounds 3]

Each shape runs the GEMV (with --warps-per-col, 0: by N) on the same inputs as
gemm_fp8_nt_groupwise (the dense bench's MN-major scales; the GEMV reads them through strides),
checks calc_diff against the fp64 reference (a NaN-poisoned output first), and prints the median
event time of each in turns (us), rotating input sets as tools/bench.py does.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = ("1x2112x7168,1x24576x1536,1x32768x512,1x7168x16384,1x4096x7168,1x7168x2048,1x576x7168,"
          "2x2112x7168,2x7168x16384,2x4096x7168")
WARPS = 4  # kGemvWarps


def warps_per_col(n: int, num_sms: int) -> int:
    """Warps that split one column's K: enough columns' warps for 16 warps an SM, else split."""
    for split in (1, 2):
        if n * split >= 16 * num_sms:
            return split
    return WARPS


def gemv_launcher(m: int, n: int, k: int, split: int):
    """A function launching the GEMV on (a, b, sa, sb, out) with sa, sb of any strides."""
    import torch

    from mategemm.jit.cache import instance_spec
    from mategemm.runtime import launch as rt

    spec = instance_spec("sm90_fp8_gemv", "sm_90a", m, "mategemm::kE4M3", "mategemm::kE4M3", "mategemm::kOutBF16")
    kernel = rt.load_once({}, 0, spec, WARPS * 32)
    types = (rt.PTR, rt.I64, rt.PTR, rt.I64, rt.PTR, rt.INT, rt.INT, rt.PTR, rt.INT, rt.INT, rt.INT, rt.INT, rt.INT,
             rt.INT, rt.PTR, rt.I64)
    grid = -(-n // (WARPS // split))

    def launch(a, b, sa, sb, out):
        gran = 128 if sb.shape[0] < n else 1
        values = (a.data_ptr(), a.stride(0), b.data_ptr(), b.stride(0), sa.data_ptr(), sa.stride(0), sa.stride(1),
                  sb.data_ptr(), sb.stride(0), sb.stride(1), gran, n, k, split, out.data_ptr(), out.stride(0))
        kernel.launch(grid, torch.cuda.current_stream().cuda_stream, kernel.pack(values, types))
    return launch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=SHAPES)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--input-sets", type=int, default=4)
    parser.add_argument("--warps-per-col", type=int, default=0)
    args = parser.parse_args()

    from benchkit.common import in_turns, live_deepgemm, require_gpu_or_exit
    require_gpu_or_exit("tools/experiments/gemv_lab.py")

    import torch

    from benchkit.timing import deepgemm_calls, median_ms, peer_views, rotating_gemm_calls
    from mategemm.testing import calc_diff, fp8_gemm_reference

    deep_gemm = live_deepgemm()
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    for shape in args.shapes.split(","):
        m, n, k = (int(v) for v in shape.split("x"))
        sets, outs, ours = rotating_gemm_calls(m, n, k, args.input_sets, "MN")
        views = peer_views(sets, "MN")  # sa (m, k/128) with unit M stride, sb (n/128, k/128)
        split = args.warps_per_col or warps_per_col(n, num_sms)
        launch = gemv_launcher(m, n, k, split)
        gemv = [lambda s=s, o=o: launch(s[0], s[1], s[2], s[3], o) for s, o in zip(views, outs)]
        impls = {"gemv": gemv, "gemm": ours}
        if deep_gemm is not None:
            impls["deepgemm"] = deepgemm_calls(deep_gemm, views, outs)
        reference = fp8_gemm_reference(*views[0])
        diffs = {}
        for name, calls in impls.items():
            outs[0].fill_(float("nan"))
            calls[0]()
            diffs[name] = calc_diff(outs[0].float(), reference)
        times = {name: [] for name in impls}
        for r in range(args.rounds):
            for name in in_turns(list(impls), r):
                times[name].append(median_ms(impls[name]) * 1e3)
        cells = [f"[{name}] {statistics.median(t):.2f} us" + ("" if diffs[name] < 1e-5 else f" WRONG {diffs[name]:.1e}")
                 for name, t in times.items()]
        print(f"{shape} (warps per column {split}): " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
