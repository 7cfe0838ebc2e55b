"""Validated calls kept for reuse: the memo key of a call and the launch of a prepared call.

A call whose tensors have the same addresses, dtypes, shapes and strides as an earlier valid
call, with the same options and knobs, passes the same checks and picks the same kernel, so it
reuses that call's launch and skips validation, heuristics and descriptor encoding.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from mategemm import env
from mategemm.runtime import device as rt_device


class PreparedCall(NamedTuple):
    launch: object   # kernels' Launch: launch(out, stream, signal)
    staged: tuple    # (workspace, source) pairs copied before each launch (K-major copies, host counts)
    threshold: int   # masked overlap: counter value at which a 64-row block is final


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


def k_major(t: torch.Tensor, copy: bool, staged: list) -> torch.Tensor:
    """`t` itself, or a contiguous workspace it is copied into before every launch."""
    if not copy:
        return t
    workspace = torch.empty(t.shape, dtype=t.dtype, device=t.device)
    staged.append((workspace, t))
    return workspace


def launch(call: PreparedCall, out: torch.Tensor, signal: torch.Tensor | None = None) -> None:
    """Run the staged copies, then the kernel writing `out`, on torch's current stream of out's device."""
    for workspace, source in call.staged:
        workspace.copy_(source)
    index = out.device.index
    signal_ptr = 0 if signal is None else signal.data_ptr()
    if index == rt_device.current_device_index():
        call.launch(out, rt_device.current_stream_handle(index), signal_ptr)
    else:
        with torch.cuda.device(index):
            call.launch(out, rt_device.current_stream_handle(index), signal_ptr)
