"""mategemm.deep_gemm.utils, DeepGEMM's quantisation helpers, on the CPU: scales from the group
maxima, values that dequantise back, the UE8M0 rounding and packing, the e2m1 codes and their
packing, shapes with padding."""
import pytest
import torch

from mategemm.deep_gemm import utils
from mategemm.testing import calc_diff

E4M3 = torch.float8_e4m3fn


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(7)


def spread(m, n, generator, dtype=torch.bfloat16):
    """Random rows whose columns span ten decades, so groups differ in scale."""
    return (torch.randn(m, n, generator=generator) * torch.logspace(-5, 5, n).view(1, n)).to(dtype)


def test_integer_helpers():
    assert [utils.ceil_div(x, 128) for x in (0, 1, 128, 129)] == [0, 1, 1, 2]
    assert [utils.align(x, 64) for x in (0, 1, 64, 65)] == [0, 64, 64, 128]


def test_ceil_to_ue8m0_is_the_power_of_two_at_or_above():
    x = torch.tensor([0.3, 1.0, 1.5, 448.0, -3.0, 2.0 ** -100, 1e-30])
    got = utils.ceil_to_ue8m0(x)
    exponent = torch.ceil(torch.log2(x.abs().double()))
    assert torch.equal(got.double(), torch.exp2(exponent))
    edge = utils.ceil_to_ue8m0(torch.tensor([0.0, 1e-45, float("inf"), 2.0 ** 127 * 1.5]))
    assert edge.tolist() == [2.0 ** -126, 2.0 ** -126, 2.0 ** 127, 2.0 ** 127]  # UE8M0's range


def test_ue8m0_packing_round_trips_lowest_byte_first():
    scales = torch.tensor([[1.0, 2.0, 4.0, 8.0, 2.0 ** -126, 2.0 ** 127, 0.5, 1.0]])
    packed = utils.pack_ue8m0_to_int(scales)
    assert packed.dtype == torch.int32 and packed.shape == (1, 2)
    assert packed[0, 0].item() & 0xFFFFFFFF == 127 | 128 << 8 | 129 << 16 | 130 << 24
    assert torch.equal(utils.unpack_ue8m0_from_int(packed), scales)
    for bad in (torch.tensor([[1.5, 1.0, 1.0, 1.0]]), torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([[-1.0] * 4])):
        with pytest.raises(ValueError, match="x must"):
            utils.pack_ue8m0_to_int(bad)


