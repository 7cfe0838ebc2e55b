"""Host side of kernels_src/sm90_nvfp4_grouped_gemm.cuh: stub, TMA descriptors, launch."""
from __future__ import annotations

import torch

from mategemm.jit.cache import KernelSpec, instance_spec
from mategemm.kernels import sm90_fp8_gemm_blockscaled as kernel_fp8
from mategemm.kernels import sm90_nvfp4_dequant_a as kernel_dequant
from mategemm.kernels import sm90_nvfp4_dequant_b as kernel_dequant_b
from mategemm.runtime import device as rt_device
from mategemm.runtime import launch as rt
from mategemm.runtime.tma import encode_2d
from mategemm.types import GemmConfig, Nvfp4Problem

KERNEL = "sm90_nvfp4_grouped_gemm"
OUT_TYPES = {torch.bfloat16: "kOutBF16", torch.float16: "kOutF16"}
# NOTES: TMA boxes per stage (the kernel's Nvfp4StageLayout): 32 packed bytes (64 values) of K by
# the tile's rows, and scale chunks of 512 bytes (128 rows x 4 scales), addressed as 4 rows of 128.
PACKED_BOX_BYTES = 32
SCALE_ROW_BYTES, SCALE_CHUNK_ROWS = 128, 4
OUT_BOX_ROWS = 64  # the epilogue stores a 64-row wave at a time



def spec(problem: Nvfp4Problem, config: GemmConfig, arch: str) -> KernelSpec:
    """The specialisation for (tile, stages, output type, group table capacity, decoder warpgroups,
    operands decoded beforehand); M, N, K, the groups and the experts stay run-time."""
    return instance_spec(KERNEL, arch, config.block_m, config.block_n, config.stages,
                         f"mategemm::{OUT_TYPES[problem.out_dtype]}", config.out_swizzle, problem.max_groups,
                         config.decoder_wgs, "true" if config.decoded_a else "false",
                         *(("true",) if config.decoded_b else ()))


load = kernel_fp8.load  # the GEMM core's loader (one kernel per device and spec)


def _scale_rows(scales: torch.Tensor) -> torch.Tensor:
    """Blocked e4m3 scales as rows of 128 bytes (4 per 128-row chunk of one 64-value K step)."""
    return scales.view(torch.uint8).reshape(-1, SCALE_ROW_BYTES)


class Launch:
    """Everything of one call but the output: descriptors and arguments built once, reusable."""

    __slots__ = ("kernel", "grid", "head", "scale_maps", "group_args", "dims", "tail", "out_swizzle", "_packed",
                 "dequant_a", "dequant_b")
    TYPES = (rt.TMAP, rt.TMAP, rt.TMAP, rt.TMAP, rt.TMAP, rt.PTR, rt.PTR, rt.PTR, rt.PTR, rt.PTR, rt.INT, rt.INT,
             rt.INT, rt.INT, rt.INT, rt.INT, rt.PTR, rt.INT)

    def __init__(self, kernel: rt.LoadedKernel, problem: Nvfp4Problem, config: GemmConfig, a: torch.Tensor,
                 b: torch.Tensor, a_scales: torch.Tensor, b_scales: torch.Tensor, group_offsets: torch.Tensor,
                 group_scale_offsets: torch.Tensor | None, expert_ids: torch.Tensor, expert_scales: torch.Tensor,
                 active: torch.Tensor | None):
        """a (m, k/2) and b (E, n, k/2) packed uint8; the scales as nvfp4_quantize lays them out;
        group_scale_offsets None: each group's scales from a new 128-row tile after the previous
        group's; active: the device count of the groups, or None (problem.active of them)."""
        self.kernel = kernel
        self.grid = config.num_mp
        experts, n = b.shape[0], b.shape[1]
        self.head = (encode_2d(a, PACKED_BOX_BYTES, config.block_m, 0),
                     encode_2d(b, PACKED_BOX_BYTES, config.block_n, 0, rows=experts * n))
        groups = problem.num_groups if problem.active is None else problem.active
        self.dequant_a = self.dequant_b = None
        if config.decoded_a:  # A's bf16 rows written into a new tensor by each call, its map made then
            self.dequant_a = kernel_dequant.DequantA.for_problem(problem, a, a_scales, group_offsets,
                                                                 group_scale_offsets, active, config.block_m)
        if config.decoded_b:  # likewise the groups' weights, with the groups' map and scales
            info = rt_device.device_info(b.device.index)
            self.dequant_b = kernel_dequant_b.DequantB(b, b_scales, expert_ids, expert_scales, active, groups,
                                                       problem.k, info.arch, info.num_sms, config.block_n)
        self.scale_maps = (encode_2d(_scale_rows(a_scales), SCALE_ROW_BYTES, SCALE_CHUNK_ROWS, 0),
                           encode_2d(_scale_rows(b_scales), SCALE_ROW_BYTES, SCALE_CHUNK_ROWS, 0))
        self.group_args = (group_offsets.data_ptr(),
                           0 if group_scale_offsets is None else group_scale_offsets.data_ptr(),
                           0 if active is None else active.data_ptr(), groups)
        self.dims = (problem.m, problem.n, problem.k, config.group_n)
        self.tail = self._tail(expert_scales.data_ptr(), expert_ids.data_ptr(), problem.num_experts)
        self.out_swizzle = config.out_swizzle
        self._packed: dict[tuple, object] = {}  # packed arguments per (output address, shape, strides, stream)

    def __call__(self, out: torch.Tensor, signal: int, out_scale: int, stream: int) -> None:
        """Launch writing `out` (m, n) on `stream` (a raw CUstream handle of the current device); the
        GEMM core's other outputs' arguments (signal, out_scale) do not apply."""
        if self.dequant_b is not None:  # with the weights' map, the groups' map and scales new too
            tmap_b, (weights, group_experts, group_scales) = self.dequant_b(stream)
            tail = self._tail(group_scales.data_ptr(), group_experts.data_ptr(), self.dequant_b.num_groups)
            self.kernel.launch(self.grid, stream, self._pack(self.dequant_a.decoded_map(stream), out, tmap_b, tail))
            return
        if self.dequant_a is not None:  # A's map is new with every call
            self.kernel.launch(self.grid, stream, self._pack(self.dequant_a.decoded_map(stream), out))
            return
        key = (out.data_ptr(), out.shape, out.stride(), stream)
        packed = self._packed.get(key)
        if packed is None:
            packed = rt.keep_packed(self._packed, key, self._pack(self.head[0], out))
        self.kernel.launch(self.grid, stream, packed)

    def _tail(self, expert_scales: int, expert_ids: int, num_experts: int) -> tuple:
        """The arguments after the output map, with the experts' scales, ids and count given (the
        caller's, or the weights' decode's group scales, group map and group count)."""
        offsets, scale_offsets, active, groups = self.group_args
        return (*self.scale_maps, expert_scales, offsets, expert_ids, scale_offsets, active, groups, num_experts,
                *self.dims)

    def _pack(self, tmap_a, out: torch.Tensor, tmap_b=None, tail: tuple | None = None):
        tmap_d = encode_2d(out, self.out_swizzle // out.element_size(), OUT_BOX_ROWS, self.out_swizzle)
        return self.kernel.pack((tmap_a, self.head[1] if tmap_b is None else tmap_b, tmap_d, *(tail or self.tail),
                                 out.data_ptr(), out.stride(0)), self.TYPES)
