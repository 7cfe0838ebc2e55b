"""The generated tables of the README and docs/benchmarks.md, rendered from docs/bench/*.json."""
from __future__ import annotations

import json
from pathlib import Path

from .bmm_suite import BMM_DENSE_RECIPE, BMM_RECIPES, BMM_TITLES, bmm_label, bmm_peer, recipe_name
from .common import ROOT, geomean, ms_text, num, pct, ratio, speedup, times
from .grouped_suite import ANCHOR_FIELDS
from .indexer_suite import INDEXER_PEER, LONG_CONTEXT
from .moe_layer_suite import MOE_LAYER_CHECKED_TOKENS, MOE_LAYER_LARGE_TOKENS, MOE_LAYER_SMALL_TOKENS
from .mxfp8_suite import mxfp8_label
from .nvfp4_suite import CHECKED_TOKENS as NVFP4_CHECKED_TOKENS, DECODE_TOKENS
from .registry import PLOTS, SUITES


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


def md_table(head: list, rows: list) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]) + "\n"


def measured(result: dict) -> str:
    copy = f"; device copy bandwidth {result['copy_tbps']} TB/s" if "copy_tbps" in result else ""
    return f"{result['card']}, {result['date']}{copy}; from `docs/bench/{result['suite']}.json`.\n"


def mean_min(summary: dict, name: str, prefix: str = "", show=times) -> str:
    """'geomean (min)' of summary[{prefix}geomean_{name}] and its min, each as `show` writes it."""
    return f"{show(summary.get(f'{prefix}geomean_{name}'))} ({show(summary.get(f'{prefix}min_{name}'))})"


def speedups(rows: list, ours: str, peer: str) -> list:
    """The other's time / ours on each row that times both."""
    return [v for v in (speedup(r, ours, peer) for r in rows) if v is not None]


def rows_geomean(rows: list, ours: str, peer: str) -> float | None:
    values = speedups(rows, ours, peer)
    return geomean(values) if values else None


def rows_mean_min(rows: list, ours: str, peer: str) -> str:
    """'geomean (min)' of the other's time / ours over `rows`."""
    values = speedups(rows, ours, peer)
    return f"{times(geomean(values))} ({times(min(values))})" if values else "–"


def largest_diff(rows: list, impl: str) -> str:
    diffs = [r[f"{impl}_diff"] for r in rows if isinstance(r.get(f"{impl}_diff"), float)]
    return f"{max(diffs):.1e}" if diffs else "–"


def dense_block(result: dict) -> str:
    rows, summary, copy = result["rows"], result.get("summary", {}), result.get("copy_tbps")

    def count(peer):
        return sum(1 for r in rows if ratio(r, peer))

    def tflops(row, impl):
        return "n/s" if f"{impl}_error" in row else num(row.get(f"{impl}_tflops"))

    head = md_table(["summary", "value"], [
        [f"vs cuBLAS blockwise, geomean (min) of {count('cublas_blockwise')} shapes",
         mean_min(summary, "vs_cublas_blockwise")],
        [f"vs DeepGEMM, geomean (min) of {count('deepgemm')} shapes", mean_min(summary, "vs_deepgemm")],
        ["vs DeepGEMM at m <= 128, geomean", times(summary.get("geomean_vs_deepgemm_m_le_128"))],
        [f"vs cuBLAS per-tensor, geomean (min) of {count('cublas_tensorwise')} shapes",
         mean_min(summary, "vs_cublas_tensorwise")],
        ["largest calc_diff against the float64 reference", largest_diff(rows, "mategemm")]])
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


def outside_gemms_peak(rows: list) -> str:
    """The largest share of layer time outside the two GEMMs and the row it was measured on."""
    peak = max((r for r in rows if "mategemm_outside_gemm_share" in r),
               key=lambda r: r["mategemm_outside_gemm_share"], default=None)
    return (f"{pct(peak['mategemm_outside_gemm_share'])} ({peak['model']}, {peak['tokens']} tokens, "
            f"{peak['routing']} routing)" if peak else "–")


