"""Host side of kernels_src/sm90_nvfp4_stream_gemm.cuh: stub, TMA descriptors, launch."""
from __future__ import annotations

import torch

from mategemm.jit.cache import KernelSpec, instance_spec
from mategemm.kernels import sm90_fp8_gemm_blockscaled as kernel_fp8
from mategemm.kernels import sm90_nvfp4_dequant_a as kernel_dequant
from mategemm.kernels.sm90_nvfp4_grouped_gemm import OUT_TYPES
from mategemm.runtime import launch as rt
from mategemm.runtime.tma import encode_2d
from mategemm.types import GemmConfig, Nvfp4Problem

KERNEL = "sm90_nvfp4_stream_gemm"
# NOTES: per stage (the kernel's StreamLayout) TMA brings 128 packed bytes (256 values) of K by the
# tile's rows, and the four 512-byte scale chunks of those 256 values as 16 rows of 128 bytes.
PACKED_BOX_BYTES = 128
WEIGHT_ROWS = 128
SCALE_ROW_BYTES, SCALE_BOX_ROWS = 128, 16


def spec(problem: Nvfp4Problem, config: GemmConfig, arch: str) -> KernelSpec:
    """The specialisation for (rows of a group per tile, stages, CTAs per SM, output type, group table
    capacity[, the group's rows decoded beforehand])."""
    return instance_spec(KERNEL, arch, config.block_m, config.stages, config.ctas_per_sm,
                         f"mategemm::{OUT_TYPES[problem.out_dtype]}", problem.max_groups,
                         *(("true",) if config.decoded_a else ()))


load = kernel_fp8.load


class Launch:
    """Everything of one call but the output: descriptors and arguments built once, reusable."""

    __slots__ = ("kernel", "grid", "head", "_packed", "dequant_a")
    TYPES = (rt.TMAP, rt.TMAP, rt.TMAP, rt.TMAP, rt.PTR, rt.PTR, rt.PTR, rt.PTR, rt.PTR, rt.INT, rt.INT, rt.INT, rt.INT,
             rt.INT, rt.INT, rt.PTR, rt.INT)

    def __init__(self, kernel: rt.LoadedKernel, problem: Nvfp4Problem, config: GemmConfig, a: torch.Tensor,
                 b: torch.Tensor, a_scales: torch.Tensor, b_scales: torch.Tensor, group_offsets: torch.Tensor,
                 group_scale_offsets: torch.Tensor | None, expert_ids: torch.Tensor, expert_scales: torch.Tensor,
                 active: torch.Tensor | None):
        """As sm90_nvfp4_grouped_gemm.Launch."""
        self.kernel = kernel
        self.grid = config.num_mp
        experts, n = b.shape[0], b.shape[1]
        scale_rows = [s.view(torch.uint8).reshape(-1, SCALE_ROW_BYTES) for s in (a_scales, b_scales)]
        self.head = (encode_2d(a, PACKED_BOX_BYTES, config.block_m, 0),
                     encode_2d(b, PACKED_BOX_BYTES, WEIGHT_ROWS, 128, rows=experts * n),
                     *(encode_2d(rows, SCALE_ROW_BYTES, SCALE_BOX_ROWS, 0) for rows in scale_rows),
                     expert_scales.data_ptr(), group_offsets.data_ptr(), expert_ids.data_ptr(),
                     0 if group_scale_offsets is None else group_scale_offsets.data_ptr(),
                     0 if active is None else active.data_ptr(),
                     problem.num_groups if problem.active is None else problem.active, problem.num_experts,
                     problem.m, problem.n, problem.k, config.group_n)
        self._packed: dict[tuple, object] = {}  # packed arguments per (output address, stride, stream)
        self.dequant_a = None
        if config.decoded_a:  # the group's rows decoded by each call into a new tensor, its map made then
            self.dequant_a = kernel_dequant.DequantA.for_problem(problem, a, a_scales, group_offsets,
                                                                 group_scale_offsets, active, config.block_m,
                                                                 stream_order=True)

    def __call__(self, out: torch.Tensor, signal: int, out_scale: int, stream: int) -> None:
        """Launch writing `out` (m, n) on `stream`; signal and out_scale do not apply."""
        if self.dequant_a is not None:
            values = (self.dequant_a.decoded_map(stream), *self.head[1:], out.data_ptr(), out.stride(0))
            self.kernel.launch(self.grid, stream, self.kernel.pack(values, self.TYPES))
            return
        key = (out.data_ptr(), out.stride(0), stream)
        packed = self._packed.get(key)
        if packed is None:
            packed = rt.keep_packed(self._packed, key,
                                    self.kernel.pack((*self.head, out.data_ptr(), out.stride(0)), self.TYPES))
        self.kernel.launch(self.grid, stream, packed)
