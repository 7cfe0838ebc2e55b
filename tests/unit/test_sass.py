"""Every kernel the heuristics pick for the dense suite, at any SM budget, and for the grouped (MoE)
modes compiles for sm_90a into a Hopper kernel.

Hopper kernel = wgmma (QGMMA) fed by TMA (UTMALDG), and no local-memory traffic (LDL/STL: spills).
"""
import collections

import pytest
import torch

from mategemm import plan, prewarm, suites
from mategemm.heuristics import fp8_gemm, grouped
from mategemm.jit.cache import KernelCache
from mategemm.kernels import sm90_fp8_gemm_blockscaled as kernel_fp8
from mategemm.kernels import sm90_fp8_gemv as kernel_gemv
from mategemm.kernels import sm90_fp8_moe_layer, transpose_8bit
from mategemm.runtime import launch as rt_launch
from mategemm.runtime.device import SM90_NO_DEVICE
from mategemm.testing import sass
from mategemm.types import RECIPE_1x128_128x128, RECIPE_1x128_1x128, GemmProblem, Recipe

ARCH = "sm_90a"
DENSE = [(r["m"], r["n"], r["k"]) for r in suites.resolve("dense_fp8")[0].rows]


def plan_every_num_mp():
    """What the heuristics pick for the dense suite at any SM budget (set_num_mp 1 ... 132)."""
    planned = {}
    for num_mp in range(1, SM90_NO_DEVICE.num_sms + 1):
        for p in prewarm.plan_dense(DENSE, ARCH, num_mp=num_mp):
            planned.setdefault(p.spec, p)
    return list(planned.values())


PLANNED = plan_every_num_mp()
DTYPE_NAMES = {torch.float8_e4m3fn: "e4m3", torch.float8_e5m2: "e5m2", torch.bfloat16: "bf16",
               torch.float16: "fp16", torch.float32: "fp32"}


def kernel_id(problem: GemmProblem, config) -> str:
    dtypes = ".".join(DTYPE_NAMES[d] for d in (problem.a_dtype, problem.b_dtype, problem.out_dtype))
    group = "" if problem.group_mode == "none" else f"-{problem.group_mode}{problem.max_groups}"
    mn = f"-mn{problem.mn_major}" if problem.mn_major else ""
    tma = "-tma_scales" if problem.tma_scales else ""
    split = "" if config.num_splits == 1 else f"-split{config.num_splits}{'c' if config.split_in_cluster else ''}"
    return (f"{kernel_fp8.KERNEL}-{config.block_m}x{config.block_n}x{config.stages}-"
            f"c{config.cluster_m}x{config.cluster_n}{split}-gn{problem.recipe.gn}-{dtypes}{group}{mn}{tma}")


def params(items):
    return [pytest.param(problem, config, id=kernel_id(problem, config)) for problem, config in items]


def other_dtype_instances():
    """e5m2 operands and fp16 output on a large shape, both recipes."""
    items = []
    for a, b, out in ((torch.float8_e5m2, torch.float8_e4m3fn, torch.bfloat16),
                      (torch.float8_e4m3fn, torch.float8_e5m2, torch.float16),
                      (torch.float8_e5m2, torch.float8_e5m2, torch.float16)):
        for recipe in (RECIPE_1x128_128x128, RECIPE_1x128_1x128):
            problem = GemmProblem(4096, 4096, 7168, recipe, a, b, out)
            items.append((problem, fp8_gemm.choose(problem, SM90_NO_DEVICE, 132)))
    return items


