"""Mixture-of-Experts grouped FP8 GEMMs (MATE's mate.gemm MoE surface, FlashInfer's masked form).

All modes run on the GEMM core (kernels_src/gemm/, its scheduler in a
group mode): the routing (ids, counts, prefix sums) stays on the GPU and is read by the kernel,
so no call synchronises with the host and every call can be captured in a CUDA graph.

Operand layouts: K-major operands are the fast path. An M-major (or N-major) operand is either
transposed in shared memory by the GEMM (memory-bound shapes) or copied once per call into a
K-major workspace by transpose_8bit (a read and a write of the operand, e.g. 4 x 8192 x 7168 FP8 =
235 MB each way, ~0.16 ms on an H200); see mategemm.bmm and heuristics.grouped.transpose_in_kernel.
An M-major A of the packed modes (per_expert, psum_expert) is always copied: their segments start
at any row, and a TMA box must start 16-byte aligned along its contiguous dimension.
"""
from __future__ import annotations

import torch

from mategemm import plan, prepare, validate
from mategemm.kernels import sm90_fp8_gemm_blockscaled as kernel_fp8
from mategemm.runtime import calls
from mategemm.runtime import device as rt_device

SIGNAL_BLOCK_M = 64  # rows per overlap-signal counter


_warm = prepare.WarmCalls()


def ragged_m_moe_gemm_8bit(input_a, input_b, ragged_tokens_info, out, gemm_mode="per_token", major_a_mode="K",
                           major_b_mode="K", scale_granularity_mnk=None, num_mp=None, alignment_m=None,
                           backend="auto") -> torch.Tensor:
    """out[rows of expert e] = A[rows] @ B[e]^T for tokens of all experts stacked along M.

    input_a: (a (rows, k) fp8, a scales (rows, k/128) fp32); input_b: (b (E, n, k) fp8, b scales
    (E, ceil(n/128), k/128) for recipe (1,128,128) (default) or (E, n, k/128) for (1,1,128)).
    gemm_mode "per_token": ragged_tokens_info is an int32 expert id per row, -1 on padding rows;
    each expert's rows are contiguous and start at a multiple of alignment_m (128 or 256). Rows
    with id -1 are not computed and their rows of `out` are left as they were.
    "per_expert": int32 token counts per expert, rows packed in expert order with no padding.
    "psum_expert": the inclusive prefix sums of those counts. Rows past the last expert's are
    left as they were. out: (rows, n) bf16/fp16, written in place and returned.
    major_a_mode "M" / major_b_mode "N": the operand is transposed in the kernel or copied K-major
    first (see the module doc).
    The routing is never read on the host: an id out of range skips its tile; counts beyond the
    rows there are are clipped; nothing outside the tensors is read or written.
    """
    key = prepare.memo_key("ragged_m", input_a, input_b, ragged_tokens_info, out, gemm_mode, major_a_mode, major_b_mode,
                         scale_granularity_mnk, num_mp, alignment_m, backend)
    call = _warm.get(key)
    if call is None:
        checked = validate.ragged_m(input_a, input_b, ragged_tokens_info, out, gemm_mode, major_a_mode, major_b_mode,
                                    scale_granularity_mnk, num_mp, alignment_m, backend)
        if checked.problem.m == 0:
            return out
        (a, sfa), (b, sfb) = input_a, input_b
        a_mn = a.t() if checked.major_a == "M" else None
        b_mn = b.transpose(1, 2) if checked.major_b == "N" else None
        problem, a_how, b_how = plan.staging(checked.problem, prepare.operand_facts(a_mn, checked.major_a == "M"),
                                             prepare.operand_facts(b_mn, checked.major_b == "N"))
        staged = []
        a, b = prepare.operand(a, a_mn, a_how, staged), prepare.operand(b, b_mn, b_how, staged)
        align = checked.alignment_m if problem.group_mode == "per_token" else 0
        gemm_plan = plan.grouped_gemm(problem, rt_device.device_info(a.device.index), num_mp=num_mp,
                                      alignment_m=align, a_scales_tma=plan.a_scales_tma_readable(
                                          checked.sfa_strides, sfa.data_ptr(), problem.m))
        group = kernel_fp8.GroupArgs(ragged_tokens_info, sfb_stride_group=sfb.stride(0))
        call = prepare.grouped_call(gemm_plan, a, b, sfa, checked.sfa_strides, sfb, checked.sfb_strides, group,
                                    staged)
        _warm.remember(key, call)
    calls.launch(call, out)
    return out


