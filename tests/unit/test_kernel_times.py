"""tools/experiments/kernel_times.py without a GPU: summarising the profiler's kernel records."""
import pytest

from lab_tools import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("experiments/kernel_times.py")


def test_the_longest_kernel_is_summarised_with_its_starts(tool):
    # two calls, each a short copy then the GEMM; records out of order
    records = [("gemm", 20.0, 32.0), ("copy", 0.0, 2.0), ("gemm", 4.0, 14.0), ("copy", 16.0, 18.0)]
    got = tool.summarise(records, 2)
    assert got["main"] == "gemm" and got["per_call"] == {"copy": 1.0, "gemm": 1.0}
    assert got["kernel_us"] == 11.0 and got["start_to_start_us"] == 16.0


def test_one_or_no_record(tool):
    assert tool.summarise([("gemm", 1.0, 3.0)], 1)["start_to_start_us"] is None
    assert tool.summarise([], 30) == {"per_call": {}, "main": None, "kernel_us": None, "start_to_start_us": None}
