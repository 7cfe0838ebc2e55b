"""Frozen dataclasses passed between the stages of a call."""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Element codes shared with kernels_src: FP8 operand types and output types.
FP8_CODES = {torch.float8_e4m3fn: 0, torch.float8_e5m2: 1}
OUT_CODES = {torch.bfloat16: 0, torch.float16: 1}


@dataclass(frozen=True)
class Recipe:
    """Scale granularity (gm, gn, gk); -1 means the whole dimension."""

    gm: int
    gn: int
    gk: int

    @property
    def name(self) -> str:
        return f"({self.gm},{self.gn},{self.gk})"


RECIPE_1x128_128x128 = Recipe(1, 128, 128)
RECIPE_1x128_1x128 = Recipe(1, 1, 128)


@dataclass(frozen=True)
class GemmProblem:
    """A dense FP8 block-scaled GEMM D(m, n) = A(m, k) B(n, k)^T, as validated."""

    m: int
    n: int
    k: int
    recipe: Recipe
    a_dtype: torch.dtype
    b_dtype: torch.dtype
    out_dtype: torch.dtype


@dataclass(frozen=True)
class GemmConfig:
    """Everything the heuristics decide for one launch of sm90_fp8_gemm_blockscaled."""

    block_m: int
    block_n: int
    block_k: int
    stages: int
    num_mp: int
    group_n: int
    out_swizzle: int
    smem_bytes: int
    cluster_m: int = 1  # CTAs per cluster stacked along M, sharing (multicasting) one B tile
    cluster_n: int = 1  # CTAs per cluster side by side along N, sharing one A tile
    num_splits: int = 1  # split-K: work items per tile, each over a slice of the K blocks

    @property
    def cluster(self) -> int:
        return self.cluster_m * self.cluster_n

    @property
    def num_threads(self) -> int:
        """A producer warpgroup, plus one math warpgroup (BLOCK_M 64) or two."""
        return (1 if self.block_m == 64 else 2) * 128 + 128
