"""bmm_fp8 and the FP8-output GEMM on the GPU against float64 references."""
import itertools

import pytest
import torch

import mategemm
from mategemm.quant import per_block_cast_to_fp8, per_token_cast_to_fp8
from mategemm.testing.numerics import TOLERANCE, calc_diff

RECIPES = ((-1, -1, -1), (1, -1, -1), (1, 128, 128), (1, 1, 128))
OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def quantised(batch, rows, k, recipe, side):
    """(q (batch, rows, k) fp8, scale for `recipe` on this side, dequantised float64)."""
    x = torch.randn((batch, rows, k), device="cuda")
    x *= torch.rand((batch, rows, 1), device="cuda") * 4 + 0.25
    if recipe[1] == -1 and (side == "b" or recipe[0] == -1):  # per tensor: one scale per batch entry
        scale = x.abs().amax(dim=(1, 2)).clamp(min=1e-4) / 448
        q = (x / scale[:, None, None]).to(torch.float8_e4m3fn)
        return q, scale, q.double() * scale.double()[:, None, None]
    if recipe[1] == -1:  # per row of A
        scale = x.abs().amax(dim=2).clamp(min=1e-4) / 448
        q = (x / scale[:, :, None]).to(torch.float8_e4m3fn)
        return q, scale, q.double() * scale.double()[:, :, None]
    cast = per_block_cast_to_fp8 if side == "b" and recipe[1] == 128 else per_token_cast_to_fp8
    pieces = [cast(x[i]) for i in range(batch)]
    q = torch.stack([p[0] for p in pieces])
    scale = torch.stack([p[1] for p in pieces])
    rows_per_scale = 128 if side == "b" and recipe[1] == 128 else 1
    expanded = scale.double().repeat_interleave(rows_per_scale, 1)[:, :rows].repeat_interleave(128, 2)[:, :, :k]
    return q, scale, q.double() * expanded


def run_bmm(batch, m, n, k, recipe, out_dtype, with_c, major_a="K", major_b="K"):
    a, sa, a_ref = quantised(batch, m, k, recipe, "a")
    b, sb, b_ref = quantised(batch, n, k, recipe, "b")
    if recipe == (-1, -1, -1) and batch > 1:
        sa = sa[:1].clone()  # a single scale for the whole of A
        a_ref = a.double() * sa.double()
    if major_a == "M":
        a = a.transpose(1, 2).contiguous()  # (batch, k, m), m contiguous
    if major_b == "N":
        b = b.transpose(1, 2).contiguous()  # (batch, k, n)
    c = torch.randn((batch, m, n), device="cuda") * 100 if with_c else None
    out = torch.full((batch, m, n), float("nan"), dtype=out_dtype, device="cuda")
    got = mategemm.bmm_fp8(a, b, sa, sb, out_dtype, out=out, scale_granularity_mnk=recipe, c=c,
                           major_a_mode=major_a, major_b_mode=major_b)
    assert got is out
    ref = a_ref @ b_ref.transpose(1, 2)
    if c is not None:
        ref += c.double()
    tol = TOLERANCE.get(("fp8_gemm", out_dtype), 1e-6)
    diff = calc_diff(out, ref)
    assert diff <= tol, f"batch={batch} m={m} n={n} k={k} {recipe} {out_dtype} c={with_c}: calc_diff {diff:.3e}"


@pytest.mark.parametrize("recipe,out_dtype,with_c", list(itertools.product(RECIPES, OUT_DTYPES, (False, True))))
def test_recipes_outputs_and_c(recipe, out_dtype, with_c):
    run_bmm(3, 200, 264, 512, recipe, out_dtype, with_c)


@pytest.fixture(params=("in_kernel", "copy"))
def transpose(request, monkeypatch):
    """MN-major operands transposed in shared memory by the kernel, or copied K-major first
    (transpose_8bit), whatever the heuristic would choose."""
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", "transpose=0" if request.param == "copy" else "transpose=1")
    return request.param


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("major_a,major_b", (("M", "K"), ("K", "N"), ("M", "N")))
def test_major_modes(recipe, major_a, major_b, transpose):
    run_bmm(2, 96, 128, 256, recipe, torch.bfloat16, False, major_a, major_b)


