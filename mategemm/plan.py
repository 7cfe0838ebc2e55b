"""The plan stage: a checked call -> the kernel that runs it and how its operands reach it.

Every decision of the call path is made here, from facts (shapes, dtypes, layouts, the device and
the knobs), never from tensors: the public functions call these functions after validate, and
`prewarm` calls the same ones for the shapes it is given, so a pre-warmed cache holds what the
calls ask for. Pure functions: nothing is compiled, loaded or launched.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from mategemm import env, heuristics
from mategemm.heuristics import forced_flag, fp8_gemm, grouped, nvfp4, parse_force_config, sm90
from mategemm.jit.cache import KernelSpec
from mategemm.kernels import sm90_fp8_gemm_blockscaled as kernel_fp8
from mategemm.kernels import sm90_fp8_gemv as kernel_gemv
from mategemm.kernels import sm90_fp8_moe_layer as kernel_moe
from mategemm.kernels import sm90_fp8_mqa_logits as kernel_mqa
from mategemm.kernels import sm90_nvfp4_dequant_a as kernel_nvfp4_dequant_a
from mategemm.kernels import sm90_nvfp4_dequant_b as kernel_nvfp4_dequant_b
from mategemm.kernels import sm90_nvfp4_grouped_gemm as kernel_nvfp4
from mategemm.kernels import sm90_nvfp4_stream_gemm as kernel_nvfp4_stream
from mategemm.runtime.device import DeviceInfo, get_num_mp
from mategemm.types import (RECIPE_1x128_1x128, RECIPE_1x128_128x128, RECIPE_PER_ROW, GemmConfig, GemmProblem,
                            Nvfp4Problem)

# How an FP8 operand reaches the kernel: read as it is given (K-major), read MN-major and
# transposed in shared memory by the kernel, or copied K-major into a workspace before each launch.
AS_IS, IN_KERNEL, COPY = "as_is", "in_kernel", "copy"


@dataclass(frozen=True)
class GemmPlan:
    problem: GemmProblem  # as the kernel runs it (mn_major set by staging, tma_scales by dense)
    config: GemmConfig
    spec: KernelSpec
    copy_a_scales: bool = False  # dense: A's scales copied MN-major, as TMA reads them, before each launch


@dataclass(frozen=True)
class Operand:
    """How one FP8 operand of a grouped or batched call is given."""

    copy: bool = False         # its K-major view cannot be read as it is: copied unless read MN-major
    mn_readable: bool = False  # an MN-major view of it is offered that TMA can read as it is
    mn_bytes: int = 0          # bytes of the MN-major view offered (0: none)


def mp_budget(device: DeviceInfo, num_mp: int | None = None) -> int:
    """SMs one launch may use: the call's own num_mp (at most the device's), else get_num_mp."""
    return min(num_mp, device.num_sms) if num_mp else get_num_mp(device)


def _force(force: str | None) -> str:
    return env.force_config() if force is None else force


def a_scales_tma_readable(strides: tuple[int, int], address: int, m: int) -> bool:
    """Whether TMA can read A's scales (strides in floats along M and along K blocks) as they are
    given: MN-major, each K block's row of m floats starting 16-byte aligned."""
    stride_m, stride_k = strides
    return stride_m == 1 and stride_k >= m and stride_k % 4 == 0 and address % 16 == 0


@dataclass(frozen=True)
class GemvPlan:
    problem: GemmProblem
    spec: KernelSpec
    warps_per_col: int  # warps splitting one column's K (kernel_gemv.warps_per_col)


# MATEGEMM_FORCE_CONFIG keys that name a GEMM tile: forced, the call keeps the GEMM
GEMM_TILE_KEYS = frozenset(("block_m", "block_n", "stages", "num_mp", "group_n", "cluster_m", "cluster_n",
                            "num_splits", "split_cluster", "overlap", "tma_scales", "b_evict_first", "scales_ahead"))


