"""gemm_fp8_nt_groupwise rejects every bad argument, naming it, before touching a device."""
import pytest
import torch

import mategemm
from mategemm.testing import make_fp8_gemm_inputs

M, N, K = 64, 256, 512
E4M3 = torch.float8_e4m3fn
RECIPES = ((1, 128, 128), (1, 1, 128))
MAJORS = ("K", "MN")


def inputs(recipe=(1, 128, 128), major="K", m=M, n=N, k=K):
    a, b, sa, sb = make_fp8_gemm_inputs(m, n, k, recipe, major, device="cpu")
    return dict(a=a, b=b, a_scale=sa, b_scale=sb, scale_granularity_mnk=recipe, scale_major_mode=major)


def call(**overrides):
    args = inputs()
    args.update(overrides)
    return mategemm.gemm_fp8_nt_groupwise(**args)


def fp8(*shape):
    return torch.zeros(shape).to(E4M3)


def rejects(error, match, **overrides):
    with pytest.raises(error, match=match):
        call(**overrides)


# ---- dtypes and ranks ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ("a", "b"))
def test_operand_dtype(name):
    rejects(TypeError, rf"^{name} must have dtype", **{name: inputs()[name].to(torch.bfloat16)})


@pytest.mark.parametrize("name", ("a_scale", "b_scale"))
def test_scale_dtype(name):
    rejects(TypeError, rf"^{name} must have dtype", **{name: inputs()[name].half()})


@pytest.mark.parametrize("name", ("a", "b"))
def test_operand_ndim(name):
    rejects(ValueError, rf"^{name} must be 2-D", **{name: inputs()[name].unsqueeze(0)})


@pytest.mark.parametrize("name", ("a_scale", "b_scale"))
def test_scale_ndim(name):
    rejects(ValueError, rf"^{name} must be 2-D", **{name: inputs()[name].unsqueeze(0)})


def test_operand_not_a_tensor():
    rejects(TypeError, r"^a must be a torch.Tensor", a=[[1.0]])


# ---- shapes -------------------------------------------------------------------------------------
def test_k_multiple_of_16():
    rejects(ValueError, r"^k \(a.shape\[1\]\) must be a positive multiple of 16", a=fp8(M, 200), b=fp8(N, 200))


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("major", MAJORS)
def test_k_tail_takes_ceil_k_over_128_scale_blocks(recipe, major):
    """k = 576: four whole 128-K blocks and a tail of 64, five scale blocks; four are refused."""
    args = inputs(recipe, major, k=576)
    assert args["a_scale"].shape == ((M, 5) if major == "K" else (5, M))
    rejects(ValueError, r"^a must be a CUDA tensor", **args)  # the last check: every other one passed
    short = args["a_scale"][:, :4] if major == "K" else args["a_scale"][:4]
    rejects(ValueError, r"^a_scale must have shape", **{**args, "a_scale": short})


def test_n_multiple_of_8():
    rejects(ValueError, r"^n \(b.shape\[0\]\) must be a positive multiple of 8", b=fp8(N + 4, K))


def test_k_mismatch():
    rejects(ValueError, r"^a and b must share K", b=fp8(N, K + 128))


@pytest.mark.parametrize("name", ("a", "b"))
def test_last_dim_not_contiguous(name):
    rows = inputs()[name].shape[0]
    strided = fp8(K, rows).t()  # (rows, K) with stride (1, rows)
    rejects(ValueError, rf"^{name} must be contiguous along its last dimension", **{name: strided})


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("major", MAJORS)
@pytest.mark.parametrize("name", ("a_scale", "b_scale"))
def test_scale_shape(recipe, major, name):
    good = inputs(recipe, major)
    bad = torch.ones(good[name].shape[0] + 1, good[name].shape[1])
    with pytest.raises(ValueError, match=rf"^{name} must have shape .*scale_major_mode='{major}'"):
        mategemm.gemm_fp8_nt_groupwise(**{**good, name: bad})


