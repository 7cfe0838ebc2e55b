#!/usr/bin/env python3
"""Time every (BLOCK_M, BLOCK_N) of sm90_fp8_gemm_blockscaled over the dense suite, and score the
heuristic against such a sweep.

    python tools/sweep_fp8_configs.py run [--out docs/bench/dense_fp8_config_sweep.json]   (GPU)
    python tools/sweep_fp8_configs.py score [--sweep docs/bench/dense_fp8_config_sweep.json] (CPU)

`score` prints, per shape, the heuristic's pick, the sweep's best and the ratio of their times,
then the geomean: the number the heuristic's NOTES quote.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SWEEP = ROOT / "docs" / "bench" / "dense_fp8_config_sweep.json"
SHAPES = ROOT / "tools" / "shapes" / "shapes.json"
BLOCK_NS = (16, 32, 48, 64, 96, 112, 128, 144, 160)


def run(out: Path) -> None:
    import torch

    import mategemm
    from mategemm.testing import make_fp8_gemm_inputs
    from mategemm.testing.timing import median_ms

    rows = []
    for shape in json.loads(SHAPES.read_text())["dense_fp8"]:
        m, n, k = shape["m"], shape["n"], shape["k"]
        sets = [make_fp8_gemm_inputs(m, n, k) for _ in range(1 if m >= 4096 else 4)]
        outs = [torch.empty((m, n), dtype=torch.bfloat16, device="cuda") for _ in sets]
        calls = [lambda s=s, o=o: mategemm.gemm_fp8_nt_groupwise(*s, out=o) for s, o in zip(sets, outs)]
        for bm in (64, 128) if m <= 128 else (128,):
            for bn in BLOCK_NS:
                if m >= 4096 and bn < 96:
                    continue  # NOTES: never competitive at large m (a full sweep once: >= 1.3x slower)
                os.environ["MATEGEMM_FORCE_CONFIG"] = f"block_m={bm},block_n={bn}"
                rows.append({"m": m, "n": n, "k": k, "bm": bm, "bn": bn, "us": median_ms(calls) * 1e3})
        os.environ.pop("MATEGEMM_FORCE_CONFIG")
        best = min((r for r in rows if (r["m"], r["n"], r["k"]) == (m, n, k)), key=lambda r: r["us"])
        print(f"{m}x{n}x{k}: best {best['bm']}x{best['bn']} {best['us']:.1f} us", flush=True)
    out.write_text(json.dumps({"card": torch.cuda.get_device_name(), "rows": rows}, indent=1) + "\n")


def score(sweep: Path) -> float:
    import torch

    from mategemm.heuristics import fp8_gemm
    from mategemm.runtime.device import SM90_NO_DEVICE
    from mategemm.types import RECIPE_1x128_128x128, GemmProblem

    data = json.loads(sweep.read_text())
    times = collections.defaultdict(dict)
    for r in data["rows"] if isinstance(data, dict) else data:
        times[(r["m"], r["n"], r["k"])][(r["bm"], r["bn"])] = r["us"]
    logs = []
    for (m, n, k), by_config in times.items():
        problem = GemmProblem(m, n, k, RECIPE_1x128_128x128, torch.float8_e4m3fn, torch.float8_e4m3fn,
                              torch.bfloat16)
        config = fp8_gemm.choose(problem, SM90_NO_DEVICE, SM90_NO_DEVICE.num_sms)
        best = min(by_config, key=by_config.get)
        picked = by_config.get((config.block_m, config.block_n))
        ratio = picked / by_config[best] if picked else float("nan")
        if picked:
            logs.append(math.log(ratio))
        print(f"{m:>5}x{n:>6}x{k:>6}  picked {config.block_m}x{config.block_n}  best {best[0]}x{best[1]}  "
              f"{ratio:.3f}")
    geomean = math.exp(sum(logs) / len(logs))
    print(f"geomean picked/best: {geomean:.4f} over {len(logs)} shapes")
    return geomean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("run", "score"))
    parser.add_argument("--out", type=Path, default=SWEEP)
    parser.add_argument("--sweep", type=Path, default=SWEEP)
    args = parser.parse_args()
    run(args.out) if args.mode == "run" else score(args.sweep)


if __name__ == "__main__":
    main()
