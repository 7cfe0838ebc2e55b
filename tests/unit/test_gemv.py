"""plan.dense_gemv: which dense calls take the GEMV (kernels_src/sm90_fp8_gemv.cuh), without a GPU."""
import pytest
import torch

from mategemm import plan
from mategemm.kernels import sm90_fp8_gemv as kernel_gemv
from mategemm.runtime.device import SM90_NO_DEVICE
from mategemm.types import RECIPE_1x128_1x128, RECIPE_1x128_128x128, RECIPE_PER_ROW, GemmProblem

E4M3, E5M2, BF16, FP16 = torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16, torch.float16


def gemv(m=1, n=2112, k=7168, recipe=RECIPE_1x128_128x128, out=BF16, a=E4M3, force=""):
    return plan.dense_gemv(GemmProblem(m, n, k, recipe, a, E4M3, out), SM90_NO_DEVICE, force)


@pytest.mark.parametrize("m", (1, 2))
@pytest.mark.parametrize("recipe", (RECIPE_1x128_128x128, RECIPE_1x128_1x128))
@pytest.mark.parametrize("out,a", [(BF16, E4M3), (FP16, E5M2)])
def test_one_or_two_rows_take_the_gemv(m, recipe, out, a):
    p = gemv(m, recipe=recipe, out=out, a=a)
    assert p is not None and p.spec.kernel == kernel_gemv.KERNEL
    assert p.spec.name_expr == (f"&mategemm::sm90_fp8_gemv<{m}, mategemm::{'kE4M3' if a == E4M3 else 'kE5M2'}, "
                                f"mategemm::kE4M3, mategemm::{'kOutBF16' if out == BF16 else 'kOutF16'}>")


@pytest.mark.parametrize("kwargs", [dict(m=3), dict(k=4080), dict(n=4097), dict(n=7168, k=16384), dict(k=2048),
                                    dict(recipe=RECIPE_PER_ROW), dict(out=torch.float8_e4m3fn),
                                    dict(force="gemv=0"), dict(force="block_m=64"), dict(force="stages=8"),
                                    dict(force="tma_scales=0")])
def test_the_gemm_elsewhere(kwargs):
    """More rows, K below 4096, N above 4096, other recipes or outputs, gemv=0, or a forced GEMM tile:
    the GEMM."""
    assert gemv(**kwargs) is None


@pytest.mark.parametrize("n,k", [(4096, 4096), (576, 16384), (4096, 7168)])
def test_the_gemv_from_k_4096_up_to_n_4096(n, k):
    assert gemv(n=n, k=k) is not None


@pytest.mark.parametrize("kwargs", [dict(k=1024), dict(n=7168, k=16384), dict(n=32768, k=16)])
def test_gemv_1_takes_it_wherever_it_runs(kwargs):
    assert gemv(force="gemv=1", **kwargs) is not None
    assert gemv(force="gemv=1", recipe=RECIPE_PER_ROW, **kwargs) is None


def test_gemv_1_keeps_it_beside_a_forced_tile():
    assert gemv(force="gemv=1,block_m=64") is not None


def test_gemv_flag_is_checked():
    with pytest.raises(ValueError, match="gemv must be 0 or 1"):
        gemv(force="gemv=2")


@pytest.mark.parametrize("n,split", [(2112, 1), (8192, 1), (1056, 2), (2111, 2), (576, 4), (16, 4)])
def test_warps_split_a_column_only_below_sixteen_warps_an_sm(n, split):
    assert kernel_gemv.warps_per_col(n, 132) == split
