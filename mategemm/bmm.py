"""Batched FP8 GEMM (MATE's mate.gemm.bmm_fp8) on the block-scaled core's batched mode.

Every recipe runs on the GEMM core. Block recipes promote per 128-K block as the dense GEMM does
(sm90_fp8_gemm_blockscaled); per-row (1,-1,-1) and per-tensor (-1,-1,-1) scales, and bmm_fp16,
take sm90_gemm_scale_at_end (the wgmma accumulate over all of K, then acc *= sa[row] * sb), a
per-tensor A scale being a per-row one read through a zero stride. Outputs:
- bf16/fp16 with no `c`: stored by the kernel (a 3-D TMA store per batch entry); FP8 with
  `output_scale` and no `c` too where n % 16 == 0 (the epilogue divides by output_scale and rounds);
- fp32, or any output with `c`, or another FP8 one: the kernel adds its fp32 product into an fp32
  tensor that holds `c` (or zeros) — `out` itself for an fp32 output, else a workspace then
  converted (one extra pass over the output).
M-major A / N-major B: FP8 wgmma reads K-major shared memory, so such an operand is either
transposed in shared memory by the GEMM itself (the kernel's producer warps; it costs shared-memory
bandwidth and caps the GEMM near 600 TFLOPS per-tensor, 250 block-scaled on an H200) or copied
K-major first by transpose_8bit (a read and a write of the operand at ~3 TB/s). The heuristic
(heuristics.grouped.transpose_in_kernel) takes the cheaper: in the kernel where the GEMM is
memory-bound (decode-like shapes), the copy where it is compute-bound.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from mategemm import plan, prepare, validate
from mategemm.kernels import sm90_fp8_gemm_blockscaled as kernel_fp8
from mategemm.quant import FP8_MAX
from mategemm.runtime import calls
from mategemm.runtime import device as rt_device


class _BmmCall(NamedTuple):
    prepared: calls.PreparedCall
    out_shape: tuple
    accumulates: bool  # the kernel adds its fp32 product into an fp32 tensor (plan.batched_problem)


_warm = prepare.WarmCalls()


def bmm_fp8(a, b, a_scale, b_scale, out_dtype, out=None, backend="auto", scale_granularity_mnk=None,
            output_scale=None, c=None, major_a_mode="K", major_b_mode="K") -> torch.Tensor:
    """out[i] = (a[i] * a_scale) @ (b[i] * b_scale)^T (+ c[i]) for every batch entry i.

    a: (batch, m, k) fp8 ("K") or (batch, k, m) ("M"); b: (batch, n, k) ("K") or (batch, k, n) ("N");
    the declared major dimension has stride 1. k % 16 == 0 (k % 128 == 0 with an MN-major operand),
    n % 8 == 0; a K tail past the last whole 128-K block has its own scales (k/128 below is ceil(k/128)).
    scale_granularity_mnk (default (-1,-1,-1)):
      (-1,-1,-1) per tensor: a_scale and b_scale fp32 with 1 element (shape () or (1,)) or batch;
      (1,-1,-1) per row of A: a_scale (batch, m), b_scale per tensor as above;
      (1,128,128): a_scale (batch, m, k/128), b_scale (batch, ceil(n/128), k/128);
      (1,1,128): a_scale (batch, m, k/128), b_scale (batch, n, k/128).
    out_dtype: bf16, fp16, fp32, or float8_e4m3fn with output_scale (one fp32 element):
    out = saturate_e4m3(result / output_scale). c: optional fp32 (batch, m, n) added to the product.
    out: optional (batch, m, n) of out_dtype, written in place.
    """
    key = prepare.memo_key("bmm_fp8", a, b, a_scale, b_scale, out_dtype, out, backend, scale_granularity_mnk,
                         _layout(output_scale), _layout(c), major_a_mode, major_b_mode)
    call = _warm.get(key)
    if call is None:
        checked = validate.bmm_fp8(a, b, a_scale, b_scale, out_dtype, out, backend, scale_granularity_mnk,
                                   output_scale, c, major_a_mode, major_b_mode)
        if checked.problem.m == 0 or checked.problem.num_groups == 0:
            return _empty_result(a, out, out_dtype, checked)
        call = _prepare(a, b, a_scale, b_scale, checked)
        _warm.remember(key, call)
    return _run(call, a.device, out_dtype, out, c, output_scale)


def _run(call: _BmmCall, device, out_dtype, out, c, output_scale) -> torch.Tensor:
    """Launch a prepared batched call: straight into `out`, or through an fp32 accumulator."""
    if out is None:
        out = torch.empty(call.out_shape, dtype=out_dtype, device=device)
    if not call.accumulates:
        calls.launch(call.prepared, out, out_scale=output_scale)
        return out
    acc = out if out_dtype == torch.float32 else torch.empty(call.out_shape, dtype=torch.float32, device=device)
    if c is not None:
        acc.copy_(c)
    else:
        acc.zero_()
    calls.launch(call.prepared, acc)
    if out_dtype == torch.float32:
        return out
    if output_scale is not None:
        fp8_max = FP8_MAX[out_dtype]
        out.copy_(acc.div_(output_scale.reshape(())).clamp_(-fp8_max, fp8_max))
    else:
        out.copy_(acc)
    return out


def bmm_fp16(a, b, out_dtype, out=None, backend="auto", c=None) -> torch.Tensor:
    """out[i] = a[i] @ b[i]^T (+ c[i]) with a (batch, m, k), b (batch, n, k) both fp16 or both bf16.

    The same kernel as bmm_fp8 with wgmma k16 (HGMMA) and no scales. k % 8 == 0 (a K tail below
    64 is zero-filled), n % 8 == 0. out_dtype bf16/fp16/fp32; c optional fp32 (batch, m, n).
    """
    key = prepare.memo_key("bmm_fp16", a, b, out_dtype, out, backend, _layout(c))
    call = _warm.get(key)
    if call is None:
        checked = validate.bmm_fp16(a, b, out_dtype, out, backend, c)
        if checked.problem.m == 0 or checked.problem.num_groups == 0:
            return _empty_result(a, out, out_dtype, checked)
        # No scales: the kernel never reads its scale pointers (a's address stands in).
        call = _prepare(a, b, a, a, checked)
        _warm.remember(key, call)
    return _run(call, a.device, out_dtype, out, c, None)


def _prepare(a, b, a_scale, b_scale, checked: validate.BmmChecked) -> _BmmCall:
    problem = plan.batched_problem(checked.problem, checked.add_c)
    a_k, a_mn = (a.transpose(1, 2), a) if checked.major_a == "M" else (a, None)
    b_k, b_mn = (b.transpose(1, 2), b) if checked.major_b == "N" else (b, None)
    problem, a_how, b_how = plan.staging(problem, prepare.operand_facts(a_mn, not checked.a_in_place),
                                         prepare.operand_facts(b_mn, not checked.b_in_place))
    staged = []
    a_op, b_op = prepare.operand(a_k, a_mn, a_how, staged), prepare.operand(b_k, b_mn, b_how, staged)
    gemm_plan = plan.grouped_gemm(problem, rt_device.device_info(a.device.index))
    group = kernel_fp8.GroupArgs(None, sfa_stride_group=checked.sfa_strides[2],
                                 sfb_stride_group=checked.sfb_strides[2])
    prepared = prepare.grouped_call(gemm_plan, a_op, b_op, a_scale, checked.sfa_strides[:2], b_scale,
                                    checked.sfb_strides[:2], group, staged)
    return _BmmCall(prepared, checked.out_shape, problem.out_dtype == torch.float32)


def _layout(t) -> str | None:
    """What the checks of an input read once per call (c, output_scale): its dtype, shape and
    device; its values and address may change between calls that reuse the checks."""
    return None if t is None else f"{t.dtype}{tuple(t.shape)}{t.device}" if isinstance(t, torch.Tensor) else repr(t)


def _empty_result(a, out, out_dtype, checked):
    if out is None:
        out = torch.empty(checked.out_shape, dtype=out_dtype, device=a.device)
    return out


def gemm_fp8_output(a, b, a_scale, b_scale, scale_major_mode, scale_granularity_mnk, out, output_scale):
    """gemm_fp8_nt_groupwise with an FP8 (e4m3) output the dense kernel cannot store itself
    (plan.fp8_out_stored): the batch-1 bmm with output_scale, through an fp32 tensor."""
    if scale_major_mode not in (None, "K"):
        a_scale, b_scale = a_scale.t(), b_scale.t()  # MN-major scales, seen K-major (any strides)
    out3 = None if out is None else out.unsqueeze(0)
    rec = scale_granularity_mnk or (1, 128, 128)
    result = bmm_fp8(a.unsqueeze(0), b.unsqueeze(0), a_scale.unsqueeze(0), b_scale.unsqueeze(0),
                     torch.float8_e4m3fn, out=out3, scale_granularity_mnk=rec, output_scale=output_scale)
    return result[0]