def grouped_instances():
    """What the grouped heuristic picks at decode (8 rows per expert) and prefill (4096) sizes for
    every mode and recipe (ragged K: (1,1,128) only), DeepSeek-V3's 256 experts; and the batched
    mode (bmm_fp8) with both kinds of output."""
    items = {}
    e4m3, bf16 = torch.float8_e4m3fn, torch.bfloat16
    for mode in ("per_token", "per_expert", "psum_expert", "masked", "ragged_k"):
        for recipe in ((RECIPE_1x128_1x128,) if mode == "ragged_k" else (RECIPE_1x128_128x128, RECIPE_1x128_1x128)):
            for rows in (8, 4096):
                if mode == "ragged_k":
                    problem = GemmProblem(4096, 7168, 8 * rows, recipe, e4m3, e4m3, torch.float32, mode, 8)
                else:
                    problem = GemmProblem(256 * rows, 4096, 7168, recipe, e4m3, e4m3, bf16, mode, 256)
                config = grouped.choose(problem, rows, SM90_NO_DEVICE, 132, "", 128 if mode == "per_token" else 0,
                                        rows if mode == "masked" else 0)
                items[kernel_fp8.spec(problem, config, ARCH)] = (problem, config)
    # ragged K with the second scratch accumulator (MATEGEMM_FORCE_CONFIG overlap=1; off by default)
    problem = GemmProblem(4096, 7168, 8 * 2048, RECIPE_1x128_1x128, e4m3, e4m3, torch.float32, "ragged_k", 8)
    config = grouped.choose(problem, 2048, SM90_NO_DEVICE, 132, "overlap=1")
    items[kernel_fp8.spec(problem, config, ARCH)] = (problem, config)
    # A's scales by TMA (MATEGEMM_FORCE_CONFIG tma_scales=2) in the modes with stacked tokens
    for mode in ("per_token", "per_expert", "psum_expert", "masked"):
        for rows in (8, 4096):
            problem = GemmProblem(256 * rows, 4096, 7168, RECIPE_1x128_128x128, e4m3, e4m3, bf16, mode, 256)
            p = plan.grouped_gemm(problem, SM90_NO_DEVICE, alignment_m=128 if mode == "per_token" else 0,
                                  max_m=rows, force="tma_scales=2", a_scales_tma=True)
            items[p.spec] = (p.problem, p.config)
    # bmm_fp8: a batch of 16 (m, n, k) = (rows, 4096, 4096), stored bf16 or added in fp32; the
    # per-row recipe (scales applied at the end) too
    for recipe in (RECIPE_1x128_128x128, RECIPE_1x128_1x128, Recipe(1, -1, -1)):
        for out in (bf16, torch.float32):
            for rows in (64, 4096):
                problem = GemmProblem(rows, 4096, 4096, recipe, e4m3, e4m3, out, "batched", 16)
                config = grouped.choose(problem, rows, SM90_NO_DEVICE, 132)
                items[kernel_fp8.spec(problem, config, ARCH)] = (problem, config)
    # MN-major operands transposed in the kernel: bmm_fp8 (A, B or both), ragged K (both, its
    # default), the M modes with M-major tokens and N-major weights
    for mn_major in (1, 2, 3):
        for recipe in (RECIPE_1x128_128x128, RECIPE_1x128_1x128, Recipe(1, -1, -1)):
            for out in (bf16, torch.float32):
                for rows in (64, 4096):
                    problem = GemmProblem(rows, 4096, 4096, recipe, e4m3, e4m3, out, "batched", 16, mn_major)
                    config = grouped.choose(problem, rows, SM90_NO_DEVICE, 132)
                    items[kernel_fp8.spec(problem, config, ARCH)] = (problem, config)
        for rows in (8, 4096):
            problem = GemmProblem(4096, 7168, 8 * rows, RECIPE_1x128_1x128, e4m3, e4m3, torch.float32, "ragged_k", 8,
                                  mn_major)
            config = grouped.choose(problem, rows, SM90_NO_DEVICE, 132)
            items[kernel_fp8.spec(problem, config, ARCH)] = (problem, config)
            for mode in ("per_token", "per_expert"):
                # packed segments start unaligned: only their weights are read N-major
                mode_mn = mn_major if mode == "per_token" else mn_major & 2
                if not mode_mn:
                    continue
                problem = GemmProblem(256 * rows, 4096, 7168, RECIPE_1x128_128x128, e4m3, e4m3, bf16, mode, 256,
                                      mode_mn)
                config = grouped.choose(problem, rows, SM90_NO_DEVICE, 132, "", 128 if mode == "per_token" else 0)
                items[kernel_fp8.spec(problem, config, ARCH)] = (problem, config)
    # bmm_fp16: 16-bit operands, no scales
    for half in (torch.bfloat16, torch.float16):
        for out in (half, torch.float32):
            problem = GemmProblem(4096, 4096, 4096, Recipe(1, -1, -1), half, half, out, "batched", 16)
            items[kernel_fp8.spec(problem, grouped.choose(problem, 4096, SM90_NO_DEVICE, 132), ARCH)] = (
                problem, grouped.choose(problem, 4096, SM90_NO_DEVICE, 132))
    return list(items.values())


