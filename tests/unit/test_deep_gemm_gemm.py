"""mategemm.deep_gemm's FP8 GEMM names on the CPU: each maps DeepGEMM's arguments onto mategemm's
function (recorded, not launched), writes d in place and returns None; DeepGEMM's SM100-only
arguments raise NotImplementedError, bad ones a clear error, before anything runs."""
import pytest
import torch

import mategemm
import mategemm.deep_gemm as dg
from mategemm.testing import calc_diff

E4M3 = torch.float8_e4m3fn


@pytest.fixture
def recorded(record_calls):
    return record_calls(mategemm, ("gemm_fp8_nt_groupwise", "bmm_fp8", "bmm_fp16", "masked_moe_gemm_8bit",
                                   "ragged_m_moe_gemm_8bit", "ragged_k_moe_gemm_8bit"))


def operands(m=64, n=256, k=512, groups=None):
    lead = () if groups is None else (groups,)
    a = torch.zeros(*lead, m, k, dtype=E4M3)
    b = torch.zeros(*lead, n, k, dtype=E4M3)
    return (a, torch.ones(*lead, m, k // 128)), (b, torch.ones(*lead, n // 128, k // 128))


def test_dense_block_recipe(recorded):
    a, b = operands()
    d = torch.empty(64, 256, dtype=torch.bfloat16)
    assert dg.fp8_gemm_nt(a, b, d, disable_ue8m0_cast=True) is None
    assert dg.fp8_fp4_gemm_nt is dg.fp8_gemm_nt
    [(name, args, kwargs)] = recorded
    assert name == "gemm_fp8_nt_groupwise" and args[0] is a[0] and args[1] is b[0] and args[2] is a[1]
    assert args[3] is b[1] and kwargs == {"scale_granularity_mnk": (1, 128, 128), "out": d}


def test_dense_row_recipe_accumulates_in_place(recorded):
    a = (torch.zeros(64, 512, dtype=E4M3), torch.ones(64, 4))
    b = (torch.zeros(256, 512, dtype=E4M3), torch.ones(256, 4))
    d = torch.randn(64, 256)
    dg.fp8_gemm_nt(a, b, d, c=d, recipe=(1, 1, 128))
    [(name, args, kwargs)] = recorded
    assert name == "bmm_fp8" and args[0].shape == (1, 64, 512) and args[4] == torch.float32
    assert kwargs["out"].data_ptr() == d.data_ptr() and kwargs["c"].data_ptr() == d.data_ptr()
    assert kwargs["scale_granularity_mnk"] == (1, 1, 128)


def test_dense_k_zero_copies_c(recorded):
    a = (torch.zeros(4, 0, dtype=E4M3), torch.ones(4, 0))
    b = (torch.zeros(8, 0, dtype=E4M3), torch.ones(8, 0))
    c, d = torch.randn(4, 8), torch.full((4, 8), float("nan"))
    dg.fp8_gemm_nt(a, b, d, c=c, recipe=(1, 1, 128))
    assert torch.equal(d, c) and not recorded
    d = torch.full((4, 8), float("nan"), dtype=torch.bfloat16)
    dg.fp8_gemm_nt(a, (b[0], torch.ones(1, 0)), d)
    assert torch.equal(d, torch.zeros_like(d))


def test_dense_argument_errors(recorded):
    a, b = operands()
    bf16, fp32 = torch.empty(64, 256, dtype=torch.bfloat16), torch.empty(64, 256)
    with pytest.raises(ValueError, match="c needs recipe"):
        dg.fp8_gemm_nt(a, b, bf16, c=bf16)
    with pytest.raises(TypeError, match="d must be bfloat16"):
        dg.fp8_gemm_nt(a, b, fp32)
    with pytest.raises(TypeError, match="accumulates"):
        dg.fp8_gemm_nt(a, b, fp32, recipe=(1, 1, 128))
    with pytest.raises(ValueError, match="recipe must be"):
        dg.fp8_gemm_nt(a, b, bf16, recipe=(1, 128, 64))
    with pytest.raises(NotImplementedError, match="SM100"):
        dg.fp8_gemm_nt(a, b, bf16, recipe_a=(1, 32), recipe_b=(1, 32))
    with pytest.raises(NotImplementedError, match="packed FP4"):
        dg.fp8_gemm_nt((torch.zeros(64, 256, dtype=torch.int8), a[1]), b, bf16)
    with pytest.raises(NotImplementedError, match="packed UE8M0"):
        dg.fp8_gemm_nt(a, (b[0], torch.zeros(2, 1, dtype=torch.int32)), bf16)
    with pytest.raises(TypeError, match=r"a must be a \(tensor, scale\) pair"):
        dg.fp8_gemm_nt(a[0], b, bf16)
    assert not recorded


def test_masked(recorded):
    a, b = operands(groups=4)
    d = torch.empty(4, 64, 256, dtype=torch.bfloat16)
    masked_m = torch.tensor([0, 3, 64, 7], dtype=torch.int32)
    assert dg.m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, 20, disable_ue8m0_cast=True) is None
    assert dg.fp8_m_grouped_gemm_nt_masked is dg.m_grouped_fp8_fp4_gemm_nt_masked is dg.m_grouped_fp8_gemm_nt_masked
    [(name, args, kwargs)] = recorded
    assert name == "masked_moe_gemm_8bit" and args == (a, b, masked_m)
    assert kwargs == {"out": d, "scale_granularity_mnk": (1, 128, 128), "expect_tokens": 20}
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="expected_m"):
            dg.m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, bad)


