"""Host side of kernels_src/sm90_mxfp8_scales.cuh: int32-packed UE8M0 exponents decoded to the fp32
scales of the FP8 grouped core, A's gathered per token row, in one launch."""
from __future__ import annotations

import torch

from mategemm.jit.cache import KernelCache, KernelSpec, instance_spec
from mategemm.runtime import launch as rt

KERNEL = "sm90_mxfp8_scales"
THREADS = 256
CTAS_PER_SM = 4
SMEM = (1024 + 1) * 4  # the experts' first scale rows (at most 1024 experts)
TYPES = (rt.PTR, rt.INT, rt.INT, rt.PTR, rt.INT, rt.INT, rt.PTR, rt.INT, rt.INT, rt.INT, rt.PTR, rt.PTR)

_loaded: dict[tuple, rt.LoadedKernel] = {}


def spec(arch: str) -> KernelSpec:
    return instance_spec(KERNEL, arch)


def load(arch: str, device_index: int, cache: KernelCache | None = None) -> rt.LoadedKernel:
    return rt.load_once(_loaded, (device_index, arch), spec(arch), THREADS, SMEM, cache=cache)


def decode(kernel: rt.LoadedKernel, a_scale: torch.Tensor, m_indptr: torch.Tensor, b_scale: torch.Tensor,
           sa: torch.Tensor, sb: torch.Tensor, num_sms: int, stream: int) -> None:
    """sa (cum_m, blocks) and sb (E, n, blocks) fp32 from the packed exponents, launched on `stream`."""
    cum_m, blocks = sa.shape
    experts, n, b_words = b_scale.shape
    items = (cum_m + experts * n) * blocks
    grid = max(1, min(-(-items // THREADS), num_sms * CTAS_PER_SM))
    values = (a_scale.data_ptr(), a_scale.stride(0), a_scale.shape[0], m_indptr.data_ptr(), experts, cum_m,
              b_scale.data_ptr(), b_words, experts * n, blocks, sa.data_ptr(), sb.data_ptr())
    kernel.launch(grid, stream, kernel.pack(values, TYPES))
