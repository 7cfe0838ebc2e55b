"""Host side of kernels_src/sm90_fp8_mqa_logits.cuh: stubs, descriptors, launches."""
from __future__ import annotations

import torch

from mategemm.jit.cache import KernelCache, KernelSpec, default_cache, instance_spec
from mategemm.runtime import launch as rt
from mategemm.runtime.tma import encode_2d

KERNEL = "sm90_fp8_mqa_logits"
INDEX_DIM = 128  # the paged cache's head dimension (its fused block layout)
# The prefill form's head dimensions: a key row of 32, 64 or 128 FP8 bytes is one span of the TMA
# and wgmma swizzle of that width.
HEAD_DIMS = (32, 64, 128)
LOGIT_TYPES = {torch.float32: "float", torch.bfloat16: "mategemm::Bf16"}  # the kernel's Logit
KV_BLOCK = 64
HEADS_MULTIPLE, MAX_TILE_HEADS, MAX_NEXT_N = 8, 256, 4  # heads per row, next_n x heads per tile, rows
MAX_TILE_ROWS = 8  # query rows per tile (the kernel's static_assert)
FUSED_BLOCK_ROWS = 66  # a fused paged block as rows of 128 bytes: 64 keys, then 2 rows of scales
# H200: 8 stages (two a ring) beat 12 / 16 / 20 by
# 3-4% / ~7% / 8-10% at batch 64-128, next_n 1-2, 8192 keys. Fewer bytes in flight, faster.
MAX_STAGES = 8
TYPES = (rt.TMAP, rt.TMAP, rt.TMAP, rt.TMAP, rt.PTR, rt.PTR, rt.INT, rt.PTR, rt.INT, rt.PTR, rt.PTR, rt.I64, rt.INT,
         rt.INT, rt.INT, rt.INT)

_loaded: dict[tuple, rt.LoadedKernel] = {}


def smem_bytes(rows: int, heads: int, head_dim: int, stages: int) -> int:
    """Must match MqaLogitsSmem::kTotalBytes."""
    q_bytes = rows * heads * head_dim
    weight_bytes = -(-rows * heads * 4 // 128) * 128
    keys = -(-(2 * q_bytes + 2 * weight_bytes) // 1024) * 1024
    return keys + stages * (KV_BLOCK * head_dim + KV_BLOCK * 4) + (2 * stages + 4) * 8 + 1024


def stages_for(rows: int, heads: int, head_dim: int, smem_limit: int) -> int:
    """Up to MAX_STAGES key-block stages that fit, split evenly over the math warpgroups' rings (two
    at least each)."""
    rings = math_warpgroups(rows, heads)
    stages = MAX_STAGES // rings * rings
    while stages > 2 * rings and smem_bytes(rows, heads, head_dim, stages) > smem_limit:
        stages -= rings
    return stages


def math_warpgroups(rows: int, heads: int) -> int:
    """Math warpgroups taking key blocks in turn: four while a tile's accumulators and weights fit
    their 112 registers (N <= 128 columns), else two (232 registers)."""
    return 4 if rows * heads <= 128 else 2


def spec(rows: int, heads: int, head_dim: int, stages: int, paged: bool, logits_dtype: torch.dtype,
         arch: str) -> KernelSpec:
    math_wg = math_warpgroups(rows, heads)
    return instance_spec(KERNEL, arch, rows, heads, head_dim, stages, "true" if paged else "false", math_wg,
                         LOGIT_TYPES[logits_dtype])


def _load(kernel_spec: KernelSpec, threads: int, smem: int, device_index: int,
          cache: KernelCache | None) -> rt.LoadedKernel:
    key = (device_index, kernel_spec.arch, kernel_spec.name_expr)
    kernel = _loaded.get(key)
    if kernel is None:
        with torch.cuda.device(device_index):
            kernel = rt.LoadedKernel((cache or default_cache()).get(kernel_spec), threads, smem)
        _loaded[key] = kernel
    return kernel


class MqaLogitsLaunch:
    """One call's kernel and packed arguments, built once and reusable while the tensors stay."""

    __slots__ = ("main", "main_grid", "main_args", "tensors")

    def __init__(self, plan, *, q: torch.Tensor, keys: torch.Tensor, scales: torch.Tensor | None,
                 weights: torch.Tensor, lens: torch.Tensor, lens_end: torch.Tensor | None, lens_2d: bool,
                 block_table: torch.Tensor | None, schedule: torch.Tensor | None, logits: torch.Tensor,
                 num_rows: int, compressed: bool, clean: bool, grid: int):
        """plan: a mategemm.plan.MqaPlan. Paged: keys is the fused uint8 cache (num_blocks, 64, 1,
        132); else keys (seq_len_kv, head_dim) FP8 with scales (seq_len_kv,) fp32, lens/lens_end the
        windows' starts and ends. logits: plan.logits_dtype."""
        rows, heads, head_dim = plan.rows, plan.heads, plan.head_dim
        self.main = _load(plan.spec, plan.threads, plan.smem_bytes, q.device.index, None)
        n = rows * heads
        swizzle = head_dim  # a row of FP8 queries or keys is one swizzle span (the kernel's descriptors)
        tmap_q = encode_2d(q.view(-1, head_dim), head_dim, n, swizzle)
        if plan.paged:
            cache_rows = keys.view(torch.uint8).view(-1, INDEX_DIM)  # 66 rows of 128 bytes per block
            tmap_keys = encode_2d(cache_rows, INDEX_DIM, KV_BLOCK, swizzle)
            tmap_scales = encode_2d(cache_rows, INDEX_DIM, 2, 0)
        else:
            tmap_keys = encode_2d(keys, head_dim, KV_BLOCK, swizzle)
            tmap_scales = encode_2d(scales.view(1, -1), KV_BLOCK, 1, 0)  # one row: boxes of 64 scales
        if weights.data_ptr() % 16:  # TMA reads from a 16-byte aligned base: a sliced view is copied
            weights = weights.clone()
        tmap_weights = encode_2d(weights, heads, rows, 0)  # one box: the tile's rows x heads
        lens_end_ptr = 0 if lens_end is None else lens_end.data_ptr()
        table_ptr, table_ld = (0, 0) if block_table is None else (block_table.data_ptr(), block_table.stride(0))
        num_cols = logits.shape[1]
        self.main_grid = grid
        self.main_args = self.main.pack(
            (tmap_q, tmap_keys, tmap_scales, tmap_weights, lens.data_ptr(), lens_end_ptr, int(lens_2d),
             table_ptr, table_ld, 0 if schedule is None else schedule.data_ptr(), logits.data_ptr(), logits.stride(0),
             num_rows, num_cols, int(compressed), int(clean)), TYPES)
        self.tensors = (q, keys, scales, weights, lens, lens_end, block_table, schedule, logits)

    def __call__(self, stream: int) -> None:
        if self.main_grid > 0:
            self.main.launch(self.main_grid, stream, self.main_args)
