"""`mategemm prewarm --preset`: model presets, the plan derived from the heuristics, parallel compiles.

The plan must hold every kernel the runtime can pick for 1..max_tokens tokens: checked against a
brute force that asks the heuristics for every token count (small max_tokens) and against the
runtime's own choice for random routings (full max_tokens).
"""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mategemm import cli, plan, prewarm
from mategemm.heuristics import fp8_gemm, grouped
from mategemm.kernels import sm90_fp8_gemm_blockscaled as kernel_fp8
from mategemm.kernels import sm90_fp8_gemv as kernel_gemv
from mategemm.kernels import sm90_fp8_moe_layer as kernel_moe
from mategemm.kernels import sm90_fp8_mqa_logits as kernel_mqa
from mategemm.runtime.device import SM90_NO_DEVICE
from mategemm.testing import moe
from mategemm.types import RECIPE_1x128_128x128, GemmProblem

REPO = Path(__file__).resolve().parents[2]
ARCH = "sm_90a"
DEVICE = SM90_NO_DEVICE
NUM_MP = DEVICE.num_sms
E4M3, BF16 = torch.float8_e4m3fn, torch.bfloat16
PRESETS = ("deepseek_v3", "qwen3_235b_a22b", "qwen3_30b_a3b")
BRUTE_MAX_TOKENS = 512


# ---- what the runtime picks (mategemm.gemm / mategemm.moe / mategemm.indexer, written out) ------
def runtime_dense(m, n, k, recipe, a_scales_tma=False):
    """a_scales_tma: A's scales given MN-major as TMA reads them."""
    tma_scales = a_scales_tma and recipe == RECIPE_1x128_128x128 and k <= 32768
    problem = GemmProblem(m, n, k, recipe, E4M3, E4M3, BF16, tma_scales=tma_scales)
    return kernel_fp8.spec(problem, fp8_gemm.choose(problem, DEVICE, NUM_MP), ARCH)


def runtime_gemv(m, n, k, recipe):
    """The GEMV the dense call takes at 1-2 rows (operands with rows 16-byte aligned), or None."""
    if m > 2 or k < 4096 or n > 4096:
        return None
    return kernel_gemv.spec(GemmProblem(m, n, k, recipe, E4M3, E4M3, BF16), ARCH)


