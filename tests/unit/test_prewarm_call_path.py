"""`mategemm prewarm --shapes` plans what the call path compiles: each suite kind's calls, made with
fake CUDA tensors up to their launch (fake_device), ask only for kernels the suite's plan holds.
The same check runs for real on a GPU in tests/gpu/test_prewarm_suites.py."""
import pytest
import torch

import mategemm
from fake_device import call, recorded_specs
from mategemm import prewarm, suites
from mategemm.kernels import sm90_fp8_gemm_blockscaled, sm90_fp8_gemv
from mategemm.runtime.device import SM90_NO_DEVICE

E4M3 = torch.float8_e4m3fn


def cuda(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="cuda")


def mn_major_scales(rows: int, k_blocks: int) -> torch.Tensor:
    """(k_blocks, rows) scales whose rows start 16-byte aligned (padded to 4 floats), as TMA reads them."""
    return torch.empty_strided((k_blocks, rows), (-(-rows // 4) * 4, 1), device="cuda")


def dense_calls(m: int, n: int, k: int, recipes) -> None:
    """gemm_fp8_nt_groupwise with K-major scales and with MN-major ones as TMA reads them."""
    k_blocks = -(-k // 128)
    for recipe in recipes:
        sb_rows = -(-n // 128) if recipe[1] == 128 else n
        a, b = cuda(m, k, dtype=E4M3), cuda(n, k, dtype=E4M3)
        call(mategemm.gemm_fp8_nt_groupwise, a, b, cuda(m, k_blocks), cuda(sb_rows, k_blocks),
             scale_granularity_mnk=recipe)
        call(mategemm.gemm_fp8_nt_groupwise, a, b, mn_major_scales(m, k_blocks), cuda(k_blocks, sb_rows),
             scale_major_mode="MN", scale_granularity_mnk=recipe)


def a_scales_by_tma(spec) -> bool:
    """The GEMM core instance's kTmaScales, its 17th template argument (optional ones may follow)."""
    args = spec.name_expr[spec.name_expr.index("<") + 1:-1].split(", ")
    return spec.kernel == sm90_fp8_gemm_blockscaled.KERNEL and args[16] == "true"


def assert_planned(suite: suites.Suite, asked: list, force: str = "") -> None:
    planned = {p.spec for p in prewarm.plan_suites([suite], "sm_90a", num_mp=SM90_NO_DEVICE.num_sms, force=force)}
    assert asked, "no kernel was requested"
    missing = sorted({spec.name_expr for spec in asked if spec not in planned})
    assert not missing, f"{suite.name}: called but not planned: {missing}"


@pytest.mark.parametrize("row", [{"m": m, "n": n, "k": k} for m in (1, 64, 200, 4096)
                                 for n, k in ((2112, 7168), (576, 7168), (4096, 512), (7168, 2112))], ids=str)
def test_dense(monkeypatch, row):
    m, n, k = row["m"], row["n"], row["k"]
    with recorded_specs(monkeypatch) as asked:
        dense_calls(m, n, k, ((1, 128, 128), (1, 1, 128)))
    # the GEMV where it pays, whatever the scales' layout
    if m <= sm90_fp8_gemv.MAX_ROWS and k >= sm90_fp8_gemv.MIN_K and n <= sm90_fp8_gemv.MAX_N:
        assert {spec.kernel for spec in asked} == {sm90_fp8_gemv.KERNEL}
    else:
        assert sum(a_scales_by_tma(spec) for spec in asked) == 1  # (1,128,128), MN-major: by TMA
    assert_planned(suites.Suite("dense_fp8", "dense", (row,)), asked)


def test_dense_with_a_scales_copied_for_tma(monkeypatch):
    """MATEGEMM_FORCE_CONFIG tma_scales=2: every (1,128,128) call asks for the TMA instance, which a
    prewarm with the same setting plans."""
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", "tma_scales=2")
    row = {"m": 333, "n": 2112, "k": 7168}
    with recorded_specs(monkeypatch) as asked:
        dense_calls(row["m"], row["n"], row["k"], ((1, 128, 128),))
    assert asked and all(a_scales_by_tma(spec) for spec in asked)
    assert_planned(suites.Suite("dense_fp8", "dense", (row,)), asked, force="tma_scales=2")


@pytest.mark.parametrize("row", [{"batch": 4, "m": 256, "n": 512, "k": 512},
                                 {"batch": 16, "m": 4096, "n": 4096, "k": 4096},
                                 {"batch": 128, "m": 512, "n": 128, "k": 512}], ids=str)
def test_bmm(monkeypatch, row):
    batch, m, n, k = row["batch"], row["m"], row["n"], row["k"]
    with recorded_specs(monkeypatch) as asked:
        a, b = cuda(batch, m, k, dtype=E4M3), cuda(batch, n, k, dtype=E4M3)
        scales = {(-1, -1, -1): (cuda(1), cuda(1)), (1, -1, -1): (cuda(batch, m), cuda(1)),
                  (1, 128, 128): (cuda(batch, m, k // 128), cuda(batch, -(-n // 128), k // 128)),
                  (1, 1, 128): (cuda(batch, m, k // 128), cuda(batch, n, k // 128))}
        for recipe, (sa, sb) in scales.items():
            call(mategemm.bmm_fp8, a, b, sa, sb, torch.bfloat16, scale_granularity_mnk=recipe)
        for dtype in (torch.bfloat16, torch.float16):
            call(mategemm.bmm_fp16, cuda(batch, m, k, dtype=dtype), cuda(batch, n, k, dtype=dtype), dtype)
    assert_planned(suites.Suite("bmm", "bmm", (row,)), asked)


def ragged_m(rows: int, n: int, k: int, experts: int, info, **kwargs) -> None:
    call(mategemm.ragged_m_moe_gemm_8bit, (cuda(rows, k, dtype=E4M3), cuda(rows, k // 128)),
         (cuda(experts, n, k, dtype=E4M3), cuda(experts, -(-n // 128), k // 128)), info,
         cuda(rows, n, dtype=torch.bfloat16), **kwargs)


@pytest.mark.parametrize("row", [{"groups": 4, "m_per_group": 8192, "n": 4096, "k": 7168},
                                 {"groups": 8, "m_per_group": 4096, "n": 7168, "k": 2048},
                                 {"groups": 4, "m_per_group": 100, "n": 512, "k": 512}], ids=str)
def test_contiguous(monkeypatch, row):
    groups = row["groups"]
    low, high = (-(-size // 128) * 128 for size in suites.group_size_range(row["m_per_group"]))
    with recorded_specs(monkeypatch) as asked:
        for rows in {groups * low, groups * (low + high) // 2 // 128 * 128, groups * high}:
            ragged_m(rows, row["n"], row["k"], groups, cuda(rows, dtype=torch.int32), gemm_mode="per_token",
                     alignment_m=128)
    assert_planned(suites.Suite("grouped_contiguous_fp8", "contiguous", (row,)), asked)


def test_contiguous_with_a_scales_by_tma(monkeypatch):
    """MATEGEMM_FORCE_CONFIG tma_scales=2: the stacked-token modes ask for TMA-scale instances (K-major
    scales copied, TMA-aligned MN-major ones read in place), which a prewarm with the setting plans."""
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", "tma_scales=2")
    row = {"groups": 4, "m_per_group": 100, "n": 512, "k": 512}
    rows = 4 * 128
    with recorded_specs(monkeypatch) as asked:
        ragged_m(rows, 512, 512, 4, cuda(rows, dtype=torch.int32), gemm_mode="per_token", alignment_m=128)
        call(mategemm.ragged_m_moe_gemm_8bit, (cuda(rows, 512, dtype=E4M3), mn_major_scales(rows, 4).t()),
             (cuda(4, 512, 512, dtype=E4M3), cuda(4, 4, 4)), cuda(rows, dtype=torch.int32),
             cuda(rows, 512, dtype=torch.bfloat16), gemm_mode="per_token", alignment_m=128)
    assert asked and all(a_scales_by_tma(spec) for spec in asked)
    assert_planned(suites.Suite("grouped_contiguous_fp8", "contiguous", (row,)), asked, force="tma_scales=2")


@pytest.mark.parametrize("row", [{"groups": 6, "m_per_group": 20, "n": 4096, "k": 7168},
                                 {"groups": 1, "m_per_group": 1024, "n": 7168, "k": 2048},
                                 {"groups": 32, "m_per_group": 192, "n": 4096, "k": 7168}], ids=str)
def test_masked(monkeypatch, row):
    groups, m, n, k = row["groups"], row["m_per_group"], row["n"], row["k"]
    with recorded_specs(monkeypatch) as asked:
        call(mategemm.masked_moe_gemm_8bit, (cuda(groups, m, k, dtype=E4M3), cuda(groups, m, k // 128)),
             (cuda(groups, n, k, dtype=E4M3), cuda(groups, n // 128, k // 128)), cuda(groups, dtype=torch.int32),
             cuda(groups, m, n, dtype=torch.bfloat16), expect_tokens=m)
    assert_planned(suites.Suite("grouped_masked_fp8", "masked", (row,)), asked)


def test_masked_with_a_scales_by_tma(monkeypatch):
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", "tma_scales=2")
    row = {"groups": 6, "m_per_group": 20, "n": 4096, "k": 7168}
    with recorded_specs(monkeypatch) as asked:
        call(mategemm.masked_moe_gemm_8bit, (cuda(6, 20, 7168, dtype=E4M3), cuda(6, 20, 56)),
             (cuda(6, 4096, 7168, dtype=E4M3), cuda(6, 32, 56)), cuda(6, dtype=torch.int32),
             cuda(6, 20, 4096, dtype=torch.bfloat16), expect_tokens=20)
    assert asked and all(a_scales_by_tma(spec) for spec in asked)
    assert_planned(suites.Suite("grouped_masked_fp8", "masked", (row,)), asked, force="tma_scales=2")


@pytest.mark.parametrize("row", [{"groups": 4, "k_per_group": 8192, "m": 4096, "n": 7168},
                                 {"groups": 16, "k_per_group": 1024, "m": 2048, "n": 7168},
                                 {"groups": 4, "k_per_group": 512, "m": 256, "n": 512}], ids=str)
def test_k_grouped(monkeypatch, row):
    groups, m, n = row["groups"], row["m"], row["n"]
    low, high = (-(-size // 128) * 128 for size in suites.group_size_range(row["k_per_group"]))
    with recorded_specs(monkeypatch) as asked:
        for sum_k in (groups * low, groups * high):
            a, b = cuda(sum_k, m, dtype=E4M3), cuda(sum_k, n, dtype=E4M3)
            scales = (cuda(sum_k // 128, m), cuda(sum_k // 128, n))
            counts, out = cuda(groups, dtype=torch.int32), cuda(groups, m, n)
            call(mategemm.ragged_k_moe_gemm_8bit, (a, scales[0]), (b, scales[1]), counts, out)  # M/N-major
            a_k, b_k = cuda(m, sum_k, dtype=E4M3).t(), cuda(n, sum_k, dtype=E4M3).t()
            call(mategemm.ragged_k_moe_gemm_8bit, (a_k, scales[0]), (b_k, scales[1]), counts, out, major_a_mode="K",
                 major_b_mode="K")
    assert_planned(suites.Suite("grouped_k_fp8", "k_grouped", (row,)), asked)


@pytest.mark.parametrize("next_n,heads", [(1, 32), (1, 64), (2, 64), (4, 64)])
def test_indexer(monkeypatch, next_n, heads):
    row = {"batch": 64, "next_n": next_n, "heads": heads, "index_dim": 128, "block_kv": 64, "avg_context": 8192}
    batch, blocks = row["batch"], 256
    with recorded_specs(monkeypatch) as asked:
        lens = cuda(batch, dtype=torch.int32)
        for clean in (True, False):
            call(mategemm.fp8_paged_mqa_logits, cuda(batch, next_n, heads, 128, dtype=E4M3),
                 cuda(batch * blocks, 64, 1, 132, dtype=torch.uint8), cuda(batch * next_n, heads), lens,
                 cuda(batch, blocks, dtype=torch.int32), cuda(SM90_NO_DEVICE.num_sms + 1, 2, dtype=torch.int32),
                 blocks * 64, clean)
    assert_planned(suites.Suite("paged_mqa_logits", "indexer", (row,)), asked)


@pytest.mark.parametrize("model", [{"model": "deepseek_v3", "hidden": 7168, "intermediate": 2048, "experts": 256,
                                    "topk": 8, "tokens": [1, 16, 128, 4096]},
                                   {"model": "small", "hidden": 512, "intermediate": 256, "experts": 16, "topk": 4,
                                    "tokens": [1, 7, 300]}], ids=lambda m: m["model"])
def test_moe_layers(monkeypatch, model):
    experts, topk = model["experts"], model["topk"]
    with recorded_specs(monkeypatch) as asked:
        for _, n, k in prewarm.MoeLayer(experts, topk, model["hidden"], model["intermediate"]).gemms:
            for tokens in model["tokens"]:
                ragged_m(tokens * topk, n, k, experts, cuda(experts, dtype=torch.int32), gemm_mode="per_expert")
                low, high = prewarm.per_token_row_bounds(tokens, experts, topk, 128)
                for rows in (low, high):
                    ragged_m(rows, n, k, experts, cuda(rows, dtype=torch.int32), gemm_mode="per_token",
                             alignment_m=128)
    assert_planned(suites.Suite("moe_layers", "moe_layers", (model,)), asked)


@pytest.mark.parametrize("row", [{"active_experts": 32, "tokens_per_expert": t, "n": n, "k": k}
                                 for t in (1, 64, 65, 4096) for n, k in ((4096, 7168), (2048, 768))], ids=str)
def test_nvfp4(monkeypatch, row):
    """tools/bench.py nvfp4's mategemm calls: the MAX form (device and host counts), the Pythonic
    form, and the FP8 per_expert GEMM of the same shape."""
    groups, tokens, n, k = row["active_experts"], row["tokens_per_expert"], row["n"], row["k"]
    rows, u8 = groups * tokens, torch.uint8
    with recorded_specs(monkeypatch) as asked:
        a, b = cuda(rows, k // 2, dtype=u8), cuda(groups, n, k // 2, dtype=u8)
        sa, sb = cuda(rows, -(-k // 64), 32, 4, 4, dtype=E4M3), cuda(groups, -(-n // 128), -(-k // 64), 32, 4, 4,
                                                                         dtype=E4M3)
        offsets, ids, scales = cuda(groups + 1, dtype=torch.int32), cuda(groups, dtype=torch.int32), cuda(groups)
        out = cuda(rows, n, dtype=torch.bfloat16)
        for count in (cuda(1, dtype=torch.int32), groups):
            call(mategemm.grouped_matmul_dynamic_scaled_nvfp4, out, a, b, sa, sb, offsets,
                 cuda(groups, dtype=torch.int32), ids, scales, count)
        call(mategemm.nvfp4_grouped_gemm, a, b, sa, sb, offsets, ids, scales, out=out)
        ragged_m(rows, n, k, groups, cuda(groups, dtype=torch.int32), gemm_mode="per_expert")
    assert_planned(suites.Suite("nvfp4_moe", "nvfp4", (row,)), asked)


@pytest.mark.parametrize("name", ["deepseek_v3", "qwen3_30b_a3b"])
def test_preset(monkeypatch, name):
    """A model's calls at a sweep of token counts ask only for kernels its preset plan holds."""
    preset, max_tokens = prewarm.load_preset(name), 600
    planned = {p.spec for p in prewarm.plan_preset(preset, max_tokens, "sm_90a")}
    layer, recipe = preset.moe, (1, 128, 128)
    with recorded_specs(monkeypatch) as asked:
        for tokens in (1, 3, 8, 9, 64, 129, 256, 257, 511, 600):
            for dense in preset.dense:
                dense_calls(tokens, dense.n, dense.k, (recipe,))
            experts, topk = layer.num_experts, layer.top_k
            for _, n, k in layer.gemms:
                ragged_m(tokens * topk, n, k, experts, cuda(experts, dtype=torch.int32), gemm_mode="per_expert")
                for rows in prewarm.per_token_row_bounds(tokens, experts, topk, layer.alignment_m):
                    ragged_m(rows, n, k, experts, cuda(rows, dtype=torch.int32), gemm_mode="per_token",
                             alignment_m=layer.alignment_m)
                call(mategemm.masked_moe_gemm_8bit, (cuda(experts, max_tokens, k, dtype=E4M3),
                                                     cuda(experts, max_tokens, k // 128)),
                     (cuda(experts, n, k, dtype=E4M3), cuda(experts, n // 128, k // 128)),
                     cuda(experts, dtype=torch.int32), cuda(experts, max_tokens, n, dtype=torch.bfloat16),
                     expect_tokens=-(-tokens * topk // experts))
        if preset.indexer is not None:
            heads = preset.indexer.heads
            for next_n in preset.indexer.next_n:
                call(mategemm.fp8_paged_mqa_logits, cuda(4, next_n, heads, 128, dtype=E4M3),
                     cuda(64, 64, 1, 132, dtype=torch.uint8), cuda(4 * next_n, heads), cuda(4, dtype=torch.int32),
                     cuda(4, 16, dtype=torch.int32), cuda(SM90_NO_DEVICE.num_sms + 1, 2, dtype=torch.int32), 1024, True)
            seq = 300
            call(mategemm.fp8_mqa_logits, cuda(seq, heads, 128, dtype=E4M3), (cuda(seq, 128, dtype=E4M3), cuda(seq)),
                 cuda(seq, heads), cuda(seq, dtype=torch.int32), cuda(seq, dtype=torch.int32))
    missing = sorted({spec.name_expr for spec in asked if spec not in planned})
    assert asked and not missing, missing
    if preset.indexer is not None:
        assert any(spec.kernel == "sm90_fp8_mqa_logits" for spec in asked)


@pytest.mark.parametrize("n", (4096, 4104))
def test_dense_fp8_output(monkeypatch, n):
    """An FP8 output: stored by the dense kernel where n % 16 == 0, else through bmm's fp32 path
    (batch 1); prewarm.plan_dense with out_dtype e4m3 plans what either asks for."""
    m, k = 200, 7168
    with recorded_specs(monkeypatch) as asked:
        for recipe in ((1, 128, 128), (1, 1, 128)):
            sb_rows = -(-n // 128) if recipe[1] == 128 else n
            call(mategemm.gemm_fp8_nt_groupwise, cuda(m, k, dtype=E4M3), cuda(n, k, dtype=E4M3), cuda(m, k // 128),
                 cuda(sb_rows, k // 128), scale_granularity_mnk=recipe, output_scale=cuda(1))
    assert len(asked) == 2
    assert all(("kOutE4M3" in spec.name_expr) == (n % 16 == 0) for spec in asked)
    planned = {p.spec for p in prewarm.plan_dense([(m, n, k)], "sm_90a", out_dtype=E4M3,
                                                  num_mp=SM90_NO_DEVICE.num_sms)}
    assert not [spec.name_expr for spec in asked if spec not in planned]
