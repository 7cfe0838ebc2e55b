"""Host side of kernels_src/sm90_nvfp4_dequant_a.cuh: a grouped NVFP4 GEMM's token rows decoded to bf16."""
from __future__ import annotations

import torch

from mategemm.jit.cache import KernelCache, KernelSpec, default_cache
from mategemm.runtime import launch as rt

KERNEL = "sm90_nvfp4_dequant_a"
THREADS = 256
CTAS_PER_SM = 8
TYPES = (rt.PTR, rt.I64, rt.PTR, rt.PTR, rt.PTR, rt.PTR, rt.INT, rt.INT, rt.INT, rt.PTR)

_loaded: dict[tuple, rt.LoadedKernel] = {}


def spec(max_groups: int, arch: str) -> KernelSpec:
    name_expr = f"&mategemm::{KERNEL}<{max_groups}>"
    return KernelSpec(KERNEL, f'#include "{KERNEL}.cuh"\n// instance: {name_expr}\n', name_expr, arch)


def load(max_groups: int, arch: str, device_index: int, cache: KernelCache | None = None) -> rt.LoadedKernel:
    key = (device_index, arch, max_groups)
    kernel = _loaded.get(key)
    if kernel is None:
        kernel = _loaded[key] = rt.LoadedKernel((cache or default_cache()).get(spec(max_groups, arch)), THREADS, 0)
    return kernel


class DequantA:
    """Writes the bf16 rows of `a` (m, k/2 packed) into an (m, k) bf16 tensor, before every GEMM launch
    that loads them."""

    __slots__ = ("kernel", "grid", "head", "tail", "m", "k", "tensors")

    def __init__(self, a: torch.Tensor, a_scales: torch.Tensor, group_offsets: torch.Tensor,
                 group_scale_offsets: torch.Tensor | None, active: torch.Tensor | None, num_groups: int, k: int,
                 max_groups: int, arch: str, num_sms: int):
        self.kernel = load(max_groups, arch, a.device.index)
        self.m, self.k = a.shape[0], k
        self.grid = max(1, min(-(-self.m * (k // 16) // THREADS), num_sms * CTAS_PER_SM))
        self.head = (a.data_ptr(), a.stride(0), a_scales.data_ptr(), group_offsets.data_ptr(),
                     0 if group_scale_offsets is None else group_scale_offsets.data_ptr(),
                     0 if active is None else active.data_ptr(), num_groups, self.m, k)
        self.tensors = (a, a_scales, group_offsets, group_scale_offsets, active)  # read by address

    def __call__(self, out: torch.Tensor, stream: int) -> None:
        self.kernel.launch(self.grid, stream, self.kernel.pack((*self.head, out.data_ptr()), TYPES))
