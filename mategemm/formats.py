"""MXFP8 on Hopper: FlashInfer's moe_gemm_mxfp8_nt_groupwise (token-packed experts, UE8M0 scales).

Granularity 128: the UE8M0 exponents are decoded to fp32 powers of two (exact) on the GPU, the
token rows' scales gathered from their per-expert padded rows, and the GEMM runs on the grouped
core's psum_expert mode with recipe (1,1,128), exactly as an FP32-scaled call. Granularity 32 (one
scale per wgmma k32 step) needs its own main loop and is not available yet.
"""
from __future__ import annotations

import torch

from mategemm import moe, validate
from mategemm.quant import UE8M0_BIAS

_SMALLEST_SCALE = 2.0 ** -UE8M0_BIAS  # UE8M0 byte 0, a float32 subnormal


def decode_ue8m0(packed: torch.Tensor, blocks: int) -> torch.Tensor:
    """fp32 (..., blocks) scales 2^(e - 127) of int32-packed UE8M0 bytes (first block lowest)."""
    e = packed.contiguous().view(torch.uint8)[..., :blocks].to(torch.int32)
    scale = (e << 23).view(torch.float32)
    return torch.where(e == 0, torch.full_like(scale, _SMALLEST_SCALE), scale)


def token_scale_rows(m_indptr: torch.Tensor, cum_m: int) -> torch.Tensor:
    """int64 (cum_m,): the a_scale row of each token row (each expert's rows start at a multiple
    of 4), from the CSR offsets on the device (no host synchronisation)."""
    counts = (m_indptr[1:] - m_indptr[:-1]).to(torch.int64)
    aligned = (counts + 3) // 4 * 4
    first_row = torch.cumsum(aligned, 0) - aligned
    rows = torch.arange(cum_m, device=m_indptr.device)
    expert = torch.searchsorted(m_indptr[1:].to(torch.int64), rows, right=True).clamp(max=counts.numel() - 1)
    return first_row[expert] + rows - m_indptr[:-1].to(torch.int64)[expert]


def moe_gemm_mxfp8_nt_groupwise(a, b, a_scale, b_scale, m_indptr, scale_granularity_mnk=(1, 1, 128),
                                scale_major_mode="MN", backend="auto", out=None, out_dtype=None) -> torch.Tensor:
    """out[rows of expert e] (bf16) = A_e . B_e^T for token-packed MXFP8 experts (FlashInfer's layouts).

    a (cum_m, k) e4m3; b (E, n, k) e4m3; a_scale int32 (m_padded, k_align) with 4 UE8M0 exponents
    per int32 along the K blocks (the first block in the lowest byte), m_padded = (cum_m + E x 3)
    // 4 x 4 and each expert's scale rows starting at a multiple of 4; b_scale int32 (E, n,
    k_align) per row of B; k_align = ceil(k / (4 x k_granularity)). m_indptr int32 (E + 1,) CSR
    offsets, m_indptr[0] = 0, m_indptr[E] = cum_m (on the GPU they are not checked: a segment
    past cum_m is clipped). scale_granularity_mnk (1, 1, 128) or (1, 1, 32), anything else a
    ValueError; (1, 1, 32) raises NotImplementedError for now. out: (cum_m, n) bf16 or None.
    """
    checked = validate.moe_gemm_mxfp8(a, b, a_scale, b_scale, m_indptr, scale_granularity_mnk, scale_major_mode,
                                      backend, out, out_dtype)
    if out is None:
        out = torch.empty((checked.cum_m, checked.n), dtype=torch.bfloat16, device=a.device)
    if checked.cum_m == 0:
        return out
    blocks = checked.k // checked.k_granularity
    offsets = m_indptr.to(a.device)  # host offsets (checked) are copied to the GPU
    sa = decode_ue8m0(a_scale, blocks)[token_scale_rows(offsets, checked.cum_m)]
    sb = decode_ue8m0(b_scale, blocks)
    psum = offsets[1:].contiguous()
    return moe.ragged_m_moe_gemm_8bit((a, sa), (b, sb), psum, out, gemm_mode="psum_expert",
                                      scale_granularity_mnk=(1, 1, 128))
