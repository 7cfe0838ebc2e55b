"""Dense calls of 1-2 rows on the GEMV (plan.dense_gemv; gemv=1 where the GEMM is the default)
against the fp64 reference: both recipes and scale layouts, K tails, N not a multiple of 128, every
split of a column's K (N 2112: none, 1056: two warps, 576: four), an output row stride past n (its
neighbours untouched); and against the GEMM on the same inputs."""
import pytest
import torch

import mategemm
from mategemm.testing import assert_close, calc_diff, fp8_gemm_reference, make_fp8_gemm_inputs


@pytest.mark.parametrize("m", (1, 2))
@pytest.mark.parametrize("n,k", [(2112, 7168), (1056, 1040), (576, 1152), (136, 16384)])
@pytest.mark.parametrize("recipe", ((1, 128, 128), (1, 1, 128)))
@pytest.mark.parametrize("major", ("K", "MN"))
def test_gemv_matches_the_reference(monkeypatch, m, n, k, recipe, major):
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", "gemv=1")
    a, b, sa, sb = make_fp8_gemm_inputs(m, n, k, recipe, major)
    big = torch.full((m, n + 8), 7.0, dtype=torch.bfloat16, device="cuda")
    out = big[:, :n]
    out.fill_(float("nan"))
    mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, scale_major_mode=major, scale_granularity_mnk=recipe, out=out)
    assert_close(out, fp8_gemm_reference(a, b, sa, sb, recipe, major), "fp8_gemm",
                 f"m={m} n={n} k={k} recipe={recipe} major={major}")
    assert (big[:, n:] == 7.0).all()


@pytest.mark.parametrize("out_dtype,a_dtype", [(torch.float16, torch.float8_e5m2), (torch.bfloat16, torch.float8_e4m3fn)])
def test_gemv_and_gemm_agree(monkeypatch, out_dtype, a_dtype):
    a, b, sa, sb = make_fp8_gemm_inputs(2, 4096, 7168, a_dtype=a_dtype)
    got = {}
    for force in ("", "gemv=0"):
        monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", force)
        got[force] = mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out_dtype=out_dtype).float()
    assert calc_diff(got[""], got["gemv=0"]) < 1e-5