def forced_cluster_instances():
    """CTA pairs, which the heuristics no longer pick but MATEGEMM_FORCE_CONFIG still runs: dense
    with B shared (cluster_m 2) or A shared (cluster_n 2, BLOCK_M 128 and 256), both recipes
    ((1,128,128) also with A's scales by TMA); and the grouped per_token mode with A shared."""
    items = []
    e4m3, bf16 = torch.float8_e4m3fn, torch.bfloat16
    for recipe, tma_scales in ((RECIPE_1x128_128x128, False), (RECIPE_1x128_128x128, True), (RECIPE_1x128_1x128, False)):
        problem = GemmProblem(4096, 7168, 16384, recipe, e4m3, e4m3, bf16, tma_scales=tma_scales)
        for force in ("block_m=128,block_n=128,cluster_m=2", "block_m=128,block_n=128,cluster_n=2",
                      "block_m=256,block_n=128,cluster_n=2"):
            items.append((problem, fp8_gemm.choose(problem, SM90_NO_DEVICE, 132, force)))
        if tma_scales:
            continue
        problem = GemmProblem(256 * 4096, 4096, 7168, recipe, e4m3, e4m3, bf16, "per_token", 256)
        items.append((problem, grouped.choose(problem, 4096, SM90_NO_DEVICE, 132, "cluster_n=2", 128)))
    return items


def split_cluster_instances():
    """Split-K in clusters (MATEGEMM_FORCE_CONFIG split_cluster=1): pairs and fours of 64-row tiles,
    A's scales by TMA or by the scale warps, both recipes; two math warpgroups."""
    items = []
    e4m3, bf16 = torch.float8_e4m3fn, torch.bfloat16
    for recipe, tma in ((RECIPE_1x128_128x128, True), (RECIPE_1x128_128x128, False), (RECIPE_1x128_1x128, False)):
        problem = GemmProblem(64, 2112, 7168, recipe, e4m3, e4m3, bf16, tma_scales=tma)
        for force in ("block_n=32,num_splits=2", "block_n=64,num_splits=4", "block_m=128,block_n=128,num_splits=2"):
            items.append((problem, fp8_gemm.choose(problem, SM90_NO_DEVICE, 132, force + ",split_cluster=1")))
    return items


def fp8_out_instances():
    """FP8 (e4m3) outputs the kernel rounds itself: dense (both recipes, A's scales by TMA or by the
    scale warps, a decode shape with split-K) and batched (the three bmm_fp8 recipes)."""
    items = {}
    e4m3 = torch.float8_e4m3fn
    for m, n, k, tma in ((4096, 7168, 7168, True), (4096, 7168, 7168, False), (64, 2112, 7168, False),
                         (1, 4096, 7168, True)):
        for recipe in (RECIPE_1x128_128x128, RECIPE_1x128_1x128):
            p = plan.dense(GemmProblem(m, n, k, recipe, e4m3, e4m3, e4m3), SM90_NO_DEVICE, a_scales_tma=tma)
            items[p.spec] = (p.problem, p.config)
    for recipe in (RECIPE_1x128_128x128, RECIPE_1x128_1x128, Recipe(1, -1, -1)):
        for rows in (64, 4096):
            problem = plan.batched_problem(GemmProblem(rows, 4096, 4096, recipe, e4m3, e4m3, e4m3, "batched", 16),
                                           add_c=False)
            items[kernel_fp8.spec(problem, grouped.choose(problem, rows, SM90_NO_DEVICE, 132), ARCH)] = (
                problem, grouped.choose(problem, rows, SM90_NO_DEVICE, 132))
    return list(items.values())


