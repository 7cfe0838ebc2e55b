"""bmm_fp8 without a GPU: argument checks per recipe and the batched mode's heuristic and SASS."""
import pytest
import torch

import mategemm

E4M3 = torch.float8_e4m3fn
B, M, N, K = 3, 64, 256, 256


def args(recipe=(-1, -1, -1), **overrides):
    a = torch.zeros((B, M, K), dtype=E4M3)
    b = torch.zeros((B, N, K), dtype=E4M3)
    if recipe == (-1, -1, -1):
        sa, sb = torch.ones(()), torch.ones((B,))
    elif recipe == (1, -1, -1):
        sa, sb = torch.ones((B, M)), torch.ones((1,))
    elif recipe == (1, 128, 128):
        sa, sb = torch.ones((B, M, K // 128)), torch.ones((B, N // 128, K // 128))
    else:
        sa, sb = torch.ones((B, M, K // 128)), torch.ones((B, N, K // 128))
    values = dict(a=a, b=b, a_scale=sa, b_scale=sb, out_dtype=torch.bfloat16, scale_granularity_mnk=recipe)
    values.update(overrides)
    return values


@pytest.mark.parametrize("recipe", ((-1, -1, -1), (1, -1, -1), (1, 128, 128), (1, 1, 128)))
def test_valid_arguments_reach_the_device_check(recipe):
    with pytest.raises(ValueError, match="CUDA"):
        mategemm.bmm_fp8(**args(recipe))


@pytest.mark.parametrize("recipe", ((1, 128, 128), (1, 1, 128)))
def test_a_k_tail_takes_ceil_k_over_128_scale_blocks(recipe):
    """K-major operands with k = 336 (two whole 128-K blocks and a tail of 80): three scale blocks."""
    k = 336
    sa = torch.ones((B, M, 3))
    sb = torch.ones((B, N // 128 if recipe[1] == 128 else N, 3))
    operands = dict(a=torch.zeros((B, M, k), dtype=E4M3), b=torch.zeros((B, N, k), dtype=E4M3), a_scale=sa,
                    b_scale=sb)
    with pytest.raises(ValueError, match="CUDA"):
        mategemm.bmm_fp8(**args(recipe, **operands))
    with pytest.raises(ValueError, match="a_scale must have shape"):
        mategemm.bmm_fp8(**args(recipe, **{**operands, "a_scale": sa[:, :, :2]}))


@pytest.mark.parametrize("recipe,name,bad,match", [
    ((-1, -1, -1), "a_scale", torch.ones((2,)), "one fp32 scale"),
    ((1, -1, -1), "a_scale", torch.ones((B, M + 1)), r"a_scale must have shape \(3, 64\)"),
    ((1, 128, 128), "b_scale", torch.ones((B, N, K // 128)), r"b_scale must have shape \(3, 2, 2\)"),
    ((1, 1, 128), "b_scale", torch.ones((B, N // 128, K // 128)), r"b_scale must have shape \(3, 256, 2\)"),
    ((1, 128, 128), "a_scale", torch.ones((B, M, K // 128), dtype=torch.float16), "a_scale must have dtype"),
])
def test_scale_shapes_are_checked_per_recipe(recipe, name, bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        mategemm.bmm_fp8(**args(recipe, **{name: bad}))


@pytest.mark.parametrize("overrides,error,match", [
    (dict(scale_granularity_mnk=(1, 64, 128)), ValueError, "scale_granularity_mnk"),
    (dict(out_dtype=torch.int8), TypeError, "out_dtype"),
    (dict(out_dtype=torch.float8_e4m3fn), ValueError, "output_scale"),
    (dict(output_scale=torch.ones(())), ValueError, "output_scale"),
    (dict(major_a_mode="N"), ValueError, "major_a_mode"),
    (dict(b=torch.zeros((B, N, 200), dtype=E4M3)), ValueError, "share batch and K"),
    (dict(a=torch.zeros((B, M, 200), dtype=E4M3), b=torch.zeros((B, N, 200), dtype=E4M3)), ValueError,
     "multiple of 16"),
    (dict(a=torch.zeros((B, 192, M), dtype=E4M3), b=torch.zeros((B, N, 192), dtype=E4M3),
          major_a_mode="M"), ValueError, "multiple of 128 with an MN-major operand"),
    (dict(b=torch.zeros((B, 100, K), dtype=E4M3)), ValueError, "multiple of 8"),
    (dict(a=torch.zeros((B, K, M), dtype=E4M3).transpose(1, 2)), ValueError, "stride 1"),
    (dict(c=torch.zeros((B, M, N), dtype=torch.bfloat16)), TypeError, "c must have dtype"),
    (dict(c=torch.zeros((B, M, N + 8))), ValueError, "c must have shape"),
    (dict(out=torch.empty((B, M, N), dtype=torch.float16)), TypeError, "out.dtype"),
])
def test_bad_arguments(overrides, error, match):
    with pytest.raises(error, match=match):
        mategemm.bmm_fp8(**args(**overrides))


def test_major_modes_take_the_transposed_shapes():
    a = torch.zeros((B, K, M), dtype=E4M3)  # (batch, k, m), m contiguous
    b = torch.zeros((B, K, N), dtype=E4M3)
    with pytest.raises(ValueError, match="CUDA"):  # shapes accepted
        mategemm.bmm_fp8(**args(a=a, b=b, major_a_mode="M", major_b_mode="N"))


@pytest.mark.parametrize("dtype", (torch.bfloat16, E4M3))
def test_scales_at_end_raster_bands_and_short_k_ring(dtype):
    """Scales-at-the-end tiles walk ~2048 output columns per raster band, and a short K loop keeps
    the ring at most half a tile's K deep (but 4 stages); forced values win."""
    from mategemm.heuristics import fp8_gemm, grouped, sm90
    from mategemm.runtime.device import SM90_NO_DEVICE
    from mategemm.types import GemmProblem, Recipe

    def choose(batch, m, n, k, force=""):
        problem = GemmProblem(m, n, k, Recipe(1, -1, -1), dtype, dtype, torch.bfloat16, "batched", batch)
        return grouped.choose(problem, m, SM90_NO_DEVICE, 132, force)

    wide = choose(8, 8192, 8192, 8192)
    assert wide.block_n * wide.cluster_n * wide.group_n == grouped.SCALE_AT_END_RASTER_COLUMNS
    assert choose(16, 4096, 128, 4096).stages > grouped.SCALE_AT_END_MIN_RING  # a long K loop: the deepest ring
    short = choose(128, 512, 128, 512)
    k_blocks = 512 * dtype.itemsize // sm90.BLOCK_K_FP8
    assert short.stages == max(grouped.SCALE_AT_END_MIN_RING, k_blocks // 2)
    assert choose(128, 512, 128, 512, "stages=6,group_n=16").stages == 6
    assert choose(8, 8192, 8192, 8192, "group_n=16").group_n == 16
    assert choose(64, 128, 7168, 512).group_n == fp8_gemm.GROUP_N  # one M-block per batch entry: whole rows
    moe = GemmProblem(8 * 8192, 8192, 512, Recipe(1, -1, -1), dtype, dtype, torch.bfloat16, "per_expert", 8)
    assert grouped.choose(moe, 8192, SM90_NO_DEVICE, 132).group_n == fp8_gemm.GROUP_N  # MoE modes unchanged
