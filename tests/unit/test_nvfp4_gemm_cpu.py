"""The NVFP4 grouped GEMM without a GPU: argument checks (each names its argument), the plan and
kernel spec over a sweep of shapes, the call path on fake CUDA tensors up to the launch, the
kernel's shared-memory size and SASS (sm_90a: HGMMA, TMA, no local memory), and a bit-exact model
of the decode the producer's warps run (tables, byte permutes, swizzled placement) against the
exact NVFP4 values."""
import collections
import math
import re

import pytest
import torch

import mategemm
from fake_device import call, recorded_specs
from mategemm import plan, prewarm, quant, suites
from mategemm.heuristics import nvfp4 as heuristics
from mategemm.heuristics import sm90
from mategemm.jit.cache import KernelCache
from mategemm.kernels import sm90_fp8_gemm_blockscaled as kernel_fp8
from mategemm.kernels import sm90_nvfp4_grouped_gemm as kernel
from mategemm.kernels import sm90_nvfp4_stream_gemm as kernel_stream
from mategemm.runtime.device import SM90_NO_DEVICE
from mategemm.testing import nvfp4 as ref
from mategemm.testing import sass
from mategemm.types import Nvfp4Problem

E4M3, U8, I32 = torch.float8_e4m3fn, torch.uint8, torch.int32
ARCH = "sm_90a"


def cuda(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="cuda")


