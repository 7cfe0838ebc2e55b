"""tools/experiments/power_compare.py without a GPU: reading nvidia-smi's samples."""
import pytest

from lab_tools import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("experiments/power_compare.py")


def test_samples_are_read_and_spaced_over_the_span(tool):
    text = "651.20, 1755\n[N/A], 1755\n648.00, 1740\nnot a sample\n700.5, 1980, 3\n"
    assert tool.parse_samples(text, 2.0) == [(0.0, 651.2, 1755.0), (1.0, 648.0, 1740.0)]


def test_no_readable_sample_gives_none(tool):
    assert tool.parse_samples("", 3.0) == []
    assert tool.parse_samples("[N/A], [N/A]\n", 3.0) == []
    assert tool.parse_float(" 12.5\n") == 12.5 and tool.parse_float("[N/A]") is None
