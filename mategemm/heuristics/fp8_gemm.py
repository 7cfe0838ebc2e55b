"""Config choice for sm90_fp8_gemm_blockscaled (dense FP8 block-scaled GEMM)."""
from __future__ import annotations

import functools
import math

from mategemm.heuristics import forced_flag, parse_force_config, sm90
from mategemm.runtime.device import DeviceInfo
from mategemm.types import GemmConfig, GemmProblem, tma_scale_boxes

BLOCK_MS = (64, 128, 256)
# NOTES: BLOCK_N is any multiple of 16 up to 192: 256 spills (accumulator + scratch = 256
# registers per math thread, of 232); the overlapped promotion's second scratch is used only up
# to 128. 192 measured 990 TFLOPS vs 1180 at 128 (4096x7168x16384, H200, A's scales by the scale
# warps); the efficiency model picks it only where wide_tile_allowed. With the (1,128,128) recipe a
# tile may straddle at most two 128-column scale blocks, which rules out BLOCK_N > 128 +
# gcd(BLOCK_N, 128) (e.g. 176, 208, 224, 240).
MAX_BLOCK_N = 192


def block_n_multiple(out_elem_bytes: int = 2) -> int:
    """What BLOCK_N must be a multiple of: 16, or 32 with a 1-byte output (its narrowest swizzled
    store chunk is 32 columns)."""
    return 32 if out_elem_bytes == 1 else 16


def block_n_allowed(block_n: int, scale_gran_n: int, out_elem_bytes: int = 2) -> bool:
    """A tile width the kernel takes: a multiple of block_n_multiple up to MAX_BLOCK_N, within two B
    scale blocks."""
    if block_n % block_n_multiple(out_elem_bytes) or not 16 <= block_n <= MAX_BLOCK_N:
        return False
    return scale_gran_n != 128 or block_n <= 128 + math.gcd(block_n, 128)


# NOTES: the heuristic stops at 160 (176 never won a measurement), but for wide_tile_allowed.
BLOCK_NS = tuple(bn for bn in range(16, 161, 16))
WIDE_BLOCK_N = 192


def wide_tile_allowed(problem: GemmProblem) -> bool:
    """Whether the dense heuristic also weighs BLOCK_N = WIDE_BLOCK_N: measured only with the
    (1,128,128) recipe and A's scales by TMA, past decode sizes. NOTES: at m = 128 the floor-bound
    model picked 192 and it lost (128x24576x1536 560 -> 535 TFLOPS, scale warps)."""
    return problem.recipe.gn == 128 and problem.tma_scales and problem.m >= 256


# NOTES: N-blocks per raster group. 4096x7168x16384 at 128x128 on an H200: group_n 4 -> 1043,
# 8 -> 1069, 16 -> 1082, 32 -> 1054 TFLOPS.
GROUP_N = 16


def raster_group(num_m_blocks: int, num_items: int, num_mp: int) -> int:
    """N-blocks per raster group. Where every work item runs in the first wave the walk only decides
    which CTA takes which tile: group_n 1 puts the M-blocks that share an N-block's B on adjacent
    CTAs. NOTES (dense, MN-major scales, group_n 16 -> 1, TFLOPS, DeepGEMM beside): 128x4096x7168
    (64x64 tiles, 2 M-blocks) H100 399 -> 415 (DeepGEMM 444), H200 442 -> 464 (497); 128x2112x7168
    H100 265 -> 267, 128x576x7168 102 -> 102; one M-block is the same walk either way."""
    return 1 if 1 < num_m_blocks and num_items <= num_mp else GROUP_N


