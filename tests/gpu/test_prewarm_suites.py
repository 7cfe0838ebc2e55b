"""`mategemm prewarm --shapes` plans what the calls pick: each suite kind's calls, made as
tools/bench.py makes them, ask the kernel cache only for kernels the suite's plan holds."""
import pytest
import torch

import mategemm
from mategemm import bmm, formats, gemm, moe as moe_api, prewarm, quant, suites
from mategemm.jit.cache import KernelCache
from mategemm.kernels import (sm90_fp8_gemm_blockscaled, sm90_fp8_mqa_logits,
                              transpose_8bit)
from mategemm.runtime.device import get_num_mp
from mategemm.testing import indexer as indexer_testing
from mategemm.testing import make_fp8_gemm_inputs, moe

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
E4M3 = torch.float8_e4m3fn


@pytest.fixture
def requested(monkeypatch):
    """The specs the call path asks the kernel cache for, with every in-process memo emptied."""
    asked = []
    real_get = KernelCache.get

    def get(self, spec):
        asked.append(spec)
        return real_get(self, spec)

    monkeypatch.setattr(KernelCache, "get", get)
    for module in (sm90_fp8_gemm_blockscaled, sm90_fp8_mqa_logits, transpose_8bit):  # (NVFP4 loads through the core's)
        monkeypatch.setattr(module, "_loaded", {})
    monkeypatch.setattr(gemm, "_warm", type(gemm._warm)())
    for module in (bmm, formats, moe_api):
        monkeypatch.setattr(module, "_warm", type(module._warm)())
    return asked


def check_planned(suite: suites.Suite, asked: list) -> None:
    planned = {p.spec for p in prewarm.plan_suites([suite], "sm_90a", num_mp=get_num_mp())}
    assert asked, "no kernel was requested"
    missing = [spec.name_expr for spec in asked if spec not in planned]
    assert not missing, f"{suite.name}: called but not planned: {missing}"


def test_dense(requested):
    rows = ({"m": 1, "n": 2112, "k": 7168}, {"m": 200, "n": 576, "k": 7168}, {"m": 4096, "n": 4096, "k": 512})
    for row in rows:
        for recipe in ((1, 128, 128), (1, 1, 128)):
            a, b, sa, sb = make_fp8_gemm_inputs(row["m"], row["n"], row["k"], recipe)
            mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, scale_granularity_mnk=recipe)
    check_planned(suites.Suite("dense", "dense", rows), requested)


