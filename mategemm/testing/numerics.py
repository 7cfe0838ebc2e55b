"""calc_diff and the one tolerance table every test uses."""
from __future__ import annotations

import torch

# calc_diff bounds per (kernel family, output dtype).
# NOTES: the reference is exact on the dequantised FP8 inputs (fp64); what is left is the
# rounding of the output (bf16: 8 bits, calc_diff ~ 1e-6; fp16: 11 bits, ~ 1e-7) and the
# tensor cores' reduced-precision accumulation inside each 32-deep wgmma (DeepSeek-V3 report).
# A wrong scale, row or column gives calc_diff > 1e-2.
TOLERANCE = {
    ("fp8_gemm", torch.bfloat16): 2e-5,
    ("fp8_gemm", torch.float16): 1e-5,
    # the MoE layer against testing.moe_layer.fused_moe_reference, which follows its roundings; GEMM1
    # accumulates in fp32 there and in float64 here, so an activation near an FP8 rounding boundary
    # can round to the neighbouring e4m3 value (~6% apart): H200, 2.2e-5 to 4.1e-5 on the tests' cases
    ("fused_moe", torch.bfloat16): 1e-4,
    # the same with at most 64 routed pairs: one such flip is a large share of so few values (H100, 40
    # fresh draws each: 1 token on 1 of 4 experts median 6.2e-7, 4 above 1e-4, max 5.3e-3; 64 tokens,
    # topk 1, weights on the input: median 1.9e-5, 4 above 1e-4, max 6.1e-4). A wrong expert, row or
    # scale still gives far more.
    ("fused_moe_few_pairs", torch.bfloat16): 1e-2,
    # the lightning indexer against testing.indexer's references: FP8 products are exact, the sums
    # over the head dimension and the heads are fp32; bf16 logits add their own rounding
    ("mqa_logits", torch.float32): 1e-5,
    ("mqa_logits", torch.bfloat16): 2e-5,
    # NVFP4 against testing.nvfp4.grouped_nvfp4_reference: every product is exact in bf16 and the
    # bf16 wgmma accumulate in fp32, so only the output's rounding is left (bf16: ~6e-7, fp16: ~4e-8)
    ("nvfp4_gemm", torch.bfloat16): 4e-6,
    ("nvfp4_gemm", torch.float16): 4e-7,
}


def calc_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """1 - cosine-style similarity: 1 - 2<x,y> / (|x|^2 + |y|^2), in float64. 0 means equal.

    NaN or inf in either tensor gives inf, so it can never pass a tolerance.
    """
    x = x.double()
    y = y.double()
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        return float("inf")
    denominator = (x * x + y * y).sum()
    if denominator == 0:
        return 0.0
    return float(1 - 2 * (x * y).sum() / denominator)


def assert_close(out: torch.Tensor, ref: torch.Tensor, family: str, what: str = "") -> float:
    tol = TOLERANCE[(family, out.dtype)]
    diff = calc_diff(out, ref)
    assert diff <= tol, f"{what}: calc_diff {diff:.3e} > {tol:.1e}"
    return diff
