"""The indexer suite: fp8_paged_mqa_logits in decode against the copy bandwidth, DeepGEMM's anchors and a torch peer."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

import mategemm
from mategemm.testing import calc_diff, indexer as indexer_testing

from .common import (called_once, card_kind, cell, copy_tbps, geomean, load_anchors, record_diff, rotation_sets,
    speedup, time_interleaved)
from .plots import plot


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
