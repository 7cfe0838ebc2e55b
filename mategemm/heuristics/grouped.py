"""Config choice for the grouped (MoE) and batched modes of the GEMM core (kernels_src/gemm/).

The rows per group are unknown on the host (they live on the GPU; reading them would
synchronise), so the choice rests on the expected rows per group: the caller's hint
(expect_tokens / expected_m) or the average. The binary depends only on the config, never on
the rows, so one compiled kernel serves every routing of a given (N, K, recipe, config).
"""
from __future__ import annotations

import dataclasses
import functools
import math

from mategemm.heuristics import forced_flag, fp8_gemm, parse_force_config, sm90
from mategemm.runtime.device import DeviceInfo
from mategemm.types import GemmConfig, GemmProblem

# NOTES: fp32 outputs (ragged K, batched with fp32 output) stage 4-byte output tiles for their TMA
# reduce-add: BLOCK_M 256 would need 128 KB for them alone, so they stay at 64/128 x <= 128. The
# batched mode stays at 64/128 too: at 256 its per-group row arithmetic spilled (5-18 LDL/STL).
FP32_OUT_BLOCK_MS = (64, 128)
FP32_OUT_MAX_BLOCK_N = 128
SCALE_AT_END_MAX_BLOCK_N = 256
ROWS_CHECKED_MODES = ("per_token", "per_expert", "psum_expert", "masked")
# Clusters: only the pair sharing A (adjacent N-blocks of one M tile) — two M tiles side by side
# may belong to different groups, with different B.
CLUSTERS = ((1, 1), (1, 2))
# NOTES: MN-major operands transposed in the kernel (problem.mn_major) stage a second copy of
# their tile per stage: tiles stay at 64/128 x 64/128 (the transposing warps take 56 registers;
# 256-wide tiles spilled), an M-major A is not shared by a cluster pair, and an N-major B tile is
# 64 or 128 wide (the transpose works in 64-byte columns).
MN_MAJOR_BLOCKS = (64, 128)
# NOTES (H200, 2026-11-28, forced configs interleaved with torch.bmm, TFLOPS): scales-at-the-end
# tiles (128x256, A shared by a cluster pair) raster in bands of ~2048 output columns, as the dense
# kernel's GROUP_N of 16 128-wide blocks does: 8x8192^3 bf16 group_n 16 (the whole width) 655,
# 4 685-691; fp16 623 -> 656-667; per-tensor FP8 1237 -> 1296. 16x4096^3 unchanged (+-2%). Not
# where each group has a single M-block (64x128x7168x512: 399 -> 374): B is then read once anyway,
# and whole-width rows stream each batch entry's B in order.
SCALE_AT_END_RASTER_COLUMNS = 2048
# NOTES: a short K loop runs better with the ring at most half a tile's K deep (the loads of the
# next tile wait instead of competing): bmm_fp16 128x512x128x512 (128x128 tiles, 8 K blocks)
# 6 stages 255, 5 262, 4 268, 3 266 (torch.bmm 272); FP8 per-tensor there (4 K blocks) 388 -> 391.
SCALE_AT_END_MIN_RING = 4


def tile_bound(problem: GemmProblem, block_m: int, block_n: int, alignment_m: int, max_m: int) -> int:
    """An upper bound on the tiles of a launch (the persistent grid needs no more CTAs)."""
    n_blocks = math.ceil(problem.n / block_n)
    if problem.group_mode in ("ragged_k", "batched"):
        return problem.num_groups * math.ceil(problem.m / block_m) * n_blocks
    if problem.group_mode == "masked":
        return problem.num_groups * math.ceil(max_m / block_m) * n_blocks
    if problem.group_mode == "per_token":
        return math.ceil(problem.m / block_m) * n_blocks
    return (math.ceil(problem.m / block_m) + problem.num_groups) * n_blocks  # each group adds a partial tile


