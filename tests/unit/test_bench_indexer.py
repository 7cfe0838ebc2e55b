"""The indexer benchmark's pure parts on the CPU: context lengths, byte and FLOP counts (ours and
DeepGEMM's, against its anchors), anchor matching, the torch peer's memory estimate and chunking,
the correctness check, ratios, summary, table and plot; and one row end to end with the GPU calls
replaced by the float64 reference and a fake timer."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from mategemm.testing import indexer

from benchkit import common, indexer_suite, plots

ROOT = Path(__file__).resolve().parents[2]
SHAPES = json.loads((ROOT / "mategemm" / "shapes" / "shapes.json").read_text())["paged_mqa_logits"]
ANCHORS = ROOT / "tools" / "shapes" / "anchors.json"
PEER = "torch_paged_logits"


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)


def small_case(generator, lens=(1, 64, 65, 130), next_n=2, heads=8):
    return indexer.make_paged_case(len(lens), next_n, heads, list(lens), generator=generator)


# ---------------------------------------------------------------- inputs and counts


def test_context_lens_follow_deepgemms_generator():
    lens = indexer_suite.indexer_context_lens(256, 8192, torch.Generator().manual_seed(0))
    again = indexer_suite.indexer_context_lens(256, 8192, torch.Generator().manual_seed(0))
    assert lens == again and len(lens) == 256 and all(isinstance(n, int) for n in lens)
    assert min(lens) >= int(0.7 * 8192) and max(lens) < int(1.3 * 8192)
    assert abs(sum(lens) / len(lens) / 8192 - 1) < 0.05
    assert indexer_suite.indexer_context_lens(4, 8192, torch.Generator().manual_seed(1)) != lens[:4]


def test_bytes_and_flops_by_hand():
    lens, next_n, heads, max_len = [1, 64, 65, 130], 2, 8, 147
    assert indexer_suite.indexer_kv_blocks(lens) == 1 + 1 + 2 + 3
    kv = 7 * 64 * 132
    q, weights, logits = 8 * 8 * 128, 8 * 8 * 4, 8 * 147 * 4
    assert indexer_suite.indexer_bytes(lens, next_n, heads, max_len) == kv + q + weights + logits
    assert indexer_suite.indexer_deepgemm_bytes(lens, next_n, heads) == 260 * 132 + q + weights + 260 * 2 * 4
    assert indexer_suite.indexer_flops(lens, next_n, heads) == 2 * 260 * 2 * 8 * 128


def test_deepgemm_count_reproduces_every_anchor():
    """DeepGEMM's gbps x ms is its byte count: sum(len) follows from its tflops x ms."""
    anchors = json.loads(ANCHORS.read_text())["indexer"]
    assert set(anchors) == {"H100", "H200"}
    for rows in anchors.values():
        for a in rows:
            batch, next_n, heads = a["batch"], a["next_n"], a["heads"]
            tokens = indexer_suite.anchor_tokens(a, next_n, heads, a["index_dim"])
            lens = indexer_suite.with_total([0] * batch, tokens)
            assert indexer_suite.indexer_flops(lens, next_n, heads) == pytest.approx(a["tflops"] * a["ms"] * 1e9, rel=1e-5)
            measured = a["gbps"] * a["ms"] * 1e6
            assert indexer_suite.indexer_deepgemm_bytes(lens, next_n, heads) == pytest.approx(measured, rel=1e-4)
            # ours counts whole cache blocks and the whole logits: a little more
            max_len = max(lens) + 17
            assert 1 < indexer_suite.indexer_bytes(lens, next_n, heads, max_len) / measured < 1.05


def test_with_total_shifts_evenly():
    lens = [8000, 9000, 7000]
    assert indexer_suite.with_total(lens, 24000 + 7) == [8003, 9002, 7002]
    assert indexer_suite.with_total(lens, 24000 - 7) == [7998, 8998, 6997]  # -3 each, the first two 1 back up
    assert indexer_suite.with_total(lens, 24000) == lens


