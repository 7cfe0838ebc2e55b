"""Grouped (MoE) entry points without a GPU: argument checks and the grouped heuristic."""
import pytest
import torch

import mategemm
from mategemm.heuristics import grouped
from mategemm.runtime.device import SM90_NO_DEVICE
from mategemm.types import RECIPE_1x128_128x128, RECIPE_1x128_1x128, GemmProblem

E4M3 = torch.float8_e4m3fn


def ragged_m_args(rows=256, e=4, n=256, k=256, mode="per_token"):
    a = torch.zeros((rows, k), dtype=E4M3)
    sfa = torch.ones((rows, k // 128))
    b = torch.zeros((e, n, k), dtype=E4M3)
    sfb = torch.ones((e, -(-n // 128), k // 128))
    info = torch.zeros((rows if mode == "per_token" else e,), dtype=torch.int32)
    out = torch.empty((rows, n), dtype=torch.bfloat16)
    return (a, sfa), (b, sfb), info, out


@pytest.mark.parametrize("change,error,match", [
    (lambda args: args.update(gemm_mode="per_row"), ValueError, "gemm_mode"),
    (lambda args: args.update(alignment_m=64), ValueError, "alignment_m"),
    (lambda args: args.update(scale_granularity_mnk=(1, 128, 64)), ValueError, "scale_granularity_mnk"),
    (lambda args: args.update(input_a=args["input_a"][0]), TypeError, "input_a"),
    (lambda args: args.update(ragged_tokens_info=args["ragged_tokens_info"].long()), TypeError, "ragged_tokens_info"),
    (lambda args: args.update(ragged_tokens_info=args["ragged_tokens_info"][:7]), ValueError, "ragged_tokens_info"),
    (lambda args: args.update(out=args["out"][:, :128]), ValueError, "out"),
    (lambda args: args.update(out=args["out"].float()), TypeError, "out"),
    (lambda args: args.update(input_b=(args["input_b"][0][:, :, :128], args["input_b"][1])), ValueError, "input_b"),
    (lambda args: args.update(input_b=(args["input_b"][0], args["input_b"][1][:, :, :1])), ValueError, r"input_b\[1\]"),
    (lambda args: args.update(num_mp=0), ValueError, "num_mp"),
])
def test_ragged_m_rejects_bad_arguments(change, error, match):
    input_a, input_b, info, out = ragged_m_args()
    args = dict(input_a=input_a, input_b=input_b, ragged_tokens_info=info, out=out)
    change(args)
    with pytest.raises(error, match=match):
        mategemm.ragged_m_moe_gemm_8bit(**args)


def test_ragged_m_too_many_experts():
    input_a, _, info, out = ragged_m_args(mode="per_expert")
    b = torch.zeros((1025, 16, 256), dtype=E4M3)
    with pytest.raises(ValueError, match="experts"):
        mategemm.ragged_m_moe_gemm_8bit(input_a, (b, torch.ones((1025, 1, 2))), info, out, gemm_mode="per_expert")


def test_masked_rejects_bad_arguments():
    a = torch.zeros((2, 64, 256), dtype=E4M3)
    sfa = torch.ones((2, 64, 2))
    b = torch.zeros((3, 256, 256), dtype=E4M3)
    sfb = torch.ones((3, 2, 2))
    masked = torch.zeros((2,), dtype=torch.int32)
    with pytest.raises(ValueError, match="experts"):
        mategemm.masked_moe_gemm_8bit((a, sfa), (b, sfb), masked, None)
    b, sfb = b[:2], sfb[:2]
    with pytest.raises(ValueError, match="signal"):
        mategemm.masked_moe_gemm_8bit((a, sfa), (b, sfb), masked, None, signal=torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="signal"):
        mategemm.masked_moe_gemm_8bit((a, sfa), (b, sfb), masked, None, enable_overlap=True,
                                      signal=torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="expect_tokens"):
        mategemm.masked_moe_gemm_8bit((a, sfa), (b, sfb), masked, None, expect_tokens=-1)
    with pytest.raises(TypeError, match="out_dtype"):
        mategemm.batch_deepgemm_fp8_nt_groupwise(a, b, sfa, sfb, masked, 8, out_dtype=torch.float32)


def test_ragged_k_rejects_bad_arguments():
    a = torch.zeros((512, 128), dtype=E4M3)
    b = torch.zeros((512, 256), dtype=E4M3)
    sfa, sfb = torch.ones((4, 128)), torch.ones((4, 256))
    out = torch.zeros((2, 128, 256))
    with pytest.raises(ValueError, match="multiple of 128"):
        mategemm.ragged_k_moe_gemm_8bit((a, sfa), (b, sfb), torch.tensor([100, 156], dtype=torch.int32), out)
    with pytest.raises(ValueError, match="sums to"):
        mategemm.ragged_k_moe_gemm_8bit((a, sfa), (b, sfb), torch.tensor([384, 256], dtype=torch.int32), out)
    with pytest.raises(ValueError, match="scale_granularity_mnk"):
        mategemm.ragged_k_moe_gemm_8bit((a, sfa), (b, sfb), torch.tensor([128, 128], dtype=torch.int32), out,
                                        scale_granularity_mnk=(1, 128, 128))
    with pytest.raises(TypeError, match="out"):
        mategemm.ragged_k_moe_gemm_8bit((a, sfa), (b, sfb), torch.tensor([128, 128], dtype=torch.int32),
                                        out.bfloat16())
    with pytest.raises(ValueError, match="major_a_mode"):
        mategemm.ragged_k_moe_gemm_8bit((a, sfa), (b, sfb), torch.tensor([128, 128], dtype=torch.int32), out,
                                        major_a_mode="N")


def problem(mode, m=4096, n=4096, k=7168, groups=256, recipe=RECIPE_1x128_128x128):
    out = torch.float32 if mode == "ragged_k" else torch.bfloat16
    return GemmProblem(m, n, k, recipe, E4M3, E4M3, out, mode, groups)


@pytest.mark.parametrize("rows", (1, 8, 64, 200, 4096))
def test_grouped_heuristic_respects_the_kernel_limits(rows):
    for mode in ("per_token", "per_expert", "psum_expert", "masked"):
        config = grouped.choose(problem(mode, m=256 * rows), rows, SM90_NO_DEVICE, 132, "",
                                128 if mode == "per_token" else 0, rows if mode == "masked" else 0)
        assert config.cluster_m == 1 and config.num_splits == 1
        assert mode != "per_token" or config.block_m <= 2 * 128  # a tile spans at most two segments
        assert config.smem_bytes <= SM90_NO_DEVICE.smem_per_block
    config = grouped.choose(problem("ragged_k", k=8 * rows * 128, groups=8, recipe=RECIPE_1x128_1x128), rows * 128,
                            SM90_NO_DEVICE, 132)
    assert config.block_m <= 128 and config.block_n <= 128


def test_grouped_heuristic_small_rows_pick_small_tiles():
    assert grouped.choose(problem("per_expert", m=256 * 4), 4, SM90_NO_DEVICE, 132).block_m == 64
    assert grouped.choose(problem("per_expert", m=8 * 8192), 8192, SM90_NO_DEVICE, 132).block_m >= 128


def test_grouped_force_config_errors():
    with pytest.raises(ValueError, match="cluster_m"):
        grouped.choose(problem("masked"), 64, SM90_NO_DEVICE, 132, "cluster_m=2")
    with pytest.raises(ValueError, match="num_splits"):
        grouped.choose(problem("masked"), 64, SM90_NO_DEVICE, 132, "num_splits=2")
    with pytest.raises(ValueError, match="block_m"):
        grouped.choose(problem("per_token"), 64, SM90_NO_DEVICE, 132, "block_m=512", 128)
