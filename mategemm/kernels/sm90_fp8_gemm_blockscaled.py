"""Host side of the GEMM core's kernels (kernels_src/sm90_fp8_gemm_blockscaled.cuh and
sm90_gemm_scale_at_end.cuh, one parameter list): stub, TMA descriptors, launch."""
from __future__ import annotations

from typing import NamedTuple

import torch

from mategemm.jit.cache import KernelCache, KernelSpec, instance_spec
from mategemm.runtime import launch as rt
from mategemm.runtime.tma import encode_2d, encode_3d, encode_rows
from mategemm.types import GemmConfig, GemmProblem, tma_scale_boxes

KERNEL = "sm90_fp8_gemm_blockscaled"  # block scales, promoted per 128-K block
KERNEL_SCALE_AT_END = "sm90_gemm_scale_at_end"  # per-row / per-tensor scales (or none) applied at the end
KERNEL_GATED = "sm90_fp8_gemm_gated"  # the MoE layer's first GEMM, its gated activation in the epilogue

# C++ enumerators (kernels_src/common/types.cuh, common/groups.cuh) of the template arguments.
OPERAND_TYPES = {torch.float8_e4m3fn: "kE4M3", torch.float8_e5m2: "kE5M2", torch.bfloat16: "kBF16",
                 torch.float16: "kF16"}
OUT_TYPES = {torch.bfloat16: "kOutBF16", torch.float16: "kOutF16", torch.float32: "kOutF32Add",
             torch.float8_e4m3fn: "kOutE4M3"}
GROUP_MODES = {"none": "kGroupNone", "per_token": "kGroupIds", "per_expert": "kGroupCounts",
               "psum_expert": "kGroupPsum", "masked": "kGroupMasked", "ragged_k": "kGroupK",
               "batched": "kGroupBatched"}

_loaded: dict[tuple, rt.LoadedKernel] = {}


def kernel_name(problem: GemmProblem) -> str:
    """Block-scaled recipes ((1,128,128), (1,1,128)) promote; the others scale the finished tile."""
    return KERNEL if problem.recipe.gn > 0 else KERNEL_SCALE_AT_END


def split_k_kind(config: GemmConfig) -> int:
    """The kernel's kSplitK: 0 no split-K, 1 through the global workspace, n in a cluster of n CTAs."""
    if config.num_splits == 1:
        return 0
    return config.num_splits if config.split_in_cluster else 1


TRAILING_DEFAULTS = (True, False, False)  # the promoting kernel's kAllowOverlap, kBEvictFirst, kScalesAheadAll


def spec(problem: GemmProblem, config: GemmConfig, arch: str) -> KernelSpec:
    """The specialisation for (problem's recipe, dtypes and group mode, config); M, N, K and the
    number of groups (up to the table's capacity) stay run-time. The promoting kernel also takes
    the scale granularity along N (128 or 1) and K (128 or 32), split-K, A's scales by TMA and,
    where config.overlap is off, no second scratch accumulator; with config.b_evict_first, B's tiles
    loaded evict-first; with config.scales_ahead, one-wave tiles staging the next item's B scales."""
    name = kernel_name(problem)
    enum = "mategemm::{}".format
    tile = (config.block_m, config.block_n, config.stages)
    promotion = (problem.recipe.gn, problem.recipe.gk) if name == KERNEL else ()
    split_k = (split_k_kind(config),) if name == KERNEL else ()
    args = (*tile, *promotion, enum(OPERAND_TYPES[problem.a_dtype]), enum(OPERAND_TYPES[problem.b_dtype]),
            enum(OUT_TYPES[problem.out_dtype]), config.out_swizzle, config.cluster_m, config.cluster_n, *split_k,
            enum(GROUP_MODES[problem.group_mode]), problem.max_groups, problem.mn_major,
            *(("true" if problem.gather_a else "false", "true" if problem.tma_scales else "false")
              if name == KERNEL else ()))
    if name == KERNEL:
        # the trailing template arguments, spelled out up to the last that differs from its default:
        # default instances keep their names (and cache keys)
        trailing = [config.overlap, config.b_evict_first, config.scales_ahead]
        while trailing and trailing[-1] == TRAILING_DEFAULTS[len(trailing) - 1]:
            trailing.pop()
        args += tuple("true" if flag else "false" for flag in trailing)
    return instance_spec(name, arch, *args)


