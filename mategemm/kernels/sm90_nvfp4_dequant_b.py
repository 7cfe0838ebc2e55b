"""Host side of kernels_src/sm90_nvfp4_dequant_b.cuh: the weights of a grouped NVFP4 GEMM's groups decoded
to bf16 in group order, with the group-to-weights map and the groups' scales the GEMM then reads."""
from __future__ import annotations

import torch

from mategemm.jit.cache import KernelCache, KernelSpec, instance_spec
from mategemm.kernels import sm90_nvfp4_dequant_a as kernel_dequant_a
from mategemm.runtime import launch as rt
from mategemm.runtime.tma import encode_2d

KERNEL = "sm90_nvfp4_dequant_b"
THREADS = kernel_dequant_a.THREADS  # kDequantThreads, shared with the rows' decode
TYPES = (rt.PTR, rt.I64, rt.I64, rt.PTR, rt.PTR, rt.PTR, rt.PTR, rt.INT, rt.INT, rt.INT, rt.INT, rt.PTR, rt.PTR,
         rt.PTR)

_loaded: dict[tuple, rt.LoadedKernel] = {}


def spec(arch: str) -> KernelSpec:
    return instance_spec(KERNEL, arch)


def load(arch: str, device_index: int, cache: KernelCache | None = None) -> rt.LoadedKernel:
    return rt.load_once(_loaded, (device_index, arch), spec(arch), THREADS, cache=cache)


class DequantB:
    """Decodes, before every GEMM launch, the weights b (E, n, k/2 packed) of each of `num_groups` groups
    (expert_ids[g], the first `active` groups) into a new (num_groups * n, k) bf16 tensor, with the
    groups' map (g or -1) and scales (expert_scales[expert_ids[g]]) the GEMM reads instead of
    expert_ids and expert_scales. The GEMM loads the weights in boxes of `box_rows` rows."""

    __slots__ = ("kernel", "grid", "head", "rows", "k", "num_groups", "box_rows", "tensors")

    def __init__(self, b: torch.Tensor, b_scales: torch.Tensor, expert_ids: torch.Tensor,
                 expert_scales: torch.Tensor, active: torch.Tensor | None, num_groups: int, k: int, arch: str,
                 num_sms: int, box_rows: int):
        self.kernel = load(arch, b.device.index)
        experts, n = b.shape[0], b.shape[1]
        self.rows, self.k, self.num_groups, self.box_rows = num_groups * n, k, num_groups, box_rows
        items = self.rows * (k // 16)  # a thread per 16 values
        self.grid = kernel_dequant_a.grid(items, num_sms)
        self.head = (b.data_ptr(), b.stride(0), b.stride(1), b_scales.data_ptr(), expert_ids.data_ptr(),
                     expert_scales.data_ptr(), 0 if active is None else active.data_ptr(), num_groups, experts, n, k)
        self.tensors = (b, b_scales, expert_ids, expert_scales, active)  # read by address

    def __call__(self, stream: int) -> tuple:
        """Decodes on `stream`: (the weights' TMA descriptor, group map, group scales) for the GEMM
        launched next; the tensors are new with every call."""
        device = self.tensors[0].device
        weights = torch.empty((self.rows, self.k), dtype=torch.bfloat16, device=device)
        group_experts = torch.empty(self.num_groups, dtype=torch.int32, device=device)
        group_scales = torch.empty(self.num_groups, dtype=torch.float32, device=device)
        self.kernel.launch(self.grid, stream, self.kernel.pack(
            (*self.head, weights.data_ptr(), group_experts.data_ptr(), group_scales.data_ptr()), TYPES))
        tmap = encode_2d(weights, kernel_dequant_a.BOX_VALUES, self.box_rows, kernel_dequant_a.BOX_SWIZZLE)
        return tmap, (weights, group_experts, group_scales)
