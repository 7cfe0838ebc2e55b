"""NVFP4 on the CPU: the e2m1 rounding, the packing order, the 128x4 blocked scale layout, and the
quantiser against the exact dequantiser of mategemm.testing.nvfp4."""
import pytest
import torch

from mategemm import quant
from mategemm.testing import calc_diff
from mategemm.testing import nvfp4 as ref

GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def test_e2m1_rounds_to_nearest_ties_to_even_and_saturates():
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.3, 2.9, 7.0, 1e9, -0.1, -0.75, -6.5])
    got = ref.e2m1_values(quant.e2m1_codes(x)).tolist()
    assert got == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 0.5, 3.0, 6.0, 6.0, 0.0, -1.0, -6.0]
    assert quant.e2m1_codes(torch.tensor([-0.1])).item() == 0  # no negative zero
    every = torch.tensor(GRID + tuple(-v for v in GRID[1:]))
    assert torch.equal(ref.e2m1_values(quant.e2m1_codes(every)), every.double())


def test_blocked_scale_layout_by_hand():
    rows, cols = 130, 6  # two row tiles, two column tiles, both padded
    scales = (torch.arange(rows * cols) % 200 + 1).float().view(rows, cols).to(torch.float8_e4m3fn)
    blocked = quant.swizzle_nvfp4_scales(scales)
    assert blocked.shape == (2, 2, 32, 4, 4) and blocked.dtype == torch.float8_e4m3fn
    for row, col in ((0, 0), (1, 0), (31, 3), (32, 0), (97, 2), (127, 5), (128, 4), (129, 1)):
        t, g, i, c, j = row // 128, row % 128 // 32, row % 32, col // 4, col % 4
        assert blocked[t, c, i, g, j].float() == scales[row, col].float()
    flat = blocked.view(torch.uint8).reshape(-1)
    assert flat[512 * 1 + 0].item() == scales[0, 4].view(torch.uint8).item()  # tiles run along K first
    assert flat[16 + 4 + 1].item() == scales[32 + 1, 1].view(torch.uint8).item()  # [t=0, c=0, i=1, g=1, j=1]
    assert blocked[1, 1].float()[2:, :, :].eq(0).all()  # padding rows and columns are zero
    assert torch.equal(ref.unswizzle_scales(blocked, rows, cols), scales.double())


def test_values_pack_low_nibble_first():
    x = torch.zeros(1, 32)
    x[0, :4] = torch.tensor([1.0, -2.0, 6.0, 0.5])
    x[0, 16] = 6.0
    packed, _, _ = quant.nvfp4_quantize(x, 1.0)
    assert packed.dtype == torch.uint8 and packed.shape == (1, 16)
    assert packed[0, 0].item() == 0x2 | (0xC << 4) and packed[0, 1].item() == 0x7 | (0x1 << 4)


def test_values_on_the_grid_round_trip_exactly():
    g = torch.Generator().manual_seed(1)
    grid = torch.tensor(GRID + tuple(-v for v in GRID[1:]))
    values = grid[torch.randint(0, grid.numel(), (3, 256, 64), generator=g)]
    values[..., ::16] = 6.0  # every block's amax is 6 x its scale
    block_scale = torch.tensor([0.5, 2.0, 0.125, 8.0])[torch.randint(0, 4, (3, 256, 4), generator=g)]
    global_scale = torch.tensor([1.0, 4.0, 0.25])
    x = values * block_scale.repeat_interleave(16, dim=-1) / global_scale.view(3, 1, 1)
    packed, scales = quant.nvfp4_quantize(x, global_scale)
    assert packed.shape == (3, 256, 32) and scales.shape == (3, 2, 1, 32, 4, 4)
    assert torch.equal(ref.nvfp4_dequantize(packed, scales, global_scale), x.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_tokens_in_groups(dtype):
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(300, 96, generator=g) * torch.logspace(-1, 1, 300).view(300, 1)).to(dtype)  # within e4m3 scales
    global_scale = 448 * 6 / x.float().abs().max()
    offsets = [0, 5, 5, 140, 300]  # groups of 5, 0, 135 and 160 tokens
    packed, scales, starts = quant.nvfp4_quantize(x, global_scale, offsets)
    assert starts.dtype == torch.uint32 and starts.tolist() == [0, 1, 1, 3]  # 1 + 0 + 2 + 2 tiles
    assert scales.shape == (5, 2, 32, 4, 4)
    for e, (lo, hi) in enumerate(zip(offsets, offsets[1:])):
        first, tiles = int(starts[e]), -(-(hi - lo) // 128)
        back = ref.nvfp4_dequantize(packed[lo:hi], scales[first:first + tiles], global_scale)
        if hi > lo:
            assert calc_diff(back, x[lo:hi].double()) < 0.02  # e2m1: one mantissa bit


def test_argument_errors():
    with pytest.raises(ValueError, match="multiple of 32"):
        quant.nvfp4_quantize(torch.randn(4, 48), 1.0)
    with pytest.raises(ValueError, match="global_scale"):
        quant.nvfp4_quantize(torch.randn(4, 64), 0.0)
    with pytest.raises(ValueError, match="global_scale"):
        quant.nvfp4_quantize(torch.randn(2, 4, 64), torch.ones(3))
    with pytest.raises(ValueError, match="group_offsets must rise"):
        quant.nvfp4_quantize(torch.randn(4, 64), 1.0, [0, 3, 2, 4])
    with pytest.raises(ValueError, match="group_offsets goes with 2-D"):
        quant.nvfp4_quantize(torch.randn(2, 4, 64), 1.0, [0, 4])
    with pytest.raises(ValueError, match="x must be"):
        quant.nvfp4_quantize(torch.zeros(64, dtype=torch.int32), 1.0)


def test_grouped_reference_against_a_loop():
    g = torch.Generator().manual_seed(3)
    experts, n, k, offsets = 3, 8, 64, [0, 2, 2, 7]
    weights = torch.randn(experts, n, k, generator=g)
    tokens = torch.randn(7, k, generator=g)
    b, b_scales = quant.nvfp4_quantize(weights, 1.0)
    a, a_scales, starts = quant.nvfp4_quantize(tokens, 1.0, offsets)
    expert_ids, expert_scales = torch.tensor([2, -1, 0], dtype=torch.int32), torch.tensor([0.5, 1.0, 3.0])
    got = ref.grouped_nvfp4_reference(a, b, a_scales, b_scales, offsets, starts, expert_ids, expert_scales)
    a64, b64 = ref.unpack_e2m1(a), ref.unpack_e2m1(b)
    sa = ref.unswizzle_scales(a_scales[0:1], 2, 4).repeat_interleave(16, -1)  # group 0: tile 0, rows 0-1
    sa2 = ref.unswizzle_scales(a_scales[1:2], 5, 4).repeat_interleave(16, -1)  # group 2: tile 1, rows 2-6
    sb = ref.unswizzle_scales(b_scales, n, 4).repeat_interleave(16, -1)
    for row in range(7):
        expert, scale_row = (2, sa[row]) if row < 2 else (0, sa2[row - 2])
        for col in range(n):
            want = sum(a64[row, i] * scale_row[i] * b64[expert, col, i] * sb[expert, col, i] for i in range(k))
            assert abs(got[row, col].item() - want.item() * expert_scales[expert].item()) < 1e-9
    only_first = ref.grouped_nvfp4_reference(a, b, a_scales, b_scales, offsets, starts, expert_ids, expert_scales, 1)
    assert only_first[2:].isnan().all() and torch.equal(only_first[:2], got[:2])
