"""The dense_fp8 suite: gemm_fp8_nt_groupwise against cuBLAS blockwise and DeepGEMM (live, or its anchors)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

import mategemm
from mategemm import plan
from mategemm.testing import calc_diff, fp8_gemm_reference

from . import peers
from .common import (card_kind, copy_tbps, dense_bytes, forcing, geomean, load_anchors, mark_live_deepgemm,
    ratio, record_diff, time_interleaved)
from .plots import panel, plot_panels
from .timing import deepgemm_calls, median_ms, peer_views, rotating_gemm_calls


def bench_dense_fp8(args) -> dict:
    props = torch.cuda.get_device_properties(0)
    kind = card_kind(props.name)
    anchors = load_anchors("dense_fp8", kind)
    shapes = json.loads(Path(args.shapes).read_text())["dense_fp8"]
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    result = {"suite": "dense_fp8", "card": props.name, "date": time.strftime("%Y-%m-%d"),
              "copy_tbps": round(copy_tbps(), 3), "rows": []}
    deep_gemm = mark_live_deepgemm(result)
    # "MN": A's scales stored (k/128, m), the layout DeepGEMM's kernel reads (it transposes K-major
    # ones inside every call); B's stay K-major for cuBLAS and DeepGEMM.
    scale_major = getattr(args, "scale_major", "K")
    result["scale_major"] = scale_major
    # --other-scale-path: ours also with A's scales taken the way the plan did not take them, timed in
    # turns with the rest: by the scale warps where the plan loads them by TMA (as given or copied),
    # else copied MN-major for TMA first.
    if getattr(args, "other_scale_path", False):
        result["mategemm_other_scales"] = "the plan's other choice"
    for shape in shapes:
        m, n, k = shape["m"], shape["n"], shape["k"]
        nbytes = dense_bytes(m, n, k)
        flops = 2 * m * n * k
        num_sets = min(32, max(1, math.ceil(3 * l2 / nbytes)))
        sets, outs, ours_calls = rotating_gemm_calls(m, n, k, num_sets, scale_major)
        row = {"m": m, "n": n, "k": k}
        ours = mategemm.gemm_fp8_nt_groupwise(*sets[0], scale_major_mode=scale_major, out=outs[0])
        sets = peer_views(sets, scale_major)
        reference = fp8_gemm_reference(*sets[0])
        row["mategemm_diff"] = calc_diff(ours, reference)
        impls = {
            "mategemm": ours_calls,
            "cublas_blockwise": lambda: [peers.cublas_blockwise(*s) for s in sets],
            "cublas_tensorwise": lambda: [peers.cublas_tensorwise(s[0], s[1]) for s in sets],
        }
        in_turns = [("mategemm", lambda: ours_calls, None)]
        if "mategemm_other_scales" in result:
            by_tma = scale_major == "MN" or plan.a_scales_copy_pays(m, n, k)
            other_calls = [forcing(call, "tma_scales=0" if by_tma else "tma_scales=2") for call in ours_calls]

            def other_diff():
                other_calls[0]()  # writes outs[0]
                return calc_diff(outs[0], reference)

            record_diff(row, "mategemm_other_scales", other_diff)
            in_turns.append(("mategemm_other_scales", lambda: other_calls, None))
        if deep_gemm is not None:  # the live anchor: ours and DeepGEMM take turns (the card's clock drifts)
            def deepgemm_diff():
                deepgemm_calls(deep_gemm, sets, outs)[0]()  # writes outs[0]
                return calc_diff(outs[0], reference)

            record_diff(row, "deepgemm", deepgemm_diff)
            in_turns.append(("deepgemm", lambda: deepgemm_calls(deep_gemm, sets, outs), None))
            row["deepgemm_source"] = "live"
        if len(in_turns) > 1:
            time_interleaved(row, in_turns, flops, nbytes)
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
          f"{row.get('mategemm_diff', float('nan')):.1e}" +
          (f" | other scale path {fmt('mategemm_other_scales_tflops', 7)}" if "mategemm_other_scales_diff" in row
           else ""), flush=True)


def summarise(result: dict) -> None:
    rows = result["rows"]
    summary = {}
    for peer in ("cublas_blockwise", "deepgemm", "cublas_tensorwise", "mategemm_other_scales"):
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


def dense_panels(result: dict) -> list:
    """dense_fp8: one panel per m, each on its own scale (m = 1 runs ~200x fewer TFLOPS than m = 4096)."""
    impls = tuple(impl for impl in ("mategemm", "mategemm_other_scales", "deepgemm", "cublas_blockwise",
                                    "cublas_tensorwise") if any(f"{impl}_tflops" in r for r in result["rows"]))
    ms = sorted({r["m"] for r in result["rows"]})
    return [panel([r for r in result["rows"] if r["m"] == m], lambda r: f"{r['n']}x{r['k']}", impls,
                  ylabel="TFLOPS" if i == 0 else "", title=f"m = {m}; n x k below")
            for i, m in enumerate(ms)]


def plot_dense(result: dict, path: Path) -> None:
    panels = dense_panels(result)
    plot_panels(result, path, panels, cols=max(1, len(panels)))