def gated_spec(problem: GemmProblem, config: GemmConfig, activation_kind: int, arch: str) -> KernelSpec:
    """The gated GEMM's specialisation: 128-column tiles of `config`, the group mode, A's scales
    by TMA or not, and the activation (kernels_src/common/gated_act.cuh's kGatedSigmoid or
    kSwigluStep)."""
    args = (config.block_m, config.stages, f"mategemm::{GROUP_MODES[problem.group_mode]}", problem.max_groups,
            "true" if problem.tma_scales else "false", activation_kind, "true" if problem.gather_a else "false")
    return instance_spec(KERNEL_GATED, arch, *args)


def load(kernel_spec: KernelSpec, config: GemmConfig, device_index: int,
         cache: KernelCache | None = None) -> rt.LoadedKernel:
    """The kernel of `kernel_spec` (compiled for `config`), loaded on a device once."""
    return rt.load_once(_loaded, (device_index, kernel_spec), kernel_spec, config.num_threads, config.smem_bytes,
                        config.cluster, cache, pdl=True)


class GroupArgs(NamedTuple):
    """The grouped modes' kernel arguments (problem.group_mode != "none")."""

    info: torch.Tensor            # int32 ids per row, counts or prefix sums per group
    stride: int = 0               # masked: rows per group (max_m)
    sfb_stride_group: int = 0     # floats between two groups' B scales (grouped M modes, batched)
    sfa_stride_group: int = 0     # floats between two groups' A scales (batched)
    signal_blocks: int = 0        # masked overlap: 64-row blocks (counters) per group, ceil(max_m / 64)
    gather: torch.Tensor | None = None  # problem.gather_a: int64 per row r, A row gather[r] // gather_div
    gather_div: int = 1


