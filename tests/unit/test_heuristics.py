"""heuristics/fp8_gemm invariants over the dense suite; MATEGEMM_FORCE_CONFIG and env knobs."""
import logging
import math
from pathlib import Path

import pytest
import torch

from mategemm import env, prewarm, suites
from mategemm.heuristics import fp8_gemm, grouped, parse_force_config, sm90
from mategemm.runtime import device as rt_device
from mategemm.types import RECIPE_1x128_1x128, RECIPE_1x128_128x128, GemmProblem
from lab_tools import load_tool

H100 = rt_device.SM90_NO_DEVICE
SMEM_LIMIT = 232448
DENSE = [(r["m"], r["n"], r["k"]) for r in suites.resolve("dense_fp8")[0].rows]
NUM_MPS = (132, 66, 8, 1)


def problem(m, n, k, recipe=RECIPE_1x128_128x128):
    return GemmProblem(m, n, k, recipe, torch.float8_e4m3fn, torch.float8_e4m3fn, torch.bfloat16)


def test_dense_suite_has_28_shapes():
    assert len(DENSE) == 28


@pytest.mark.parametrize("recipe", prewarm.RECIPES, ids=lambda r: f"gn{r.gn}")
@pytest.mark.parametrize("num_mp", NUM_MPS, ids=lambda n: f"mp{n}")
def test_dense_configs_are_legal(recipe, num_mp):
    for m, n, k in DENSE:
        p = problem(m, n, k, recipe)
        c = fp8_gemm.choose(p, H100, num_mp)
        where = f"{p} -> {c}"
        num_tiles = math.ceil(m / c.block_m) * math.ceil(n / c.block_n)
        assert num_tiles >= 1, where
        assert 1 <= c.num_mp <= min(num_mp, num_tiles * c.num_splits), where
        assert c.num_mp % c.cluster == 0, where
        assert c.num_splits in fp8_gemm.split_counts(k // 128), where
        assert c.num_splits == 1 or (m <= 128 and c.cluster_m * c.cluster_n == 1), where
        assert c.block_m in fp8_gemm.BLOCK_MS, where
        assert fp8_gemm.block_n_allowed(c.block_n, recipe.gn), where
        assert c.block_k == sm90.BLOCK_K_FP8 == 128, where
        assert sm90.MIN_STAGES <= c.stages <= fp8_gemm.ring_stages(p, c.block_m, c.num_splits), where
        tiles_bytes = c.block_m * c.block_n * 2 + c.stages * (c.block_m + c.block_n) * c.block_k
        assert tiles_bytes < c.smem_bytes <= SMEM_LIMIT, where
        assert (c.block_n * 2) % c.out_swizzle == 0 and c.out_swizzle in (32, 64, 128), where
        assert c.num_threads <= sm90.MAX_THREADS_PER_BLOCK, where
        assert c.group_n >= 1, where


def test_block_n_allowed_rules():
    assert [bn for bn in range(0, 300) if fp8_gemm.block_n_allowed(bn, 1)] == list(range(16, 193, 16))
    allowed_128 = [bn for bn in range(0, 300) if fp8_gemm.block_n_allowed(bn, 128)]
    assert 144 in allowed_128 and 160 in allowed_128 and 192 in allowed_128
    assert 176 not in allowed_128 and 8 not in allowed_128 and 256 not in allowed_128


# ---- MATEGEMM_FORCE_CONFIG ----------------------------------------------------------------------
@pytest.mark.parametrize("raw,expected", [
    ("", {}),
    ("block_m=128", {"block_m": 128}),
    (" block_m = 64 , block_n=96,stages=4, num_mp=66,group_n=8,", {"block_m": 64, "block_n": 96, "stages": 4,
                                                                   "num_mp": 66, "group_n": 8}),
])
def test_parse_force_config(raw, expected):
    assert parse_force_config(raw) == expected


@pytest.mark.parametrize("raw,named", [
    ("block_m=abc", "block_m"),
    ("stages=4.5", "stages"),
    ("block_q=128", "block_q"),
    ("block_m", "block_m"),
    ("num_mp:8", "num_mp:8"),
])
def test_parse_force_config_rejects(raw, named):
    with pytest.raises(ValueError, match="MATEGEMM_FORCE_CONFIG") as info:
        parse_force_config(raw)
    assert named in str(info.value)


def test_forced_values_are_used():
    c = fp8_gemm.choose(problem(4096, 7168, 7168), H100, 132, "block_m=64,block_n=96,stages=4,num_mp=66,group_n=8")
    assert (c.block_m, c.block_n, c.stages, c.num_mp, c.group_n) == (64, 96, 4, 66, 8)


def test_b_evict_first_is_a_template_argument():
    """b_evict_first=1: the promoting kernel's instance loads B evict-first (the overlap argument
    spelled out before it); b_evict_first=0 keeps the default instance's name."""
    from mategemm.kernels import sm90_fp8_gemm_blockscaled as kernel_fp8

    dense = problem(64, 24576, 1536)
    off, on = (fp8_gemm.choose(dense, H100, 132, f"b_evict_first={v}") for v in (0, 1))
    both = fp8_gemm.choose(dense, H100, 132, "b_evict_first=1,overlap=0")
    assert not off.b_evict_first and on.b_evict_first and (on.block_m, on.block_n) == (off.block_m, off.block_n)
    name = kernel_fp8.spec(dense, off, "sm_90a").name_expr
    assert kernel_fp8.spec(dense, on, "sm_90a").name_expr == name[:-1] + ", true, true>"
    assert kernel_fp8.spec(dense, both, "sm_90a").name_expr == name[:-1] + ", false, true>"
    with pytest.raises(ValueError, match="b_evict_first must be 0 or 1"):
        fp8_gemm.choose(dense, H100, 132, "b_evict_first=2")


@pytest.mark.parametrize("m,n,k,evict", [
    (1, 24576, 1536, True), (64, 32768, 512, True),
    (64, 2112, 7168, True),     # split 2 in a cluster: each CTA reads its own K slice of B once
    (64, 576, 7168, False),     # split 4 through the workspace
    (128, 2112, 7168, False),   # two 64-row M-blocks read each B tile
    (128, 7168, 16384, False),  # 128-row tiles
    (4096, 7168, 2048, False)])
def test_b_evict_first_where_b_is_read_once(m, n, k, evict):
    config = fp8_gemm.choose(problem(m, n, k), H100, 132)
    assert config.b_evict_first == evict, config
    assert config.b_evict_first == (config.block_m == 64 >= m and (config.num_splits == 1 or config.split_in_cluster))


def test_scales_ahead_is_a_template_argument():
    """scales_ahead=1: the instance's last template argument, after overlap and b_evict_first."""
    from mategemm.kernels import sm90_fp8_gemm_blockscaled as kernel_fp8

    for (m, n, k), tail in (((64, 32768, 512), ", true>"), ((128, 32768, 512), ", true, false, true>")):
        dense = problem(m, n, k)
        off, on = (fp8_gemm.choose(dense, H100, 132, f"scales_ahead={v}") for v in (0, 1))
        assert not off.scales_ahead and on.scales_ahead and off.b_evict_first == (m == 64)
        name_off, name_on = (kernel_fp8.spec(dense, c, "sm_90a").name_expr for c in (off, on))
        assert name_on == name_off[:-1] + tail


def test_scales_ahead_on_one_wave_dense_tiles():
    """By default one-wave tiles stage the next item's B scales only for dense (1,128,128) GEMMs
    with scales by TMA, except 128x192 tiles (4096x2112x7168); two-wave tiles (256 rows) need no flag."""
    from dataclasses import replace

    chosen = []
    for m, n, k in ((64, 32768, 512), (128, 24576, 1536), (256, 2112, 7168), (4096, 2112, 7168), (4096, 7168, 16384)):
        for tma in (False, True):
            config = fp8_gemm.choose(replace(problem(m, n, k), tma_scales=tma), H100, 132)
            expected = tma and config.block_m <= 128 and config.block_n != 192
            assert config.scales_ahead == expected, (m, n, k, tma, config)
            chosen.append(config.scales_ahead)
    assert any(chosen) and not all(chosen)
    wide = fp8_gemm.choose(replace(problem(4096, 2112, 7168), tma_scales=True), H100, 132)
    assert (wide.block_m, wide.block_n, wide.scales_ahead) == (128, 192, False)
    per_column = replace(problem(128, 24576, 1536, RECIPE_1x128_1x128), tma_scales=True)
    assert not fp8_gemm.choose(per_column, H100, 132).scales_ahead
    grouped_rows = replace(problem(8 * 128, 4096, 7168), group_mode="psum_expert", num_groups=8, tma_scales=True)
    assert not fp8_gemm.choose(grouped_rows, H100, 132).scales_ahead


def test_overlap_is_forced_off_in_the_instance():
    """overlap=0: the promoting kernel's instance without the second scratch accumulator (one more
    template argument, false); by default the argument is left out (true), except in ragged K,
    where the scratch accumulator is off unless overlap=1."""
    from mategemm.kernels import sm90_fp8_gemm_blockscaled as kernel_fp8
    from mategemm.types import RECIPE_1x128_1x128

    dense = problem(128, 4096, 7168)
    ragged = GemmProblem(4096, 2048, 8 * 2048, RECIPE_1x128_1x128, torch.float8_e4m3fn, torch.float8_e4m3fn,
                         torch.float32, "ragged_k", 8)
    assert not grouped.choose(ragged, 2048, H100, 132).overlap
    for config_of, p in ((lambda f: fp8_gemm.choose(dense, H100, 132, f), dense),
                         (lambda f: grouped.choose(ragged, 2048, H100, 132, f), ragged)):
        on, off = config_of("overlap=1"), config_of("overlap=0")
        assert on == config_of("") or p is ragged
        assert on.overlap and not off.overlap and (on.block_m, on.block_n) == (off.block_m, off.block_n)
        name_on, name_off = (kernel_fp8.spec(p, c, "sm_90a").name_expr for c in (on, off))
        assert name_off == name_on[:-1] + ", false>"
        with pytest.raises(ValueError, match="overlap must be 0 or 1"):
            config_of("overlap=2")


@pytest.mark.parametrize("raw,named", [
    ("block_m=96", "block_m"),
    ("block_n=176", "block_n"),
    ("block_n=100", "block_n"),
    ("stages=1", "stages"),
    ("stages=9", "stages"),
    ("block_m=128,block_n=160,stages=8", "stages"),
    ("group_n=-1", "group_n"),
    ("group_n=0", "group_n"),
    ("stages=0", "stages"),
])
def test_choose_rejects_bad_forced_values(raw, named):
    with pytest.raises(ValueError, match="MATEGEMM_FORCE_CONFIG") as info:
        fp8_gemm.choose(problem(4096, 7168, 7168), H100, 132, raw)
    assert named in str(info.value)


# ---- env knobs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", ("abc", "1.5", "-1"))
def test_num_mp_env_rejects(monkeypatch, raw):
    monkeypatch.setenv("MATEGEMM_NUM_MP", raw)
    with pytest.raises(ValueError, match="MATEGEMM_NUM_MP"):
        env.num_mp()


def test_num_mp_env_and_override(monkeypatch):
    monkeypatch.delenv("MATEGEMM_NUM_MP", raising=False)
    assert env.num_mp() == 0 and rt_device.get_num_mp(H100) == 132
    monkeypatch.setenv("MATEGEMM_NUM_MP", "8")
    assert rt_device.get_num_mp(H100) == 8
    monkeypatch.setenv("MATEGEMM_NUM_MP", "1000")
    assert rt_device.get_num_mp(H100) == 132  # never above the device
    try:
        rt_device.set_num_mp(66)
        assert rt_device.get_num_mp(H100) == 66  # set_num_mp wins over the env
    finally:
        rt_device.set_num_mp(None)
    with pytest.raises(ValueError, match="num_mp"):
        rt_device.set_num_mp(0)
    with pytest.raises(TypeError, match="num_mp"):
        rt_device.set_num_mp(8.0)


@pytest.mark.parametrize("raw,expected", [("1", True), ("true", True), ("ON", True), ("0", False), ("", False)])
def test_flag_knobs(monkeypatch, raw, expected):
    monkeypatch.setenv("MATEGEMM_PRINT_CONFIGS", raw)
    monkeypatch.setenv("MATEGEMM_JIT_DEBUG", raw)
    assert env.print_configs() is expected and env.jit_debug() is expected


def test_every_knob_is_in_snapshot_and_readme():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert set(env.snapshot()) == {knob.name for knob in env.KNOBS}
    for knob in env.KNOBS:
        assert knob.name.startswith("MATEGEMM_") and f"`{knob.name}`" in readme, knob.name


def test_info_for_unknown_arch():
    with pytest.raises(ValueError, match="arch"):
        rt_device.info_for_arch("sm_80")
    assert rt_device.info_for_arch("sm_90a").num_sms == 132


@pytest.mark.parametrize("block_m,block_n,stages,gran_n,out_bytes,group_mode,max_groups,mn_major,gran_k,tma", [
    (128, 128, 5, 128, 2, "none", 0, 0, 128, False), (64, 16, 8, 128, 2, "none", 0, 0, 128, False),
    (128, 144, 5, 128, 2, "none", 0, 0, 128, False), (128, 112, 6, 1, 2, "none", 0, 0, 128, False),
    (64, 160, 4, 1, 2, "none", 0, 0, 128, False), (256, 128, 3, 128, 2, "none", 0, 0, 128, False),
    (128, 128, 5, 128, 2, "per_token", 0, 0, 128, False), (64, 96, 6, 128, 2, "per_expert", 256, 0, 128, False),
    (256, 128, 3, 1, 2, "masked", 32, 0, 128, False), (128, 128, 4, 1, 4, "ragged_k", 64, 0, 128, False),
    (128, 128, 6, 0, 2, "batched", 0, 0, 128, False), (64, 96, 8, 0, 4, "batched", 0, 0, 128, False),
    (128, 64, 3, 1, 4, "ragged_k", 32, 3, 128, False), (64, 128, 4, 128, 2, "batched", 0, 1, 128, False),
    (128, 128, 4, 0, 2, "batched", 0, 2, 128, False), (64, 160, 6, 1, 2, "psum_expert", 256, 0, 32, False),
    (128, 128, 5, 128, 2, "none", 0, 0, 128, True), (128, 144, 5, 128, 2, "none", 0, 0, 128, True),
    (256, 128, 3, 128, 2, "none", 0, 0, 128, True), (64, 16, 8, 128, 2, "none", 0, 0, 128, True),
    (64, 128, 6, 128, 2, "per_expert", 256, 0, 128, True), (128, 144, 5, 128, 2, "psum_expert", 32, 0, 128, True),
    (256, 128, 3, 128, 2, "masked", 32, 0, 128, True), (128, 128, 5, 128, 2, "per_token", 0, 0, 128, True)])
def test_smem_bytes_match_the_kernel_layout(block_m, block_n, stages, gran_n, out_bytes, group_mode, max_groups,
                                            mn_major, gran_k, tma):
    """The launch's dynamic shared memory equals GemmSmemLayout::kTotalBytes (checked by NVRTC)."""
    from mategemm.kernels.sm90_fp8_gemm_blockscaled import GROUP_MODES

    rows_checked = group_mode in grouped.ROWS_CHECKED_MODES
    expected = fp8_gemm.smem_bytes(block_m, block_n, stages, gran_n, out_bytes, rows_checked, max_groups, mn_major,
                                   scale_gran_k=gran_k, tma_scales=tma)
    check_smem_layout(f"{block_m}, {block_n}, {stages}, {gran_n}, {out_bytes}, mategemm::{GROUP_MODES[group_mode]}, "
                      f"{max_groups}, {mn_major}, false, {gran_k}, {str(tma).lower()}", expected)


@pytest.mark.parametrize("block_m,block_n,stages,tma,split_cluster", [(64, 32, 8, True, 2), (64, 64, 8, True, 4),
                                                                      (128, 128, 3, False, 2), (64, 16, 8, False, 8)])
def test_split_cluster_smem_bytes_match_the_kernel_layout(block_m, block_n, stages, tma, split_cluster):
    """Split-K in a cluster: rank 0's slots for the other ranks' partial tiles."""
    expected = fp8_gemm.smem_bytes(block_m, block_n, stages, 128, tma_scales=tma, split_cluster=split_cluster)
    assert expected == (fp8_gemm.smem_bytes(block_m, block_n, stages, 128, tma_scales=tma)
                        + (split_cluster - 1) * block_m * block_n * 4)
    check_smem_layout(f"{block_m}, {block_n}, {stages}, 128, 2, mategemm::kGroupNone, 0, 0, false, 128, "
                      f"{str(tma).lower()}, 1, false, false, {split_cluster}", expected)


@pytest.mark.parametrize("block_m,stages,tma", [(64, 5, False), (128, 4, False), (128, 4, True), (64, 6, True)])
def test_gated_smem_bytes_match_the_kernel_layout(block_m, stages, tma):
    """The gated GEMM's B tile of gate and up rows (two halves), as its launch sizes it."""
    expected = fp8_gemm.smem_bytes(block_m, 128, stages, 128, 1, True, 128, tma_scales=tma, b_halves=2)
    check_smem_layout(f"{block_m}, 128, {stages}, 128, 1, mategemm::kGroupCounts, 128, 0, false, 128, "
                      f"{str(tma).lower()}, 2", expected)


def check_smem_layout(template_args: str, expected: int) -> None:
    """GemmSmemLayout<template_args>::kTotalBytes == expected, checked by NVRTC."""
    from mategemm.jit import nvrtc

    source = ('#include "gemm/traits.cuh"\n'
              f"static_assert(mategemm::GemmSmemLayout<{template_args}>::kTotalBytes"
              f' == {expected}, "python and kernel disagree on the shared-memory size");\n'
              "__global__ void probe() {}\n")
    nvrtc.compile_cubin(source, "&probe", nvrtc.base_options("sm_90a", debug=False))


@pytest.mark.parametrize("k", (128, 640, 1024, 2048, 7168, 16384))
def test_split_counts_leave_no_slice_empty(k):
    k_blocks = k // 128
    counts = fp8_gemm.split_counts(k_blocks)
    assert counts[0] == 1 and len(set(counts)) == len(counts)
    for splits in counts:
        per_split = -(-k_blocks // splits)
        assert (splits - 1) * per_split < k_blocks <= splits * per_split


def test_forced_split_k_is_checked():
    problem = GemmProblem(64, 2112, 640, RECIPE_1x128_128x128, torch.float8_e4m3fn, torch.float8_e4m3fn,
                          torch.bfloat16)
    config = fp8_gemm.choose(problem, H100, 132, "block_m=64,block_n=32,num_splits=3")
    assert config.num_splits == 3 and config.num_mp == min(132, 66 * 3)
    with pytest.raises(ValueError, match="num_splits"):
        fp8_gemm.choose(problem, H100, 132, "num_splits=4")  # 5 k-blocks: 2 + 2 + 1, one empty
    with pytest.raises(ValueError, match="num_splits"):
        fp8_gemm.choose(problem, H100, 132, "num_splits=2,cluster_n=2")


@pytest.mark.parametrize("m,n,k,num_mp,expected", [
    (64, 2112, 7168, 132, (32, 2, True, 132)),   # 32-wide pairs in clusters fill the SMs
    (1, 2112, 7168, 132, (32, 2, True, 132)),
    (64, 2112, 7168, 100, (64, 3, False, 99)),   # pairs would not fit: 64-wide through the workspace
    (64, 576, 7168, 132, (32, 4, False, 72)),    # 64-wide splits would leave half the SMs idle
    (128, 576, 7168, 132, (64, 4, False, 72)),
    (64, 4096, 7168, 132, (32, 1, False, 128)),  # every SM has a tile: no split
    (64, 2112, 1024, 132, (16, 1, False, 132)),  # too few k-blocks to split
])
def test_split_k_rule_at_decode(m, n, k, num_mp, expected):
    problem = GemmProblem(m, n, k, RECIPE_1x128_128x128, torch.float8_e4m3fn, torch.float8_e4m3fn, torch.bfloat16,
                          tma_scales=True)
    c = fp8_gemm.choose(problem, H100, num_mp, "")
    assert (c.block_n, c.num_splits, c.split_in_cluster, c.num_mp) == expected


@pytest.mark.parametrize("m,n,k,stages", [(64, 2112, 7168, 12), (128, 4096, 7168, 12), (1, 2112, 7168, 8),
                                           (64, 7168, 16384, 8), (64, 7168, 2048, 8), (64, 576, 7168, 8),
                                           (4096, 4096, 7168, 3)])
def test_decode_rings_deepen_where_measured_faster(m, n, k, stages):
    """12 stages for 64-128 rows of 64-row tiles streaming 24-64 k-blocks a work item."""
    problem = GemmProblem(m, n, k, RECIPE_1x128_128x128, torch.float8_e4m3fn, torch.float8_e4m3fn, torch.bfloat16,
                          tma_scales=True)
    config = fp8_gemm.choose(problem, H100, 132, "")
    assert config.stages == stages
    assert config.smem_bytes <= H100.smem_per_block


def test_forced_split_k_in_cluster():
    """A tile's splits as one cluster: whole clusters of CTAs, rank 0's slots in the shared memory,
    the splits counted as the launch's cluster; never without splits."""
    problem = GemmProblem(64, 2112, 7168, RECIPE_1x128_128x128, torch.float8_e4m3fn, torch.float8_e4m3fn,
                          torch.bfloat16, tma_scales=True)
    config = fp8_gemm.choose(problem, H100, 132, "block_n=64,num_splits=4,split_cluster=1")
    assert config.split_in_cluster and config.cluster == 4 and config.num_mp == 132
    assert config.smem_bytes == fp8_gemm.smem_bytes(64, 64, config.stages, 128, tma_scales=True, split_cluster=4)
    config = fp8_gemm.choose(problem, H100, 130, "block_n=64,num_splits=4,split_cluster=1")
    assert config.num_mp == 128
    workspace = fp8_gemm.choose(problem, H100, 132, "block_n=64,num_splits=4")
    assert not workspace.split_in_cluster and workspace.cluster == 1
    with pytest.raises(ValueError, match="split_cluster"):
        fp8_gemm.choose(problem, H100, 132, "block_n=128,split_cluster=1")
    with pytest.raises(ValueError, match="split_cluster"):
        fp8_gemm.choose(problem, H100, 132, "num_splits=1,split_cluster=1")
    with pytest.raises(ValueError, match="split_cluster must be 0 or 1"):
        fp8_gemm.choose(problem, H100, 132, "num_splits=2,split_cluster=2")


def test_print_configs_logs_each_choice_once(monkeypatch, caplog):
    from mategemm import heuristics
    problem = GemmProblem(64, 4096, 7168, RECIPE_1x128_128x128, torch.float8_e4m3fn, torch.float8_e4m3fn,
                          torch.bfloat16)
    config = fp8_gemm.choose(problem, H100, 132, "")
    monkeypatch.setattr(heuristics, "_printed", set())
    monkeypatch.setenv("MATEGEMM_PRINT_CONFIGS", "0")
    with caplog.at_level(logging.INFO, logger="mategemm"):
        heuristics.report("k", problem, config)
        monkeypatch.setenv("MATEGEMM_PRINT_CONFIGS", "1")
        heuristics.report("k", problem, config)
        heuristics.report("k", problem, config)
    assert [r.getMessage() for r in caplog.records] == [f"k {problem} -> {config}"]


def test_heuristic_stays_fitted_to_the_committed_sweep():
    """The dense picks against docs/bench/dense_fp8_config_sweep.json (H200): a change to the model
    that moves picks off the measured best shows here before it reaches a GPU."""
    sweep = load_tool("sweep_fp8_configs.py")
    assert sweep.score([sweep.SWEEP]) <= 1.01


@pytest.mark.parametrize("m, n, k, tile", [(128, 7168, 16384, (128, 64)), (80, 7168, 16384, (128, 64)),
                                           (128, 7168, 2048, (128, 64)), (128, 4096, 7168, (64, 64)),
                                           (128, 2112, 7168, (64, 32)), (64, 7168, 16384, (64, 64))])
def test_decode_ties_go_to_one_m_block_only_where_it_streams_b_once(m, n, k, tile):
    """At 64 < m <= 128 one 128-row M-block wins a tie when it is >= 64 wide and covers 3/4 of the
    SMs (measured faster); narrower or fewer tiles keep the 64-row pick (measured slower)."""
    config = fp8_gemm.choose(problem(m, n, k), H100, 132)
    assert (config.block_m, config.block_n) == tile
    assert fp8_gemm.streams_b_once(problem(m, n, k), 128, 64, 132) == (n == 7168 and m > 64)


@pytest.mark.parametrize("m, n, k, group_n", [(128, 4096, 7168, 1), (128, 2112, 7168, 1), (256, 4096, 7168, 1),
                                              (64, 4096, 7168, fp8_gemm.GROUP_N), (128, 7168, 16384, fp8_gemm.GROUP_N),
                                              (4096, 7168, 16384, fp8_gemm.GROUP_N)])
def test_one_wave_of_several_m_blocks_walks_m_fastest(m, n, k, group_n):
    """group_n 1 only where every tile runs in the first wave and more than one M-block shares B;
    a forced group_n still wins."""
    config = fp8_gemm.choose(problem(m, n, k), H100, 132)
    assert config.group_n == group_n
    tiles = math.ceil(m / config.block_m) * math.ceil(n / config.block_n) * config.num_splits
    assert (group_n == 1) == (m > config.block_m and tiles <= 132)
    assert fp8_gemm.choose(problem(m, n, k), H100, 132, "group_n=4").group_n == 4


def test_passes_per_group_counts_split_tiles():
    """per_token segments aligned to 128 under 256-row tiles: a segment of b blocks meets
    (b + 1) / 2 tiles on average; tiles that divide the alignment tile each segment on its own."""
    assert grouped.passes_per_group(8192, 256, 128) == 32.5
    assert grouped.passes_per_group(100, 256, 128) == 1.0
    assert grouped.passes_per_group(300, 128, 128) == 3
    assert grouped.passes_per_group(300, 256, 256) == 2
    assert grouped.passes_per_group(300, 64, 0) == 5


@pytest.mark.parametrize("groups, rows, block_m", [(4, 8192, 256), (8, 4096, 256), (64, 128, 128), (32, 256, 128)])
def test_contiguous_tiles_span_two_segments_only_where_rows_are_many(groups, rows, block_m):
    """Segments aligned to 128 take 256-row tiles when each expert has many rows (the split tiles
    are few), 128-row ones when most tiles would run twice."""
    p = GemmProblem(groups * rows, 4096, 7168, RECIPE_1x128_128x128, torch.float8_e4m3fn, torch.float8_e4m3fn,
                    torch.bfloat16, "per_token", groups)
    assert grouped.choose(p, rows, H100, 132, "", 128, 0).block_m == block_m