def args(tokens=10, n=64, k=256, experts=3, groups=3, out=torch.bfloat16):
    """The MAX form's arguments on fake CUDA tensors, num_active_experts a device count."""
    return dict(c=cuda(tokens, n, dtype=out), a=cuda(tokens, k // 2, dtype=U8), b=cuda(experts, n, k // 2, dtype=U8),
                a_scales=cuda(max(1, groups), -(-k // 64), 32, 4, 4, dtype=E4M3),
                b_scales=cuda(experts, -(-n // 128), -(-k // 64), 32, 4, 4, dtype=E4M3),
                group_offsets=cuda(groups + 1, dtype=I32), group_scale_offsets=cuda(groups, dtype=I32),
                expert_ids=cuda(groups, dtype=I32), expert_scales=cuda(experts), num_active_experts=cuda(1, dtype=I32))


# ---- argument checks ---------------------------------------------------------------------------
BAD = [
    (dict(a=lambda: cuda(10, 128, dtype=E4M3)), TypeError, "a must have dtype"),
    (dict(a=lambda: cuda(10, 100, dtype=U8), b=lambda: cuda(3, 64, 100, dtype=U8)), ValueError,
     "K .* multiple of 32"),
    (dict(b=lambda: cuda(3, 64, 96, dtype=U8)), ValueError, "a .* and b .* same K/2"),
    (dict(b=lambda: cuda(64, 128, dtype=U8)), ValueError, "b must be 3-D"),
    (dict(b=lambda: cuda(3, 60, 128, dtype=U8), b_scales=lambda: cuda(3, 1, 4, 32, 4, 4, dtype=E4M3),
          c=lambda: cuda(10, 60, dtype=torch.bfloat16)), ValueError, "N .* multiple of 8"),
    (dict(a_scales=lambda: cuda(3, 2, 32, 4, 4, dtype=E4M3)), ValueError, "a_scales must have shape"),
    (dict(a_scales=lambda: cuda(3, 4, 32, 4, 4, dtype=U8)), TypeError, "a_scales must have dtype"),
    (dict(a_scales=lambda: cuda(3, 4, 32, 16, dtype=E4M3)), ValueError, "a_scales must be 5-D"),
    (dict(b_scales=lambda: cuda(3, 1, 2, 32, 4, 4, dtype=E4M3)), ValueError, "b_scales must have shape"),
    (dict(b_scales=lambda: cuda(3, 1, 4, 32, 4, 4)), TypeError, "b_scales must have dtype"),
    (dict(b_scales=lambda: cuda(3, 1, 4, 32, 4, 4, dtype=E4M3).transpose(-1, -2)), ValueError,
     "b_scales must be contiguous"),
    (dict(group_offsets=lambda: cuda(4)), TypeError, "group_offsets must have dtype"),
    (dict(group_offsets=lambda: cuda(1, dtype=I32)), ValueError, "group_offsets must have shape"),
    (dict(group_offsets=lambda: cuda(4, 2, dtype=I32)), ValueError, "group_offsets must be 1-D"),
    (dict(group_offsets=lambda: cuda(8, dtype=I32).as_strided((4,), (2,))), ValueError,
     "group_offsets must be contiguous"),
    (dict(group_offsets=lambda: torch.empty(4, dtype=I32)), ValueError, "group_offsets is on cpu"),
    (dict(expert_ids=lambda: cuda(4, dtype=I32)), ValueError, r"expert_ids must have shape \(3,\)"),
    (dict(expert_ids=lambda: cuda(3, dtype=torch.int64)), TypeError, "expert_ids must have dtype"),
    (dict(group_scale_offsets=lambda: cuda(2, dtype=I32)), ValueError, "group_scale_offsets must have shape"),
    (dict(group_scale_offsets=lambda: None), TypeError, "group_scale_offsets must be a torch.Tensor"),
    (dict(expert_scales=lambda: cuda(2)), ValueError, "expert_scales must have shape"),
    (dict(expert_scales=lambda: cuda(3, dtype=torch.bfloat16)), TypeError, "expert_scales must have dtype"),
    (dict(num_active_experts=lambda: 4), ValueError, r"num_active_experts must be in \[0, 3\]"),
    (dict(num_active_experts=lambda: True), TypeError, "num_active_experts must be an int"),
    (dict(num_active_experts=lambda: 2.0), TypeError, "num_active_experts must be an int"),
    (dict(num_active_experts=lambda: cuda(2, dtype=I32)), ValueError, "num_active_experts as a tensor"),
    (dict(num_active_experts=lambda: cuda(1, dtype=torch.int64)), TypeError, "num_active_experts must have dtype"),
    (dict(num_active_experts=lambda: torch.ones(1, dtype=I32)), ValueError, "num_active_experts is on cpu"),
    (dict(c=lambda: cuda(10, 64, dtype=torch.float32)), TypeError, "c must have dtype"),
    (dict(c=lambda: cuda(9, 64, dtype=torch.bfloat16)), ValueError, r"c must have shape \(10, 64\)"),
    (dict(c=lambda: cuda(64, 10, dtype=torch.bfloat16).t()), ValueError, "c must be contiguous along its last"),
    (dict(a=lambda: cuda(10, 256, dtype=U8).as_strided((10, 128), (256, 2))), ValueError,
     "a must be contiguous along its last"),
    (dict(b=lambda: cuda(3, 128, 128, dtype=U8).as_strided((3, 64, 128), (16384, 128, 1))), ValueError,
     "b must be contiguous along K with its experts"),
]


@pytest.mark.parametrize("change,error,message", BAD, ids=[m for _, _, m in BAD])
def test_bad_arguments_are_named_before_anything_compiles(monkeypatch, change, error, message):
    with recorded_specs(monkeypatch) as asked:
        values = args()
        values.update({name: make() for name, make in change.items()})
        with pytest.raises(error, match=message):
            mategemm.grouped_matmul_dynamic_scaled_nvfp4(**values)
    assert asked == []


def test_pythonic_form_names_its_arguments(monkeypatch):
    with recorded_specs(monkeypatch) as asked:
        values = args()
        rest = {name: values[name] for name in ("a", "b", "a_scales", "b_scales", "group_offsets", "expert_ids",
                                                "expert_scales")}
        with pytest.raises(TypeError, match="out_dtype must be"):
            mategemm.nvfp4_grouped_gemm(**rest, out_dtype=torch.float32)
        with pytest.raises(ValueError, match="out_dtype .* differs from out.dtype"):
            mategemm.nvfp4_grouped_gemm(**rest, out=values["c"], out_dtype=torch.float16)
        with pytest.raises(ValueError, match=r"out must have shape \(10, 64\)"):
            mategemm.nvfp4_grouped_gemm(**rest, out=cuda(9, 64, dtype=torch.bfloat16))
        with pytest.raises(TypeError, match="expert_ids must be a torch.Tensor"):
            mategemm.nvfp4_grouped_gemm(**dict(rest, expert_ids=[0, 1, 2]))
    assert asked == []


# ---- the call path up to the launch --------------------------------------------------------------
def test_call_path_asks_for_the_planned_kernel(monkeypatch):
    """Host and device counts and the Pythonic form ask for one kernel: the plan's, which prewarm's
    nvfp4 suite holds for the same shape."""
    with recorded_specs(monkeypatch) as asked:
        values = args(tokens=32 * 4, n=4096, k=7168, experts=32, groups=32)
        rest = {name: values[name] for name in ("a", "b", "a_scales", "b_scales", "group_offsets", "expert_ids",
                                                "expert_scales")}
        for fn, kwargs in ((mategemm.grouped_matmul_dynamic_scaled_nvfp4, values),
                           (mategemm.grouped_matmul_dynamic_scaled_nvfp4, dict(values, num_active_experts=32)),
                           (mategemm.nvfp4_grouped_gemm, rest)):
            monkeypatch.setattr(kernel_fp8, "_loaded", {})  # each call loads its kernel (the core's loader)
            call(fn, **kwargs)
    assert len(asked) == 3 and len(set(asked)) == 1
    spec = asked[0]
    assert spec.kernel == kernel_stream.KERNEL and spec.name_expr == \
        "&mategemm::sm90_nvfp4_stream_gemm<8, 4, 2, mategemm::kOutBF16, 32>"
    row = {"active_experts": 32, "tokens_per_expert": 4, "n": 4096, "k": 7168}
    planned = prewarm.plan_suites([suites.Suite("nvfp4_moe", "nvfp4", (row,))], ARCH, num_mp=132)
    assert spec in {p.spec for p in planned} and {p.family for p in planned} == {"nvfp4", "moe"}


def test_nothing_to_compute_asks_for_nothing(monkeypatch):
    with recorded_specs(monkeypatch) as asked:
        empty = args(tokens=0)
        assert mategemm.grouped_matmul_dynamic_scaled_nvfp4(**empty) is empty["c"]
        none_active = args()
        assert mategemm.grouped_matmul_dynamic_scaled_nvfp4(**dict(none_active, num_active_experts=0)) \
            is none_active["c"]
    assert asked == []


def test_the_shipped_suite_is_prewarmable_and_its_rows_are_model_shapes():
    suite = suites.resolve("nvfp4_moe")[0]
    shapes = {(row["n"], row["k"]) for row in suite.rows}
    for hidden, inter in ((7168, 2048), (4096, 1536), (2048, 768)):  # DeepSeek-V3, Qwen3-235B, Qwen3-30B
        assert {(2 * inter, hidden), (hidden, inter)} <= shapes
    assert {row["tokens_per_expert"] for row in suite.rows} == {1, 4, 16, 64, 256, 4096}
    planned = prewarm.plan_suites([suite], ARCH)
    nvfp4 = [p for p in planned if p.family == "nvfp4"]
    assert {p.spec.name_expr.removeprefix("&mategemm::") for p in nvfp4} == {
        "sm90_nvfp4_stream_gemm<8, 4, 2, mategemm::kOutBF16, 32>",  # two CTAs per SM up to 16 rows
        "sm90_nvfp4_stream_gemm<16, 3, 2, mategemm::kOutBF16, 32>",
        "sm90_nvfp4_stream_gemm<64, 4, 1, mategemm::kOutBF16, 32, true>",
        "sm90_nvfp4_grouped_gemm<128, 128, 5, mategemm::kOutBF16, 128, 32, 2, true>",
        "sm90_nvfp4_grouped_gemm<256, 128, 4, mategemm::kOutBF16, 128, 32, 0, true, true>",  # 4096 rows: decoded_b
        "sm90_nvfp4_dequant_a<32, true>", "sm90_nvfp4_dequant_a<32>",  # the streaming kernel's order, the rows' own
        "sm90_nvfp4_dequant_b"}


def test_suite_rows_check_k_for_nvfp4(tmp_path):
    path = tmp_path / "shapes.json"
    path.write_text('{"mine": [{"active_experts": 4, "tokens_per_expert": 2, "n": 256, "k": 96}]}')
    assert suites.read(path)["mine"].kind == "nvfp4"
    path.write_text('{"mine": [{"active_experts": 4, "tokens_per_expert": 2, "n": 256, "k": 80}]}')
    with pytest.raises(suites.ShapesError, match="k must be a positive multiple of 32"):
        suites.read(path)
    planned = prewarm.plan_suites([suites.Suite("s", "nvfp4", ({"active_experts": 4, "tokens_per_expert": 2,
                                                                "n": 256, "k": 96},))], ARCH)
    assert {p.family for p in planned} == {"nvfp4"}  # K = 96: no FP8 peer (K blocks of 128)


# ---- the plan ------------------------------------------------------------------------------------
SWEEP = [(tokens, groups, n, k) for tokens in (1, 4, 16, 63, 64, 65, 256, 1024, 2048, 4096)
         for groups, n, k in ((32, 4096, 7168), (8, 7168, 2048), (1, 64, 32), (256, 1536, 2048), (3, 72, 96),
                              (1024, 2048, 768))]


@pytest.mark.parametrize("tokens,groups,n,k", SWEEP, ids=str)
def test_plan_over_a_sweep(tokens, groups, n, k):
    problem = Nvfp4Problem(tokens * groups, n, k, groups, groups, torch.bfloat16, groups)
    nvfp4_plan = plan.nvfp4_grouped(problem, SM90_NO_DEVICE, force="")
    config = nvfp4_plan.config
    on_device = Nvfp4Problem(tokens * groups, n, k, groups, groups, torch.bfloat16, None)
    # a count on the device plans for every group of expert_ids: the same kernel here
    assert plan.nvfp4_grouped(on_device, SM90_NO_DEVICE, force="").spec == nvfp4_plan.spec
    if tokens <= heuristics.STREAM_ROWS:
        assert config.nvfp4_stream and config.block_m == min(t for t in heuristics.STREAM_TOKENS if t >= tokens)
        assert config.decoded_a == (config.block_m == 64)  # a 64-row tile's group rows decoded beforehand
        ctas = 2 if config.block_m <= 16 else 1
        assert config.ctas_per_sm == ctas
        assert config.smem_bytes <= sm90.smem_per_block(SM90_NO_DEVICE.smem_per_block, ctas)
        assert 1 <= config.num_mp <= min(ctas * 132, heuristics.tile_bound(problem, config.block_m, 128))
        assert nvfp4_plan.spec.name_expr == (f"&mategemm::sm90_nvfp4_stream_gemm<{config.block_m}, {config.stages}, "
                                             f"{ctas}, mategemm::kOutBF16, {problem.max_groups}"
                                             f"{', true' if config.decoded_a else ''}>")
        return
    assert config.ctas_per_sm == 1
    wide = heuristics.max_stages(256, 128, problem.max_groups, SM90_NO_DEVICE.smem_per_block, decoded_a=True) >= 3
    assert config.block_m == (256 if tokens >= heuristics.TILE_256_ROWS and wide else 128)
    assert config.block_n in (64, 128) and (config.block_n == 64) == (
        n <= 64 or heuristics.tile_bound(problem, config.block_m, 128) < 132)
    assert 3 <= config.stages <= 8 and config.block_k == 64 and config.out_swizzle == 128
    decoded = {"decoded_a": config.decoded_a, "decoded_b": config.decoded_b}
    assert config.smem_bytes == heuristics.smem_bytes(config.block_m, config.block_n, config.stages,
                                                      problem.max_groups, **decoded)
    assert config.smem_bytes <= SM90_NO_DEVICE.smem_per_block
    assert config.stages == 8 or heuristics.smem_bytes(config.block_m, config.block_n, config.stages + 1,
                                                       problem.max_groups, **decoded) > SM90_NO_DEVICE.smem_per_block
    assert 1 <= config.num_mp <= min(132, heuristics.tile_bound(problem, config.block_m, config.block_n))
    assert problem.max_groups == max(32, 1 << (groups - 1).bit_length())
    assert config.decoder_wgs == {64: 2 if tokens <= 16 else 1, 128: 2, 256: 0}[config.block_m]
    assert nvfp4_plan.spec.name_expr == (f"&mategemm::sm90_nvfp4_grouped_gemm<{config.block_m}, {config.block_n}, "
                                         f"{config.stages}, mategemm::kOutBF16, 128, {problem.max_groups}, "
                                         f"{config.decoder_wgs}, {'true' if config.decoded_a else 'false'}"
                                         f"{', true' if config.decoded_b else ''}>")
    assert config.decoded_a == (config.block_m >= 128)
    assert config.decoded_b == (config.block_m == 256 and tokens >= heuristics.DECODED_B_ROWS)


def test_forced_configs():
    problem = Nvfp4Problem(64, 4096, 7168, 16, 16, torch.float16, 16)
    config = heuristics.choose(problem, 4, SM90_NO_DEVICE, 132, "block_m=128,block_n=64,stages=5,num_mp=7,group_n=2")
    assert (config.block_m, config.block_n, config.stages, config.num_mp, config.group_n) == (128, 64, 5, 7, 2)
    assert kernel.spec(problem, config, ARCH).name_expr.endswith("<128, 64, 5, mategemm::kOutF16, 128, 32, 2, true>")
    assert heuristics.choose(problem, 4, SM90_NO_DEVICE, 132, "block_n=256").stages == 3
    decoding = heuristics.choose(problem, 4, SM90_NO_DEVICE, 132, "stream=0")  # the decoders by default at BLOCK_M 64
    assert (decoding.block_m, decoding.decoder_wgs, decoding.num_threads) == (64, 2, 512)
    assert kernel.spec(problem, decoding, ARCH).name_expr.endswith(", 2, false>")
    assert [heuristics.choose(problem, rows, SM90_NO_DEVICE, 132, "stream=0").decoder_wgs
            for rows in (1, 16, 17, 64, 65)] == [2, 2, 1, 1, 2]
    one = heuristics.choose(problem, 4, SM90_NO_DEVICE, 132, "decoders=1")
    assert (one.block_m, one.decoder_wgs, one.num_threads) == (64, 1, 384)
    assert kernel.spec(problem, one, ARCH).name_expr.endswith(", 1, false>")
    alone = heuristics.choose(problem, 4, SM90_NO_DEVICE, 132, "decoders=0")
    assert (alone.block_m, alone.decoder_wgs, alone.num_threads) == (64, 0, 256)
    wide = heuristics.choose(problem, 256, SM90_NO_DEVICE, 132)  # BLOCK_M 128: two beside the two math warpgroups
    assert (wide.block_m, wide.decoder_wgs, wide.num_threads) == (128, 2, 640)
    assert heuristics.choose(problem, 256, SM90_NO_DEVICE, 132, "decoders=0").num_threads == 384
    two = heuristics.choose(problem, 4, SM90_NO_DEVICE, 132, "decoders=2")
    assert (two.decoder_wgs, two.num_threads) == (2, 512)
    forced_wide = heuristics.choose(problem, 4, SM90_NO_DEVICE, 132, "block_m=128,decoders=1")
    assert (forced_wide.block_m, forced_wide.decoder_wgs, forced_wide.num_threads) == (128, 1, 512)
    assert kernel.spec(problem, two, ARCH).name_expr.endswith(", 2, false>")
    assert heuristics.choose(problem, 4, SM90_NO_DEVICE, 132, "stream=0,decoded_a=1").decoded_a
    assert not heuristics.choose(problem, 256, SM90_NO_DEVICE, 132, "decoded_a=0").decoded_a
    for force, message in (("block_m=256,decoded_a=0", "decoded_a 1"), ("block_m=256,decoders=1", "0 at block_m"),
                           ("block_m=32,stream=0", "block_m must be one of"), ("block_n=96", "block_n must be one of"),
                           ("cluster_n=2", "do not apply"), ("stream=0,stages=9", "stages must be in"),
                           ("block_m=128,block_n=256", "stages must be in"), ("decoders=3", "decoders must be"),
                           ("decoders=-1", "decoders must be"), ("decoded_a=2", "decoded_a must be")):
        with pytest.raises(ValueError, match=message):
            heuristics.choose(problem, 4, SM90_NO_DEVICE, 132, force)


@pytest.mark.parametrize("block_m,block_n,stages,max_groups,out_bytes,decoded,decoded_b", [
    (64, 128, 6, 32, 2, False, False), (128, 128, 4, 256, 2, False, False), (64, 64, 8, 1024, 2, False, False),
    (128, 64, 5, 64, 2, False, False), (64, 256, 3, 32, 2, False, False), (128, 128, 5, 32, 2, True, False),
    (256, 128, 3, 32, 2, True, False), (128, 128, 6, 32, 2, True, True), (256, 64, 4, 1024, 2, True, True)])
def test_smem_bytes_match_the_kernel_layout(block_m, block_n, stages, max_groups, out_bytes, decoded, decoded_b):
    """The launch's dynamic shared memory equals GemmSmemLayout::kTotalBytes (checked by NVRTC)."""
    from mategemm.jit import nvrtc

    expected = heuristics.smem_bytes(block_m, block_n, stages, max_groups, out_bytes, decoded, decoded_b)
    flag = {True: "true", False: "false"}
    layout = (f"mategemm::GemmSmemLayout<{block_m}, {block_n}, {stages}, 0, {out_bytes}, mategemm::kGroupOffsets, "
              f"{max_groups}, 0, true, 128, false, 1, {flag[decoded]}, {flag[decoded_b]}>")
    source = ('#include "gemm/traits.cuh"\n'
              f'static_assert({layout}::kTotalBytes == {expected}, "python and kernel disagree");\n'
              f'static_assert({layout}::kStagingBytes % 128 == 0, "TMA destinations stay aligned");\n'
              "__global__ void probe() {}\n")
    nvrtc.compile_cubin(source, "&probe", nvrtc.base_options(ARCH, debug=False))


# ---- SASS -----------------------------------------------------------------------------------------
# (block_m, block_n, stages, out type, group table capacity, decoder warpgroups)
INSTANCES = [(64, 128, 6, "kOutBF16", 32, 0), (128, 128, 4, "kOutBF16", 256, 0), (64, 64, 8, "kOutF16", 1024, 0),
             (64, 256, 3, "kOutBF16", 32, 0), (64, 128, 6, "kOutBF16", 32, 1), (64, 128, 6, "kOutBF16", 32, 2),
             (64, 64, 8, "kOutBF16", 32, 2), (128, 128, 4, "kOutBF16", 256, 1), (128, 128, 4, "kOutBF16", 256, 2)]


def instance(family: str, name_expr: str) -> kernel.KernelSpec:
    """The spec of one template instance of kernel family `family` (its header included)."""
    return kernel.KernelSpec(family, f'#include "{family}.cuh"\n', name_expr, ARCH)


def compiled_sass(cache: KernelCache, spec: kernel.KernelSpec) -> tuple[str, object]:
    """(SASS text, compiled kernel) of `spec` compiled into `cache`; skips without the SASS tools."""
    if sass.tools_dir() is None:
        pytest.skip("cuobjdump not found (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    compiled = cache.get(spec)
    return sass.dump_sass(compiled.path / "kernel.cubin"), compiled


@pytest.fixture(scope="module")
def nvfp4_sass(tmp_path_factory):
    cache = KernelCache(tmp_path_factory.mktemp("nvfp4_sass"))
    out = {}
    for block_m, block_n, stages, out_type, max_groups, decoders in INSTANCES:
        name_expr = (f"&mategemm::{kernel.KERNEL}<{block_m}, {block_n}, {stages}, mategemm::{out_type}, 128, "
                     f"{max_groups}, {decoders}>")
        out[(block_m, block_n, decoders)] = compiled_sass(cache, instance(kernel.KERNEL, name_expr))
    return out


def loops(text: str) -> list[collections.Counter]:
    """The opcode counts of every loop (a backward branch to the loop's head) of a SASS listing."""
    ins = [(int(m.group(1), 16), m.group(2)) for m in
           (re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line) for line in text.splitlines()) if m]
    index = {address: i for i, (address, _) in enumerate(ins)}
    found = []
    for i, (address, body) in enumerate(ins):
        target = re.search(r"\bBRA\b.*0x([0-9a-f]+)", body)
        if target and int(target.group(1), 16) < address and int(target.group(1), 16) in index:
            found.append(collections.Counter(re.sub(r"^@!?U?P[T0-9]+\s+", "", b).split()[0].split(".")[0]
                                             for _, b in ins[index[int(target.group(1), 16)]:i + 1]))
    return found


@pytest.mark.parametrize("tile", [(m, n, decoders) for m, n, *_, decoders in INSTANCES], ids=str)
def test_kernel_is_hopper_sass_with_a_lean_decode_loop(nvfp4_sass, tile):
    text, _ = nvfp4_sass[tile]
    ops = collections.Counter(sass.opcodes(text))
    assert ops["HGMMA"] >= 4 and ops["UTMALDG"] >= 4, "bf16 wgmma fed by TMA (A, B and both scale chunks)"
    assert ops["LDL"] == 0 and ops["STL"] == 0, f"local memory: {ops['LDL']} LDL, {ops['STL']} STL (spills)"
    assert ops["ACQBULK"] == 1, "no wait for the previous grid (griddepcontrol.wait)"
    # the decode loops, A's rows and B's: 32 values (two scale blocks) per thread and pass
    decode = [loop for loop in loops(text) if loop["HMUL2"] and sum(loop.values()) < 200]
    assert len(decode) == 2 * (1 + min(tile[2], 1))  # the producer's warps' and the decoder warpgroups' copy
    for loop in decode:
        assert loop["HMUL2"] == 8 and loop["PRMT"] == 48 and loop["STS"] == 4 and loop["LDS"] == 2, loop
        assert sum(loop.values()) <= 108, f"{sum(loop.values())} instructions per 32 values"
    # the main loop: 4 wgmma per 64-value stage, as bmm_fp16's
    assert any(loop["HGMMA"] == 4 and sum(loop.values()) < 100 for loop in loops(text))


@pytest.mark.parametrize("tile", [(m, n, decoders) for m, n, *_, decoders in INSTANCES if m == 128], ids=str)
def test_register_split_fits_the_launch_allocation(nvfp4_sass, tile):
    """Beside two math warpgroups every other warpgroup (the producer's, the decoders') gives back
    registers before the math ones ask for more; asking for more than was given back would block
    forever."""
    text, compiled = nvfp4_sass[tile]
    threads = (3 + tile[2]) * 128
    launch = sass.registers(compiled.path / "kernel.cubin")
    assert launch * threads <= 65536
    given = [int(v, 16) for v in re.findall(r"USETMAXREG\.DEALLOC\.CTAPOOL (0x[0-9a-f]+)", text)]
    taken = [int(v, 16) for v in re.findall(r"USETMAXREG\.TRY_ALLOC\.CTAPOOL \w+, (0x[0-9a-f]+)", text)]
    assert len(given) == 1 + min(tile[2], 1) and len(taken) == 1, (given, taken)
    assert given[0] * 128 * (1 + tile[2]) + taken[0] * 256 <= launch * threads
    assert taken[0] >= 144  # the 128-wide tile's 64 accumulators per thread and wave, and room


@pytest.mark.parametrize("block_m,decoders", [(128, 0), (128, 2), (256, 0)])
def test_decoded_a_loads_a_by_tma_and_decodes_b_alone(tmp_path, block_m, decoders):
    """With A's rows decoded beforehand the producer loads A's bf16 tile, B's packed rows and B's
    scale chunk (3 TMA loads), and the decoding warps keep one decode each (B's); at 256 rows two
    64-row waves per math warpgroup."""
    name_expr = f"&mategemm::{kernel.KERNEL}<{block_m}, 128, 3, mategemm::kOutBF16, 128, 32, {decoders}, true>"
    text, _ = compiled_sass(KernelCache(tmp_path), instance(kernel.KERNEL, name_expr))
    ops = collections.Counter(sass.opcodes(text))
    assert ops["UTMALDG"] == 3 and ops["LDL"] == 0 and ops["STL"] == 0, ops
    assert ops["HMUL2"] == 8 * (1 + min(decoders, 1)), ops  # one 32-value decode (B's) per copy of the warps' code


def test_decoded_b_loads_both_tiles_and_decodes_nothing(tmp_path):
    """With the weights decoded beforehand too the producer loads the two bf16 tiles (2 TMA loads a
    stage) and nothing is decoded in the kernel (no HMUL2, no PRMT); the plan decodes the weights,
    then A's rows, then runs the GEMM."""
    problem = Nvfp4Problem(32 * 4096, 4096, 7168, 32, 32, torch.bfloat16, 32)
    nvfp4_plan = plan.nvfp4_grouped(problem, SM90_NO_DEVICE, force="decoded_b=1")
    config = nvfp4_plan.config
    assert (config.block_m, config.decoded_a, config.decoded_b, config.decoder_wgs) == (256, True, True, 0)
    assert config.smem_bytes == heuristics.smem_bytes(256, 128, config.stages, 32, 2, True, True)
    assert [s.name_expr for s in nvfp4_plan.specs] == [
        "&mategemm::sm90_nvfp4_dequant_b", "&mategemm::sm90_nvfp4_dequant_a<32>",
        f"&mategemm::{kernel.KERNEL}<256, 128, {config.stages}, mategemm::kOutBF16, 128, 32, 0, true, true>"]
    text, _ = compiled_sass(KernelCache(tmp_path), nvfp4_plan.spec)
    ops = collections.Counter(sass.opcodes(text))
    assert ops["UTMALDG"] == 2 and ops["HGMMA"] > 0 and ops["LDL"] == 0 and ops["STL"] == 0, ops
    assert ops["HMUL2"] == 0 and ops["PRMT"] == 0, ops
    for force, message in (("decoded_b=1,decoded_a=0", "decoded_a 1"), ("decoded_b=1,decoders=1", "decoders must be"),
                           ("stream=1,decoded_b=1", "no decoded_b"), ("decoded_b=2", "decoded_b must be")):
        with pytest.raises(ValueError, match=message):
            heuristics.choose(problem, 4096, SM90_NO_DEVICE, 132, force)


def test_dequant_b_kernel_is_lean(tmp_path):
    from mategemm.kernels import sm90_nvfp4_dequant_b as dequant_b

    text, compiled = compiled_sass(KernelCache(tmp_path), dequant_b.spec(ARCH))
    ops = collections.Counter(sass.opcodes(text))
    assert ops["LDL"] == 0 and ops["STL"] == 0, ops
    assert text.count("STG.E.128") == 2  # two 16-byte stores per 16 values (the maps' stores are 4 bytes)
    size = {dequant_b.rt.PTR: 8, dequant_b.rt.I64: 8, dequant_b.rt.INT: 4}
    assert sass.kernel_param_sizes(compiled.path / "kernel.cubin") == [size[t] for t in dequant_b.TYPES]


def test_dequant_a_kernel_is_lean(tmp_path):
    from mategemm.kernels import sm90_nvfp4_dequant_a as dequant

    text, compiled = compiled_sass(KernelCache(tmp_path), dequant.spec(1024, ARCH))
    ops = collections.Counter(sass.opcodes(text))
    assert ops["LDL"] == 0 and ops["STL"] == 0 and ops["STG"] == 2, ops  # two 16-byte stores per 16 values
    assert sass.kernel_param_sizes(compiled.path / "kernel.cubin") == [8] * 6 + [4] * 3 + [8]


def test_launch_arguments_match_the_kernel_signature(nvfp4_sass):
    import ctypes

    _, compiled = nvfp4_sass[(64, 128, 0)]
    size = {None: 128, ctypes.c_void_p: 8, ctypes.c_int: 4}
    assert sass.kernel_param_sizes(compiled.path / "kernel.cubin") == [size[t] for t in kernel.Launch.TYPES]


# ---- a bit-exact model of the decode ------------------------------------------------------------
def prmt(a: int, b: int, selector: int) -> int:
    """PTX prmt.b32 (default mode): byte i of the result is byte (nibble i & 7) of b:a, or that
    byte's sign replicated when the nibble's bit 3 is set."""
    source, out = a | b << 32, 0
    for i in range(4):
        nibble = selector >> 4 * i & 0xF
        byte = source >> 8 * (nibble & 7) & 0xFF
        out |= ((0xFF if byte & 0x80 else 0) if nibble & 8 else byte) << 8 * i
    return out


def bf16_value(bits: int) -> float:
    return torch.tensor([bits], dtype=torch.int32).to(torch.int16).view(torch.bfloat16).double().item()


def mul_bf16x2(a: int, b: int) -> int:
    """mul.rn.bf16x2, asserting the products are exact (as the kernel relies on)."""
    out = 0
    for half in (0, 16):
        product = bf16_value(a >> half & 0xFFFF) * bf16_value(b >> half & 0xFFFF)
        bits = torch.tensor([product], dtype=torch.float64).to(torch.bfloat16).view(torch.int16).item() & 0xFFFF
        assert bf16_value(bits) == product
        out |= bits << half
    return out


def e2m1_table(scale_byte: int) -> tuple[int, int, int, int]:
    """kernels_src/gemm/nvfp4_staging.cuh's e2m1_table, step for step."""
    scaled = ((scale_byte & 0x7F) * 0x00100010) & 0xFFFFFFFF
    w01, w23 = mul_bf16x2(scaled, 0x7B000000), mul_bf16x2(scaled, 0x7BC07B80)
    w45, w67 = mul_bf16x2(scaled, 0x7C407C00), mul_bf16x2(scaled, 0x7CC07C80)
    return prmt(w01, w23, 0x6420), prmt(w45, w67, 0x6420), prmt(w01, w23, 0x7531), prmt(w45, w67, 0x7531)


def decode_e2m1x8(packed: int, table) -> list[int]:
    """kernels_src/gemm/nvfp4_staging.cuh's decode_e2m1x8, step for step."""
    lo0, lo1, hi0, hi1 = table
    magnitudes = packed & 0x77777777
    upper = magnitudes >> 16
    lo_first, lo_second = prmt(lo0, lo1, magnitudes), prmt(lo0, lo1, upper)
    hi_first, hi_second = prmt(hi0, hi1, magnitudes), prmt(hi0, hi1, upper)
    shifted = packed << 4 & 0xFFFFFFFF
    hi_first |= prmt(shifted, packed, 0x5140) & 0x80808080
    hi_second |= prmt(shifted, packed, 0x7362) & 0x80808080
    return [prmt(lo_first, hi_first, 0x5140), prmt(lo_first, hi_first, 0x7362), prmt(lo_second, hi_second, 0x5140),
            prmt(lo_second, hi_second, 0x7362)]


def e2m1_pair_factor(scale_byte: int) -> int:
    """kernels_src/common/e2m1.cuh's e2m1_pair_factor, step for step."""
    scaled = ((scale_byte & 0x7F) * 0x00100010) & 0xFFFFFFFF
    return mul_bf16x2(mul_bf16x2(scaled, 0x7B007B00), 0x7B007B00)


def e2m1_pair_factors(scales: int, p: int) -> int:
    """kernels_src/common/e2m1.cuh's e2m1_pair_factors, step for step."""
    scaled = prmt(scales & 0x7F7F7F7F, 0, 0x4342 if p else 0x4140) << 4 & 0xFFFFFFFF
    return mul_bf16x2(mul_bf16x2(scaled, 0x7B007B00), 0x7B007B00)


def bf16_broadcast(two: int, h: int) -> int:
    half = two >> 16 * h & 0xFFFF
    return half | half << 16


def decode_e2m1_pairs(packed: int, factor: int) -> list[int]:
    """kernels_src/common/e2m1.cuh's decode_e2m1_pairs, step for step."""
    high = packed >> 8
    out = []
    for m in range(4):
        s = 4 * (m % 2)
        nibbles = (packed if m < 2 else high) & (0x000F000F << s)
        placed = nibbles * ((1 << (6 - s)) + (1 << (12 - s))) & 0xFFFFFFFF
        out.append(mul_bf16x2(placed & 0x81C081C0, factor))
    return out


PAIR_SCALE = 2.0 ** -8  # kE2m1PairScale


def test_pair_decode_model_gives_every_code_times_every_scale_exactly():
    """The streaming kernel's decode: word m holds values m and m + 4, each value x scale x 2^-8
    exactly, for all 16 codes in every nibble position and every non-negative e4m3 scale (subnormals,
    zero and the NaN encoding, read as 480, included); every pair of codes in the two nibbles one
    multiply places (no carry from one into the other) at the smallest, one and the largest scale."""
    gen = torch.Generator().manual_seed(1)
    every_pair = [sum((lo if i < 4 else hi) << 4 * i for i in range(8)) for lo in range(16) for hi in range(16)]
    for scale_byte in range(128):
        scale = torch.tensor([scale_byte], dtype=torch.uint8).view(E4M3).double().item()
        scale = 480.0 if scale_byte == 0x7F else scale
        factor = e2m1_pair_factor(scale_byte)
        words = [sum(c << 4 * i for i, c in enumerate(range(8))), sum(c << 4 * i for i, c in enumerate(range(8, 16)))]
        words += torch.randint(0, 2**32, (2,), generator=gen).tolist()
        words += every_pair if scale_byte in (0x01, 0x38, 0x7E) else []
        for packed in words:
            codes = torch.tensor([packed >> 4 * i & 0xF for i in range(8)], dtype=torch.uint8)
            values = (ref.e2m1_values(codes) * scale * PAIR_SCALE).tolist()
            out = decode_e2m1_pairs(packed, factor)
            got = [bf16_value(out[m % 4] >> 16 * (m // 4) & 0xFFFF) for m in range(8)]
            assert got == values, (scale_byte, hex(packed))


def test_factor_pairs_are_the_single_factors():
    """The streaming kernel's scale factors two at a time: half h of e2m1_pair_factors(scales, p),
    broadcast, is e2m1_pair_factor of scale byte 2p + h, for every scale byte in every position (the
    sign bit ignored)."""
    gen = torch.Generator().manual_seed(2)
    for byte in range(256):
        others = torch.randint(0, 256, (4,), generator=gen).tolist()
        for position in range(4):
            scales = sum((byte if i == position else others[i]) << 8 * i for i in range(4))
            pair = e2m1_pair_factors(scales, position // 2)
            assert bf16_broadcast(pair, position % 2) == e2m1_pair_factor(byte), (hex(scales), position)


def test_decode_model_gives_every_code_times_every_scale_exactly():
    """All 16 codes in every nibble position times every non-negative e4m3 scale (subnormals, zero,
    the NaN encoding included: its bits decode as a number, 480)."""
    gen = torch.Generator().manual_seed(0)
    for scale_byte in range(128):
        scale = torch.tensor([scale_byte], dtype=torch.uint8).view(E4M3).double().item()
        if scale_byte == 0x7F:
            scale = 480.0
        table = e2m1_table(scale_byte)
        words = [sum(c << 4 * i for i, c in enumerate(range(8))), sum(c << 4 * i for i, c in enumerate(range(8, 16)))]
        words += torch.randint(0, 2**32, (2,), generator=gen).tolist()
        for packed in words:
            codes = torch.tensor([packed >> 4 * i & 0xF for i in range(8)], dtype=torch.uint8)
            want = (ref.e2m1_values(codes) * scale).tolist()
            got = [bf16_value(w >> half & 0xFFFF) for w in decode_e2m1x8(packed, table) for half in (0, 16)]
            assert got == want, (scale_byte, hex(packed))
            # +-0 both decode to a zero of the code's sign; the output bits are those of bf16(value)
            for value, w in zip(want, [w >> h & 0xFFFF for w in decode_e2m1x8(packed, table) for h in (0, 16)]):
                assert value != 0 or w & 0x7FFF == 0


def test_scale_offsets_and_chunk_rows_follow_the_quantisers_layout():
    """nvfp4_scale_offset (row r of a 128-row chunk) and the producer's chunk coordinate ((tile x
    ceil(K/64) + kb) x 4 rows of 128 bytes) find each scale where swizzle_nvfp4_scales put it."""
    rows, cols = 300, 20  # 3 row tiles, 5 K steps of 64 values (4 scales each)
    scales = (torch.arange(rows * cols) % 250 + 1).view(rows, cols).to(torch.uint8).view(E4M3)
    flat = quant.swizzle_nvfp4_scales(scales).view(U8).reshape(-1)
    k_chunks = -(-cols // 4)

    def scale_offset(row, one_chunk):
        return (0 if one_chunk else (row >> 7) * 512) + (row & 31) * 16 + ((row >> 5) & 3) * 4

    for row in range(rows):
        for col in range(cols):
            tile, kb, block = row // 128, col // 4, col % 4
            chunk_row = (tile * k_chunks + kb) * kernel.SCALE_CHUNK_ROWS
            byte = chunk_row * kernel.SCALE_ROW_BYTES + scale_offset(row % 128, True) + block
            assert flat[byte] == scales[row, col].view(U8)
            # a 256-row B tile: two chunks loaded 512 bytes apart, rows past 128 in the second
            two = scale_offset(row % 256, False)
            assert two // 512 == row % 256 // 128 and two % 512 == scale_offset(row % 128, True)


@pytest.mark.parametrize("block_m,block_n,threads", [(64, 64, 96), (64, 128, 96), (128, 128, 96), (64, 256, 96),
                                                   (64, 64, 224), (64, 128, 224), (64, 256, 224),
                                                   (64, 64, 352), (64, 128, 352), (64, 256, 352),
                                                   (128, 128, 224), (128, 64, 352), (128, 128, 352)])
def test_decode_threads_cover_each_row_half_once_in_its_swizzled_place(block_m, block_n, threads):
    """decode_nvfp4_stage's split over the decoding threads (the producer's 96, and 128 more with a
    decoder warpgroup, 256 with two; beside one math warpgroup or two), for every count of A rows:
    each (operand, row, half) once; each chunk at c ^ row % 8 (its place fixed per thread: steps of
    threads / 2 rows, a multiple of 8); each quarter-warp's 16-byte stores and packed loads on
    distinct banks."""
    step = threads // 2
    for a_rows in range(1, block_m + 1):
        seen = collections.Counter()
        stores = collections.defaultdict(list)  # (warp, pass, store) -> (lane, address)
        for thread in range(threads):
            half, first = thread % 2, thread // 2
            passes = math.ceil((a_rows - first) / step) if first < a_rows else 0
            for operand, start, rows in (("a", first, a_rows), ("b", first + passes * step - a_rows, block_n)):
                chunks = [((4 * half + c) ^ (start % 8)) * 16 for c in range(4)]
                for i, row in enumerate(range(start, rows, step)):
                    seen[operand, row, half] += 1
                    assert chunks == [((4 * half + c) ^ (row % 8)) * 16 for c in range(4)]
                    for c in range(4):
                        stores[operand, thread // 32, i, c].append((thread % 32, row * 128 + chunks[c]))
                    stores[operand, thread // 32, i, "load"].append((thread % 32, row * 32 + half * 16))
        assert seen == {(op, row, h): 1 for op, rows in (("a", a_rows), ("b", block_n)) for row in range(rows)
                        for h in (0, 1)}
        for accesses in stores.values():
            by_quarter = collections.defaultdict(list)
            for lane, address in accesses:
                by_quarter[lane // 8].append(address // 16 % 8)  # 16-byte bank group of 128 bytes
            for groups in by_quarter.values():
                assert len(groups) == len(set(groups))


def group_table_model(offsets: list[int], active: int, rows: int) -> tuple[list[int], list[int], list[int]]:
    """build_group_table's offsets mode: (starts, counts, first 128-row scale tile) per group; offsets
    clipped to the rows and made monotone, groups past `active` empty."""
    starts, counts, scale_tiles = [], [], []
    end, tiles = min(max(offsets[0], 0), rows), 0
    for g in range(len(offsets) - 1):
        start = end
        end = max(end, min(max(offsets[g + 1], 0), rows)) if g < active else end
        starts.append(start)
        counts.append(end - start)
        scale_tiles.append(tiles)
        tiles += -(-(end - start) // 128)
    return starts, counts, scale_tiles


def test_scale_tiles_found_from_the_offsets_are_the_quantisers():
    """The Pythonic form's kernel derives each group's first scale tile from group_offsets: the
    starts nvfp4_quantize returns for the same groups."""
    offsets = [0, 5, 5, 140, 300, 301, 557]
    x = torch.randn(557, 64)
    _, _, starts = quant.nvfp4_quantize(x, 1.0, offsets)
    assert group_table_model(offsets, 6, 557)[2] == starts.tolist()
    assert group_table_model([0, 9, 4, 12], 3, 10) == ([0, 9, 9], [9, 0, 1], [0, 1, 1])
    assert group_table_model([0, 9, 12, 20], 1, 30)[1] == [9, 0, 0]


# ---- the streaming kernel: plan, shared memory, SASS ------------------------------------------------
def test_streaming_kernel_plan():
    """stream=1: the fewest group rows of (8, 16, 32, 64) per tile holding a group's, 128 weight rows,
    as many stages as fit a CTA's share of the SM; keys of the other kernel are refused."""
    problem = Nvfp4Problem(32 * 4, 4096, 7168, 32, 32, torch.bfloat16, 32)
    for rows, tokens in ((1, 8), (8, 8), (9, 16), (16, 16), (17, 32), (64, 64), (200, 64)):
        config = heuristics.choose(problem, rows, SM90_NO_DEVICE, 132, "stream=1")
        assert config.nvfp4_stream and (config.block_m, config.block_n, config.num_threads) == (tokens, 128, 384)
        assert config.decoded_a == (tokens == 64)
        assert config.smem_bytes == heuristics.stream_smem_bytes(tokens, config.stages, problem.max_groups,
                                                                 config.decoded_a)
        limit = sm90.smem_per_block(SM90_NO_DEVICE.smem_per_block, config.ctas_per_sm)
        assert config.smem_bytes <= limit < heuristics.stream_smem_bytes(
            tokens, config.stages + 1, problem.max_groups, config.decoded_a) or config.stages == 8
    forced = heuristics.choose(problem, 4, SM90_NO_DEVICE, 132, "stream=1,block_m=32,stages=3,num_mp=7,group_n=2")
    assert (forced.block_m, forced.stages, forced.num_mp, forced.group_n) == (32, 3, 7, 2)
    assert kernel_stream.spec(problem, forced, ARCH).name_expr == \
        "&mategemm::sm90_nvfp4_stream_gemm<32, 3, 1, mategemm::kOutBF16, 32>"
    nvfp4_plan = plan.nvfp4_grouped(problem, SM90_NO_DEVICE, force="stream=1")
    assert nvfp4_plan.spec.kernel == kernel_stream.KERNEL and nvfp4_plan.specs == (nvfp4_plan.spec,)
    # the group's rows decoded beforehand (by default at block_m 64): no packed rows or scales of theirs
    # in a stage, the decode kernel in stream order planned first
    decoded = plan.nvfp4_grouped(problem, SM90_NO_DEVICE, force="stream=1,block_m=64")
    assert decoded.config.decoded_a and decoded.config.smem_bytes == heuristics.stream_smem_bytes(
        64, decoded.config.stages, problem.max_groups, True) < heuristics.stream_smem_bytes(
        64, decoded.config.stages, problem.max_groups)
    assert decoded.spec.name_expr == \
        f"&mategemm::sm90_nvfp4_stream_gemm<64, {decoded.config.stages}, 1, mategemm::kOutBF16, 32, true>"
    assert [s.name_expr for s in decoded.specs] == ["&mategemm::sm90_nvfp4_dequant_a<32, true>", decoded.spec.name_expr]
    assert not heuristics.choose(problem, 4, SM90_NO_DEVICE, 132).decoded_a  # not below 64-row tiles
    assert heuristics.choose(problem, 4, SM90_NO_DEVICE, 132, "stream=1,decoded_a=1").decoded_a
    assert not heuristics.choose(problem, 64, SM90_NO_DEVICE, 132, "decoded_a=0").decoded_a
    for force, message in (("stream=1,block_m=128", "block_m must be one of"), ("stream=1,block_n=64", "block_n 128"),
                           ("stream=1,decoders=1", "no decoders"), ("stream=2", "stream must be 0 or 1"),
                           ("stream=1,stages=9", "stages of the streaming")):
        with pytest.raises(ValueError, match=message):
            heuristics.choose(problem, 4, SM90_NO_DEVICE, 132, force)


@pytest.mark.parametrize("max_groups", [32, 256, 1024])
def test_streaming_kernel_runs_two_ctas_per_sm_up_to_16_rows(max_groups):
    """Up to 16 rows per tile two CTAs per SM: as many stages as fit half the SM's shared memory less
    the driver's 1 KB per CTA (115,712 B of the H100's 233,472), a launch of twice as many CTAs as SMs;
    from 32 rows one CTA, the stages fitting the opt-in limit of one (232,448 B). DeepSeek-V3's w1
    (n 4096, k 7168)."""
    assert sm90.smem_per_block(SM90_NO_DEVICE.smem_per_block, 2) == 115712 == 233472 // 2 - 1024
    for rows, tokens, ctas in ((1, 8, 2), (4, 8, 2), (8, 8, 2), (16, 16, 2), (32, 32, 1), (64, 64, 1)):
        problem = Nvfp4Problem(max_groups * rows, 4096, 7168, max_groups, max_groups, torch.bfloat16, max_groups)
        config = plan.nvfp4_grouped(problem, SM90_NO_DEVICE, num_mp=132, force="").config
        assert (config.block_m, config.ctas_per_sm) == (tokens, ctas)
        limit = 115712 if ctas == 2 else SM90_NO_DEVICE.smem_per_block
        fit = max(s for s in range(2, 9) if heuristics.stream_smem_bytes(tokens, s, max_groups, tokens == 64) <= limit)
        assert config.stages == fit and config.smem_bytes <= limit, config
        assert config.num_mp == ctas * 132  # more tiles than CTAs
    problem = Nvfp4Problem(32 * 4, 4096, 7168, 32, 32, torch.bfloat16, 32)
    assert (heuristics.choose(problem, 4, SM90_NO_DEVICE, 132).stages,
            heuristics.choose(problem, 16, SM90_NO_DEVICE, 132).stages) == (4, 3)
    # an SM budget below the device's keeps one CTA per SM (the launch stays on the budget's SMs)
    budget = heuristics.choose(problem, 4, SM90_NO_DEVICE, 100)
    assert (budget.ctas_per_sm, budget.num_mp) == (1, 100)
    # a small launch: no more CTAs than tiles
    small = Nvfp4Problem(2, 256, 7168, 2, 2, torch.bfloat16, 2)
    assert heuristics.choose(small, 1, SM90_NO_DEVICE, 132).num_mp == heuristics.tile_bound(small, 8, 128) == 6


def test_streaming_kernel_ctas_per_sm_forced():
    """MATEGEMM_FORCE_CONFIG ctas_per_sm: 1 or 2 at any streaming tile (num_mp the SMs, the launch
    that many CTAs per SM), stages checked against the CTA's share; the GEMM core's kernel takes 1 only."""
    problem = Nvfp4Problem(32 * 4, 4096, 7168, 32, 32, torch.bfloat16, 32)
    one = heuristics.choose(problem, 4, SM90_NO_DEVICE, 132, "ctas_per_sm=1")
    assert (one.block_m, one.ctas_per_sm, one.stages, one.num_mp) == (8, 1, 8, 132)
    assert kernel_stream.spec(problem, one, ARCH).name_expr == \
        "&mategemm::sm90_nvfp4_stream_gemm<8, 8, 1, mategemm::kOutBF16, 32>"
    two = heuristics.choose(problem, 32, SM90_NO_DEVICE, 132, "ctas_per_sm=2")
    assert (two.block_m, two.ctas_per_sm, two.num_mp) == (32, 2, 264) and two.smem_bytes <= 115712
    assert kernel_stream.spec(problem, two, ARCH).name_expr == \
        f"&mategemm::sm90_nvfp4_stream_gemm<32, {two.stages}, 2, mategemm::kOutBF16, 32>"
    assert heuristics.choose(problem, 4, SM90_NO_DEVICE, 132, "num_mp=5").num_mp == 5  # a budget: one CTA an SM
    assert heuristics.choose(problem, 4, SM90_NO_DEVICE, 132, "num_mp=5,ctas_per_sm=2").num_mp == 10
    assert heuristics.choose(problem, 16, SM90_NO_DEVICE, 132, "stream=1,block_m=16,stages=7,ctas_per_sm=1").stages == 7
    assert heuristics.choose(problem, 256, SM90_NO_DEVICE, 132, "ctas_per_sm=1").ctas_per_sm == 1  # the core's
    for force, message in (("ctas_per_sm=3", "ctas_per_sm must be one of"), ("ctas_per_sm=0", "ctas_per_sm must be"),
                           ("stream=1,block_m=16,stages=7", r"at 2 CTA\(s\) per SM the device has 115712"),
                           ("stream=0,ctas_per_sm=2", "ctas_per_sm must be 1 with the GEMM core's")):
        with pytest.raises(ValueError, match=message):
            heuristics.choose(problem, 4, SM90_NO_DEVICE, 132, force)
    with pytest.raises(ValueError, match="ctas_per_sm must be 1 with the GEMM core's"):
        heuristics.choose(problem, 256, SM90_NO_DEVICE, 132, "ctas_per_sm=2")


@pytest.mark.parametrize("tokens,stages,max_groups,decoded", [
    (8, 8, 32, False), (16, 7, 256, False), (32, 5, 1024, False), (32, 2, 32, False), (64, 3, 32, False),
    (64, 4, 32, True), (16, 8, 256, True)])
def test_stream_smem_bytes_match_the_kernel_layout(tokens, stages, max_groups, decoded):
    from mategemm.jit import nvrtc

    expected = heuristics.stream_smem_bytes(tokens, stages, max_groups, decoded)
    layout = f"mategemm::StreamLayout<{tokens}, {stages}, {max_groups}, {'true' if decoded else 'false'}>"
    source = ('#include "sm90_nvfp4_stream_gemm.cuh"\n'
              f'static_assert({layout}::kTotalBytes == {expected}, "python and kernel disagree");\n'
              "__global__ void probe() {}\n")
    nvrtc.compile_cubin(source, "&probe", nvrtc.base_options(ARCH, debug=False))


# (rows per tile, stages, CTAs per SM, output, group table): the heuristic's picks, two CTAs per SM up
# to 16 rows, and one CTA as forced there
STREAM_INSTANCES = [(8, 4, 2, "kOutBF16", 32), (8, 3, 2, "kOutF16", 1024), (16, 3, 2, "kOutBF16", 256),
                    (8, 8, 1, "kOutBF16", 32), (16, 7, 1, "kOutBF16", 256), (32, 5, 1, "kOutF16", 1024)]


def test_stream_kernel_with_decoded_rows_lands_the_b_tile_by_tma(tmp_path):
    """decoded_a=1 at 64 rows: the math loop as without it, the B tile by four TMA loads a stage and
    no decode by the producer's warps; the stream-order decode kernel lean."""
    from mategemm.kernels import sm90_nvfp4_dequant_a as dequant

    cache = KernelCache(tmp_path)
    name_expr = f"&mategemm::{kernel_stream.KERNEL}<64, 4, 1, mategemm::kOutBF16, 32, true>"
    text, compiled = compiled_sass(cache, instance(kernel_stream.KERNEL, name_expr))
    ops = collections.Counter(sass.opcodes(text))
    assert ops["LDL"] == 0 and ops["STL"] == 0 and ops["STS"] == 0 and ops["UTMALDG"] >= 6, ops
    assert ops["ACQBULK"] == 1, "no wait for the previous grid (griddepcontrol.wait)"
    assert sass.registers(compiled.path / "kernel.cubin") * 384 <= 65536
    main = min((loop for loop in loops(text) if loop["HGMMA"] == 16), key=lambda loop: sum(loop.values()))
    assert main["HMUL2"] == 72 and main["LDS"] == 6 and main["WARPGROUP"] == 8, main
    assert re.search(r"HGMMA\.64x64x16\.F32\.BF16 R\d+, R\d+, gdesc", text)
    ops = collections.Counter(sass.opcodes(compiled_sass(cache, dequant.spec(32, ARCH, stream_order=True))[0]))
    assert ops["LDL"] == 0 and ops["STL"] == 0 and ops["STG"] == 4 and ops["HMUL2"] >= 4 + 2, ops  # 4 16-byte stores


@pytest.fixture(scope="module")
def stream_sass(tmp_path_factory):
    cache = KernelCache(tmp_path_factory.mktemp("nvfp4_stream_sass"))
    out = {}
    for tokens, stages, ctas, out_type, max_groups in STREAM_INSTANCES:
        name_expr = (f"&mategemm::{kernel_stream.KERNEL}<{tokens}, {stages}, {ctas}, mategemm::{out_type}, "
                     f"{max_groups}>")
        out[tokens, ctas, max_groups] = compiled_sass(cache, instance(kernel_stream.KERNEL, name_expr))
    return out


@pytest.mark.parametrize("tokens,ctas,max_groups", [(t, c, g) for t, _, c, _, g in STREAM_INSTANCES], ids=str)
def test_stream_kernel_sass_decodes_into_the_wgmma_registers(stream_sass, tokens, ctas, max_groups):
    text, compiled = stream_sass[tokens, ctas, max_groups]
    ops = collections.Counter(sass.opcodes(text))
    assert ops["UTMALDG"] >= 4 and ops["LDL"] == 0 and ops["STL"] == 0, ops
    registers = sass.registers(compiled.path / "kernel.cubin")
    assert registers * 384 * ctas <= 65536 and (ctas == 1 or registers <= 80), registers
    # the math loop: a stage's 16 wgmma with A from registers, their 128 values by the pair decode (64
    # HMUL2, the nibbles placed by IMAD) and 8 scale factors two at a time (a PRMT and 2 HMUL2 per
    # pair), the packed bytes in 4 + 2 loads and no shared-memory store; the wgmma wait only in
    # batches (ptxas's serialised wgmma would wait after each: 32 WARPGROUP a stage). The ALU pipe's
    # share (LOP3, SHF and the rest; 173 a stage) stays low: it set the pace of the table decode (~290
    # a stage). NVRTC 13.5: 379-381 instructions a stage (438 and 436 at 8 and 16 rows with the nibbles
    # placed by shifts and each factor on its own)
    main = min((loop for loop in loops(text) if loop["HGMMA"] == 16 and loop["STS"] == 0),
               key=lambda loop: sum(loop.values()))
    assert main["HMUL2"] == 72 and main["PRMT"] == 4 and main["LDS"] == 6 and main["WARPGROUP"] == 8, main
    alu = sum(main[op] for op in ("LOP3", "SHF", "PRMT", "IADD3", "ISETP", "SEL", "LEA", "VIADD", "MOV"))
    assert alu <= 180, f"{alu} ALU-pipe instructions per stage and thread"
    assert sum(main.values()) <= 392, f"{sum(main.values())} instructions per stage and thread"
    assert re.search(r"HGMMA\.64x{}x16\.F32\.BF16 R\d+, R\d+, gdesc".format(tokens), text)
    # the producer warps' B tile: 32 values of a row per pass, 4 scale factors, 4 16-byte stores
    decode = [loop for loop in loops(text) if loop["STS"] == 4 and loop["HGMMA"] == 0]
    assert decode and all(loop["HMUL2"] == 24 and loop["LDS"] == 8 for loop in decode), decode


def test_stream_launch_arguments_match_the_kernel_signature(stream_sass):
    import ctypes

    _, compiled = stream_sass[8, 2, 32]
    size = {None: 128, ctypes.c_void_p: 8, ctypes.c_int: 4}
    assert sass.kernel_param_sizes(compiled.path / "kernel.cubin") == [size[t] for t in kernel_stream.Launch.TYPES]


# ---- the streaming kernel's two operand orders ------------------------------------------------------
def swizzled(row: int, offset: int) -> int:
    """Byte `offset` of 128-byte row `row` under the 128-byte swizzle (TMA's and the wgmma's)."""
    return row * 128 + ((offset // 16) ^ (row % 8)) * 16 + offset % 16


def word(image: bytearray, at: int) -> int:
    return int.from_bytes(image[at:at + 4], "little")


@pytest.mark.parametrize("tokens", [8, 16])
def test_stream_kernel_operands_meet_in_one_k_order(tokens):
    """sm90_nvfp4_stream_gemm step for step over one 256-value stage: the producer warps' B tile
    (units of 32 values, swizzled 16-byte chunks) and the math threads' A fragments (bytes 32q.. of
    their rows, the thread's 4 scales) read as the wgmma reads them give every weight row times every
    group row exactly."""
    gen = torch.Generator().manual_seed(tokens)
    weights = torch.randint(0, 256, (128, 128), generator=gen, dtype=torch.uint8)
    rows = torch.randint(0, 256, (tokens, 128), generator=gen, dtype=torch.uint8)
    w_scales = torch.randint(0, 0x7F, (128, 16), generator=gen, dtype=torch.uint8)
    r_scales = torch.randint(0, 0x7F, (tokens, 16), generator=gen, dtype=torch.uint8)

    def chunks(scales):  # four 512-byte chunks of 128 rows x 4 scales
        image = bytearray(2048)
        for r in range(scales.shape[0]):
            for s in range(16):
                image[s // 4 * 512 + (r % 32) * 16 + (r // 32) * 4 + s % 4] = int(scales[r, s])
        return image

    def values(packed, scales):  # the exact values, K value 2b + h from byte b's nibble h
        codes = torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(packed.shape[0], -1)
        scale = scales.view(E4M3).double().repeat_interleave(16, dim=1)
        return ref.e2m1_values(codes) * scale

    w_image = bytearray(128 * 128)
    for r in range(128):
        for o in range(128):
            w_image[swizzled(r, o)] = int(weights[r, o])
    w_chunks, r_chunks = chunks(w_scales), chunks(r_scales)
    r_image = bytes(rows.reshape(-1).tolist())
    # producer warps 1-3: unit (row, w) -> four 16-byte chunks of slab w // 2
    tile = bytearray(4 * tokens * 128)
    for row in range(tokens):
        for w in range(8):
            out = [decode_e2m1_pairs(word(r_image, row * 128 + q * 32 + w * 4),
                                     e2m1_pair_factor(r_chunks[q * 512 + (row % 32) * 16 + (row // 32) * 4 + w // 2]))
                   for q in range(4)]
            for c in range(4):
                at = (w // 2) * tokens * 128 + swizzled(row, (4 * (w % 2) + c) * 16)
                tile[at:at + 16] = b"".join(out[q][c].to_bytes(4, "little") for q in range(4))

    # the same tile from the rows decoded beforehand (sm90_nvfp4_dequant_a in stream order: item w of
    # a row writes 64 bytes from 64w, 16c + 4q holding span q's nibble pair c) landed by TMA: slab s
    # is bytes 128s.. of each row, 128-byte swizzled
    landed = bytearray(len(tile))
    for row in range(tokens):
        decoded_row = bytearray(512)
        for w in range(8):
            words = [decode_e2m1_pairs(word(r_image, row * 128 + 32 * q + 4 * w),
                                       e2m1_pair_factor(r_chunks[q * 512 + (row % 32) * 16 + (row // 32) * 4 + w // 2]))
                     for q in range(4)]
            for c in range(4):
                for q in range(4):
                    decoded_row[64 * w + 16 * c + 4 * q:64 * w + 16 * c + 4 * q + 4] = words[q][c].to_bytes(4, "little")
        for slab in range(4):
            for offset in range(0, 128, 16):
                at = slab * tokens * 128 + swizzled(row, offset)
                landed[at:at + 16] = decoded_row[128 * slab + offset:128 * slab + offset + 16]
    assert landed == tile

    def b_value(token, j, slot):  # the wgmma's B: chunk j = slab j // 4, bytes (j % 4) * 32 + 2 slot
        at = (j // 4) * tokens * 128 + swizzled(token, (j % 4) * 32 + 2 * slot)
        return bf16_value(int.from_bytes(tile[at:at + 2], "little"))

    b = torch.tensor([[[b_value(t, j, s) for s in range(16)] for j in range(16)] for t in range(tokens)],
                     dtype=torch.float64)
    # math threads: row R is row g (lane / 4 = R % 8) or g + 8 of its warp; its 4 lanes q hold slots
    # 2q, 2q + 1 (a0 / a1) and 8 + 2q, 9 + 2q (a2 / a3) of every chunk
    a = torch.zeros(128, 16, 16, dtype=torch.float64)
    for R in range(128):
        for q in range(4):
            packed = [word(w_image, R * 128 + ((2 * q + c) ^ (R % 8)) * 16 + 4 * i) for c in range(2) for i in range(4)]
            scales = word(w_chunks, q * 512 + (R % 32) * 16 + (R // 32) * 4)
            factors = [e2m1_pair_factors(scales, p) for p in range(2)]
            for batch in range(4):
                factor = bf16_broadcast(factors[batch // 2], batch % 2)
                decoded = [decode_e2m1_pairs(packed[2 * batch + x], factor) for x in range(2)]
                for jj in range(4):
                    j, w, pair = 4 * batch + jj, jj // 2, 2 * (jj % 2)
                    for h in range(2):
                        bits = decoded[w][pair + h]
                        a[R, j, 8 * h + 2 * q] = bf16_value(bits & 0xFFFF)
                        a[R, j, 8 * h + 2 * q + 1] = bf16_value(bits >> 16)
    got = torch.einsum("rjs,tjs->rt", a, b) / PAIR_SCALE**2  # the epilogue's factor back
    want = values(weights, w_scales) @ values(rows, r_scales).T
    assert torch.equal(got, want)