@pytest.mark.parametrize("major", MAJORS)
def test_scales_of_the_other_recipe(major):
    """(1,1,128) scales for b under the (1,128,128) recipe and the reverse."""
    per_block = inputs((1, 128, 128), major)
    per_column = inputs((1, 1, 128), major)
    with pytest.raises(ValueError, match=r"^b_scale must have shape"):
        mategemm.gemm_fp8_nt_groupwise(**{**per_block, "b_scale": per_column["b_scale"]})
    with pytest.raises(ValueError, match=r"^b_scale must have shape"):
        mategemm.gemm_fp8_nt_groupwise(**{**per_column, "b_scale": per_block["b_scale"]})


def test_scale_of_the_other_major():
    transposed = inputs()["a_scale"].t().contiguous()
    rejects(ValueError, r"^a_scale must have shape .*scale_major_mode='K'", a_scale=transposed)


# ---- options ------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ((1, 2, 3), (128, 128, 128), (-1, -1, -1)))
def test_unsupported_recipe(recipe):
    rejects(ValueError, r"^scale_granularity_mnk must be one of", scale_granularity_mnk=recipe)


@pytest.mark.parametrize("recipe", ((1, 128), "1,128,128", (1.0, 128, 128), (True, 128, 128)))
def test_malformed_recipe(recipe):
    rejects(TypeError, r"^scale_granularity_mnk must be a tuple of three ints", scale_granularity_mnk=recipe)


def test_scale_major_mode():
    rejects(ValueError, r"^scale_major_mode must be one of", scale_major_mode="M")


def test_mma_sm():
    rejects(ValueError, r"^mma_sm must be 1 or None", mma_sm=2)


def test_backend():
    rejects(ValueError, r"^backend must be one of", backend="foo")


# ---- out ----------------------------------------------------------------------------------------
def test_out_shape():
    rejects(ValueError, r"^out must have shape", out=torch.empty(M, N + 8, dtype=torch.bfloat16))


def test_out_dtype():
    rejects(TypeError, r"^out must have dtype", out=torch.empty(M, N, dtype=torch.float32))


def test_out_ndim():
    rejects(ValueError, r"^out must be 2-D", out=torch.empty(1, M, N, dtype=torch.bfloat16))


def test_out_dtype_mismatch():
    rejects(ValueError, r"^out_dtype .* differs from out.dtype", out=torch.empty(M, N, dtype=torch.bfloat16),
            out_dtype=torch.float16)


def test_out_dtype_unsupported():
    rejects(TypeError, r"^out_dtype must be one of", out_dtype=torch.float32)


def test_out_last_dim_not_contiguous():
    rejects(ValueError, r"^out must be contiguous along its last dimension",
            out=torch.empty(N, M, dtype=torch.bfloat16).t())


def test_output_scale_checks():
    rejects(ValueError, "out_dtype", output_scale=torch.ones(()), out_dtype=torch.bfloat16)
    rejects(ValueError, "output_scale", output_scale=torch.ones(2), out_dtype=torch.float8_e4m3fn)
    rejects(TypeError, "out.dtype", output_scale=torch.ones(()), out=torch.empty(M, N, dtype=torch.bfloat16))


# ---- device -------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("major", MAJORS)
@pytest.mark.parametrize("out_dtype", (None, torch.bfloat16, torch.float16))
def test_valid_cpu_inputs_fail_only_the_cuda_check(recipe, major, out_dtype):
    """Everything else passes: the one error left is the device."""
    args = inputs(recipe, major)
    with pytest.raises(ValueError, match=r"^a must be a CUDA tensor, got device cpu"):
        mategemm.gemm_fp8_nt_groupwise(**args, out_dtype=out_dtype)
    out = torch.empty(M, N, dtype=out_dtype or torch.bfloat16)
    with pytest.raises(ValueError, match=r"^a must be a CUDA tensor"):
        mategemm.gemm_fp8_nt_groupwise(**args, out=out, out_dtype=out_dtype)


def test_valid_cpu_inputs_with_ragged_m_and_n():
    args = inputs(m=1, n=136, k=128)
    with pytest.raises(ValueError, match=r"CUDA"):
        mategemm.gemm_fp8_nt_groupwise(**args)
