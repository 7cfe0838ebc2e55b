"""Running a prepared call: its staged copies, then its kernel, on torch's current stream."""
from __future__ import annotations

from typing import NamedTuple

import torch

from mategemm.runtime import device as rt_device


class PreparedCall(NamedTuple):
    launch: object   # kernels' Launch: launch(out, signal, out_scale, stream)
    staged: tuple    # copies run before each launch, called with the stream (K-major copies, host counts)
    threshold: int   # masked overlap: counter value at which a 64-row block is final


class TorchCopy(NamedTuple):
    """workspace.copy_(source) on torch's current stream."""

    workspace: torch.Tensor
    source: torch.Tensor

    def __call__(self, stream: int) -> None:
        self.workspace.copy_(self.source)


def launch(call: PreparedCall, out: torch.Tensor, signal: torch.Tensor | None = None,
           out_scale: torch.Tensor | None = None) -> None:
    """Run the staged copies, then the kernel writing `out`, on torch's current stream of out's device;
    `signal`: masked overlap counters; `out_scale`: an FP8 output's divisor (one fp32)."""
    signal_ptr = 0 if signal is None else signal.data_ptr()
    out_scale_ptr = 0 if out_scale is None else out_scale.data_ptr()
    # NOTES: a warm call with nothing staged goes to the launch directly: each Python frame on this
    # path is ~0.2 us of host time per call, which decode-sized kernels (~10 us) feel.
    if call.staged:
        rt_device.run_on_current_stream(out.device.index, _run_prepared, call, out, signal_ptr, out_scale_ptr)
    else:
        rt_device.run_on_current_stream(out.device.index, call.launch, out, signal_ptr, out_scale_ptr)


def _run_prepared(call: PreparedCall, out: torch.Tensor, signal_ptr: int, out_scale_ptr: int, stream: int) -> None:
    for copy in call.staged:
        copy(stream)
    call.launch(out, signal_ptr, out_scale_ptr, stream)
