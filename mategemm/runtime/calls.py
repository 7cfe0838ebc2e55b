"""Validated calls kept for reuse: the memo key of a call and the launch of a prepared call.

A call whose tensors have the same addresses, dtypes, shapes and strides as an earlier valid
call, with the same options and knobs, passes the same checks and picks the same kernel, so it
reuses that call's launch and skips validation, heuristics and descriptor encoding.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

from mategemm import env, validate
from mategemm.heuristics import grouped, parse_force_config
from mategemm.kernels import transpose_8bit
from mategemm.runtime import device as rt_device


class PreparedCall(NamedTuple):
    launch: object   # kernels' Launch: launch(out, stream, signal)
    staged: tuple    # copies run before each launch, called with the stream (K-major copies, host counts)
    threshold: int   # masked overlap: counter value at which a 64-row block is final


class TorchCopy(NamedTuple):
    """workspace.copy_(source) on torch's current stream."""

    workspace: torch.Tensor
    source: torch.Tensor

    def __call__(self, stream: int) -> None:
        self.workspace.copy_(self.source)


class WarmCalls:
    """A bounded dictionary of prepared calls."""

    def __init__(self, limit: int = 1024):
        self._calls: dict[tuple, PreparedCall] = {}
        self._limit = limit

    def get(self, key):
        return self._calls.get(key) if key is not None else None

    def remember(self, key, call: PreparedCall) -> None:
        if key is None:
            return
        if len(self._calls) >= self._limit:
            self._calls.clear()
        self._calls[key] = call


def memo_key(*values):
    """Each tensor by address, device, dtype, shape and strides; other values as they are; the
    knobs a call depends on. None when a value cannot be keyed (checked the long way)."""
    key = []
    try:
        for v in values:
            if isinstance(v, (tuple, list)):
                for t in v:
                    key += (t.data_ptr(), t.device, t.dtype, t.shape, t.stride())
            elif isinstance(v, torch.Tensor):
                key += (v.data_ptr(), v.device, v.dtype, v.shape, v.stride())
            else:
                hash(v)
                key.append(v)
    except (AttributeError, TypeError):
        return None
    key += (env.hot_knobs(), rt_device.get_num_mp_override())
    return tuple(key)


def operands(problem, a_k_major: torch.Tensor, a_mn: torch.Tensor | None, copy_a: bool, b_k_major: torch.Tensor,
             b_mn: torch.Tensor | None, copy_b: bool, staged: list) -> tuple:
    """(problem with mn_major set, A and B as the kernel reads them): each operand through operand(),
    transposed in the kernel where heuristics.grouped.transpose_in_kernel finds it cheaper than
    copying the MN-major ones (a_mn / b_mn: their MN-major views, or None) K-major first."""
    mn_bytes = sum(t.numel() for t in (a_mn, b_mn) if t is not None)
    in_kernel = grouped.transpose_in_kernel(problem, mn_bytes)
    a, a_in_kernel = operand(a_k_major, a_mn, copy_a, staged, in_kernel)
    b, b_in_kernel = operand(b_k_major, b_mn, copy_b, staged, in_kernel)
    return dataclasses.replace(problem, mn_major=a_in_kernel | b_in_kernel << 1), a, b


def operand(k_major_view: torch.Tensor, mn_view: torch.Tensor | None, copy: bool, staged: list,
            in_kernel: bool) -> tuple:
    """(tensor the kernel reads, whether it reads it MN-major) for one FP8 operand.

    An operand given MN-major (mn_view: (K rows, MN) or (groups, K rows, MN)) is read as it is and
    transposed in shared memory by the kernel if `in_kernel` (the heuristic's choice;
    MATEGEMM_FORCE_CONFIG transpose=1 or 0 overrides it) and TMA can address it (unit MN stride,
    16-byte rows and base, groups stacked). Otherwise, or when `copy`, its K-major view is copied
    into a contiguous workspace before every launch.
    """
    if mn_view is not None and mn_view.element_size() == 1 and validate.tma_rows(mn_view):
        forced = parse_force_config(env.force_config()).get("transpose")
        if (in_kernel if forced is None else forced == 1):
            return mn_view, True
    return k_major(k_major_view, copy, staged), False


def k_major(t: torch.Tensor, copy: bool, staged: list) -> torch.Tensor:
    """`t` itself, or a contiguous workspace it is copied into before every launch: by
    transpose_8bit when `t` is the transpose of an MN-major FP8 operand (torch's strided copy of
    1-byte elements moved ~0.3 TB/s on the H200), else by torch."""
    if not copy:
        return t
    workspace = torch.empty(t.shape, dtype=t.dtype, device=t.device)
    source = t.transpose(-1, -2)
    if t.is_cuda and transpose_8bit.supported(source):
        staged.append(transpose_8bit.Transpose(source, workspace))
    else:
        staged.append(TorchCopy(workspace, t))
    return workspace


def launch(call: PreparedCall, out: torch.Tensor, signal: torch.Tensor | None = None) -> None:
    """Run the staged copies, then the kernel writing `out`, on torch's current stream of out's device."""
    rt_device.run_on_current_stream(out.device.index, _run_prepared, call, out,
                                    0 if signal is None else signal.data_ptr())


def _run_prepared(call: PreparedCall, out: torch.Tensor, signal_ptr: int, stream: int) -> None:
    for copy in call.staged:
        copy(stream)
    call.launch(out, stream, signal_ptr)
