"""tools/experiments/nvfp4_configs.py without a GPU: its rows and cells."""
import pytest

from lab_tools import load_tool

tool = load_tool("experiments/nvfp4_configs.py")


def test_rows_parse_into_the_suite_fields():
    assert tool.parse_row("32x4096x7168@16") == {"active_experts": 32, "n": 4096, "k": 7168, "tokens_per_expert": 16}


@pytest.mark.parametrize("text", ["32x4096x7168", "32x4096@16", "0x4096x7168@1", "32x4096x7000@1", "32x4100x7168@1",
                                  "ax4096x7168@1"])
def test_bad_rows_are_refused_by_name(text):
    with pytest.raises(ValueError, match="row"):
        tool.parse_row(text)


def test_cell_is_the_median_and_the_spread():
    assert tool.cell([0.2, 0.1, 0.3]) == "0.2000 (0.1000-0.3000)"
