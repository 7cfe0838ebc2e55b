"""Config choice for the NVFP4 grouped GEMM (token-packed MoE groups): sm90_nvfp4_stream_gemm or
sm90_nvfp4_grouped_gemm.

The rows per group live on the GPU, so the choice rests on their average, as for the FP8
grouped modes. Up to STREAM_ROWS rows per group the streaming kernel decodes the weights straight
into the wgmma's registers, 128 weight rows by the fewest of 8, 16, 32 or 64 rows of a group per
tile (64: the group's rows decoded to bf16 beforehand). Above, the GEMM core's NVFP4 kernel
decodes the weights to bf16 tiles in shared memory (the producer's warps 1-3 and the decoder
warpgroups) against the group's rows decoded beforehand: BLOCK_M 128, and 256 from TILE_256_ROWS
rows per group, which halves the decode of the weights per output row again; from DECODED_B_ROWS the
weights too are decoded beforehand, once per call, and the GEMM is a bf16 one.
"""
from __future__ import annotations

import functools
import math

from mategemm.heuristics import forced_flag, fp8_gemm, parse_force_config, sm90
from mategemm.runtime.device import DeviceInfo
from mategemm.types import GemmConfig, Nvfp4Problem

# NOTES: a stage is 64 values of K: bf16 tiles of 128-byte rows (what the wgmma read), and the
# staging area of the packed rows (32 bytes) and their scale chunks (512 bytes per 128 rows).
K_PER_STAGE = 64
BF16_ROW_BYTES = 128
PACKED_ROW_BYTES = 32
SCALE_CHUNK_ROWS, SCALE_CHUNK_BYTES = 128, 512
BLOCK_MS = (64, 128, 256)
# From TILE_256_ROWS rows per group on average: 256-row tiles (A's rows decoded beforehand, no decoder
# warpgroups: the producer's 3 warps decode B's 128 rows a stage against twice the tensor work).
TILE_256_ROWS = 1024
# NOTES: the decoding warps take 64 rows at a time per tile of B (the scale chunks are 128 rows);
# 256 is for forcing: with BLOCK_M 128 it does not fit 3 stages.
BLOCK_NS = (64, 128, 256)
DEFAULT_BLOCK_N = 128
DECODE_ROWS = 64  # rows per group up to which one 64-row tile holds a group
# NOTES (H100, 2026-12-06, `tools/bench.py nvfp4`, decoders=0 against 1, then 1 against 2, each pair on
# one machine): a warpgroup of 4 more decoding warps beside the producer's at BLOCK_M 64 is faster on
# every decode row, ms: 235B w1 64 tokens 0.280 -> 0.245, 16: 0.231 -> 0.213; 30B w1 1: 0.077 ->
# 0.073 (decode geomean against the FP8 path 0.56 -> 0.61). Two (11 decoding warps, 512 threads, at
# most 128 registers each: a stage of up to 176 rows in one pass instead of two) are 1-4% faster again
# at 1-16 tokens per group on all six expert GEMMs (DeepSeek-V3 w1 1 token 0.588 -> 0.564) and 2%
# slower at 64. At BLOCK_M 128 (more than 64 rows per group) the producer's 3 decoding warps alone
# bound the kernel (a stage's 256 rows at ~3 lane instructions per value); two decoder warpgroups
# beside the two math ones (H100, 2026-12-06, forced against the default, 2 rounds): 25-30% faster on
# all six expert GEMMs at 256 and 4096 tokens (DeepSeek-V3 w2 4096: 15.1 -> 11.4 ms, 256: 0.99 ->
# 0.75; one warpgroup 2-3% behind two; 128x64 tiles 25% slower); at 64 tokens the 64-row tile stays
# 14-17% ahead.
DECODER_WGS_64 = 1
DECODER_WGS_128 = 2
DECODER_WGS_FEW_ROWS, FEW_ROWS = 2, 16
MAX_DECODER_WGS = 2
FORCE_KEYS = ("block_m", "block_n", "stages", "num_mp", "group_n", "decoders", "stream", "decoded_a", "decoded_b",
              "ctas_per_sm")

