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


def launch(call: PreparedCall, out: torch.Tensor, signal: torch.Tensor | None = None) -> None:
    """Run the staged copies, then the kernel writing `out`, on torch's current stream of out's device."""
    rt_device.run_on_current_stream(out.device.index, _run_prepared, call, out,
                                    0 if signal is None else signal.data_ptr())


def _run_prepared(call: PreparedCall, out: torch.Tensor, signal_ptr: int, stream: int) -> None:
    for copy in call.staged:
        copy(stream)
    call.launch(out, stream, signal_ptr)