def check_hopper_sass(cache: KernelCache, problem: GemmProblem, config) -> collections.Counter:
    compiled = cache.get(kernel_fp8.spec(problem, config, ARCH))
    text = sass.dump_sass(compiled.path / "kernel.cubin")
    ops = collections.Counter(sass.opcodes(text))
    mma = "HGMMA" if problem.a_dtype.itemsize == 2 else "QGMMA"
    assert ops[mma] > 0, f"no wgmma ({mma}) in the SASS"
    assert ops["UTMALDG"] > 0, "no TMA load (UTMALDG) in the SASS"
    assert ops["LDL"] == 0 and ops["STL"] == 0, f"local memory: {ops['LDL']} LDL, {ops['STL']} STL (spills)"
    assert ops["ACQBULK"] == 1, "no wait for the previous grid (griddepcontrol.wait) before the first memory access"
    # 16-bit outputs reach the staging tile by stmatrix, FP8 and fp32 ones by plain stores
    stmatrix = problem.out_dtype in (torch.bfloat16, torch.float16) and config.block_n % 16 == 0
    assert (ops["STSM"] > 0) == stmatrix, f"{ops['STSM']} STSM for {problem.out_dtype}, BLOCK_N {config.block_n}"
    return collections.Counter(line.split()[1] for line in text.splitlines() if " QGMMA." in line)


def test_launch_arguments_match_the_kernel_signature(sass_cache):
    """Launch.TYPES (what the host passes) has the kernel's parameter count and sizes."""
    import ctypes

    planned = PLANNED[0]
    compiled = sass_cache.get(planned.spec)
    size = {None: 128, ctypes.c_void_p: 8, ctypes.c_int: 4}  # TMAP = CUtensorMap by value
    assert sass.kernel_param_sizes(compiled.path / "kernel.cubin") == [size[t] for t in kernel_fp8.Launch.TYPES]


def test_plan_covers_both_recipes():
    assert {p.problem.recipe.gn for p in PLANNED} == {1, 128}
    assert {p.problem.tma_scales for p in PLANNED} == {False, True}  # A's scales by the scale warps or by TMA
    assert len({p.spec for p in PLANNED}) == len(PLANNED)


@pytest.mark.parametrize("problem,config", params((p.problem, p.config) for p in PLANNED))
def test_dense_kernel_is_hopper_sass(sass_cache, problem, config):
    check_hopper_sass(sass_cache, problem, config)


@pytest.mark.parametrize("problem,config", params(other_dtype_instances()))
def test_other_dtypes_are_hopper_sass(sass_cache, problem, config):
    qgmma = check_hopper_sass(sass_cache, problem, config)
    a, b = DTYPE_NAMES[problem.a_dtype].upper(), DTYPE_NAMES[problem.b_dtype].upper()
    assert any(name.endswith(f".{a}.{b}") for name in qgmma), qgmma


@pytest.mark.parametrize("problem,config", params(grouped_instances()))
def test_grouped_kernel_is_hopper_sass(sass_cache, problem, config):
    check_hopper_sass(sass_cache, problem, config)


@pytest.mark.parametrize("problem,config", params(fp8_out_instances()))
def test_fp8_out_kernel_is_hopper_sass(sass_cache, problem, config):
    """The epilogue converts pairs with one saturating e4m3 pack (F2FP ... E4M3) and stores them."""
    check_hopper_sass(sass_cache, problem, config)
    text = sass.dump_sass(sass_cache.get(kernel_fp8.spec(problem, config, ARCH)).path / "kernel.cubin")
    assert any("F2FP.SATFINITE.E4M3" in line for line in text.splitlines())


@pytest.mark.parametrize("problem,config", params(forced_cluster_instances()))
def test_forced_cluster_kernel_is_hopper_sass(sass_cache, problem, config):
    assert config.cluster_m * config.cluster_n == 2
    check_hopper_sass(sass_cache, problem, config)


