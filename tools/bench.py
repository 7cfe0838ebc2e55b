#!/usr/bin/env python3
"""mategemm against its peers, side by side in one run on one card.

    python tools/bench.py dense_fp8 [--out-dir docs/bench] [--shapes mategemm/shapes/shapes.json]
    python tools/bench.py grouped [--modes contiguous masked k_grouped per_expert moe_layer]
                                    (MoE GEMMs: DeepGEMM's grouped shapes, decode per-expert
                                     counts vs padding, real models' MoE layers)
    python tools/bench.py bmm       (bmm_fp8 in its four recipes vs torch._scaled_mm per batch entry and
                                     torch.bmm in bf16; dense_fp8's shapes as batch 1 in (1,128,128))
    python tools/bench.py indexer   (fp8_paged_mqa_logits, DeepSeek's lightning indexer in decode, over
                                     "paged_mqa_logits": GB/s against the copy bandwidth and DeepGEMM's
                                     anchors, and a plain torch peer)
    python tools/bench.py host      (host overhead per warm call, first call in a new process,
                                     cold NVRTC compile time per kernel)
    python tools/bench.py moe_layer (mategemm.fused_moe on the "moe_layers" models at 1-16384 tokens,
                                     uniform and skewed routing, against the seed's 128-row padded
                                     pipeline and a bf16 torch._grouped_mm pipeline)
    python tools/bench.py mxfp8     (moe_gemm_mxfp8_nt_groupwise at both granularities on the contiguous
                                     shapes and decode-size experts, against our FP8 ragged path and
                                     dequantised bf16 torch._grouped_mm)
    python tools/bench.py plot [SUITE ...]   (no GPU: redraw docs/bench/<suite>.png from <suite>.json)
    python tools/bench.py docs      (no GPU: rewrite the generated tables of README.md and
                                     docs/benchmarks.md from docs/bench/*.json)

Timing (docs/benchmarks.md): CUDA events around each call, 5 warm-up calls, then
30 timed calls queued behind a ~10 ms GPU sleep, median; input sets rotated so the data touched
exceeds 3x L2. Benchmarks never assert; correctness is reported as calc_diff beside each row.
"""
from __future__ import annotations

import argparse
import json
import math
import os
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
from mategemm.testing import indexer as indexer_testing  # noqa: E402
from mategemm.testing import moe, peers  # noqa: E402
from mategemm.testing.timing import SLEEP_CYCLES, median_ms, rotating_gemm_calls  # noqa: E402

SHAPES = ROOT / "mategemm" / "shapes" / "shapes.json"
ANCHORS = ROOT / "tools" / "shapes" / "anchors.json"


def card_kind(name: str) -> str:
    return "H200" if "H200" in name else "H100"


def copy_tbps() -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms([lambda: dst.copy_(src)])
    return 2 * src.numel() / (ms * 1e-3) / 1e12


def load_anchors(suite: str, kind: str, fields: tuple = ("m", "n", "k"), path: Path = ANCHORS) -> dict:
    """anchors.json's rows of `suite` on a card kind, keyed by their values of `fields`."""
    data = json.loads(Path(path).read_text())
    return {tuple(r[f] for f in fields): r for r in data.get(suite, {}).get(kind, [])}


def dense_bytes(m: int, n: int, k: int) -> int:
    return m * k + n * k + m * (k // 128) * 4 + math.ceil(n / 128) * (k // 128) * 4 + m * n * 2


def live_deepgemm():
    """DeepGEMM's module when it imports (a build on the PYTHONPATH: tools/deepgemm_build.sh), else
    None: the suites then take DeepGEMM's numbers from the anchors."""
    try:
        import deep_gemm
    except Exception:  # noqa: BLE001 - not built here, or built for another torch
        return None
    return deep_gemm


def bench_dense_fp8(args) -> dict:
    props = torch.cuda.get_device_properties(0)
    kind = card_kind(props.name)
    anchors = load_anchors("dense_fp8", kind)
    shapes = json.loads(Path(args.shapes).read_text())["dense_fp8"]
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    result = {"suite": "dense_fp8", "card": props.name, "date": time.strftime("%Y-%m-%d"),
              "copy_tbps": round(copy_tbps(), 3), "rows": []}
    deep_gemm = live_deepgemm()
    if deep_gemm is not None:
        result["deepgemm"] = f"live, {getattr(deep_gemm, '__version__', '?')}"
    for shape in shapes:
        m, n, k = shape["m"], shape["n"], shape["k"]
        nbytes = dense_bytes(m, n, k)
        flops = 2 * m * n * k
        num_sets = min(32, max(1, math.ceil(3 * l2 / nbytes)))
        sets, outs, ours_calls = rotating_gemm_calls(m, n, k, num_sets)
        row = {"m": m, "n": n, "k": k}

        a, b, sa, sb = sets[0]
        ours = mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=outs[0])
        reference = fp8_gemm_reference(a, b, sa, sb)
        row["mategemm_diff"] = calc_diff(ours, reference)
        impls = {
            "mategemm": ours_calls,
            "cublas_blockwise": lambda: [peers.cublas_blockwise(*s) for s in sets],
            "cublas_tensorwise": lambda: [peers.cublas_tensorwise(s[0], s[1]) for s in sets],
        }
        if deep_gemm is not None:  # the live anchor: ours and DeepGEMM take turns (the card's clock drifts)
            def deepgemm_calls():
                return [lambda s=s, o=o: deep_gemm.fp8_gemm_nt((s[0], s[2]), (s[1], s[3]), o, disable_ue8m0_cast=True)
                        for s, o in zip(sets, outs)]
            def deepgemm_diff():
                deepgemm_calls()[0]()  # writes outs[0]
                return calc_diff(outs[0], reference)

            record_diff(row, "deepgemm", deepgemm_diff)
            time_interleaved(row, [("mategemm", lambda: ours_calls, None), ("deepgemm", deepgemm_calls, None)],
                             flops, nbytes)
            row["deepgemm_source"] = "live"
            del impls["mategemm"]
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
        if anchor and deep_gemm is None:
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


# Legend names and colours of the series the plots draw (keys: the rows' implementation prefixes).
SERIES = {"mategemm": ("mategemm", "tab:blue"),
          "mategemm_no_clean": ("mategemm, clean_logits=False", "tab:cyan"),
          "mategemm_packed": ("mategemm, token-packed", "tab:blue"),
          "mategemm_padded": ("mategemm, 128-row padding", "tab:cyan"),
          "deepgemm": ("DeepGEMM (anchor)", "tab:orange"),
          "cublas_blockwise": ("cuBLAS blockwise", "tab:green"),
          "cublas_tensorwise": ("cuBLAS per-tensor", "tab:red"),
          "cublas_loop": ("cuBLAS, one call per batch entry", "tab:green"),
          "torch_bmm_bf16": ("torch.bmm, bf16", "tab:purple"),
          "torch_bmm": ("torch.bmm", "tab:purple"),
          "torch_scaled_grouped_rowwise": ("torch._scaled_grouped_mm, row-wise FP8", "tab:purple"),
          "torch_paged_logits": ("torch implementation", "tab:purple")}


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (and a note) where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", flush=True)
        return None
    return plt


def panel(rows: list, label, impls: tuple, metric: str = "tflops", ylabel: str = "TFLOPS", title: str = "",
          ceiling: tuple | None = None, log: bool = False) -> dict:
    """One axes: bars of each impl's `metric` per row, x labels `label(row)`; `ceiling`: (value, label) of
    a dashed line across it; `log`: log y axis."""
    return {"rows": rows, "label": label, "impls": impls, "metric": metric, "ylabel": ylabel, "title": title,
            "ceiling": ceiling, "log": log}


