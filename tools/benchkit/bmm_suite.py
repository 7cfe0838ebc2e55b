"""The bmm suite: bmm_fp8 in its four recipes against cuBLAS per batch entry, bmm_fp16 against torch.bmm."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

import mategemm
from mategemm.testing import calc_diff

from . import peers
from .common import (called_once, cell, copy_tbps, forcing, geomean, record_diff, rotation_sets, speedup,
    time_interleaved)
from .plots import panel, plot_panels


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