@pytest.mark.parametrize("problem,config", params(split_cluster_instances()))
def test_split_cluster_kernel_is_hopper_sass(sass_cache, problem, config):
    """The partials go to rank 0 by st.async (STAS), 16 bytes a store; no workspace (global stores,
    the counter's atomic)."""
    assert config.split_in_cluster
    check_hopper_sass(sass_cache, problem, config)
    ops = collections.Counter(sass.opcodes(sass.dump_sass(
        sass_cache.get(kernel_fp8.spec(problem, config, ARCH)).path / "kernel.cubin")))
    assert ops["STAS"] == config.block_n // 8 and ops["ATOMG"] == 0 and ops["STG"] == 0, ops


@pytest.mark.parametrize("vector_loads", (True, False))
def test_transpose_kernel_sass(sass_cache, vector_loads):
    """The K-major copy of MN-major FP8 operands: 16-byte global stores, no spills."""
    compiled = sass_cache.get(transpose_8bit.spec(vector_loads, ARCH))
    text = sass.dump_sass(compiled.path / "kernel.cubin")
    ops = collections.Counter(sass.opcodes(text))
    assert "STG.E.128 " in text and ops["LDL"] == 0 and ops["STL"] == 0, ops
    assert ("LDG.E.128" in text) == vector_loads


MOE_LAYER_SPECS = {**{f"route{part} {ids}": spec for ids, wide in (("int32", False), ("int64", True))
                      for part, spec in zip(("", " count", " place"), sm90_fp8_moe_layer.route_specs(wide, ARCH))},
                   "permute bf16": sm90_fp8_moe_layer.permute_spec(False, ARCH),
                   "permute fp8": sm90_fp8_moe_layer.permute_spec(True, ARCH),
                   **{f"gated_act {a}": sm90_fp8_moe_layer.gated_act_spec(a, ARCH) for a in ("silu", "swiglustep")},
                   "unpermute": sm90_fp8_moe_layer.unpermute_spec(ARCH)}


def test_mxfp8_scales_kernel_sass(sass_cache):
    from mategemm.kernels import sm90_mxfp8_scales

    ops = collections.Counter(sass.opcodes(sass.dump_sass(sass_cache.get(sm90_mxfp8_scales.spec(ARCH)).path /
                                                          "kernel.cubin")))
    assert ops["LDL"] == 0 and ops["STL"] == 0 and ops["STG"] >= 2, ops


@pytest.mark.parametrize("name", MOE_LAYER_SPECS)
def test_moe_layer_kernels_sass(sass_cache, name):
    """The fused MoE layer's own kernels: no spills; the quantising ones convert to e4m3 in pairs
    (F2FP) and reduce the amax by shuffles; the unpermute stores 16 bytes of bf16 at a time."""
    text = sass.dump_sass(sass_cache.get(MOE_LAYER_SPECS[name]).path / "kernel.cubin")
    ops = collections.Counter(sass.opcodes(text))
    assert ops["LDL"] == 0 and ops["STL"] == 0, ops
    if name in ("permute bf16", "gated_act silu", "gated_act swiglustep"):
        assert ops["F2FP"] >= 2 and ops["SHFL"] >= 5, ops
    if name == "unpermute":
        assert "STG.E.128 " in text, ops
    if name.startswith("route") and "place" not in name:  # shared-memory counts
        assert ops["ATOMS"] >= 1, ops
    if name.startswith("route") and "count" not in name:  # the stable rank of equal keys in a warp, the key scan
        assert ops["MATCH"] >= 1 and ops["SHFL"] >= 5, ops


def test_grouped_instances_cover_every_mode():
    assert {p.group_mode for p, _ in grouped_instances()} == {"per_token", "per_expert", "psum_expert", "masked",
                                                              "ragged_k", "batched"}


def test_opcode_tokens_are_whole_words():
    text = ("        /*0890*/                   STL.64 [R1+0x60], R4 ;  /* 0x0000600401007387 */\n"
            "        /*08a0*/              @!P0 LDL R2, [R1] ;  /* 0x0 */\n"
            "        /*08b0*/                   STS.U8 [R3], R2 ;  /* LDL STL in a comment */\n"
            "        /*08c0*/               @P1 BRA 0x4c0 ;\n"
            "\t.headerflags\t@\"EF_CUDA_SM90 STL\"\n")
    assert sass.opcodes(text) == ["STL", "LDL", "STS", "BRA"]


