"""The grouped suite: MoE GEMMs (contiguous, masked, k-grouped, per-expert decode, real models' layers)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

import mategemm
from mategemm.testing import moe

from . import peers
from .common import (ANCHORS, card_kind, cell, copy_tbps, dense_bytes, forcing, geomean, live_deepgemm,
    mark_live_deepgemm, record_diff, rotation_sets, speedup, time_impl, time_interleaved)
from .plots import panel, plot_panels
from .timing import rotating_gemm_calls


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

    def diff(run) -> float:  # one call on a zeroed output
        s0["out"].zero_()
        run()
        return moe.calc_diff_rows(s0["out"], ref)

    record_diff(row, "mategemm", lambda: diff(call(s0, True)))
    record_diff(row, "mategemm_mn_major", lambda: diff(call(s0, False)))
    flops = 2 * m * n * sum_k
    # M/N-major operands: the heuristic's way (here: copied K-major by transpose_8bit first), and
    # transposed in shared memory by the GEMM itself
    impls = [("mategemm", lambda: [call(s, True) for s in sets], None),
             ("mategemm_mn_major", lambda: [call(s, False) for s in sets], None),
             ("mategemm_mn_in_kernel", lambda: [forcing(call(s, False), "transpose=1") for s in sets], None)]
    deep_gemm = live_deepgemm()
    if deep_gemm is not None:  # the live anchor on the same K sizes and values
        deepgemm = deepgemm_k_grouped(deep_gemm, ks, counts)
        record_diff(row, "deepgemm", lambda: diff(deepgemm(s0)))
        impls.append(("deepgemm", lambda: [deepgemm(s) for s in sets], None))
    time_interleaved(row, impls, flops, nbytes)
    return finish_row(ctx, row)


def deepgemm_k_grouped(deep_gemm, ks: list[int], counts: torch.Tensor):
    """DeepGEMM's SM90 k-grouped GEMM (k_grouped_fp8_gemm_nt_contiguous) on a set's operands: it reads
    each group's K rows K-major one group after another (a flat copy, made with the set's first call),
    its scales as given (MN-major), and adds into the fp32 output like ours."""
    starts = [sum(ks[:g]) for g in range(len(ks))]

    def call(s):
        for x in ("a", "b"):
            if f"flat_{x}" not in s:
                s[f"flat_{x}"] = torch.cat([s[x][p:p + k].t().reshape(-1) for p, k in zip(starts, ks)])
        return lambda: deep_gemm.k_grouped_fp8_gemm_nt_contiguous(
            (s["flat_a"], s["sfa"].t()), (s["flat_b"], s["sfb"].t()), s["out"], ks, counts, s["out"])
    return call


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


def bench_moe_layer_gemms(ctx: GroupedContext, shapes: dict) -> list[dict]:
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
                   "per_expert": bench_per_expert, "moe_layer": bench_moe_layer_gemms}


def bench_grouped(args) -> dict:
    props = torch.cuda.get_device_properties(0)
    ctx = GroupedContext(getattr(props, "L2_cache_size", 50 << 20), load_grouped_anchors(card_kind(props.name)))
    shapes = json.loads(Path(args.shapes).read_text())
    result = {"suite": "grouped", "card": props.name, "date": time.strftime("%Y-%m-%d"),
              "copy_tbps": round(copy_tbps(), 3), "modes": list(args.modes), "rows": []}
    mark_live_deepgemm(result)  # the contiguous, masked and k-grouped rows time it
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
