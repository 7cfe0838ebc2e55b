"""MXFP8 on Hopper: FlashInfer's moe_gemm_mxfp8_nt_groupwise (token-packed experts, UE8M0 scales).

Granularity 128: one small kernel decodes the UE8M0 exponents to fp32 powers of two (exact) and
gathers each token row's scales from its expert's padded rows, then the GEMM runs on the grouped
core's psum_expert mode with recipe (1,1,128), exactly as an FP32-scaled call. Granularity 32 (one
scale per wgmma k32 step) needs its own main loop and is not available yet.
"""
from __future__ import annotations

import torch

from mategemm import moe, validate
from mategemm.kernels import sm90_mxfp8_scales as kernel_scales
from mategemm.runtime import device as rt_device


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
    sa = torch.empty((checked.cum_m, blocks), dtype=torch.float32, device=a.device)
    sb = torch.empty((checked.experts, checked.n, blocks), dtype=torch.float32, device=a.device)
    index = a.device.index
    info = rt_device.device_info(index)
    with torch.cuda.device(index):
        kernel = kernel_scales.load(info.arch, index)
    rt_device.run_on_current_stream(index, kernel_scales.decode, kernel, a_scale, offsets, b_scale, sa, sb,
                                    info.num_sms)
    return moe.ragged_m_moe_gemm_8bit((a, sa), (b, sb), offsets[1:], out, gemm_mode="psum_expert",
                                      scale_granularity_mnk=(1, 1, 128))