def dense_gemv(problem: GemmProblem, device: DeviceInfo, force: str | None = None) -> GemvPlan | None:
    """The GEMV for a dense problem of at most kernel_gemv.MAX_ROWS rows with a block-scaled recipe
    and a bf16 or fp16 output (validate has checked the 16-byte rows its vector loads need) where it
    pays (K of at least kernel_gemv.MIN_K, N of at most kernel_gemv.MAX_N), or None (the GEMM).
    MATEGEMM_FORCE_CONFIG gemv=1 takes it wherever it runs; gemv=0, or a forced GEMM tile key
    without gemv=1, keeps the GEMM. NOTES: at one row our GEMM's event times sit 5-8 us above the
    copy-bound time of B (H100, notebook 2026-12-07); the GEMV has no barrier ring, tensor map or
    tensor core."""
    forced = parse_force_config(_force(force))
    pays = problem.k >= kernel_gemv.MIN_K and problem.n <= kernel_gemv.MAX_N
    wanted = forced_flag(forced, "gemv", int(pays and not forced.keys() & GEMM_TILE_KEYS))
    runs = (problem.group_mode == "none" and 1 <= problem.m <= kernel_gemv.MAX_ROWS
            and problem.recipe in (RECIPE_1x128_128x128, RECIPE_1x128_1x128)
            and problem.out_dtype in (torch.bfloat16, torch.float16))
    if not (wanted and runs):
        return None
    heuristics.report(kernel_gemv.KERNEL, problem, None)
    return GemvPlan(problem, kernel_gemv.spec(problem, device.arch),
                    kernel_gemv.warps_per_col(problem.n, device.num_sms))


def dense(problem: GemmProblem, device: DeviceInfo, num_mp: int | None = None, force: str | None = None,
          a_scales_tma: bool = False) -> GemmPlan:
    """A dense GEMM (group_mode "none"). a_scales_tma: A's scales are given as TMA reads them
    (a_scales_tma_readable); with the (1,128,128) recipe and K <= 32768 the kernel then loads them
    with each stage. Other A scales are copied into such a layout before each launch where that
    pays (a_scales_copy_pays), else read by the scale warps. MATEGEMM_FORCE_CONFIG tma_scales=0
    forces the scale warps, tma_scales=2 the copy wherever the kernel can load scales by TMA.

    NOTES (H100, live DeepGEMM 2.6.1, MN-major scales for both, 2 rounds): scales by TMA against
    the scale warps: geomean 0.856 -> 0.904 of DeepGEMM over the dense suite, 4096x4096x7168 and
    4096x7168x16384 +10%, decode shapes unchanged. H200, same suite: MN-major +3..+16% at m=4096,
    +4..+20% at m=64..128."""
    force = _force(force)
    problem, copy_a_scales = scales_by_tma(problem, a_scales_tma, force)
    config = fp8_gemm.choose(problem, device, mp_budget(device, num_mp), force)
    heuristics.report(kernel_fp8.KERNEL, problem, config)
    return GemmPlan(problem, config, kernel_fp8.spec(problem, config, device.arch), copy_a_scales)


def scales_by_tma(problem: GemmProblem, a_scales_tma: bool, force: str,
                  work_rows: int | None = None) -> tuple[GemmProblem, bool]:
    """(problem with tma_scales set, whether A's scales are copied for TMA before each launch).
    Dense: by TMA where given readable, or where the copy pays; grouped M modes with stacked tokens:
    where the copy pays for their `work_rows` (the rows computed; default problem.m), read in place
    or copied; MATEGEMM_FORCE_CONFIG tma_scales=2 wherever allowed, tma_scales=0 never.

    NOTES (H200, tools/bench.py grouped, 2 rounds in turns, scale warps -> TMA): contiguous +4..+12%
    (geomean +10%); masked +2..+9% where the copy pays, -3..-12% on the rows where it does not
    (k 2048 with 1024 rows, 20 rows per expert).

    Ragged K ((1,1,128), K-major): a_scales_tma means both operands' scales are given as the
    kernel's bulk copies read them (ragged_k_scales_bulk_readable); they are then copied with each
    stage (never copied before the launch), else read by the scale warps.

    NOTES (H100, live DeepGEMM 2.6.1, 8 groups of 2048 K-rows, 7168x2048, ncu): with the scale
    warps the k-grouped kernel issued 917K global loads (DeepGEMM 10K), its warps stalled 3.1
    cycles per instruction on them (DeepGEMM 0.9) and the tensor pipe was active 41% (51%)."""
    forced = parse_force_config(force).get("tma_scales", 1)
    if forced not in (0, 1, 2):
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: tma_scales must be 0, 1 or 2, got {forced}")
    if problem.group_mode == "ragged_k":
        by_bulk = (forced != 0 and a_scales_tma and problem.recipe == RECIPE_1x128_1x128 and problem.mn_major == 0
                   and problem.a_dtype.itemsize == 1)
        return dataclasses.replace(problem, tma_scales=by_bulk), False
    pays = a_scales_copy_pays(problem.m if work_rows is None else work_rows, problem.n, problem.k)
    default = pays or (problem.group_mode == "none" and a_scales_tma)
    by_tma = tma_scales_allowed(problem) and (forced == 2 or (forced == 1 and default))
    return dataclasses.replace(problem, tma_scales=by_tma), by_tma and not a_scales_tma