def test_anchors_match_shape_rows_of_the_suite():
    fields = indexer_suite.INDEXER_FIELDS
    assert set(fields) <= set(indexer_suite.INDEXER_SHAPE_FIELDS)
    shape_keys = {indexer_suite.indexer_anchor_key(s) for s in SHAPES}
    assert len(shape_keys) == len(SHAPES) == 24
    for kind in ("H100", "H200"):
        anchors = common.load_anchors("indexer", kind, fields, ANCHORS)
        assert len(anchors) == 4 and set(anchors) <= shape_keys
        for key, a in anchors.items():
            assert key == tuple(a[f] for f in fields) and a["index_dim"] == 128
            assert {"gbps", "tflops", "ms"} <= set(a)
    assert common.load_anchors("indexer", "A100", fields, ANCHORS) == {}
    for s in SHAPES:
        assert s["index_dim"] == 128 and s["block_kv"] == 64 and s["heads"] % 8 == 0 and 1 <= s["next_n"] <= 4


def test_load_anchors_default_still_keys_dense_rows_by_mnk():
    data = json.loads(ANCHORS.read_text())["dense_fp8"]["H100"]
    anchors = common.load_anchors("dense_fp8", "H100")
    assert set(anchors) == {(r["m"], r["n"], r["k"]) for r in data}
    assert anchors[(1, 2112, 7168)] == next(r for r in data if (r["m"], r["n"], r["k"]) == (1, 2112, 7168))


# ---------------------------------------------------------------- the torch peer's memory


def test_torch_peer_estimate():
    # linear in the batch: chunks of requests add up
    assert indexer_suite.torch_peer_bytes(7, 2, 64, 1000) == 7 * indexer_suite.torch_peer_bytes(1, 2, 64, 1000)
    keys, scores, logits = 128 * 1024 * 4, 1 * 32 * 1000 * 4, 1000 * 4  # max_len 1000 -> 16 blocks
    assert indexer_suite.torch_peer_bytes(1, 1, 32, 1000) == 2 * keys + 3 * logits
    assert indexer_suite.torch_peer_bytes(1, 2, 64, 1000) == keys + 2 * 4 * scores + 3 * 2 * logits
    # the suite's largest row (64k x 256 requests, 2 x 64 heads): ~34 GB, under the 60 GB cap
    worst = max(indexer_suite.torch_peer_bytes(s["batch"], s["next_n"], s["heads"], int(1.3 * s["avg_context"]) + 17)
                for s in SHAPES)
    assert 30e9 < worst < indexer_suite.TORCH_PEER_MAX_BYTES


def test_peer_skip_reason():
    assert indexer_suite.peer_skip_reason(10e9, 60e9) is None
    assert indexer_suite.peer_skip_reason(60e9, 60e9) is None
    reason = indexer_suite.peer_skip_reason(71.3e9, 60e9)
    assert reason.startswith("skipped") and "71.3 GB" in reason and "60.0 GB" in reason


@pytest.mark.parametrize("batch, per_request, limit, expected", [
    (5, 10, 25, [(0, 2), (2, 4), (4, 5)]),
    (4, 10, 40, [(0, 4)]),
    (3, 10, 1e9, [(0, 3)]),
    (3, 100, 10, [(0, 1), (1, 2), (2, 3)]),  # one request over the limit still runs alone
    (3, 0, 10, [(0, 3)]),
])
def test_request_chunks(batch, per_request, limit, expected):
    assert indexer_suite.request_chunks(batch, per_request, limit) == expected


def test_chunked_peer_equals_one_call(generator):
    case = small_case(generator)
    whole = indexer.torch_paged_logits(*indexer_suite.paged_args(case), case["max_context_len"], True)
    per_request = indexer_suite.torch_peer_bytes(1, 2, 8, case["max_context_len"])
    for limit in (per_request, 2 * per_request + 1, 1e12):
        got = indexer_suite.chunked_peer_logits(case, limit)
        assert got.shape == whole.shape and got.dtype == torch.float32
        assert torch.equal(torch.isinf(got), torch.isinf(whole))
        assert torch.allclose(got, whole, rtol=1e-6, atol=1e-5)


def test_paged_args_slice_requests(generator):
    case = small_case(generator)
    q, cache, weights, lens, table = indexer_suite.paged_args(case, (1, 3))
    assert torch.equal(q.view(torch.uint8), case["q"][1:3].view(torch.uint8)) and q.is_contiguous()
    assert cache is case["fused_kv_cache"]
    assert torch.equal(weights, case["weights"][2:6]) and torch.equal(lens, case["context_lens"][1:3])
    assert torch.equal(table, case["block_table"][1:3])


