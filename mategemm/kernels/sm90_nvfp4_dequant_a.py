"""Host side of kernels_src/sm90_nvfp4_dequant_a.cuh: a grouped NVFP4 GEMM's token rows decoded to bf16
(in K order for the GEMM core's NVFP4 kernel, in stream order for sm90_nvfp4_stream_gemm)."""
from __future__ import annotations

import torch

from mategemm.jit.cache import KernelCache, KernelSpec, instance_spec
from mategemm.runtime import device as rt_device
from mategemm.runtime import launch as rt
from mategemm.runtime.tma import encode_2d
from mategemm.types import Nvfp4Problem

KERNEL = "sm90_nvfp4_dequant_a"
THREADS = 256
STREAM_STAGE_VALUES = 256  # sm90_nvfp4_stream_gemm's stage of K
CTAS_PER_SM = 8
BOX_VALUES, BOX_SWIZZLE = 64, 128  # the GEMMs' TMA boxes of the rows: a stage's bf16 as the wgmma read it
TYPES = (rt.PTR, rt.I64, rt.PTR, rt.PTR, rt.PTR, rt.PTR, rt.INT, rt.INT, rt.INT, rt.PTR)

_loaded: dict[tuple, rt.LoadedKernel] = {}


def spec(max_groups: int, arch: str, stream_order: bool = False) -> KernelSpec:
    return instance_spec(KERNEL, arch, max_groups, *(("true",) if stream_order else ()))


def load(max_groups: int, arch: str, device_index: int, stream_order: bool = False,
         cache: KernelCache | None = None) -> rt.LoadedKernel:
    return rt.load_once(_loaded, (device_index, arch, max_groups, stream_order), spec(max_groups, arch, stream_order),
                        THREADS, cache=cache)


def grid(items: int, num_sms: int) -> int:
    """CTAs of THREADS threads for `items` thread items (this and the weights' decode kernel), at most
    CTAS_PER_SM per SM: the grid strides over the rest."""
    return max(1, min(-(-items // THREADS), num_sms * CTAS_PER_SM))


def row_values(k: int, stream_order: bool) -> int:
    """Values per row of the bf16 output: k, or in stream order whole 256-value stages."""
    return -(-k // STREAM_STAGE_VALUES) * STREAM_STAGE_VALUES if stream_order else k


class DequantA:
    """Writes the bf16 rows of `a` (m, k/2 packed) into an (m, row_values(k)) bf16 tensor, before every
    GEMM launch that loads them in boxes of `box_rows` rows."""

    __slots__ = ("kernel", "grid", "head", "m", "k", "box_rows", "tensors")

    def __init__(self, a: torch.Tensor, a_scales: torch.Tensor, group_offsets: torch.Tensor,
                 group_scale_offsets: torch.Tensor | None, active: torch.Tensor | None, num_groups: int, k: int,
                 max_groups: int, arch: str, num_sms: int, stream_order: bool = False, box_rows: int = 64):
        self.kernel = load(max_groups, arch, a.device.index, stream_order)
        self.m, self.k, self.box_rows = a.shape[0], row_values(k, stream_order), box_rows
        items = self.m * (self.k // 32 if stream_order else k // 16)  # a thread per 32 (16) values
        self.grid = grid(items, num_sms)
        self.head = (a.data_ptr(), a.stride(0), a_scales.data_ptr(), group_offsets.data_ptr(),
                     0 if group_scale_offsets is None else group_scale_offsets.data_ptr(),
                     0 if active is None else active.data_ptr(), num_groups, self.m, k)
        self.tensors = (a, a_scales, group_offsets, group_scale_offsets, active)  # read by address

    @classmethod
    def for_problem(cls, problem: Nvfp4Problem, a: torch.Tensor, a_scales: torch.Tensor, group_offsets: torch.Tensor,
                    group_scale_offsets: torch.Tensor | None, active: torch.Tensor | None, box_rows: int,
                    stream_order: bool = False) -> "DequantA":
        """The decode before a GEMM launch of `problem` on `a`'s device, its tiles `box_rows` rows."""
        info = rt_device.device_info(a.device.index)
        groups = problem.num_groups if problem.active is None else problem.active
        return cls(a, a_scales, group_offsets, group_scale_offsets, active, groups, problem.k, problem.max_groups,
                   info.arch, info.num_sms, stream_order, box_rows)

    def __call__(self, out: torch.Tensor, stream: int) -> torch.Tensor:
        """Writes the rows into `out` ((m, row_values(k)) bf16, row-contiguous; rows outside the groups
        untouched) on `stream`."""
        self.kernel.launch(self.grid, stream, self.kernel.pack((*self.head, out.data_ptr()), TYPES))
        return out

    def decoded_map(self, stream: int):
        """Decodes the rows into a new tensor on `stream`: its TMA descriptor for the GEMM launched next."""
        rows = torch.empty((self.m, self.k), dtype=torch.bfloat16, device=self.tensors[0].device)
        return encode_2d(self(rows, stream), BOX_VALUES, self.box_rows, BOX_SWIZZLE)
