"""The docs: the README's and docs/benchmarks.md's tables are those tools/bench.py renders from
docs/bench/*.json; every plot is embedded, exists and redraws from the JSON without a GPU; no
references outside the repository or to internal numbering; the README's set-up."""
import re
import shutil
import sys
from pathlib import Path

import pytest

from benchkit import bmm_suite, dense_suite, docs_tables, grouped_suite, indexer_suite, registry

ROOT = Path(__file__).resolve().parents[2]
README, BENCH_DOC, NOTEBOOK = ROOT / "README.md", ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "notebook.md"
RESULTS = ROOT / "docs" / "bench"
TEST_COMMAND = 'pip install -e ".[test]" && python -m pytest -q tests'


def section(text: str, title: str) -> str:
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


# ---------------------------------------------------------------- generated tables


def test_readme_benchmarks_come_from_the_json():
    text = README.read_text()
    assert re.findall(r"<!-- bench:(\w+) -->", text) == ["readme"]
    assert "<!-- bench:readme -->" in section(text, "Benchmarks")
    assert docs_tables.fill(text, docs_tables.load_results(RESULTS)) == text, "run: python tools/bench.py docs"


def test_benchmarks_doc_tables_come_from_the_json():
    text = BENCH_DOC.read_text()
    assert sorted(re.findall(r"<!-- bench:(\w+) -->", text)) == sorted(registry.SUITES)
    assert docs_tables.fill(text, docs_tables.load_results(RESULTS)) == text, "run: python tools/bench.py docs"


def test_every_suite_is_shown_with_its_card_and_date():
    results = docs_tables.load_results(RESULTS)
    assert set(results) == set(registry.SUITES)
    readme = section(README.read_text(), "Benchmarks")
    for suite, result in results.items():
        assert result["card"] and re.fullmatch(r"\d{4}-\d{2}-\d{2}", result["date"])
        assert f"| {suite} | {result['card']} | {result['date']} |" in readme
        assert f"{result['card']}, {result['date']}" in docs_tables.render(suite, results)


def test_fill_replaces_only_the_blocks():
    results = {"host": {"suite": "host", "card": "NVIDIA H100 80GB HBM3", "date": "2027-01-02",
                        "host_us_per_call": 9.5, "first_call_warm_disk_ms": 4.0,
                        "cold_compile_s": {"kernels": 3, "mean": 0.3, "max": 0.4, "total": 0.9}}}
    text = "before\n<!-- bench:host -->\nstale 1.0x\n<!-- /bench:host -->\nafter\n<!-- bench:bmm -->\n<!-- /bench:bmm -->\n"
    out = docs_tables.fill(text, results)
    assert out.startswith("before\n<!-- bench:host -->\n") and out.endswith("<!-- /bench:bmm -->\n")
    assert "stale" not in out and "9.5 us" in out and "NVIDIA H100 80GB HBM3, 2027-01-02" in out
    assert "python tools/bench.py bmm" in out  # no result yet: says how to make one
    assert docs_tables.fill(out, results) == out


def test_docs_command_rewrites_stale_blocks(tmp_path, capsys):
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- bench:readme -->\nstale\n<!-- /bench:readme -->\n")
    docs_tables.write_docs(RESULTS, docs=(doc,))
    assert "stale" not in doc.read_text() and "| dense_fp8 |" in doc.read_text()
    docs_tables.write_docs(RESULTS, docs=(doc,))
    assert "up to date" in capsys.readouterr().out.splitlines()[-1]


# ---------------------------------------------------------------- plots


def test_benchmarks_doc_embeds_every_plot_and_each_exists():
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", BENCH_DOC.read_text())
    assert {f"bench/{suite}.png" for suite in registry.PLOTS} <= set(images)
    for image in images:
        assert (BENCH_DOC.parent / image).is_file(), image


def test_dense_plot_has_one_panel_per_m():
    result = docs_tables.load_results(RESULTS)["dense_fp8"]
    panels = dense_suite.dense_panels(result)
    assert [p["title"].split(";")[0] for p in panels] == ["m = 1", "m = 64", "m = 128", "m = 4096"]
    assert [r for p in panels for r in p["rows"]] == sorted(result["rows"], key=lambda r: r["m"])
    assert all(r["m"] == int(p["title"].split(";")[0][4:]) for p in panels for r in p["rows"])