def moe_layer_block(result: dict) -> str:
    rows, summary = result["rows"], result.get("summary", {})
    small, large = f"at <= {MOE_LAYER_SMALL_TOKENS} tokens", f"at >= {MOE_LAYER_LARGE_TOKENS} tokens"
    head = md_table(["summary (x = the other's time / ours)", "value"], [
        [f"vs the 128-row padded pipeline {small}, geomean (min)", mean_min(summary, "vs_seed_padded", "small_m_")],
        [f"vs the 128-row padded pipeline, all {len(rows)} rows, geomean (min)",
         rows_mean_min(rows, "mategemm", "seed_padded")],
        [f"vs the bf16 torch._grouped_mm layer {small}, geomean (min)", mean_min(summary, "vs_torch_bf16", "small_m_")],
        [f"vs the bf16 torch._grouped_mm layer, all {len(rows)} rows, geomean (min)",
         rows_mean_min(rows, "mategemm", "torch_bf16")],
        [f"largest share of our layer time outside the two GEMMs {large}",
         outside_gemms_peak([r for r in rows if r["tokens"] >= MOE_LAYER_LARGE_TOKENS])],
        [f"largest calc_diff against the float64 reference (up to {MOE_LAYER_CHECKED_TOKENS} tokens)",
         largest_diff(rows, "mategemm")]])
    table = md_table(["model", "tokens", "routing", "ms", "GEMMs ms", "outside the GEMMs", "padded ms", "x padded",
                      "torch bf16 ms", "x torch bf16"],
                     [[r["model"], r["tokens"], r["routing"], ms_text(r.get("mategemm_ms")),
                       ms_text(r.get("mategemm_gemms_ms")), pct(r.get("mategemm_outside_gemm_share")),
                       ms_text(r.get("seed_padded_ms")), times(speedup(r, "mategemm", "seed_padded")),
                       ms_text(r.get("torch_bf16_ms")), times(speedup(r, "mategemm", "torch_bf16"))] for r in rows])
    return f"{measured(result)}\n{head}\n{table}"


# mxfp8: (ours, peer, what the summary line says)
MXFP8_PAIRS = (("mategemm_gran128", "mategemm_fp8", "granularity 128 vs our FP8 path"),
               ("mategemm_gran32", "mategemm_fp8", "granularity 32 vs our FP8 path"),
               ("mategemm_gran128", "dequant_bf16", "granularity 128 vs bf16 torch._grouped_mm"),
               ("mategemm_gran32", "dequant_bf16", "granularity 32 vs bf16 torch._grouped_mm"))


def mxfp8_block(result: dict) -> str:
    rows = result["rows"]
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    head = md_table(["summary (x = the other's time / ours), geomean (min)",
                     f"all {len(rows)} shapes", *modes],
                    [[text, rows_mean_min(rows, ours, peer),
                      *(rows_mean_min([r for r in rows if r["mode"] == m], ours, peer) for m in modes)]
                     for ours, peer, text in MXFP8_PAIRS])
    table = md_table(["mode", "shape", "gran128 TFLOPS", "gran32 TFLOPS", "our FP8 TFLOPS", "bf16 TFLOPS",
                      "gran128 ms", "gran128 x our FP8", "gran128 x bf16", "gran32 x our FP8", "calc_diff"],
                     [[r["mode"], mxfp8_label(r), num(r.get("mategemm_gran128_tflops")),
                       num(r.get("mategemm_gran32_tflops")), num(r.get("mategemm_fp8_tflops")),
                       num(r.get("dequant_bf16_tflops")), ms_text(r.get("mategemm_gran128_ms")),
                       times(speedup(r, "mategemm_gran128", "mategemm_fp8")),
                       times(speedup(r, "mategemm_gran128", "dequant_bf16")),
                       times(speedup(r, "mategemm_gran32", "mategemm_fp8")),
                       largest_diff([r], "mategemm_gran128")] for r in rows])
    return f"{measured(result)}\n{head}\n{table}"