# ptxas's performance diagnostics that must never appear: wgmma serialised (C7514), a wait
# injected before promotion (C7517), setmaxnreg ignored (C7508).
PTXAS_FORBIDDEN = ("C7514", "C7517", "C7508")


@pytest.mark.parametrize("block_m,block_n,stages,gran_n,cluster,tma_scales", [
    (128, 128, 5, 128, "", False),  # two math warpgroups, promotion overlapped with the next wgmma
    (128, 128, 5, 128, ",overlap=0", False),  # the same without the second scratch accumulator
    (64, 64, 8, 128, "", False),    # one math warpgroup, overlapped
    (128, 144, 5, 128, "", False),  # straddles two B scale blocks, not overlapped
    (128, 112, 6, 1, "", False),    # per-column B scales
    (128, 128, 5, 128, ",cluster_m=2", False),  # B multicast across a 2-CTA cluster
    (256, 128, 3, 128, ",cluster_n=2", False),  # two 64-row waves per warpgroup, A multicast
    (256, 96, 3, 1, "", False),
    (64, 32, 8, 128, ",num_splits=4", False),   # split-K: partial tiles through the workspace
    # A's scales by TMA, the tile's B scales staged by the math warps
    (128, 128, 5, 128, "", True), (64, 64, 8, 128, "", True), (128, 144, 5, 128, "", True),
    (256, 128, 3, 128, ",cluster_n=2", True), (64, 32, 8, 128, ",num_splits=4", True),
    (64, 64, 8, 128, ",num_splits=4,split_cluster=1", True),  # split-K reduced in the cluster
    (64, 32, 16, 128, ",num_splits=2,split_cluster=1", True),  # a forced 16-stage ring
    (64, 64, 8, 128, ",b_evict_first=1", True),  # B loaded with the evict-first L2 policy
    (64, 128, 8, 128, ",scales_ahead=1", True),  # a one-wave tile staging the next item's B scales
    (128, 96, 6, 128, ",scales_ahead=1", True),
])
def test_ptxas_keeps_wgmma_pipelined(block_m, block_n, stages, gran_n, cluster, tma_scales):
    from mategemm.jit import nvrtc

    problem = GemmProblem(4096, 4096, 7168, RECIPE_1x128_128x128 if gran_n == 128 else RECIPE_1x128_1x128,
                          torch.float8_e4m3fn, torch.float8_e4m3fn, torch.bfloat16, tma_scales=tma_scales)
    config = fp8_gemm.choose(problem, SM90_NO_DEVICE, 132,
                             f"block_m={block_m},block_n={block_n},stages={stages}{cluster}")
    spec = kernel_fp8.spec(problem, config, ARCH)
    _, _, log = nvrtc.compile_cubin(spec.source, spec.name_expr, nvrtc.base_options(ARCH, debug=True))
    assert "ptxas info" in log, "no ptxas report in the log"
    assert not [code for code in PTXAS_FORBIDDEN if code in log], log


@pytest.mark.parametrize("mode,tma_scales", [("none", True), ("per_token", False), ("per_token", True),
                                             ("per_expert", True), ("psum_expert", False), ("masked", False),
                                             ("masked", True), ("ragged_k", False), ("ragged_k", True)])
