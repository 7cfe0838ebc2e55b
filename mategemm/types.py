"""Frozen dataclasses passed between the stages of a call."""
from __future__ import annotations

from dataclasses import dataclass

import torch

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
OUT_DTYPES = (torch.bfloat16, torch.float16)  # 16-bit outputs; fp32 only added into (ragged K, bmm with c)
TABLE_GROUP_MODES = ("per_expert", "psum_expert", "masked", "ragged_k")  # a table of segments in shared memory


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
RECIPE_1x32_1x32 = Recipe(1, 1, 32)  # MXFP8's blocks: A per (row, 32 K), B per (column, 32 K)
RECIPE_PER_TENSOR = Recipe(-1, -1, -1)
RECIPE_PER_ROW = Recipe(1, -1, -1)


@dataclass(frozen=True)
class GemmProblem:
    """An FP8 block-scaled GEMM D(m, n) = A(m, k) B(n, k)^T, as validated.

    Grouped (group_mode a key of the kernel's GROUP_MODES, not "none"): m is the rows of A and of
    the output (all groups together), or for ragged_k the rows of each group's output with k the
    sum of the groups' K; num_groups is the number of groups (experts).
    """

    m: int
    n: int
    k: int
    recipe: Recipe
    a_dtype: torch.dtype
    b_dtype: torch.dtype
    out_dtype: torch.dtype
    group_mode: str = "none"
    num_groups: int = 0
    # MN-major FP8 operands the kernel reads as they are and transposes in shared memory: bit 0 A
    # given as (K rows, M), bit 1 B as (K rows, N). Otherwise both operands are K-major.
    mn_major: int = 0
    # (1,128,128), dense or tokens stacked along M: A's scales, MN-major in rows TMA can read, are
    # loaded by TMA with each stage; otherwise the kernel's scale warps copy them (any strides).
    # Set by plan.scales_by_tma.
    tma_scales: bool = False
    # Grouped M modes with packed rows (the MoE layer's first GEMM): row r of the GEMM reads A row
    # gather[r] / div of the tokens given (an index tensor on the GPU) instead of A row r.
    gather_a: bool = False

    @property
    def k_blocks(self) -> int:
        """128-wide K blocks of FP8 operands (one per stage and scale): the last a tail when K is
        not a multiple of 128 (zero-filled by TMA past K)."""
        return -(-self.k // 128)

    @property
    def max_groups(self) -> int:
        """The group table's capacity (a template argument): a power of two >= 32, or 0 without one."""
        if self.group_mode not in TABLE_GROUP_MODES:
            return 0
        return max(32, 1 << (self.num_groups - 1).bit_length())

    @property
    def out_elem_bytes(self) -> int:
        return self.out_dtype.itemsize


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
    # split-K: a tile's work items run as the CTAs of one cluster and reduce in shared memory
    # instead of through a global workspace
    split_in_cluster: bool = False
    decoder_wgs: int = 0  # NVFP4: warpgroups that decode beside the producer's warps
    # NVFP4: sm90_nvfp4_stream_gemm (weights decoded into the wgmma's registers, BLOCK_M rows of a
    # group by 128 weight rows per tile) instead of the GEMM core's NVFP4 staging
    nvfp4_stream: bool = False
    decoded_a: bool = False  # NVFP4: A's rows decoded to bf16 beforehand, loaded by TMA
    decoded_b: bool = False  # NVFP4 (with decoded_a): the groups' weights too, in group order
    ctas_per_sm: int = 1  # NVFP4 streaming kernel: CTAs an SM holds at once (its launch bounds)
    # the promoting kernel's second scratch accumulator where the tile allows it (its wgmma overlap
    # the promotion); False: issue, wait, promote
    overlap: bool = True
    # B's tiles loaded with an evict-first L2 policy (heuristics.fp8_gemm.b_read_once)
    b_evict_first: bool = False
    # kItemBScales: one-wave tiles too load the next work item's B scales under the current one's
    # main loop, as two-wave tiles always do (heuristics.fp8_gemm.scales_ahead)
    scales_ahead: bool = False

    @property
    def cluster(self) -> int:
        return self.cluster_m * self.cluster_n * (self.num_splits if self.split_in_cluster else 1)

    @property
    def num_threads(self) -> int:
        """A producer warpgroup, plus one math warpgroup (BLOCK_M 64) or two, plus the decoders;
        the streaming NVFP4 kernel: a producer and two math warpgroups."""
        if self.nvfp4_stream:
            return 3 * 128
        return (1 if self.block_m == 64 else 2) * 128 + 128 + self.decoder_wgs * 128


@dataclass(frozen=True)
class Nvfp4Problem:
    """A grouped NVFP4 GEMM as validated: token-packed groups of A (m rows, k values) times their
    experts' (n, k) weights.

    num_groups: the groups the call may hold (the length of expert_ids), the table's capacity;
    active: the groups that count when the host gives their number, None when a device tensor does.
    """

    m: int
    n: int
    k: int
    num_groups: int
    num_experts: int
    out_dtype: torch.dtype = torch.bfloat16
    active: int | None = None

    @property
    def max_groups(self) -> int:
        """The group table's capacity (a template argument): a power of two >= 32."""
        return max(32, 1 << (self.num_groups - 1).bit_length())

    @property
    def out_elem_bytes(self) -> int:
        return self.out_dtype.itemsize


def tma_scale_boxes(block_m: int, rows_checked: bool) -> tuple[int, int]:
    """(rows per box, boxes) of a stage's TMA loads of A's scales (GemmSmemLayout's kScaleBoxRows,
    kScaleBoxes). A box's first row must sit on 16 bytes: tiles that start on any row (rows_checked,
    the grouped M modes) load boxes of up to 128 rows, 4 more, from the row rounded down to 4."""
    if not rows_checked:
        return block_m, 1
    step = min(block_m, 128)
    return step + 4, block_m // step
