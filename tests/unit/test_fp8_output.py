"""An FP8 (e4m3) output stored by the GEMM kernel itself (result / output_scale, rounded in its
epilogue) where n % 16 == 0, through an fp32 tensor otherwise: the plan's choice, the tile widths
it allows, and the call path on CPU tensors up to the recorded launch."""
import dataclasses

import pytest
import torch

import mategemm
from mategemm import bmm, gemm, plan
from mategemm.heuristics import fp8_gemm, grouped
from mategemm.runtime.device import SM90_NO_DEVICE
from mategemm.testing import make_fp8_gemm_inputs
from mategemm.types import RECIPE_1x128_128x128, RECIPE_1x128_1x128, GemmProblem, Recipe
from test_warm_path import stubbed  # noqa: F401 - the fixture

E4M3 = torch.float8_e4m3fn


@pytest.mark.parametrize("n,stored", [(4096, True), (2112, True), (4104, False), (576, True), (8, False)])
def test_the_kernel_stores_fp8_rows_tma_can_write(n, stored):
    assert plan.fp8_out_stored(GemmProblem(64, n, 512, RECIPE_1x128_128x128, E4M3, E4M3, E4M3)) == stored
    batched = plan.batched_problem(GemmProblem(64, n, 512, RECIPE_1x128_128x128, E4M3, E4M3, E4M3, "batched", 4),
                                   add_c=False)
    assert batched.out_dtype == (E4M3 if stored else torch.float32)
    with_c = plan.batched_problem(GemmProblem(64, n, 512, RECIPE_1x128_128x128, E4M3, E4M3, E4M3, "batched", 4),
                                  add_c=True)
    assert with_c.out_dtype == torch.float32


@pytest.mark.parametrize("num_mp", (132, 77, 8, 1))
@pytest.mark.parametrize("m,n,k", [(1, 2112, 7168), (64, 576, 7168), (128, 4096, 512), (4096, 7168, 16384),
                                   (4096, 2112, 7168), (300, 1040, 2048)])
def test_fp8_output_tiles_are_whole_swizzle_chunks(m, n, k, num_mp):
    """One-byte outputs: BLOCK_N a multiple of 32 (the narrowest swizzled chunk), the widest swizzle
    that divides it, and the staging tile counted at one byte per value."""
    for recipe in (RECIPE_1x128_128x128, RECIPE_1x128_1x128):
        problem = GemmProblem(m, n, k, recipe, E4M3, E4M3, E4M3)
        config = fp8_gemm.choose(problem, SM90_NO_DEVICE, num_mp)
        assert config.block_n % 32 == 0 and config.block_n % config.out_swizzle == 0
        split_cluster = config.num_splits if config.split_in_cluster else 1
        bf16 = fp8_gemm.smem_bytes(config.block_m, config.block_n, config.stages, recipe.gn,
                                   split_cluster=split_cluster)
        assert config.smem_bytes == bf16 - config.block_m * config.block_n
    for recipe in (RECIPE_1x128_128x128, RECIPE_1x128_1x128, Recipe(1, -1, -1)):
        problem = GemmProblem(m, n, k, recipe, E4M3, E4M3, E4M3, "batched", 4)
        config = grouped.choose(problem, m, SM90_NO_DEVICE, num_mp)
        assert config.block_n % 32 == 0 and config.block_n % config.out_swizzle == 0


def test_a_forced_tile_too_narrow_for_fp8_output_is_named():
    problem = GemmProblem(4096, 4096, 4096, RECIPE_1x128_128x128, E4M3, E4M3, E4M3)
    with pytest.raises(ValueError, match="multiples of 32"):
        fp8_gemm.choose(problem, SM90_NO_DEVICE, 132, "block_n=48")
    with pytest.raises(ValueError, match="multiples of 32"):
        grouped.choose(dataclasses.replace(problem, group_mode="batched", num_groups=2), 4096, SM90_NO_DEVICE, 132,
                       "block_n=48")


def test_dense_fp8_output_goes_to_the_kernel_with_its_scale(stubbed):  # noqa: F811
    """The launch gets the e4m3 output and output_scale's address, a warm call a new scale's."""
    _, kernel = stubbed
    a, b, sa, sb = make_fp8_gemm_inputs(64, 256, 640, device="cpu")
    for value in (2.0, 0.5):
        scale = torch.tensor([value])
        out = mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, output_scale=scale)
        assert out.dtype == E4M3 and out.shape == (64, 256)
        values = kernel.launches[-1][1]
        assert values[-1] == scale.data_ptr() and values[-5] == out.data_ptr()
    (call,) = gemm._warm._calls.values()
    assert call.launch.out_dtype == E4M3
    given = torch.empty((64, 256), dtype=E4M3)
    assert mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=given, output_scale=scale) is given


def test_bf16_output_passes_no_scale(stubbed):  # noqa: F811
    _, kernel = stubbed
    a, b, sa, sb = make_fp8_gemm_inputs(64, 256, 640, device="cpu")
    mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb)
    assert kernel.launches[-1][1][-1] == 0


def test_fp8_output_rows_tma_cannot_write_go_through_fp32(stubbed, monkeypatch):  # noqa: F811
    """n % 16 != 0: the batch-1 bmm adds its fp32 product into a workspace, then torch converts it
    (the stubbed kernel leaves the zeros: the output is zero)."""
    _, kernel = stubbed
    monkeypatch.setattr(bmm, "_warm", type(bmm._warm)())
    a, b, sa, sb = make_fp8_gemm_inputs(64, 264, 640, device="cpu")
    out = mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, output_scale=torch.tensor([2.0]))
    assert out.dtype == E4M3 and out.shape == (64, 264) and not out.float().any()
    (call,) = bmm._warm._calls.values()
    assert call.accumulates and kernel.launches[-1][1][-1] == 0


def test_bmm_fp8_output_is_stored_by_the_kernel(stubbed, monkeypatch):  # noqa: F811
    _, kernel = stubbed
    monkeypatch.setattr(bmm, "_warm", type(bmm._warm)())
    a = torch.zeros((3, 64, 256), dtype=E4M3)
    b = torch.zeros((3, 128, 256), dtype=E4M3)
    scale = torch.tensor([4.0])
    out = mategemm.bmm_fp8(a, b, torch.ones(1), torch.ones(1), E4M3, output_scale=scale)
    assert out.dtype == E4M3 and out.shape == (3, 64, 128)
    (call,) = bmm._warm._calls.values()
    assert not call.accumulates and kernel.launches[-1][1][-1] == scale.data_ptr()
