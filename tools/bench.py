#!/usr/bin/env python3
"""mategemm against its peers, side by side in one run on one card.

    python tools/bench.py dense_fp8 [--out-dir docs/bench] [--shapes tools/shapes/shapes.json]
    python tools/bench.py host      (host overhead per warm call, first call in a new process,
                                     cold NVRTC compile time per kernel)

Timing follows ../shared/bench/README.md: CUDA events around each call, 5 warm-up calls, then
30 timed calls queued behind a ~10 ms GPU sleep, median; input sets rotated so the data touched
exceeds 3x L2. Benchmarks never assert; correctness is reported as calc_diff beside each row.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import mategemm  # noqa: E402
from mategemm.testing import calc_diff, fp8_gemm_reference, make_fp8_gemm_inputs  # noqa: E402
from mategemm.testing import peers  # noqa: E402
from mategemm.testing.timing import SLEEP_CYCLES, median_ms, rotating_gemm_calls  # noqa: E402

SHAPES = ROOT / "tools" / "shapes" / "shapes.json"
ANCHORS = ROOT / "tools" / "shapes" / "anchors.json"


def card_kind(name: str) -> str:
    return "H200" if "H200" in name else "H100"


def copy_tbps() -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms([lambda: dst.copy_(src)])
    return 2 * src.numel() / (ms * 1e-3) / 1e12


def load_anchors(suite: str, kind: str) -> dict:
    data = json.loads(ANCHORS.read_text())
    return {(r["m"], r["n"], r["k"]): r for r in data.get(suite, {}).get(kind, [])}


def dense_bytes(m: int, n: int, k: int) -> int:
    return m * k + n * k + m * (k // 128) * 4 + math.ceil(n / 128) * (k // 128) * 4 + m * n * 2


def bench_dense_fp8(args) -> dict:
    props = torch.cuda.get_device_properties(0)
    kind = card_kind(props.name)
    anchors = load_anchors("dense_fp8", kind)
    shapes = json.loads(Path(args.shapes).read_text())["dense_fp8"]
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    result = {"suite": "dense_fp8", "card": props.name, "date": time.strftime("%Y-%m-%d"),
              "copy_tbps": round(copy_tbps(), 3), "rows": []}
    for shape in shapes:
        m, n, k = shape["m"], shape["n"], shape["k"]
        nbytes = dense_bytes(m, n, k)
        flops = 2 * m * n * k
        num_sets = min(32, max(1, math.ceil(3 * l2 / nbytes)))
        sets, outs, ours_calls = rotating_gemm_calls(m, n, k, num_sets)
        row = {"m": m, "n": n, "k": k}

        a, b, sa, sb = sets[0]
        ours = mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=outs[0])
        row["mategemm_diff"] = calc_diff(ours, fp8_gemm_reference(a, b, sa, sb))
        impls = {
            "mategemm": ours_calls,
            "cublas_blockwise": lambda: [peers.cublas_blockwise(*s) for s in sets],
            "cublas_tensorwise": lambda: [peers.cublas_tensorwise(s[0], s[1]) for s in sets],
        }
        for name, calls in impls.items():
            try:
                calls = calls() if callable(calls) else calls
                ms = median_ms(calls)
            except Exception as exc:  # noqa: BLE001 - a peer that cannot run this shape
                row[f"{name}_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
                continue
            row[f"{name}_ms"] = round(ms, 5)
            row[f"{name}_tflops"] = round(flops / (ms * 1e-3) / 1e12, 1)
            row[f"{name}_gbps"] = round(nbytes / (ms * 1e-3) / 1e9, 1)
        anchor = anchors.get((m, n, k))
        if anchor:
            row.update(deepgemm_tflops=anchor["tflops"], deepgemm_gbps=anchor["gbps"], deepgemm_ms=anchor["ms"])
        result["rows"].append(row)
        print_row(row, first=len(result["rows"]) == 1)
        del sets, outs
    summarise(result)
    return result


def ratio(row: dict, peer: str) -> float | None:
    if "mategemm_ms" in row and f"{peer}_ms" in row:
        return row[f"{peer}_ms"] / row["mategemm_ms"]
    return None


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def print_row(row: dict, first: bool) -> None:
    if first:
        print(f"{'m':>5} {'n':>6} {'k':>6} | {'ours TF':>8} {'GB/s':>7} {'ms':>8} | {'cuBLAS-bw':>9} {'x':>5} | "
              f"{'DeepGEMM':>8} {'x':>5} | {'cuBLAS-tw':>9} | diff", flush=True)

    def fmt(key, width, digits=1):
        value = row.get(key)
        return f"{value:>{width}.{digits}f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"

    def fmt_ratio(peer):
        r = ratio(row, peer)
        return f"{r:>5.2f}" if r else f"{'-':>5}"

    print(f"{row['m']:>5} {row['n']:>6} {row['k']:>6} | {fmt('mategemm_tflops', 8)} {fmt('mategemm_gbps', 7, 0)} "
          f"{fmt('mategemm_ms', 8, 4)} | {fmt('cublas_blockwise_tflops', 9)} {fmt_ratio('cublas_blockwise')} | "
          f"{fmt('deepgemm_tflops', 8)} {fmt_ratio('deepgemm')} | {fmt('cublas_tensorwise_tflops', 9)} | "
          f"{row.get('mategemm_diff', float('nan')):.1e}", flush=True)


def summarise(result: dict) -> None:
    rows = result["rows"]
    summary = {}
    for peer in ("cublas_blockwise", "deepgemm", "cublas_tensorwise"):
        ratios = [r for r in (ratio(row, peer) for row in rows) if r]
        if ratios:
            summary[f"geomean_vs_{peer}"] = round(geomean(ratios), 4)
            summary[f"min_vs_{peer}"] = round(min(ratios), 4)
    decode = [r for r in (ratio(row, "deepgemm") for row in rows if row["m"] <= 128) if r]
    if decode:
        summary["geomean_vs_deepgemm_m_le_128"] = round(geomean(decode), 4)
    result["summary"] = summary
    print(f"card {result['card']}, copy {result['copy_tbps']} TB/s; " +
          ", ".join(f"{k} {v}" for k, v in summary.items()), flush=True)


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", flush=True)
        return
    rows = result["rows"]
    labels = [f"{r['m']}x{r['n']}x{r['k']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(10, len(rows) * 0.5), 5))
    width = 0.2
    for i, impl in enumerate(("mategemm", "deepgemm", "cublas_blockwise", "cublas_tensorwise")):
        ys = [r.get(f"{impl}_tflops", 0) for r in rows]
        ax.bar([x + (i - 1.5) * width for x in range(len(rows))], ys, width, label=impl)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_ylabel("TFLOPS")
    ax.set_title(f"{result['suite']} on {result['card']} ({result['date']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}", flush=True)


FIRST_CALL_SCRIPT = """
import time, torch, mategemm
from mategemm.testing import make_fp8_gemm_inputs
a, b, sa, sb = make_fp8_gemm_inputs(128, 2112, 7168)
torch.cuda.synchronize()
t = time.perf_counter()
mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb)
torch.cuda.synchronize()
print(time.perf_counter() - t)
"""


def bench_host(args) -> dict:
    """Host overhead per warm call, first call in a new process (warm disk cache), cold compiles."""
    from mategemm.jit.cache import KernelCache
    from mategemm.prewarm import plan

    result = {"suite": "host", "card": torch.cuda.get_device_name(0), "date": time.strftime("%Y-%m-%d")}
    a, b, sa, sb = make_fp8_gemm_inputs(1, 576, 128)
    out = torch.empty((1, 576), dtype=torch.bfloat16, device="cuda")
    for _ in range(20):
        mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out)
    torch.cuda.synchronize()
    samples = []
    for _ in range(10):
        torch.cuda._sleep(SLEEP_CYCLES * 2)  # GPU busy: the loop below measures the host alone
        t = time.perf_counter()
        for _ in range(200):
            mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out)
        samples.append((time.perf_counter() - t) / 200 * 1e6)
        torch.cuda.synchronize()
    result["host_us_per_call"] = round(statistics.median(samples), 2)

    subprocess.run([sys.executable, "-c", FIRST_CALL_SCRIPT], check=True, capture_output=True, cwd=ROOT)  # warm disk
    firsts = [float(subprocess.run([sys.executable, "-c", FIRST_CALL_SCRIPT], check=True, capture_output=True,
                                   text=True, cwd=ROOT).stdout.split()[-1]) for _ in range(3)]
    result["first_call_warm_disk_ms"] = round(statistics.median(firsts) * 1e3, 2)

    with tempfile.TemporaryDirectory() as tmp:
        cache = KernelCache(tmp)
        shapes = [(r["m"], r["n"], r["k"]) for r in json.loads(Path(args.shapes).read_text())["dense_fp8"]]
        seconds = []
        for planned in plan(shapes, "sm_90a"):
            t = time.perf_counter()
            cache.get(planned.spec)
            seconds.append(time.perf_counter() - t)
    result["cold_compile_s"] = {"kernels": len(seconds), "mean": round(statistics.mean(seconds), 3),
                                "max": round(max(seconds), 3), "total": round(sum(seconds), 2)}
    print(json.dumps(result, indent=1), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=("dense_fp8", "host"))
    parser.add_argument("--out-dir", default=str(ROOT / "docs" / "bench"))
    parser.add_argument("--shapes", default=str(SHAPES))
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = bench_dense_fp8(args) if args.suite == "dense_fp8" else bench_host(args)
    (out_dir / f"{args.suite}.json").write_text(json.dumps(result, indent=1) + "\n")
    if args.suite != "host":
        plot(result, out_dir / f"{args.suite}.png")


if __name__ == "__main__":
    main()