def test_main_loop_on_the_uniform_datapath(sass_cache, mode, tma_scales):
    """The planned 256x128 kernels (ragged K: 128x128, per-column B scales) keep the wgmma descriptors
    in uniform registers: no R2UR from the first wgmma to the last. A tile walk the compiler cannot
    prove warp-uniform moves them to vector registers, with a move before every wgmma. One move is
    allowed: ptxas may pass the barrier phase of an unrolled ring turn through a vector register."""
    recipe = RECIPE_1x128_1x128 if mode == "ragged_k" else RECIPE_1x128_128x128
    out = torch.float32 if mode == "ragged_k" else torch.bfloat16
    m, k = (4096, 4 * 8192) if mode == "ragged_k" else (32768, 7168)
    problem = GemmProblem(m, 4096, k, recipe, torch.float8_e4m3fn, torch.float8_e4m3fn, out, mode,
                          1 if mode == "none" else 4)
    force = "tma_scales=2" if tma_scales else "tma_scales=0"
    if mode == "none":
        gemm_plan = plan.dense(problem, SM90_NO_DEVICE, force=force, a_scales_tma=True)
    else:
        gemm_plan = plan.grouped_gemm(problem, SM90_NO_DEVICE, alignment_m=128 if mode == "per_token" else 0,
                                      max_m=m // 4, force=force, a_scales_tma=mode == "ragged_k" and tma_scales)
    config = gemm_plan.config
    assert (config.block_m, config.block_n) == ((128, 128) if mode == "ragged_k" else (256, 128))
    assert gemm_plan.problem.tma_scales == tma_scales
    text = sass.dump_sass(sass_cache.get(gemm_plan.spec).path / "kernel.cubin")
    moves = sass.main_loop_r2ur(text)
    assert len(moves) <= 1, f"{len(moves)} R2UR between the first and the last wgmma"
    # ragged K's scales by bulk copies (one for sa, one for sb), none by the scale warps' loads
    assert text.count("UBLKCP") == (2 if mode == "ragged_k" and tma_scales else 0)


@pytest.mark.parametrize("m,n,k", ((128, 2112, 7168), (64, 24576, 1536), (4096, 7168, 7168)))
def test_producer_issues_tma_without_election_loops(sass_cache, m, n, k):
    """The GEMM core's producer runs under elect.sync: its TMA loads issue back to back. Under
    threadIdx.x == 0 ptxas wrapped each in an ELECT / BRA.U.ANY loop (128x2112x7168 5% slower on
    the H100)."""
    problem = GemmProblem(m, n, k, RECIPE_1x128_128x128, torch.float8_e4m3fn, torch.float8_e4m3fn, torch.bfloat16)
    gemm_plan = plan.dense(problem, SM90_NO_DEVICE, a_scales_tma=True)
    text = sass.dump_sass(sass_cache.get(gemm_plan.spec).path / "kernel.cubin")
    assert sass.opcodes(text).count("UTMALDG") >= 3
    assert sass.elected_tma_loads(text) == 0


def test_elected_tma_loads_are_found():
    text = ("        /*0100*/               @P0 ELECT P1, URZ, PT ;\n"
            "        /*0110*/                   UTMALDG.2D [UR20], [UR18] ;\n"
            "        /*0120*/               @P0 BRA.U.ANY 0x100 ;\n"
            "        /*0130*/                   UTMALDG.2D [UR8], [UR32] ;\n")
    assert sass.elected_tma_loads(text) == 1


@pytest.mark.parametrize("m", (1, 2))
@pytest.mark.parametrize("a_dtype,out_dtype", [(torch.float8_e4m3fn, torch.bfloat16), (torch.float8_e5m2, torch.float16)])
def test_gemv_streams_b_without_spills(sass_cache, m, a_dtype, out_dtype):
    """The GEMV of 1-2 rows (plan.dense_gemv): 16-byte loads of B and A, every FP8 pair converted by
    one F2FP, no local memory, the grid-dependency wait (MATEGEMM_PDL) once."""
    problem = GemmProblem(m, 2112, 7168, RECIPE_1x128_128x128, a_dtype, torch.float8_e4m3fn, out_dtype)
    gemv = plan.dense_gemv(problem, SM90_NO_DEVICE, "")
    assert gemv.spec == kernel_gemv.spec(problem, ARCH)
    cubin = sass_cache.get(gemv.spec).path / "kernel.cubin"
    ops = collections.Counter(sass.opcodes(sass.dump_sass(cubin)))
    assert ops["LDL"] == ops["STL"] == 0
    assert ops["LDG"] >= 4 * (1 + m)  # the unrolled steps' B and A loads (and the scales)
    assert ops["F2FP"] >= 4 * 8 * (1 + m)  # 8 pairs of B and of each A row per 16 bytes, 4 steps
    assert ops["ACQBULK"] == 1
    sizes = {rt_launch.PTR: 8, rt_launch.I64: 8, rt_launch.INT: 4}
    assert sass.kernel_param_sizes(cubin) == [sizes[t] for t in kernel_gemv.TYPES]
