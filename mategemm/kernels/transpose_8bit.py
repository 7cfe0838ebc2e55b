"""Host side of kernels_src/transpose_8bit.cuh: the K-major copy of an MN-major FP8 operand."""
from __future__ import annotations

import torch

from mategemm.jit.cache import KernelCache, KernelSpec, instance_spec
from mategemm.runtime import device as rt_device
from mategemm.runtime import launch as rt

KERNEL = "transpose_8bit"
TILE = 64
CTAS_PER_SM = 8  # 256 threads and 4 KB of shared memory each
TYPES = (rt.PTR, rt.PTR, rt.INT, rt.INT, rt.I64, rt.I64, rt.I64, rt.I64, rt.INT)

_loaded: dict[tuple, rt.LoadedKernel] = {}


def spec(vector_loads: bool, arch: str) -> KernelSpec:
    return instance_spec(KERNEL, arch, "true" if vector_loads else "false")


def load(vector_loads: bool, arch: str, device_index: int, cache: KernelCache | None = None) -> rt.LoadedKernel:
    return rt.load_once(_loaded, (device_index, arch, vector_loads), spec(vector_loads, arch), 256, cache=cache)


def supported(source: torch.Tensor) -> bool:
    """An MN-major view (K rows, MN) or (groups, K rows, MN) of 1-byte elements with unit MN stride
    and K a multiple of 128, whose offsets fit the kernel's arithmetic."""
    return (source.element_size() == 1 and source.dim() in (2, 3) and source.stride(-1) == 1
            and source.shape[-2] % 128 == 0 and source.shape[-1] < 2**31)


class Transpose:
    """Copies `source` (K rows, MN), or a stack of them, into `dest` (MN, K) contiguous: built once,
    called with a raw stream handle before every launch that reads `dest`."""

    __slots__ = ("kernel", "grid", "args", "tensors")

    def __init__(self, source: torch.Tensor, dest: torch.Tensor):
        src = source if source.dim() == 3 else source.unsqueeze(0)
        dst = dest if dest.dim() == 3 else dest.unsqueeze(0)
        groups, rows, cols = src.shape
        vector_loads = src.stride(1) % 16 == 0 and src.data_ptr() % 16 == 0
        index = source.device.index
        info = rt_device.device_info(index)
        with torch.cuda.device(index):
            self.kernel = load(vector_loads, info.arch, index)
        tiles = groups * (rows // TILE) * -(-cols // TILE)
        self.grid = max(1, min(tiles, info.num_sms * CTAS_PER_SM))
        values = (src.data_ptr(), dst.data_ptr(), rows, cols, src.stride(1), dst.stride(1), src.stride(0),
                  dst.stride(0), groups)
        self.args = self.kernel.pack(values, TYPES)
        self.tensors = (source, dest)  # the launch reads and writes them by address

    def __call__(self, stream: int) -> None:
        self.kernel.launch(self.grid, stream, self.args)