# The streaming kernel (sm90_nvfp4_stream_gemm): tiles of 128 weight rows by STREAM_TOKENS rows of a
# group (the wgmma's N); a stage is 256 values of K: the weights' packed rows (128 bytes), the bf16 B
# tile and the packed rows of the group, and a 2048-byte scale block of each operand. With decoded_a
# the group's rows come decoded beforehand by sm90_nvfp4_dequant_a in the B tile's order and TMA
# lands the B tile: no packed rows or scales of theirs, no decode in the kernel (the 64-row tile's
# B decode by three warps would cost half the weights' decode a stage).
STREAM_TOKENS = (8, 16, 32, 64)
STREAM_WEIGHT_ROWS = 128
STREAM_ROW_BYTES = 128
STREAM_SCALE_BYTES = 2048
# NOTES (H100, 2026-12-06, 32 experts, one run each in turns, ms streaming / core / FP8 per_expert):
# DeepSeek-V3 w1 1 token 0.224 / 0.568 / 0.322, 16: 0.253 / 0.468 / 0.337, 32: 0.308 / 0.490; w2 1:
# 0.124 / 0.297 / 0.166; Qwen3-30B w1 1: 0.034 / 0.071 / 0.040. At 64 rows per group (two 32-row tiles
# a group) 0.605 against the core's ~0.55: the streaming kernel up to 32 rows per group. With the pair
# decode (same card, docs table): w1 1 token 0.188, 16: 0.215. 64-row tiles with the group's rows
# decoded beforehand (H100, 2026-12-06, one run each in turns, ms decoded / core / 64 rows decoded in
# the kernel): DeepSeek-V3 w1 64 tokens 0.280 / 0.552 / 0.442, w2 0.155 / 0.289 / 0.234, Qwen3-30B w1
# 0.050 / 0.069 / 0.058. At 1 and 16 tokens the decode before costs a launch: same or 4-5% faster
# on DeepSeek-V3's, 12-14% slower on Qwen3-30B's (0.038 against 0.034 ms): only the 64-row tile.
STREAM_ROWS = 64
STREAM_DECODED_TOKENS = 64
# Up to STREAM_TWO_CTAS_TOKENS rows per tile two CTAs per SM (launch bounds (384, 2): at most 80
# registers a thread, each CTA's stages in half the SM's shared memory, a launch of twice as many CTAs
# as SMs): twice the warps to hide a stage's load-decode-wgmma chain. NOTES (H100, 32 experts,
# time against one CTA without the decode cuts): at 16 tokens per expert the decode cuts -3..-5%,
# with two CTAs -6..-9%; at 1 and 4 tokens (memory-bound on the H100) -4..+2%; at 64 tokens two CTAs
# +6..+9%: one CTA from 32 rows. As shipped (one scale offset for both rows, at 8 rows a wait after
# each batch of wgmma): -4..-7% at 1 token, -8..-10% at 16.
STREAM_TWO_CTAS_TOKENS = 16
STREAM_CTAS_PER_SM = (1, 2)

# At BLOCK_M 128 A's rows are decoded to bf16 once per call (sm90_nvfp4_dequant_a, into a new (m, k)
# bf16 tensor) and loaded by TMA: the decoding warps then decode B alone instead of A again for every
# N tile. H100, six GEMMs: 1.17-1.45x at 256 and 4096 rows per group.
DECODED_A_FROM_BLOCK_M = 128
# From DECODED_B_ROWS rows per group the groups' weights are decoded to bf16 too, in group order
# (sm90_nvfp4_dequant_b), and the 256x128 GEMM decodes nothing. NOTES (H200, 2026-12-06, 32 experts,
# ms default -> decoded_b): 4096 rows DeepSeek-V3 w1 14.67 -> 12.77, w2 7.27 -> 6.02, Qwen3-30B w1
# 1.694 -> 1.427; 2048 rows 7.37 -> 6.85, 3.63 -> 3.13, 0.865 -> 0.798; 1024 rows 3.67 -> 3.96,
# 1.76 -> 1.93, 0.441 -> 0.463 (the weights' decode, a pass over every expert's weights, pays from 2048).
# Its epilogue stages one 64-row wave per math warpgroup, so the ring keeps 4 stages instead of 3:
# NOTES (H100, 2026-12-07, 4096 rows, 2 rounds, ms 3 -> 4 stages): DeepSeek-V3 w1 13.09 -> 12.57,
# w2 6.57 -> 6.15, Qwen3-235B w1 5.80 -> 5.42, Qwen3-30B w2 0.787 -> 0.756.
DECODED_B_ROWS = 2048


