#!/usr/bin/env python3
"""Time the configs of sm90_fp8_gemm_blockscaled over the dense suite, and score the heuristic
against such a sweep.

    python tools/sweep_fp8_configs.py run [--out docs/bench/dense_fp8_config_sweep.json]   (GPU)
        [--shapes MxNxK,...]  (default: the dense suite)
    python tools/sweep_fp8_configs.py score [--sweep docs/bench/dense_fp8_config_sweep.json ...] (CPU)

Configs: (BLOCK_M, BLOCK_N, cluster_m, cluster_n, num_splits). Large m: BLOCK_M 128 and 256 with
every legal cluster (below 2048 rows also 48-80 wide tiles); m <= 128: BLOCK_M 64 and 128, and
32/64/128-wide tiles split over K. Each config is timed twice, in a forward and a reverse pass over
the shape's configs (the clock drifts under the power cap), and the two times averaged.
`score` prints, per shape, the heuristic's pick, the sweep's best and the ratio of their times,
then the geomean: the number the heuristic's NOTES quote. Rows of older sweeps (bm, bn only)
count as unclustered, unsplit configs; where several sweeps are given, a shape is scored on the
last one that has it.
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
SHAPES = ROOT / "mategemm" / "shapes" / "shapes.json"
BLOCK_NS = (16, 32, 48, 64, 96, 112, 128, 144, 160)
SPLIT_BLOCK_NS = (32, 64, 128)


def candidates(m: int, n: int, k: int) -> list[tuple[int, int, int, int, int]]:
    """The configs worth timing for one shape (forced values the kernel accepts)."""
    from mategemm.heuristics import fp8_gemm

    configs = []
    if m <= 128:
        for bm in (64, 128):
            configs += [(bm, bn, 1, 1, 1) for bn in BLOCK_NS]
            configs += [(bm, bn, 1, 1, s) for bn in SPLIT_BLOCK_NS for s in fp8_gemm.split_counts(-(-k // 128)) if s > 1]
        return configs
    for bm in (128, 256):
        for bn in BLOCK_NS:
            if bn < (48 if m < 2048 else 96) or (bm == 256 and bn > 128):
                continue  # NOTES: never competitive at m = 4096 (a full sweep once: >= 1.3x slower)
            for cm, cn in fp8_gemm.CLUSTERS:
                if bm == 256 and cm > 1:
                    continue
                if math.ceil(m / bm) % cm or math.ceil(n / bn) % cn:
                    continue
                configs.append((bm, bn, cm, cn, 1))
    return configs


def force_string(config: tuple[int, int, int, int, int]) -> str:
    bm, bn, cm, cn, splits = config
    return f"block_m={bm},block_n={bn},cluster_m={cm},cluster_n={cn},num_splits={splits}"


def run(out: Path, shapes: list[tuple[int, int, int]]) -> None:
    import torch

    from benchkit.timing import median_ms, rotating_gemm_calls

    def time(config) -> float:
        os.environ["MATEGEMM_FORCE_CONFIG"] = force_string(config)
        return median_ms(calls) * 1e3

    rows = []
    for m, n, k in shapes:
        _, _, calls = rotating_gemm_calls(m, n, k, 1 if m >= 4096 else 4)
        configs = candidates(m, n, k)
        forward = [time(config) for config in configs]
        backward = [time(config) for config in reversed(configs)][::-1]
        os.environ.pop("MATEGEMM_FORCE_CONFIG")
        shape_rows = [{"m": m, "n": n, "k": k, "bm": bm, "bn": bn, "cluster_m": cm, "cluster_n": cn,
                       "num_splits": splits, "us": (t1 + t2) / 2}
                      for (bm, bn, cm, cn, splits), t1, t2 in zip(configs, forward, backward)]
        best = min(shape_rows, key=lambda r: r["us"])
        print(f"{m}x{n}x{k}: best {row_config(best)} {best['us']:.1f} us", flush=True)
        rows += shape_rows
    out.write_text(json.dumps({"card": torch.cuda.get_device_name(), "rows": rows}, indent=1) + "\n")


def row_config(row: dict) -> tuple[int, int, int, int, int]:
    return (row["bm"], row["bn"], row.get("cluster_m", 1), row.get("cluster_n", 1), row.get("num_splits", 1))


def score(sweeps: list[Path]) -> float:
    import torch

    from mategemm.heuristics import fp8_gemm
    from mategemm.runtime.device import SM90_NO_DEVICE
    from mategemm.types import GemmProblem, RECIPE_1x128_128x128

    times = {}
    for sweep in sweeps:
        data = json.loads(sweep.read_text())
        found = collections.defaultdict(dict)
        for r in data["rows"] if isinstance(data, dict) else data:
            found[(r["m"], r["n"], r["k"])][row_config(r)] = r["us"]
        times.update(found)
    logs, missing = [], 0
    for (m, n, k), by_config in times.items():
        problem = GemmProblem(m, n, k, RECIPE_1x128_128x128, torch.float8_e4m3fn, torch.float8_e4m3fn,
                              torch.bfloat16)
        c = fp8_gemm.choose(problem, SM90_NO_DEVICE, SM90_NO_DEVICE.num_sms)
        pick = (c.block_m, c.block_n, c.cluster_m, c.cluster_n, c.num_splits)
        best = min(by_config, key=by_config.get)
        picked = by_config.get(pick)
        ratio = picked / by_config[best] if picked else float("nan")
        if picked:
            logs.append(math.log(ratio))
        else:
            missing += 1
        print(f"{m:>5}x{n:>6}x{k:>6}  picked {pick}  best {best}  {ratio:.3f}")
    geomean = math.exp(sum(logs) / len(logs)) if logs else float("nan")
    print(f"geomean picked/best: {geomean:.4f} over {len(logs)} shapes ({missing} picks not in the sweep)")
    return geomean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("run", "score"))
    parser.add_argument("--out", type=Path, default=SWEEP)
    parser.add_argument("--sweep", type=Path, nargs="+", default=[SWEEP])
    parser.add_argument("--shapes", help="comma-separated MxNxK (run; default: the dense suite)")
    args = parser.parse_args()
    if args.mode == "score":
        score(args.sweep)
    elif args.shapes:
        run(args.out, [tuple(int(x) for x in shape.split("x")) for shape in args.shapes.split(",")])
    else:
        run(args.out, [(s["m"], s["n"], s["k"]) for s in json.loads(SHAPES.read_text())["dense_fp8"]])


if __name__ == "__main__":
    main()