@pytest.mark.parametrize("recipe,out_dtype,with_c", [((-1, -1, -1), torch.bfloat16, False),
                                                     ((1, -1, -1), torch.float32, True),
                                                     ((1, 128, 128), torch.float16, False),
                                                     ((1, 1, 128), torch.bfloat16, True)])
@pytest.mark.parametrize("batch,m,n,k", ((3, 208, 272, 512), (1, 16, 64, 128), (4, 512, 1024, 1024)))
def test_major_modes_ragged_tiles(recipe, out_dtype, with_c, batch, m, n, k, transpose):
    """M-major A and N-major B with partial tiles along M and N (m, n multiples of 16)."""
    run_bmm(batch, m, n, k, recipe, out_dtype, with_c, "M", "N")


@pytest.mark.parametrize("batch,m,n,k", ((1, 1, 8, 128), (1, 4096, 4096, 1024), (5, 1, 136, 384), (2, 129, 1000, 256),
                                         (16, 64, 512, 128)))
@pytest.mark.parametrize("recipe", ((-1, -1, -1), (1, 128, 128)))
def test_edge_shapes(batch, m, n, k, recipe):
    run_bmm(batch, m, n, k, recipe, torch.bfloat16, False)


@pytest.mark.parametrize("batch,m,n,k", ((3, 65, 264, 336), (1, 4096, 2112, 576), (2, 1, 136, 16)))
@pytest.mark.parametrize("out_dtype,with_c", ((torch.bfloat16, False), (torch.float32, True)))
@pytest.mark.parametrize("recipe", RECIPES)
def test_k_tail(batch, m, n, k, recipe, out_dtype, with_c):
    """K not a multiple of 128 (K-major operands): TMA zero-fills the tail block, which has its own scales."""
    run_bmm(batch, m, n, k, recipe, out_dtype, with_c)


def test_fp8_output():
    batch, m, n, k = 2, 130, 256, 384
    a, sa, a_ref = quantised(batch, m, k, (1, 128, 128), "a")
    b, sb, b_ref = quantised(batch, n, k, (1, 128, 128), "b")
    ref = a_ref @ b_ref.transpose(1, 2)
    output_scale = (ref.abs().amax() / 300).float().reshape(1)  # some values saturate at 448
    out = mategemm.bmm_fp8(a, b, sa, sb, torch.float8_e4m3fn, scale_granularity_mnk=(1, 128, 128),
                           output_scale=output_scale)
    assert out.dtype == torch.float8_e4m3fn
    expected = (ref / output_scale.double()).clamp(-448, 448).float().to(torch.float8_e4m3fn)
    # one e4m3 step apart at most: the kernel's fp32 sum vs the float64 reference
    assert calc_diff(out.float(), expected.float()) < 1e-3
    mismatched = (out.float() != expected.float()).float().mean().item()
    assert mismatched < 0.05, f"{mismatched:.3f} of the elements differ from the rounded reference"


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("batch,m,n,k", ((2, 130, 256, 384), (1, 4096, 2112, 7168), (3, 1, 96, 336)))
def test_fp8_output_rounded_by_the_kernel_equals_torchs_rounding(batch, m, n, k, recipe):
    """n % 16 == 0: the epilogue divides by output_scale and rounds to e4m3; torch rounding the
    kernel's fp32 product (the same sums) must give the same bytes. The dense GEMM too (batch 1)."""
    a, sa, _ = quantised(batch, m, k, recipe, "a")
    b, sb, _ = quantised(batch, n, k, recipe, "b")
    fp32 = mategemm.bmm_fp8(a, b, sa, sb, torch.float32, scale_granularity_mnk=recipe)
    output_scale = (fp32.abs().amax() / 300).reshape(1)  # some values saturate at 448
    expected = (fp32 / output_scale).clamp(-448, 448).to(torch.float8_e4m3fn)
    out = torch.full((batch, m, n), float("nan"), device="cuda").to(torch.float8_e4m3fn)
    mategemm.bmm_fp8(a, b, sa, sb, torch.float8_e4m3fn, out=out, scale_granularity_mnk=recipe,
                     output_scale=output_scale)
    assert torch.equal(out.view(torch.uint8), expected.view(torch.uint8))
    if batch == 1 and recipe[1] > 0:
        dense = mategemm.gemm_fp8_nt_groupwise(a[0], b[0], sa[0], sb[0], scale_granularity_mnk=recipe,
                                               output_scale=output_scale)
        assert torch.equal(dense.view(torch.uint8), expected[0].view(torch.uint8))