def smem_bytes(block_m: int, block_n: int, stages: int, max_groups: int, out_elem_bytes: int = 2,
               decoded_a: bool = False, decoded_b: bool = False) -> int:
    """Must match GemmSmemLayout with kNvfp4 (kernels_src/gemm/traits.cuh): the output tile (with
    decoded_b one 64-row wave per math warpgroup), the ring (bf16 tiles and staging: none of an
    operand that comes decoded), three barriers per stage, the split-K flag's 16 bytes, a byte per
    tile row, a table of 4 ints per group and the alignment slack."""
    staged_a, staged_b = 0 if decoded_a else block_m, 0 if decoded_b else block_n
    staging = ((staged_a + staged_b) * PACKED_ROW_BYTES +
               (math.ceil(staged_a / SCALE_CHUNK_ROWS) + math.ceil(staged_b / SCALE_CHUNK_ROWS)) * SCALE_CHUNK_BYTES)
    per_stage = (block_m + block_n) * BF16_ROW_BYTES + staging
    row_ok = (block_m + 15) // 16 * 16
    out_rows = min(block_m, 128) if decoded_b else block_m
    return (out_rows * block_n * out_elem_bytes + stages * per_stage + 3 * stages * 8 + 16 + row_ok +
            16 * max_groups + sm90.SMEM_SLACK)


def max_stages(block_m: int, block_n: int, max_groups: int, smem_limit: int, out_elem_bytes: int = 2,
               decoded_a: bool = False, decoded_b: bool = False) -> int:
    """The most stages (at most sm90.MAX_STAGES) that fit; fewer than sm90.MIN_STAGES if none fit."""
    stages = sm90.MAX_STAGES
    while stages >= sm90.MIN_STAGES and smem_bytes(block_m, block_n, stages, max_groups,
                                                   out_elem_bytes, decoded_a, decoded_b) > smem_limit:
        stages -= 1
    return stages


def tile_bound(problem: Nvfp4Problem, block_m: int, block_n: int) -> int:
    """An upper bound on the tiles of a launch: each group adds at most one partial M tile."""
    groups = problem.num_groups if problem.active is None else problem.active
    return (math.ceil(problem.m / block_m) + groups) * math.ceil(problem.n / block_n)


def launch_sms(problem: Nvfp4Problem, block_m: int, block_n: int, num_mp: int) -> int:
    """The CTAs of a launch: the SM budget, but no more than the launch's tiles can use."""
    return max(1, min(num_mp, tile_bound(problem, block_m, block_n)))


def stream_smem_bytes(tokens: int, stages: int, max_groups: int, decoded_tokens: bool = False) -> int:
    """Must match StreamLayout (kernels_src/sm90_nvfp4_stream_gemm.cuh): the stages, three barriers
    per stage, a table of 4 ints per group and the alignment slack. With the group's rows decoded
    beforehand a stage holds no packed rows or scales of theirs."""
    group_side = 0 if decoded_tokens else tokens * STREAM_ROW_BYTES + STREAM_SCALE_BYTES
    stage = STREAM_WEIGHT_ROWS * STREAM_ROW_BYTES + tokens * 2 * 2 * STREAM_ROW_BYTES + STREAM_SCALE_BYTES + group_side
    return stages * stage + 3 * stages * 8 + 16 * max_groups + sm90.SMEM_SLACK


