"""tools/bench.py nvfp4's pure parts, without a GPU: the suite's rows, the torch peer's dequantisation
(exact against mategemm.testing.nvfp4), the bytes each implementation is credited with, the summary."""
from pathlib import Path

import pytest
import torch

from benchkit import nvfp4_suite, registry
from mategemm import quant
from mategemm.testing import nvfp4 as ref

SHAPES = Path(__file__).resolve().parents[2] / "mategemm" / "shapes" / "shapes.json"


def test_rows_name_their_model_and_gemm():
    rows = nvfp4_suite.suite_rows(SHAPES)
    assert len(rows) == 36 and all(set(r) == set(nvfp4_suite.ROW_FIELDS) for r in rows)
    deepseek_w1 = [r for r in rows if (r["model"], r["gemm"]) == ("deepseek_v3", "w1")]
    assert [r["tokens_per_expert"] for r in deepseek_w1] == [1, 4, 16, 64, 256, 4096]
    assert {(r["n"], r["k"]) for r in deepseek_w1} == {(4096, 7168)}
    assert {(r["n"], r["k"]) for r in rows if (r["model"], r["gemm"]) == ("qwen3_30b_a3b", "w2")} == {(2048, 768)}


def test_the_suite_is_runnable_measured_and_plotted():
    assert registry.RUNNERS["nvfp4"] is nvfp4_suite.bench_nvfp4
    assert "nvfp4" in registry.SUITES and "nvfp4" not in registry.UNMEASURED_SUITES
    assert registry.PLOTS["nvfp4"] is nvfp4_suite.plot_nvfp4


@pytest.mark.parametrize("rows,k", [(256, 64), (5, 96), (130, 1056)])
def test_dequantisation_is_exact(rows, k):
    gen = torch.Generator().manual_seed(rows + k)
    w = torch.randn((2, rows, k), generator=gen) * torch.logspace(-2, 2, rows).view(1, rows, 1)
    packed, scales = quant.nvfp4_quantize(w, torch.tensor([1.0, 4.0]))
    got = nvfp4_suite.dequantize_bf16(packed, scales, rows)
    assert got.dtype == torch.bfloat16 and got.shape == (2, rows, k)
    assert torch.equal(got.double(), ref.nvfp4_dequantize(packed, scales, 1.0))
    factor = torch.tensor([0.5, 2.0])
    assert torch.equal(nvfp4_suite.dequantize_bf16(packed, scales, rows, factor).double(),
                       ref.nvfp4_dequantize(packed, scales, 1.0) * factor.double().view(2, 1, 1))


def test_tokens_of_equal_groups_dequantise_per_group():
    """The suite's token rows: groups of equal size, each from a new 128-row scale tile."""
    groups, tokens, k = 3, 130, 64
    x = torch.randn((groups * tokens, k), generator=torch.Generator().manual_seed(5))
    offsets = list(range(0, groups * tokens + 1, tokens))
    a, a_scales, starts = quant.nvfp4_quantize(x, 1.0, offsets)
    assert starts.tolist() == [0, 2, 4]
    got = nvfp4_suite.dequantize_bf16(a.view(groups, tokens, k // 2), a_scales.view(groups, -1, *a_scales.shape[1:]),
                                      tokens).view(-1, k)
    for g in range(groups):
        rows = slice(g * tokens, (g + 1) * tokens)
        want = ref.nvfp4_dequantize(a[rows], a_scales[2 * g:2 * g + 2], 1.0)
        assert torch.equal(got[rows].double(), want)


def test_bytes_credited():
    row = {"active_experts": 32, "tokens_per_expert": 4, "n": 4096, "k": 7168}
    nbytes = nvfp4_suite.row_bytes(row)
    weights = 32 * 4096 * 7168 * (1 / 2 + 1 / 16)
    assert nbytes["weights"] == weights
    assert nbytes["mategemm_nvfp4"] == weights + 128 * 7168 * (1 / 2 + 1 / 16) + 128 * 4096 * 2
    assert nbytes["mategemm_fp8"] > nbytes["mategemm_nvfp4"] > nbytes["weights"]
    assert nbytes["torch_grouped_bf16"] == 2 * (128 * 7168 + 32 * 4096 * 7168) + 128 * 4096 * 2


def test_summary():
    rows = [{"tokens_per_expert": 1, "mategemm_nvfp4_ms": 1.0, "mategemm_fp8_ms": 1.5, "torch_grouped_bf16_ms": 3.0,
             "mategemm_nvfp4_weight_gbps": 2000.0},
            {"tokens_per_expert": 64, "mategemm_nvfp4_ms": 2.0, "mategemm_fp8_ms": 2.0, "dequant_pipeline_ms": 10.0,
             "mategemm_nvfp4_weight_gbps": 1500.0},
            {"tokens_per_expert": 4096, "mategemm_nvfp4_ms": 5.0, "mategemm_fp8_ms": 2.5}]
    summary = nvfp4_suite.nvfp4_summary(rows, 3.0)
    assert round(summary["decode_geomean_vs_mategemm_fp8"], 4) == round(1.5 ** 0.5, 4)
    assert round(summary["all_geomean_vs_mategemm_fp8"], 4) == round((1.5 * 0.5) ** (1 / 3), 4)
    assert summary["decode_geomean_vs_torch_grouped_bf16"] == 3.0 and summary["decode_geomean_vs_dequant_pipeline"] == 5
    assert summary["decode_weight_gbps_max"] == 2000.0 and summary["decode_weight_gbps_median"] == 2000.0
    assert summary["decode_weight_share_of_copy_max"] == round(2000 / 3000, 4)
