"""The fused MoE layer's gated GEMM (its first GEMM with the activation and the 1x128 quantisation in
the epilogue) and gathered A rows without a GPU: the plans and their rules, the SASS of every
instance the presets plan, the launch's arguments against the kernel's, and the layer's buffers
(the shared-memory layout: test_heuristics)."""
import collections
import contextlib
import ctypes

import pytest
import torch

from mategemm import moe_layer, plan, prepare, prewarm
from mategemm.heuristics import grouped
from mategemm.kernels import sm90_fp8_gemm_blockscaled as kernel_fp8
from mategemm.runtime import launch as rt
from mategemm.runtime import tma
from mategemm.runtime.device import SM90_NO_DEVICE
from mategemm.testing import sass

E4M3 = torch.float8_e4m3fn
# (pairs, N, K, E): Qwen3-30B-A3B at 1024 and 16384 tokens (BLOCK_M 64 / 128, A's scales by the
# scale warps / copied for TMA), DeepSeek-V3 at 2049 tokens (128 rows, by TMA).
SHAPES = [(8192, 768, 2048, 128), (131072, 768, 2048, 128), (16392, 2048, 7168, 256)]


def gated_plan(shape, activation="silu", force=""):
    pairs, n, k, experts = shape
    return plan.moe_gated_gemm(pairs, n, k, experts, activation, SM90_NO_DEVICE, force=force)


@pytest.mark.parametrize("force,tokens,want", [("", 1, False), ("", 16384, False), ("gated_gemm=0", 4096, False),
                                               ("gated_gemm=1", 1, True), ("gated_gemm=1", 16384, True)])
def test_gated_gemm_is_opt_in_until_measured(force, tokens, want):
    assert plan.moe_gated_gemm_wanted(tokens, force) == want


def test_the_plan():
    """128-column tiles of the activation's N columns, FP8 output, per_expert rows; 64-row tiles
    where experts hold at most 64 rows; A's scales by TMA where the copy pays."""
    small, large, wide = (gated_plan(shape) for shape in SHAPES)
    for p in (small, large, wide):
        assert p.config.block_n == 128 and p.config.out_swizzle == 128 and p.config.cluster == 1
        assert p.problem.out_dtype == E4M3 and p.problem.group_mode == "per_expert"
        assert p.spec.kernel == kernel_fp8.KERNEL_GATED and p.config.smem_bytes <= SM90_NO_DEVICE.smem_per_block
    assert small.problem.n == 768 and small.config.block_m == 64 and not small.problem.tma_scales
    assert large.config.block_m == 128 and large.problem.tma_scales and large.copy_a_scales
    assert wide.config.block_m == 128 and wide.config.stages >= 3
    assert "swigluoai" not in str(gated_plan(SHAPES[0], "swigluoai").spec)  # the activation is a code
    assert gated_plan(SHAPES[0], "swiglustep").spec != small.spec


@pytest.mark.parametrize("force,message", [("block_m=256", "block_m must be one of"),
                                           ("block_n=64", "128 columns wide"), ("cluster_n=2", "128 columns wide"),
                                           ("stages=9", "stages must be in"), ("stages=7,block_m=128", "shared")])
def test_forced_values_the_gated_gemm_cannot_take_are_named(force, message):
    with pytest.raises(ValueError, match=message):
        gated_plan(SHAPES[1], force=force)


def preset_specs():
    """Every first-GEMM instance of the fused layer the presets plan up to 16384 tokens with the gated
    GEMM, gathered A rows or both forced on, for each activation kind."""
    specs = {}
    for name in prewarm.preset_names():
        preset = prewarm.load_preset(name)
        if preset.moe is None:
            continue
        for force in ("gated_gemm=1", "gather_a=1", "gated_gemm=1,gather_a=1"):
            for activation in ("silu", "swiglustep"):
                for spec, use in prewarm.layer_gemm1_specs(preset.moe, activation, 16384, SM90_NO_DEVICE, force=force):
                    specs.setdefault(spec, f"{name} {use}")
    return specs


PRESET_SPECS = preset_specs()


def test_the_presets_plan_both_tiles_both_scale_paths_and_gathered_rows():
    """Forced on, every token count plans a gated GEMM; by default none does."""
    preset = prewarm.load_preset("qwen3_30b_a3b")
    assert len(prewarm.layer_gemm1_specs(preset.moe, "silu", 16384, SM90_NO_DEVICE, force="gated_gemm=1")) > 1
    assert prewarm.layer_gemm1_specs(preset.moe, "silu", 16384, SM90_NO_DEVICE) == []
    gated = [spec.name_expr for spec in PRESET_SPECS if spec.kernel == kernel_fp8.KERNEL_GATED]
    assert any("<64," in e for e in gated) and any("<128," in e for e in gated)
    assert any(", true, 0, false>" in e for e in gated) and any(", false, 0, false>" in e for e in gated)
    assert any(e.endswith(", false, 0, true>") for e in gated)  # gated and gathered (never with TMA scales)
    plain = [spec.name_expr for spec in PRESET_SPECS if spec.kernel == kernel_fp8.KERNEL]
    assert plain and all(e.endswith("true, false>") for e in plain)  # gathered, A's scales by the scale warps


@pytest.mark.parametrize("input_fp8,quantize_first,weight_input,force,want", [
    (False, True, False, "gather_a=1", True), (True, False, False, "gather_a=1", True),
    (True, False, True, "gather_a=1", False), (False, False, False, "gather_a=1", False),
    (True, False, False, "", False), (False, True, False, "gather_a=0", False)])