def ragged_k_scales_bulk_readable(sfa_strides: tuple[int, int], sfa_address: int, m: int,
                                  sfb_strides: tuple[int, int], sfb_address: int, n: int) -> bool:
    """Whether ragged K's kernel can copy each K block's scales of a tile as they are given: A's
    and B's MN-major, each K block's row 16-byte aligned and of m and n floats, multiples of 4."""
    return (m % 4 == 0 and n % 4 == 0 and a_scales_tma_readable(sfa_strides, sfa_address, m)
            and a_scales_tma_readable(sfb_strides, sfb_address, n))


def a_scales_copy_pays(m: int, n: int, k: int) -> bool:
    """Whether copying A's scales MN-major before the launch (one small extra kernel) costs less
    than the scale warps' share of the GEMM: compute-bound problems of at least 1e11 FLOPs with at
    least 12 K blocks.

    NOTES (H200, dense suite, K-major A scales, copied vs scale warps, timed in turns): m=4096:
    +7.4% 4096x7168 (k 7168), +7.7% 7168x16384, +3% 7168x2048, +2% 24576x1536, +1% 2112x7168;
    -7% 32768x512 (4 K blocks), -8% 576x7168 (36 us: the copy's few us); m <= 128: -5..-20%."""
    return 2 * m * n * k >= 1e11 and k > 11 * 128


# Modes whose A rows (and scale rows) are one stack of tokens, as TMA reads them in one 2-D map
# (masked: the experts' max_m rows one after another).
TMA_SCALE_MODES = ("none", "per_token", "per_expert", "psum_expert", "masked")


def tma_scales_allowed(problem: GemmProblem) -> bool:
    """The problems whose A scales the kernel can load by TMA: dense or grouped with stacked tokens,
    (1,128,128), K-major operands, every tile's B scales within the kernel's per-tile buffer; not
    gathered rows (a TMA box of scales holds consecutive rows)."""
    return (problem.group_mode in TMA_SCALE_MODES and problem.recipe == RECIPE_1x128_128x128
            and problem.mn_major == 0 and problem.k_blocks <= sm90.MAX_TILE_K_BLOCKS and not problem.gather_a)


