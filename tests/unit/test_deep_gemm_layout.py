"""mategemm.deep_gemm's scale-layout helpers and runtime settings, on the CPU: values kept, the
MN-major TMA-aligned strides, UE8M0 bytes packed four to a word, the recipe and shape checks."""
import pytest
import torch

import mategemm.deep_gemm as dg
from mategemm.runtime import device, launch


@pytest.fixture
def restore_settings():
    alignment, num_mp = dg.get_mk_alignment_for_contiguous_layout(), device.get_num_mp_override()
    yield
    dg.set_mk_alignment_for_contiguous_layout(alignment)
    device.set_num_mp(num_mp)


def scales(*shape, generator=None):
    """Powers of two (as UE8M0 scales are), float32."""
    return torch.exp2(torch.randint(-20, 20, shape, generator=generator).float())


def test_tma_aligned_size():
    assert [dg.get_tma_aligned_size(x, 4) for x in (1, 4, 4097)] == [4, 4, 4100]
    assert dg.get_tma_aligned_size(5, 2) == 8 and dg.get_tma_aligned_size(3, 1) == 16
    with pytest.raises(ValueError, match="element_size"):
        dg.get_tma_aligned_size(8, 3)


def test_mk_alignment(restore_settings):
    assert dg.get_theoretical_mk_alignment_for_contiguous_layout() == 128
    assert dg.get_theoretical_mk_alignment_for_contiguous_layout(expected_m=20) == 128
    dg.set_mk_alignment_for_contiguous_layout(64)
    assert dg.get_mk_alignment_for_contiguous_layout() == dg.get_m_alignment_for_contiguous_layout() == 64
    assert dg.get_k_alignment_for_contiguous_layout() == 64
    for bad in (0, 48, 128.0, True):
        with pytest.raises(ValueError, match="alignment"):
            dg.set_mk_alignment_for_contiguous_layout(bad)


