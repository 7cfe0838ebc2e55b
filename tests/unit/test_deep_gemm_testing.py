"""mategemm.deep_gemm.testing, the helpers DeepGEMM's test files import, on the CPU."""
import os

import pytest
import torch

from mategemm.deep_gemm import testing


def test_count_bytes_nests_and_skips_none():
    a = torch.zeros(3, 4)
    b = torch.zeros(5, dtype=torch.float8_e4m3fn)
    assert testing.count_bytes(a) == 48
    assert testing.count_bytes(a, (b, None), [a, (b,)], None) == 48 + 5 + 48 + 5


def test_calc_diff_is_mategemms():
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    assert testing.calc_diff(x, x) == 0.0 and 0.9 < testing.calc_diff(x, -x + 1e-9 * 0) <= 2.0
    assert testing.calc_diff(torch.zeros(3), torch.zeros(3)) == 0.0
    assert testing.calc_diff(x, torch.full_like(x, float("nan"))) == float("inf")


def test_assert_bitwise_equal_names_the_first_difference():
    x = torch.arange(12, dtype=torch.float32).view(3, 4)
    testing.assert_bitwise_equal(x, x.clone())
    y = x.clone()
    y[2, 1] = -1
    with pytest.raises(AssertionError, match=r"bitwise mismatch \(out\).*element \(2, 1\): 9.0 vs -1.0"):
        testing.assert_bitwise_equal(x, y, "out")
    with pytest.raises(AssertionError, match="not comparable"):
        testing.assert_bitwise_equal(x, x.double())
    negative_zero = torch.tensor([-0.0])
    with pytest.raises(AssertionError):
        testing.assert_bitwise_equal(torch.tensor([0.0]), negative_zero)  # equal values, other bytes


def test_test_filter_runs_or_reports(capsys):
    calls = []
    on = testing.test_filter(lambda: True)(lambda x: calls.append(x) or "ran")
    off = testing.test_filter(lambda: False)(lambda x: calls.append(x))
    assert on(1) == "ran" and off(2) is None and calls == [1]
    assert "Filtered by" in capsys.readouterr().out


def test_ignore_env_unsets_while_running_and_restores_even_on_error(monkeypatch):
    monkeypatch.setenv("DG_SOME_SETTING", "7")
    seen = []

    @testing.ignore_env("DG_SOME_SETTING", lambda: True)
    def fails():
        seen.append(os.environ.get("DG_SOME_SETTING"))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fails()
    assert seen == [None] and os.environ["DG_SOME_SETTING"] == "7"
    kept = testing.ignore_env("DG_SOME_SETTING", lambda: False)(lambda: os.environ.get("DG_SOME_SETTING"))
    assert kept() == "7"


def test_bench_kineto_checks_names_and_steps_aside_for_nvidia_tools(monkeypatch):
    with pytest.raises(TypeError, match="kernel_names"):
        testing.bench_kineto(lambda: None, ["gemm"])
    monkeypatch.setenv("DG_USE_NVIDIA_TOOLS", "1")
    assert testing.bench_kineto(lambda: None, "gemm") == 1
    assert testing.bench_kineto(lambda: None, ("a", "b")) == (1, 1)