# ---------------------------------------------------------------- correctness check


def test_indexer_diff(generator):
    case = small_case(generator)
    lens, max_len = case["context_lens"], case["max_context_len"]
    ref = indexer.paged_reference(*indexer_suite.paged_args(case), max_len, True)
    peer = indexer_suite.chunked_peer_logits(case)
    assert indexer_suite.indexer_diff(ref, peer, lens, 2) < 1e-6
    seen = indexer.visible_mask(lens, 2, max_len)
    assert not seen.all() and seen.any()

    hidden_written = ref.clone()
    hidden_written[~seen] = 0.0
    assert indexer_suite.indexer_diff(hidden_written, peer, lens, 2) == math.inf
    wrong = ref.clone()
    wrong[seen] *= 1.5
    assert 1e-3 < indexer_suite.indexer_diff(wrong, peer, lens, 2) < math.inf
    nan = ref.clone()
    nan[0, 0] = math.nan  # a visible position left unwritten
    assert indexer_suite.indexer_diff(nan, peer, lens, 2) == math.inf


# ---------------------------------------------------------------- ratios, summary, table, plot

ANCHOR = {"batch": 64, "next_n": 1, "avg_context": 8192, "heads": 64, "index_dim": 128, "tflops": 352.6,
          "gbps": 2949.2, "ms": 0.024576}


def timed_row(ours_ms=0.025, peer_ms=0.5, avg_context=8192, deepgemm_bytes=72_480_000):
    row = {"batch": 64, "next_n": 1, "heads": 64, "index_dim": 128, "block_kv": 64, "avg_context": avg_context,
           "deepgemm_bytes": deepgemm_bytes, "mategemm_diff": 2e-8}
    if ours_ms:
        common.add_timing(row, "mategemm", ours_ms, 8.6e9, 73.4e6)
        common.add_timing(row, indexer_suite.INDEXER_AS_DEEPGEMM, ours_ms, 8.6e9, deepgemm_bytes)
    if peer_ms:
        common.add_timing(row, PEER, peer_ms, 8.6e9, 73.4e6)
    return row


def test_finish_row_ratios():
    row = indexer_suite.finish_indexer_row(timed_row(), 4.0, ANCHOR)
    assert (row["deepgemm_gbps"], row["deepgemm_tflops"], row["deepgemm_ms"]) == (2949.2, 352.6, 0.024576)
    assert row["mategemm_gbps"] == 2936.0 and row["mategemm_gbps_deepgemm_count"] == 2899.2
    assert row["mategemm_of_copy"] == pytest.approx(2936.0 / 4000, abs=1e-4)
    assert row[f"{indexer_suite.INDEXER_AS_DEEPGEMM}_of_copy"] == pytest.approx(2899.2 / 4000, abs=1e-4)
    assert row["mategemm_vs_deepgemm"] == pytest.approx(2899.2 / 2949.2, abs=1e-4)
    assert row[f"speedup_vs_{PEER}"] == 20.0

    # the DeepGEMM ratio comes from our time without cleaning (the mode DeepGEMM's anchors time)
    faster = timed_row()
    common.add_timing(faster, indexer_suite.INDEXER_AS_DEEPGEMM, 0.0245, 8.6e9, 72_480_000)
    faster = indexer_suite.finish_indexer_row(faster, 4.0, ANCHOR)
    assert faster["mategemm_gbps_deepgemm_count"] == 2958.4 and faster["mategemm_of_copy"] == row["mategemm_of_copy"]
    assert faster["mategemm_vs_deepgemm"] == pytest.approx(2958.4 / 2949.2, abs=1e-4)
    clean_only = timed_row()
    del clean_only[f"{indexer_suite.INDEXER_AS_DEEPGEMM}_ms"]
    assert "mategemm_vs_deepgemm" not in indexer_suite.finish_indexer_row(clean_only, 4.0, ANCHOR)

    bare = indexer_suite.finish_indexer_row(timed_row(avg_context=65536), 4.0, None)
    assert "deepgemm_gbps" not in bare and "mategemm_vs_deepgemm" not in bare
    assert "mategemm_of_copy" in bare and f"speedup_vs_{PEER}" in bare
    failed = timed_row(ours_ms=None)
    failed["mategemm_error"] = "RuntimeError: boom"
    failed = indexer_suite.finish_indexer_row(failed, 4.0, ANCHOR)
    assert failed["deepgemm_gbps"] == 2949.2
    assert not {"mategemm_of_copy", "mategemm_vs_deepgemm", f"speedup_vs_{PEER}",
                "mategemm_gbps_deepgemm_count"} & set(failed)


