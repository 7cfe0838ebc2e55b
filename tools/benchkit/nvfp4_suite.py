"""The nvfp4 suite: mategemm's NVFP4 grouped GEMM on real models' MoE expert shapes ("nvfp4_moe" in
shapes.json: w1 n = 2 x intermediate, k = hidden; w2 n = hidden, k = intermediate; 1-4096 tokens per
active expert), against our FP8 (1,128,128) per_expert GEMM on the same shapes, a pipeline that
dequantises the NVFP4 operands to bf16 and runs torch._grouped_mm, and torch._grouped_mm on bf16
weights dequantised once. The NVFP4 weights' read rate (GB/s of packed values and scales) is
reported beside the device copy bandwidth: at decode sizes the kernel should stream them."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

import mategemm
from mategemm import quant
from mategemm.testing import calc_diff, moe

from . import peers
from .common import copy_tbps, geomean, record_diff, rotation_sets, time_interleaved
from .plots import panel, plot_panels


SUITE = "nvfp4_moe"
ROW_FIELDS = ("model", "gemm", "active_experts", "tokens_per_expert", "n", "k")
IMPLS = ("mategemm_nvfp4", "mategemm_fp8", "dequant_pipeline", "torch_grouped_bf16")
CHECKED_TOKENS = 256  # rows with more tokens per expert skip the float64 check
DECODE_TOKENS = 64    # the decode rows of the summary
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def suite_rows(shapes_path: Path) -> list[dict]:
    """The suite's rows with their model and GEMM names (the shapes file's "_model" comments)."""
    rows = []
    for raw in json.loads(Path(shapes_path).read_text())[SUITE]:
        model, gemm = raw.get("_model", "- -").split()
        rows.append({"model": model, "gemm": gemm, **{f: raw[f] for f in ROW_FIELDS[2:]}})
    return rows


def dequantize_bf16(packed: torch.Tensor, blocked: torch.Tensor, rows: int,
                    factor: torch.Tensor | None = None) -> torch.Tensor:
    """The torch peer's dequantisation: packed e2m1 (..., rows, k/2) with scales in the 128x4 blocked
    layout (..., tiles, k/64, 32, 4, 4) -> bf16 (..., rows, k), exact (each product fits bf16);
    `factor` (...,): one more scale per leading index (the expert scales), then rounded to bf16."""
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=packed.device)
    values = torch.stack((table[(packed & 0x0F).long()], table[(packed >> 4).long()]), dim=-1).flatten(-2)
    *lead, tiles, k_tiles = blocked.shape[:-3]
    scales = blocked.float().permute(*range(len(lead)), len(lead), len(lead) + 3, len(lead) + 2, len(lead) + 1,
                                     len(lead) + 4)  # [t, g, i, c, j]: row t*128 + g*32 + i, column c*4 + j
    scales = scales.reshape(*lead, tiles * 128, k_tiles * 4)[..., :rows, :values.shape[-1] // 16]
    values = values * scales.repeat_interleave(16, dim=-1)
    if factor is not None:
        values = values * factor.float().view(*factor.shape, 1, 1)
    return values.to(torch.bfloat16)


def row_bytes(row: dict) -> dict[str, int]:
    """Bytes each implementation reads and writes (tokens, their scales, the weights of the active
    experts, theirs, the bf16 output); `weights` the NVFP4 weights alone."""
    groups, tokens, n, k = row["active_experts"], row["tokens_per_expert"], row["n"], row["k"]
    m, out = groups * tokens, groups * tokens * n * 2
    weights = groups * n * k // 2 + groups * n * k // 16
    nvfp4 = m * k // 2 + m * k // 16 + weights + out
    fp8 = m * k + m * (k // 128) * 4 + groups * (n * k + -(-n // 128) * (k // 128) * 4) + out
    bf16 = 2 * (m * k + groups * n * k) + out
    return {"weights": weights, "mategemm_nvfp4": nvfp4, "dequant_pipeline": nvfp4, "mategemm_fp8": fp8,
            "torch_grouped_bf16": bf16}


def make_set(row: dict, gen: torch.Generator) -> dict:
    """One input set: bf16 tokens and weights quantised to NVFP4 (with the expert scales that undo
    the global scales), FP8 operands of the same shapes, and the bf16 weights for torch."""
    groups, tokens, n, k = row["active_experts"], row["tokens_per_expert"], row["n"], row["k"]
    m = groups * tokens
    offsets = list(range(0, m + 1, tokens))
    x = torch.randn((m, k), device="cuda", generator=gen, dtype=torch.bfloat16)
    w = torch.randn((groups, n, k), device="cuda", generator=gen, dtype=torch.bfloat16)
    gs_a = 448 * 6 / x.float().abs().max()
    gs_b = 448 * 6 / w.float().abs().amax(dim=(1, 2))
    a, a_scales, starts = quant.nvfp4_quantize(x, gs_a, offsets)
    b, b_scales = quant.nvfp4_quantize(w, gs_b)
    del x, w
    s = {"a": a, "a_scales": a_scales, "b": b, "b_scales": b_scales, "group_scale_offsets": starts,
         "offsets": torch.tensor(offsets, dtype=torch.int32, device="cuda"),
         "expert_ids": torch.arange(groups, dtype=torch.int32, device="cuda"),
         "expert_scales": (1.0 / (gs_a * gs_b)).float(),
         "counts": torch.full((groups,), tokens, dtype=torch.int32, device="cuda"),
         "fp8_a": moe.make_tokens(m, k, generator=gen) if k % 128 == 0 else None,
         "fp8_b": moe.make_expert_weights(groups, n, k, generator=gen) if k % 128 == 0 else None,
         "out": torch.empty((m, n), dtype=torch.bfloat16, device="cuda")}
    s["b16"] = dequantize_bf16(b, b_scales, n, s["expert_scales"])
    return s


def nvfp4_call(s: dict, groups: int):
    """Our NVFP4 GEMM on input set `s` (make_set) of `groups` experts."""
    return lambda: mategemm.grouped_matmul_dynamic_scaled_nvfp4(
        s["out"], s["a"], s["b"], s["a_scales"], s["b_scales"], s["offsets"], s["group_scale_offsets"],
        s["expert_ids"], s["expert_scales"], groups)


def fp8_call(s: dict):
    """Our FP8 (1,128,128) per_expert GEMM on input set `s`'s FP8 operands of the same shapes."""
    return lambda: mategemm.ragged_m_moe_gemm_8bit(s["fp8_a"], s["fp8_b"], s["counts"], s["out"],
                                                   gemm_mode="per_expert", scale_granularity_mnk=(1, 128, 128))