def test_contiguous_zeroes_the_padding_rows(recorded):
    a, (b, sfb) = operands(m=384, groups=None)
    b, sfb = b.expand(3, -1, -1), sfb.expand(3, -1, -1)
    layout = torch.full((384,), -1, dtype=torch.int32)
    layout[:100], layout[128:300] = 0, 2  # group 0: 100 rows, group 2: 172 rows, each padded to 128
    d = torch.full((384, 256), float("nan"), dtype=torch.bfloat16)
    assert dg.m_grouped_fp8_gemm_nt_contiguous(a, (b, sfb), d, layout, disable_ue8m0_cast=True) is None
    [(name, args, kwargs)] = recorded
    assert name == "ragged_m_moe_gemm_8bit" and args[2] is layout and args[3] is d
    assert kwargs == {"gemm_mode": "per_token", "scale_granularity_mnk": (1, 128, 128), "alignment_m": 128}
    padding = layout.lt(0)
    assert torch.equal(d[padding], torch.zeros_like(d[padding])) and d[~padding].isnan().all()
    with pytest.raises(ValueError, match="expected_m_for_psum_layout"):
        dg.m_grouped_fp8_gemm_nt_contiguous(a, (b, sfb), d, layout, expected_m_for_psum_layout=100)


def test_psum_rows_by_hand():
    ends = [100, 228, 256, 256, 300]  # groups: 100 rows, 100 at 128, 0 at 256 (end 256), 0, 44 at 256
    got = dg.gemm.psum_row_groups(torch.tensor(ends, dtype=torch.int32), 384, 128).tolist()
    want = []
    for row in range(384):
        start, group = 0, -1
        for g, end in enumerate(ends):
            if start <= row < end:
                group = g
            start = -(-end // 128) * 128
        want.append(group)
    assert got == want and got[99:101] == [0, -1] and got[128] == 1 and got[256] == 4 and got[300] == -1


def test_contiguous_psum_layout(recorded):
    a, (b, sfb) = operands(m=512)
    b, sfb = b.expand(4, -1, -1), sfb.expand(4, -1, -1)
    psum = torch.tensor([100, 228, 228, 400], dtype=torch.int32)
    d = torch.full((512, 256), float("nan"), dtype=torch.bfloat16)
    dg.m_grouped_fp8_gemm_nt_contiguous(a, (b, sfb), d, psum, use_psum_layout=True, expected_m_for_psum_layout=90)
    [(name, args, kwargs)] = recorded
    assert torch.equal(args[2], dg.gemm.psum_row_groups(psum, 512, 128)) and kwargs["gemm_mode"] == "per_token"
    assert d.isnan().all()  # the gaps are left as they were
    with pytest.raises(ValueError, match="one row end per group"):
        dg.m_grouped_fp8_gemm_nt_contiguous(a, (b, sfb), d, psum[:3], use_psum_layout=True)


def test_dense_transposed_forms(recorded):
    (a, sa), (b, sb) = operands()
    d = torch.empty(64, 256, dtype=torch.bfloat16)
    dg.fp8_gemm_nn((a, sa), (b.t(), sb.t()), d)
    dg.fp8_gemm_tn((a.t(), sa.t()), (b.t(), sb.t()), d)
    dg.fp8_gemm_tt((a.t(), sa.t()), (b, sb), d)
    assert dg.fp8_fp4_gemm_tn is dg.fp8_gemm_tn
    for name, args, _ in recorded:  # each reaches the NT kernel with the K-major tensors themselves
        assert name == "gemm_fp8_nt_groupwise" and args[0].data_ptr() == a.data_ptr() and args[0].stride() == (512, 1)
        assert args[1].stride() == (512, 1) and args[2].shape == sa.shape and args[3].shape == sb.shape


def test_bf16_forms(recorded):
    a, b = torch.randn(64, 512).bfloat16(), torch.randn(256, 512).bfloat16()
    d = torch.randn(64, 256).bfloat16()
    dg.bf16_gemm_nt(a, b, d, c=d)
    name, args, kwargs = recorded[-1]
    assert name == "bmm_fp16" and args[0].shape == (1, 64, 512) and args[2] == torch.bfloat16
    assert kwargs["out"].data_ptr() == d.data_ptr()
    assert kwargs["c"].dtype == torch.float32 and torch.equal(kwargs["c"][0], d.float())  # read before d is written
    f32 = torch.randn(64, 256)
    dg.bf16_gemm_tt(a.t().contiguous(), b, f32)  # a given as (k, m): copied K-major
    name, args, kwargs = recorded[-1]
    assert args[0].shape == (1, 64, 512) and args[0].stride(-1) == 1 and torch.equal(args[0][0], a)
    assert args[2] == torch.float32 and kwargs["c"] is None
    with pytest.raises(ValueError, match="c must be a tensor of d's dtype"):
        dg.bf16_gemm_nt(a, b, f32, c=d)
    c, out = torch.randn(4, 8).bfloat16(), torch.full((4, 8), float("nan")).bfloat16()
    dg.bf16_gemm_nn(torch.zeros(4, 0).bfloat16(), torch.zeros(0, 8).bfloat16(), out, c=c)
    assert torch.equal(out, c) and len(recorded) == 2


def test_k_grouped_gathers_the_groups_along_k(recorded):
    ks, m, n = [256, 0, 128], 3, 5
    a_blocks = [torch.arange(m * k).view(m, k) % 7 for k in ks]  # small integers: exact in e4m3
    b_blocks = [torch.arange(n * k).view(n, k) % 5 for k in ks]
    a = torch.cat([x.reshape(-1) for x in a_blocks]).to(E4M3)
    b = torch.cat([x.reshape(-1) for x in b_blocks]).to(E4M3)
    sfa, sfb = torch.rand(3, m).t(), torch.rand(3, n).t()  # (m, sum_k/128) views, as DeepGEMM's tests give them
    layout = torch.tensor(ks, dtype=torch.int32)
    c = torch.randn(3, m, n)
    d = torch.full((3, m, n), float("nan"))
    dg.k_grouped_fp8_gemm_nt_contiguous((a, sfa), (b, sfb), d, ks, layout, c=c)
    [(name, args, kwargs)] = recorded
    assert name == "ragged_k_moe_gemm_8bit" and torch.equal(d, c) and args[2] is layout and args[3] is d
    (a_op, sfa_op), (b_op, sfb_op) = args[0], args[1]
    assert torch.equal(a_op.t().float(), torch.cat(a_blocks, dim=1).float()) and a_op.stride() == (1, 384)
    assert torch.equal(b_op.t().float(), torch.cat(b_blocks, dim=1).float())
    assert torch.equal(sfa_op, sfa.t()) and torch.equal(sfb_op, sfb.t())
    assert kwargs == {"major_a_mode": "K", "major_b_mode": "K", "scale_granularity_mnk": (1, 1, 128)}
    dg.k_grouped_fp8_gemm_nt_contiguous((a, sfa), (b, sfb), d, ks, layout)
    assert torch.equal(d, torch.zeros_like(d))  # no c: d = A B^T alone
    with pytest.raises(NotImplementedError, match="use_psum_layout"):
        dg.k_grouped_fp8_gemm_nt_contiguous((a, sfa), (b, sfb), d, ks, layout, use_psum_layout=True)
    with pytest.raises(ValueError, match="ks_cpu"):
        dg.k_grouped_fp8_gemm_nt_contiguous((a, sfa), (b, sfb), d, [], layout)
    with pytest.raises(ValueError, match="a must be 1-D"):
        dg.k_grouped_fp8_gemm_nt_contiguous((a[:-1], sfa), (b, sfb), d, ks, layout)
    with pytest.raises(ValueError, match="d must be float32"):
        dg.k_grouped_fp8_gemm_nt_contiguous((a, sfa), (b, sfb), d[:2], ks, layout)


def test_skip_head_mid_places_each_head_around_the_gap(monkeypatch):
    heads, (left, mid, right), m = 3, (4, 2, 5), 2
    product = torch.arange(m * heads * (left + right), dtype=torch.float32).view(m, -1).bfloat16()

    def gemm(a, b, a_scale, b_scale, scale_granularity_mnk, out):
        out.copy_(product)
    monkeypatch.setattr(mategemm, "gemm_fp8_nt_groupwise", gemm)
    a = (torch.zeros(m, 128, dtype=E4M3), torch.ones(m, 1))
    b = (torch.zeros(heads * (left + right), 128, dtype=E4M3), torch.ones(1, 1))
    d = torch.full((m, heads * (left + mid + right)), -1.0, dtype=torch.bfloat16)
    assert dg.fp8_gemm_nt_skip_head_mid(a, b, d, (left, mid, right), disable_ue8m0_cast=True) is None
    for h in range(heads):
        got = d[:, h * 11:(h + 1) * 11]
        assert torch.equal(got[:, :left], product[:, h * 9:h * 9 + left])
        assert torch.equal(got[:, left:left + mid], torch.full((m, mid), -1.0, dtype=torch.bfloat16))
        assert torch.equal(got[:, left + mid:], product[:, h * 9 + left:(h + 1) * 9])
    with pytest.raises(ValueError, match="d must be"):
        dg.fp8_gemm_nt_skip_head_mid(a, b, d[:, :-1], (left, mid, right))
    with pytest.raises(ValueError, match="head_splits"):
        dg.fp8_gemm_nt_skip_head_mid(a, b, d, (0, 3, 0))


def test_cublaslt_reference_forms():
    g = torch.Generator().manual_seed(5)
    a, b, c = torch.randn(6, 32, generator=g), torch.randn(5, 32, generator=g), torch.randn(6, 5, generator=g)
    d = torch.empty(6, 5)
    dg.cublaslt_gemm_nt(a, b, d, c=c)
    assert torch.allclose(d, a @ b.t() + c, atol=1e-5)
    dg.cublaslt_gemm_tn(a.t(), b.t(), d)
    assert torch.allclose(d, a @ b.t(), atol=1e-5)
    dg.cublaslt_gemm_nn(a, b.t(), d)
    assert torch.allclose(d, a @ b.t(), atol=1e-5)
    dg.cublaslt_gemm_tt(a.t(), b, d)
    assert torch.allclose(d, a @ b.t(), atol=1e-5)
    bf16 = torch.empty(6, 5, dtype=torch.bfloat16)
    dg.cublaslt_gemm_nt(a.bfloat16(), b.bfloat16(), bf16)
    assert calc_diff(bf16, a @ b.t()) < 1e-4