def test_indexer_summary():
    copy = 4.0
    rows = [
        indexer_suite.finish_indexer_row(timed_row(0.025, 0.5), copy, ANCHOR),  # vs DG 0.983, x20, of copy 0.734
        indexer_suite.finish_indexer_row(timed_row(0.05, 0.25), copy, ANCHOR),  # vs DG 0.4916, x5, of copy 0.367
        indexer_suite.finish_indexer_row(timed_row(0.1, None, avg_context=4096), copy, None),  # short: not in copy
        indexer_suite.finish_indexer_row(timed_row(None, 1.0, avg_context=65536), copy, None),  # ours failed
    ]
    summary = indexer_suite.indexer_summary(rows, copy)
    dg = [72.48e6 / (ms * 1e-3) / 1e9 / 2949.2 for ms in (0.025, 0.05)]
    assert summary["geomean_vs_deepgemm"] == pytest.approx(math.sqrt(dg[0] * dg[1]), abs=2e-4)
    assert summary["min_vs_deepgemm"] == pytest.approx(dg[1], abs=2e-4) and summary["rows_vs_deepgemm"] == 2
    assert summary[f"geomean_vs_{PEER}"] == 10.0 and summary[f"min_vs_{PEER}"] == 5.0
    assert summary[f"rows_vs_{PEER}"] == 2
    assert summary["min_of_copy_ctx_ge_8192"] == pytest.approx(73.4e6 / 0.05e-3 / 1e9 / 4000, abs=1e-4)
    assert summary["rows_of_copy_ctx_ge_8192"] == 2
    assert summary["min_no_clean_of_copy_ctx_ge_8192"] == pytest.approx(72.48e6 / 0.05e-3 / 1e9 / 4000, abs=1e-4)
    assert summary["rows_no_clean_of_copy_ctx_ge_8192"] == 2
    assert indexer_suite.indexer_summary([], copy) == {}
    assert indexer_suite.indexer_summary(rows, copy, long_context=100)["rows_of_copy_ctx_ge_100"] == 3


def test_format_indexer_row():
    row = indexer_suite.finish_indexer_row(timed_row(), 4.0, ANCHOR)
    head, line = indexer_suite.format_indexer_row(row)
    assert "DeepGEMM" in head and "torch" in head and "of copy" in head
    assert "2936.0" in line and "2949.2" in line and "0.98" in line and "20.0" in line and "2.0e-08" in line
    assert len(head.split("|")) == len(line.split("|")) == 4
    failed = {"batch": 256, "next_n": 2, "heads": 64, "index_dim": 128, "block_kv": 64, "avg_context": 65536,
              "mategemm_error": "RuntimeError: boom", f"{PEER}_error": "skipped: needs ~99 GB"}
    head, line = indexer_suite.format_indexer_row(failed)  # no timings: ERR and dashes, never an exception
    assert line.count("ERR") == 4 and "65536" in line
    failed[f"{indexer_suite.INDEXER_AS_DEEPGEMM}_error"] = "RuntimeError: boom"
    assert indexer_suite.format_indexer_row(failed)[1].count("ERR") == 5