def test_bmm(requested):
    row = {"batch": 4, "m": 256, "n": 512, "k": 512}
    batch, m, n, k = row["batch"], row["m"], row["n"], row["k"]
    a = torch.randn(batch, m, k, device="cuda").to(E4M3)
    b = torch.randn(batch, n, k, device="cuda").to(E4M3)
    ones = lambda *shape: torch.ones(shape, device="cuda")  # noqa: E731
    scales = {(-1, -1, -1): (ones(1), ones(1)), (1, -1, -1): (ones(batch, m), ones(1)),
              (1, 128, 128): (ones(batch, m, k // 128), ones(batch, n // 128, k // 128)),
              (1, 1, 128): (ones(batch, m, k // 128), ones(batch, n, k // 128))}
    for recipe, (sa, sb) in scales.items():
        mategemm.bmm_fp8(a, b, sa, sb, torch.bfloat16, scale_granularity_mnk=recipe)
    for dtype in (torch.bfloat16, torch.float16):
        mategemm.bmm_fp16(a.to(dtype), b.to(dtype), dtype)
    check_planned(suites.Suite("bmm", "bmm", (row,)), requested)


def test_contiguous(requested):
    row = {"groups": 4, "m_per_group": 512, "n": 512, "k": 512}
    b, sfb = moe.make_expert_weights(row["groups"], row["n"], row["k"])
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        ids, _ = moe.per_token_layout(moe.deepgemm_group_sizes(row["groups"], row["m_per_group"], gen), 128)
        a, sfa = moe.make_tokens(ids.numel(), row["k"])
        out = torch.empty((ids.numel(), row["n"]), dtype=torch.bfloat16, device="cuda")
        mategemm.ragged_m_moe_gemm_8bit((a, sfa), (b, sfb), ids, out, gemm_mode="per_token", alignment_m=128)
    check_planned(suites.Suite("grouped_contiguous", "contiguous", (row,)), requested)


def test_masked(requested):
    row = {"groups": 6, "m_per_group": 20, "n": 512, "k": 512}
    groups, m, n, k = row["groups"], row["m_per_group"], row["n"], row["k"]
    a, sfa = moe.make_tokens(groups * m, k)
    b, sfb = moe.make_expert_weights(groups, n, k)
    masked_m = torch.full((groups,), m, dtype=torch.int32, device="cuda")
    out = torch.empty((groups, m, n), dtype=torch.bfloat16, device="cuda")
    mategemm.masked_moe_gemm_8bit((a.view(groups, m, k), sfa.view(groups, m, k // 128)), (b, sfb), masked_m, out,
                                  expect_tokens=m)
    check_planned(suites.Suite("grouped_masked", "masked", (row,)), requested)


def test_k_grouped(requested):
    row = {"groups": 4, "k_per_group": 512, "m": 256, "n": 512}
    groups, m, n = row["groups"], row["m"], row["n"]
    ks = [moe.align(c, 128) for c in moe.deepgemm_group_sizes(groups, row["k_per_group"])]
    counts = torch.tensor(ks, dtype=torch.int32, device="cuda")
    a, sfa = moe.make_k_grouped_operand(sum(ks), m)
    b, sfb = moe.make_k_grouped_operand(sum(ks), n)
    out = torch.zeros((groups, m, n), dtype=torch.float32, device="cuda")
    mategemm.ragged_k_moe_gemm_8bit((moe.k_major(a), sfa), (moe.k_major(b), sfb), counts, out, major_a_mode="K",
                                    major_b_mode="K")
    mategemm.ragged_k_moe_gemm_8bit((a, sfa), (b, sfb), counts, out)
    check_planned(suites.Suite("grouped_k", "k_grouped", (row,)), requested)


@pytest.mark.parametrize("next_n,heads", [(1, 64), (2, 32)])
def test_indexer(requested, next_n, heads):
    row = {"batch": 3, "next_n": next_n, "heads": heads, "index_dim": 128, "block_kv": 64, "avg_context": 300}
    case = indexer_testing.make_paged_case(3, next_n, heads, [200, 300, 400], device="cuda")
    meta = mategemm.get_paged_mqa_logits_metadata(case["context_lens"], 64)
    for clean in (True, False):
        mategemm.fp8_paged_mqa_logits(case["q"], case["fused_kv_cache"], case["weights"], case["context_lens"],
                                      case["block_table"], meta, case["max_context_len"], clean)
    check_planned(suites.Suite("paged_mqa_logits", "indexer", (row,)), requested)


def test_moe_layers(requested):
    row = {"model": "small", "hidden": 512, "intermediate": 256, "experts": 16, "topk": 4, "tokens": [1, 7, 300]}
    for name, n, k in prewarm.MoeLayer(16, 4, 512, 256).gemms:
        b, sfb = moe.make_expert_weights(16, n, k)
        for tokens in row["tokens"]:
            counts = moe.routing_counts(tokens, 16, 4, generator=torch.Generator().manual_seed(tokens))
            count_t, _ = moe.packed_layout(counts)
            a, sfa = moe.make_tokens(sum(counts), k)
            out = torch.empty((sum(counts), n), dtype=torch.bfloat16, device="cuda")
            mategemm.ragged_m_moe_gemm_8bit((a, sfa), (b, sfb), count_t, out, gemm_mode="per_expert")
            ids, _ = moe.per_token_layout(counts, 128)
            a, sfa = moe.make_tokens(ids.numel(), k)
            out = torch.empty((ids.numel(), n), dtype=torch.bfloat16, device="cuda")
            mategemm.ragged_m_moe_gemm_8bit((a, sfa), (b, sfb), ids, out, gemm_mode="per_token", alignment_m=128)
    check_planned(suites.Suite("moe_layers", "moe_layers", (row,)), requested)



def test_nvfp4(requested):
    """tools/bench.py nvfp4's calls: the MAX form with the count on the host and on the GPU, the
    Pythonic form, the FP8 per_expert GEMM of the same shape."""
    row = {"active_experts": 4, "tokens_per_expert": 3, "n": 512, "k": 512}
    groups, tokens, n, k = row["active_experts"], row["tokens_per_expert"], row["n"], row["k"]
    offsets = list(range(0, groups * tokens + 1, tokens))
    a, a_scales, starts = quant.nvfp4_quantize(torch.randn((groups * tokens, k), device="cuda"), 1.0, offsets)
    b, b_scales = quant.nvfp4_quantize(torch.randn((groups, n, k), device="cuda"), 1.0)
    group_offsets = torch.tensor(offsets, dtype=torch.int32, device="cuda")
    ids, scales = torch.arange(groups, dtype=torch.int32, device="cuda"), torch.ones(groups, device="cuda")
    out = torch.empty((groups * tokens, n), dtype=torch.bfloat16, device="cuda")
    for count in (groups, torch.tensor([groups], dtype=torch.int32, device="cuda")):
        mategemm.grouped_matmul_dynamic_scaled_nvfp4(out, a, b, a_scales, b_scales, group_offsets, starts, ids, scales,
                                                     count)
    mategemm.nvfp4_grouped_gemm(a, b, a_scales, b_scales, group_offsets, ids, scales, out=out)
    a8, sfa = moe.make_tokens(groups * tokens, k)
    b8, sfb = moe.make_expert_weights(groups, n, k)
    counts = torch.full((groups,), tokens, dtype=torch.int32, device="cuda")
    mategemm.ragged_m_moe_gemm_8bit((a8, sfa), (b8, sfb), counts, out, gemm_mode="per_expert")
    check_planned(suites.Suite("nvfp4_moe", "nvfp4", (row,)), requested)
