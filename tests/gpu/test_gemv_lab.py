"""The lab GEMV (kernels_src/sm90_fp8_gemv.cuh, launched by tools/experiments/gemv_lab.py) against the
fp64 reference: 1-2 rows, both recipes and scale layouts, K tails, N not a multiple of 128, each
warp split of a column's K, an output row stride past n (its neighbours untouched)."""
import importlib.util
from pathlib import Path

import pytest
import torch

from mategemm.testing import assert_close, fp8_gemm_reference, make_fp8_gemm_inputs

_path = Path(__file__).resolve().parents[2] / "tools" / "experiments" / "gemv_lab.py"
_spec = importlib.util.spec_from_file_location("gemv_lab", _path)
gemv_lab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gemv_lab)


@pytest.mark.parametrize("m", (1, 2))
@pytest.mark.parametrize("n,k", [(2112, 7168), (1000, 1040), (576, 640), (136, 16384)])
@pytest.mark.parametrize("recipe", ((1, 128, 128), (1, 1, 128)))
@pytest.mark.parametrize("major", ("K", "MN"))
@pytest.mark.parametrize("split", (1, 2, 4))
def test_lab_gemv_matches_the_reference(m, n, k, recipe, major, split):
    a, b, sa, sb = make_fp8_gemm_inputs(m, n, k, recipe, major)
    big = torch.full((m, n + 8), 7.0, dtype=torch.bfloat16, device="cuda")
    out = big[:, :n]
    out.fill_(float("nan"))
    views = (sa, sb) if major == "K" else (sa.t(), sb.t())  # (m, k blocks) and (n blocks or n, k blocks)
    gemv_lab.gemv_launcher(m, n, k, split)(a, b, *views, out)
    torch.cuda.synchronize()
    assert_close(out, fp8_gemm_reference(a, b, sa, sb, recipe, major), "fp8_gemm",
                 f"m={m} n={n} k={k} recipe={recipe} major={major} split={split}")
    assert (big[:, n:] == 7.0).all()
