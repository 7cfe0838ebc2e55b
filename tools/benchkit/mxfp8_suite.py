"""The mxfp8 suite: moe_gemm_mxfp8_nt_groupwise against our FP8 ragged path and dequantised bf16 torch._grouped_mm."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

import mategemm
from mategemm.testing import calc_diff, moe

from .common import geomean, record_diff, time_interleaved
from .plots import panel, plot_panels


MXFP8_DECODE = [{"experts": 32, "tokens_per_expert": t, "n": 4096, "k": 7168} for t in (1, 4, 16, 64)]
MXFP8_IMPLS = ("mategemm_gran128", "mategemm_gran32", "mategemm_fp8", "dequant_bf16")


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


def mxfp8_label(row: dict) -> str:
    """groups x rows per group (contiguous) or experts x tokens per expert (decode), then n and k."""
    if row["mode"] == "decode":
        return f"{row['experts']}x{row['tokens_per_expert']} n{row['n']} k{row['k']}"
    return f"{row['groups']}x{row['m_per_group']} n{row['n']} k{row['k']}"


def mxfp8_panels(result: dict) -> list:
    """mxfp8: TFLOPS per shape, contiguous and decode apart (decode on a log scale: 4-370 TFLOPS)."""
    panels = []
    for mode, title, log in (("contiguous", "contiguous: TFLOPS (higher is better)", False),
                             ("decode", "decode: TFLOPS (higher is better)", True)):
        rows = [r for r in result["rows"] if r["mode"] == mode]
        if rows:
            panels.append(panel(rows, mxfp8_label, MXFP8_IMPLS, ylabel="TFLOPS (log scale)" if log else "TFLOPS",
                                title=title, log=log))
    return panels


def plot_mxfp8(result: dict, path: Path) -> None:
    plot_panels(result, path, mxfp8_panels(result), cols=2)


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