def masked_moe_gemm_8bit(input_a, input_b, masked_tokens_info, out=None, scale_granularity_mnk=None,
                         expect_tokens=None, enable_overlap=False, signal=None, backend="auto"):
    """out[e, :masked_tokens_info[e]] = A[e, :count] @ B[e]^T; rows past each count are untouched.

    input_a: (a (E, max_m, k) fp8, scales (E, max_m, k/128) fp32); input_b as ragged_m_moe_gemm_8bit.
    out: (E, max_m, n) bf16/fp16, or None for a new bf16 tensor. expect_tokens: a host-side hint of
    the rows per expert for the tile choice (default max_m). A count above max_m counts as max_m.
    enable_overlap: the kernel adds 1 (release semantics, GPU scope) to
    signal[e * ceil(max_m / 64) + r // 64] each time one N-block of the 64 rows starting at row r of
    expert e is stored; those rows are final when the counter reaches `threshold`. signal (int32,
    E * ceil(max_m / 64)) is added to, so pass zeros; None allocates zeros. Returns out, or
    (out, signal, block_m, threshold) with enable_overlap, block_m being the 64 rows per counter.
    """
    key = prepare.memo_key("masked", input_a, input_b, masked_tokens_info, out, scale_granularity_mnk, expect_tokens,
                         enable_overlap, backend)
    call = _warm.get(key) if signal is None else None
    if call is None:
        checked = validate.masked(input_a, input_b, masked_tokens_info, out, scale_granularity_mnk, expect_tokens,
                                  enable_overlap, signal, backend)
        (a, sfa), (b, sfb), max_m = input_a, input_b, checked.max_m
        gemm_plan = plan.grouped_gemm(checked.problem, rt_device.device_info(a.device.index), max_m=max_m,
                                      expect_tokens=expect_tokens, a_scales_tma=plan.a_scales_tma_readable(
                                          checked.sfa_strides, sfa.data_ptr(), checked.problem.m))
        group = kernel_fp8.GroupArgs(masked_tokens_info, stride=max_m, sfb_stride_group=sfb.stride(0),
                                     signal_blocks=-(-max_m // SIGNAL_BLOCK_M) if enable_overlap else 0)
        call = prepare.grouped_call(gemm_plan, a.flatten(0, 1), b, sfa, checked.sfa_strides, sfb,
                                    checked.sfb_strides, group, [])
        if signal is None:
            _warm.remember(key, call)
    a = input_a[0]
    if out is None:
        out = torch.empty((a.shape[0], a.shape[1], input_b[0].shape[1]), dtype=torch.bfloat16, device=a.device)
    if not enable_overlap:
        calls.launch(call, out)
        return out
    if signal is None:
        signal = torch.zeros(call.launch.signal_blocks_total, dtype=torch.int32, device=a.device)
    calls.launch(call, out, signal)
    return out, signal, SIGNAL_BLOCK_M, call.threshold


def grouped_gemm_16bit(a: torch.Tensor, b: torch.Tensor, info: torch.Tensor, out: torch.Tensor, mode: str, *,
                       alignment_m: int = 0, expect_tokens: int | None = None) -> torch.Tensor:
    """Grouped GEMMs of bf16 or fp16 operands without scales (mategemm.deep_gemm's m_grouped_bf16_*
    and k_grouped_bf16_* names run on it), written into `out`:
      per_token: out[r] = a[r] @ b[info[r]]^T for the rows r of a group, rows with info -1 left as
                 they were; groups start at multiples of alignment_m (128 or 256, default 128);
      masked:    out[g, :info[g]] = a[g, :info[g]] @ b[g]^T, rows past each count left as they were;
                 expect_tokens: the host's guess of the rows per group (default max_m);
      ragged_k:  out[g] += A_g @ B_g^T, A_g the K slice of group g of a (m, sum_k) (info: the slices'
                 K, multiples of 64), out float32 (E, m, n).
    Layouts and errors: validate.grouped_16bit. The kernel is the scale-at-end GEMM (HGMMA) in the
    group mode; the routing stays on the GPU (no host sync)."""
    key = prepare.memo_key("grouped_16bit", a, b, info, out, mode, alignment_m, expect_tokens)
    call = _warm.get(key)
    if call is None:
        checked = validate.grouped_16bit(a, b, info, out, mode)
        if alignment_m not in (0, 128, 256):
            raise ValueError(f"alignment_m must be 128 or 256, got {alignment_m!r}")
        if checked.problem.m == 0:
            return out
        device = rt_device.device_info(a.device.index)
        staged = []
        if mode == "ragged_k" and info.device != a.device:  # host counts, checked: copied at every call
            device_info = torch.empty_like(info, device=a.device)
            staged.append(calls.TorchCopy(device_info, info))
            info = device_info
        gemm_plan = plan.grouped_gemm(checked.problem, device, alignment_m=(alignment_m or 128) if mode == "per_token"
                                      else 0, max_m=checked.max_m, expect_tokens=expect_tokens)
        rows = a.flatten(0, 1) if mode == "masked" else a
        group = kernel_fp8.GroupArgs(info, stride=checked.max_m)
        # No scales: the kernel never reads its scale pointers (a's address stands in).
        call = prepare.grouped_call(gemm_plan, rows, b, a, (0, 0), a, (0, 0), group, staged)
        _warm.remember(key, call)
    calls.launch(call, out)
    return out


def batch_deepgemm_fp8_nt_groupwise(a, b, a_scale, b_scale, masked_m, expected_m, scale_granularity_mnk=(1, 128, 128),
                                    out=None, out_dtype=None) -> torch.Tensor:
    """FlashInfer's masked batched FP8 GEMM: out[i, :masked_m[i]] = a[i, :masked_m[i]] @ b[i]^T.

    a (B, m, k), b (B, n, k) fp8; a_scale (B, m, k/128), b_scale (B, ceil(n/128), k/128) (or (B, n, k/128)
    for (1,1,128)); masked_m int32 (B,); expected_m: host hint of the rows per batch entry.
    out (B, m, n) or None (out_dtype, default bf16). Rows past masked_m[i] are left as they were.
    """
    if out is None:
        if out_dtype is not None and out_dtype not in validate.OUT_DTYPES:
            raise TypeError(f"out_dtype must be torch.bfloat16 or torch.float16, got {out_dtype}")
        validate.tensor("a", a, ndim=3, dtypes=validate.FP8_DTYPES)
        validate.tensor("b", b, ndim=3, dtypes=validate.FP8_DTYPES)
        out = torch.empty((a.shape[0], a.shape[1], b.shape[1]), dtype=out_dtype or torch.bfloat16, device=a.device)
    elif out_dtype is not None and out_dtype != out.dtype:
        raise ValueError(f"out_dtype {out_dtype} differs from out.dtype {out.dtype}")
    try:
        return masked_moe_gemm_8bit((a, a_scale), (b, b_scale), masked_m, out, scale_granularity_mnk,
                                    expect_tokens=expected_m)
    except (TypeError, ValueError) as exc:  # the checks name masked_moe_gemm_8bit's arguments: use ours
        message = str(exc)
        for theirs, ours in _FLASHINFER_NAMES:
            message = message.replace(theirs, ours)
        raise type(exc)(message) from None


_FLASHINFER_NAMES = (("input_a[0]", "a"), ("input_a[1]", "a_scale"), ("input_b[0]", "b"), ("input_b[1]", "b_scale"),
                     ("input_a", "(a, a_scale)"), ("input_b", "(b, b_scale)"), ("masked_tokens_info", "masked_m"),
                     ("expect_tokens", "expected_m"))


def ragged_k_moe_gemm_8bit(input_a, input_b, ragged_tokens_info, out, gemm_mode="per_expert", major_a_mode="M",
                           major_b_mode="N", scale_granularity_mnk=None, num_mp=None) -> torch.Tensor:
    """out[e] += A_e^T @ B_e with the tokens of all experts stacked along K (weight gradients).

    input_a: (a (sum_k, m) fp8, scales (sum_k/128, m) fp32); input_b: (b (sum_k, n), (sum_k/128, n)).
    A_e is rows [start_e, start_e + count_e) of a, count_e = ragged_tokens_info[e] (int32, a multiple of
    128, zero allowed; experts in order). out: (E, m, n) fp32, accumulated into. Recipe (1,1,128).
    major_a_mode "M" (default): a is row-major (sum_k, m) and is copied K-major first (or transposed
    in the kernel where that is cheaper, see the module doc); "K": a is
    the transpose view of a row-major (m, sum_k) tensor and is read as it is (the fast path). The
    same for b with "N"/"K". Counts on the CPU are checked (ValueError); counts on the GPU are not
    (no host sync): the kernel rounds each slice to whole 128-blocks and clips it to sum_k.
    """
    key = prepare.memo_key("ragged_k", input_a, input_b, ragged_tokens_info, out, gemm_mode, major_a_mode, major_b_mode,
                         scale_granularity_mnk, num_mp)
    call = _warm.get(key)
    if call is None:
        checked = validate.ragged_k(input_a, input_b, ragged_tokens_info, out, gemm_mode, major_a_mode,
                                    major_b_mode, scale_granularity_mnk, num_mp)
        (a, sfa), (b, sfb) = input_a, input_b
        a_mn, b_mn = (a if checked.major_a == "M" else None), (b if checked.major_b == "N" else None)
        problem, a_how, b_how = plan.staging(checked.problem, prepare.operand_facts(a_mn, checked.major_a == "M"),
                                             prepare.operand_facts(b_mn, checked.major_b == "N"))
        staged = []
        a_op, b_op = prepare.operand(a.t(), a_mn, a_how, staged), prepare.operand(b.t(), b_mn, b_how, staged)
        info = ragged_tokens_info
        if info.device != a.device:  # host counts, checked: copied to the GPU at every call
            device_info = torch.empty_like(info, device=a.device)
            staged.append(calls.TorchCopy(device_info, info))
            info = device_info
        scales_bulk = plan.ragged_k_scales_bulk_readable(checked.sfa_strides, sfa.data_ptr(), problem.m,
                                                         checked.sfb_strides, sfb.data_ptr(), problem.n)
        gemm_plan = plan.grouped_gemm(problem, rt_device.device_info(a.device.index), num_mp=num_mp,
                                      a_scales_tma=scales_bulk)
        call = prepare.grouped_call(gemm_plan, a_op, b_op, sfa, checked.sfa_strides, sfb, checked.sfb_strides,
                                    kernel_fp8.GroupArgs(info), staged)
        _warm.remember(key, call)
    elif ragged_tokens_info.device.type == "cpu":
        validate.ragged_k_host_counts(ragged_tokens_info, input_a[0].shape[0])
    calls.launch(call, out)
    return out