# NOTES (H200, 2026-11-28, interleaved timing, TFLOPS with A M-major and B N-major: transposed in
# the kernel / copied K-major by transpose_8bit first / both K-major): bmm per-tensor 16x4096^3
# 596 / 1180 / 1444, 64x128x7168x512 445 / 242 / 636, 128x512x128x512 332 / 168 / 394;
# (1,128,128) 16x4096^3 280 / 953 / 1077, 64x128x7168x512 248 / 237 / 599; ragged K 4 x 8192,
# 4096x7168: 230 / 695 / 708. The staged copy and the transposing warps take shared-memory
# bandwidth from the wgmma, capping the kernel near IN_KERNEL_TFLOPS; the copy costs a read and a
# write of each MN-major operand at COPY_TBPS. The model below picks the cheaper one; it matches
# every measurement above.
IN_KERNEL_TFLOPS = {"scale_at_end": 600.0, "promoted": 250.0}
DENSE_TFLOPS, HBM_TBPS, COPY_TBPS = 1200.0, 4.0, 3.0


def transpose_in_kernel(problem: GemmProblem, mn_major_bytes: int) -> bool:
    """Whether the kernel transposes MN-major operands (mn_major_bytes of them) itself, rather
    than reading copies made K-major first: true where the GEMM is bound by memory anyway."""
    groups = max(1, problem.num_groups)
    m, n, k = problem.m, problem.n, problem.k
    out = problem.out_elem_bytes
    if problem.group_mode == "batched":
        flops, nbytes = 2 * groups * m * n * k, groups * (m * k + n * k + m * n * out)
    elif problem.group_mode == "ragged_k":  # k: all groups' K together; the output read and written
        flops, nbytes = 2 * m * n * k, (m + n) * k + 2 * groups * m * n * out
    else:  # m: all groups' rows; one (n, k) weight per group
        flops, nbytes = 2 * m * n * k, m * k + groups * n * k + m * n * out
    gemm_us = max(flops / DENSE_TFLOPS, nbytes / HBM_TBPS) / 1e6
    cap = IN_KERNEL_TFLOPS["scale_at_end" if problem.recipe.gn <= 0 else "promoted"]
    in_kernel_us = max(gemm_us, flops / cap / 1e6)
    copied_us = gemm_us + 2 * mn_major_bytes / COPY_TBPS / 1e6
    return in_kernel_us < copied_us


def passes_per_group(rows: int, block_m: int, alignment_m: int) -> float:
    """Tile passes over a group of `rows` rows. per_token (alignment_m > 0): a tile whose halves
    belong to different segments runs once per segment (the kernel's kGroupIds); a segment starts
    at any multiple of alignment_m, so it meets (blocks + halves - 1) / halves tiles on average."""
    if not alignment_m or alignment_m % block_m == 0:
        return math.ceil(rows / block_m)
    blocks, halves = math.ceil(rows / alignment_m), block_m // alignment_m
    return (blocks + halves - 1) / halves