def runtime_ragged_m(mode, rows, n, k, recipe, experts, alignment=128):
    """ragged_m_moe_gemm_8bit with `rows` rows of A: rows per expert is the ceil average."""
    problem, _ = plan.scales_by_tma(GemmProblem(rows, n, k, recipe, E4M3, E4M3, BF16, mode, experts), False, "")
    config = grouped.choose(problem, -(-rows // experts), DEVICE, NUM_MP, "", alignment if mode == "per_token" else 0)
    return kernel_fp8.spec(problem, config, ARCH)


def runtime_masked(expect_tokens, max_m, n, k, recipe, experts):
    problem = GemmProblem(experts * max_m, n, k, recipe, E4M3, E4M3, BF16, "masked", experts)
    problem, _ = plan.scales_by_tma(problem, False, "", experts * expect_tokens)
    return kernel_fp8.spec(problem, grouped.choose(problem, expect_tokens, DEVICE, NUM_MP, "", 0, max_m), ARCH)


def per_token_bounds(m, layer):
    """The fewest and the most padded rows of A for m tokens (see prewarm.per_token_rows)."""
    t, a = m * layer.top_k, layer.alignment_m
    return max(moe.align(t, a), layer.top_k * a), moe.align(t + layer.num_experts * (a - 1), a)


def brute_force(preset, max_tokens):
    """{spec: family} of every kernel asked of the heuristics for every token count 1..max_tokens."""
    found = {}
    layer = preset.moe
    for m in range(1, max_tokens + 1):
        for gemm in preset.dense:
            for a_scales_tma in (False, True):
                found.setdefault(runtime_dense(m, gemm.n, gemm.k, preset.recipe, a_scales_tma), "dense")
            gemv = runtime_gemv(m, gemm.n, gemm.k, preset.recipe)
            if gemv is not None:
                found.setdefault(gemv, "dense")
        if layer is None:
            continue
        expect = -(-m * layer.top_k // layer.num_experts)
        for _, n, k in layer.gemms:
            for mode in layer.modes:
                if mode == "per_token":
                    lo, hi = per_token_bounds(m, layer)
                    rows_list = range(lo, hi + 1, layer.alignment_m)
                elif mode == "masked":
                    found.setdefault(runtime_masked(expect, max_tokens, n, k, preset.recipe, layer.num_experts), "moe")
                    continue
                else:
                    rows_list = [m * layer.top_k]
                for rows in rows_list:
                    found.setdefault(_ragged_memo(mode, rows, n, k, preset.recipe, layer.num_experts,
                                                  layer.alignment_m), "moe")
    if layer is not None:  # fused_moe's own kernels: either input dtype, silu by default
        for spec in (*kernel_moe.route_specs(False, ARCH), *kernel_moe.route_specs(True, ARCH),
                     kernel_moe.permute_spec(False, ARCH), kernel_moe.permute_spec(True, ARCH),
                     kernel_moe.gated_act_spec("silu", ARCH), kernel_moe.unpermute_spec(ARCH)):
            found.setdefault(spec, "moe_layer")
    if preset.indexer is not None:
        heads = preset.indexer.heads
        for rows, paged in [(j, True) for j in preset.indexer.next_n] + [(max(1, 128 // heads), False)]:
            stages = kernel_mqa.stages_for(rows, heads, 128, DEVICE.smem_per_block)
            found.setdefault(kernel_mqa.spec(rows, heads, 128, stages, paged, torch.float32, ARCH), "indexer")
    return found


_ragged = {}


def _ragged_memo(*args):
    if args not in _ragged:
        _ragged[args] = runtime_ragged_m(*args)
    return _ragged[args]


@pytest.fixture(scope="module")
def full_plans():
    return {name: {p.spec for p in prewarm.plan_preset(prewarm.load_preset(name))} for name in PRESETS}


# ---- presets ------------------------------------------------------------------------------------
def test_presets_are_packaged_and_parse():
    assert set(prewarm.preset_names()) >= set(PRESETS)
    ds = prewarm.load_preset("deepseek_v3")
    assert ds.recipe == RECIPE_1x128_128x128
    assert (ds.moe.num_experts, ds.moe.top_k, ds.moe.hidden, ds.moe.moe_intermediate) == (256, 8, 7168, 2048)
    assert ds.moe.gemms == (("gate_up", 4096, 7168), ("down", 7168, 2048))
    dense = {g.name: (g.n, g.k) for g in ds.dense}
    assert dense["q_b_proj"] == (128 * 192, 1536) and dense["o_proj"] == (7168, 128 * 128)
    assert dense["qkv_a_proj"] == (1536 + 576, 7168) and dense["kv_b_proj"] == (128 * 256, 512)
    assert ds.indexer == prewarm.IndexerLayer(64, (1, 2), True, True)
    big = prewarm.load_preset("qwen3_235b_a22b")
    assert (big.moe.num_experts, big.moe.top_k, big.moe.hidden, big.moe.moe_intermediate) == (128, 8, 4096, 1536)
    assert {g.name: (g.n, g.k) for g in big.dense}["qkv_proj"] == ((64 + 2 * 4) * 128, 4096)
    small = prewarm.load_preset("qwen3_30b_a3b")
    assert (small.moe.num_experts, small.moe.top_k, small.moe.hidden, small.moe.moe_intermediate) == (128, 8, 2048, 768)
    assert big.indexer is None and small.indexer is None
    for name in PRESETS:
        data = json.loads((prewarm.PRESETS_DIR / f"{name}.json").read_text())
        assert data["_about"] and data["recipe"] == [1, 128, 128]
        preset = prewarm.load_preset(name)
        assert preset.moe.modes == ("per_expert", "per_token", "masked")
        for gemm in preset.dense + tuple(prewarm.DenseGemm(*g) for g in preset.moe.gemms):
            assert gemm.n % 8 == 0 and gemm.k % 128 == 0, gemm


GOOD = {"recipe": [1, 128, 128], "dense": [{"name": "proj", "n": 256, "k": 512}],
        "moe": {"num_experts": 8, "top_k": 2, "hidden": 256, "moe_intermediate": 128}}


@pytest.mark.parametrize("change,message", [
    ({"dense": [{"name": "proj", "n": 256, "k": 500}]}, "dense[0].k = 500: an FP8 GEMM's K must be a multiple of 16"),
    ({"dense": [{"name": "proj", "n": 260, "k": 512}]}, "dense[0].n = 260: an FP8 GEMM's N must be a multiple of 8"),
    ({"dense": [{"name": "proj", "n": 256}]}, "dense[0]: missing field(s) ['k']"),
    ({"recipe": [1, 1, 1]}, "recipe must be one of"),
    ({"moes": {}}, "unknown field(s) ['moes']"),
    ({"moe": {**GOOD["moe"], "top_k": 9}}, "moe.top_k must be at most num_experts (8)"),
    ({"moe": {**GOOD["moe"], "moe_intermediate": 100}}, "moe.moe_intermediate = 100"),
    ({"moe": {**GOOD["moe"], "moe_intermediate": 208}},  # grouped GEMMs: whole 128-K blocks
     "moe.moe_intermediate = 208: an FP8 GEMM's K must be a multiple of 128"),
    ({"moe": {**GOOD["moe"], "modes": ["ragged_k"]}}, "moe.modes must be a non-empty list"),
    ({"indexer": {"heads": 64, "index_dim": 128, "next_n": [5]}}, "indexer.next_n must be"),
    ({"indexer": {"heads": 60, "index_dim": 128, "next_n": [1]}}, "indexer.heads must be a positive integer"),
])
def test_bad_presets_are_refused(tmp_path, change, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**GOOD, **change}))
    with pytest.raises(ValueError) as info:
        prewarm.load_preset(str(path))
    assert str(path) in str(info.value) and message in str(info.value)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="unknown preset 'llama'; presets: deepseek_v3, qwen3_235b_a22b"):
        prewarm.load_preset("llama")


# ---- the plan -----------------------------------------------------------------------------------
@pytest.mark.parametrize("max_tokens", (1, 7, 8, 9, 256, 257, 300, 16384))
def test_dense_runs_partition_the_token_counts(max_tokens):
    runs = prewarm.dense_m_runs(max_tokens)
    assert runs[0][0] == 1 and runs[-1][1] == max_tokens
    assert all(lo <= hi and nxt[0] == hi + 1 for (lo, hi), nxt in zip(runs, runs[1:] + [(max_tokens + 1, 0)]))


@pytest.mark.parametrize("name", PRESETS)
def test_plan_equals_brute_force(name):
    preset = prewarm.load_preset(name)
    planned = prewarm.plan_preset(preset, BRUTE_MAX_TOKENS, ARCH)
    assert len({p.spec for p in planned}) == len(planned)
    assert {p.spec: p.family for p in planned} == brute_force(preset, BRUTE_MAX_TOKENS)


def test_a_run_whose_ends_disagree_is_planned_m_by_m(monkeypatch):
    """Should the heuristic change its pick inside a run of dense_m_runs, the run's ends catch it
    (here at its last M, 320) and every M of the run is asked."""
    n, k = 4096, 7168
    odd = runtime_dense(4096, n, k, RECIPE_1x128_128x128)
    assert odd not in {s for s, _ in prewarm.dense_specs(n, k, RECIPE_1x128_128x128, 320, DEVICE, NUM_MP)}
    real = fp8_gemm.choose
    asked = []

    def choose(problem, device, num_mp, force=""):
        asked.append(problem.m)
        if problem.m == 320:
            problem = GemmProblem(4096, n, k, problem.recipe, problem.a_dtype, problem.b_dtype, problem.out_dtype)
        return real(problem, device, num_mp, force)

    monkeypatch.setattr(fp8_gemm, "choose", choose)
    specs = prewarm.dense_specs(n, k, RECIPE_1x128_128x128, 320, DEVICE, NUM_MP)
    assert (odd, 320) in specs
    assert set(range(257, 321)) <= set(asked) and not set(range(2, 8)) & set(asked)


def token_counts(seed: int, count: int = 24) -> list[int]:
    rng = random.Random(seed)
    return [1, 2, 64, 128, 129, 256, 257, 4096, 16384] + [rng.randint(1, 16384) for _ in range(count)]


@pytest.mark.parametrize("name", PRESETS)
def test_runtime_picks_for_random_token_counts_are_planned(name, full_plans):
    preset = prewarm.load_preset(name)
    layer = preset.moe
    planned = full_plans[name]
    generator = torch.Generator().manual_seed(len(name))
    for m in token_counts(len(name)):
        for gemm in preset.dense:
            for a_scales_tma in (False, True):
                assert runtime_dense(m, gemm.n, gemm.k, preset.recipe, a_scales_tma) in planned, (gemm, m)
        counts = moe.routing_counts(m, layer.num_experts, layer.top_k, generator=generator)
        padded = sum(moe.align(c, layer.alignment_m) for c in counts)
        lo, hi = per_token_bounds(m, layer)
        assert lo <= padded <= hi
        for gemm, n, k in layer.gemms:
            assert runtime_ragged_m("per_expert", sum(counts), n, k, preset.recipe, layer.num_experts) in planned
            for rows in (padded, hi):  # routed and padded, and a workspace sized by the bound
                assert runtime_ragged_m("per_token", rows, n, k, preset.recipe, layer.num_experts) in planned, \
                    (gemm, m, rows)
            expect = -(-m * layer.top_k // layer.num_experts)
            for max_m in (max(counts), 16384, random.Random(m).randint(max(counts), 20000)):
                assert runtime_masked(expect, max_m, n, k, preset.recipe, layer.num_experts) in planned, (gemm, m)


def test_indexer_kernels_are_the_demos():
    planned = [p.spec for p in prewarm.plan_preset(prewarm.load_preset("deepseek_v3"), 1) if p.family == "indexer"]
    demo = [s for s in cli.demo_grouped_specs() if s.kernel == kernel_mqa.KERNEL]
    assert planned == demo and len(planned) == 3


def test_plan_rejects_bad_max_tokens():
    with pytest.raises(ValueError, match="max_tokens must be a positive integer"):
        prewarm.plan_preset(prewarm.load_preset("qwen3_30b_a3b"), 0)


# ---- the command ---------------------------------------------------------------------------------
def mategemm_cmd(cache: Path, *args: str) -> subprocess.CompletedProcess:
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("MATEGEMM_")}
    run_env.update(MATEGEMM_CACHE_DIR=str(cache),
                   PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "mategemm", *args], env=run_env, capture_output=True, text=True,
                          timeout=600, check=False)


def test_jobs_compile_each_kernel_once_then_find_all_cached(tmp_path):
    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps({"_about": "a tiny MoE model", "recipe": [1, 128, 128],
                                  "dense": [{"name": "proj", "n": 512, "k": 256}],
                                  "moe": {"num_experts": 8, "top_k": 2, "hidden": 256, "moe_intermediate": 128}}))
    planned = prewarm.plan_preset(prewarm.load_preset(str(preset)), 16, ARCH)
    assert len(planned) >= 3
    cache = tmp_path / "cache"
    first = mategemm_cmd(cache, "prewarm", "--preset", str(preset), "--max-tokens", "16", "--jobs", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"{len(planned)} kernels for preset tiny: {len(planned)} compiled, 0 already cached" in first.stdout
    assert f"prewarm: {len(planned)}/{len(planned)} kernels" in first.stderr  # the progress line
    entries = [p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")]
    names = sorted(json.loads((p / "meta.json").read_text())["name_expr"] for p in entries)
    assert names == sorted(p.spec.name_expr for p in planned)  # each kernel once
    second = mategemm_cmd(cache, "prewarm", "--preset", str(preset), "--max-tokens", "16", "--jobs", "2")
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{len(planned)} kernels for preset tiny: 0 compiled, {len(planned)} already cached" in second.stdout


def run_main(capsys, *args):
    """cli.main in this process: (exit code, stderr)."""
    try:
        code = cli.main(list(args))
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (("--preset", "llama"), "unknown preset 'llama'; presets: deepseek_v3"),
    (("--preset", "deepseek_v3", "--max-tokens", "0"), "argument --max-tokens: must be a positive integer, got '0'"),
    (("--preset", "deepseek_v3", "--max-tokens", "many"), "argument --max-tokens: must be a positive integer"),
    (("--preset", "deepseek_v3", "--jobs", "0"), "argument --jobs: must be a positive integer"),
    (("--preset", "deepseek_v3", "--shapes", "dense_fp8"), "argument --shapes: not allowed with argument --preset"),
    (("--shapes", "dense_fp8", "--max-tokens", "64"), "--max-tokens applies to --preset only"),
    ((), "one of the arguments --shapes --preset is required"),
])
def test_argument_errors(capsys, monkeypatch, tmp_path, args, message):
    monkeypatch.setenv("MATEGEMM_CACHE_DIR", str(tmp_path / "cache"))
    code, err = run_main(capsys, "prewarm", *args)
    assert code == 2 and message in err, err
    assert not (tmp_path / "cache").exists()  # refused before anything was compiled


def test_bad_preset_file_exit_code(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MATEGEMM_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**GOOD, "dense": [{"name": "proj", "n": 256, "k": 100}]}))
    code, err = run_main(capsys, "prewarm", "--preset", str(path))
    assert code == 2 and "dense[0].k = 100" in err
