"""fp32/fp64 references and random inputs for every recipe."""
from __future__ import annotations

import torch

from mategemm.quant import per_block_cast_to_fp8, per_token_cast_to_fp8


def expand_scales(scale: torch.Tensor, rows: int, k: int, gran_rows: int, major: str) -> torch.Tensor:
    """A (rows/g, k/128) or MN-major (k/128, rows/g) scale tensor expanded to (rows, k)."""
    s = scale if major == "K" else scale.t()
    s = s.double().repeat_interleave(gran_rows, dim=0)[:rows]
    return s.repeat_interleave(128, dim=1)[:, :k]


def fp8_gemm_reference(a, b, a_scale, b_scale, recipe=(1, 128, 128), scale_major_mode="K"):
    """(a * sa) @ (b * sb)^T in float64 on a's device; returns float32 (m, n)."""
    m, k = a.shape
    n = b.shape[0]
    a_deq = a.double() * expand_scales(a_scale, m, k, 1, scale_major_mode)
    b_deq = b.double() * expand_scales(b_scale, n, k, recipe[1], scale_major_mode)
    return (a_deq @ b_deq.t()).float()


def make_fp8_gemm_inputs(m, n, k, recipe=(1, 128, 128), scale_major_mode="K", device="cuda",
                         a_dtype=torch.float8_e4m3fn, b_dtype=torch.float8_e4m3fn, generator=None):
    """Fresh random (a, b, a_scale, b_scale) quantised for `recipe`; scales in `scale_major_mode`.

    Rows have different magnitudes so that a scale applied to the wrong row or block shows.
    """
    ka = torch.randn((m, k), device=device, generator=generator)
    kb = torch.randn((n, k), device=device, generator=generator)
    ka *= torch.rand((m, 1), device=device, generator=generator) * 4 + 0.25
    kb *= torch.rand((n, 1), device=device, generator=generator) * 4 + 0.25
    kb *= torch.rand((1, k), device=device, generator=generator) * 4 + 0.25
    a, sa = per_token_cast_to_fp8(ka, a_dtype)
    if recipe[1] == 128:
        b, sb = per_block_cast_to_fp8(kb, b_dtype)
    else:
        b, sb = per_token_cast_to_fp8(kb, b_dtype)
    if scale_major_mode == "MN":
        sa = sa.t().contiguous()
        sb = sb.t().contiguous()
    return a, b, sa, sb