def choose_stream(problem: Nvfp4Problem, rows_per_group: int, device: DeviceInfo, num_mp: int,
                  forced: dict) -> GemmConfig:
    """The streaming kernel's tile (the fewest rows of STREAM_TOKENS holding a group's), CTAs per SM,
    stages and CTAs of the launch."""
    tokens = forced.get("block_m", next((t for t in STREAM_TOKENS if t >= rows_per_group), STREAM_TOKENS[-1]))
    if tokens not in STREAM_TOKENS:
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: block_m must be one of {STREAM_TOKENS} with stream=1, got {tokens}")
    if (forced.get("block_n", STREAM_WEIGHT_ROWS) != STREAM_WEIGHT_ROWS or forced.get("decoders", 0) != 0 or
            forced.get("decoded_b", 0) != 0):
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: stream=1 takes block_n {STREAM_WEIGHT_ROWS}, no decoders and no "
                         f"decoded_b")
    decoded_a = forced_flag(forced, "decoded_a", int(tokens >= STREAM_DECODED_TOKENS))
    # Two CTAs per SM only on the whole device: below it the hardware would spread 2 x num_mp CTAs over
    # up to twice the SMs the budget names.
    two = tokens <= STREAM_TWO_CTAS_TOKENS and num_mp >= device.num_sms
    ctas_per_sm = forced.get("ctas_per_sm", 2 if two else 1)
    if ctas_per_sm not in STREAM_CTAS_PER_SM:
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: ctas_per_sm must be one of {STREAM_CTAS_PER_SM}, got {ctas_per_sm}")
    smem_limit = sm90.smem_per_block(device.smem_per_block, ctas_per_sm)
    stages = forced.get("stages") or sm90.MAX_STAGES
    if "stages" not in forced:
        while stages > 2 and stream_smem_bytes(tokens, stages, problem.max_groups, decoded_a) > smem_limit:
            stages -= 1
    smem = stream_smem_bytes(tokens, stages, problem.max_groups, decoded_a)
    if not 2 <= stages <= sm90.MAX_STAGES or smem > smem_limit:
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: {stages} stages of the streaming NVFP4 kernel at block_m {tokens} "
                         f"need {smem} B of shared memory; at {ctas_per_sm} CTA(s) per SM the device has {smem_limit} "
                         f"per CTA")
    num_mp = launch_sms(problem, tokens, STREAM_WEIGHT_ROWS, ctas_per_sm * num_mp)
    return GemmConfig(block_m=tokens, block_n=STREAM_WEIGHT_ROWS, block_k=2 * STREAM_ROW_BYTES, stages=stages,
                      num_mp=num_mp, group_n=forced.get("group_n", fp8_gemm.GROUP_N), out_swizzle=0, smem_bytes=smem,
                      nvfp4_stream=True, decoded_a=decoded_a, ctas_per_sm=ctas_per_sm)