def tokens_bf16(s: dict, row: dict) -> torch.Tensor:
    """Input set `s`'s NVFP4 tokens in bf16 (every group's rows start a new 128-row scale tile: as many
    tiles each)."""
    groups, tokens, k = row["active_experts"], row["tokens_per_expert"], row["k"]
    return dequantize_bf16(s["a"].view(groups, tokens, k // 2),
                           s["a_scales"].view(groups, -1, *s["a_scales"].shape[1:]), tokens).view(groups * tokens, k)


def bench_nvfp4_row(row: dict, l2_bytes: int) -> dict:
    groups, tokens, n, k = row["active_experts"], row["tokens_per_expert"], row["n"], row["k"]
    m = groups * tokens
    nbytes = row_bytes(row)
    gen = torch.Generator(device="cuda").manual_seed(tokens * 7 + n + k)
    sets = [make_set(row, gen) for _ in range(rotation_sets(nbytes["mategemm_nvfp4"], l2_bytes))]

    def pipeline(s):
        def run():
            b16 = dequantize_bf16(s["b"], s["b_scales"], n, s["expert_scales"])
            return peers.torch_grouped_bf16(tokens_bf16(s, row), b16, s["offsets"][1:])()
        return run

    def bf16(s):
        return peers.torch_grouped_bf16(tokens_bf16(s, row), s["b16"], s["offsets"][1:])

    if tokens <= CHECKED_TOKENS:
        from mategemm.testing import nvfp4 as ref

        s0 = sets[0]

        def diff():
            nvfp4_call(s0, groups)()
            want = ref.grouped_nvfp4_reference(s0["a"], s0["b"], s0["a_scales"], s0["b_scales"],
                                               list(range(0, m + 1, tokens)), s0["group_scale_offsets"].tolist(),
                                               list(range(groups)), s0["expert_scales"])
            return calc_diff(s0["out"], want)

        record_diff(row, "mategemm_nvfp4", diff)
    impls = [("mategemm_nvfp4", lambda: [nvfp4_call(s, groups) for s in sets], nbytes["mategemm_nvfp4"]),
             ("dequant_pipeline", lambda: [pipeline(s) for s in sets], nbytes["dequant_pipeline"]),
             ("torch_grouped_bf16", lambda: [bf16(s) for s in sets], nbytes["torch_grouped_bf16"])]
    if k % 128 == 0:  # the FP8 recipe's K blocks
        impls.insert(1, ("mategemm_fp8", lambda: [fp8_call(s) for s in sets], nbytes["mategemm_fp8"]))
    time_interleaved(row, impls, 2 * m * n * k, nbytes["mategemm_nvfp4"])
    if "mategemm_nvfp4_ms" in row:
        row["mategemm_nvfp4_weight_gbps"] = round(nbytes["weights"] / (row["mategemm_nvfp4_ms"] * 1e-3) / 1e9, 1)
    shape = " ".join(f"{row[f]}" for f in ROW_FIELDS)
    times = " | ".join(f"{impl} {row.get(impl + '_ms', row.get(impl + '_error', '-'))} ms" for impl in IMPLS)
    print(f"{shape} | {times} | weights {row.get('mategemm_nvfp4_weight_gbps', '-')} GB/s | diff "
          f"{row.get('mategemm_nvfp4_diff', '-')}", flush=True)
    return row


def nvfp4_summary(rows: list[dict], copy_rate_tbps: float) -> dict:
    """Geomeans of each peer's time / ours at decode sizes (<= DECODE_TOKENS tokens per expert) and
    over all rows; the NVFP4 weights' best and median read rate at decode sizes, also as a share of
    the copy bandwidth (read + write bytes, as measured)."""
    summary = {}
    for peer in IMPLS[1:]:
        for label, chosen in (("decode", [r for r in rows if r["tokens_per_expert"] <= DECODE_TOKENS]), ("all", rows)):
            values = [r[f"{peer}_ms"] / r["mategemm_nvfp4_ms"] for r in chosen
                      if f"{peer}_ms" in r and "mategemm_nvfp4_ms" in r]
            if values:
                summary[f"{label}_geomean_vs_{peer}"] = round(geomean(values), 4)
    rates = sorted(r["mategemm_nvfp4_weight_gbps"] for r in rows
                   if r["tokens_per_expert"] <= DECODE_TOKENS and "mategemm_nvfp4_weight_gbps" in r)
    if rates:
        summary.update(decode_weight_gbps_max=rates[-1], decode_weight_gbps_median=rates[len(rates) // 2])
        if copy_rate_tbps:
            summary["decode_weight_share_of_copy_max"] = round(rates[-1] / (copy_rate_tbps * 1e3), 4)
    return summary


def nvfp4_label(row: dict) -> str:
    return f"{row['gemm']}, {row['tokens_per_expert']}/expert"


def nvfp4_panels(result: dict) -> list:
    """nvfp4: per model, the time of each implementation by GEMM and tokens per expert (log scale: the
    per-call dequantisation is 2-50x slower), beside the NVFP4 weights' GB/s under the copy bandwidth."""
    panels, copy = [], ((result["copy_tbps"] * 1e3, "device copy") if "copy_tbps" in result else None)
    for model in dict.fromkeys(r["model"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["model"] == model]
        panels.append(panel(rows, nvfp4_label, IMPLS, "ms", "ms (log scale)", log=True,
                            title=f"{model}: time (lower is better)"))
        panels.append(panel(rows, nvfp4_label, ("mategemm_nvfp4",), "weight_gbps", "GB/s of weights + scales",
                            title=f"{model}: NVFP4 weights read", ceiling=copy))
    return panels


def plot_nvfp4(result: dict, path: Path) -> None:
    plot_panels(result, path, nvfp4_panels(result), cols=2)


def bench_nvfp4(args) -> dict:
    props = torch.cuda.get_device_properties(0)
    rate = copy_tbps()
    result = {"suite": "nvfp4", "card": props.name, "date": time.strftime("%Y-%m-%d"), "copy_tbps": round(rate, 3),
              "rows": []}
    l2_bytes = getattr(props, "L2_cache_size", 50 * 1024 * 1024)
    for row in suite_rows(args.shapes):
        result["rows"].append(bench_nvfp4_row(row, l2_bytes))
        torch.cuda.empty_cache()  # the next shape's sets, up to ~20 GB at 4096 tokens per expert
    result["summary"] = nvfp4_summary(result["rows"], rate)
    print(f"\ncard {result['card']}, copy {rate:.2f} TB/s; " +
          ", ".join(f"{k} {v}" for k, v in result["summary"].items()), flush=True)
    return result
