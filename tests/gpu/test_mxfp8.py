"""moe_gemm_mxfp8_nt_groupwise on the GPU against the exact MXFP8 reference (mategemm.testing.mxfp8):
token-packed experts with unaligned and empty segments, extreme exponents, out= and the FlashInfer name."""
import pytest
import torch

import mategemm
from mategemm import quant
from mategemm.testing import TOLERANCE, calc_diff
from mategemm.testing import mxfp8 as ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TOL = TOLERANCE[("fp8_gemm", torch.bfloat16)]


def case(counts, n=256, k=512, spread=1.0, seed=0, gran=128):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    a = torch.randn((offsets[-1], k), device="cuda", generator=gen) * spread
    b = torch.randn((len(counts), n, k), device="cuda", generator=gen)
    qa, sa = quant.mxfp8_quantize(a.to(torch.bfloat16), gran, offsets)
    qb, sb = quant.mxfp8_quantize(b.to(torch.bfloat16), gran)
    return qa, qb, sa, sb, torch.tensor(offsets, dtype=torch.int32, device="cuda")


@pytest.mark.parametrize("gran", [128, 32])
@pytest.mark.parametrize("counts", [[5, 0, 130, 1, 64], [1], [0, 0, 7], [300, 200], [0, 3] * 20])
def test_matches_the_exact_reference(counts, gran):
    qa, qb, sa, sb, m_indptr = case(counts, gran=gran)
    out = torch.full((qa.shape[0], qb.shape[1]), float("nan"), dtype=torch.bfloat16, device="cuda")
    got = mategemm.moe_gemm_mxfp8_nt_groupwise(qa, qb, sa, sb, m_indptr, scale_granularity_mnk=(1, 1, gran), out=out)
    assert got is out
    want = ref.moe_gemm_mxfp8_reference(qa, qb, sa, sb, m_indptr.cpu(), gran)
    if qa.shape[0]:
        assert calc_diff(got, want) <= TOL


@pytest.mark.parametrize("gran", [128, 32])
def test_extreme_exponents(gran):
    """Rows scaled by 2^-100 and 2^90: the decoded powers of two are exact, the products finite."""
    qa, qb, sa, sb, m_indptr = case([4, 9], spread=1.0, seed=1, gran=gran)
    a = torch.randn((13, 512), device="cuda")
    a[:4] *= 2.0 ** -100
    a[4:] *= 2.0 ** 90
    qa, sa = quant.mxfp8_quantize(a, gran, [0, 4, 13])
    got = mategemm.flashinfer.moe_gemm_mxfp8_nt_groupwise(qa, qb, sa, sb, m_indptr, scale_granularity_mnk=(1, 1, gran))
    want = ref.moe_gemm_mxfp8_reference(qa, qb, sa, sb, m_indptr.cpu(), gran)
    assert calc_diff(got[:4].double() * 2.0 ** 100, want[:4] * 2.0 ** 100) <= TOL
    assert calc_diff(got[4:], want[4:]) <= TOL


def test_host_offsets_and_no_rows():
    qa, qb, sa, sb, m_indptr = case([3, 5])
    got = mategemm.moe_gemm_mxfp8_nt_groupwise(qa, qb, sa, sb, m_indptr.cpu())
    assert calc_diff(got, ref.moe_gemm_mxfp8_reference(qa, qb, sa, sb, m_indptr.cpu(), 128)) <= TOL
    empty = case([0, 0])
    assert mategemm.moe_gemm_mxfp8_nt_groupwise(*empty).shape == (0, 256)


def test_scale_decode_kernel_is_exact():
    """The decode kernel alone: every exponent byte 0..254 and the token rows' padded scale rows."""
    from mategemm.kernels import sm90_mxfp8_scales as kernel_scales
    from mategemm.runtime import device as rt_device

    offsets = [0, 3, 3, 10, 11]
    a_scale = torch.randint(0, 255, (16, 2), dtype=torch.int32, device="cuda")
    a_scale.view(torch.uint8)[:, :8] = torch.randint(0, 255, (16, 8), dtype=torch.uint8, device="cuda")
    b_scale = (torch.arange(4 * 32 * 2, dtype=torch.int32, device="cuda") % 255).view(4, 32, 2)  # byte 255 is NaN
    b_scale.view(torch.uint8).view(-1)[:255] = torch.arange(255, dtype=torch.uint8, device="cuda")
    blocks = 8
    sa = torch.empty((11, blocks), dtype=torch.float32, device="cuda")
    sb = torch.empty((4, 32, blocks), dtype=torch.float32, device="cuda")
    kernel = kernel_scales.load("sm_90a", 0)
    m_indptr = torch.tensor(offsets, dtype=torch.int32, device="cuda")
    rt_device.run_on_current_stream(0, kernel_scales.decode, kernel, a_scale, m_indptr, b_scale, sa, sb, 132)
    ones = torch.ones((11, 8 * 128), dtype=torch.uint8, device="cuda").view(torch.float8_e4m3fn)  # 1.0 is 0x38
    ones.view(torch.uint8).fill_(0x38)
    want_a = ref.mxfp8_dequantize(ones, a_scale, 128, offsets)[:, ::128]
    want_b = ref.mxfp8_dequantize(ones[:1].expand(4 * 32, -1).reshape(4, 32, -1), b_scale, 128)[..., ::128]
    assert torch.equal(sa.double(), want_a) and torch.equal(sb.double(), want_b)
