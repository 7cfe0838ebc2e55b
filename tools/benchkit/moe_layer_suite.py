"""The moe_layer suite: mategemm.fused_moe against the 128-row padded pipeline and bf16 torch._grouped_mm."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

import mategemm
from mategemm.testing import calc_diff, moe

from .common import geomean, record_diff, time_interleaved
from .plots import panel, plot_panels


MOE_LAYER_TOKENS = (1, 4, 16, 64, 256, 1024, 4096, 16384)
MOE_LAYER_ROUTINGS = ("uniform", "skewed")
MOE_LAYER_CHECKED_TOKENS = 256  # rows up to this many tokens are checked against the float64 reference
MOE_LAYER_SMALL_TOKENS = 64     # the summary's small-M rows: up to this many tokens
MOE_LAYER_LARGE_TOKENS = 1024   # the summary's large-M rows: from this many tokens
MOE_LAYER_IMPLS = ("mategemm", "seed_padded", "torch_bf16")


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
    """Geomeans of the other's time / ours at M <= MOE_LAYER_SMALL_TOKENS (against both peers) and the
    largest share of layer time outside the two GEMMs at M >= MOE_LAYER_LARGE_TOKENS."""
    summary = {}
    for peer in ("seed_padded", "torch_bf16"):
        values = [r[f"{peer}_ms"] / r["mategemm_ms"] for r in rows
                  if r["tokens"] <= MOE_LAYER_SMALL_TOKENS and f"{peer}_ms" in r and "mategemm_ms" in r]
        if values:
            summary[f"small_m_geomean_vs_{peer}"] = round(geomean(values), 4)
            summary[f"small_m_min_vs_{peer}"] = round(min(values), 4)
    shares = [r["mategemm_outside_gemm_share"] for r in rows
              if r["tokens"] >= MOE_LAYER_LARGE_TOKENS and "mategemm_outside_gemm_share" in r]
    if shares:
        summary["large_m_max_outside_gemm_share"] = max(shares)
    return summary


def moe_layer_label(row: dict) -> str:
    return f"{row['tokens']} {row['routing']}"


def moe_layer_panels(result: dict) -> list:
    """moe_layer: per model, the layer's time by tokens and routing (log scale: 0.04-35 ms) beside
    the share of our layer's time spent outside its two GEMMs."""
    panels = []
    for model in dict.fromkeys(r["model"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["model"] == model]
        panels.append(panel(rows, moe_layer_label, MOE_LAYER_IMPLS, "ms", "ms (log scale)", log=True,
                            title=f"{model}: layer time (lower is better)"))
        panels.append(panel(rows, moe_layer_label, ("mategemm",), "outside_gemm_share",
                            "share of mategemm's layer time", title=f"{model}: share of time outside the GEMMs"))
    return panels


def plot_moe_layer(result: dict, path: Path) -> None:
    plot_panels(result, path, moe_layer_panels(result), cols=2)


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
