"""tools/experiments/ncu_compare.py's table from ncu's raw CSV pages (no GPU, no ncu)."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_tool():
    spec = importlib.util.spec_from_file_location("ncu_compare", ROOT / "tools" / "experiments" / "ncu_compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def raw_page(path: Path, values: dict) -> Path:
    names = ["ID", "Kernel Name", *values]
    units = ["", "", *("" for _ in values)]
    row = ["0", "void kernel<1, 2>(float *)", *(str(v) for v in values.values())]
    path.write_text("\n".join(",".join(f'"{c}"' for c in line) for line in (names, units, row)) + "\n")
    return path


def test_table_reads_raw_pages_and_divides(tmp_path):
    tool = load_tool()
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


def test_table_divides_each_column_by_the_first(tmp_path):
    tool = load_tool()
    tensor = "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active"
    pages = [raw_page(tmp_path / f"{i}.csv", {tensor: value}) for i, value in enumerate((80.0, 60.0, 40.0))]
    lines = tool.table(pages, ["mategemm_dense", "mategemm", "deepgemm"]).splitlines()
    assert lines[0] == ("| metric | mategemm_dense | mategemm | deepgemm | mategemm / mategemm_dense | "
                        "deepgemm / mategemm_dense |")
    assert lines[1].count("---") == 6
    assert "| tensor pipe active (%) | 80 | 60 | 40 | 0.75 | 0.50 |" in lines