@pytest.mark.parametrize("groups", [None, 3])
@pytest.mark.parametrize("mn,sf_k", [(4097, 56), (8, 1), (1, 3), (130, 57)])
@pytest.mark.parametrize("mn_major", [False, True])
def test_mn_major_tma_aligned_tensor(groups, mn, sf_k, mn_major):
    shape = (mn, sf_k) if groups is None else (groups, mn, sf_k)
    sf = torch.randn(shape)
    if mn_major:
        sf = sf.transpose(-1, -2).contiguous().transpose(-1, -2)
    out = dg.get_mn_major_tma_aligned_tensor(sf)
    lead = -(-mn // 4) * 4
    assert out.shape == sf.shape and torch.equal(out, sf)
    assert out.stride()[-2:] == (1, lead) and (groups is None or out.stride(0) == lead * sf_k)
    assert dg.get_mn_major_tma_aligned_tensor(out) is out  # already in the layout: no copy
    with pytest.raises(ValueError, match="sf must be a float32"):
        dg.get_mn_major_tma_aligned_tensor(sf.double())


@pytest.mark.parametrize("groups", [None, 2])
def test_packed_ue8m0_tensor(groups):
    g = torch.Generator().manual_seed(3)
    mn, sf_k = 6, 5
    sf = scales(*((mn, sf_k) if groups is None else (groups, mn, sf_k)), generator=g)
    out = dg.get_mn_major_tma_aligned_packed_ue8m0_tensor(sf)
    assert out.dtype == torch.int32 and out.shape == sf.shape[:-1] + (2,)
    assert out.stride()[-2:] == (1, 8) and (groups is None or out.stride(0) == 16)
    exponent = (torch.log2(sf) + 127).int()  # the UE8M0 byte of each scale
    flat_out, flat_exp = out.reshape(-1, mn, 2), exponent.reshape(-1, mn, sf_k)
    for b in range(flat_out.shape[0]):
        for row in range(mn):
            for word in range(2):
                value = sum(int(flat_exp[b, row, 4 * word + j]) << (8 * j) for j in range(4) if 4 * word + j < sf_k)
                assert flat_out[b, row, word].item() & 0xFFFFFFFF == value
    with pytest.raises(NotImplementedError, match="SM100"):
        dg.get_mn_major_tma_aligned_packed_ue8m0_tensor(sf, psum_layout=torch.zeros(1, dtype=torch.int32))


def test_k_grouped_packed_ue8m0_tensor():
    g = torch.Generator().manual_seed(4)
    ks, mn = [640, 0, 128], 3
    sf = scales(6, mn, generator=g)  # 5 K blocks for the first group, none, 1
    out = dg.get_k_grouped_mn_major_tma_aligned_packed_ue8m0_tensor(sf, torch.tensor(ks), ks, 128, 128)
    assert out.shape == (2 + 0 + 1, mn) and out.dtype == torch.int32
    exponent = (torch.log2(sf) + 127).int()
    for col in range(mn):
        assert out[0, col].item() & 0xFFFFFFFF == sum(int(exponent[j, col]) << (8 * j) for j in range(4))
        assert out[1, col].item() == int(exponent[4, col])  # the group's 5th block alone, zeros above
        assert out[2, col].item() == int(exponent[5, col])
    with pytest.raises(ValueError, match="ks_cpu needs 7"):
        dg.get_k_grouped_mn_major_tma_aligned_packed_ue8m0_tensor(sf, None, [640, 256], 128, 128)
    with pytest.raises(ValueError, match="multiples of k_alignment"):
        dg.get_k_grouped_mn_major_tma_aligned_packed_ue8m0_tensor(sf, None, [700], 128, 128)


def test_transform_sf_into_required_layout():
    sfa = torch.randn(4097, 56)  # (1, 128) per token of A: m=4097, k=7168
    out = dg.transform_sf_into_required_layout(sfa, 4097, 7168, (1, 128, 128), is_sfa=True)
    assert torch.equal(out, sfa) and out.stride() == (1, 4100)
    assert torch.equal(dg.transform_sf_into_required_layout(sfa, 4097, 7168, (1, 128)), out)
    sfb = torch.randn(2, 33, 56)  # (128, 128) blocks of two groups' B: n=4200
    assert dg.transform_sf_into_required_layout(sfb, 4200, 7168, (1, 128, 128), num_groups=2, is_sfa=False) is sfb
    transposed = sfb[0].t().contiguous().t()
    assert dg.transform_sf_into_required_layout(transposed, 4200, 7168, (128, 128)) is transposed
    with pytest.raises(ValueError, match="contiguous"):
        dg.transform_sf_into_required_layout(torch.randn(33, 112)[:, ::2], 4200, 7168, (128, 128))
    with pytest.raises(ValueError, match=r"shape \(33, 56\)"):
        dg.transform_sf_into_required_layout(sfb, 4200, 7168, (128, 128))
    with pytest.raises(ValueError, match="is_sfa"):
        dg.transform_sf_into_required_layout(sfa, 4097, 7168, (1, 128, 128))
    with pytest.raises(ValueError, match="is_sfa must be None"):
        dg.transform_sf_into_required_layout(sfa, 4097, 7168, (1, 128), is_sfa=True)
    with pytest.raises(NotImplementedError, match="SM100"):
        dg.transform_sf_into_required_layout(torch.randn(4097, 224), 4097, 7168, (1, 32))
    with pytest.raises(NotImplementedError, match="SM100"):
        dg.transform_sf_into_required_layout(torch.zeros(4097, 14, dtype=torch.int32), 4097, 7168, (1, 128))


def test_runtime_settings(restore_settings):
    dg.set_num_sms(100)
    assert device.get_num_mp_override() == 100
    dg.set_num_sms(0)
    assert device.get_num_mp_override() is None
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="num_sms"):
            dg.set_num_sms(bad)
    assert dg.get_tc_util() == 100
    dg.set_tc_util(60)
    assert dg.get_tc_util() == 60
    dg.set_tc_util(0)
    with pytest.raises(ValueError, match="tc_util"):
        dg.set_tc_util(101)
    dg.set_pdl(True)
    assert dg.get_pdl() is True and launch.pdl_enabled()
    dg.set_pdl(False)
    assert not launch.pdl_enabled()
    launch.set_pdl(None)  # back to MATEGEMM_PDL
    dg.set_ignore_compile_dims(True)
    dg.set_block_size_multiple_of((16, 32))
    with pytest.raises(ValueError, match="multiple"):
        dg.set_block_size_multiple_of(0)
    dg.set_ignore_compile_dims(False)
    dg.set_block_size_multiple_of(1)
