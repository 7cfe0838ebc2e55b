"""mategemm.deep_gemm's hyperconnection pre-norm GEMM (torch's matmul, so it runs on CPU tensors here
against float64) and the mega MoE names, which are SM100 only and raise naming themselves."""
import inspect

import pytest
import torch

import mategemm.deep_gemm as dg


def inputs(m: int, n: int, k: int, num_splits=None, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn((m, k), generator=generator).bfloat16()
    b = torch.randn((n, k), generator=generator)
    lead = () if num_splits is None else (num_splits,)
    return a, b, torch.full((*lead, m, n), float("nan")), torch.full((*lead, m), float("nan"))


def expected(a, b):
    return a.double() @ b.double().t(), a.double().square().sum(1)


@pytest.mark.parametrize("m,n,k", ((13, 24, 700), (137, 24, 2048), (1, 8, 16)))
@pytest.mark.parametrize("num_splits", (None, 1, 16))
def test_products_and_square_sums(m, n, k, num_splits):
    a, b, d, s = inputs(m, n, k, num_splits)
    assert dg.tf32_hc_prenorm_gemm(a, b, d, s, num_splits=num_splits) is None
    ref_d, ref_s = expected(a, b)
    got_d, got_s = (d, s) if num_splits is None else (d.sum(0), s.sum(0))
    torch.testing.assert_close(got_d.double(), ref_d, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(got_s.double(), ref_s, rtol=1e-5, atol=1e-3)


def test_splits_are_partial_sums_over_consecutive_k_slices():
    """k = 100 in 8 splits of 13: split i holds the product over K columns 13i .. 13i + 12 only."""
    a, b, d, s = inputs(5, 8, 100, 8)
    dg.tf32_hc_prenorm_gemm(a, b, d, s, num_splits=8)
    for i in range(8):
        ref_d, ref_s = expected(a[:, 13 * i:13 * (i + 1)], b[:, 13 * i:13 * (i + 1)])
        torch.testing.assert_close(d[i].double(), ref_d, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(s[i].double(), ref_s, rtol=1e-5, atol=1e-4)


def test_more_splits_than_k_leave_zero_partials():
    a, b, d, s = inputs(3, 8, 4, 6)
    dg.tf32_hc_prenorm_gemm(a, b, d, s, num_splits=6)
    assert (d[4:] == 0).all() and (s[4:] == 0).all()
    torch.testing.assert_close(d.sum(0).double(), expected(a, b)[0], rtol=1e-5, atol=1e-5)


def test_d_with_a_padded_row_stride_keeps_its_padding():
    a, b, _, s = inputs(9, 24, 256)
    big = torch.full((9, 32), 7.0)
    d = big[:, :24]
    dg.tf32_hc_prenorm_gemm(a, b, d, s)
    torch.testing.assert_close(d.double(), expected(a, b)[0], rtol=1e-5, atol=1e-3)
    assert (big[:, 24:] == 7.0).all()


def test_no_rows_is_a_no_op():
    a, b, d, s = inputs(0, 24, 256)
    dg.tf32_hc_prenorm_gemm(a, b, d, s)


@pytest.mark.parametrize("change,error,match", [
    (dict(a=torch.zeros((9, 256))), TypeError, "a must be torch.bfloat16"),
    (dict(b=torch.zeros((24, 256), dtype=torch.bfloat16)), TypeError, "b must be torch.float32"),
    (dict(b=torch.zeros((24, 128))), ValueError, "share a positive K"),
    (dict(a=torch.zeros((256, 9), dtype=torch.bfloat16).t()), ValueError, "a must be K-major"),
    (dict(d=torch.zeros((9, 25))), ValueError, r"d must have shape \(9, 24\)"),
    (dict(d=torch.zeros((24, 9)).t()), ValueError, "d must be N-major"),
    (dict(sqr_sum=torch.zeros((18,))[::2]), ValueError, "sqr_sum must be contiguous"),
    (dict(sqr_sum=torch.zeros((9,), dtype=torch.float64)), TypeError, "sqr_sum must be torch.float32"),
    (dict(num_splits=0), ValueError, "num_splits must be a positive integer"),
    (dict(num_splits=2), ValueError, r"d must have shape \(2, 9, 24\)"),
])
def test_bad_arguments_are_named(change, error, match):
    a, b, d, s = inputs(9, 24, 256)
    args = {**dict(a=a, b=b, d=d, sqr_sum=s), **change}
    with pytest.raises(error, match=match):
        dg.tf32_hc_prenorm_gemm(**args)


@pytest.mark.parametrize("name", ("get_symm_buffer_for_mega_moe", "transform_weights_for_mega_moe",
                                  "fp8_fp4_mega_moe", "bf16_mega_moe"))
def test_mega_moe_names_raise_as_sm100_only(name):
    func = getattr(dg, name)
    args = [None] * sum(p.default is inspect.Parameter.empty for p in inspect.signature(func).parameters.values())
    with pytest.raises(NotImplementedError, match=rf"^{name}: .*SM100.*mategemm.fused_moe"):
        func(*args)
