"""The moe_layer, mxfp8 and nvfp4 suites in the docs, without a GPU: their blocks and README lines
rendered from the committed result files, their plots' panels, and each plot written as a PNG."""
import json
import sys
from pathlib import Path

import pytest

from benchkit import docs_tables, moe_layer_suite, mxfp8_suite, nvfp4_suite, registry

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "bench"
NEW_SUITES = ("moe_layer", "mxfp8", "nvfp4")


def result(suite: str) -> dict:
    return json.loads((RESULTS / f"{suite}.json").read_text())


def table_rows(text: str, head: str) -> list:
    """The body lines of the markdown table whose header starts with `head`."""
    lines = text.split(f"\n| {head} |", 1)[1].split("\n\n", 1)[0].splitlines()
    return lines[2:]  # past the rest of the header line and the |---| line


def test_the_suites_are_measured_and_plotted():
    for suite in NEW_SUITES:
        assert suite in registry.SUITES and suite in registry.PLOTS and suite not in registry.UNMEASURED_SUITES


def test_speedup_helpers():
    rows = [{"a_ms": 1.0, "b_ms": 2.0}, {"a_ms": 2.0, "b_ms": 1.0}, {"a_ms": 1.0}]
    assert docs_tables.speedups(rows, "a", "b") == [2.0, 0.5]
    assert docs_tables.rows_geomean(rows, "a", "b") == pytest.approx(1.0)
    assert docs_tables.rows_mean_min(rows, "a", "b") == "1.00x (0.50x)"
    assert docs_tables.rows_geomean(rows, "a", "c") is None and docs_tables.rows_mean_min(rows, "a", "c") == "–"
    assert docs_tables.largest_diff([{"a_diff": 1e-6}, {"a_diff": 3e-4}, {}], "a") == "3.0e-04"
    assert docs_tables.largest_diff([{}], "a") == "–"


def test_moe_layer_block():
    res = result("moe_layer")
    text = docs_tables.moe_layer_block(res)
    assert f"{res['card']}, {res['date']}" in text
    assert "| vs the 128-row padded pipeline at <= 64 tokens, geomean (min) | 5.81x (1.84x) |" in text
    assert "| vs the bf16 torch._grouped_mm layer at <= 64 tokens, geomean (min) | 2.68x (2.50x) |" in text
    assert "at >= 1024 tokens | 50% (qwen3_30b_a3b, 16384 tokens, uniform routing) |" in text
    rows = table_rows(text, "model")
    assert len(rows) == len(res["rows"])
    # deepseek_v3, 1 token: x = the padded pipeline's time / ours
    assert rows[0] == "| deepseek_v3 | 1 | uniform | 0.138 | 0.114 | 18% | 1.76 | 12.76x | 0.346 | 2.51x |"
    line = docs_tables.readme_line("moe_layer", res)
    assert "5.81x" in line[3] and "2.68x" in line[3] and "50%" in line[3]


def test_mxfp8_block():
    res = result("mxfp8")
    text = docs_tables.mxfp8_block(res)
    assert f"{res['card']}, {res['date']}" in text
    # the geomean over every shape is the summary's
    summary = f"{res['summary']['gran128_geomean_vs_fp8']:.2f}x"
    assert f"| granularity 128 vs our FP8 path | {summary} (0.71x) | 0.74x (0.71x) | 0.78x (0.72x) |" in text
    rows = table_rows(text, "mode")
    assert len(rows) == len(res["rows"]) == 16
    assert rows[0].startswith("| contiguous | 4x8192 n4096 k7168 | 825.7 | 251.7 | 1100.9 | 709.1 | 2.70 | 0.75x |")
    assert rows[-1].startswith("| decode | 32x64 n4096 k7168 |")
    assert "0.75x" in docs_tables.readme_line("mxfp8", res)[3]


def test_mxfp8_block_without_a_peer():
    res = {"suite": "mxfp8", "card": "NVIDIA H100 80GB HBM3", "date": "2027-01-02",
           "rows": [{"mode": "decode", "experts": 32, "tokens_per_expert": 1, "n": 4096, "k": 7168,
                     "mategemm_gran128_ms": 1.0, "mategemm_fp8_ms": 0.5, "mategemm_fp8_tflops": 2.0}]}
    text = docs_tables.mxfp8_block(res)
    assert "| granularity 128 vs our FP8 path | 0.50x (0.50x) | 0.50x (0.50x) |" in text
    assert "| granularity 32 vs our FP8 path | – | – |" in text
    assert table_rows(text, "mode") == \
        ["| decode | 32x1 n4096 k7168 | – | – | 2.0 | – | 1.00 | 0.50x | – | – | – |"]