# NOTES: 2-CTA clusters multicast the tile the two CTAs share: (cluster_m, cluster_n) = (2, 1)
# puts them on adjacent M-blocks sharing B, (1, 2) on adjacent N-blocks sharing A. Each CTA
# fetches half of the shared tile from L2. BLOCK_M 256 pairs only with sharing A (with B shared,
# 256 x 112 spilled) and BLOCK_N <= 128 (two 64-row waves of accumulators per math warpgroup).
# They are forced only (worth_trying): once kernels without a cluster launched without the cluster
# attribute, the best pair beat the best tile alone on 2 of 17 shapes, by 1.1% (H200 sweep below).
CLUSTERS = ((1, 1), (2, 1), (1, 2))
# NOTES: split-K (decode only, split_k_rule): up to 8 slices of K; the last work item of a tile to
# finish sums the partial tiles. SPLIT_REDUCE_NS is the reduction's cost when splits are forced.
MAX_SPLITS = 8
MIN_K_BLOCKS_PER_SPLIT = 14
MIN_SPLITS = 3
SPLIT_REDUCE_NS = 2000.0
DECODE_RING_STAGES = 12  # see ring_stages


def out_swizzle(block_n: int, elem_bytes: int = 2) -> int:
    """Widest TMA swizzle whose chunk (bytes / elem_bytes columns) divides BLOCK_N."""
    for swizzle in (128, 64, 32):
        if block_n % (swizzle // elem_bytes) == 0:
            return swizzle
    raise ValueError(f"block_n must be a multiple of 16, got {block_n}")


def item_b_scales(tma_scales: bool, scale_gran_n: int) -> bool:
    """The kernel's kItemBScales: with A's scales by TMA and (1,128,128) scales, each work item's B
    scales are staged in a buffer of their own (two buffers in turn)."""
    return tma_scales and scale_gran_n == 128


def smem_bytes(block_m: int, block_n: int, stages: int, scale_gran_n: int, out_elem_bytes: int = 2,
               rows_checked: bool = False, max_groups: int = 0, mn_major: int = 0, scale_gran_k: int = 128,
               tma_scales: bool = False, b_halves: int = 1, split_cluster: int = 1) -> int:
    """Must match GemmSmemLayout in kernels_src/gemm/traits.cuh.

    Grouped GEMMs add a byte per tile row (rows_checked: the grouped M modes) and a table of
    3 ints per group (max_groups: the table's capacity); MN-major operands (mn_major bits) a
    staging copy of their tile per stage and a third barrier per stage; (1,1,32) scales
    (scale_gran_k 32) four sets of per-row and per-column scales per stage; A's scales by TMA
    ((1,128,128) with tma_scales) sa per row and stage, and two buffers of a tile's B scales (with
    per-column B scales the stage's scales are laid out the same either way); a gated GEMM
    (b_halves 2) a B tile of gate and up rows, each half in a B scale block of its own; split-K in a
    cluster of split_cluster CTAs a slot for each other CTA's fp32 partial tile."""
    out = block_m * block_n * out_elem_bytes
    two_b_blocks = 128 % block_n != 0 or b_halves == 2
    scale_align = 16
    b_scales_per_item = item_b_scales(tma_scales, scale_gran_n)
    if b_scales_per_item:  # sa per row as TMA lands it
        box_rows, boxes = tma_scale_boxes(block_m, rows_checked)
        scale_floats = block_m + box_rows - block_m // boxes  # the rows before the tile's first, in its box
        if rows_checked:
            scale_align = 128
    elif scale_gran_n == 128:  # per row: sa * sb for the tile's one or two B scale blocks
        scale_floats = block_m * (2 if two_b_blocks else 1)
    elif scale_gran_n == 1:  # sa per row, sb per column, for each scale block of the stage's K
        scale_floats = (block_m + block_n) * (sm90.BLOCK_K_FP8 // scale_gran_k)
    else:  # per-row / per-tensor scales, applied after the last k-block: none in the ring
        scale_floats = 0
    scales = -(-scale_floats * 4 // scale_align) * scale_align
    staging = (block_m if mn_major & 1 else 0) + (block_n if mn_major & 2 else 0)
    per_stage = (block_m + block_n * b_halves + staging) * sm90.BLOCK_K_FP8 + scales
    row_ok = (block_m + 15) // 16 * 16 if rows_checked else 0
    barriers = (3 if mn_major else 2) * stages * 8
    sfb_tiles = 2 * sm90.MAX_TILE_K_BLOCKS * (2 if two_b_blocks else 1) * 4 if b_scales_per_item else 0
    split_slots = (split_cluster - 1) * block_m * block_n * 4
    # 16: the split-K flag (or its cluster's barriers)
    return (out + stages * per_stage + barriers + 16 + row_ok + 12 * max_groups + sfb_tiles + split_slots
            + sm90.SMEM_SLACK)


def max_stages(block_m: int, block_n: int, scale_gran_n: int, smem_limit: int, most: int = sm90.MAX_STAGES,
               **extra) -> int:
    """The most stages (up to `most`) that fit; `extra`: smem_bytes' grouped-GEMM arguments."""
    stages = most
    while stages > sm90.MIN_STAGES and smem_bytes(block_m, block_n, stages, scale_gran_n, **extra) > smem_limit:
        stages -= 1
    return stages


def mma_efficiency(block_n: int) -> float:
    """Rate of a tile width's MMA + per-k-block promotion, relative to the datasheet FP8 rate.

    NOTES (H200, plain launches, `tools/sweep_fp8_configs.py`): a 128-wide tile runs a k-block in
    ~435-455 ns at BLOCK_M 128 and ~855 ns at 256 (promotion-bound, whatever the number of CTAs in
    flight): 0.65-0.7 of the datasheet rate. BLOCK_N = 128 sits inside one B scale block (one scale
    pair per k-block, no per-chunk select) and stores through the 128-byte swizzle; other widths
    ran ~0.8x its rate per column (128x112 462 ns, 128x144 586 ns per k-block; 4096x2112x7168,
    interleaved: 128x128 1039 TFLOPS, 128x112 975). With A's scales by TMA (H200, 2026-12-05,
    4096x2112x7168, two rounds in turns): 128x128 1064 TFLOPS (416 ns per k-block), 128x192 1112
    (664 ns: 0.66 of the datasheet rate on this scale), 128x144 1005 (0.60), 128x160 931 (0.61).
    """
    return {128: 0.7, WIDE_BLOCK_N: 0.66}.get(block_n, 0.55)


def tile_allowed(problem: GemmProblem, block_m: int, block_n: int, cluster: tuple[int, int], num_mp: int) -> bool:
    """Tile and cluster shapes the kernel supports for `problem` (BLOCK_N legality aside)."""
    cluster_m, cluster_n = cluster
    if block_m == 256 and (block_n > 128 or cluster_m > 1):
        return False
    if cluster_m * cluster_n == 1:
        return True
    return (math.ceil(problem.m / block_m) % cluster_m == 0 and math.ceil(problem.n / block_n) % cluster_n == 0
            and num_mp >= 2)


def worth_trying(problem: GemmProblem, block_m: int, cluster: tuple[int, int]) -> bool:
    """Tiles and clusters the heuristic considers (forced values bypass this).

    NOTES (H200, 2026-11-28, sweep of forced configs, each timed in a forward and a reverse pass):
    the best cluster pair against the same tile alone, us: 4096x2112x7168 123.7 vs 121.7,
    4096x7168x16384 808.6 vs 773.6, 2048x2112x7168 67.7 vs 65.6, 512x4096x7168 30.1 vs 28.6,
    256x4096x7168 20.7 vs 21.0, 512x2112x7168 21.3 vs 21.5 (17 shapes with m >= 256; at m <= 128
    every cluster measured slower before, e.g. 128x24576x1536 560 -> 460 TFLOPS). BLOCK_M 64 won
    only at m <= 128, and BLOCK_M 256 would compute at least half a tile of padding there.
    """
    if cluster != (1, 1):
        return False
    return block_m <= 128 if problem.m <= 128 else block_m >= 128


def streams_b_once(problem: GemmProblem, block_m: int, block_n: int, num_mp: int) -> bool:
    """At 64 < m <= 128: one M-block of at least 64 columns whose tiles still cover 3/4 of the SMs,
    so each B tile is streamed by one CTA instead of two 64-row ones. (The estimate cannot tell these
    apart: where the per-k-block floor binds, one wave costs the same on 33 SMs as on 132.)

    NOTES (H100, 2026-12-05, `tools/compare_configs.py`, 3 rounds in turns, K-major / MN-major
    scales, TFLOPS 64-row pick -> 128 rows): 128x7168x16384 64x112 524/533 -> 128x64 624/619,
    80x7168x16384 297/275 -> 394/387, 128x7168x2048 305/288 -> 312/304; with narrower tiles it
    does not pay: 128x4096x7168 64x64 398/393 -> 128x32 403/404 (H200 sweep: 18.4 -> 19.0 us),
    128x2112x7168 64x32 267/262 -> 128x16 251/244. The H200 sweep agrees on the 7168-wide shapes
    (128x64 best, 4% ahead of 64x112) and has 128x64 at 128x4096x7168 (64 CTAs) 19% behind 64x64."""
    tiles = math.ceil(problem.n / block_n)
    return 64 < problem.m <= 128 and block_m >= problem.m and block_n >= 64 and 4 * tiles >= 3 * num_mp


def b_read_once(problem: GemmProblem, block_m: int, num_splits: int, split_in_cluster: bool) -> bool:
    """Whether B's tiles load evict-first in L2: dense, one 64-row M-block covering m, no split
    through the workspace (each B line is read once, by one CTA).

    NOTES (H100, live DeepGEMM, `tools/compare_configs.py` 2 processes x 2 rounds in turns, 4 input
    sets rotated, time with / without): 64x24576x1536 -5.3%, 64x32768x512 -4.2%, 64x2112x7168 (split 2 in a cluster)
    -3.4%, 1x24576x1536 and 1x32768x512 -2.4%, the other 1- and 64-row rows -0..-1.4%; 64x576x7168
    (split 4 through the workspace) +2.1%. With 128-row tiles over 128 rows it went both ways
    (128x24576x1536 -3.2%, 128x7168x16384 +2.0%), and every 4096-row row lost (B read by 32 M-blocks:
    4096x24576x1536 +5.3%)."""
    return (problem.group_mode == "none" and problem.m <= block_m == 64
            and (num_splits == 1 or split_in_cluster))


def scales_ahead(problem: GemmProblem, block_m: int, block_n: int) -> bool:
    """Whether one-wave tiles (block_m <= 128) stage the next work item's B scales under the current
    item's main loop, as two-wave tiles always do: dense calls whose tiles stage B scales per item,
    but not 128x192 tiles.

    NOTES (H100, live DeepGEMM, `tools/compare_configs.py` 2-3 processes x 2-3 rounds, 8 input sets,
    TFLOPS off / on): 128x32768x512 278 / 290 (+4%), 256x2112x7168 461 / 475 (+3%), 128x24576x1536
    +2.7%, 64x32768x512 +2%, 128x4096x512 +0..4%, 32x32768x512 +1.5%; 128x144 tiles at 2048x2112x7168
    977 / 1027 (+5%), 1024x2112x7168 and 4096x576x7168 +2%; the rest within -0.9..+1% (128x4096x4096
    -0.7%, 16x24576x1536 -0..-1.5%). The 128x192 tile lost in three processes alike: 4096x2112x7168
    1254 / 1217 (-3%). Grouped modes not measured."""
    return (problem.group_mode == "none" and block_m <= 128 and block_n != WIDE_BLOCK_N
            and item_b_scales(problem.tma_scales, problem.recipe.gn))


def split_allowed(block_m: int, cluster: tuple[int, int], num_splits: int) -> bool:
    """Split-K runs on one-wave tiles without clusters (the kernel's static_assert)."""
    return num_splits == 1 or (block_m <= 128 and cluster == (1, 1))


def split_counts(k_blocks: int) -> list[int]:
    """Split-K counts with no empty slice: s such that ceil(k_blocks / s) slices cover K exactly."""
    counts = []
    for splits in range(1, MAX_SPLITS + 1):
        per_split = math.ceil(k_blocks / splits)
        effective = math.ceil(k_blocks / per_split)
        if effective not in counts:
            counts.append(effective)
    return counts


def estimate_ns(problem: GemmProblem, block_m: int, block_n: int, num_mp: int,
                cluster: tuple[int, int] = (1, 1), num_splits: int = 1) -> float:
    """Waves x k-blocks x per-k-block time of one CTA, the slowest of three bounds.

    MMA work at the tile's efficiency; operand bytes (A rows actually loaded, B rows, the shared
    one halved for a cluster) with the feed rate shared by the CTAs running at once; and the
    fixed per-k-block latency floor. Split-K multiplies the work items, divides their k-blocks
    and adds the partial-tile reduction.
    """
    cluster_m, cluster_n = cluster
    num_mp -= num_mp % (cluster_m * cluster_n)
    num_tiles = math.ceil(problem.m / block_m) * math.ceil(problem.n / block_n) * num_splits
    waves = math.ceil(num_tiles / num_mp)
    active = min(num_tiles, num_mp)
    a_rows = min(block_m, math.ceil(problem.m / 8) * 8)
    mma_ns = 2.0 * block_m * block_n * sm90.BLOCK_K_FP8 / (sm90.FP8_FLOPS_PER_SM_PER_NS * mma_efficiency(block_n))
    feed_ns = (a_rows / cluster_n + block_n / cluster_m) * sm90.BLOCK_K_FP8 * active / sm90.FEED_BYTES_PER_NS
    k_blocks = math.ceil(problem.k_blocks / num_splits)
    reduce_ns = SPLIT_REDUCE_NS if num_splits > 1 else 0.0
    return waves * k_blocks * max(mma_ns, feed_ns, sm90.K_BLOCK_FLOOR_NS) + reduce_ns


def split_k_rule(problem: GemmProblem, block_m: int, block_n: int, cluster: tuple[int, int],
                 num_mp: int) -> tuple[int, int, bool]:
    """(BLOCK_N, splits, in a cluster) after the one-split pick: decode shapes whose pick is a narrow
    tile (chosen only to give every SM a tile) run 32-wide tiles in cluster pairs, one K half each,
    where those fill at least 3/4 of the SMs, else 64-wide tiles split over K through the workspace
    (32-wide where 64-wide ones would leave half the SMs idle).

    NOTES (H200, 2026-11-28, `tools/bench.py dense_fp8`, TFLOPS one-split pick -> 64-wide split):
    64x2112x7168 141 -> 150 (4 splits), 64x576x7168 40 -> 43 (4), 128x576x7168 80 -> 85 (4),
    1x2112x7168 2.2 -> 2.4 (4); two splits gained nothing (128x2112x7168 273 -> 273) or lost
    (64x4096x7168 249 -> 241, 1x4096x7168 4.1 -> 3.8), so at least 3 are required. Wider picks
    lost with splits (64x7168x16384 420 -> 380, 64x7168x2048 228 -> 169): the reduction (store,
    fence, count, re-read) costs a few us, so each split keeps >= 14 k-blocks and the work items
    stay within one wave. Pairs reducing in shared memory (H100, 2026-12-07, compare_configs, us,
    64x64 with 4 splits through the workspace -> 64x32 pairs): 1x2112x7168 13.82 -> 12.64,
    64x2112x7168 14.38 -> 13.30; 64-wide pairs lost at 64x4096x7168 (16.98 -> 17.82) and
    128x2112x7168 gained 1%; fours in a cluster lost everywhere (33 clusters of 4 do not all fit
    at once). Where 64-wide splits leave half the SMs idle, 32-wide ones (H100, 2026-12-07, us, 64x64
    with 4 splits -> 64x32 with 4): 1x576x7168 9.76 -> 9.16, 64x576x7168 9.92 -> 9.30 (128x576x7168,
    72 items of 64-wide tiles, 10.26 -> 10.42 with 32-wide ones).
    """
    if problem.m > 128 or block_n >= 64 or cluster != (1, 1) or not block_n_allowed(64, problem.recipe.gn):
        return block_n, 1, False
    k_blocks = problem.k_blocks
    m_blocks = math.ceil(problem.m / block_m)
    pairs = 2 * m_blocks * math.ceil(problem.n / 32)
    if (4 * pairs >= 3 * num_mp and pairs <= num_mp and 2 in split_counts(k_blocks)
            and k_blocks / 2 >= MIN_K_BLOCKS_PER_SPLIT and block_n_allowed(32, problem.recipe.gn)):
        return 32, 2, True

    def most_splits(width: int) -> tuple[int, int]:  # (splits, work items) of width-wide tiles in one wave
        tiles = m_blocks * math.ceil(problem.n / width)
        fits = [s for s in split_counts(k_blocks) if tiles * s <= num_mp and k_blocks / s >= MIN_K_BLOCKS_PER_SPLIT]
        splits = max(fits, default=1)
        return splits, tiles * splits

    splits, items = most_splits(64)
    if 2 * items <= num_mp and block_n_allowed(32, problem.recipe.gn):  # half the SMs idle: narrower tiles
        splits32, items32 = most_splits(32)
        if items32 > items:
            return (32, splits32, False) if splits32 >= MIN_SPLITS else (block_n, 1, False)
    return (64, splits, False) if splits >= MIN_SPLITS else (block_n, 1, False)


def ring_stages(problem: GemmProblem, block_m: int, num_splits: int) -> int:
    """The most stages the ring may take: DECODE_RING_STAGES for 64-row tiles of 64-128 rows whose
    work items stream 24-64 k-blocks, else sm90.MAX_STAGES.

    NOTES (H100, 2026-12-07, compare_configs, us, 8 stages -> 12): 64x2112x7168 13.23 -> 12.93,
    128x2112x7168 14.41 -> 14.21, 64x4096x7168 16.86 -> 16.26, 128x4096x7168 17.70 -> 16.95 (16: no
    better); but 1x2112x7168 12.43 -> 12.75, 1x4096x7168 17.60 -> 17.90, 64x7168x16384 (128 k-blocks)
    44.70 -> 46.05, 64x7168x2048 (16) 10.98 -> 11.09, 64x576x7168 (4 splits of 14) level.
    """
    k_blocks = math.ceil(problem.k_blocks / num_splits)
    if block_m == 64 and 64 <= problem.m <= 128 and 24 <= k_blocks <= 64:
        return DECODE_RING_STAGES
    return sm90.MAX_STAGES


@functools.lru_cache(maxsize=4096)
def choose(problem: GemmProblem, device: DeviceInfo, num_mp: int, force: str = "") -> GemmConfig:
    """Pick BLOCK_M, BLOCK_N, cluster, stages, SM count and raster group for `problem` on `device`."""
    forced = parse_force_config(force)
    gran_n = problem.recipe.gn
    block_ms = (forced["block_m"],) if "block_m" in forced else BLOCK_MS
    block_ns = ((forced["block_n"],) if "block_n" in forced else
                BLOCK_NS + (WIDE_BLOCK_N,) if wide_tile_allowed(problem) else BLOCK_NS)
    clusters = [c for c in CLUSTERS
                if forced.get("cluster_m", c[0]) == c[0] and forced.get("cluster_n", c[1]) == c[1]]
    for bm in block_ms:
        if bm not in BLOCK_MS:
            raise ValueError(f"MATEGEMM_FORCE_CONFIG: block_m must be one of {BLOCK_MS}, got {bm}")
    out_bytes = problem.out_elem_bytes
    if "block_n" in forced and not block_n_allowed(forced["block_n"], gran_n, out_bytes):
        bn = forced["block_n"]
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: block_n={bn} is not allowed for recipe "
                         f"{problem.recipe.name} (multiples of {block_n_multiple(out_bytes)} up to {MAX_BLOCK_N})")
    if not clusters:
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: (cluster_m, cluster_n) must be one of {CLUSTERS}")
    if "num_mp" in forced:
        num_mp = max(1, min(forced["num_mp"], device.num_sms))

    counts = split_counts(problem.k_blocks)
    if "num_splits" in forced:
        if forced["num_splits"] not in counts:
            raise ValueError(f"MATEGEMM_FORCE_CONFIG: num_splits must leave no K slice empty; for k={problem.k} "
                             f"one of {counts}")
        counts = [forced["num_splits"]]
    else:
        counts = [1]  # split-K: see split_k_rule below

    best = None
    free = not ({"block_m", "cluster_m", "cluster_n"} & forced.keys())
    for bm in block_ms:
        for cluster in clusters:
            if free and not worth_trying(problem, bm, cluster):
                continue
            for bn in block_ns:
                if not block_n_allowed(bn, gran_n, out_bytes) or not tile_allowed(problem, bm, bn, cluster, num_mp):
                    continue
                if free and bm == 256 and bn != 128 and "block_n" not in forced:
                    continue  # NOTES: 4096x7168x16384 256x112 968 us vs 774 at 256x128; 256x96 spills with gn 1
                for splits in counts:
                    if not split_allowed(bm, cluster, splits):
                        continue
                    cost = estimate_ns(problem, bm, bn, num_mp, cluster, splits)
                    # NOTES: ties (common where the per-k-block floor binds) go first to a tile
                    # that streams B once (streams_b_once), then to the smaller tile: more CTAs in
                    # flight measured faster at decode sizes on the H200 sweep; then to no cluster
                    # and fewer splits.
                    rank = (round(cost, 1), not streams_b_once(problem, bm, bn, num_mp), bm, bn, cluster, splits)
                    if best is None or rank < best[0]:
                        best = (rank, bm, bn, cluster, splits)
    if best is None:
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: no tile fits the forced values {forced} for m={problem.m}, "
                         f"n={problem.n}: a cluster needs M-blocks (cluster_m) or N-blocks (cluster_n) divisible "
                         f"by 2 and num_mp >= 2; block_m 256 needs block_n <= 128 and cluster_m 1; num_splits > 1 "
                         f"needs block_m <= 128 and no cluster")
    _, block_m, block_n, (cluster_m, cluster_n), num_splits = best
    in_cluster = False
    if free and "block_n" not in forced and "num_splits" not in forced:
        block_n, num_splits, in_cluster = split_k_rule(problem, block_m, block_n, (cluster_m, cluster_n), num_mp)
    split_in_cluster = forced_flag(forced, "split_cluster", int(in_cluster))
    if split_in_cluster and not 2 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: split_cluster=1 needs 2 to {MAX_SPLITS} splits, got {num_splits}")
    split_cluster = num_splits if split_in_cluster else 1
    extra = {"tma_scales": problem.tma_scales, "out_elem_bytes": out_bytes, "split_cluster": split_cluster}
    stages = (forced["stages"] if "stages" in forced else
              max_stages(block_m, block_n, gran_n, device.smem_per_block,
                         ring_stages(problem, block_m, num_splits), **extra))
    if not sm90.MIN_STAGES <= stages <= sm90.MAX_FORCED_STAGES:
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: stages must be in [{sm90.MIN_STAGES}, {sm90.MAX_FORCED_STAGES}]")
    smem = smem_bytes(block_m, block_n, stages, gran_n, **extra)
    if smem > device.smem_per_block:
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: {stages} stages of {block_m}x{block_n} need {smem} B of shared "
                         f"memory; the device has {device.smem_per_block}")
    num_m_blocks = math.ceil(problem.m / block_m)
    num_items = num_m_blocks * math.ceil(problem.n / block_n) * num_splits
    group_n = forced.get("group_n", raster_group(num_m_blocks, num_items, num_mp))
    if group_n < 1:
        raise ValueError("MATEGEMM_FORCE_CONFIG: group_n must be >= 1")
    cluster = cluster_m * cluster_n * split_cluster
    num_mp = min(num_mp - num_mp % cluster, num_items)  # a whole number of clusters (num_items is)
    return GemmConfig(block_m=block_m, block_n=block_n, block_k=sm90.BLOCK_K_FP8, stages=stages,
                      num_mp=num_mp, group_n=group_n, out_swizzle=out_swizzle(block_n, out_bytes),
                      smem_bytes=smem, cluster_m=cluster_m, cluster_n=cluster_n, num_splits=num_splits,
                      split_in_cluster=split_in_cluster, overlap=forced_flag(forced, "overlap", 1),
                      b_evict_first=forced_flag(forced, "b_evict_first",
                                                int(b_read_once(problem, block_m, num_splits, split_in_cluster))),
                      scales_ahead=forced_flag(forced, "scales_ahead", int(scales_ahead(problem, block_m, block_n))))