def test_grouped_and_bmm_plots_cover_their_json():
    results = docs_tables.load_results(RESULTS)
    grouped = grouped_suite.grouped_panels(results["grouped"])
    assert sum(len(p["rows"]) for p in grouped) == len(results["grouped"]["rows"])
    assert [p["metric"] for p in grouped] == ["tflops", "ms", "ms"] and grouped[2]["log"]
    bmm = bmm_suite.bmm_panels(results["bmm"])
    assert len(bmm) == 6 and all(len(p["rows"]) == 4 for p in bmm)
    assert [p["rows"][0]["cublas_loop_tflops"] for p in bmm[:3]] == [1239.4, 1181.8, 1167.2]
    assert [p["log"] for p in bmm] == [True, True, True, False, False, False]


def test_indexer_legend_is_outside_and_labels_are_kept(tmp_path, fake_pyplot):
    fig, axes = fake_pyplot
    indexer_suite.plot_indexer(docs_tables.load_results(RESULTS)["indexer"], tmp_path / "indexer.png")
    (ax,) = axes
    legend = ax.legend.call_args.kwargs
    assert legend["loc"] == "upper left" and legend["bbox_to_anchor"][0] > 1  # right of the axes
    assert ax.set_xticklabels.call_args.kwargs["rotation"] == 45
    assert fig.savefig.call_args.kwargs["bbox_inches"] == "tight"  # nothing clipped


def test_plot_command_redraws_every_plot_from_the_json(bench, tmp_path, monkeypatch, fake_pyplot):
    for suite in registry.SUITES:
        shutil.copy(RESULTS / f"{suite}.json", tmp_path)
    fig, _ = fake_pyplot
    monkeypatch.setattr(sys, "argv", ["bench.py", "plot", "--out-dir", str(tmp_path)])
    bench.main()
    assert [c.args[0] for c in fig.savefig.call_args_list] == [tmp_path / f"{s}.png" for s in registry.PLOTS]
    fig.savefig.reset_mock()
    monkeypatch.setattr(sys, "argv", ["bench.py", "plot", "bmm", "--out-dir", str(tmp_path)])
    bench.main()
    assert [c.args[0] for c in fig.savefig.call_args_list] == [tmp_path / "bmm.png"]


def test_plots_render_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    for suite in registry.PLOTS:
        shutil.copy(RESULTS / f"{suite}.json", tmp_path)
    docs_tables.redraw(tmp_path, list(registry.PLOTS))
    for suite in registry.PLOTS:
        assert (tmp_path / f"{suite}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- text


@pytest.mark.parametrize("path", [README, BENCH_DOC, NOTEBOOK], ids=lambda p: p.name)
def test_no_outside_paths_or_internal_numbering(path):
    text = path.read_text()
    assert "../shared" not in text
    for pattern in (r"\bsessions?\b", r"\bissues? *#?\d"):
        assert not re.search(pattern, text, re.I), (pattern, re.search(pattern, text, re.I))
    assert not re.search(r"\bv\d+(\.\d+)?\b", text), re.search(r"\bv\d+(\.\d+)?\b", text)  # run numbers


def test_readme_links_both_docs():
    text = README.read_text()
    assert "](docs/benchmarks.md)" in text and "](docs/notebook.md)" in text


def test_benchmarks_doc_links_the_notebook():
    assert "](notebook.md)" in BENCH_DOC.read_text()


def test_notebook_entries_are_dated_with_their_card_in_order():
    headings = re.findall(r"^## (.+)$", NOTEBOOK.read_text(), re.M)
    assert len(headings) >= 20
    for heading in headings:
        assert re.match(r"\d{4}-\d{2}-\d{2}, [^:]*(H100|H200|CPU)[^:]*: \S", heading), heading
    assert [h[:10] for h in headings] == sorted(h[:10] for h in headings)


def test_setup_keeps_both_commands_and_says_what_pip_pulls():
    text = README.read_text()
    setup = section(text, "Set up")
    assert "\npip install -e . && mategemm demo\n" in setup and f"\n{TEST_COMMAND}\n" in setup
    # .ci/run runs the first README line holding the test command: it must be the command itself
    assert next(line for line in text.splitlines() if 'pip install -e ".[test]"' in line) == TEST_COMMAND
    assert "CUDA build of torch" in setup and "CPU build of torch" in setup and "`.ci/run`" in setup
    assert "pip install torch --index-url <PyTorch's CPU wheel index>" in setup and "://" not in setup
    assert re.search(r"about [\d.]+ minutes", setup) and "2 CPU cores" in setup
