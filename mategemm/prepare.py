"""Prepared calls: a plan and the call's tensors -> its reusable launch (the kernel loaded, its TMA
descriptors built, the operand copies the plan asks for set up). The cold path of a call;
mategemm.runtime.calls runs what this builds.

Warm calls: a call whose tensors have the same addresses, dtypes, shapes and strides as an earlier
valid call, with the same options and knobs, passes the same checks and picks the same kernel, so
it reuses that call's prepared launch (WarmCalls) and skips validation, planning and descriptor
encoding."""
from __future__ import annotations

import torch

from mategemm import env, plan, validate
from mategemm.kernels import sm90_fp8_gemm_blockscaled as kernel_fp8
from mategemm.kernels import sm90_fp8_gemv as kernel_gemv
from mategemm.kernels import transpose_8bit
from mategemm.runtime import calls
from mategemm.runtime import device as rt_device


def operand_facts(mn_view: torch.Tensor | None, copy: bool) -> plan.Operand:
    """What the plan needs to know of one FP8 operand: its K-major view must be copied (`copy`),
    and the MN-major view offered (or None), which TMA can read as it is when it has 1-byte
    elements, unit MN stride, 16-byte rows and base, and stacked groups."""
    if mn_view is None:
        return plan.Operand(copy=copy)
    readable = mn_view.element_size() == 1 and validate.tma_rows(mn_view)
    return plan.Operand(copy=copy, mn_readable=readable, mn_bytes=mn_view.numel() * mn_view.element_size())


def operand(k_major_view: torch.Tensor, mn_view: torch.Tensor | None, how: str, staged: list) -> torch.Tensor:
    """The tensor the kernel reads for an operand staged `how` (plan.staging): its MN-major view,
    a K-major workspace copied before every launch, or the K-major view itself."""
    if how == plan.IN_KERNEL:
        return mn_view
    if how == plan.COPY:
        return k_major_copy(k_major_view, staged)
    return k_major_view


def k_major_copy(t: torch.Tensor, staged: list) -> torch.Tensor:
    """A contiguous workspace that `t` is copied into before every launch: by transpose_8bit when
    `t` is the transpose of an MN-major FP8 operand (torch's strided copy of 1-byte elements moved
    ~0.3 TB/s on the H200), else by torch."""
    workspace = torch.empty(t.shape, dtype=t.dtype, device=t.device)
    source = t.transpose(-1, -2)
    if t.is_cuda and transpose_8bit.supported(source):
        staged.append(transpose_8bit.Transpose(source, workspace))
    else:
        staged.append(calls.TorchCopy(workspace, t))
    return workspace


def gemm_launch(gemm_plan: plan.GemmPlan, a, b, sfa, sfa_strides, sfb, sfb_strides,
                group: kernel_fp8.GroupArgs | None = None, act_params=None, act_scales=None) -> kernel_fp8.Launch:
    """The plan's kernel, loaded on the operands' device, with the launch of these tensors (the
    gated GEMM's with act_params (alpha, beta, limit) and its output's scales act_scales)."""
    index = a.device.index
    args = (gemm_plan.problem, gemm_plan.config, a, b, sfa, sfa_strides, sfb, sfb_strides, group)
    with torch.cuda.device(index):
        kernel = kernel_fp8.load(gemm_plan.spec, gemm_plan.config, index)
        if act_params is None:
            return kernel_fp8.Launch(kernel, *args)
        return kernel_fp8.GatedLaunch(kernel, *args, act_params=act_params, act_scales=act_scales)


def dense_call(gemm_plan: plan.GemmPlan, a, b, sfa, sfa_strides, sfb, sfb_strides) -> calls.PreparedCall:
    """A dense call's launch, after the copy of A's scales for TMA if the plan asks for it."""
    staged = []
    sfa, sfa_strides = a_scales_for_kernel(gemm_plan, sfa, sfa_strides, staged)
    return calls.PreparedCall(gemm_launch(gemm_plan, a, b, sfa, sfa_strides, sfb, sfb_strides), tuple(staged), 0)


def gemv_call(gemv_plan: plan.GemvPlan, a, b, sfa, sfa_strides, sfb, sfb_strides) -> calls.PreparedCall:
    """A dense call of 1-2 rows on the GEMV (plan.dense_gemv), scales read as given."""
    index = a.device.index
    with torch.cuda.device(index):
        kernel = kernel_gemv.load(gemv_plan.spec, index)
    return calls.PreparedCall(kernel_gemv.Launch(kernel, gemv_plan.problem, gemv_plan.warps_per_col, a, b, sfa,
                                                 sfa_strides, sfb, sfb_strides), (), 0)


