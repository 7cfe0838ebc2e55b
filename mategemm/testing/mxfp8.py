"""Exact references for MXFP8 (e4m3 values, UE8M0 power-of-two scales packed 4 per int32)."""
from __future__ import annotations

import torch

from mategemm.quant import UE8M0_BIAS, mxfp8_scale_rows


def ue8m0_bytes(packed: torch.Tensor, blocks: int) -> torch.Tensor:
    """int64 (..., blocks) exponent bytes of int32-packed UE8M0 scales, the first block in the lowest byte."""
    words = packed.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(4, device=packed.device) * 8
    return ((words.unsqueeze(-1) >> shifts) & 0xFF).flatten(-2)[..., :blocks]


def mxfp8_dequantize(values: torch.Tensor, packed: torch.Tensor, k_granularity: int,
                     m_indptr: list[int] | None = None) -> torch.Tensor:
    """float64 of MXFP8 values: token rows (cum_m, k) with a_scale rows padded per expert
    (m_indptr), or expert weights (E, n, k) with b_scale (E, n, k_align)."""
    k = values.shape[-1]
    blocks = -(-k // k_granularity)
    exponents = ue8m0_bytes(packed, blocks)
    if values.dim() == 2:
        offsets = [0, values.shape[0]] if m_indptr is None else [int(v) for v in m_indptr]
        _, starts = mxfp8_scale_rows(offsets)
        rows = [start + i for start, lo, hi in zip(starts, offsets, offsets[1:]) for i in range(hi - lo)]
        exponents = exponents[torch.tensor(rows, dtype=torch.long, device=packed.device)]
    # 2^(e - 127) built from its float64 bits (exponent field e - 127 + 1023, always normal): exact on
    # any device (a GPU's pow need not return powers of two exactly).
    scales = ((exponents - UE8M0_BIAS + 1023) << 52).view(torch.float64)
    per_column = scales.repeat_interleave(k_granularity, dim=-1)[..., :k]
    return values.double() * per_column


def moe_gemm_mxfp8_reference(a, b, a_scale, b_scale, m_indptr, k_granularity: int) -> torch.Tensor:
    """float64 (cum_m, n): each expert's rows of a times its b, both dequantised exactly."""
    offsets = [int(v) for v in m_indptr]
    a64 = mxfp8_dequantize(a, a_scale, k_granularity, offsets)
    b64 = mxfp8_dequantize(b, b_scale, k_granularity)
    out = torch.zeros((a.shape[0], b.shape[1]), dtype=torch.float64, device=a.device)
    for e, (lo, hi) in enumerate(zip(offsets, offsets[1:])):
        if hi > lo:
            out[lo:hi] = a64[lo:hi] @ b64[e].t()
    return out
