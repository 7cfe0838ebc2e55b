"""Host side of kernels_src/sm90_fp8_gemv.cuh: dense FP8 block-scaled products of 1-2 rows on the
CUDA cores (plan.dense_gemv decides where)."""
from __future__ import annotations

import torch

from mategemm.jit.cache import KernelCache, KernelSpec, instance_spec
from mategemm.kernels.sm90_fp8_gemm_blockscaled import OPERAND_TYPES, OUT_TYPES
from mategemm.runtime import launch as rt
from mategemm.types import GemmProblem

KERNEL = "sm90_fp8_gemv"
MAX_ROWS = 2  # at ~75 instructions per 16 bytes of B a row, 4 rows would bind on issue (notebook)
WARPS = 4  # kGemvWarps
# Where the GEMV measured faster than the GEMM (H100, notebook 2026-12-07): K from 4096 and N up to 4096
# (1x576x7168 -26%, 1x2112x7168 -5%, 1x4096x7168 -5%); with N 7168 or more, or K 2048 or less, the
# GEMM's TMA ring streams B faster (1x7168x16384 +9%, 1x32768x2048 +22%, 1x7168x2048 +11%).
MIN_K = 4096
MAX_N = 4096
WARPS_PER_SM = 16  # a column per warp until that many; else the warps of a column split its K
TYPES = (rt.PTR, rt.I64, rt.PTR, rt.I64, rt.PTR, rt.INT, rt.INT, rt.PTR, rt.INT, rt.INT, rt.INT, rt.INT, rt.INT,
         rt.INT, rt.PTR, rt.I64)

_loaded: dict[tuple, rt.LoadedKernel] = {}


def spec(problem: GemmProblem, arch: str) -> KernelSpec:
    return instance_spec(KERNEL, arch, problem.m, *(f"mategemm::{t}" for t in (
        OPERAND_TYPES[problem.a_dtype], OPERAND_TYPES[problem.b_dtype], OUT_TYPES[problem.out_dtype])))


def warps_per_col(n: int, num_sms: int) -> int:
    """Warps that split one column's K: 1 while the columns give WARPS_PER_SM warps an SM, else 2 or 4."""
    for split in (1, 2):
        if n * split >= WARPS_PER_SM * num_sms:
            return split
    return WARPS


def load(kernel_spec: KernelSpec, device_index: int, cache: KernelCache | None = None) -> rt.LoadedKernel:
    return rt.load_once(_loaded, (device_index, kernel_spec), kernel_spec, WARPS * 32, cache=cache, pdl=True)


class Launch:
    """The GEMV of one call's operands, called as kernel_fp8.Launch is (out, signal, out_scale, stream);
    sf*_strides are (stride along M/N, stride along K blocks)."""

    __slots__ = ("kernel", "grid", "head", "out_dtype", "_packed")

    def __init__(self, kernel: rt.LoadedKernel, problem: GemmProblem, split: int, a: torch.Tensor, b: torch.Tensor,
                 sfa: torch.Tensor, sfa_strides: tuple[int, int], sfb: torch.Tensor, sfb_strides: tuple[int, int]):
        self.kernel = kernel
        self.grid = -(-problem.n // (WARPS // split))
        self.head = (a.data_ptr(), a.stride(0), b.data_ptr(), b.stride(0), sfa.data_ptr(), *sfa_strides,
                     sfb.data_ptr(), *sfb_strides, problem.recipe.gn, problem.n, problem.k, split)
        self.out_dtype = problem.out_dtype
        self._packed: dict = {}

    def __call__(self, out: torch.Tensor, signal: int, out_scale: int, stream: int) -> None:
        key = (out.data_ptr(), out.stride(0))
        packed = self._packed.get(key)
        if packed is None:
            packed = rt.keep_packed(self._packed, key,
                                    self.kernel.pack((*self.head, out.data_ptr(), out.stride(0)), TYPES))
        self.kernel.launch(self.grid, stream, packed)
