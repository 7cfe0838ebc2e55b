"""tools/experiments/ncu_compare.py's table from ncu's raw CSV pages (no GPU, no ncu)."""
from pathlib import Path

import pytest

from lab_tools import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("experiments/ncu_compare.py")


def raw_page(path: Path, values: dict) -> Path:
    names = ["ID", "Kernel Name", *values]
    units = ["", "", *("" for _ in values)]
    row = ["0", "void kernel<1, 2>(float *)", *(str(v) for v in values.values())]
    path.write_text("\n".join(",".join(f'"{c}"' for c in line) for line in (names, units, row)) + "\n")
    return path


def test_table_reads_raw_pages_and_divides(tool, tmp_path):
    tensor = "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active"
    a = raw_page(tmp_path / "a.csv", {tensor: 90.0, "smsp__inst_executed.sum": "46,455,640",
                                      "sm__warps_active.avg.per_cycle_active": "n/a"})
    b = raw_page(tmp_path / "b.csv", {tensor: 75.0, "smsp__inst_executed.sum": "50,810,852"})
    assert tool.read_raw(a)[tensor] == 90.0 and tool.read_raw(a)["smsp__inst_executed.sum"] == 46455640
    lines = tool.table([a, b], ["deepgemm", "mategemm"]).splitlines()
    assert lines[0] == "| metric | deepgemm | mategemm | mategemm / deepgemm |"
    assert "| tensor pipe active (%) | 90 | 75 | 0.83 |" in lines
    assert "| executed instructions | 46,455,640 | 50,810,852 | 1.09 |" in lines
    assert "| achieved warps per SM | - | - | - |" in lines  # not a number, or not profiled
    assert len(lines) == 2 + len(tool.METRICS)


def test_table_divides_each_column_by_the_first(tool, tmp_path):
    tensor = "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active"
    pages = [raw_page(tmp_path / f"{i}.csv", {tensor: value}) for i, value in enumerate((80.0, 60.0, 40.0))]
    lines = tool.table(pages, ["mategemm_dense", "mategemm", "deepgemm"]).splitlines()
    assert lines[0] == ("| metric | mategemm_dense | mategemm | deepgemm | mategemm / mategemm_dense | "
                        "deepgemm / mategemm_dense |")
    assert lines[1].count("---") == 6
    assert "| tensor pipe active (%) | 80 | 60 | 40 | 0.75 | 0.50 |" in lines


def test_hot_sums_opcodes_and_ranks_stalled_lines(tool, tmp_path):
    """`hot` reads a SASS source page as ncu exports it: a kernel-name line, then the header."""
    page = tmp_path / "k_sass.csv"
    header = ["Address", "Source", "Warp Stall Sampling (All Samples)", "Warp Stall Sampling (Not-issued Samples)",
              "Instructions Executed"]
    rows = [["0x10", "@!P0  BRA 0x40", "30", "20", "1,000"],
            ["0x20", "      FFMA R1, R2, R3, R1", "10", "1", "6,000"],
            ["0x30", "      FFMA R4, R2, R3, R4", "0", "0", "3,000"],
            ["0x40", "      QGMMA.64x128x32.F32.E4M3.E4M3 R24, gdesc[UR4], RZ, !UPT", "60", "50", "0"]]
    lines = ['"Kernel Name","void k<1>(float *)",'] + [",".join(f'"{c}"' for c in r) for r in [header, *rows]]
    page.write_text("\n".join(lines) + "\n")
    out = tool.hot(page, top=3).splitlines()
    assert out[0] == "k_sass.csv: 10,000 warp instructions, 100 stall samples"
    assert out[3] == "| FFMA | 9,000 | 90.0 | 10.0 |" and out[4] == "| BRA | 1,000 | 10.0 | 30.0 |"
    ranked = out[out.index("| # | stall samples % | executed | SASS |") + 2:]
    assert ranked[0].startswith("| 3 | 60.0 | 0 | QGMMA") and ranked[1].startswith("| 0 | 30.0 | 1,000 | @!P0  BRA")
    assert len(ranked) == 3


def test_hot_names_missing_columns(tool, tmp_path):
    page = tmp_path / "raw.csv"
    page.write_text('"Address","Source"\n"0x10","NOP"\n')
    assert "no executed/stall-sampling columns" in tool.hot(page)


def test_read_raw_skips_ncu_lines_before_the_header(tool, tmp_path):
    page = raw_page(tmp_path / "a.csv", {"smsp__inst_executed.sum": "1,024"})
    page.write_text("==PROF== Connected to process 1\n" + page.read_text())
    assert tool.read_raw(page)["smsp__inst_executed.sum"] == 1024
