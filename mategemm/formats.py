"""MXFP8 and NVFP4 on Hopper.

MXFP8, FlashInfer's moe_gemm_mxfp8_nt_groupwise (token-packed experts, UE8M0 scales).
One small kernel decodes the UE8M0 exponents to fp32 powers of two (exact) and gathers each token
row's scales from its expert's padded rows, then the GEMM runs on the grouped core's psum_expert
mode: granularity 128 with recipe (1,1,128), exactly as an FP32-scaled call; granularity 32 with
(1,1,32), which promotes each k32 wgmma with its own scales (four promotions per 128 values of K).

NVFP4, MAX's grouped_matmul_dynamic_scaled_nvfp4 and the Pythonic nvfp4_grouped_gemm: up to 64
rows per group sm90_nvfp4_stream_gemm decodes the weights straight into the bf16 wgmma's registers
(from 33 rows per group the group's rows decoded to a bf16 tensor first, sm90_nvfp4_dequant_a),
above that sm90_nvfp4_grouped_gemm on the GEMM core decodes the weights to bf16 in shared memory
and loads the group's rows, decoded to a bf16 tensor first, by TMA (exact either way); the groups'
offsets, experts and count stay on the GPU (no host sync).
"""
from __future__ import annotations

import torch

from mategemm import moe, plan, prepare, validate
from mategemm.kernels import sm90_mxfp8_scales as kernel_scales
from mategemm.runtime import calls
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
    ValueError; k a multiple of 128 either way. out: (cum_m, n) bf16 or None.
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
                                      scale_granularity_mnk=(1, 1, checked.k_granularity))


_warm = prepare.WarmCalls()


def grouped_matmul_dynamic_scaled_nvfp4(c, a, b, a_scales, b_scales, group_offsets, group_scale_offsets, expert_ids,
                                        expert_scales, num_active_experts) -> torch.Tensor:
    """c[rows of group g] = expert_scales[e] x A[rows] . B[e]^T with e = expert_ids[g], for NVFP4 operands
    (MAX's grouped_matmul_dynamic_scaled_nvfp4 on Hopper); c is written in place and returned.

    a (tokens, K/2) uint8 and b (E, N, K/2) uint8: two e2m1 values per byte along K, the even one in
    the low nibble. a_scales (tiles, ceil(K/64), 32, 4, 4) and b_scales (E, ceil(N/128), ceil(K/64),
    32, 4, 4) float8_e4m3fn: one scale per 16 values in NVIDIA's 128x4 blocked layout, as
    quant.nvfp4_quantize writes them (a scale's sign bit is ignored: block scales are non-negative).
    group_offsets (G + 1,) int32/uint32: group g is rows [group_offsets[g], group_offsets[g + 1]);
    group_scale_offsets (G,): the 128-row scale tile where group g's scales start; expert_ids (G,)
    int32, -1 skips the group (its rows of c are left as they were); expert_scales (E,) fp32.
    num_active_experts: the groups that count, an int on the host or a one-element int32 tensor on
    the GPU (read by the kernel: no host sync). c (tokens, N) bf16 or fp16. K a multiple of 32, N of 8.
    Product exact up to the order of the fp32 additions (every e2m1 x e4m3 product is a bf16 value).
    The routing is never read on the host: offsets are clipped to the rows of a and made monotone,
    an expert id out of range skips its group; nothing outside the tensors is read or written.
    Raises TypeError/ValueError naming the argument before anything runs.
    """
    key = prepare.memo_key("nvfp4", c, a, b, a_scales, b_scales, group_offsets, group_scale_offsets, expert_ids,
                           expert_scales, num_active_experts)
    call = _warm.get(key)
    if call is None:
        call = _nvfp4_call(key, c, a, b, a_scales, b_scales, group_offsets, group_scale_offsets, expert_ids,
                           expert_scales, num_active_experts, None)
    if call is not None:
        calls.launch(call, c)
    return c


def nvfp4_grouped_gemm(a, b, a_scales, b_scales, group_offsets, expert_ids, expert_scales, out=None,
                       out_dtype=torch.bfloat16) -> torch.Tensor:
    """out[rows of group g] = expert_scales[e] x A[rows] . B[e]^T, e = expert_ids[g] (-1: rows left as they
    were), every group of expert_ids active; returns out, (tokens, N) of out_dtype (bf16 or fp16) when None.

    As grouped_matmul_dynamic_scaled_nvfp4, with each group's A scales starting a new 128-row tile
    after the previous group's (quant.nvfp4_quantize(x, global_scale, group_offsets)'s layout), found
    by the kernel from group_offsets.
    """
    key = prepare.memo_key("nvfp4_pythonic", a, b, a_scales, b_scales, group_offsets, expert_ids, expert_scales, out,
                           out_dtype)
    call = _warm.get(key)
    if call is None:
        if out is None:
            if out_dtype not in validate.NVFP4_OUT_DTYPES:
                raise TypeError(f"out_dtype must be torch.bfloat16 or torch.float16, got {out_dtype}")
            validate.tensor("a", a, ndim=2, dtypes=(torch.uint8,))
            validate.tensor("b", b, ndim=3, dtypes=(torch.uint8,))
            out = torch.empty((a.shape[0], b.shape[1]), dtype=out_dtype, device=a.device)
        else:
            validate.tensor("out", out, ndim=2, dtypes=validate.NVFP4_OUT_DTYPES)
            if out_dtype != out.dtype:
                raise ValueError(f"out_dtype {out_dtype} differs from out.dtype {out.dtype}")
        validate.tensor("expert_ids", expert_ids, ndim=1)
        call = _nvfp4_call(key, out, a, b, a_scales, b_scales, group_offsets, None, expert_ids, expert_scales,
                           expert_ids.shape[0], "out")
    if out is None:
        out = torch.empty((a.shape[0], b.shape[1]), dtype=out_dtype, device=a.device)
    if call is not None:
        calls.launch(call, out)
    return out


def _nvfp4_call(key, c, a, b, a_scales, b_scales, group_offsets, group_scale_offsets, expert_ids, expert_scales,
                num_active_experts, pythonic_out: str | None):
    """The prepared launch of a checked call, remembered under `key`; None when there is nothing to
    compute (no rows, or no active group). pythonic_out: the Pythonic form's name of c (its
    group_scale_offsets is None), or None for the MAX form."""
    checked = validate.nvfp4_grouped(c, a, b, a_scales, b_scales, group_offsets, group_scale_offsets, expert_ids,
                                     expert_scales, num_active_experts, pythonic_out is None, pythonic_out or "c")
    if checked.problem.m == 0 or checked.problem.active == 0:
        return None
    nvfp4_plan = plan.nvfp4_grouped(checked.problem, rt_device.device_info(a.device.index))
    call = prepare.nvfp4_call(nvfp4_plan, a, b, a_scales, b_scales, group_offsets, group_scale_offsets, expert_ids,
                              expert_scales, checked.active)
    _warm.remember(key, call)
    return call