def test_gathered_rows_only_where_the_permute_only_moves_rows(input_fp8, quantize_first, weight_input, force, want):
    """Opt-in; from the tokens quantised once or an FP8 input, never with router weights on the input
    (the permute scales the rows then) or a bf16 input quantised pair by pair."""
    assert plan.moe_gather_a_wanted(input_fp8, quantize_first, weight_input, force) == want


def test_a_gathered_plan_loads_a_scales_by_the_scale_warps():
    p = plan.moe_gemm1(131072, 768, 2048, 128, SM90_NO_DEVICE, gather_a=True, force="tma_scales=2")
    assert p.problem.gather_a and not p.problem.tma_scales and not p.copy_a_scales
    assert p.spec.name_expr.endswith("true, false>")


class RecordingKernel:
    max_resident_ctas = None

    @staticmethod
    def pack(values, types):
        assert len(values) == len(types)
        return values


def test_a_gathered_launch_passes_the_rows_address_and_stride(monkeypatch):
    """The kernel copies gathered rows itself: after the group arguments come the row index, its
    divisor, and the tokens' address and row stride in bytes (a strided view keeps its own)."""
    monkeypatch.setattr(kernel_fp8, "load", lambda *args, **kwargs: RecordingKernel())
    monkeypatch.setattr(tma, "_encode", lambda *args: object())
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    tokens, topk, experts, hidden, inter = 100, 4, 8, 512, 256
    gemm_plan = plan.moe_gemm1(tokens * topk, inter, hidden, experts, SM90_NO_DEVICE, gather_a=True)
    a = torch.empty((tokens, hidden + 128), dtype=E4M3)[:, :hidden]
    sfa = torch.ones((tokens, hidden // 128))
    w1, w1_scale = torch.empty((experts, 2 * inter, hidden), dtype=E4M3), torch.ones((experts, 4, 4))
    counts, order = torch.zeros(experts, dtype=torch.int32), torch.arange(tokens * topk)
    call = prepare.moe_gemm1_call(gemm_plan, a, sfa, w1, w1_scale, counts, (order, topk))
    out = torch.empty((tokens * topk, 2 * inter), dtype=torch.bfloat16)
    values = call.launch._values(object(), out, 0, 0, 0)
    types = kernel_fp8.Launch.TYPES
    at = values.index(order.data_ptr())
    assert values[at:at + 5] == (order.data_ptr(), topk, a.data_ptr(), hidden + 128, out.data_ptr())
    assert types[at:at + 5] == (rt.PTR, rt.INT, rt.PTR, rt.INT, rt.PTR)
    ragged_plan = plan.moe_gemm1(tokens * topk, inter, hidden - 16, experts, SM90_NO_DEVICE, gather_a=True)
    with pytest.raises(ValueError, match="whole 128-byte blocks"):  # the kernel copies whole 128-byte blocks
        prepare.moe_gemm1_call(ragged_plan, a[:, :hidden - 16], sfa, w1[..., :hidden - 16], w1_scale, counts,
                               (order, topk))


@pytest.mark.parametrize("spec", list(PRESET_SPECS), ids=list(PRESET_SPECS.values()))
def test_gated_kernels_are_hopper_sass_on_the_uniform_datapath(sass_cache, spec):
    """wgmma (QGMMA) and TMA present, no local memory, and the main loop's descriptors in uniform
    registers (no R2UR from the first wgmma to the last), as in the GEMM core's other kernels."""
    text = sass.dump_sass(sass_cache.get(spec).path / "kernel.cubin")
    ops = collections.Counter(sass.opcodes(text))
    assert ops["QGMMA"] > 0 and ops["UTMALDG"] > 0 and ops["UTMASTG"] > 0
    assert ops["LDL"] == 0 and ops["STL"] == 0, f"local memory: {ops['LDL']} LDL, {ops['STL']} STL"
    moves = sass.main_loop_r2ur(text)
    assert not moves, f"{len(moves)} R2UR between the first and the last wgmma"


def test_launch_arguments_match_the_kernel_signature(sass_cache):
    """GatedLaunch.TYPES (what the host passes) has the kernel's parameter count and sizes."""
    compiled = sass_cache.get(next(iter(PRESET_SPECS)))
    size = {None: 128, ctypes.c_void_p: 8, ctypes.c_int: 4, ctypes.c_float: 4}  # TMAP = CUtensorMap by value
    assert sass.kernel_param_sizes(compiled.path / "kernel.cubin") == [size[t] for t in kernel_fp8.GatedLaunch.TYPES]


def test_the_gated_output_does_not_share_memory_with_the_rows_it_reads():
    """The gated GEMM reads the packed FP8 rows and writes its own in the same launch: separate buffers
    (the activation kernel's output reuses the rows' buffer, read by an earlier launch)."""
    ws = moe_layer.Workspace("cpu", 64, 256, 384, 4)
    a, a_scale = ws.rows(64, 256, "fp8")
    q, q_scale = ws.gated_rows(64)
    assert q.shape == (64, 384) and q_scale.shape == (64, 3) and q.dtype == E4M3
    spans = [(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in (a, a_scale, q, q_scale)]
    for i, (lo, hi) in enumerate(spans):
        for lo2, hi2 in spans[i + 1:]:
            assert hi <= lo2 or hi2 <= lo
    assert ws.gated_rows(32)[0].data_ptr() == q.data_ptr()  # allocated once


def test_grouped_tile_bound_covers_the_gated_tiles():
    """The grid never exceeds the tiles: at most one partial tile more per expert with rows."""
    p = gated_plan((300, 384, 512, 16))
    assert p.config.num_mp == min(132, grouped.tile_bound(p.problem, 64, 128, 0, 0)) == (5 + 16) * 3