def test_fp8_output_rows_tma_cannot_write_go_through_fp32():
    """n % 16 != 0: the fp32 path, the same bytes as torch's rounding of the fp32 product."""
    a, sa, _ = quantised(2, 70, 256, (1, 128, 128), "a")
    b, sb, _ = quantised(2, 136, 256, (1, 128, 128), "b")
    fp32 = mategemm.bmm_fp8(a, b, sa, sb, torch.float32, scale_granularity_mnk=(1, 128, 128))
    output_scale = (fp32.abs().amax() / 300).reshape(1)
    expected = (fp32 / output_scale).clamp(-448, 448).to(torch.float8_e4m3fn)
    out = mategemm.bmm_fp8(a, b, sa, sb, torch.float8_e4m3fn, scale_granularity_mnk=(1, 128, 128),
                           output_scale=output_scale)
    assert torch.equal(out.view(torch.uint8), expected.view(torch.uint8))
    dense = mategemm.gemm_fp8_nt_groupwise(a[0], b[0], sa[0], sb[0], output_scale=output_scale)
    assert torch.equal(dense.view(torch.uint8), expected[0].view(torch.uint8))


@pytest.mark.parametrize("k", (256, 336))
def test_gemm_fp8_nt_groupwise_fp8_output(k):
    from mategemm.testing import fp8_gemm_reference, make_fp8_gemm_inputs

    a, b, sa, sb = make_fp8_gemm_inputs(100, 512, k)
    ref = fp8_gemm_reference(a, b, sa, sb).double()
    output_scale = (ref.abs().amax() / 400).float()
    out = torch.full((100, 512), float("nan"), device="cuda").to(torch.float8_e4m3fn)
    got = mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out, output_scale=output_scale)
    assert got.data_ptr() == out.data_ptr() and got.dtype == torch.float8_e4m3fn
    expected = (ref / output_scale.double()).clamp(-448, 448).float().to(torch.float8_e4m3fn)
    assert calc_diff(out.float(), expected.float()) < 1e-3


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize("with_c", (False, True))
@pytest.mark.parametrize("batch,m,n,k", ((3, 200, 264, 512), (1, 1, 136, 200), (4, 129, 1000, 64)))
def test_bmm_fp16(dtype, out_dtype, with_c, batch, m, n, k):
    a = torch.randn((batch, m, k), device="cuda").to(dtype)
    b = torch.randn((batch, n, k), device="cuda").to(dtype)
    c = torch.randn((batch, m, n), device="cuda") * 10 if with_c else None
    out = torch.full((batch, m, n), float("nan"), dtype=out_dtype, device="cuda")
    got = mategemm.bmm_fp16(a, b, out_dtype, out=out, c=c)
    assert got is out
    ref = a.double() @ b.double().transpose(1, 2)
    if c is not None:
        ref += c.double()
    diff = calc_diff(out, ref)
    assert diff <= TOLERANCE.get(("fp8_gemm", out_dtype), 1e-6), f"{dtype} {out_dtype} c={with_c}: {diff:.3e}"


def test_bmm_fp16_allocates_out():
    a = torch.randn((2, 64, 128), device="cuda", dtype=torch.bfloat16)
    b = torch.randn((2, 256, 128), device="cuda", dtype=torch.bfloat16)
    out = mategemm.bmm_fp16(a, b, torch.bfloat16)
    assert out.shape == (2, 64, 256) and out.dtype == torch.bfloat16
    assert calc_diff(out, a.double() @ b.double().transpose(1, 2)) <= TOLERANCE[("fp8_gemm", torch.bfloat16)]