def draw(ax, p: dict) -> dict:
    """Draw panel `p` on `ax`; returns {legend name: handle}."""
    rows, impls = p["rows"], p["impls"]
    width = 0.8 / len(impls)
    handles = {}
    for i, impl in enumerate(impls):
        ys = [r.get(f"{impl}_{p['metric']}", 0) for r in rows]
        name, color = SERIES.get(impl, (impl, None))
        handles[name] = ax.bar([x + (i - (len(impls) - 1) / 2) * width for x in range(len(rows))], ys, width,
                               label=impl, color=color)
    if p["ceiling"]:
        value, name = p["ceiling"]
        handles[name] = ax.axhline(value, color="gray", linestyle="--", label=name)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([p["label"](r) for r in rows], rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylabel(p["ylabel"])
    if p["log"]:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if p["title"]:
        ax.set_title(p["title"], fontsize=10)
    return handles


def plot_panels(result: dict, path: Path, panels: list, cols: int = 1) -> None:
    """`panels` on a grid `cols` wide, under the suite, card and date; one legend per grid row, right of
    its last panel (outside the axes: it covers no bar); saved to `path`."""
    plt = pyplot()
    if plt is None or not panels:
        return
    title = f"{result.get('suite', '')} on {result.get('card', '?')} ({result.get('date', '?')})"
    lines = -(-len(panels) // cols)
    width = max(8.0, max(3.2, 0.4 * max(len(p["rows"]) for p in panels)) * cols + 2)
    if len(panels) == 1:
        fig, ax = plt.subplots(figsize=(width, 5))
        axes, panels = [ax], [{**panels[0], "title": panels[0]["title"] or title}]
    else:
        fig, grid = plt.subplots(lines, cols, figsize=(width, 4.5 * lines), squeeze=False)
        axes = [ax for line in grid for ax in line]
        fig.suptitle(title)
    for line in range(lines):
        handles = {}
        for i in range(line * cols, min(len(panels), (line + 1) * cols)):
            handles.update(draw(axes[i], panels[i]))
        axes[i].legend(list(handles.values()), list(handles), loc="upper left", bbox_to_anchor=(1.01, 1.0),
                       fontsize=8, frameon=False)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"plot: {path}", flush=True)


def plot(result: dict, path: Path, label=lambda r: f"{r['m']}x{r['n']}x{r['k']}",
         impls: tuple = ("mategemm", "deepgemm", "cublas_blockwise", "cublas_tensorwise"), metric: str = "tflops",
         ylabel: str = "TFLOPS", ceiling: tuple | None = None, log: bool = False) -> None:
    """One axes of bars of each implementation's `metric` per row (dense_fp8's TFLOPS by default);
    `ceiling`: (value, label) of a dashed line across the plot."""
    plot_panels(result, path, [panel(result["rows"], label, impls, metric, ylabel, ceiling=ceiling, log=log)])


def dense_panels(result: dict) -> list:
    """dense_fp8: one panel per m, each on its own scale (m = 1 runs ~200x fewer TFLOPS than m = 4096)."""
    impls = ("mategemm", "deepgemm", "cublas_blockwise", "cublas_tensorwise")
    ms = sorted({r["m"] for r in result["rows"]})
    return [panel([r for r in result["rows"] if r["m"] == m], lambda r: f"{r['n']}x{r['k']}", impls,
                  ylabel="TFLOPS" if i == 0 else "", title=f"m = {m}; n x k below")
            for i, m in enumerate(ms)]


def plot_dense(result: dict, path: Path) -> None:
    panels = dense_panels(result)
    plot_panels(result, path, panels, cols=max(1, len(panels)))


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


# ---------------------------------------------------------------- grouped (MoE) suite

GROUPED_MODES = ("contiguous", "masked", "k_grouped", "per_expert", "moe_layer")
# The fields that name a row: anchors.json's keys (mode + these) for the modes DeepGEMM was measured on.
ANCHOR_FIELDS = {"contiguous": ("groups", "m_per_group", "n", "k"), "masked": ("groups", "m_per_group", "n", "k"),
                 "k_grouped": ("groups", "m", "n", "k_per_group")}
ROW_FIELDS = {**ANCHOR_FIELDS, "per_expert": ("tokens_per_expert", "gemm", "n", "k"),
              "moe_layer": ("model", "tokens", "gemm", "n", "k")}
OURS = {"contiguous": "mategemm", "masked": "mategemm", "k_grouped": "mategemm",
        "per_expert": "mategemm_packed", "moe_layer": "mategemm_packed"}
PEERS = {"contiguous": ("deepgemm", "mategemm_packed", "torch_scaled_grouped_rowwise", "torch_grouped_bf16",
                        "mategemm_dense_same_work"),
         "masked": ("deepgemm", "torch_scaled_grouped_rowwise"),
         "k_grouped": ("deepgemm", "mategemm_mn_major"),
         "per_expert": ("mategemm_padded",),
         "moe_layer": ("mategemm_padded", "torch_scaled_grouped_rowwise", "mategemm_dense_same_work")}
RECIPE = (1, 128, 128)
TOKENS_PER_EXPERT = (1, 2, 4, 8, 16, 32)
DECODE_MODEL = "deepseek_v3"
# NOTES: float64 work per row for the calc_diff spot check (~20 ms of DGEMM on an H100/H200); rows
# with more work are checked on a subset of experts (moe.spot_check_experts).
REFERENCE_FLOPS = 1e12


def grouped_anchor_key(row: dict) -> tuple | None:
    """(mode, *shape fields) for a row or an anchor of a mode DeepGEMM was measured on, else None."""
    fields = ANCHOR_FIELDS.get(row.get("mode"))
    return (row["mode"], *(row[f] for f in fields)) if fields else None


def load_grouped_anchors(kind: str, path: Path = ANCHORS) -> dict:
    rows = json.loads(Path(path).read_text()).get("grouped", {}).get(kind, [])
    return {grouped_anchor_key(r): r for r in rows}


def rotation_sets(touched_bytes: int, l2_bytes: int, cap: int = 32) -> int:
    """Input sets to rotate over so the data touched by the timed calls exceeds 3x L2."""
    return min(cap, max(1, math.ceil(3 * l2_bytes / max(touched_bytes, 1))))


def speedup(row: dict, ours: str, peer: str) -> float | None:
    """peer time / our time (> 1: ours is faster), or None if either is missing.

    Against DeepGEMM's anchors the ratio of TFLOPS: its contiguous and k-grouped rows were timed
    on its own random group sizes, so the work differs from ours by a few per cent either way.
    """
    if peer == "deepgemm" and f"{ours}_tflops" in row and f"{peer}_tflops" in row:
        return row[f"{ours}_tflops"] / row[f"{peer}_tflops"]
    if f"{ours}_ms" in row and f"{peer}_ms" in row:
        return row[f"{peer}_ms"] / row[f"{ours}_ms"]
    return None


def add_timing(row: dict, impl: str, ms: float, flops: float, nbytes: float) -> None:
    row[f"{impl}_ms"] = round(ms, 5)
    row[f"{impl}_tflops"] = round(flops / (ms * 1e-3) / 1e12, 1)
    row[f"{impl}_gbps"] = round(nbytes / (ms * 1e-3) / 1e9, 1)


def grouped_summary(rows: list[dict]) -> dict:
    """Geomean and min of ours vs DeepGEMM over the anchored rows (all and per mode); packed vs padded
    per tokens-per-expert; ours vs each peer over the moe_layer rows."""
    summary = {}
    anchored = [(r["mode"], speedup(r, "mategemm", "deepgemm")) for r in rows if r["mode"] in ANCHOR_FIELDS]
    anchored = [(mode, x) for mode, x in anchored if x]
    if anchored:
        values = [x for _, x in anchored]
        summary.update(geomean_vs_deepgemm=round(geomean(values), 4), min_vs_deepgemm=round(min(values), 4),
                       rows_vs_deepgemm=len(values))
        for mode in ANCHOR_FIELDS:
            per_mode = [x for m, x in anchored if m == mode]
            if per_mode:
                summary[f"{mode}_geomean_vs_deepgemm"] = round(geomean(per_mode), 4)
    for tpe in sorted({r["tokens_per_expert"] for r in rows if r["mode"] == "per_expert"}):
        values = [speedup(r, "mategemm_packed", "mategemm_padded") for r in rows
                  if r["mode"] == "per_expert" and r["tokens_per_expert"] == tpe]
        values = [x for x in values if x]
        if values:
            summary[f"packed_vs_padded_tpe{tpe}"] = round(geomean(values), 4)
    for peer in PEERS["moe_layer"]:
        values = [x for x in (speedup(r, "mategemm_packed", peer) for r in rows if r["mode"] == "moe_layer") if x]
        if values:
            summary[f"moe_layer_geomean_vs_{peer}"] = round(geomean(values), 4)
    return summary


class GroupedContext:
    """What the grouped modes share in one run: L2 size, the anchors, expert weights per (E, n, k)."""

    def __init__(self, l2_bytes: int, anchors: dict):
        self.l2 = l2_bytes
        self.anchors = anchors
        self.generator = torch.Generator().manual_seed(0)  # routing and group sizes (CPU)
        self._weights: dict[tuple, list] = {}

    def weights(self, num_experts: int, n: int, k: int, count: int) -> list:
        """`count` independent (b, sfb) expert weight sets; reused across rows of the same shape."""
        sets = self._weights.setdefault((num_experts, n, k), [])
        while len(sets) < count:
            sets.append(moe.make_expert_weights(num_experts, n, k, RECIPE))
        return sets[:count]

    def drop_weights(self) -> None:
        self._weights.clear()
        torch.cuda.empty_cache()


def time_impl(row: dict, impl: str, make_calls, flops: float, nbytes: float) -> None:
    """Time one implementation into `row`; an implementation that fails records `<impl>_error`."""
    try:
        add_timing(row, impl, median_ms(make_calls()), flops, nbytes)
    except Exception as exc:  # noqa: BLE001 - a peer (or ours, while in progress) that cannot run this shape
        row[f"{impl}_error"] = f"{type(exc).__name__}: {str(exc)[:160]}"


def time_interleaved(row: dict, impls: list, flops: float, nbytes: float, rounds: int = 3) -> None:
    """Time implementations [(name, make_calls, nbytes or None)] taking turns, `rounds` times with
    the starting one rotated, and record each one's median over the rounds: under the card's power
    cap the clock drifts within a run, and a fixed order would favour whoever goes first."""
    calls, times = {}, {}
    for impl, make_calls, _ in impls:
        try:
            calls[impl] = make_calls()
        except Exception as exc:  # noqa: BLE001 - as time_impl
            row[f"{impl}_error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
    names = list(calls)
    for r in range(rounds):
        for impl in names[r % len(names):] + names[:r % len(names)] if names else ():
            try:
                times.setdefault(impl, []).append(median_ms(calls[impl]))
            except Exception as exc:  # noqa: BLE001
                row[f"{impl}_error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
                calls.pop(impl)
                names.remove(impl)
                break
    for impl, _, impl_bytes in impls:
        if impl in times and f"{impl}_error" not in row:
            add_timing(row, impl, statistics.median(times[impl]), flops, impl_bytes or nbytes)


def record_diff(row: dict, impl: str, compute) -> None:
    try:
        row[f"{impl}_diff"] = compute()
    except Exception as exc:  # noqa: BLE001
        row[f"{impl}_error"] = f"{type(exc).__name__}: {str(exc)[:160]}"


def weight_bytes(experts: int, n: int, k: int) -> int:
    return experts * (n * k + math.ceil(n / 128) * (k // 128) * 4)


def token_bytes(rows: int, n: int, k: int) -> int:
    """A, its per-token scales and the bf16 output of `rows` rows."""
    return rows * k + rows * (k // 128) * 4 + rows * n * 2


def bench_ragged_m(ctx: GroupedContext, row: dict, counts: list[int], n: int, k: int, impls: dict,
                   dense_m: int | None = None) -> dict:
    """One ragged-M routing timed for the roles in `impls` ({role: impl name}): `padded` (ours,
    per_token, 128-row segments), `packed` (ours, per_expert counts), `torch_scaled` and `torch_bf16`
    (torch's grouped GEMMs on the packed tokens) and `dense` (our dense GEMM on dense_m rows).

    TFLOPS and GB/s count the rows each implementation is given (padding rows too) and the weights
    of the experts with tokens.
    """
    num_experts = len(counts)
    ids, _ = moe.per_token_layout(counts, 128)
    m_padded, m_tokens = ids.numel(), sum(counts)
    live = sum(1 for c in counts if c)
    row.update(m_tokens=m_tokens, m_padded=m_padded, live_experts=live)
    w_bytes = weight_bytes(live, n, k)
    padded_bytes, packed_bytes = token_bytes(m_padded, n, k) + w_bytes, token_bytes(m_tokens, n, k) + w_bytes
    sets = []
    for b, sfb in ctx.weights(num_experts, n, k, rotation_sets(packed_bytes, ctx.l2)):
        a, sfa = moe.make_tokens(m_padded, k)
        sets.append({"a": a, "sfa": sfa, "a_packed": moe.pack_rows(a, ids), "sfa_packed": moe.pack_rows(sfa, ids),
                     "b": b, "sfb": sfb,
                     "out_padded": torch.empty((m_padded, n), dtype=torch.bfloat16, device="cuda"),
                     "out_packed": torch.empty((m_tokens, n), dtype=torch.bfloat16, device="cuda")})
    counts_t, psum = moe.packed_layout(counts)

    def padded(s):
        return lambda: mategemm.ragged_m_moe_gemm_8bit((s["a"], s["sfa"]), (s["b"], s["sfb"]), ids, s["out_padded"],
                                                       gemm_mode="per_token", scale_granularity_mnk=RECIPE,
                                                       alignment_m=128)

    def packed(s):
        return lambda: mategemm.ragged_m_moe_gemm_8bit((s["a_packed"], s["sfa_packed"]), (s["b"], s["sfb"]),
                                                       counts_t, s["out_packed"], gemm_mode="per_expert",
                                                       scale_granularity_mnk=RECIPE)

    # Correctness on the first set: the float64 reference on a spot-check subset of the experts.
    s0 = sets[0]
    experts = moe.spot_check_experts(counts, 2 * n * k, REFERENCE_FLOPS)
    row["diff_experts"] = len(experts)
    ref = moe.ragged_m_reference(s0["a"], s0["sfa"], s0["b"], s0["sfb"], ids, "per_token", RECIPE, experts)
    if "padded" in impls:
        record_diff(row, impls["padded"], lambda: poisoned_diff(padded(s0), s0["out_padded"], ref))
    if "packed" in impls:
        record_diff(row, impls["packed"], lambda: poisoned_diff(packed(s0), s0["out_packed"], moe.pack_rows(ref, ids)))

    flops_padded, flops_packed = 2 * m_padded * n * k, 2 * m_tokens * n * k
    deep_gemm = live_deepgemm() if impls.get("padded") == "mategemm" else None
    if deep_gemm is not None:  # the live anchor on the same padded rows: ours and DeepGEMM take turns
        def deepgemm(s):
            return lambda: deep_gemm.m_grouped_fp8_gemm_nt_contiguous(
                (s["a"], s["sfa"]), (s["b"], s["sfb"]), s["out_padded"], ids, disable_ue8m0_cast=True)

        record_diff(row, "deepgemm", lambda: poisoned_diff(deepgemm(s0), s0["out_padded"], ref))
        time_interleaved(row, [("mategemm", lambda: [padded(s) for s in sets], None),
                               ("deepgemm", lambda: [deepgemm(s) for s in sets], None)], flops_padded, padded_bytes)
    elif "padded" in impls:
        time_impl(row, impls["padded"], lambda: [padded(s) for s in sets], flops_padded, padded_bytes)
    if "packed" in impls:
        time_impl(row, impls["packed"], lambda: [packed(s) for s in sets], flops_packed, packed_bytes)
    if "torch_scaled" in impls:
        time_impl(row, impls["torch_scaled"],
                  lambda: [peers.torch_scaled_grouped_rowwise(s["a_packed"], s["b"], psum) for s in sets],
                  flops_packed, packed_bytes)
    if "torch_bf16" in impls:
        bf16_bytes = 2 * (m_tokens * k + live * n * k + m_tokens * n)
        time_impl(row, impls["torch_bf16"],
                  lambda: [peers.torch_grouped_bf16(s["a_packed"].to(torch.bfloat16), s["b"].to(torch.bfloat16), psum)
                           for s in sets], flops_packed, bf16_bytes)
    if "dense" in impls:
        m = dense_m or m_tokens
        nbytes = dense_bytes(m, n, k)
        time_impl(row, impls["dense"], lambda: rotating_gemm_calls(m, n, k, rotation_sets(nbytes, ctx.l2))[2],
                  2 * m * n * k, nbytes)
    return finish_row(ctx, row)


def poisoned_diff(call, out: torch.Tensor, ref: torch.Tensor) -> float:
    """calc_diff of one call's output against ref over ref's defined rows, the output NaN-filled first."""
    out.fill_(float("nan"))
    call()
    return moe.calc_diff_rows(out.float(), ref)


def bench_contiguous_row(ctx: GroupedContext, shape: dict) -> dict:
    """DeepGEMM's contiguous layout: group sizes 0.7-1.3x m_per_group, each padded to 128 rows; ours
    (per_token ids) counts the padded rows as DeepGEMM does, and so does our dense GEMM of the same work."""
    row = {"mode": "contiguous", **{f: shape[f] for f in ANCHOR_FIELDS["contiguous"]}}
    counts = moe.deepgemm_group_sizes(shape["groups"], shape["m_per_group"], generator=ctx.generator)
    impls = {"padded": "mategemm", "packed": "mategemm_packed", "torch_scaled": "torch_scaled_grouped_rowwise",
             "torch_bf16": "torch_grouped_bf16", "dense": "mategemm_dense_same_work"}
    return bench_ragged_m(ctx, row, counts, shape["n"], shape["k"], impls,
                          dense_m=sum(moe.align(c, 128) for c in counts))


def bench_masked_row(ctx: GroupedContext, shape: dict) -> dict:
    """Every group full (masked_m = expect_tokens = m_per_group), as the anchors were measured."""
    groups, m, n, k = shape["groups"], shape["m_per_group"], shape["n"], shape["k"]
    row = {"mode": "masked", **{f: shape[f] for f in ANCHOR_FIELDS["masked"]}}
    masked_m = torch.full((groups,), m, dtype=torch.int32, device="cuda")
    nbytes = token_bytes(groups * m, n, k) + weight_bytes(groups, n, k)
    sets = []
    for b, sfb in ctx.weights(groups, n, k, rotation_sets(nbytes, ctx.l2)):
        a, sfa = moe.make_tokens(groups * m, k)
        sets.append((a.view(groups, m, k), sfa.view(groups, m, k // 128), b, sfb,
                     torch.empty((groups, m, n), dtype=torch.bfloat16, device="cuda")))

    def ours(s):
        a, sfa, b, sfb, out = s
        return lambda: mategemm.masked_moe_gemm_8bit((a, sfa), (b, sfb), masked_m, out, scale_granularity_mnk=RECIPE,
                                                     expect_tokens=m)

    a, sfa, b, sfb, out = sets[0]
    experts = moe.spot_check_experts([m] * groups, 2 * n * k, REFERENCE_FLOPS)
    row["diff_experts"] = len(experts)
    record_diff(row, "mategemm", lambda: poisoned_diff(
        ours(sets[0]), out, moe.masked_reference(a, sfa, b, sfb, masked_m, RECIPE, experts)))
    flops = 2 * groups * m * n * k  # sum of masked_m
    deep_gemm = live_deepgemm()
    if deep_gemm is not None:  # the live anchor: ours and DeepGEMM take turns
        def deepgemm(s):
            a, sfa, b, sfb, out = s
            return lambda: deep_gemm.m_grouped_fp8_gemm_nt_masked((a, sfa), (b, sfb), out, masked_m, m,
                                                                  disable_ue8m0_cast=True)

        time_interleaved(row, [("mategemm", lambda: [ours(s) for s in sets], None),
                               ("deepgemm", lambda: [deepgemm(s) for s in sets], None)], flops, nbytes)
    else:
        time_impl(row, "mategemm", lambda: [ours(s) for s in sets], flops, nbytes)
    time_impl(row, "torch_scaled_grouped_rowwise",
              lambda: [peers.torch_scaled_grouped_rowwise(s[0], s[2]) for s in sets], flops, nbytes)
    return finish_row(ctx, row)


def bench_k_grouped_row(ctx: GroupedContext, shape: dict) -> dict:
    """Weight-gradient GEMM: K sizes 0.7-1.3x k_per_group aligned to 128 (DeepGEMM's generator); bytes
    count A, B, their scales and the fp32 output read and written (DeepGEMM's count). The output
    accumulates across the timed calls; only the first call on a zeroed output is checked."""
    groups, m, n = shape["groups"], shape["m"], shape["n"]
    row = {"mode": "k_grouped", **{f: shape[f] for f in ANCHOR_FIELDS["k_grouped"]}}
    ks = [moe.align(c, 128) for c in moe.deepgemm_group_sizes(groups, shape["k_per_group"], ctx.generator)]
    sum_k = sum(ks)
    row["k_sum"] = sum_k
    counts = torch.tensor(ks, dtype=torch.int32, device="cuda")
    nbytes = sum_k * (m + n) + (sum_k // 128) * (m + n) * 4 + 2 * groups * m * n * 4
    sets = []
    for _ in range(rotation_sets(nbytes, ctx.l2)):
        a, sfa = moe.make_k_grouped_operand(sum_k, m)
        b, sfb = moe.make_k_grouped_operand(sum_k, n)
        sets.append({"a": a, "sfa": sfa, "b": b, "sfb": sfb, "a_k": moe.k_major(a), "b_k": moe.k_major(b),
                     "out": torch.zeros((groups, m, n), dtype=torch.float32, device="cuda")})

    def call(s, k_major: bool):
        a, b = (s["a_k"], s["b_k"]) if k_major else (s["a"], s["b"])
        return lambda: mategemm.ragged_k_moe_gemm_8bit((a, s["sfa"]), (b, s["sfb"]), counts, s["out"],
                                                       major_a_mode="K" if k_major else "M",
                                                       major_b_mode="K" if k_major else "N",
                                                       scale_granularity_mnk=(1, 1, 128))

    s0 = sets[0]
    experts = moe.spot_check_experts(ks, 2 * m * n, REFERENCE_FLOPS)
    row["diff_experts"] = len(experts)
    ref = moe.ragged_k_reference(s0["a"], s0["sfa"], s0["b"], s0["sfb"], ks, torch.zeros_like(s0["out"]), experts)

    def diff(k_major: bool) -> float:
        s0["out"].zero_()
        call(s0, k_major)()
        return moe.calc_diff_rows(s0["out"], ref)

    record_diff(row, "mategemm", lambda: diff(True))
    record_diff(row, "mategemm_mn_major", lambda: diff(False))
    flops = 2 * m * n * sum_k
    # M/N-major operands: the heuristic's way (here: copied K-major by transpose_8bit first), and
    # transposed in shared memory by the GEMM itself
    time_interleaved(row, [("mategemm", lambda: [call(s, True) for s in sets], None),
                           ("mategemm_mn_major", lambda: [call(s, False) for s in sets], None),
                           ("mategemm_mn_in_kernel", lambda: [forcing(call(s, False), "transpose=1") for s in sets],
                            None)], flops, nbytes)
    return finish_row(ctx, row)


def bench_contiguous(ctx: GroupedContext, shapes: dict) -> list[dict]:
    rows = [bench_contiguous_row(ctx, shape) for shape in shapes["grouped_contiguous_fp8"]]
    ctx.drop_weights()
    return rows


def bench_masked(ctx: GroupedContext, shapes: dict) -> list[dict]:
    rows = [bench_masked_row(ctx, shape) for shape in shapes["grouped_masked_fp8"]]
    ctx.drop_weights()
    return rows


def bench_k_grouped(ctx: GroupedContext, shapes: dict) -> list[dict]:
    return [bench_k_grouped_row(ctx, shape) for shape in shapes["grouped_k_fp8"]]


def bench_per_expert(ctx: GroupedContext, shapes: dict) -> list[dict]:
    """Decode on DeepSeek-V3's experts: about `tokens_per_expert` tokens each (some get none, a few
    more); ours with packed counts vs 128-row padded segments."""
    model = shapes["moe_layers"][DECODE_MODEL]
    experts, topk = model["experts"], model["topk"]
    rows = []
    for tpe in TOKENS_PER_EXPERT:
        num_tokens = max(1, tpe * experts // topk)
        counts = moe.routing_counts(num_tokens, experts, topk, generator=ctx.generator)
        for gemm, n, k in model_gemms(model):
            row = {"mode": "per_expert", "model": DECODE_MODEL, "tokens_per_expert": tpe, "experts": experts,
                   "topk": topk, "num_tokens": num_tokens, "gemm": gemm, "n": n, "k": k}
            rows.append(bench_ragged_m(ctx, row, counts, n, k,
                                       {"packed": "mategemm_packed", "padded": "mategemm_padded"}))
    return rows  # DeepSeek-V3's weights stay cached for moe_layer


def bench_moe_layer(ctx: GroupedContext, shapes: dict) -> list[dict]:
    """Real models' MoE layers at each token count, routed by moe.routing_counts; both GEMMs."""
    impls = {"packed": "mategemm_packed", "padded": "mategemm_padded",
             "torch_scaled": "torch_scaled_grouped_rowwise", "dense": "mategemm_dense_same_work"}
    rows = []
    for name, model in shapes["moe_layers"].items():
        experts, topk = model["experts"], model["topk"]
        for tokens in model["tokens"]:
            counts = moe.routing_counts(tokens, experts, topk, generator=ctx.generator)
            for gemm, n, k in model_gemms(model):
                row = {"mode": "moe_layer", "model": name, "tokens": tokens, "experts": experts, "topk": topk,
                       "gemm": gemm, "n": n, "k": k}
                rows.append(bench_ragged_m(ctx, row, counts, n, k, impls))
        ctx.drop_weights()
    return rows


def model_gemms(model: dict) -> list[tuple[str, int, int]]:
    """(name, n, k) of a MoE layer's two GEMMs: gate+up (n = 2 x intermediate) and down."""
    return [("gemm1", 2 * model["intermediate"], model["hidden"]), ("gemm2", model["hidden"], model["intermediate"])]


def finish_row(ctx: GroupedContext, row: dict) -> dict:
    anchor = ctx.anchors.get(grouped_anchor_key(row))
    if anchor and "deepgemm_ms" not in row:  # timed live, or the anchor
        row.update(deepgemm_tflops=anchor["tflops"], deepgemm_gbps=anchor["gbps"], deepgemm_ms=anchor["ms"])
    print_grouped_row(row)
    return row


# Table labels: what each implementation is, in a few letters.
LABELS = {"mategemm": "ours", "mategemm_packed": "packed", "mategemm_padded": "padded", "deepgemm": "DeepGEMM",
          "torch_scaled_grouped_rowwise": "torch-fp8", "torch_grouped_bf16": "torch-bf16",
          "mategemm_dense_same_work": "dense", "mategemm_mn_major": "MN-major", "mategemm_mn_in_kernel": "MN-in-kernel"}


def cell(row: dict, impl: str, metric: str = "tflops"):
    """A table cell: the row's value of impl's metric, ERR where that impl failed, else '-'."""
    return row.get(f"{impl}_{metric}", "ERR" if f"{impl}_error" in row else "-")


def format_grouped_row(row: dict) -> tuple[str, str]:
    """(header, line) of a row's table: shape fields | ours TF, ms, diff | each peer's TF and peer ms / ours ms."""
    mode = row["mode"]
    ours = OURS[mode]
    widths = {f: max(len(f), 12 if f == "model" else 6) for f in ROW_FIELDS[mode]}
    head = [f"{f:>{w}}" for f, w in widths.items()]
    line = [f"{row.get(f, '-')!s:>{w}}" for f, w in widths.items()]

    diff = row.get(f"{ours}_diff")
    head.append(f"| {LABELS[ours] + ' TF':>9} {'ms':>8} {'diff':>7}")
    line.append(f"| {cell(row, ours):>9} {row.get(f'{ours}_ms', '-'):>8} "
                f"{f'{diff:.1e}' if diff is not None else '-':>7}")
    for peer in PEERS[mode]:
        x = speedup(row, ours, peer)
        width = max(len(LABELS[peer]), 6)
        head.append(f"| {LABELS[peer]:>{width}} {'x':>5}")
        line.append(f"| {cell(row, peer):>{width}} {f'{x:.2f}' if x else '-':>5}")
    return " ".join(head), " ".join(line)


_printed_modes: set = set()


def print_grouped_row(row: dict) -> None:
    head, line = format_grouped_row(row)
    if row["mode"] not in _printed_modes:
        _printed_modes.add(row["mode"])
        print(f"\n== {row['mode']}: TFLOPS; x = peer ms / ours ms (> 1: ours faster)\n{head}", flush=True)
    print(line, flush=True)


GROUPED_BENCHES = {"contiguous": bench_contiguous, "masked": bench_masked, "k_grouped": bench_k_grouped,
                   "per_expert": bench_per_expert, "moe_layer": bench_moe_layer}


def bench_grouped(args) -> dict:
    props = torch.cuda.get_device_properties(0)
    ctx = GroupedContext(getattr(props, "L2_cache_size", 50 << 20), load_grouped_anchors(card_kind(props.name)))
    shapes = json.loads(Path(args.shapes).read_text())
    result = {"suite": "grouped", "card": props.name, "date": time.strftime("%Y-%m-%d"),
              "copy_tbps": round(copy_tbps(), 3), "modes": list(args.modes), "rows": []}
    for mode in GROUPED_MODES:
        if mode in args.modes:
            result["rows"] += GROUPED_BENCHES[mode](ctx, shapes)
    result["summary"] = grouped_summary(result["rows"])
    print(f"\ncard {result['card']}, copy {result['copy_tbps']} TB/s; " +
          ", ".join(f"{k} {v}" for k, v in result["summary"].items()), flush=True)
    return result


def grouped_label(row: dict) -> str:
    mode = row["mode"]
    if mode == "k_grouped":
        return f"k-grouped {row['groups']}x{row['k_per_group']} m{row['m']} n{row['n']}"
    if mode in ANCHOR_FIELDS:
        return f"{mode} {row['groups']}x{row['m_per_group']} n{row['n']} k{row['k']}"
    if mode == "per_expert":
        return f"{row['tokens_per_expert']} per expert, {row['gemm']}"
    return f"{row['model']} {row['tokens']} tok {row['gemm']}"


def grouped_panels(result: dict) -> list:
    """grouped: DeepGEMM's modes in TFLOPS; decode per expert and the models' MoE layers in ms (their
    TFLOPS count padding rows differently, their times compare)."""
    rows = result["rows"]
    shapes = [r for r in rows if r["mode"] in ANCHOR_FIELDS]
    decode = [r for r in rows if r["mode"] == "per_expert"]
    layers = [r for r in rows if r["mode"] == "moe_layer"]
    panels = []
    if shapes:
        panels.append(panel(shapes, grouped_label, ("mategemm", "deepgemm", "torch_scaled_grouped_rowwise"),
                            title="contiguous, masked, k-grouped: TFLOPS (higher is better)"))
    if decode:
        panels.append(panel(decode, grouped_label, ("mategemm_packed", "mategemm_padded"), "ms", "ms",
                            title="DeepSeek-V3 decode, tokens per expert: time (lower is better)"))
    if layers:
        panels.append(panel(layers, grouped_label, ("mategemm_packed", "mategemm_padded",
                                                    "torch_scaled_grouped_rowwise"), "ms", "ms (log scale)",
                            title="MoE layers of real models, by tokens: time (lower is better)", log=True))
    return panels


def plot_grouped(result: dict, path: Path) -> None:
    plot_panels(result, path, grouped_panels(result))


# ---------------------------------------------------------------- bmm suite

BMM_RECIPES = ((-1, -1, -1), (1, -1, -1), (1, 128, 128), (1, 1, 128))
# Each recipe's cuBLAS peer: torch._scaled_mm once per batch entry (torch has no batched FP8 GEMM).
BMM_PEERS = {"-1,-1,-1": "cublas_tensorwise_loop", "1,-1,-1": "cublas_rowwise_loop",
             "1,128,128": "cublas_blockwise_loop", "1,1,128": None}
# dense_fp8's shapes run as batch 1 in this recipe only (ours and its peer): the suite stays short.
BMM_DENSE_RECIPE = (1, 128, 128)
BMM_LABELS = {"cublas_tensorwise_loop": "cuBLAS-tw", "cublas_rowwise_loop": "cuBLAS-rw",
              "cublas_blockwise_loop": "cuBLAS-bw", "torch_bmm_bf16": "bf16-bmm"}
E4M3_MAX = 448.0


def recipe_name(recipe: tuple) -> str:
    return ",".join(str(g) for g in recipe)


def bmm_peer(recipe: str) -> str | None:
    """The cuBLAS loop that runs a recipe ("1,128,128"), or None."""
    return BMM_PEERS[recipe]


def bmm_jobs(shapes: dict) -> list[dict]:
    """The rows of the suite in run order, recipe by recipe: every "bmm" shape in each recipe, then
    dense_fp8's (m, n, k) as batch 1 in BMM_DENSE_RECIPE. `shapes` names the list a row came from."""
    jobs = []
    for recipe in BMM_RECIPES:
        for s in shapes["bmm"]:
            jobs.append({"batch": s["batch"], "m": s["m"], "n": s["n"], "k": s["k"], "recipe": recipe_name(recipe),
                         "shapes": "bmm"})
        if recipe == BMM_DENSE_RECIPE:
            for s in shapes["dense_fp8"]:
                jobs.append({"batch": 1, "m": s["m"], "n": s["n"], "k": s["k"], "recipe": recipe_name(recipe),
                             "shapes": "dense_fp8"})
    return jobs


def parse_recipe(name: str) -> tuple:
    return tuple(int(g) for g in name.split(","))


def operand_granularity(recipe: tuple, side: str) -> tuple[int, int]:
    """(rows, k) that one scale of A ("a") or B ("b") covers under `recipe`; -1: the whole dimension."""
    return (recipe[0], recipe[2]) if side == "a" else (recipe[1], recipe[2])


def _block(granularity: tuple[int, int], rows: int, k: int) -> tuple[int, int]:
    return (rows if granularity[0] == -1 else granularity[0]), (k if granularity[1] == -1 else granularity[1])


def bmm_scale_shape(batch: int, rows: int, k: int, granularity: tuple[int, int]) -> tuple:
    """bmm_fp8's scale shape for one operand: per tensor (batch,), per row (batch, rows), else
    (batch, ceil(rows/g), k/128)."""
    if granularity == (-1, -1):
        return (batch,)
    gr, gk = _block(granularity, rows, k)
    if granularity[1] == -1:
        return (batch, math.ceil(rows / gr))
    return (batch, math.ceil(rows / gr), k // gk)


def bmm_bytes(batch: int, m: int, n: int, k: int, recipe: tuple) -> int:
    """A + B (fp8) + both fp32 scales + the bf16 output."""
    scales = sum(math.prod(bmm_scale_shape(batch, rows, k, operand_granularity(recipe, side)))
                 for rows, side in ((m, "a"), (n, "b")))
    return batch * (m * k + n * k + 2 * m * n) + 4 * scales


def quantise(x: torch.Tensor, granularity: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """x (batch, rows, k) -> (q e4m3 (batch, rows, k), fp32 scale in bmm_scale_shape) with
    x ~= q * scale per (rows, k) block of `granularity` (-1: the whole dimension)."""
    batch, rows, k = x.shape
    gr, gk = _block(granularity, rows, k)
    rows_pad = math.ceil(rows / gr) * gr
    padded = torch.nn.functional.pad(x.float(), (0, 0, 0, rows_pad - rows)) if rows_pad != rows else x.float()
    blocks = padded.view(batch, rows_pad // gr, gr, k // gk, gk)
    scale = blocks.abs().amax(dim=(2, 4)).clamp(min=1e-4) / E4M3_MAX
    q = (blocks / scale[:, :, None, :, None]).to(torch.float8_e4m3fn).view(batch, rows_pad, k)[:, :rows]
    return q.contiguous(), scale.reshape(bmm_scale_shape(batch, rows, k, granularity))


def dequantise(q: torch.Tensor, scale: torch.Tensor, granularity: tuple[int, int],
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """q (batch, rows, k) times its scale (bmm_fp8's form; a per-tensor scale of 1 element serves
    every batch entry), in `dtype`."""
    rows, k = q.shape[1:]
    gr, gk = _block(granularity, rows, k)
    s = scale.to(dtype).reshape(-1, math.ceil(rows / gr), k // gk)
    if gr != rows:
        s = s.repeat_interleave(gr, dim=1)[:, :rows]
    if gk != k:
        s = s.repeat_interleave(gk, dim=2)
    return q.to(dtype) * s


def bmm_reference(a, b, a_scale, b_scale, recipe: tuple, index: int = 0) -> torch.Tensor:
    """float64 (m, n) product of batch entry `index`, dequantised with bmm_fp8's scales for `recipe`."""
    def entry(x, scale, side):
        scale = scale if scale.numel() == 1 else scale[index:index + 1]
        return dequantise(x[index:index + 1], scale, operand_granularity(recipe, side))[0]

    return entry(a, a_scale, "a") @ entry(b, b_scale, "b").t()


def make_bmm_inputs(batch: int, m: int, n: int, k: int, recipe: tuple, device="cuda", generator=None):
    """Fresh random (a, b, a_scale, b_scale) for bmm_fp8 in `recipe`; rows, batch entries and B's K
    columns of different magnitudes, so that a scale applied to the wrong one shows."""
    def rand(*shape):
        return torch.rand(shape, device=device, generator=generator) * 4 + 0.25

    xa = torch.randn((batch, m, k), device=device, generator=generator) * rand(batch, m, 1) * rand(batch, 1, 1)
    xb = torch.randn((batch, n, k), device=device, generator=generator) * rand(batch, n, 1) * rand(batch, 1, k)
    a, sa = quantise(xa, operand_granularity(recipe, "a"))
    b, sb = quantise(xb, operand_granularity(recipe, "b"))
    return a, b, sa, sb


def bmm_diff(call, out: torch.Tensor, ref: torch.Tensor) -> float:
    """calc_diff of batch entry 0 of one call's output against ref, the output NaN-filled first."""
    out.fill_(float("nan"))
    call()
    return calc_diff(out[0], ref)


def forcing(call, force: str):
    """`call` run with MATEGEMM_FORCE_CONFIG=force (e.g. transpose=1): read by every call's memo key."""
    def run():
        os.environ["MATEGEMM_FORCE_CONFIG"] = force
        try:
            return call()
        finally:
            os.environ.pop("MATEGEMM_FORCE_CONFIG", None)
    return run


def called_once(calls: list) -> list:
    """`calls`, each run once: every input set's first (argument-checking) call happens before the timing."""
    for call in calls:
        call()
    return calls


def bench_bmm_row(job: dict, l2_bytes: int) -> dict:
    """One (shape, recipe): ours (bf16 out), the recipe's cuBLAS loop and, for the bmm shapes,
    torch.bmm in bf16 on the dequantised operands, each over the same rotated input sets."""
    row = dict(job)
    batch, m, n, k, recipe = job["batch"], job["m"], job["n"], job["k"], parse_recipe(job["recipe"])
    nbytes, flops = bmm_bytes(batch, m, n, k, recipe), 2 * batch * m * n * k
    sets = [make_bmm_inputs(batch, m, n, k, recipe) for _ in range(rotation_sets(nbytes, l2_bytes))]
    outs = [torch.empty((batch, m, n), dtype=torch.bfloat16, device="cuda") for _ in sets]

    def ours(s, out):
        a, b, sa, sb = s
        return lambda: mategemm.bmm_fp8(a, b, sa, sb, torch.bfloat16, out=out, scale_granularity_mnk=recipe)

    record_diff(row, "mategemm", lambda: bmm_diff(ours(sets[0], outs[0]), outs[0], bmm_reference(*sets[0], recipe)))
    impls = [("mategemm", lambda: called_once([ours(s, o) for s, o in zip(sets, outs)]), None)]
    peer = bmm_peer(job["recipe"])
    if peer:
        make_peer = getattr(peers, peer)
        impls.append((peer, lambda: [make_peer(*s) for s in sets], None))
    if job["shapes"] == "bmm":
        def bf16(s, out):
            a, b, sa, sb = s
            a16 = dequantise(a, sa, operand_granularity(recipe, "a"), torch.float32).to(torch.bfloat16)
            b16 = dequantise(b, sb, operand_granularity(recipe, "b"), torch.float32).to(torch.bfloat16)
            return lambda: torch.bmm(a16, b16.transpose(1, 2), out=out)

        impls.append(("torch_bmm_bf16", lambda: [bf16(s, o) for s, o in zip(sets, outs)],
                      2 * batch * (m * k + n * k + m * n)))

        # M-major A and N-major B: the heuristic's way, then each way forced
        mn_sets = [(a.transpose(1, 2).contiguous(), b.transpose(1, 2).contiguous(), sa, sb) for a, b, sa, sb in sets]

        def mn(s, out, force):
            a, b, sa, sb = s
            return forcing(lambda: mategemm.bmm_fp8(a, b, sa, sb, torch.bfloat16, out=out, scale_granularity_mnk=recipe,
                                                    major_a_mode="M", major_b_mode="N"), force)

        record_diff(row, "mategemm_mn_major", lambda: bmm_diff(mn(mn_sets[0], outs[0], ""), outs[0],
                                                               bmm_reference(*sets[0], recipe)))
        for impl, force in (("mategemm_mn_major", ""), ("mategemm_mn_in_kernel", "transpose=1"),
                            ("mategemm_mn_copied", "transpose=0")):
            impls.append((impl, lambda force=force: called_once([mn(s, o, force) for s, o in zip(mn_sets, outs)]), None))
    time_interleaved(row, impls, flops, nbytes)
    return row


def format_bmm_row(row: dict) -> tuple[str, str]:
    """(header, line) of a row: shape | ours TF, GB/s, ms, diff | cuBLAS loop TF, x | bf16 bmm TF, x."""
    def ratio_text(peer):
        x = speedup(row, "mategemm", peer) if peer else None
        return f"{x:.2f}" if x else "-"

    peer = bmm_peer(row["recipe"])
    diff = row.get("mategemm_diff")
    head = (f"{'batch':>5} {'m':>5} {'n':>6} {'k':>6} | {'ours TF':>8} {'GB/s':>7} {'ms':>8} {'diff':>7} | "
            f"{BMM_LABELS.get(peer, 'cuBLAS'):>9} {'x':>5} | {BMM_LABELS['torch_bmm_bf16']:>8} {'x':>5}")
    line = (f"{row['batch']:>5} {row['m']:>5} {row['n']:>6} {row['k']:>6} | {cell(row, 'mategemm')!s:>8} "
            f"{row.get('mategemm_gbps', '-')!s:>7} {row.get('mategemm_ms', '-')!s:>8} "
            f"{f'{diff:.1e}' if diff is not None else '-':>7} | {cell(row, peer) if peer else '-'!s:>9} "
            f"{ratio_text(peer):>5} | {cell(row, 'torch_bmm_bf16')!s:>8} {ratio_text('torch_bmm_bf16'):>5}")
    return head, line


def bmm_summary(rows: list[dict]) -> dict:
    """Per recipe: geomean, min and count of peer ms / our ms against its cuBLAS loop and against
    torch_bmm_bf16; where a recipe's rows come from more than one shape list, per list too."""
    summary = {}
    for recipe in BMM_RECIPES:
        name = recipe_name(recipe)
        recipe_rows = [r for r in rows if r.get("recipe") == name]
        lists = sorted({r.get("shapes", "bmm") for r in recipe_rows})
        groups = [("", recipe_rows)]
        if len(lists) > 1:
            groups += [(f"{lst}_", [r for r in recipe_rows if r.get("shapes", "bmm") == lst]) for lst in lists]
        entry = {}
        for peer in (bmm_peer(name), "torch_bmm_bf16"):
            for prefix, group in groups if peer else ():
                values = [x for x in (speedup(r, "mategemm", peer) for r in group) if x]
                if values:
                    entry.update({f"{prefix}geomean_vs_{peer}": round(geomean(values), 4),
                                  f"{prefix}min_vs_{peer}": round(min(values), 4),
                                  f"{prefix}rows_vs_{peer}": len(values)})
        if entry:
            summary[name] = entry
    return summary


def bench_bmm_fp16_row(shape: dict, dtype: torch.dtype, l2_bytes: int) -> dict:
    """bmm_fp16 (bf16 out) against torch.bmm (cuBLAS) on the same 16-bit operands."""
    batch, m, n, k = shape["batch"], shape["m"], shape["n"], shape["k"]
    row = {"batch": batch, "m": m, "n": n, "k": k, "operands": str(dtype).split(".")[-1]}
    nbytes, flops = 2 * batch * (m * k + n * k + m * n), 2 * batch * m * n * k
    sets = [(torch.randn((batch, m, k), device="cuda").to(dtype), torch.randn((batch, n, k), device="cuda").to(dtype))
            for _ in range(rotation_sets(nbytes, l2_bytes))]
    outs = [torch.empty((batch, m, n), dtype=dtype, device="cuda") for _ in sets]
    a, b = sets[0]
    got = mategemm.bmm_fp16(a, b, dtype, out=outs[0])
    row["mategemm_diff"] = calc_diff(got[:1], a[:1].double() @ b[:1].double().transpose(1, 2))  # batch entry 0
    time_interleaved(row, [
        ("mategemm", lambda: called_once([lambda a=a, b=b, o=o: mategemm.bmm_fp16(a, b, dtype, out=o)
                                          for (a, b), o in zip(sets, outs)]), None),
        ("torch_bmm", lambda: [lambda a=a, b=b, o=o: torch.bmm(a, b.transpose(1, 2), out=o)
                               for (a, b), o in zip(sets, outs)], None)], flops, nbytes)
    return row


def bench_bmm(args) -> dict:
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    result = {"suite": "bmm", "card": props.name, "date": time.strftime("%Y-%m-%d"),
              "copy_tbps": round(copy_tbps(), 3), "rows": []}
    recipe = None
    for job in bmm_jobs(json.loads(Path(args.shapes).read_text())):
        row = bench_bmm_row(job, l2)
        torch.cuda.empty_cache()
        head, line = format_bmm_row(row)
        if row["recipe"] != recipe:
            recipe = row["recipe"]
            print(f"\n== bmm, recipe ({recipe}): TFLOPS; x = peer ms / ours ms (> 1: ours faster)\n{head}", flush=True)
        print(line, flush=True)
        if "mategemm_mn_major_tflops" in row or "mategemm_mn_major_error" in row:
            cells = [f"{label} {row.get(f'mategemm_{impl}_tflops', 'ERR')}" for impl, label in
                     (("mn_major", "chosen"), ("mn_in_kernel", "in-kernel"), ("mn_copied", "copied first"))]
            print(f"{'':>26}M-major A, N-major B (TF): " + ", ".join(cells), flush=True)
        result["rows"].append(row)
    print("\n== bmm_fp16: TFLOPS; x = torch.bmm ms / ours ms", flush=True)
    fp16_rows = []
    for shape in json.loads(Path(args.shapes).read_text())["bmm"]:
        for dtype in (torch.bfloat16, torch.float16):
            row = bench_bmm_fp16_row(shape, dtype, l2)
            torch.cuda.empty_cache()
            x = speedup(row, "mategemm", "torch_bmm")
            print(f"{row['operands']:>9} {row['batch']:>5} {row['m']:>5} {row['n']:>6} {row['k']:>6} | "
                  f"{row.get('mategemm_tflops', 'ERR')!s:>8} | torch.bmm {row.get('torch_bmm_tflops', 'ERR')!s:>8} | "
                  f"{f'{x:.2f}' if x else '-':>5} | diff {row['mategemm_diff']:.1e}", flush=True)
            fp16_rows.append(row)
    result["rows"] += fp16_rows
    result["summary"] = bmm_summary(result["rows"])
    ratios = [x for x in (speedup(r, "mategemm", "torch_bmm") for r in fp16_rows) if x]
    if ratios:
        result["summary"]["bmm_fp16"] = {"geomean_vs_torch_bmm": round(geomean(ratios), 4),
                                         "min_vs_torch_bmm": round(min(ratios), 4), "rows": len(ratios)}
    print(f"\ncard {result['card']}, copy {result['copy_tbps']} TB/s", flush=True)
    for name, entry in result["summary"].items():
        print(f"({name}): " + ", ".join(f"{k} {v}" for k, v in entry.items()), flush=True)
    return result


BMM_TITLES = {"-1,-1,-1": "per-tensor", "1,-1,-1": "per-row", "1,128,128": "blockwise", "1,1,128": "1x128 blocks"}


def bmm_label(row: dict) -> str:
    """batch x m x n x k; batch x m³ where m = n = k."""
    b, m, n, k = row["batch"], row["m"], row["n"], row["k"]
    return f"{b}x{m}³" if m == n == k else f"{b}x{m}x{n}x{k}"


def bmm_panels(result: dict) -> list:
    """bmm: bmm_fp8 per recipe (log scale where a cuBLAS loop runs: 3-1200 TFLOPS), then bmm_fp16 per
    operand type. The dense shapes as batch 1 are left out (dense_fp8's plot has them)."""
    panels = []
    for recipe in BMM_RECIPES:
        name, peer = recipe_name(recipe), bmm_peer(recipe_name(recipe))
        rows = [dict(r, cublas_loop_tflops=r.get(f"{peer}_tflops", 0)) if peer else r
                for r in result["rows"] if r.get("recipe") == name and r.get("shapes", "bmm") == "bmm"]
        if rows:
            impls = ("mategemm", "cublas_loop", "torch_bmm_bf16") if peer else ("mategemm", "torch_bmm_bf16")
            panels.append(panel(rows, bmm_label, impls, ylabel="TFLOPS (log scale)" if peer else "TFLOPS",
                                title=f"bmm_fp8 ({name}), {BMM_TITLES[name]}", log=bool(peer)))
    for dtype in ("bfloat16", "float16"):
        rows = [r for r in result["rows"] if r.get("operands") == dtype]
        if rows:
            panels.append(panel(rows, bmm_label, ("mategemm", "torch_bmm"), title=f"bmm_fp16, {dtype}"))
    return panels


def plot_bmm(result: dict, path: Path) -> None:
    plot_panels(result, path, bmm_panels(result), cols=4)


# ---------------------------------------------------------------- indexer suite (paged MQA logits)

INDEXER_SHAPE_FIELDS = ("batch", "next_n", "heads", "index_dim", "block_kv", "avg_context")
# anchors.json's "indexer" rows are matched on these (DeepGEMM drew its own context lengths)
INDEXER_FIELDS = ("batch", "next_n", "heads", "avg_context")
INDEXER_PEER = "torch_paged_logits"
# Ours with clean_logits=False: DeepGEMM's paged default, the mode its anchors time (it cannot clean
# with per-token lens), so the DeepGEMM ratio is taken on this one.
INDEXER_AS_DEEPGEMM = "mategemm_no_clean"
# The torch peer holds fp32 keys and scores of every request at once: a row whose estimate
# (torch_peer_bytes) is over this, or over 90 % of the free GPU memory, is not timed for it. The
# correctness check runs the same peer on chunks of requests of at most INDEXER_CHECK_BYTES each.
TORCH_PEER_MAX_BYTES = 60e9
INDEXER_CHECK_BYTES = 8e9
LONG_CONTEXT = 8192  # summary: our GB/s against the copy bandwidth on rows with avg_context >= this


def indexer_context_lens(batch: int, avg_context: int, generator=None) -> list[int]:
    """DeepGEMM's generator: each request's length uniform in [int(0.7 avg), int(1.3 avg))."""
    return torch.randint(int(0.7 * avg_context), int(1.3 * avg_context), (batch,), generator=generator).tolist()


def anchor_tokens(anchor: dict, next_n: int, heads: int, index_dim: int = 128) -> int:
    """sum(len) of the context lengths an anchor row was timed on, from its TFLOPS x ms."""
    return round(anchor["tflops"] * anchor["ms"] * 1e9 / (2 * next_n * heads * index_dim))


def with_total(context_lens: list[int], total: int) -> list[int]:
    """The lengths shifted evenly (the first ones by one more) so that they sum to `total`."""
    shift, extra = divmod(total - sum(context_lens), len(context_lens))
    return [n + shift + (i < extra) for i, n in enumerate(context_lens)]


def indexer_kv_blocks(context_lens: list[int], block_kv: int = 64) -> int:
    """Cache blocks the kernel reads: ceil(len / block_kv) per request."""
    return sum(-(-n // block_kv) for n in context_lens)


def indexer_bytes(context_lens: list[int], next_n: int, heads: int, max_context_len: int, index_dim: int = 128,
                  block_kv: int = 64) -> int:
    """All bytes moved: the cache blocks read (block_kv FP8 keys and their fp32 scales each), q (FP8),
    weights (fp32) and the whole fp32 logits (batch * next_n, max_context_len) written (clean_logits)."""
    rows = len(context_lens) * next_n
    return (indexer_kv_blocks(context_lens, block_kv) * block_kv * (index_dim + 4) + rows * heads * (index_dim + 4)
            + rows * max_context_len * 4)


def indexer_deepgemm_bytes(context_lens: list[int], next_n: int, heads: int, index_dim: int = 128) -> int:
    """Bytes as DeepGEMM's anchors count them (its gbps x ms reproduces this to 1e-5 on every anchor):
    sum(len) keys with their scales, q, weights and sum(len) x next_n fp32 logits."""
    rows, tokens = len(context_lens) * next_n, sum(context_lens)
    return tokens * (index_dim + 4) + rows * heads * (index_dim + 4) + tokens * next_n * 4


def indexer_flops(context_lens: list[int], next_n: int, heads: int, index_dim: int = 128) -> int:
    return 2 * sum(context_lens) * next_n * heads * index_dim


def torch_peer_bytes(batch: int, next_n: int, heads: int, max_context_len: int, index_dim: int = 128,
                     block_kv: int = 64) -> int:
    """Estimated peak GPU memory of one torch_paged_logits call beyond its inputs: the fp32 keys of
    every table block twice (dequantising, then padding), or once beside two fp32 score tensors
    (batch, next_n * heads, max_context_len) (relu, then the weighted heads); plus three logits-sized
    tensors (the head sum, the mask, the masked fill)."""
    keys = batch * math.ceil(max_context_len / block_kv) * block_kv * index_dim * 4
    scores = batch * next_n * heads * max_context_len * 4
    return max(2 * keys, keys + 2 * scores) + 3 * batch * next_n * max_context_len * 4


def peer_skip_reason(need: float, limit: float) -> str | None:
    """Why the torch peer is not timed on a row (its `<impl>_error`), or None when it fits."""
    if need <= limit:
        return None
    return f"skipped: needs ~{need / 1e9:.1f} GB of GPU memory, over the {limit / 1e9:.1f} GB allowed"


def request_chunks(batch: int, bytes_per_request: float, limit: float) -> list[tuple[int, int]]:
    """[start, end) ranges covering the batch in order, each of at most `limit` bytes (one request at least)."""
    step = max(1, int(limit // max(bytes_per_request, 1)))
    return [(b, min(b + step, batch)) for b in range(0, batch, step)]


def paged_args(case: dict, requests: tuple[int, int] | None = None) -> tuple:
    """(q, fused_kv_cache, weights, context_lens, block_table) of a make_paged_case case, or of the
    requests [start, end) of it (the whole cache stays)."""
    q, weights, lens, table = case["q"], case["weights"], case["context_lens"], case["block_table"]
    if requests:
        (b0, b1), next_n = requests, q.shape[1]
        q, weights, lens, table = q[b0:b1], weights[b0 * next_n:b1 * next_n], lens[b0:b1], table[b0:b1]
    return q, case["fused_kv_cache"], weights, lens, table


def chunked_peer_logits(case: dict, limit: float = INDEXER_CHECK_BYTES) -> torch.Tensor:
    """torch_paged_logits (clean_logits) run on chunks of requests of at most `limit` bytes each and
    concatenated: the logits of one call on the whole batch, in bounded memory."""
    batch, next_n, heads, _ = case["q"].shape
    max_len = case["max_context_len"]
    chunks = request_chunks(batch, torch_peer_bytes(1, next_n, heads, max_len), limit)
    return torch.cat([indexer_testing.torch_paged_logits(*paged_args(case, c), max_len, True) for c in chunks])


def indexer_diff(got: torch.Tensor, ref: torch.Tensor, context_lens: torch.Tensor, next_n: int,
                 clean: bool = True) -> float:
    """calc_diff of got against ref over the positions each row sees; with clean, inf if any position
    a row does not see is other than -inf."""
    seen = indexer_testing.visible_mask(context_lens, next_n, got.shape[1]).to(got.device)
    if clean and not bool((got[~seen] == -math.inf).all()):
        return float("inf")
    return calc_diff(got[seen], ref[seen])


def indexer_anchor_key(row: dict) -> tuple:
    return tuple(row[f] for f in INDEXER_FIELDS)


def indexer_ratios(row: dict, copy: float) -> dict:
    """Unrounded: our GB/s over the copy bandwidth (`copy` TB/s, read + write), with and without
    cleaning; our GB/s without cleaning, counted as DeepGEMM counts, over its anchor's; peer ms / our
    ms (clean, as the peer). Only those the row has the numbers for."""
    ratios = {}
    if "mategemm_gbps" in row and copy:
        ratios["mategemm_of_copy"] = row["mategemm_gbps"] / (copy * 1e3)
    if f"{INDEXER_AS_DEEPGEMM}_gbps" in row and copy:  # its bytes as DeepGEMM counts them: a little fewer
        ratios[f"{INDEXER_AS_DEEPGEMM}_of_copy"] = row[f"{INDEXER_AS_DEEPGEMM}_gbps"] / (copy * 1e3)
    if "mategemm_gbps_deepgemm_count" in row and row.get("deepgemm_gbps"):
        ratios["mategemm_vs_deepgemm"] = row["mategemm_gbps_deepgemm_count"] / row["deepgemm_gbps"]
    x = speedup(row, "mategemm", INDEXER_PEER)
    if x:
        ratios[f"speedup_vs_{INDEXER_PEER}"] = x
    return ratios


def finish_indexer_row(row: dict, copy: float, anchor: dict | None) -> dict:
    """Add DeepGEMM's anchor (if any), our GB/s under DeepGEMM's byte count, and the ratios (rounded)."""
    if anchor:
        row.update(deepgemm_tflops=anchor["tflops"], deepgemm_gbps=anchor["gbps"], deepgemm_ms=anchor["ms"])
    if f"{INDEXER_AS_DEEPGEMM}_ms" in row and "deepgemm_bytes" in row:
        ms = row[f"{INDEXER_AS_DEEPGEMM}_ms"]
        row["mategemm_gbps_deepgemm_count"] = round(row["deepgemm_bytes"] / (ms * 1e-3) / 1e9, 1)
    row.update({k: round(v, 4) for k, v in indexer_ratios(row, copy).items()})
    return row


def indexer_summary(rows: list[dict], copy: float, long_context: int = LONG_CONTEXT) -> dict:
    """Geomean and min of our GB/s over DeepGEMM's (anchored rows, DeepGEMM's byte count), of peer ms /
    our ms against the torch peer, and of our GB/s (with and without cleaning) over the copy bandwidth at
    avg_context >= long_context."""
    summary = {}
    long_rows = [r for r in rows if r.get("avg_context", 0) >= long_context]
    groups = (("vs_deepgemm", "mategemm_vs_deepgemm", rows),
              (f"vs_{INDEXER_PEER}", f"speedup_vs_{INDEXER_PEER}", rows),
              (f"of_copy_ctx_ge_{long_context}", "mategemm_of_copy", long_rows),
              (f"no_clean_of_copy_ctx_ge_{long_context}", f"{INDEXER_AS_DEEPGEMM}_of_copy", long_rows))
    for name, key, group in groups:
        values = [x for x in (indexer_ratios(r, copy).get(key) for r in group) if x]
        if values:
            summary.update({f"geomean_{name}": round(geomean(values), 4), f"min_{name}": round(min(values), 4),
                            f"rows_{name}": len(values)})
    return summary


def format_indexer_row(row: dict) -> tuple[str, str]:
    """(header, line) of a row: shape | ours GB/s, TF, ms, diff, of copy | DeepGEMM GB/s, our ms without
    cleaning, x | torch ms, x."""
    def ratio_text(key, digits=2):
        x = row.get(key)
        return f"{x:.{digits}f}" if isinstance(x, (int, float)) else "-"

    diff = row.get("mategemm_diff")
    head = (f"{'batch':>5} {'next_n':>6} {'heads':>5} {'avg_ctx':>7} | {'ours GB/s':>9} {'TF':>6} {'ms':>8} "
            f"{'diff':>7} {'of copy':>7} | {'DeepGEMM':>8} {'unclean':>8} {'x':>5} | {'torch ms':>8} {'x':>6}")
    line = (f"{row['batch']:>5} {row['next_n']:>6} {row['heads']:>5} {row['avg_context']:>7} | "
            f"{cell(row, 'mategemm', 'gbps')!s:>9} {cell(row, 'mategemm')!s:>6} {cell(row, 'mategemm', 'ms')!s:>8} "
            f"{f'{diff:.1e}' if diff is not None else '-':>7} {ratio_text('mategemm_of_copy'):>7} | "
            f"{row.get('deepgemm_gbps', '-')!s:>8} {cell(row, INDEXER_AS_DEEPGEMM, 'ms')!s:>8} "
            f"{ratio_text('mategemm_vs_deepgemm'):>5} | "
            f"{cell(row, INDEXER_PEER, 'ms')!s:>8} {ratio_text(f'speedup_vs_{INDEXER_PEER}', 1):>6}")
    return head, line


def indexer_label(row: dict) -> str:
    return f"b{row['batch']} n{row['next_n']} h{row['heads']} {row['avg_context'] // 1024}k"


def plot_indexer(result: dict, path: Path) -> None:
    plot(result, path, label=indexer_label, impls=("mategemm", INDEXER_AS_DEEPGEMM, "deepgemm", INDEXER_PEER),
         metric="gbps", ylabel="GB/s", ceiling=(result["copy_tbps"] * 1e3, "device copy"))


def bench_indexer_row(shape: dict, l2_bytes: int, lens_generator, data_generator, anchor: dict | None = None) -> dict:
    """One shape: fresh inputs (context lengths 0.7-1.3x avg_context, the same in every rotated set),
    ours with and without clean_logits (its schedule metadata computed once per set, untimed) and the
    torch peer interleaved; ours checked once each against the peer (fp32) on the positions each row
    sees. With a DeepGEMM anchor the lengths are shifted to the sum it was timed on: a draw of 64 lengths
    strays ~2% from its mean, and with it the share of the call's fixed cost in its GB/s."""
    row = {f: shape[f] for f in INDEXER_SHAPE_FIELDS}
    batch, next_n, heads, index_dim, block_kv = (shape[f] for f in INDEXER_SHAPE_FIELDS[:5])
    lens = indexer_context_lens(batch, shape["avg_context"], lens_generator)
    if anchor:
        lens = with_total(lens, anchor_tokens(anchor, next_n, heads, index_dim))

    def make_case():
        return indexer_testing.make_paged_case(batch, next_n, heads, lens, generator=data_generator, device="cuda")

    sets = [make_case()]
    max_len = sets[0]["max_context_len"]
    nbytes = indexer_bytes(lens, next_n, heads, max_len, index_dim, block_kv)
    flops = indexer_flops(lens, next_n, heads, index_dim)
    sets += [make_case() for _ in range(rotation_sets(nbytes, l2_bytes) - 1)]
    row.update(sum_context=sum(lens), sum_context_from_anchor=anchor is not None, max_context_len=max_len,
               kv_blocks=indexer_kv_blocks(lens, block_kv),
               input_sets=len(sets), bytes=nbytes,
               deepgemm_bytes=indexer_deepgemm_bytes(lens, next_n, heads, index_dim))

    def ours(s, clean=True):
        meta = mategemm.get_paged_mqa_logits_metadata(s["context_lens"], block_kv)
        return lambda: mategemm.fp8_paged_mqa_logits(*paged_args(s), meta, s["max_context_len"], clean)

    def peer(s):
        return lambda: indexer_testing.torch_paged_logits(*paged_args(s), s["max_context_len"], True)

    expected = {}  # the peer's logits, made once for both checks (inside them: a failure is recorded)

    def reference():
        if "logits" not in expected:
            expected["logits"] = chunked_peer_logits(sets[0])
        return expected["logits"]

    lens0 = sets[0]["context_lens"]
    record_diff(row, "mategemm", lambda: indexer_diff(ours(sets[0])(), reference(), lens0, next_n))
    record_diff(row, INDEXER_AS_DEEPGEMM, lambda: indexer_diff(ours(sets[0], False)(), reference(), lens0, next_n,
                                                                clean=False))
    expected.clear()
    impls = [("mategemm", lambda: called_once([ours(s) for s in sets]), None),
             (INDEXER_AS_DEEPGEMM, lambda: called_once([ours(s, False) for s in sets]), row["deepgemm_bytes"])]
    torch.cuda.empty_cache()
    limit = min(TORCH_PEER_MAX_BYTES, 0.9 * torch.cuda.mem_get_info()[0])
    skip = peer_skip_reason(torch_peer_bytes(batch, next_n, heads, max_len, index_dim, block_kv), limit)
    if skip:
        row[f"{INDEXER_PEER}_error"] = skip
    else:
        impls.append((INDEXER_PEER, lambda: [peer(s) for s in sets], None))
    time_interleaved(row, impls, flops, nbytes)
    return row


def bench_indexer(args) -> dict:
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    anchors = load_anchors("indexer", card_kind(props.name), INDEXER_FIELDS)
    result = {"suite": "indexer", "card": props.name, "date": time.strftime("%Y-%m-%d"),
              "copy_tbps": round(copy_tbps(), 3), "rows": []}
    lens_generator = torch.Generator().manual_seed(0)
    data_generator = torch.Generator(device="cuda").manual_seed(0)
    for shape in json.loads(Path(args.shapes).read_text())["paged_mqa_logits"]:
        anchor = anchors.get(indexer_anchor_key(shape))
        row = bench_indexer_row(shape, l2, lens_generator, data_generator, anchor)
        torch.cuda.empty_cache()
        finish_indexer_row(row, result["copy_tbps"], anchor)
        head, line = format_indexer_row(row)
        if not result["rows"]:
            print(f"\n== indexer (fp8_paged_mqa_logits, clean_logits): GB/s counts every byte moved; of copy = "
                  f"GB/s / device copy; DeepGEMM x = our GB/s without cleaning (unclean ms: DeepGEMM's default, the "
                  f"mode its anchors time) / its GB/s, both as DeepGEMM counts; torch x = torch ms / ours ms "
                  f"(> 1: ours faster)\n{head}", flush=True)
        print(line, flush=True)
        result["rows"].append(row)
    result["summary"] = indexer_summary(result["rows"], result["copy_tbps"])
    print(f"\ncard {result['card']}, copy {result['copy_tbps']} TB/s; " +
          ", ".join(f"{k} {v}" for k, v in result["summary"].items()), flush=True)
    return result


# ---------------------------------------------------------------- docs: plots and tables from the result files

# ---------------------------------------------------------------- moe_layer suite (mategemm.fused_moe)

MOE_LAYER_TOKENS = (1, 4, 16, 64, 256, 1024, 4096, 16384)
MOE_LAYER_ROUTINGS = ("uniform", "skewed")
MOE_LAYER_CHECKED_TOKENS = 256  # rows up to this many tokens are checked against the float64 reference


def padded_layout(topk_ids: torch.Tensor, experts: int, align: int = 128):
    """DeepGEMM's contiguous layout of the (token, slot) pairs, built with torch ops on the device
    (no host sync): (padded row of each pair, expert id of each padded row (-1 for padding), rows),
    every expert's pairs in token order from a multiple of `align`; rows is the bound a server
    sizes its buffers with, align(pairs + experts x (align - 1))."""
    ids = topk_ids.reshape(-1).long()
    pairs, device = ids.numel(), ids.device
    rows = -(-(pairs + experts * (align - 1)) // align) * align
    counts = torch.zeros(experts, dtype=torch.int64, device=device).scatter_add_(0, ids, torch.ones_like(ids))
    aligned = (counts + align - 1) // align * align
    starts, firsts = torch.cumsum(aligned, 0) - aligned, torch.cumsum(counts, 0) - counts
    order = torch.argsort(ids, stable=True)
    sorted_ids = ids[order]
    dest = starts[sorted_ids] + torch.arange(pairs, device=device) - firsts[sorted_ids]
    row_of_pair = torch.empty_like(dest)
    row_of_pair[order] = dest
    expert_of_row = torch.full((rows,), -1, dtype=torch.int32, device=device)
    expert_of_row[dest] = sorted_ids.to(torch.int32)
    return row_of_pair, expert_of_row, rows


def seed_padded_layer(case: dict, experts: int):
    """The layer as vLLM's DeepGemmExperts builds it around a contiguous grouped GEMM: pairs
    permuted into 128-row padded segments (torch ops), mategemm's per_token GEMMs, torch's silu
    and 1x128 FP8 quantisation, torch's weighted unpermute (bf16 input, silu)."""
    from mategemm.quant import per_token_cast_to_fp8

    x, ids, w = case["hidden_states"], case["topk_ids"], case["topk_weights"]
    tokens, hidden = x.shape
    topk, inter = ids.shape[1], case["w2"].shape[2]

    def run():
        x_q, x_s = per_token_cast_to_fp8(x)
        row_of_pair, expert_of_row, rows = padded_layout(ids, experts)
        token_of_pair = torch.arange(tokens * topk, device=x.device) // topk
        a = torch.zeros((rows, hidden), dtype=x_q.dtype, device=x.device)
        a_s = torch.ones((rows, hidden // 128), dtype=torch.float32, device=x.device)
        a.view(torch.uint8)[row_of_pair] = x_q.view(torch.uint8)[token_of_pair]
        a_s[row_of_pair] = x_s[token_of_pair]
        h = torch.empty((rows, 2 * inter), dtype=torch.bfloat16, device=x.device)
        mategemm.ragged_m_moe_gemm_8bit((a, a_s), (case["w1"], case["w1_scale"]), expert_of_row, h)
        act = torch.nn.functional.silu(h[:, :inter].float()) * h[:, inter:].float()
        q, q_s = per_token_cast_to_fp8(act)
        y = torch.empty((rows, hidden), dtype=torch.bfloat16, device=x.device)
        mategemm.ragged_m_moe_gemm_8bit((q, q_s), (case["w2"], case["w2_scale"]), expert_of_row, y)
        return (y[row_of_pair].view(tokens, topk, hidden).float() * w[..., None]).sum(1).to(torch.bfloat16)
    return run


def torch_bf16_layer(case: dict, w1_bf16: torch.Tensor, w2_bf16: torch.Tensor):
    """The layer in bf16 with torch._grouped_mm on token-packed rows (the weights dequantised once)."""
    x, ids, w = case["hidden_states"], case["topk_ids"], case["topk_weights"]
    tokens, hidden = x.shape
    topk, experts, inter = ids.shape[1], w1_bf16.shape[0], w2_bf16.shape[2]

    def run():
        flat = ids.reshape(-1).long()
        order = torch.argsort(flat, stable=True)
        counts = torch.zeros(experts, dtype=torch.int64, device=x.device).scatter_add_(0, flat, torch.ones_like(flat))
        offs = torch.cumsum(counts, 0).to(torch.int32)
        h = torch._grouped_mm(x[order // topk], w1_bf16.transpose(1, 2), offs=offs, out_dtype=torch.bfloat16)
        act = (torch.nn.functional.silu(h[:, :inter]) * h[:, inter:]).to(torch.bfloat16)
        y = torch._grouped_mm(act, w2_bf16.transpose(1, 2), offs=offs, out_dtype=torch.bfloat16)
        unsorted = torch.empty_like(y)
        unsorted[order] = y
        return (unsorted.view(tokens, topk, hidden).float() * w[..., None]).sum(1).to(torch.bfloat16)
    return run


def dequantised(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """bf16 copy of per-expert FP8 weights with 128x128 block scales."""
    expanded = scale.repeat_interleave(128, dim=1).repeat_interleave(128, dim=2)[:, :w.shape[1], :w.shape[2]]
    return (w.float() * expanded).to(torch.bfloat16)


def bench_moe_layer_row(name: str, model: dict, tokens: int, routing: str, weights: dict) -> dict:
    from mategemm.testing import moe_layer as layer_testing

    experts, topk, hidden, inter = model["experts"], model["topk"], model["hidden"], model["intermediate"]
    gen = torch.Generator(device="cuda").manual_seed(tokens * 2 + (routing == "skewed"))
    case = layer_testing.make_moe_layer_inputs(tokens, hidden, inter, experts, topk, routing=routing,
                                               generator=gen, weights=weights)
    row = {"model": name, "tokens": tokens, "routing": routing, "experts": experts, "topk": topk, "hidden": hidden,
           "intermediate": inter}
    out = torch.empty((tokens, hidden), dtype=torch.bfloat16, device="cuda")
    args = [case[k] for k in ("hidden_states", "w1", "w2", "w1_scale", "w2_scale", "topk_weights", "topk_ids")]

    def ours():
        return mategemm.fused_moe(*args, out=out)

    if tokens <= MOE_LAYER_CHECKED_TOKENS:
        record_diff(row, "mategemm", lambda: calc_diff(ours(), layer_testing.fused_moe_reference(*args)))
    # the two GEMMs alone, on the same packed rows: the rest of the layer's time is its own steps
    counts = torch.tensor(layer_testing.route_counts(case["topk_ids"], experts), dtype=torch.int32, device="cuda")
    pairs = tokens * topk
    a, a_s = moe.make_tokens(pairs, hidden)
    q, q_s = moe.make_tokens(pairs, inter)
    h = torch.empty((pairs, 2 * inter), dtype=torch.bfloat16, device="cuda")
    y = torch.empty((pairs, hidden), dtype=torch.bfloat16, device="cuda")

    def gemms():
        mategemm.ragged_m_moe_gemm_8bit((a, a_s), (case["w1"], case["w1_scale"]), counts, h, gemm_mode="per_expert")
        mategemm.ragged_m_moe_gemm_8bit((q, q_s), (case["w2"], case["w2_scale"]), counts, y, gemm_mode="per_expert")

    flops = 2 * pairs * (2 * inter * hidden + hidden * inter)
    live = sum(1 for c in layer_testing.route_counts(case["topk_ids"], experts) if c)
    nbytes = live * 3 * inter * hidden + tokens * hidden * 4  # the experts' FP8 weights, bf16 in and out
    time_interleaved(row, [("mategemm", lambda: [ours], None), ("mategemm_gemms", lambda: [gemms], None),
                           ("seed_padded", lambda: [seed_padded_layer(case, experts)], None),
                           ("torch_bf16", lambda: [torch_bf16_layer(case, weights["w1_bf16"], weights["w2_bf16"])],
                            None)], flops, nbytes)
    if "mategemm_ms" in row and "mategemm_gemms_ms" in row:
        row["mategemm_outside_gemm_share"] = round(max(0.0, 1 - row["mategemm_gemms_ms"] / row["mategemm_ms"]), 4)
    print(f"{name:>16} {tokens:>6} {routing:>8} | ours {row.get('mategemm_ms', '-'):>9} ms "
          f"({row.get('mategemm_outside_gemm_share', '-')} outside the GEMMs) | seed padded "
          f"{row.get('seed_padded_ms', '-'):>9} | torch bf16 {row.get('torch_bf16_ms', '-'):>9} | diff "
          f"{row.get('mategemm_diff', '-')}", flush=True)
    return row


def moe_layer_summary(rows: list) -> dict:
    """Geomeans of the other's time / ours at M <= 64 (against both peers) and the largest share of
    layer time outside the two GEMMs at M >= 1024."""
    summary = {}
    for peer in ("seed_padded", "torch_bf16"):
        values = [r[f"{peer}_ms"] / r["mategemm_ms"] for r in rows
                  if r["tokens"] <= 64 and f"{peer}_ms" in r and "mategemm_ms" in r]
        if values:
            summary[f"small_m_geomean_vs_{peer}"] = round(geomean(values), 4)
            summary[f"small_m_min_vs_{peer}"] = round(min(values), 4)
    shares = [r["mategemm_outside_gemm_share"] for r in rows
              if r["tokens"] >= 1024 and "mategemm_outside_gemm_share" in r]
    if shares:
        summary["large_m_max_outside_gemm_share"] = max(shares)
    return summary


def bench_moe_layer(args) -> dict:
    from mategemm.testing import moe_layer as layer_testing

    props = torch.cuda.get_device_properties(0)
    models = json.loads(Path(args.shapes).read_text())["moe_layers"]
    result = {"suite": "moe_layer", "card": props.name, "date": time.strftime("%Y-%m-%d"), "rows": []}
    for name, model in models.items():
        weights = layer_testing.make_moe_layer_weights(model["experts"], model["hidden"], model["intermediate"],
                                                       generator=torch.Generator(device="cuda").manual_seed(0))
        weights["w1_bf16"] = dequantised(weights["w1"], weights["w1_scale"])
        weights["w2_bf16"] = dequantised(weights["w2"], weights["w2_scale"])
        for tokens in MOE_LAYER_TOKENS:
            for routing in MOE_LAYER_ROUTINGS:
                result["rows"].append(bench_moe_layer_row(name, model, tokens, routing, weights))
        del weights
        torch.cuda.empty_cache()
    result["summary"] = moe_layer_summary(result["rows"])
    print(f"\ncard {result['card']}; " + ", ".join(f"{k} {v}" for k, v in result["summary"].items()), flush=True)
    return result


# ---------------------------------------------------------------- mxfp8 suite (moe_gemm_mxfp8_nt_groupwise)

MXFP8_DECODE = [{"experts": 32, "tokens_per_expert": t, "n": 4096, "k": 7168} for t in (1, 4, 16, 64)]


def mxfp8_row_inputs(counts: list[int], n: int, k: int, gen) -> dict:
    """Token-packed bf16 rows of the experts and their weights, quantised both ways: MXFP8 at each
    granularity, and FP8 with fp32 scales (1x128 tokens, 128x128 weights) for our ragged path."""
    from mategemm import quant

    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    x = torch.randn((offsets[-1], k), device="cuda", generator=gen).to(torch.bfloat16)
    w = torch.randn((len(counts), n, k), device="cuda", generator=gen).to(torch.bfloat16)
    inputs = {"offsets": offsets, "m_indptr": torch.tensor(offsets, dtype=torch.int32, device="cuda"),
              "x": x, "w": w, "fp8": (quant.per_token_cast_to_fp8(x), moe.make_expert_weights(len(counts), n, k))}
    for gran in (128, 32):
        inputs[gran] = (quant.mxfp8_quantize(x, gran, offsets), quant.mxfp8_quantize(w, gran))
    return inputs


def bench_mxfp8_row(row: dict, counts: list[int]) -> dict:
    from mategemm.testing import mxfp8 as mx_ref

    n, k = row["n"], row["k"]
    inputs = mxfp8_row_inputs(counts, n, k, torch.Generator(device="cuda").manual_seed(sum(counts)))
    cum_m, m_indptr = inputs["offsets"][-1], inputs["m_indptr"]
    out = torch.empty((cum_m, n), dtype=torch.bfloat16, device="cuda")
    psum = m_indptr[1:].contiguous()
    (xa, xsa), (wb, wsb) = inputs["fp8"]

    def mx(gran):
        (qa, sa), (qb, sb) = inputs[gran]
        return lambda: mategemm.moe_gemm_mxfp8_nt_groupwise(qa, qb, sa, sb, m_indptr,
                                                            scale_granularity_mnk=(1, 1, gran), out=out)

    def dequant_bf16():
        (qa, sa), (qb, sb) = inputs[128]
        a16 = mx_ref.mxfp8_dequantize(qa, sa, 128, inputs["offsets"]).to(torch.bfloat16)
        b16 = mx_ref.mxfp8_dequantize(qb, sb, 128).to(torch.bfloat16)
        return lambda: torch._grouped_mm(a16, b16.transpose(1, 2), offs=psum, out_dtype=torch.bfloat16)

    (qa, sa), (qb, sb) = inputs[128]
    record_diff(row, "mategemm_gran128", lambda: calc_diff(
        mx(128)() if cum_m else out, mx_ref.moe_gemm_mxfp8_reference(qa, qb, sa, sb, inputs["offsets"], 128)))
    flops = 2 * cum_m * n * k
    live = sum(1 for c in counts if c)
    nbytes = live * n * k + cum_m * k + cum_m * n * 2
    time_interleaved(row, [
        ("mategemm_gran128", lambda: [mx(128)], None), ("mategemm_gran32", lambda: [mx(32)], None),
        ("mategemm_fp8", lambda: [lambda: mategemm.ragged_m_moe_gemm_8bit((xa, xsa), (wb, wsb), psum, out,
                                                                           gemm_mode="psum_expert")], None),
        ("dequant_bf16", lambda: [dequant_bf16()], None)], flops, nbytes)
    shape = " ".join(f"{f}={row[f]}" for f in row if f in ("mode", "groups", "m_per_group", "experts",
                                                            "tokens_per_expert", "n", "k"))
    print(f"{shape} | " + " | ".join(f"{impl} {row.get(impl + '_tflops', row.get(impl + '_error', '-'))}"
                                      for impl in ("mategemm_gran128", "mategemm_gran32", "mategemm_fp8",
                                                   "dequant_bf16")), flush=True)
    return row


def bench_mxfp8(args) -> dict:
    props = torch.cuda.get_device_properties(0)
    shapes = json.loads(Path(args.shapes).read_text())
    result = {"suite": "mxfp8", "card": props.name, "date": time.strftime("%Y-%m-%d"), "rows": []}
    gen = torch.Generator().manual_seed(0)
    for shape in shapes["grouped_contiguous_fp8"]:
        counts = moe.deepgemm_group_sizes(shape["groups"], shape["m_per_group"], generator=gen)
        row = {"mode": "contiguous", **shape}
        result["rows"].append(bench_mxfp8_row(row, counts))
    for shape in MXFP8_DECODE:
        counts = moe.routing_counts(shape["experts"] * shape["tokens_per_expert"] // 8, shape["experts"], 8,
                                    generator=gen)
        result["rows"].append(bench_mxfp8_row({"mode": "decode", **shape}, counts))
    ratios = [r["mategemm_fp8_ms"] / r["mategemm_gran128_ms"] for r in result["rows"]
              if "mategemm_fp8_ms" in r and "mategemm_gran128_ms" in r]
    result["summary"] = {"gran128_geomean_vs_fp8": round(geomean(ratios), 4)} if ratios else {}
    print(f"\ncard {result['card']}; {result['summary']}", flush=True)
    return result


SUITES = ("dense_fp8", "grouped", "bmm", "indexer", "host")
# Runnable suites with no result file yet: not in the docs or plots until a run writes one.
UNMEASURED_SUITES = ("moe_layer", "mxfp8")
PLOTS = {"dense_fp8": plot_dense, "grouped": plot_grouped, "bmm": plot_bmm, "indexer": plot_indexer}
DOCS = (ROOT / "README.md", ROOT / "docs" / "benchmarks.md")
# A generated block of a document: from <!-- bench:NAME --> to <!-- /bench:NAME -->.
BLOCK = r"(<!-- bench:(\w+) -->\n)(.*?)(<!-- /bench:\2 -->)"


def load_results(directory: Path = ROOT / "docs" / "bench") -> dict:
    """The suites' result files in `directory`, by suite (those present)."""
    paths = {s: Path(directory) / f"{s}.json" for s in SUITES}
    return {s: json.loads(p.read_text()) for s, p in paths.items() if p.exists()}


def redraw(directory: Path, suites: list) -> None:
    """Each suite's plot from its result file, beside it (no GPU needed)."""
    results = load_results(directory)
    for suite in suites:
        PLOTS[suite](results[suite], Path(directory) / f"{suite}.png")


def num(value, digits: int = 1, unit: str = "") -> str:
    return f"{value:.{digits}f}{unit}" if isinstance(value, (int, float)) else "–"


def times(value) -> str:
    return num(value, 2, "x")


def ms_text(value) -> str:
    return f"{value:#.3g}".rstrip(".") if isinstance(value, (int, float)) else "–"


def pct(value) -> str:
    return f"{value:.0%}" if isinstance(value, (int, float)) else "–"


def md_table(head: list, rows: list) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]) + "\n"


def measured(result: dict) -> str:
    copy = f"; device copy bandwidth {result['copy_tbps']} TB/s" if "copy_tbps" in result else ""
    return f"{result['card']}, {result['date']}{copy}; from `docs/bench/{result['suite']}.json`.\n"


def mean_min(summary: dict, name: str, prefix: str = "", show=times) -> str:
    """'geomean (min)' of summary[{prefix}geomean_{name}] and its min, each as `show` writes it."""
    return f"{show(summary.get(f'{prefix}geomean_{name}'))} ({show(summary.get(f'{prefix}min_{name}'))})"


def dense_block(result: dict) -> str:
    rows, summary, copy = result["rows"], result.get("summary", {}), result.get("copy_tbps")

    def count(peer):
        return sum(1 for r in rows if ratio(r, peer))

    def tflops(row, impl):
        return "n/s" if f"{impl}_error" in row else num(row.get(f"{impl}_tflops"))

    diffs = [r["mategemm_diff"] for r in rows if isinstance(r.get("mategemm_diff"), float)]
    head = md_table(["summary", "value"], [
        [f"vs cuBLAS blockwise, geomean (min) of {count('cublas_blockwise')} shapes",
         mean_min(summary, "vs_cublas_blockwise")],
        [f"vs DeepGEMM, geomean (min) of {count('deepgemm')} shapes", mean_min(summary, "vs_deepgemm")],
        ["vs DeepGEMM at m <= 128, geomean", times(summary.get("geomean_vs_deepgemm_m_le_128"))],
        [f"vs cuBLAS per-tensor, geomean (min) of {count('cublas_tensorwise')} shapes",
         mean_min(summary, "vs_cublas_tensorwise")],
        ["largest calc_diff against the float64 reference", f"{max(diffs):.1e}" if diffs else "–"]])
    table = md_table(["m", "n", "k", "TFLOPS", "GB/s", "of copy", "ms", "cuBLAS blockwise TFLOPS",
                      "x cuBLAS blockwise", "DeepGEMM TFLOPS", "x DeepGEMM", "cuBLAS per-tensor TFLOPS",
                      "x cuBLAS per-tensor", "calc_diff"],
                     [[r["m"], r["n"], r["k"], num(r.get("mategemm_tflops")), num(r.get("mategemm_gbps"), 0),
                       f"{r['mategemm_gbps'] / (copy * 1e3):.0%}" if copy and "mategemm_gbps" in r else "–",
                       ms_text(r.get("mategemm_ms")), tflops(r, "cublas_blockwise"),
                       "n/s" if "cublas_blockwise_error" in r else times(ratio(r, "cublas_blockwise")),
                       num(r.get("deepgemm_tflops")), times(ratio(r, "deepgemm")),
                       tflops(r, "cublas_tensorwise"), times(ratio(r, "cublas_tensorwise")),
                       f"{r['mategemm_diff']:.1e}" if "mategemm_diff" in r else "–"] for r in rows])
    return f"{measured(result)}\n{head}\n{table}"


def grouped_block(result: dict) -> str:
    rows, summary = result["rows"], result.get("summary", {})

    def mode(name):
        return [r for r in rows if r["mode"] == name]

    def x(row, ours, peer):
        return times(speedup(row, ours, peer))

    per_mode = ", ".join(f"{m.replace('_', '-')} {times(summary.get(f'{m}_geomean_vs_deepgemm'))}"
                         for m in ANCHOR_FIELDS if f"{m}_geomean_vs_deepgemm" in summary)
    tpe = sorted(int(k[len("packed_vs_padded_tpe"):]) for k in summary if k.startswith("packed_vs_padded_tpe"))
    out = [measured(result), md_table(["summary", "value"], [
        [f"vs DeepGEMM on its {summary.get('rows_vs_deepgemm', 0)} shapes, geomean (min)",
         f"{mean_min(summary, 'vs_deepgemm')}; {per_mode}"],
        ["decode, token-packed vs 128-row padding, by tokens per expert",
         ", ".join(f"{t}: {times(summary[f'packed_vs_padded_tpe{t}'])}" for t in tpe) or "–"],
        ["MoE layers, token-packed vs 128-row padding, geomean",
         times(summary.get("moe_layer_geomean_vs_mategemm_padded"))],
        ["MoE layers, token-packed vs torch._scaled_grouped_mm (row-wise FP8), geomean",
         times(summary.get("moe_layer_geomean_vs_torch_scaled_grouped_rowwise"))],
        ["MoE layers, token-packed vs one dense GEMM of the same rows, geomean",
         times(summary.get("moe_layer_geomean_vs_mategemm_dense_same_work"))]])]
    if mode("contiguous"):
        out.append("**contiguous** (`ragged_m_moe_gemm_8bit`, `per_token`, segments aligned to 128 rows)\n\n" +
                   md_table(["groups x rows", "n", "k", "rows (tokens / padded)", "TFLOPS", "ms", "DeepGEMM TFLOPS",
                             "x DeepGEMM", "x token-packed", "x torch FP8", "x torch bf16", "x dense, same rows"],
                            [[f"{r['groups']} x {r['m_per_group']}", r["n"], r["k"],
                              f"{r['m_tokens']} / {r['m_padded']}", num(r.get("mategemm_tflops")),
                              ms_text(r.get("mategemm_ms")), num(r.get("deepgemm_tflops")),
                              x(r, "mategemm", "deepgemm"), x(r, "mategemm", "mategemm_packed"),
                              x(r, "mategemm", "torch_scaled_grouped_rowwise"), x(r, "mategemm", "torch_grouped_bf16"),
                              x(r, "mategemm", "mategemm_dense_same_work")] for r in mode("contiguous")]))
    if mode("masked"):
        out.append("**masked** (`masked_moe_gemm_8bit`, every group full)\n\n" +
                   md_table(["groups x rows", "n", "k", "TFLOPS", "ms", "DeepGEMM TFLOPS", "x DeepGEMM",
                             "torch FP8 TFLOPS", "x torch FP8"],
                            [[f"{r['groups']} x {r['m_per_group']}", r["n"], r["k"], num(r.get("mategemm_tflops")),
                              ms_text(r.get("mategemm_ms")), num(r.get("deepgemm_tflops")),
                              x(r, "mategemm", "deepgemm"), num(r.get("torch_scaled_grouped_rowwise_tflops")),
                              x(r, "mategemm", "torch_scaled_grouped_rowwise")] for r in mode("masked")]))
    if mode("k_grouped"):
        out.append("**k-grouped** (`ragged_k_moe_gemm_8bit`, weight gradients, fp32 out; K-major operands, "
                   "then the M/N-major layout as the heuristic runs it and transposed in the kernel)\n\n" +
                   md_table(["groups x K", "m", "n", "TFLOPS", "ms", "DeepGEMM TFLOPS", "x DeepGEMM",
                             "M/N-major TFLOPS", "M/N-major in kernel TFLOPS"],
                            [[f"{r['groups']} x {r['k_per_group']}", r["m"], r["n"], num(r.get("mategemm_tflops")),
                              ms_text(r.get("mategemm_ms")), num(r.get("deepgemm_tflops")),
                              x(r, "mategemm", "deepgemm"), num(r.get("mategemm_mn_major_tflops")),
                              num(r.get("mategemm_mn_in_kernel_tflops"))] for r in mode("k_grouped")]))
    if mode("per_expert"):
        out.append("**decode, DeepSeek-V3 experts** (token-packed `per_expert` counts against `per_token` with "
                   "each expert padded to 128 rows)\n\n" +
                   md_table(["tokens per expert", "GEMM", "n", "k", "tokens", "experts with tokens",
                             "token-packed ms", "padded ms", "x padded"],
                            [[r["tokens_per_expert"], r["gemm"], r["n"], r["k"], r["m_tokens"], r["live_experts"],
                              ms_text(r.get("mategemm_packed_ms")), ms_text(r.get("mategemm_padded_ms")),
                              x(r, "mategemm_packed", "mategemm_padded")] for r in mode("per_expert")]))
    if mode("moe_layer"):
        out.append("**MoE layers of real models** (token-packed; x = the other's time / ours)\n\n" +
                   md_table(["model", "tokens", "GEMM", "n", "k", "experts with tokens", "ms", "x padded",
                             "x torch FP8", "x dense, same rows"],
                            [[r["model"], r["tokens"], r["gemm"], r["n"], r["k"], r["live_experts"],
                              ms_text(r.get("mategemm_packed_ms")), x(r, "mategemm_packed", "mategemm_padded"),
                              x(r, "mategemm_packed", "torch_scaled_grouped_rowwise"),
                              x(r, "mategemm_packed", "mategemm_dense_same_work")] for r in mode("moe_layer")]))
    return "\n".join(out)


BMM_PEER_NAMES = {"cublas_tensorwise_loop": "cuBLAS per-tensor", "cublas_rowwise_loop": "cuBLAS row-wise",
                  "cublas_blockwise_loop": "cuBLAS blockwise"}


def bmm_block(result: dict) -> str:
    rows, summary = result["rows"], result.get("summary", {})
    lines = []
    for recipe in BMM_RECIPES:
        name = recipe_name(recipe)
        entry, peer = summary.get(name, {}), bmm_peer(name)
        prefix = "bmm_" if "bmm_geomean_vs_torch_bmm_bf16" in entry else ""
        if peer:
            lines.append([f"({name}) vs {BMM_PEER_NAMES[peer]} once per batch entry, geomean (min)",
                          mean_min(entry, f"vs_{peer}", prefix)])
        lines.append([f"({name}) vs torch.bmm in bf16, geomean (min)", mean_min(entry, "vs_torch_bmm_bf16", prefix)])
    if "bmm_fp16" in summary:
        lines.append(["`bmm_fp16` vs torch.bmm, geomean (min)", mean_min(summary["bmm_fp16"], "vs_torch_bmm")])
    dense = summary.get(recipe_name(BMM_DENSE_RECIPE), {})
    if "dense_fp8_geomean_vs_cublas_blockwise_loop" in dense:
        lines.append([f"dense_fp8's shapes as batch 1 ({recipe_name(BMM_DENSE_RECIPE)}) vs cuBLAS blockwise, "
                      f"geomean (min) of {dense['dense_fp8_rows_vs_cublas_blockwise_loop']}",
                      mean_min(dense, "vs_cublas_blockwise_loop", "dense_fp8_")])

    def x(row, peer):
        return times(speedup(row, "mategemm", peer)) if peer else "–"

    fp8 = [r for r in rows if r.get("shapes") == "bmm"]
    fp16 = [r for r in rows if "operands" in r]
    out = [measured(result), md_table(["summary (x = the other's time / ours)", "value"], lines)]
    if fp8:
        out.append("**`bmm_fp8`** (K-major operands; then M-major A and N-major B: as the heuristic runs them, "
                   "transposed in the kernel, copied K-major first)\n\n" +
                   md_table(["recipe", "batch x m x n x k", "TFLOPS", "ms", "cuBLAS loop TFLOPS", "x cuBLAS loop",
                             "x torch.bmm bf16", "M/N-major TFLOPS", "in kernel", "copied first"],
                            [[f"({r['recipe']})", bmm_label(r), num(r.get("mategemm_tflops")),
                              ms_text(r.get("mategemm_ms")), num(r.get(f"{bmm_peer(r['recipe'])}_tflops")),
                              x(r, bmm_peer(r["recipe"])), x(r, "torch_bmm_bf16"),
                              num(r.get("mategemm_mn_major_tflops")), num(r.get("mategemm_mn_in_kernel_tflops")),
                              num(r.get("mategemm_mn_copied_tflops"))] for r in fp8]))
    if fp16:
        out.append("**`bmm_fp16`**\n\n" +
                   md_table(["operands", "batch x m x n x k", "TFLOPS", "ms", "torch.bmm TFLOPS", "x torch.bmm"],
                            [[r["operands"], bmm_label(r), num(r.get("mategemm_tflops")), ms_text(r.get("mategemm_ms")),
                              num(r.get("torch_bmm_tflops")), x(r, "torch_bmm")] for r in fp16]))
    return "\n".join(out)


def indexer_block(result: dict) -> str:
    rows, summary = result["rows"], result.get("summary", {})
    long = f"at context >= {LONG_CONTEXT}"
    head = md_table(["summary", "value"], [
        [f"GB/s vs DeepGEMM on its {summary.get('rows_vs_deepgemm', 0)} shapes (clean_logits=False, as DeepGEMM), "
         "geomean (min)", mean_min(summary, "vs_deepgemm")],
        [f"of the device copy bandwidth {long}, geomean (min)",
         mean_min(summary, f"of_copy_ctx_ge_{LONG_CONTEXT}", show=pct)],
        [f"the same with clean_logits=False {long}, geomean (min)",
         mean_min(summary, f"no_clean_of_copy_ctx_ge_{LONG_CONTEXT}", show=pct)],
        ["vs the torch implementation, geomean (min)",
         mean_min(summary, f"vs_{INDEXER_PEER}", show=lambda v: num(v, 0, "x"))]])
    table = md_table(["batch", "next_n", "heads", "avg context", "ms", "GB/s", "of copy",
                      "GB/s, clean_logits=False", "DeepGEMM GB/s", "x DeepGEMM", "torch ms", "x torch"],
                     [[r["batch"], r["next_n"], r["heads"], r["avg_context"], ms_text(r.get("mategemm_ms")),
                       num(r.get("mategemm_gbps"), 0),
                       pct(r.get("mategemm_of_copy")),
                       num(r.get("mategemm_gbps_deepgemm_count"), 0), num(r.get("deepgemm_gbps"), 0),
                       times(r.get("mategemm_vs_deepgemm")), ms_text(r.get(f"{INDEXER_PEER}_ms")),
                       num(r.get(f"speedup_vs_{INDEXER_PEER}"), 0, "x")] for r in rows])
    return f"{measured(result)}\n{head}\n{table}"


def host_block(result: dict) -> str:
    cold = result.get("cold_compile_s", {})
    return f"{measured(result)}\n" + md_table(["what", "value"], [
        ["host time per warm call (tight loop, GPU kept busy)", f"{result.get('host_us_per_call', '–')} us"],
        ["first call in a new process, warm disk cache", f"{result.get('first_call_warm_disk_ms', '–')} ms"],
        [f"cold NVRTC compile of the {cold.get('kernels', '?')} kernels dense_fp8's shapes pick (both recipes)",
         f"mean {cold.get('mean', '–')} s, max {cold.get('max', '–')} s, total {cold.get('total', '–')} s"]])


# The dense rows the README shows.
README_DENSE = ((64, 2112, 7168), (64, 7168, 16384), (128, 4096, 7168), (4096, 24576, 1536), (4096, 7168, 16384),
                (4096, 4096, 7168))


def readme_line(suite: str, result: dict | None) -> list:
    if result is None:
        return [suite, "–", "–", f"not measured yet (`python tools/bench.py {suite}`)"]
    s, rows = result.get("summary", {}), result.get("rows", [])
    if suite == "dense_fp8":
        text = (f"{times(s.get('geomean_vs_cublas_blockwise'))} cuBLAS blockwise (geomean of "
                f"{sum(1 for r in rows if ratio(r, 'cublas_blockwise'))} shapes, min "
                f"{times(s.get('min_vs_cublas_blockwise'))}); {times(s.get('geomean_vs_deepgemm'))} DeepGEMM "
                f"(geomean of {sum(1 for r in rows if ratio(r, 'deepgemm'))} shapes, min "
                f"{times(s.get('min_vs_deepgemm'))})")
    elif suite == "grouped":
        tpe = [v for k, v in s.items() if k.startswith("packed_vs_padded_tpe")]
        text = (f"{times(s.get('geomean_vs_deepgemm'))} DeepGEMM (geomean of {s.get('rows_vs_deepgemm', 0)} "
                f"shapes, min {times(s.get('min_vs_deepgemm'))}); decode with token-packed experts "
                f"{num(min(tpe, default=None), 2)}-{times(max(tpe, default=None))} as fast as with 128-row padding; "
                f"MoE layers {times(s.get('moe_layer_geomean_vs_torch_scaled_grouped_rowwise'))} "
                "torch's row-wise `_scaled_grouped_mm`")
    elif suite == "bmm":
        parts = []
        for recipe in BMM_RECIPES[:3]:
            e, peer = s.get(recipe_name(recipe), {}), bmm_peer(recipe_name(recipe))
            prefix = "bmm_" if "bmm_geomean_vs_torch_bmm_bf16" in e else ""
            parts.append((BMM_TITLES[recipe_name(recipe)], e.get(f"{prefix}geomean_vs_{peer}"),
                          e.get(f"{prefix}min_vs_{peer}"), e.get(f"{prefix}rows_vs_{peer}", 0)))
        fp16 = s.get("bmm_fp16", {})
        text = ("`bmm_fp8` against cuBLAS called once per batch entry: " +
                ", ".join(f"{t} {times(g)}" for t, g, _, _ in parts) +
                f" (geomean of {max(n for *_, n in parts)} shapes; min " + ", ".join(times(m) for _, _, m, _ in parts) +
                f"); `bmm_fp16` {times(fp16.get('geomean_vs_torch_bmm'))} `torch.bmm` "
                f"(min {times(fp16.get('min_vs_torch_bmm'))})")
    elif suite == "indexer":
        copy = [r["mategemm_of_copy"] for r in rows if r.get("avg_context", 0) >= LONG_CONTEXT
                and "mategemm_of_copy" in r]
        torch_x = [r[f"speedup_vs_{INDEXER_PEER}"] for r in rows if f"speedup_vs_{INDEXER_PEER}" in r]
        text = (f"{times(s.get('geomean_vs_deepgemm'))} DeepGEMM's GB/s (geomean of {s.get('rows_vs_deepgemm', 0)} "
                f"shapes, min {times(s.get('min_vs_deepgemm'))}); "
                f"{min(copy, default=0) * 100:.0f}-{pct(max(copy, default=0))} of the device copy bandwidth; "
                f"{num(min(torch_x, default=None), 0)}-{num(max(torch_x, default=None), 0, 'x')} "
                "the torch implementation")
    else:
        cold = result.get("cold_compile_s", {})
        text = (f"{result.get('host_us_per_call', '–')} us per warm call; first call in a new process "
                f"{result.get('first_call_warm_disk_ms', '–')} ms; cold compile {cold.get('mean', '–')} s "
                "per kernel")
    return [suite, result["card"], result["date"], text]


def readme_block(results: dict) -> str:
    out = ["x = the other's time / ours (above 1: mategemm is faster); numbers from `docs/bench/*.json`, "
           "written here by `python tools/bench.py docs`.\n",
           md_table(["suite", "card", "date", "mategemm against its peers"],
                    [readme_line(s, results.get(s)) for s in SUITES])]
    dense = results.get("dense_fp8")
    if dense:
        rows = {(r["m"], r["n"], r["k"]): r for r in dense["rows"]}
        out.append(f"Dense FP8 GEMMs of DeepSeek-V3, recipe (1,128,128), bf16 out, TFLOPS ({dense['card']}, "
                   f"{dense['date']}):\n\n" +
                   md_table(["m", "n", "k", "mategemm", "cuBLAS blockwise", "DeepGEMM", "x cuBLAS", "x DeepGEMM"],
                            [[m, n, k, num(r.get("mategemm_tflops"), 0), num(r.get("cublas_blockwise_tflops"), 0),
                              num(r.get("deepgemm_tflops"), 0), times(ratio(r, "cublas_blockwise")),
                              times(ratio(r, "deepgemm"))]
                             for (m, n, k), r in ((key, rows[key]) for key in README_DENSE if key in rows)]))
    return "\n".join(out)


BLOCKS = {"dense_fp8": dense_block, "grouped": grouped_block, "bmm": bmm_block, "indexer": indexer_block,
          "host": host_block}


def render(name: str, results: dict) -> str:
    """The text of generated block `name`: "readme" or a suite's tables."""
    if name == "readme":
        body = readme_block(results)
    elif name in results:
        body = BLOCKS[name](results[name])
    else:
        body = f"No results yet: run `python tools/bench.py {name}` on a GPU.\n"
    return f"\n{body}\n"


def fill(text: str, results: dict) -> str:
    """`text` with every generated block rendered afresh from `results`."""
    import re

    return re.sub(BLOCK, lambda m: m.group(1) + render(m.group(2), results) + m.group(4), text, flags=re.S)


def write_docs(directory: Path, docs: tuple = DOCS) -> None:
    """Rewrite the generated blocks of the README and docs/benchmarks.md from the result files."""
    results = load_results(directory)
    for path in docs:
        text = path.read_text()
        new = fill(text, results)
        if new != text:
            path.write_text(new)
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
              f"{'rewritten' if new != text else 'up to date'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=(*SUITES, *UNMEASURED_SUITES, "plot", "docs"),
                        help="a suite to run on the GPU; or, without a GPU, plot: redraw the plots from the result "
                             "files, docs: rewrite the README's and docs/benchmarks.md's tables from them")
    parser.add_argument("plots", nargs="*", metavar="SUITE", help="plot only: the suites to redraw (default: all)")
    parser.add_argument("--out-dir", default=str(ROOT / "docs" / "bench"))
    parser.add_argument("--shapes", default=str(SHAPES))
    parser.add_argument("--modes", nargs="+", choices=GROUPED_MODES, default=list(GROUPED_MODES),
                        help="grouped suite only: the modes to run (default: all)")
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    if args.plots and (args.suite != "plot" or set(args.plots) - set(PLOTS)):
        parser.error(f"only plot takes suites, one of {', '.join(PLOTS)}")
    if args.suite == "plot":
        redraw(out_dir, args.plots or [s for s in PLOTS if (out_dir / f"{s}.json").exists()])
        return
    if args.suite == "docs":
        write_docs(out_dir)
        return
    from mategemm.runtime.device import require_cuda_gpu
    from mategemm.runtime.errors import NoCudaGpuError
    try:
        require_cuda_gpu(f"tools/bench.py {args.suite}")
    except NoCudaGpuError as error:
        print(error, file=sys.stderr)
        raise SystemExit(2)
    out_dir.mkdir(parents=True, exist_ok=True)
    suites = {"dense_fp8": bench_dense_fp8, "grouped": bench_grouped, "bmm": bench_bmm, "indexer": bench_indexer,
              "host": bench_host, "moe_layer": bench_moe_layer, "mxfp8": bench_mxfp8}
    result = suites[args.suite](args)
    (out_dir / f"{args.suite}.json").write_text(json.dumps(result, indent=1) + "\n")
    if args.suite in PLOTS:
        PLOTS[args.suite](result, out_dir / f"{args.suite}.png")


if __name__ == "__main__":
    main()