def test_plot_indexer_draws_gbps_and_the_copy_line(tmp_path, fake_pyplot):
    fig, axes = fake_pyplot
    rows = [indexer_suite.finish_indexer_row(timed_row(), 4.0, ANCHOR),
            indexer_suite.finish_indexer_row(timed_row(0.2, None, avg_context=65536), 4.0, None)]
    result = {"suite": "indexer", "card": "NVIDIA H200", "date": "2026-11-28", "copy_tbps": 4.0, "rows": rows}
    indexer_suite.plot_indexer(result, tmp_path / "indexer.png")
    (ax,) = axes
    bars = ax.bar.call_args_list
    assert [c.kwargs["label"] for c in bars] == ["mategemm", indexer_suite.INDEXER_AS_DEEPGEMM, "deepgemm", PEER]
    assert bars[0].args[1] == [rows[0]["mategemm_gbps"], rows[1]["mategemm_gbps"]]
    unclean = f"{indexer_suite.INDEXER_AS_DEEPGEMM}_gbps"
    assert bars[1].args[1] == [rows[0][unclean], rows[1][unclean]]
    assert bars[2].args[1] == [2949.2, 0] and bars[3].args[1] == [rows[0][f"{PEER}_gbps"], 0]
    ax.axhline.assert_called_once()
    assert ax.axhline.call_args.args[0] == 4000.0
    ax.set_ylabel.assert_called_once_with("GB/s")
    assert ax.set_xticklabels.call_args.args[0] == ["b64 n1 h64 8k", "b64 n1 h64 64k"]
    fig.savefig.assert_called_once()


def test_plot_default_is_dense_unchanged(tmp_path, fake_pyplot):
    _, axes = fake_pyplot
    rows = [{"m": 64, "n": 2112, "k": 7168, "mategemm_tflops": 150.0, "deepgemm_tflops": 156.1}]
    plots.plot({"suite": "dense_fp8", "card": "H100", "date": "d", "rows": rows}, tmp_path / "dense.png")
    (ax,) = axes
    bars = ax.bar.call_args_list
    assert [c.kwargs["label"] for c in bars] == ["mategemm", "deepgemm", "cublas_blockwise", "cublas_tensorwise"]
    assert [c.args[0] for c in bars] == [[-0.30000000000000004], [-0.1], [0.1], [0.30000000000000004]]
    assert all(c.args[2] == 0.2 for c in bars)
    assert [c.args[1] for c in bars] == [[150.0], [156.1], [0], [0]]
    ax.axhline.assert_not_called()
    ax.set_ylabel.assert_called_once_with("TFLOPS")
    assert ax.set_xticklabels.call_args.args[0] == ["64x2112x7168"]


def test_plot_without_matplotlib_only_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    indexer_suite.plot_indexer({"rows": [], "copy_tbps": 4.0}, tmp_path / "x.png")
    assert "matplotlib not installed" in capsys.readouterr().out
    assert not (tmp_path / "x.png").exists()


