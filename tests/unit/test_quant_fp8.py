"""mategemm.quant's 1x128 and 128x128 FP8 quantisers, K a multiple of 128 or not (a shorter last
group with its own scale), against a float64 restatement of their definition."""
import pytest
import torch

from mategemm.quant import FP8_MAX, per_block_cast_to_fp8, per_token_cast_to_fp8
from mategemm.testing import fp8_gemm_reference


def group_amax(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """amax over each rows x cols block of x (the last ones shorter), float64."""
    out = torch.zeros((-(-x.shape[0] // rows), -(-x.shape[1] // cols)), dtype=torch.float64)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = x[i * rows:(i + 1) * rows, j * cols:(j + 1) * cols].double().abs().max()
    return out


@pytest.mark.parametrize("k", (128, 200, 576, 16))
def test_per_token_scales_are_each_groups_amax(k):
    x = torch.randn((5, k), generator=torch.Generator().manual_seed(k)) * torch.arange(1, 6)[:, None]
    q, scale = per_token_cast_to_fp8(x)
    assert q.shape == (5, k) and q.dtype == torch.float8_e4m3fn and q.is_contiguous()
    assert scale.shape == (5, -(-k // 128))
    torch.testing.assert_close(scale.double(), group_amax(x, 1, 128) / FP8_MAX[torch.float8_e4m3fn],
                               rtol=1e-6, atol=0)
    step = scale.double().repeat_interleave(128, 1)[:, :k]
    # e4m3: 3 mantissa bits (half a step relative), subnormals 2^-9 apart in units of the scale
    assert ((q.double() * step - x.double()).abs() <= x.double().abs() / 16 + step * 2**-10).all()


@pytest.mark.parametrize("n,k", ((256, 128), (130, 200), (7, 576)))
def test_per_block_scales_are_each_blocks_amax(n, k):
    x = torch.randn((n, k), generator=torch.Generator().manual_seed(n + k))
    q, scale = per_block_cast_to_fp8(x)
    assert q.shape == (n, k) and q.is_contiguous() and scale.shape == (-(-n // 128), -(-k // 128))
    torch.testing.assert_close(scale.double(), group_amax(x, 128, 128) / FP8_MAX[torch.float8_e4m3fn],
                               rtol=1e-6, atol=0)


def test_a_k_tail_gemm_reference_matches_the_unquantised_product():
    """The (1,128,128) reference over a K tail is the float64 product within FP8 rounding."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn((32, 200), generator=generator), torch.randn((64, 200), generator=generator)
    (qa, sa), (qb, sb) = per_token_cast_to_fp8(a), per_block_cast_to_fp8(b)
    got, exact = fp8_gemm_reference(qa, qb, sa, sb).double(), a.double() @ b.double().t()
    assert (got - exact).norm() / exact.norm() < 0.05


@pytest.mark.parametrize("cast", (per_token_cast_to_fp8, per_block_cast_to_fp8))
@pytest.mark.parametrize("k", (128, 200))
def test_no_rows(cast, k):
    q, scale = cast(torch.zeros((0, k)))
    assert q.shape == (0, k) and scale.shape == (0, -(-k // 128))


@pytest.mark.parametrize("cast", (per_token_cast_to_fp8, per_block_cast_to_fp8))
def test_rejects_a_non_matrix(cast):
    with pytest.raises(ValueError, match="2-D"):
        cast(torch.zeros(128))