class Launch:
    """Everything of one call but the output: descriptors and arguments built once, reusable."""

    __slots__ = ("kernel", "grid", "head", "tmap_sfa", "tail", "group_tail", "gather_tail", "signal_blocks",
                 "signal_blocks_total", "out_swizzle", "out_elem", "out_dtype", "out_3d", "_packed", "_split",
                 "_split_buffers")
    TYPES = (rt.TMAP, rt.TMAP, rt.TMAP, rt.TMAP, rt.PTR, rt.INT, rt.INT, rt.PTR, rt.INT, rt.INT, rt.INT, rt.INT,
             rt.INT, rt.INT, rt.INT, rt.INT, rt.PTR, rt.PTR, rt.PTR, rt.INT, rt.INT, rt.INT, rt.INT, rt.PTR, rt.INT,
             rt.PTR, rt.INT, rt.PTR, rt.INT, rt.PTR, rt.INT, rt.PTR)

    def __init__(self, kernel: rt.LoadedKernel, problem: GemmProblem, config: GemmConfig, a: torch.Tensor,
                 b: torch.Tensor, sfa: torch.Tensor, sfa_strides: tuple[int, int], sfb: torch.Tensor,
                 sfb_strides: tuple[int, int], group: GroupArgs | None = None):
        """sf*_strides are (stride along M/N, stride along K-blocks). Grouped M modes: a is the
        (rows, k) tokens of all groups, b the (groups, n, k) weights; ragged K: a and b are the
        K-major (m, sum_k) and (n, sum_k) operands. An operand marked in problem.mn_major is given
        as its MN-major view instead: (k, m) or (groups, k, m), (sum_k, m) for ragged K."""
        grouped_m = problem.group_mode not in ("none", "ragged_k", "batched")
        # NOTES: A's box stops at the last real row (rounded to 8): for m = 1 a 64-row box spent
        # most of each stage zero-filling. Rows past it hold stale shared memory, which only feeds
        # output rows that are never stored (each output row reads only its own A row). A tile
        # shared by a cluster (cluster_n 2) is not clipped: each CTA loads one half of it, nor is
        # a grouped M tile, which starts anywhere.
        clip = config.cluster_n == 1 and not grouped_m
        a_box_rows = min(config.block_m, -(-problem.m // 8) * 8) if clip else config.block_m
        self.kernel = kernel
        self.grid = config.num_mp
        if kernel.max_resident_ctas is not None:
            self.grid = min(self.grid, kernel.max_resident_ctas)
        # With a cluster, each CTA loads its share of the shared tile for all of them.
        a_load_rows = a_box_rows // config.cluster_n
        b_load_rows = config.block_n // config.cluster_m
        b_rows = b.shape[0] * b.shape[1] if b.dim() == 3 else None  # the groups' weights stacked
        a_rows = a.shape[0] * a.shape[1] if a.dim() == 3 else None  # batched: the batch's rows stacked
        # MN-major operands ((K rows, MN), stacked per group): unswizzled boxes of 128 K-rows by
        # up to 128 bytes of MN, transposed in shared memory by the kernel.
        # Gathered rows (problem.gather_a) are copied by the kernel from a's address, not by TMA.
        self.head = (encode_2d(a, min(config.block_m, 128), 128, 0, rows=a_rows) if problem.mn_major & 1 else
                     encode_2d(a, config.block_k, a_load_rows, 128, rows=a_rows),
                     encode_2d(b, min(config.block_n, 128), 128, 0, rows=b_rows) if problem.mn_major & 2 else
                     encode_2d(b, config.block_k, b_load_rows, 128, rows=b_rows))
        # A's scales by TMA (problem.tma_scales, (1,128,128)): rows of m floats, one per K block,
        # boxes of a tile's rows (rows past m zero-filled). Otherwise the parameter is not read
        # (ragged K's scales by TMA are bulk copies from the addresses in the tail).
        scale_box_rows = tma_scale_boxes(config.block_m, grouped_m)[0]
        self.tmap_sfa = (encode_rows(sfa.data_ptr(), torch.float32, problem.m, problem.k_blocks,
                                     sfa_strides[1], scale_box_rows, 1, 0)
                         if problem.tma_scales and problem.recipe.gn == 128 else self.head[0])
        # FP8: K in whole 128-K blocks (a tail is zero-filled by TMA); 16-bit: K as it is.
        k = problem.k if problem.a_dtype.itemsize == 2 else problem.k_blocks * config.block_k
        self.tail = (sfa.data_ptr(), sfa_strides[0], sfa_strides[1], sfb.data_ptr(), sfb_strides[0], sfb_strides[1],
                     problem.m, problem.n, k, config.group_n, a_box_rows, config.num_splits)
        if group is None:
            group = GroupArgs(None)
        info = 0 if group.info is None else group.info.data_ptr()
        self.group_tail = (info, problem.num_groups, group.stride, group.sfa_stride_group, group.sfb_stride_group)
        if problem.gather_a != (group.gather is not None):
            raise ValueError("a gathered A (problem.gather_a) needs its row indices (GroupArgs.gather), and only it")
        if problem.gather_a and problem.k % config.block_k:
            raise ValueError(f"a gathered A's K must be whole {config.block_k}-byte blocks, got {problem.k}")
        self.gather_tail = ((0, 1, 0, 0) if group.gather is None else
                            (group.gather.data_ptr(), group.gather_div, a.data_ptr(), a.stride(0) * a.element_size()))
        self.signal_blocks = group.signal_blocks
        self.signal_blocks_total = group.signal_blocks * problem.num_groups
        # Split-K: (workspace floats, tiles) of its partial tiles and per-tile finish counters.
        num_tiles = -(-problem.m // config.block_m) * -(-problem.n // config.block_n)
        self._split = ((num_tiles * config.num_splits * config.block_m * config.block_n, num_tiles, a.device)
                       if split_k_kind(config) == 1 else None)
        self._split_buffers: dict[int, tuple] = {}
        self.out_swizzle = config.out_swizzle
        self.out_elem = problem.out_elem_bytes
        self.out_dtype = problem.out_dtype
        self.out_3d = problem.group_mode in ("ragged_k", "batched")  # a 3-D store (or reduce) per group
        self._packed: dict[tuple, object] = {}  # packed arguments per (output address, shape, strides, stream)

    def __call__(self, out: torch.Tensor, signal: int, out_scale: int, stream: int) -> None:
        """Launch writing `out` on `stream` (a raw CUstream handle of the current device); `signal`:
        the address of the masked overlap counters, or 0; `out_scale`: an FP8 output's divisor (one
        fp32 on the device), or 0."""
        key = (out.data_ptr(), out.shape, out.stride(), stream, signal, out_scale)
        packed = self._packed.get(key)
        if packed is None:
            chunk = self.out_swizzle // self.out_elem
            if self.out_3d:
                tmap_d = encode_3d(out, chunk, 64, self.out_swizzle)
            else:  # a 3-D output (masked: groups x rows x n) is addressed as its stacked rows
                tmap_d = encode_2d(out, chunk, 64, self.out_swizzle, rows=out.numel() // out.shape[-1])
            values = self._values(tmap_d, out, stream, signal, out_scale)
            packed = rt.keep_packed(self._packed, key, self.kernel.pack(values, self.TYPES))
        self.kernel.launch(self.grid, stream, packed)

    def _values(self, tmap_d, out: torch.Tensor, stream: int, signal: int, out_scale: int) -> tuple:
        """The kernel's arguments, in the order of TYPES."""
        return (*self.head, tmap_d, self.tmap_sfa, *self.tail, *self._split_pointers(stream), *self.group_tail,
                *self.gather_tail, out.data_ptr(), out.stride(-2), signal, self.signal_blocks, out_scale)

    def _split_pointers(self, stream: int) -> tuple[int, int]:
        """Split-K's workspace and counters (which the kernel returns to zero) for one stream:
        launches on a stream run in order, so they never share them with a running launch.
        Without split-K, or with split-K in clusters, two null pointers."""
        if self._split is None:
            return 0, 0
        buffers = self._split_buffers.get(stream)
        if buffers is None:
            floats, tiles, device = self._split
            buffers = self._split_buffers[stream] = (torch.empty(floats, dtype=torch.float32, device=device),
                                                     torch.zeros(tiles, dtype=torch.int32, device=device))
        return buffers[0].data_ptr(), buffers[1].data_ptr()


class GatedLaunch(Launch):
    """The gated GEMM's launch: the core's arguments, then the activation's (alpha, beta, limit)
    and the scales of its FP8 output (a (rows, n / 128) fp32 view, any strides)."""

    __slots__ = ("act_tail",)
    TYPES = Launch.TYPES + (rt.FLOAT, rt.FLOAT, rt.FLOAT, rt.PTR, rt.INT, rt.INT)

    def __init__(self, *args, act_params: tuple[float, float, float], act_scales: torch.Tensor, **kwargs):
        super().__init__(*args, **kwargs)
        self.act_tail = (*act_params, act_scales.data_ptr(), act_scales.stride(0), act_scales.stride(1))

    def _values(self, tmap_d, out: torch.Tensor, stream: int, signal: int, out_scale: int) -> tuple:
        return super()._values(tmap_d, out, stream, signal, out_scale) + self.act_tail