def test_cli_offers_the_suite(bench, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench.py", "--help"])
    with pytest.raises(SystemExit):
        bench.main()
    out = capsys.readouterr().out
    assert "indexer" in out.split("positional arguments")[1] and "python tools/bench.py indexer" in out


# ---------------------------------------------------------------- one row with the GPU calls faked

SHAPE = {"batch": 3, "next_n": 2, "heads": 8, "index_dim": 128, "block_kv": 64, "avg_context": 100}


@pytest.fixture
def cpu_row(monkeypatch):
    """bench_indexer_row on the CPU: inputs made on the CPU, ours = the float64 reference, the timer
    returning 0.01 ms for ours (0.008 without cleaning) and 0.3 ms for the peer, `free` bytes of GPU
    memory."""
    make = indexer.make_paged_case
    monkeypatch.setattr(indexer_suite.indexer_testing, "make_paged_case", lambda *a, **k: make(*a, **{**k, "device": "cpu"}))
    monkeypatch.setattr(indexer_suite.mategemm, "get_paged_mqa_logits_metadata",
                        lambda lens, block_kv: torch.zeros((133, 2), dtype=torch.int32))

    cleaned = []

    def ours(q, cache, weights, lens, table, meta, max_len, clean):
        assert meta.shape == (133, 2) and clean in (True, False)
        cleaned.append(clean)
        return indexer.paged_reference(q, cache, weights, lens, table, max_len, clean)

    monkeypatch.setattr(indexer_suite.mategemm, "fp8_paged_mqa_logits", ours)
    timed = []

    def median_ms(calls):
        cleaned.clear()
        for call in calls:
            call()
        impl = "peer" if ".peer." in calls[0].__qualname__ else "ours" if cleaned[0] else "unclean"
        timed.append(impl)
        return {"peer": 0.3, "ours": 0.01, "unclean": 0.008}[impl]

    monkeypatch.setattr(common, "median_ms", median_ms)
    monkeypatch.setattr(indexer_suite.torch.cuda, "empty_cache", lambda: None)

    def run(free=80e9, shape=SHAPE, anchor=None):
        monkeypatch.setattr(indexer_suite.torch.cuda, "mem_get_info", lambda: (free, 141e9))
        timed.clear()
        row = indexer_suite.bench_indexer_row(shape, 1 << 20, torch.Generator().manual_seed(0),
                                      torch.Generator().manual_seed(1), anchor)
        return row, list(timed)

    return run


def test_row_end_to_end_on_cpu(cpu_row):
    row, timed = cpu_row()
    lens = indexer_suite.indexer_context_lens(3, 100, torch.Generator().manual_seed(0))
    assert {k: row[k] for k in SHAPE} == SHAPE
    assert row["sum_context"] == sum(lens) and row["max_context_len"] == max(lens) + 17
    assert row["kv_blocks"] == indexer_suite.indexer_kv_blocks(lens)
    nbytes = indexer_suite.indexer_bytes(lens, 2, 8, row["max_context_len"])
    assert row["bytes"] == nbytes and row["deepgemm_bytes"] == indexer_suite.indexer_deepgemm_bytes(lens, 2, 8)
    assert row["input_sets"] == common.rotation_sets(nbytes, 1 << 20) > 1
    assert row["mategemm_diff"] < 1e-6 and row[f"{indexer_suite.INDEXER_AS_DEEPGEMM}_diff"] < 1e-6
    # interleaved, the starting one rotated
    assert timed == ["ours", "unclean", "peer", "unclean", "peer", "ours", "peer", "ours", "unclean"]
    assert row["mategemm_ms"] == 0.01 and row[f"{PEER}_ms"] == 0.3 and row[f"{indexer_suite.INDEXER_AS_DEEPGEMM}_ms"] == 0.008
    assert row[f"{indexer_suite.INDEXER_AS_DEEPGEMM}_gbps"] == round(row["deepgemm_bytes"] / 8e-6 / 1e9, 1)
    assert row["mategemm_gbps"] == round(nbytes / 1e-5 / 1e9, 1)
    assert row["mategemm_tflops"] == round(indexer_suite.indexer_flops(lens, 2, 8) / 1e-5 / 1e12, 1)
    assert not any(k.endswith("_error") for k in row)
    row = indexer_suite.finish_indexer_row(row, 4.0, None)
    assert row[f"speedup_vs_{PEER}"] == 30.0


def test_row_with_an_anchor_runs_its_total(cpu_row):
    anchor = {"tflops": 0.1, "ms": 0.01}  # 2 * 2 * 8 * 128 FLOPs per token: 244 tokens
    row, _ = cpu_row(anchor=anchor)
    assert indexer_suite.anchor_tokens(anchor, 2, 8) == 244
    assert row["sum_context"] == 244 and row["sum_context_from_anchor"] and row["mategemm_diff"] < 1e-6
    assert not cpu_row()[0]["sum_context_from_anchor"]


def test_row_skips_a_peer_that_would_not_fit(cpu_row):
    row, timed = cpu_row(free=1e3)
    assert row[f"{PEER}_error"].startswith("skipped") and f"{PEER}_ms" not in row
    assert timed == ["ours", "unclean", "unclean", "ours", "ours", "unclean"]
    assert row["mategemm_ms"] == 0.01 and row["mategemm_diff"] < 1e-6


def test_row_records_our_failure(cpu_row, monkeypatch):
    def broken(*args):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(indexer_suite.mategemm, "fp8_paged_mqa_logits", broken)
    row, timed = cpu_row()
    assert row["mategemm_error"] == "RuntimeError: no kernel" and "mategemm_ms" not in row
    assert row[f"{indexer_suite.INDEXER_AS_DEEPGEMM}_error"] == "RuntimeError: no kernel"
    assert "mategemm_diff" not in row and row[f"{PEER}_ms"] == 0.3 and timed == ["peer"] * 3