def rows_per_group(problem: GemmProblem, max_m: int = 0, expect_tokens: int | None = None) -> int:
    """The rows per group the tile choice is made for: the average of ragged M, the expected
    tokens of masked (default max_m), each group's K of ragged K, each entry's m of batched."""
    if problem.group_mode == "masked":
        return max_m if expect_tokens is None else expect_tokens
    if problem.group_mode == "ragged_k":
        return problem.k // problem.num_groups
    if problem.group_mode == "batched":
        return problem.m
    return -(-problem.m // problem.num_groups)


def grouped_gemm(problem: GemmProblem, device: DeviceInfo, *, num_mp: int | None = None, alignment_m: int = 0,
                 max_m: int = 0, expect_tokens: int | None = None, force: str | None = None,
                 a_scales_tma: bool = False) -> GemmPlan:
    """A grouped or batched GEMM. alignment_m: per_token's segment alignment (0 otherwise);
    max_m: masked's rows per group; expect_tokens: masked's hint of the rows per group;
    a_scales_tma: A's scales are given as TMA reads them (scales_by_tma)."""
    force = _force(force)
    group_rows = rows_per_group(problem, max_m, expect_tokens)
    work_rows = group_rows * problem.num_groups if problem.group_mode == "masked" else problem.m
    problem, copy_a_scales = scales_by_tma(problem, a_scales_tma, force, work_rows)
    config = grouped.choose(problem, group_rows, device, mp_budget(device, num_mp), force, alignment_m, max_m)
    heuristics.report(kernel_fp8.KERNEL, problem, config)
    return GemmPlan(problem, config, kernel_fp8.spec(problem, config, device.arch), copy_a_scales)


def fp8_out_stored(problem: GemmProblem) -> bool:
    """Whether the kernel stores an FP8 (e4m3) output itself (result / output_scale, rounded in its
    epilogue): rows of n bytes a TMA store can write (n % 16 == 0). Otherwise the product goes
    through an fp32 tensor, converted by torch after the launch."""
    return problem.out_dtype == torch.float8_e4m3fn and problem.n % 16 == 0


def batched_problem(problem: GemmProblem, add_c: bool) -> GemmProblem:
    """The kernel's problem of a batched call (bmm_fp8, bmm_fp16) as called: per-tensor and per-row
    scales run as per-row ones (a per-tensor A scale is a per-row one read through a zero stride);
    an fp32 output, an FP8 one the kernel does not store (fp8_out_stored), or a `c` to add, makes
    the kernel add its fp32 product into an fp32 tensor (then converted)."""
    accumulate = add_c or not (problem.out_dtype in (torch.bfloat16, torch.float16) or fp8_out_stored(problem))
    return dataclasses.replace(problem, recipe=RECIPE_PER_ROW if problem.recipe.gn == -1 else problem.recipe,
                               out_dtype=torch.float32 if accumulate else problem.out_dtype)


def staging(problem: GemmProblem, a: Operand, b: Operand, force: str | None = None) -> tuple[GemmProblem, str, str]:
    """(problem with mn_major set, how A reaches the kernel, how B does): an operand offered
    MN-major is transposed by the kernel where heuristics.grouped.transpose_in_kernel finds that
    cheaper than a copy (MATEGEMM_FORCE_CONFIG transpose=1 / 0 overrides) and TMA can read it."""
    if problem.group_mode in ("per_expert", "psum_expert"):
        # packed segments start at any row: a TMA box of an M-major A would start unaligned along M
        a = Operand(copy=a.copy)
    forced = parse_force_config(_force(force)).get("transpose")
    in_kernel = grouped.transpose_in_kernel(problem, a.mn_bytes + b.mn_bytes) if forced is None else forced == 1

    def how(operand: Operand) -> str:
        return IN_KERNEL if operand.mn_readable and in_kernel else COPY if operand.copy else AS_IS

    a_how, b_how = how(a), how(b)
    mn_major = int(a_how == IN_KERNEL) | int(b_how == IN_KERNEL) << 1
    return dataclasses.replace(problem, mn_major=mn_major), a_how, b_how


@dataclass(frozen=True)
class Nvfp4Plan:
    problem: Nvfp4Problem
    config: GemmConfig
    spec: KernelSpec

    @property
    def kernel(self):
        """The host module of the planned kernel (spec, load, Launch)."""
        return nvfp4_kernel(self.config)

    @property
    def specs(self) -> tuple[KernelSpec, ...]:
        """Every kernel a call launches: the weights and A's rows decoded to bf16 first where the config
        asks, then the GEMM."""
        decode_b = (kernel_nvfp4_dequant_b.spec(self.spec.arch),) if self.config.decoded_b else ()
        if not self.config.decoded_a:
            return (*decode_b, self.spec)
        decode = kernel_nvfp4_dequant_a.spec(self.problem.max_groups, self.spec.arch, self.config.nvfp4_stream)
        return (*decode_b, decode, self.spec)


def nvfp4_kernel(config: GemmConfig):
    """The NVFP4 kernel a config is for: the streaming one or the GEMM core's."""
    return kernel_nvfp4_stream if config.nvfp4_stream else kernel_nvfp4


def nvfp4_rows_per_group(problem: Nvfp4Problem) -> int:
    """The rows per group the NVFP4 tile choice is made for: the average over the active groups
    (all of them when their count is on the device)."""
    groups = problem.num_groups if problem.active is None else problem.active
    return -(-problem.m // max(1, groups))


def nvfp4_grouped(problem: Nvfp4Problem, device: DeviceInfo, num_mp: int | None = None,
                  force: str | None = None) -> Nvfp4Plan:
    """The NVFP4 grouped GEMM (token-packed groups, experts by id)."""
    config = nvfp4.choose(problem, nvfp4_rows_per_group(problem), device, mp_budget(device, num_mp), _force(force))
    kernel = nvfp4_kernel(config)
    heuristics.report(kernel.KERNEL, problem, config)
    return Nvfp4Plan(problem, config, kernel.spec(problem, config, device.arch))


@dataclass(frozen=True)
class MqaPlan:
    rows: int        # query rows per tile (next_n for the paged form)
    heads: int
    head_dim: int    # bytes of an FP8 query head or key: 32, 64 or 128 (paged: 128)
    paged: bool
    logits_dtype: torch.dtype  # float32 or bfloat16, written by the kernel
    stages: int
    threads: int
    smem_bytes: int
    spec: KernelSpec


def mqa_prefill_rows(heads: int) -> int:
    """Query rows per tile of the prefill form: 128 columns of heads, at most the kernel's 8 rows."""
    return min(kernel_mqa.MAX_TILE_ROWS, max(1, 128 // heads))


def mqa_logits(rows: int, heads: int, head_dim: int, paged: bool, logits_dtype: torch.dtype,
               device: DeviceInfo) -> MqaPlan:
    """The lightning indexer's kernel for `rows` query rows of `heads` heads of `head_dim` per tile,
    writing `logits_dtype` logits."""
    stages = kernel_mqa.stages_for(rows, heads, head_dim, device.smem_per_block)
    return MqaPlan(rows, heads, head_dim, paged, logits_dtype, stages,
                   (kernel_mqa.math_warpgroups(rows, heads) + 1) * 128,
                   kernel_mqa.smem_bytes(rows, heads, head_dim, stages),
                   kernel_mqa.spec(rows, heads, head_dim, stages, paged, logits_dtype, device.arch))


# NOTES (H200, Qwen3-30B-A3B, topk 8, profiler, permute kernels' time one pass / quantise + gather):
# 1024 tokens 25.1 / 9.9 + 5.6 us, 4096 92.9 / 34.7 + 16.1, 16384 394.6 / 55.0 + 168.1 (layer 2205
# -> 2034 us); fewer tokens not measured: there the second launch may cost more than it saves.
QUANTIZE_FIRST_MIN_TOKENS = 1024


def moe_quantize_first(input_fp8: bool, tokens: int, topk: int, force: str | None = None) -> bool:
    """Whether the fused MoE layer quantises a bf16 input once per token, then gathers each pair's
    FP8 row (the FP8-input permute), instead of quantising once per pair: the input is read once,
    not topk times. From QUANTIZE_FIRST_MIN_TOKENS tokens; MATEGEMM_FORCE_CONFIG quant_first=1 / 0
    forces it on / off."""
    forced = parse_force_config(_force(force)).get("quant_first")
    wanted = tokens >= QUANTIZE_FIRST_MIN_TOKENS if forced is None else forced == 1
    return not input_fp8 and topk > 1 and wanted


# NOTES (H100, layer profile, GPU time per call): Qwen3-30B-A3B 16384 tokens 1941 us (2031 without it,
# an earlier run the same day; the gated GEMM 990 us against GEMM1 ~814 + the activation kernel 263),
# but 1 token 34 -> 51 us, 64 tokens 235 -> 266 us (128-column tiles leave SMs idle), DeepSeek-V3 4096
# tokens 5507 -> 5861 us. Bit for bit equal to the two-kernel path. Off by default (None) until a rule
# covers where it pays.
GATED_GEMM_MIN_TOKENS: int | None = None


def moe_gated_gemm_wanted(tokens: int, force: str | None = None) -> bool:
    """Whether the fused MoE layer's first GEMM applies the gated activation and quantises in its
    epilogue (the gated GEMM) instead of storing bf16 rows for the activation kernel: from
    GATED_GEMM_MIN_TOKENS tokens (none yet); MATEGEMM_FORCE_CONFIG gated_gemm=1 / 0 forces it on / off."""
    forced = parse_force_config(_force(force)).get("gated_gemm")
    if forced is not None:
        return forced == 1
    return GATED_GEMM_MIN_TOKENS is not None and tokens >= GATED_GEMM_MIN_TOKENS


def moe_gather_a_wanted(input_fp8: bool, quantize_first: bool, weight_input: bool, force: str | None = None) -> bool:
    """Whether the fused MoE layer's first GEMM reads each pair's FP8 row where it lies (gathered A
    rows: the tokens quantised once, or an FP8 input) instead of from rows a permute kernel packed
    by expert: opt-in (MATEGEMM_FORCE_CONFIG gather_a=1); never where the permute has more to do
    than move rows (a bf16 input quantised pair by pair, router weights on the input). NOTES (H100,
    Qwen3-30B-A3B, 16384 tokens, bit for bit equal): GEMM1 with one-row TMA loads 6919 us, with
    cp.async from the producer's warp 1411 (from its four warps 1415), with packed rows 785 (+ 160
    for the permute)."""
    if parse_force_config(_force(force)).get("gather_a") != 1:
        return False
    return quantize_first or (input_fp8 and not weight_input)


def moe_gemm1(pairs: int, intermediate: int, hidden: int, experts: int, device: DeviceInfo, *,
              activation: str | None = None, gather_a: bool = False, a_scales_tma: bool = False,
              num_mp: int | None = None, force: str | None = None) -> GemmPlan:
    """A fused MoE layer's first GEMM: `pairs` rows of `hidden` FP8 values (per_expert counts, rows
    packed by expert or gathered) times each expert's (2 x intermediate, hidden) gate and up rows:
    bf16 gate and up rows, or with `activation` the gated GEMM (moe_gated_gemm)."""
    if activation is not None:
        return moe_gated_gemm(pairs, intermediate, hidden, experts, activation, device, a_scales_tma, num_mp, force,
                              gather_a)
    problem = GemmProblem(pairs, 2 * intermediate, hidden, RECIPE_1x128_128x128, torch.float8_e4m3fn,
                          torch.float8_e4m3fn, torch.bfloat16, "per_expert", experts, gather_a=gather_a)
    return grouped_gemm(problem, device, num_mp=num_mp, force=force, a_scales_tma=a_scales_tma)


def moe_gated_gemm(pairs: int, intermediate: int, hidden: int, experts: int, activation: str, device: DeviceInfo,
                   a_scales_tma: bool = False, num_mp: int | None = None, force: str | None = None,
                   gather_a: bool = False) -> GemmPlan:
    """The gated GEMM of a fused MoE layer: `pairs` packed (or gathered) rows of `hidden` FP8 values
    (per_expert counts) times each expert's (2 x intermediate, hidden) gate and up rows, (1,128,128)
    scales, writing act(gate, up) as FP8 rows of `intermediate` with a scale per 128 columns. A's
    scales by TMA as for the grouped GEMMs (scales_by_tma)."""
    force = _force(force)
    problem = GemmProblem(pairs, intermediate, hidden, RECIPE_1x128_128x128, torch.float8_e4m3fn,
                          torch.float8_e4m3fn, torch.float8_e4m3fn, "per_expert", experts, gather_a=gather_a)
    problem, copy_a_scales = scales_by_tma(problem, a_scales_tma, force)
    config = grouped.choose_gated(problem, rows_per_group(problem), device, mp_budget(device, num_mp), force)
    heuristics.report(kernel_fp8.KERNEL_GATED, problem, config)
    spec = kernel_fp8.gated_spec(problem, config, kernel_moe.ACTIVATION_KINDS[activation], device.arch)
    return GemmPlan(problem, config, spec, copy_a_scales)


def moe_layer_kernels(input_fp8: bool, activation: str, ids_64bit: bool, device: DeviceInfo) -> tuple[KernelSpec, ...]:
    """The fused MoE layer's own kernels (its GEMMs are planned as per_expert grouped GEMMs): the
    three of the routing (int32 or int64 ids; one CTA, or a count and a place per range of pairs),
    permute (quantising a bf16 input), gated activation + quantisation, unpermute."""
    return (*kernel_moe.route_specs(ids_64bit, device.arch), kernel_moe.permute_spec(input_fp8, device.arch),
            kernel_moe.gated_act_spec(activation, device.arch), kernel_moe.unpermute_spec(device.arch))