@pytest.mark.parametrize("use_ue8m0", [False, True])
@pytest.mark.parametrize("m,n,gran_k", [(1, 128, 128), (3, 100, 128), (4, 7168, 128), (5, 96, 32), (2, 200, 64)])
def test_per_token_cast(generator, m, n, gran_k, use_ue8m0):
    x = spread(m, n, generator)
    x[0, :3] = 0  # a group's maximum may be anything, zero groups included (the 1e-4 floor)
    q, scale = utils.per_token_cast_to_fp8(x, use_ue8m0, gran_k)
    groups = -(-n // gran_k)
    assert q.dtype == E4M3 and q.shape == (m, n) and scale.dtype == torch.float32 and scale.shape == (m, groups)
    padded = torch.zeros(m, groups * gran_k)
    padded[:, :n] = x.float()
    expected = padded.view(m, groups, gran_k).abs().amax(dim=2).clamp(min=1e-4) / 448
    if use_ue8m0:
        assert torch.equal(scale, torch.exp2(torch.ceil(torch.log2(expected))))
    else:
        assert torch.equal(scale, expected)
    per_column = scale.repeat_interleave(gran_k, dim=1)[:, :n]
    assert calc_diff(q.float() * per_column, x.float()) < 1e-3
    assert q.float().abs().max() <= 448


def test_per_token_cast_hits_448_without_ue8m0_and_packs_with_it(generator):
    x = spread(4, 512, generator)
    q, _ = utils.per_token_cast_to_fp8(x, False)
    assert torch.equal(q.float().abs().view(4, 4, 128).amax(dim=2), torch.full((4, 4), 448.0))
    _, scale = utils.per_token_cast_to_fp8(x, True)
    _, packed = utils.per_token_cast_to_fp8(x, True, use_packed_ue8m0=True)
    assert torch.equal(packed, utils.pack_ue8m0_to_int(scale))


@pytest.mark.parametrize("use_ue8m0", [False, True])
@pytest.mark.parametrize("m,n", [(128, 128), (130, 300), (1, 7168), (256, 100)])
def test_per_block_cast(generator, m, n, use_ue8m0):
    x = spread(m, n, generator)
    q, scale = utils.per_block_cast_to_fp8(x, use_ue8m0)
    assert q.shape == (m, n) and scale.shape == (-(-m // 128), -(-n // 128))
    blocks = torch.zeros(scale.shape[0] * 128, scale.shape[1] * 128)
    blocks[:m, :n] = x.float()
    amax = blocks.view(scale.shape[0], 128, scale.shape[1], 128).abs().amax(dim=(1, 3)).clamp(min=1e-4)
    assert torch.all(scale * 448 >= amax) and (use_ue8m0 or torch.equal(scale, amax / 448))
    per_element = scale.repeat_interleave(128, 0).repeat_interleave(128, 1)[:m, :n]
    assert calc_diff(q.float() * per_element, x.float()) < 1e-3


def test_per_channel_cast(generator):
    x = spread(256, 40, generator)
    q, scale = utils.per_channel_cast_to_fp8(x, False)
    assert q.shape == (256, 40) and scale.shape == (2, 40)
    assert torch.equal(scale, x.float().view(2, 128, 40).abs().amax(dim=1).clamp(min=1e-4) / 448)
    assert calc_diff(q.float() * scale.repeat_interleave(128, 0), x.float()) < 1e-3
    with pytest.raises(ValueError, match="multiple of gran_k"):
        utils.per_channel_cast_to_fp8(x[:100], False)


def test_per_custom_dims_cast(generator):
    x = torch.randn(4, 6, 8, generator=generator)
    q, scale = utils.per_custom_dims_cast_to_fp8(x, (0, 2), False)
    assert q.shape == x.shape and scale.shape == (4, 8)
    assert torch.equal(scale, x.abs().amax(dim=1).clamp(min=1e-4) / 448)
    assert calc_diff(q.float() * scale.unsqueeze(1), x) < 1e-3


E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def test_fp4_values_on_the_grid_round_trip_exactly(generator):
    grid = torch.tensor(E2M1 + tuple(-v for v in E2M1[1:]))
    x = grid[torch.randint(0, grid.numel(), (6, 256), generator=generator)]
    x[:, 0] = 6.0  # every group's maximum is 6: scale 1
    x[:, 128] = -6.0
    packed, scale = utils.per_token_cast_to_fp4(x, False)
    assert packed.dtype == torch.int8 and packed.shape == (6, 128) and torch.equal(scale, torch.ones(6, 2))
    assert torch.equal(utils.cast_back_from_fp4(packed, scale), x)
    low, high = packed[0, 0].item() & 0x0F, (packed[0, 0].item() >> 4) & 0x0F  # columns 0 and 1 of row 0
    assert E2M1[low & 7] == 6.0 and E2M1[high & 7] == abs(x[0, 1].item()) and bool(high & 8) == (x[0, 1] < 0)


def test_fp4_rounds_to_nearest_ties_down_and_has_no_negative_zero():
    x = torch.tensor([[6.0, 0.25, 0.75, 2.5, 5.0, 0.2, -0.1, 2.6]])
    packed, _ = utils.per_token_cast_to_fp4(x, False, gran_k=8)
    assert utils.cast_back_from_fp4(packed, torch.ones(1, 1), gran_k=8).tolist() == [[6, 0, 0.5, 2, 4, 0, 0, 3]]
    assert (packed[0, 3].item() & 0x0F) == 0  # -0.1 rounds to +0


@pytest.mark.parametrize("use_packed", [False, True])
def test_fp4_cast_of_random_data(generator, use_packed):
    x = spread(8, 64 * 3, generator, torch.float32)
    packed, sf = utils.per_token_cast_to_fp4(x, True, gran_k=64, use_packed_ue8m0=use_packed)
    if use_packed:
        assert sf.dtype == torch.int32 and sf.shape == (8, 1)  # 3 scales, padded with 1.0 to 4
        assert utils.unpack_ue8m0_from_int(sf)[:, 3].eq(1.0).all()
    back = utils.cast_back_from_fp4(packed, sf, gran_k=64, use_packed_ue8m0=use_packed)
    assert back.shape == x.shape and calc_diff(back, x) < 0.05
    with pytest.raises(ValueError, match="even"):
        utils.per_token_cast_to_fp4(x[:, :5], False)
    with pytest.raises(ValueError, match="needs use_ue8m0"):
        utils.per_token_cast_to_fp4(x, False, use_packed_ue8m0=True)


def test_transpose_packed_fp4(generator):
    x = spread(6, 10, generator, torch.float32)
    packed, _ = utils.per_token_cast_to_fp4(x, False, gran_k=2)
    t = utils.transpose_packed_fp4(packed)
    assert t.shape == (10, 3)
    codes = lambda p: torch.stack([p & 0x0F, (p >> 4) & 0x0F], dim=2).flatten(1)  # noqa: E731
    assert torch.equal(codes(t), codes(packed).t())
    assert torch.equal(utils.transpose_packed_fp4(t), packed)
    with pytest.raises(ValueError, match="even number of rows"):
        utils.transpose_packed_fp4(packed[:5])