def grouped_call(gemm_plan: plan.GemmPlan, a, b, sfa, sfa_strides, sfb, sfb_strides, group: kernel_fp8.GroupArgs,
                 staged: list) -> calls.PreparedCall:
    """A grouped call's launch after its staged copies (A's scales' for TMA too, if the plan asks);
    the masked overlap threshold with it."""
    sfa, sfa_strides = a_scales_for_kernel(gemm_plan, sfa, sfa_strides, staged)
    launch = gemm_launch(gemm_plan, a, b, sfa, sfa_strides, sfb, sfb_strides, group)
    return calls.PreparedCall(launch, tuple(staged), -(-gemm_plan.problem.n // gemm_plan.config.block_n))


def moe_gemm1_call(gemm_plan: plan.GemmPlan, a, sfa, w1, w1_scale, counts, gather=None, act_params=None,
                   act_scales=None) -> calls.PreparedCall:
    """A fused MoE layer's first GEMM (plan.moe_gemm1): a (rows, K) FP8 with scales sfa (rows, K/128)
    of any strides, w1 (E, 2N, K) contiguous with w1_scale (E, 2N/128, K/128), counts per expert
    (int32, on the device); gather: (int64 index per GEMM row, divisor) when the plan gathers A's
    rows, `a` then being the tokens' rows. It writes its `out`: (rows, 2N) bf16, or for the gated
    GEMM (rows, N) e4m3 and act_scales (rows, N/128) from act_params (alpha, beta, limit)."""
    staged = []
    sfa, sfa_strides = a_scales_for_kernel(gemm_plan, sfa, (sfa.stride(0), sfa.stride(1)), staged)
    rows, div = gather if gather is not None else (None, 1)
    group = kernel_fp8.GroupArgs(counts, sfb_stride_group=w1_scale.stride(0), gather=rows, gather_div=div)
    launch = gemm_launch(gemm_plan, a, w1, sfa, sfa_strides, w1_scale, (w1_scale.stride(1), w1_scale.stride(2)),
                         group, act_params, act_scales)
    return calls.PreparedCall(launch, tuple(staged), 0)


def a_scales_for_kernel(gemm_plan: plan.GemmPlan, sfa, sfa_strides, staged: list):
    """(A's scales, their strides) as the kernel reads them: with gemm_plan.copy_a_scales, an MN-major
    workspace TMA reads (rows of m floats, padded to 16 bytes), refilled by a staged copy before each
    launch; otherwise as given."""
    if not gemm_plan.copy_a_scales:
        return sfa, sfa_strides
    m, k_blocks = gemm_plan.problem.m, gemm_plan.problem.k_blocks
    row = -(-m // 4) * 4
    workspace = torch.empty_strided((k_blocks, m), (row, 1), dtype=torch.float32, device=sfa.device)
    staged.append(calls.TorchCopy(workspace, torch.as_strided(sfa, (k_blocks, m), (sfa_strides[1], sfa_strides[0]))))
    return workspace, (1, row)


def nvfp4_call(nvfp4_plan: plan.Nvfp4Plan, a, b, a_scales, b_scales, group_offsets, group_scale_offsets, expert_ids,
               expert_scales, active) -> calls.PreparedCall:
    """The NVFP4 grouped GEMM's kernel, loaded on the operands' device, with the launch of these tensors."""
    index = a.device.index
    with torch.cuda.device(index):
        module = nvfp4_plan.kernel
        kernel = module.load(nvfp4_plan.spec, nvfp4_plan.config, index)
        launch = module.Launch(kernel, nvfp4_plan.problem, nvfp4_plan.config, a, b, a_scales, b_scales,
                               group_offsets, group_scale_offsets, expert_ids, expert_scales, active)
    return calls.PreparedCall(launch, (), 0)


class WarmCalls:
    """The warm-call memo: prepared calls by memo key, bounded (cleared when full)."""

    def __init__(self, limit: int = 1024):
        self._calls: dict[tuple, object] = {}
        self._limit = limit

    def get(self, key):
        if key is None:
            return None
        try:
            return self._calls.get(key)
        except TypeError:  # an unhashable option (e.g. a list): checked the long way, not memoised
            return None

    def remember(self, key, call) -> None:
        if key is None:
            return
        if len(self._calls) >= self._limit:
            self._calls.clear()
        try:
            self._calls[key] = call
        except TypeError:  # unhashable: not memoised
            pass


def memo_key(*values):
    """Each tensor by address, device, dtype, shape and strides; other values as they are; the
    knobs a call depends on. None when a value cannot be keyed (checked the long way)."""
    key = []
    try:
        for v in values:
            items = v if isinstance(v, (tuple, list)) else (v,)  # (tensor, scale) pairs, recipe tuples
            if items is v:
                key.append(len(v))  # a tuple's length: (1, 2), 3 differs from 1, (2, 3)
            for item in items:
                if isinstance(item, torch.Tensor):
                    key += (item.data_ptr(), item.get_device(), item.dtype, item.shape, item.stride())
                else:
                    hash(item)
                    key.append(item)
    except (AttributeError, TypeError):
        return None
    key += (env.hot_knobs(), rt_device.get_num_mp_override())
    return tuple(key)