# NOTES (H100, 2026-12-06): ragged K without the second scratch accumulator (its per-column B scales
# read in promotion): the grouped suite's k-grouped rows beside live DeepGEMM, 2 rounds in turns,
# geomean 0.931 / 0.928 -> 0.958 / 0.950; by K per group (ms, 2 rounds): 8x7168x2048 with K 2048
# 0.711 / 0.687 -> 0.632 / 0.628, 8x4096x4096 K 2048 0.804 / 0.828 -> 0.770 / 0.767, K 1024, 4096
# and 8192 level within 1-2%. (On the H200 with the main loop of 2026-11 the overlap had measured
# 0.72 -> 0.83 of DeepGEMM there.) MATEGEMM_FORCE_CONFIG overlap=1 brings it back.
@functools.lru_cache(maxsize=4096)
def choose(problem: GemmProblem, rows_per_group: int, device: DeviceInfo, num_mp: int, force: str = "",
           alignment_m: int = 0, max_m: int = 0) -> GemmConfig:
    """Pick BLOCK_M, BLOCK_N, cluster and stages for a grouped problem with about `rows_per_group`
    rows per group (ragged K: K rows per group). alignment_m: per_token's segment alignment
    (BLOCK_M must divide it); max_m: masked's rows per group."""
    forced = parse_force_config(force)
    ragged_k = problem.group_mode == "ragged_k"
    per_group_m = problem.group_mode in ("ragged_k", "batched")  # every group tiles its own m rows
    fp32_out = problem.out_elem_bytes == 4
    if "num_splits" in forced and forced["num_splits"] != 1:
        raise ValueError("MATEGEMM_FORCE_CONFIG: grouped GEMMs have no split-K (num_splits must be 1)")
    if problem.mn_major & 1 and problem.group_mode in ("per_expert", "psum_expert", "masked"):
        raise ValueError(f"an M-major A is not read in place in mode {problem.group_mode} (segments start unaligned)")
    if forced.get("cluster_m", 1) != 1:
        raise ValueError("MATEGEMM_FORCE_CONFIG: grouped GEMMs take no cluster along M (cluster_m must be 1)")
    # Scales applied at the end (per-row/per-tensor FP8, 16-bit): no promotion registers, so
    # BLOCK_M 256 and BLOCK_N up to 256 fit without spills.
    scale_at_end = problem.recipe.gn <= 0
    promoted_batch = problem.group_mode == "batched" and not scale_at_end
    block_ms = FP32_OUT_BLOCK_MS if fp32_out or promoted_batch else fp8_gemm.BLOCK_MS
    if problem.mn_major:
        # the batched mode's promoted 128-row tiles spilled beside the transposing warps
        block_ms = tuple(bm for bm in block_ms if bm in MN_MAJOR_BLOCKS and not (promoted_batch and bm > 64))
    if problem.group_mode == "per_token" and problem.recipe.gn == 1:
        # NOTES: 256-row per_token tiles with per-column B scales spilled (9 LDL, 8 STL); the
        # other M modes' did not
        block_ms = tuple(bm for bm in block_ms if bm <= 128)
    if problem.recipe.gk == 32:
        # NOTES: (1,1,32) promotes four times per stage; with two math warpgroups (232 registers
        # each) 128-row tiles spilled, one warpgroup of 64 rows keeps all 255.
        block_ms = (64,)
    if "block_m" in forced:
        if forced["block_m"] not in block_ms:
            raise ValueError(f"MATEGEMM_FORCE_CONFIG: block_m must be one of {block_ms} here, got {forced['block_m']}")
        block_ms = (forced["block_m"],)
    max_bn = FP32_OUT_MAX_BLOCK_N if fp32_out else SCALE_AT_END_MAX_BLOCK_N if scale_at_end else fp8_gemm.MAX_BLOCK_N
    if problem.mn_major:
        max_bn = min(max_bn, MN_MAJOR_BLOCKS[-1])
    block_ns = (forced["block_n"],) if "block_n" in forced else fp8_gemm.BLOCK_NS
    if "block_n" in forced and not _block_n_allowed(forced["block_n"], problem.recipe.gn, max_bn, problem.mn_major,
                                                  problem.out_elem_bytes):
        multiple = 64 if problem.mn_major & 2 else fp8_gemm.block_n_multiple(problem.out_elem_bytes)
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: block_n={forced['block_n']} is not allowed here "
                         f"(multiples of {multiple} up to {max_bn})")
    clusters = [c for c in CLUSTERS if forced.get("cluster_n", c[1]) == c[1] and not (problem.mn_major & 1 and c[1] > 1)]
    if not clusters:
        raise ValueError("MATEGEMM_FORCE_CONFIG: cluster_n must be 1 or 2 for grouped GEMMs (1 with an M-major A "
                         "transposed in the kernel)")
    if "num_mp" in forced:
        num_mp = max(1, min(forced["num_mp"], device.num_sms))

    rows = max(1, rows_per_group)
    extra = {"out_elem_bytes": problem.out_elem_bytes, "rows_checked": problem.group_mode in ROWS_CHECKED_MODES,
             "max_groups": problem.max_groups, "mn_major": problem.mn_major,
             "scale_gran_k": problem.recipe.gk if problem.recipe.gn == 1 else 128, "tma_scales": problem.tma_scales}
    best = None
    if scale_at_end and not fp32_out and not ({"block_m", "block_n", "cluster_n"} & forced.keys()):
        # NOTES (H200, 2026-11-28, forced configs side by side, TFLOPS): without promotion the
        # widest tile wins, sharing A across a cluster pair. bmm_fp16 bf16 16x4096^3: 128x128 704,
        # 128x192 721, 256x128 673, 128x256 767, 128x256 cluster_n 2 770 (torch.bmm 703); per-tensor
        # FP8 16x4096^3: 1396 -> 1478; 64x128x7168x512: 379 -> 402 (bf16), 609 -> 638 (FP8).
        block_n = min(max_bn, -(-problem.n // (64 if problem.mn_major & 2 else 16)) * (64 if problem.mn_major & 2 else 16))
        cluster_n = 2 if math.ceil(problem.n / block_n) % 2 == 0 and num_mp >= 2 and (1, 2) in clusters else 1
        best = ((0.0,), 64 if rows <= 64 else 128, block_n, (1, cluster_n))
    for bm in block_ms if best is None else ():
        for cluster in clusters:
            # The dense rule, on one group's rows: no cluster unless forced.
            if "cluster_n" not in forced and (cluster != (1, 1) or (len(block_ms) > 1 and not fp8_gemm.worth_trying(
                    dataclasses.replace(problem, m=rows), bm, cluster))):
                continue
            for bn in block_ns:
                if not _block_n_allowed(bn, problem.recipe.gn, max_bn, problem.mn_major, problem.out_elem_bytes):
                    continue
                if fp8_gemm.smem_bytes(bm, bn, sm90.MIN_STAGES, problem.recipe.gn, **extra) > device.smem_per_block:
                    continue
                # The dense model on the expected tiles: each group's rows tiled on their own.
                if per_group_m:
                    m_tiles = problem.num_groups * math.ceil(problem.m / bm)
                    k = max(128, rows // 128 * 128) if ragged_k else problem.k
                else:
                    m_tiles = math.ceil(problem.num_groups * passes_per_group(rows, bm, alignment_m))
                    k = problem.k
                k *= problem.a_dtype.itemsize  # the model counts 128-byte blocks of K
                if cluster[1] > 1 and math.ceil(problem.n / bn) % 2:
                    continue
                proxy = GemmProblem(m_tiles * bm, problem.n, k, problem.recipe, problem.a_dtype, problem.b_dtype,
                                    problem.out_dtype)
                cost = fp8_gemm.estimate_ns(proxy, bm, bn, num_mp, cluster)
                rank = (round(cost, 1), bm, bn, cluster)
                if best is None or rank < best[0]:
                    best = (rank, bm, bn, cluster)
    if best is None:
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: no tile fits the forced values {forced} for this grouped GEMM "
                         f"(cluster_n 2 needs an even number of N-blocks)")
    _, block_m, block_n, (_, cluster_n) = best
    stages = forced.get("stages") or fp8_gemm.max_stages(block_m, block_n, problem.recipe.gn, device.smem_per_block,
                                                        **extra)
    group_n = forced.get("group_n", fp8_gemm.GROUP_N)
    if scale_at_end and problem.group_mode == "batched":  # measured on bmm only (NOTES above)
        if "stages" not in forced:
            k_blocks = math.ceil(problem.k * problem.a_dtype.itemsize / sm90.BLOCK_K_FP8)
            stages = max(sm90.MIN_STAGES, min(stages, max(SCALE_AT_END_MIN_RING, k_blocks // 2)))
        if "group_n" not in forced and rows > block_m:  # B tiles are reused by several M-blocks
            group_n = max(1, SCALE_AT_END_RASTER_COLUMNS // (block_n * cluster_n))
    if not sm90.MIN_STAGES <= stages <= sm90.MAX_STAGES:
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: stages must be in [{sm90.MIN_STAGES}, {sm90.MAX_STAGES}]")
    smem = fp8_gemm.smem_bytes(block_m, block_n, stages, problem.recipe.gn, **extra)
    if smem > device.smem_per_block:
        raise ValueError(f"{stages} stages of {block_m}x{block_n} need {smem} B of shared memory; the device has "
                         f"{device.smem_per_block}")
    tiles = tile_bound(problem, block_m, block_n, alignment_m, max_m)
    num_mp = max(cluster_n, min(num_mp - num_mp % cluster_n, tiles + tiles % cluster_n))
    block_k = sm90.BLOCK_K_FP8 // problem.a_dtype.itemsize  # elements in a 128-byte stage row
    return GemmConfig(block_m=block_m, block_n=block_n, block_k=block_k, stages=stages, num_mp=num_mp,
                      group_n=group_n,
                      out_swizzle=fp8_gemm.out_swizzle(block_n, problem.out_elem_bytes), smem_bytes=smem,
                      cluster_m=1, cluster_n=cluster_n, num_splits=1,
                      overlap=forced_flag(forced, "overlap", int(not ragged_k)))


# The gated GEMM's tile width: 128 activation columns, one quantisation group (its B tile is the gate
# and the up rows of those columns).
GATED_BLOCK_N = 128
GATED_BLOCK_MS = (64, 128)


@functools.lru_cache(maxsize=1024)
def choose_gated(problem: GemmProblem, rows_per_group: int, device: DeviceInfo, num_mp: int,
                 force: str = "") -> GemmConfig:
    """The gated GEMM's config (problem.n: the activation's columns): 128-column tiles, 64 rows
    (one math warpgroup) where groups hold at most 64 rows, else 128 (two); as many stages as
    fit. MATEGEMM_FORCE_CONFIG block_m, stages, num_mp and group_n apply."""
    forced = parse_force_config(force)
    block_m = forced.get("block_m", GATED_BLOCK_MS[0] if rows_per_group <= 64 else GATED_BLOCK_MS[1])
    if block_m not in GATED_BLOCK_MS:
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: block_m must be one of {GATED_BLOCK_MS} for the gated GEMM, "
                         f"got {block_m}")
    if forced.get("block_n", GATED_BLOCK_N) != GATED_BLOCK_N or forced.get("cluster_n", 1) != 1:
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: the gated GEMM's tiles are {GATED_BLOCK_N} columns wide, "
                         "without a cluster")
    if "num_mp" in forced:
        num_mp = max(1, min(forced["num_mp"], device.num_sms))
    extra = {"out_elem_bytes": 1, "rows_checked": True, "max_groups": problem.max_groups,
             "tma_scales": problem.tma_scales, "b_halves": 2}
    stages = forced.get("stages") or fp8_gemm.max_stages(block_m, GATED_BLOCK_N, 128, device.smem_per_block, **extra)
    if not sm90.MIN_STAGES <= stages <= sm90.MAX_STAGES:
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: stages must be in [{sm90.MIN_STAGES}, {sm90.MAX_STAGES}]")
    smem = fp8_gemm.smem_bytes(block_m, GATED_BLOCK_N, stages, 128, **extra)
    if smem > device.smem_per_block:
        raise ValueError(f"{stages} stages of the gated {block_m}x{GATED_BLOCK_N} tile need {smem} B of shared "
                         f"memory; the device has {device.smem_per_block}")
    tiles = tile_bound(problem, block_m, GATED_BLOCK_N, 0, 0)
    return GemmConfig(block_m=block_m, block_n=GATED_BLOCK_N, block_k=sm90.BLOCK_K_FP8, stages=stages,
                      num_mp=max(1, min(num_mp, tiles)), group_n=forced.get("group_n", fp8_gemm.GROUP_N),
                      out_swizzle=128, smem_bytes=smem)


def _block_n_allowed(block_n: int, scale_gran_n: int, max_block_n: int, mn_major: int = 0,
                     out_elem_bytes: int = 2) -> bool:
    if mn_major & 2 and block_n % 64:
        return False
    if scale_gran_n <= 0:  # no B scale blocks to straddle
        return block_n % fp8_gemm.block_n_multiple(out_elem_bytes) == 0 and 16 <= block_n <= max_block_n
    return block_n <= max_block_n and fp8_gemm.block_n_allowed(block_n, scale_gran_n, out_elem_bytes)