def test_nvfp4_block():
    """The block's summary and first row follow the committed result file, whatever run wrote it."""
    res = result("nvfp4")
    summary, first = res["summary"], res["rows"][0]
    text = docs_tables.nvfp4_block(res)
    assert f"{res['card']}, {res['date']}; device copy bandwidth {res['copy_tbps']} TB/s" in text
    fp8 = (f"{summary['decode_geomean_vs_mategemm_fp8']:.2f}x at <= 64 tokens per expert, "
           f"{summary['all_geomean_vs_mategemm_fp8']:.2f}x over all 36 rows")
    assert f"| vs our FP8 (1,128,128) `per_expert` GEMM, geomean | {fp8} |" in text
    best, median = round(summary["decode_weight_gbps_max"]), round(summary["decode_weight_gbps_median"])
    share = round(100 * summary["decode_weight_share_of_copy_max"])
    assert f"| {best} ({median}) GB/s; best {share}% of the device copy bandwidth |" in text
    rows = table_rows(text, "model")
    assert len(rows) == len(res["rows"]) == 36
    assert rows[0].startswith(f"| {first['model']} | {first['gemm']} | 32 x {first['tokens_per_expert']} | "
                              f"{first['n']} | {first['k']} | ")
    assert f"| {first['mategemm_fp8_ms'] / first['mategemm_nvfp4_ms']:.2f}x |" in rows[0]
    line = docs_tables.readme_line("nvfp4", res)[3]
    assert f"{summary['decode_geomean_vs_mategemm_fp8']:.2f}x our FP8" in line
    assert f"{best} GB/s" in line and f"{share}%" in line


def test_panels_cover_the_json():
    moe = result("moe_layer")
    panels = moe_layer_suite.moe_layer_panels(moe)
    assert [p["metric"] for p in panels] == ["ms", "outside_gemm_share"] * 3
    assert [p["log"] for p in panels] == [True, False] * 3
    assert sum(len(p["rows"]) for p in panels[::2]) == len(moe["rows"])
    mx = result("mxfp8")
    panels = mxfp8_suite.mxfp8_panels(mx)
    assert [len(p["rows"]) for p in panels] == [12, 4] and [p["log"] for p in panels] == [False, True]
    assert all(p["impls"] == mxfp8_suite.MXFP8_IMPLS for p in panels)
    nv = result("nvfp4")
    panels = nvfp4_suite.nvfp4_panels(nv)
    assert [p["metric"] for p in panels] == ["ms", "weight_gbps"] * 3
    assert sum(len(p["rows"]) for p in panels[::2]) == len(nv["rows"])
    assert all(p["ceiling"] == (nv["copy_tbps"] * 1e3, "device copy") for p in panels[1::2])


@pytest.mark.parametrize("suite", NEW_SUITES)
def test_plot_writes_a_png(suite, tmp_path):
    pytest.importorskip("matplotlib")
    registry.PLOTS[suite](result(suite), tmp_path / f"{suite}.png")
    assert (tmp_path / f"{suite}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prewarm_names_are_shipped_suites():
    """tools/bench.py compiles a suite's kernels first through `mategemm prewarm --shapes`: every name
    it passes is a shipped suite, and each grouped mode with a shipped shape list has one."""
    from mategemm import suites
    from benchkit.grouped_suite import GROUPED_MODES

    names = {name for suite in registry.RUNNERS for name in registry.prewarm_names(suite, list(GROUPED_MODES))}
    assert suites.resolve(",".join(sorted(names)))
    assert registry.prewarm_names("grouped", ["contiguous", "per_expert"]) == ["grouped_contiguous_fp8"]
    assert registry.prewarm_names("host", []) == []


def test_live_deepgemm_found_through_its_build_variable(tmp_path, monkeypatch):
    """A DeepGEMM build named by $DEEPGEMM_BUILD imports where PYTHONPATH does not hold it (a lab
    copy of the tree sets its own); without either, the suites fall back to the anchors."""
    from benchkit import common

    monkeypatch.delitem(sys.modules, "deep_gemm", raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    monkeypatch.delenv("DEEPGEMM_BUILD", raising=False)
    assert common.live_deepgemm() is None
    (tmp_path / "deep_gemm").mkdir()
    (tmp_path / "deep_gemm" / "__init__.py").write_text("__version__ = 'stub'\n")
    monkeypatch.setenv("DEEPGEMM_BUILD", str(tmp_path))
    module = common.live_deepgemm()
    assert module is not None and module.__version__ == "stub"
    sys.modules.pop("deep_gemm")  # not through monkeypatch: its undo would put the stub back