def nvfp4_block(result: dict) -> str:
    rows, summary, copy = result["rows"], result.get("summary", {}), result.get("copy_tbps")

    def both(peer):
        return (f"{times(summary.get(f'decode_geomean_vs_{peer}'))} at <= {DECODE_TOKENS} tokens per expert, "
                f"{times(summary.get(f'all_geomean_vs_{peer}'))} over all {len(rows)} rows")

    def of_copy(gbps):
        return pct(gbps / (copy * 1e3)) if copy and isinstance(gbps, (int, float)) else "–"

    head = md_table(["summary (x = the other's time / ours)", "value"], [
        ["vs our FP8 (1,128,128) `per_expert` GEMM, geomean", both("mategemm_fp8")],
        ["vs dequantise-to-bf16 + torch._grouped_mm per call, geomean", both("dequant_pipeline")],
        ["vs torch._grouped_mm on bf16 operands dequantised beforehand, geomean", both("torch_grouped_bf16")],
        [f"NVFP4 weights read at <= {DECODE_TOKENS} tokens per expert, best (median)",
         f"{num(summary.get('decode_weight_gbps_max'), 0)} ({num(summary.get('decode_weight_gbps_median'), 0)}) "
         f"GB/s; best {pct(summary.get('decode_weight_share_of_copy_max'))} of the device copy bandwidth"],
        [f"largest calc_diff against the float64 reference (up to {NVFP4_CHECKED_TOKENS} tokens per expert)",
         largest_diff(rows, "mategemm_nvfp4")]])
    table = md_table(["model", "GEMM", "experts x tokens", "n", "k", "ms", "FP8 ms", "x FP8", "dequant + bf16 ms",
                      "x dequant + bf16", "bf16 ms", "x bf16", "weights GB/s", "of copy"],
                     [[r["model"], r["gemm"], f"{r['active_experts']} x {r['tokens_per_expert']}", r["n"], r["k"],
                       ms_text(r.get("mategemm_nvfp4_ms")), ms_text(r.get("mategemm_fp8_ms")),
                       times(speedup(r, "mategemm_nvfp4", "mategemm_fp8")), ms_text(r.get("dequant_pipeline_ms")),
                       times(speedup(r, "mategemm_nvfp4", "dequant_pipeline")),
                       ms_text(r.get("torch_grouped_bf16_ms")),
                       times(speedup(r, "mategemm_nvfp4", "torch_grouped_bf16")),
                       num(r.get("mategemm_nvfp4_weight_gbps"), 0), of_copy(r.get("mategemm_nvfp4_weight_gbps"))]
                      for r in rows])
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
    elif suite == "moe_layer":
        text = (f"`fused_moe` at <= {MOE_LAYER_SMALL_TOKENS} tokens {times(s.get('small_m_geomean_vs_seed_padded'))} "
                f"a 128-row padded pipeline (min {times(s.get('small_m_min_vs_seed_padded'))}) and "
                f"{times(s.get('small_m_geomean_vs_torch_bf16'))} a bf16 `torch._grouped_mm` layer (min "
                f"{times(s.get('small_m_min_vs_torch_bf16'))}); at >= {MOE_LAYER_LARGE_TOKENS} tokens up to "
                f"{pct(s.get('large_m_max_outside_gemm_share'))} of its time outside the two GEMMs")
    elif suite == "mxfp8":
        text = (f"`moe_gemm_mxfp8_nt_groupwise` against our FP8 path: granularity 128 "
                f"{times(s.get('gran128_geomean_vs_fp8'))}, granularity 32 "
                f"{times(rows_geomean(rows, 'mategemm_gran32', 'mategemm_fp8'))} (geomeans of {len(rows)} shapes); "
                f"granularity 128 {times(rows_geomean(rows, 'mategemm_gran128', 'dequant_bf16'))} bf16 "
                "`torch._grouped_mm` on operands dequantised beforehand")
    elif suite == "nvfp4":
        text = (f"NVFP4 grouped GEMM at <= {DECODE_TOKENS} tokens per expert: "
                f"{times(s.get('decode_geomean_vs_mategemm_fp8'))} our FP8 `per_expert` GEMM, "
                f"{times(s.get('decode_geomean_vs_torch_grouped_bf16'))} bf16 `torch._grouped_mm`, "
                f"{times(s.get('decode_geomean_vs_dequant_pipeline'))} dequantise-to-bf16 + `torch._grouped_mm` "
                f"(geomeans); weights read at up to {num(s.get('decode_weight_gbps_max'), 0)} GB/s "
                f"({pct(s.get('decode_weight_share_of_copy_max'))} of the copy bandwidth)")
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


BLOCKS = {"dense_fp8": dense_block, "grouped": grouped_block, "moe_layer": moe_layer_block, "mxfp8": mxfp8_block,
          "nvfp4": nvfp4_block, "bmm": bmm_block, "indexer": indexer_block, "host": host_block}


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
