"""Dense FP8 GEMM entry points (MATE's mate.gemm surface)."""
from __future__ import annotations

import torch

from mategemm import bmm, env, plan, prepare, validate
from mategemm.runtime import calls
from mategemm.runtime import device as rt_device


def gemm_fp8_nt_groupwise(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor,
                          scale_major_mode: str | None = None, mma_sm: int | None = None,
                          scale_granularity_mnk: tuple[int, int, int] | None = None, out: torch.Tensor | None = None,
                          out_dtype: torch.dtype | None = None, backend: str = "auto",
                          output_scale: torch.Tensor | None = None) -> torch.Tensor:
    """out(m, n) = (a * a_scale) @ (b * b_scale)^T with FP8 operands and FP32 block scales.

    a: (m, k) float8_e4m3fn or float8_e5m2, row-major; b: (n, k) likewise. k % 16 == 0, n % 8 == 0;
    a K tail past the last whole 128-K block has its own scales (k/128 below is ceil(k/128)).
    scale_granularity_mnk: (1, 128, 128) (default) or (1, 1, 128).
    scale_major_mode "K" (default): a_scale (m, k/128), b_scale (ceil(n/128), k/128) or (n, k/128);
    "MN": the transposes, (k/128, m) and (k/128, ceil(n/128)) or (k/128, n). fp32, any strides;
    with (1,128,128) and k <= 32768, an MN-major a_scale whose rows start 16-byte aligned (row
    stride a multiple of 4) is loaded by TMA with the tiles, the faster path at compute-bound sizes.
    out: optional (m, n) bf16/fp16 tensor, written in place (its row stride may exceed n).
    out_dtype: bf16 (default) or fp16 when out is None. mma_sm: None or 1.
    One or two rows with K >= 4096, N <= 4096 and a bf16 or fp16 output run on a GEMV (plan.dense_gemv),
    the rest on the GEMM.
    output_scale: one fp32 element on a's device: FP8 output, out (e4m3) = saturate(result /
    output_scale), rounded in the kernel's epilogue where n % 16 == 0, else formed in fp32 first
    (mategemm.bmm's accumulate path, batch 1).
    Raises TypeError/ValueError naming the argument before any launch.
    """
    key = _warm_key(a, b, a_scale, b_scale, out, scale_major_mode, mma_sm, scale_granularity_mnk, out_dtype,
                    backend, output_scale)
    call = _warm.get(key)
    if call is None:
        checked = validate.gemm_fp8_nt_groupwise(a, b, a_scale, b_scale, scale_major_mode, mma_sm,
                                                 scale_granularity_mnk, out, out_dtype, backend, output_scale)
        problem = checked.problem
        if problem.m == 0:
            return out if out is not None else torch.empty((0, problem.n), dtype=problem.out_dtype, device=a.device)
        if problem.out_dtype == torch.float8_e4m3fn and not plan.fp8_out_stored(problem):
            call = _FP8_THROUGH_FP32
        else:
            device = rt_device.device_info(a.device.index)
            gemv_plan = plan.dense_gemv(problem, device)
            if gemv_plan is not None:
                call = prepare.gemv_call(gemv_plan, a, b, a_scale, checked.sfa_strides, b_scale, checked.sfb_strides)
            else:
                gemm_plan = plan.dense(problem, device,
                                       a_scales_tma=plan.a_scales_tma_readable(checked.sfa_strides,
                                                                               a_scale.data_ptr(), problem.m))
                call = prepare.dense_call(gemm_plan, a, b, a_scale, checked.sfa_strides, b_scale,
                                          checked.sfb_strides)
        _warm.remember(key, call)
    if call is _FP8_THROUGH_FP32:
        return bmm.gemm_fp8_output(a, b, a_scale, b_scale, scale_major_mode, scale_granularity_mnk, out, output_scale)
    if out is None:
        out = torch.empty((a.shape[0], b.shape[0]), dtype=call.launch.out_dtype, device=a.device)
    calls.launch(call, out, out_scale=output_scale)
    return out


_FP8_THROUGH_FP32 = object()  # the memo's entry for an FP8 output the kernel cannot store (bmm's path)


_warm = prepare.WarmCalls(limit=4096)


def _warm_key(a, b, a_scale, b_scale, out, scale_major_mode, mma_sm, scale_granularity_mnk, out_dtype, backend,
              output_scale):
    """The memo key of a call (prepare.memo_key's fields), or None when an argument that must be a
    tensor is not one. NOTES: written out for the dense GEMM, the decode path's hot call: key and
    lookup take 1.7 us against 4.3 us through prepare.memo_key's generic loop (CPU tensors)."""
    try:
        out_key = None if out is None else (out.data_ptr(), out.get_device(), out.dtype, out.shape, out.stride())
        # output_scale's values and address may change between calls; what its checks read may not
        scale_key = None if output_scale is None else (output_scale.get_device(), output_scale.dtype,
                                                       output_scale.shape)
        return (a.data_ptr(), b.data_ptr(), a_scale.data_ptr(), b_scale.data_ptr(),
                a.get_device(), b.get_device(), a_scale.get_device(), b_scale.get_device(),
                a.dtype, b.dtype, a_scale.dtype, b_scale.dtype,
                a.shape, b.shape, a_scale.shape, b_scale.shape,
                a.stride(), b.stride(), a_scale.stride(), b_scale.stride(), out_key,
                scale_major_mode, mma_sm, scale_granularity_mnk, out_dtype, backend, scale_key,
                env.hot_knobs(), rt_device.get_num_mp_override())
    except (AttributeError, TypeError):
        return None