@functools.lru_cache(maxsize=4096)
def choose(problem: Nvfp4Problem, rows_per_group: int, device: DeviceInfo, num_mp: int, force: str = "") -> GemmConfig:
    """The kernel, BLOCK_M, BLOCK_N, stages and SM count for `problem` at about `rows_per_group` rows
    per group. MATEGEMM_FORCE_CONFIG may set stream (1: the streaming kernel, block_m 8, 16, 32 or 64;
    0: the core's), block_m (64, 128, 256), block_n (64, 128, 256), stages, num_mp, group_n, decoders
    (warpgroups of 4 more decoding warps beside the producer's 3, 0-2: by default 2 at BLOCK_M 128 and
    at BLOCK_M 64 up to 16 rows per group, 1 above, none at 256) and decoded_a (the group's rows
    decoded beforehand: by default from BLOCK_M 128 in the core's kernel and at block_m 64 in the
    streaming one) and decoded_b (the core's kernel with the groups' weights decoded beforehand too, in
    group order: by default at BLOCK_M 256 from DECODED_B_ROWS rows per group) and ctas_per_sm (the
    streaming kernel's CTAs per SM, 1 or 2: by default 2 up to STREAM_TWO_CTAS_TOKENS rows per tile
    when num_mp is the whole device, a launch of that many CTAs per SM of num_mp; the core's kernel
    takes 1 only); other keys, or values
    that do not fit, raise ValueError."""
    forced = parse_force_config(force)
    unknown = sorted(set(forced) - set(FORCE_KEYS))
    if unknown:
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: {unknown} do not apply to the NVFP4 grouped GEMM "
                         f"(keys: {', '.join(FORCE_KEYS)})")
    # a forced key only the GEMM core's NVFP4 kernel takes picks that kernel
    core_forced = ("decoders" in forced or forced.get("block_m") in BLOCK_MS or forced.get("block_n", 128) != 128 or
                   forced.get("decoded_b", 0) == 1)
    stream = forced_flag(forced, "stream", int(rows_per_group <= STREAM_ROWS and not core_forced))
    if "num_mp" in forced:
        num_mp = max(1, min(forced["num_mp"], device.num_sms))
    if stream:
        return choose_stream(problem, rows_per_group, device, num_mp, forced)
    if forced.get("ctas_per_sm", 1) != 1:
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: ctas_per_sm must be 1 with the GEMM core's NVFP4 kernel, got "
                         f"{forced['ctas_per_sm']}; two CTAs per SM take the streaming kernel (stream=1)")
    block_m = 64 if rows_per_group <= DECODE_ROWS else 128
    if rows_per_group >= TILE_256_ROWS and max_stages(256, DEFAULT_BLOCK_N, problem.max_groups, device.smem_per_block,
                                                      problem.out_elem_bytes, True) >= sm90.MIN_STAGES:
        block_m = 256  # (a large group table leaves too little shared memory)
    block_m = forced.get("block_m", block_m)
    if block_m not in BLOCK_MS:
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: block_m must be one of {BLOCK_MS} here, got {block_m}")
    if "block_n" in forced:
        block_n = forced["block_n"]
        if block_n not in BLOCK_NS:
            raise ValueError(f"MATEGEMM_FORCE_CONFIG: block_n must be one of {BLOCK_NS} here, got {block_n}")
    else:
        # Narrower tiles where 128-wide ones would leave SMs without a weight tile to stream.
        block_n = DEFAULT_BLOCK_N
        if problem.n <= 64 or tile_bound(problem, block_m, DEFAULT_BLOCK_N) < num_mp:
            block_n = 64
    decoded_a = forced_flag(forced, "decoded_a", int(block_m >= DECODED_A_FROM_BLOCK_M))
    if block_m == 256 and not decoded_a:
        raise ValueError("MATEGEMM_FORCE_CONFIG: block_m 256 takes A's rows decoded beforehand (decoded_a 1)")
    decoded_b = forced_flag(forced, "decoded_b", int(block_m == 256 and rows_per_group >= DECODED_B_ROWS))
    if decoded_b and not decoded_a:
        raise ValueError("MATEGEMM_FORCE_CONFIG: decoded_b 1 takes A's rows decoded beforehand too (decoded_a 1)")
    out_bytes = problem.out_elem_bytes
    stages = forced.get("stages") or max_stages(block_m, block_n, problem.max_groups, device.smem_per_block,
                                                out_bytes, decoded_a, decoded_b)
    if not sm90.MIN_STAGES <= stages <= sm90.MAX_STAGES:
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: stages must be in [{sm90.MIN_STAGES}, {sm90.MAX_STAGES}]; "
                         f"{block_m}x{block_n} tiles fit {max(stages, 0)} here")
    smem = smem_bytes(block_m, block_n, stages, problem.max_groups, out_bytes, decoded_a, decoded_b)
    if smem > device.smem_per_block:
        raise ValueError(f"{stages} stages of {block_m}x{block_n} NVFP4 tiles need {smem} B of shared memory; the "
                         f"device has {device.smem_per_block}")
    decoders = DECODER_WGS_FEW_ROWS if rows_per_group <= FEW_ROWS else DECODER_WGS_64
    if decoded_b:  # nothing left to decode in the kernel
        decoders = 0
    elif block_m > 64:
        decoders = DECODER_WGS_128 if block_m == 128 else 0
    decoder_wgs = forced.get("decoders", decoders)
    if not 0 <= decoder_wgs <= (MAX_DECODER_WGS if block_m < 256 and not decoded_b else 0):
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: decoders must be 0..{MAX_DECODER_WGS} (0 at block_m 256 or with "
                         f"decoded_b), got {decoder_wgs}")
    num_mp = launch_sms(problem, block_m, block_n, num_mp)
    return GemmConfig(block_m=block_m, block_n=block_n, block_k=K_PER_STAGE, stages=stages, num_mp=num_mp,
                      group_n=forced.get("group_n", fp8_gemm.GROUP_N),
                      out_swizzle=fp8_gemm.out_swizzle(block_n, out_bytes), smem_bytes=smem, decoder_wgs=decoder_wgs,
                      decoded_a=decoded_a, decoded_b=decoded_b)
