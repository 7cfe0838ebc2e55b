"""Pre-warm planning: shape suites or model presets -> the unique kernel specialisations the
heuristics would pick.

Pure functions only (a preset file is read, nothing is written); the CLI and the tests compile
the plan through the kernel cache.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from mategemm import plan, suites, validate
from mategemm.jit.cache import KernelSpec
from mategemm.kernels import sm90_fp8_gemv as kernel_gemv
from mategemm.kernels import sm90_fp8_mqa_logits as kernel_mqa
from mategemm.runtime.device import DeviceInfo, info_for_arch
from mategemm.types import (RECIPE_1x128_128x128, RECIPE_1x128_1x128, RECIPE_PER_ROW, RECIPE_PER_TENSOR, GemmConfig,
                            GemmProblem, Nvfp4Problem, Recipe)

RECIPES = (RECIPE_1x128_128x128, RECIPE_1x128_1x128)


@dataclass(frozen=True)
class PlannedKernel:
    """One kernel to compile and the first problem (of possibly many) that picks it."""

    spec: KernelSpec
    problem: GemmProblem
    config: GemmConfig


# A dense GEMM's A scales as calls may give them: any layout (read by the scale warps), or MN-major
# as TMA reads them (plan.a_scales_tma_readable). Both are planned: each is its own kernel.
DENSE_SCALE_LAYOUTS = (False, True)


def plan_dense(shapes: list[tuple[int, int, int]], arch: str, recipes: tuple[Recipe, ...] = RECIPES,
               a_dtype: torch.dtype = torch.float8_e4m3fn, b_dtype: torch.dtype = torch.float8_e4m3fn,
               out_dtype: torch.dtype = torch.bfloat16, num_mp: int | None = None,
               force: str = "") -> list[PlannedKernel]:
    """The unique kernels of dense GEMMs of `shapes` x `recipes` on `arch`, in first-seen order.

    num_mp: the SM budget (default: as the runtime sees it); `force` a MATEGEMM_FORCE_CONFIG string.
    """
    device = info_for_arch(arch)
    planned: dict[KernelSpec, PlannedKernel] = {}
    for m, n, k in shapes:
        for recipe in recipes:
            problem = GemmProblem(m, n, k, recipe, a_dtype, b_dtype, out_dtype)
            if out_dtype == torch.float8_e4m3fn and not plan.fp8_out_stored(problem):  # bmm's fp32 path, batch 1
                batched = dataclasses.replace(problem, group_mode="batched", num_groups=1)
                gemm_plans = [plan.grouped_gemm(plan.batched_problem(batched, add_c=False), device, num_mp=num_mp,
                                                force=force)]
            else:
                gemm_plans = [plan.dense(problem, device, num_mp, force, a_scales_tma)
                              for a_scales_tma in DENSE_SCALE_LAYOUTS]
            for gemm_plan in gemm_plans:
                planned.setdefault(gemm_plan.spec, PlannedKernel(gemm_plan.spec, gemm_plan.problem, gemm_plan.config))
    return list(planned.values())


# ---- model presets ----------------------------------------------------------------------------
PRESETS_DIR = Path(__file__).resolve().parent / "presets"
DEFAULT_MAX_TOKENS = 16384
MOE_MODES = ("per_expert", "psum_expert", "per_token", "masked")
PRESET_RECIPES = (RECIPE_1x128_128x128, RECIPE_1x128_1x128)
E4M3 = torch.float8_e4m3fn
# NOTES: what the FP8 entry points accept (mategemm.validate): a dense GEMM's K a multiple of 16
# (a tail past the last 128-wide scale block allowed), a grouped GEMM's K a whole number of scale
# blocks, N a multiple of 8 (16-byte output rows for the TMA store).
DENSE_K_MULTIPLE, GROUPED_K_MULTIPLE, FP8_N_MULTIPLE = validate.FP8_K_MULTIPLE, 128, 8


@dataclass(frozen=True)
class DenseGemm:
    """One FP8 linear layer: out (M, n) bf16 = x (M, k) e4m3 . W (n, k)^T, for M tokens."""

    name: str
    n: int
    k: int


@dataclass(frozen=True)
class MoeLayer:
    """The routed experts: gate_up (n = 2 x moe_intermediate, k = hidden), then down (n = hidden,
    k = moe_intermediate), each called in every mode of `modes`; per_token segments start at
    multiples of alignment_m."""

    num_experts: int
    top_k: int
    hidden: int
    moe_intermediate: int
    modes: tuple[str, ...] = ("per_expert", "per_token", "masked")
    alignment_m: int = 128

    @property
    def gemms(self) -> tuple[tuple[str, int, int], ...]:
        """(name, n, k) of the two expert GEMMs."""
        return (("gate_up", 2 * self.moe_intermediate, self.hidden), ("down", self.hidden, self.moe_intermediate))


@dataclass(frozen=True)
class IndexerLayer:
    """DeepSeek-V3.2's lightning indexer: paged decode at each next_n, and the prefill form."""

    heads: int
    next_n: tuple[int, ...]
    paged: bool = True
    prefill: bool = True


@dataclass(frozen=True)
class Preset:
    """A model's FP8 GEMMs (and indexer) as read from mategemm/presets/<name>.json."""

    name: str
    recipe: Recipe
    dense: tuple[DenseGemm, ...]
    moe: MoeLayer | None = None
    indexer: IndexerLayer | None = None


@dataclass(frozen=True)
class KernelUse:
    """One kernel of a plan: its family (dense, bmm, moe, indexer, ...) and the first use that picks it."""

    spec: KernelSpec
    family: str
    use: str


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESETS_DIR.glob("*.json"))


def preset_path(preset: str) -> Path:
    """The file of `preset`: a name in mategemm/presets/, or a path to a preset JSON file."""
    if preset in preset_names():
        return PRESETS_DIR / f"{preset}.json"
    path = Path(preset)
    if path.suffix == ".json" and path.is_file():
        return path
    raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(preset_names())} "
                     f"(or the path of a preset .json file)")


def load_preset(preset: str) -> Preset:
    """Read and check a preset (a name or a JSON path). Raises ValueError naming the file and field."""
    path = preset_path(preset)
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return parse_preset(data, path.stem, str(path))


def parse_preset(data: object, name: str, where: str = "preset") -> Preset:
    """A Preset from its JSON object; keys starting with '_' are comments."""
    from mategemm import validate

    _fields(where, data, ("recipe", "dense"), ("moe", "indexer", "model"))
    recipe_raw = data["recipe"]
    recipes = {(r.gm, r.gn, r.gk): r for r in PRESET_RECIPES}
    if (not isinstance(recipe_raw, list) or not all(type(x) is int for x in recipe_raw)
            or tuple(recipe_raw) not in recipes):
        raise ValueError(f"{where}: recipe must be one of {[list(r) for r in recipes]}, got {recipe_raw!r}")
    if not isinstance(data["dense"], list):
        raise ValueError(f"{where}: dense must be a list of {{name, n, k}}")
    dense = []
    for i, row in enumerate(data["dense"]):
        at = f"{where}: dense[{i}]"
        _fields(at, row, ("name", "n", "k"))
        if not isinstance(row["name"], str) or not row["name"]:
            raise ValueError(f"{at}.name must be a non-empty string")
        dense.append(DenseGemm(row["name"], _fp8_dim(f"{at}.n", row["n"], FP8_N_MULTIPLE, "N"),
                               _fp8_dim(f"{at}.k", row["k"], DENSE_K_MULTIPLE, "K")))
    moe = None
    if data.get("moe") is not None:
        at = f"{where}: moe"
        raw = _fields(at, data["moe"], ("num_experts", "top_k", "hidden", "moe_intermediate"),
                      ("modes", "alignment_m"))
        experts = _int(f"{at}.num_experts", raw["num_experts"])
        if experts > validate.MAX_GROUPS:
            raise ValueError(f"{at}.num_experts must be at most {validate.MAX_GROUPS}, got {experts}")
        top_k = _int(f"{at}.top_k", raw["top_k"])
        if top_k > experts:
            raise ValueError(f"{at}.top_k must be at most num_experts ({experts}), got {top_k}")
        # hidden is gate_up's K and down's N; moe_intermediate is down's K (gate_up's N is twice it)
        hidden = _fp8_dim(f"{at}.hidden", raw["hidden"], GROUPED_K_MULTIPLE, "K")
        inter = _fp8_dim(f"{at}.moe_intermediate", raw["moe_intermediate"], GROUPED_K_MULTIPLE, "K")
        modes = raw.get("modes", list(MoeLayer.modes))
        if not isinstance(modes, list) or not modes or any(m not in MOE_MODES for m in modes):
            raise ValueError(f"{at}.modes must be a non-empty list of {MOE_MODES}, got {modes!r}")
        alignment = raw.get("alignment_m", 128)
        if type(alignment) is not int or alignment not in (128, 256):
            raise ValueError(f"{at}.alignment_m must be 128 or 256 (per_token segment alignment), got {alignment!r}")
        moe = MoeLayer(experts, top_k, hidden, inter, tuple(dict.fromkeys(modes)), alignment)
    layer = None
    if data.get("indexer") is not None:
        at = f"{where}: indexer"
        raw = _fields(at, data["indexer"], ("heads", "index_dim", "next_n"), ("paged", "prefill"))
        if raw["index_dim"] != kernel_mqa.INDEX_DIM:
            raise ValueError(f"{at}.index_dim must be {kernel_mqa.INDEX_DIM}, got {raw['index_dim']!r}")
        heads = _int(f"{at}.heads", raw["heads"], multiple=kernel_mqa.HEADS_MULTIPLE)
        next_n = raw["next_n"]
        if (not isinstance(next_n, list) or not next_n
                or any(type(j) is not int or not 1 <= j <= kernel_mqa.MAX_NEXT_N for j in next_n)):
            raise ValueError(f"{at}.next_n must be a non-empty list of ints in [1, {kernel_mqa.MAX_NEXT_N}], "
                             f"got {next_n!r}")
        if max(next_n) * heads > kernel_mqa.MAX_TILE_HEADS:
            raise ValueError(f"{at}: next_n x heads must be at most {kernel_mqa.MAX_TILE_HEADS}, "
                             f"got {max(next_n)} x {heads}")
        flags = {key: raw.get(key, True) for key in ("paged", "prefill")}
        for key, value in flags.items():
            if not isinstance(value, bool):
                raise ValueError(f"{at}.{key} must be true or false, got {value!r}")
        layer = IndexerLayer(heads, tuple(sorted(set(next_n))), flags["paged"], flags["prefill"])
    return Preset(name, recipes[tuple(recipe_raw)], tuple(dense), moe, layer)


def _fields(where: str, obj: object, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be a JSON object")
    unknown = sorted(key for key in obj if not key.startswith("_") and key not in required + optional)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; expected {list(required + optional)}")
    missing = [key for key in required if key not in obj]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    return obj


def _int(where: str, value: object, multiple: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % multiple:
        rule = f" and a multiple of {multiple}" if multiple > 1 else ""
        raise ValueError(f"{where} must be a positive integer{rule}, got {value!r}")
    return value


def _fp8_dim(where: str, value: object, multiple: int, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0 and value % multiple:
        raise ValueError(f"{where} = {value}: an FP8 GEMM's {what} must be a multiple of {multiple}; list the layer "
                         f"as the library would run it (padded) or leave it out and say so in _about")
    return _int(where, value, multiple)


def plan_preset(preset: Preset, max_tokens: int = DEFAULT_MAX_TOKENS, arch: str = "sm_90a",
                num_mp: int | None = None, force: str = "",
                activations: tuple[str, ...] = ("silu",)) -> list[KernelUse]:
    """Every kernel a call with 1..max_tokens tokens can pick for the preset's GEMMs (and its indexer)
    on `arch`, each once, in first-use order (dense layers, experts, the fused MoE layer's own
    kernels for `activations` and either input dtype, indexer).

    num_mp defaults to the SM budget as the runtime sees it; `force` is a MATEGEMM_FORCE_CONFIG
    string. Raises ValueError for max_tokens < 1 and for forced values that fit no tile.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    device = info_for_arch(arch)
    planned: dict[KernelSpec, KernelUse] = {}
    for gemm in preset.dense:
        for spec, m in dense_specs(gemm.n, gemm.k, preset.recipe, max_tokens, device, num_mp, force):
            planned.setdefault(spec, KernelUse(spec, "dense", f"{gemm.name} n={gemm.n} k={gemm.k} M={m}"))
    if preset.moe is not None:
        for spec, use in moe_specs(preset.moe, preset.recipe, max_tokens, device, num_mp, force):
            planned.setdefault(spec, KernelUse(spec, "moe", use))
        for input_fp8 in (False, True):  # fused_moe: its GEMMs are the per_expert ones above
            for activation in activations:
                for ids_64bit in (False, True):
                    use = f"fused_moe {activation} {'fp8' if input_fp8 else 'bf16'} input"
                    for spec in plan.moe_layer_kernels(input_fp8, activation, ids_64bit, device):
                        planned.setdefault(spec, KernelUse(spec, "moe_layer", use))
        for activation in activations:
            for spec, use in layer_gemm1_specs(preset.moe, activation, max_tokens, device, num_mp, force):
                planned.setdefault(spec, KernelUse(spec, "moe_layer", use))
    if preset.indexer is not None:
        for spec, use in indexer_specs(preset.indexer, device):
            planned.setdefault(spec, KernelUse(spec, "indexer", use))
    return list(planned.values())


def dense_m_runs(max_tokens: int) -> list[tuple[int, int]]:
    """Token counts 1..max_tokens cut into runs [lo, hi] over which fp8_gemm.choose keeps its pick.

    NOTES: choose sees M only through ceil(M / 8) up to 256 rows (the A rows a tile loads,
    min(BLOCK_M, ceil(M / 8) x 8), and the M <= 128 rules) and through ceil(M / BLOCK_M) for
    BLOCK_M 64, 128 and 256 (tile counts, cluster parity, split-K fits), which above 256 rows are
    all functions of ceil(M / 64). So runs of 8 rows up to 256 and of 64 above: 288 choices for
    16384 tokens instead of 16384. dense_specs still checks both ends of every run.
    """
    runs, lo = [], 1
    while lo <= max_tokens:
        step = 8 if lo <= 256 else 64
        hi = min(max_tokens, -(-lo // step) * step)
        runs.append((lo, hi))
        lo = hi + 1
    return runs


def dense_specs(n: int, k: int, recipe: Recipe, max_tokens: int, device: DeviceInfo, num_mp: int | None = None,
                force: str = "") -> list[tuple[KernelSpec, int]]:
    """(spec, M) for every M in 1..max_tokens whose pick differs from M - 1's, for a dense (n, k),
    with A's scales given either way (DENSE_SCALE_LAYOUTS): one choice per run of dense_m_runs,
    every M of a run whose two ends disagree."""
    out: list[tuple[KernelSpec, int]] = []
    for m in range(1, min(max_tokens, kernel_gemv.MAX_ROWS) + 1):  # the GEMV where the call takes it
        gemv_plan = plan.dense_gemv(GemmProblem(m, n, k, recipe, E4M3, E4M3, torch.bfloat16), device, force)
        if gemv_plan is not None:
            out.append((gemv_plan.spec, m))
    for a_scales_tma in DENSE_SCALE_LAYOUTS:
        def pick(m: int) -> KernelSpec:
            return plan.dense(GemmProblem(m, n, k, recipe, E4M3, E4M3, torch.bfloat16), device, num_mp, force,
                              a_scales_tma).spec

        last_spec = None
        for lo, hi in dense_m_runs(max_tokens):
            first, last = pick(lo), pick(hi)
            ms = [lo] if first == last else range(lo, hi + 1)
            for m in ms:
                spec = first if m == lo else pick(m)
                if spec != last_spec:
                    out.append((spec, m))
                    last_spec = spec
    return out


def moe_rows_per_expert_runs(max_tokens: int, num_experts: int, top_k: int) -> list[tuple[int, int, int]]:
    """(r, lo, hi): the token counts M in [lo, hi] whose average rows per expert, ceil(M x top_k /
    num_experts) as ragged_m_moe_gemm_8bit computes it for packed rows, is r."""
    runs = []
    for r in range(1, -(-max_tokens * top_k // num_experts) + 1):
        lo, hi = (r - 1) * num_experts // top_k + 1, min(max_tokens, r * num_experts // top_k)
        if lo <= hi:
            runs.append((r, lo, hi))
    return runs


def per_token_rows(max_tokens: int, num_experts: int, top_k: int, alignment: int) -> list[int]:
    """Every row count of A a per_token call with 1..max_tokens tokens can have, ascending.

    For M tokens (T = M x top_k routed rows) the padded rows are a multiple of `alignment` between
    max(align(T), top_k x alignment) (every one of >= top_k experts with tokens pads to a whole
    segment) and align(T + num_experts x (alignment - 1)): the bound a server sizes its workspace
    with when the counts stay on the GPU (vLLM's compute_aligned_M), which also bounds any routing.
    """
    intervals = [per_token_row_bounds(m, num_experts, top_k, alignment) for m in range(1, max_tokens + 1)]
    rows: list[int] = []
    for lo, hi in sorted(intervals):
        start = lo if not rows else max(lo, rows[-1] + alignment)
        rows.extend(range(start, hi + 1, alignment))
    return rows


def per_token_row_bounds(tokens: int, num_experts: int, top_k: int, alignment: int) -> tuple[int, int]:
    """The fewest and most padded rows `tokens` tokens can take in per_token segments (see per_token_rows)."""
    def align(x: int) -> int:
        return -(-x // alignment) * alignment

    routed = tokens * top_k
    return max(align(routed), top_k * alignment), align(routed + num_experts * (alignment - 1))


def moe_specs(moe: MoeLayer, recipe: Recipe, max_tokens: int, device: DeviceInfo, num_mp: int | None = None,
              force: str = "") -> list[tuple[KernelSpec, str]]:
    """(spec, use) of the expert GEMMs in each mode, for 1..max_tokens tokens, as the runtime
    (mategemm.moe) picks them: rows per expert = ceil(rows of A / experts) for ragged M, the
    expect_tokens hint ceil(M x top_k / experts) for masked (max_m = max_tokens: room for any
    routing; it changes only the grid size, not the kernel)."""
    experts, top_k = moe.num_experts, moe.top_k
    out: list[tuple[KernelSpec, str]] = []
    for name, n, k in moe.gemms:
        def pick(mode: str, rows: int, expect_tokens: int | None = None, alignment_m: int = 0, max_m: int = 0,
                 n: int = n, k: int = k) -> KernelSpec:
            problem = GemmProblem(rows, n, k, recipe, E4M3, E4M3, torch.bfloat16, mode, experts)
            return plan.grouped_gemm(problem, device, num_mp=num_mp, alignment_m=alignment_m, max_m=max_m,
                                     expect_tokens=expect_tokens, force=force).spec

        for mode in moe.modes:
            use = f"{name} {mode} n={n} k={k}"
            if mode in ("per_expert", "psum_expert"):
                # packed: A holds exactly the M x top_k routed rows
                for r, lo, hi in moe_rows_per_expert_runs(max_tokens, experts, top_k):
                    first, last = pick(mode, lo * top_k), pick(mode, hi * top_k)
                    ms = [lo] if first == last else range(lo, hi + 1)
                    out += [(first if m == lo else pick(mode, m * top_k), f"{use} M={m}") for m in ms]
            elif mode == "per_token":
                for rows in per_token_rows(max_tokens, experts, top_k, moe.alignment_m):
                    out.append((pick(mode, rows, alignment_m=moe.alignment_m), f"{use} rows={rows}"))
            else:  # masked: A (experts, max_m, k)
                for r, lo, _ in moe_rows_per_expert_runs(max_tokens, experts, top_k):
                    out.append((pick(mode, experts * max_tokens, r, max_m=max_tokens),
                                f"{use} M={lo} expect_tokens={r}"))
    return out


def layer_gemm1_specs(moe: MoeLayer, activation: str, max_tokens: int, device: DeviceInfo,
                      num_mp: int | None = None, force: str = "") -> list[tuple[KernelSpec, str]]:
    """(spec, use) of the fused MoE layer's first GEMM where it is not the per_expert GEMM of
    moe_specs: the gated GEMM (plan.moe_gated_gemm_wanted) and A's rows gathered
    (plan.moe_gather_a_wanted), for either input dtype, router weights on the input or not, and
    1..max_tokens tokens, as the layer plans it."""
    def pick(tokens: int, input_fp8: bool, weight_input: bool) -> tuple[KernelSpec, str] | None:
        gated = plan.moe_gated_gemm_wanted(tokens, force)
        quantize_first = plan.moe_quantize_first(input_fp8, tokens, moe.top_k, force)
        gather = plan.moe_gather_a_wanted(input_fp8, quantize_first, weight_input, force)
        if not (gated or gather):
            return None
        gemm_plan = plan.moe_gemm1(tokens * moe.top_k, moe.moe_intermediate, moe.hidden, moe.num_experts, device,
                                   activation=activation if gated else None, gather_a=gather, num_mp=num_mp,
                                   force=force)
        kind = " ".join(name for name, on in (("gated", gated), ("gathered", gather)) if on)
        return gemm_plan.spec, (f"fused_moe {activation} {'fp8' if input_fp8 else 'bf16'} input {kind} GEMM1 "
                                f"n={moe.moe_intermediate} k={moe.hidden} M={tokens}")

    out: list[tuple[KernelSpec, str]] = []
    for input_fp8, weight_input in ((False, False), (True, False), (True, True)):
        for _, lo, hi in moe_rows_per_expert_runs(max_tokens, moe.num_experts, moe.top_k):
            first, last = pick(lo, input_fp8, weight_input), pick(hi, input_fp8, weight_input)
            if first is not None and last is not None and first[0] == last[0]:
                out.append(first)  # the same kernel at both ends: at every M between (the rules are monotone)
            else:
                out += [p for p in (pick(m, input_fp8, weight_input) for m in range(lo, hi + 1)) if p is not None]
    return out


INDEXER_LOGITS = torch.float32  # the indexer's default logits_dtype


def indexer_specs(layer: IndexerLayer, device: DeviceInfo) -> list[tuple[KernelSpec, str]]:
    """(spec, use) of the MQA-logits kernels mategemm.indexer launches: the paged decode kernel per
    next_n and the prefill kernel (float32 logits)."""
    out = []
    forms = [(j, True) for j in layer.next_n] if layer.paged else []
    if layer.prefill:
        forms.append((plan.mqa_prefill_rows(layer.heads), False))
    for rows, paged in forms:
        what = f"paged next_n={rows}" if paged else f"prefill rows={rows}"
        mqa_plan = plan.mqa_logits(rows, layer.heads, kernel_mqa.INDEX_DIM, paged, INDEXER_LOGITS, device)
        out.append((mqa_plan.spec, f"{what} heads={layer.heads}"))
    return out


# ---- shape suites -----------------------------------------------------------------------------
BMM_RECIPES = (RECIPE_PER_TENSOR, RECIPE_PER_ROW, RECIPE_1x128_128x128, RECIPE_1x128_1x128)
BF16 = torch.bfloat16
PER_TOKEN_ALIGNMENT = 128  # DeepGEMM's contiguous layout


def plan_suites(suite_list: list[suites.Suite], arch: str, num_mp: int | None = None,
                force: str = "") -> list[KernelUse]:
    """Every kernel the calls of the suites pick on `arch` (what tools/bench.py runs as mategemm,
    without its forced-config variants), each once, in first-use order. num_mp: the SM budget
    (default: as the runtime sees it); `force` a MATEGEMM_FORCE_CONFIG string."""
    device = info_for_arch(arch)
    planned: dict[KernelSpec, KernelUse] = {}
    for suite in suite_list:
        planner = SUITE_PLANNERS[suite.kind]
        for i, row in enumerate(suite.rows):
            for spec, family, use in planner(row, device, num_mp, force):
                planned.setdefault(spec, KernelUse(spec, family, f"{suite.name}[{i}] {use}"))
    return list(planned.values())


def _dense_suite(row, device, num_mp, force):
    """The GEMM for either A scale layout, and the GEMV where the call takes it."""
    m, n, k = row["m"], row["n"], row["k"]
    for recipe in RECIPES:
        problem = GemmProblem(m, n, k, recipe, E4M3, E4M3, BF16)
        for a_scales_tma in DENSE_SCALE_LAYOUTS:
            gemm_plan = plan.dense(problem, device, num_mp, force, a_scales_tma)
            layout = " A scales by TMA" if gemm_plan.problem.tma_scales else ""
            yield gemm_plan.spec, "dense", f"m={m} n={n} k={k} {recipe.name}{layout}"
        gemv_plan = plan.dense_gemv(problem, device, force)
        if gemv_plan is not None:
            yield gemv_plan.spec, "dense", f"m={m} n={n} k={k} {recipe.name} GEMV"


def _bmm_suite(row, device, num_mp, force):
    """bmm_fp8 (bf16 out) in each recipe (per-tensor and per-row run as per-row), bmm_fp16 in both dtypes."""
    batch, m, n, k = row["batch"], row["m"], row["n"], row["k"]
    shape = f"batch={batch} m={m} n={n} k={k}"
    called = [(GemmProblem(m, n, k, recipe, E4M3, E4M3, BF16, "batched", batch), f"bmm_fp8 {recipe.name}")
              for recipe in BMM_RECIPES]
    called += [(GemmProblem(m, n, k, RECIPE_PER_ROW, dtype, dtype, dtype, "batched", batch), f"bmm_fp16 {dtype}")
               for dtype in (torch.bfloat16, torch.float16)]
    for problem, call in called:
        problem = plan.batched_problem(problem, add_c=False)
        yield plan.grouped_gemm(problem, device, num_mp=num_mp, force=force).spec, "bmm", f"{shape} {call}"


def _contiguous_suite(row, device, num_mp, force):
    """per_token ids with 128-row segments, for every padded size the drawn group sizes can give."""
    groups, n, k = row["groups"], row["n"], row["k"]
    low, high = (-(-size // PER_TOKEN_ALIGNMENT) * PER_TOKEN_ALIGNMENT
                 for size in suites.group_size_range(row["m_per_group"]))
    for rows in range(max(PER_TOKEN_ALIGNMENT, groups * low), groups * high + 1, PER_TOKEN_ALIGNMENT):
        problem = GemmProblem(rows, n, k, RECIPE_1x128_128x128, E4M3, E4M3, BF16, "per_token", groups)
        gemm_plan = plan.grouped_gemm(problem, device, num_mp=num_mp, alignment_m=PER_TOKEN_ALIGNMENT, force=force)
        yield gemm_plan.spec, "moe", f"per_token rows={rows} n={n} k={k}"


def _masked_suite(row, device, num_mp, force):
    groups, m, n, k = row["groups"], row["m_per_group"], row["n"], row["k"]
    problem = GemmProblem(groups * m, n, k, RECIPE_1x128_128x128, E4M3, E4M3, BF16, "masked", groups)
    gemm_plan = plan.grouped_gemm(problem, device, num_mp=num_mp, max_m=m, expect_tokens=m, force=force)
    yield gemm_plan.spec, "moe", f"masked groups={groups} max_m={m} n={n} k={k}"


def _k_grouped_suite(row, device, num_mp, force):
    """ragged_k for every sum of the drawn K sizes (each aligned to 128), with K-major operands and
    with M/N-major ones (transposed in the kernel, or copied K-major by transpose_8bit first); the
    scales as the kernel's bulk copies read them, and any others."""
    from mategemm.kernels import transpose_8bit

    groups, m, n = row["groups"], row["m"], row["n"]
    low, high = (-(-size // 128) * 128 for size in suites.group_size_range(row["k_per_group"]))
    for sum_k in range(max(128, groups * low), groups * high + 1, 128):
        problem = GemmProblem(m, n, sum_k, RECIPE_1x128_1x128, E4M3, E4M3, torch.float32, "ragged_k", groups)
        shape = f"ragged_k sum_k={sum_k} m={m} n={n}"
        for bulk in (True, False):
            yield (plan.grouped_gemm(problem, device, num_mp=num_mp, force=force, a_scales_tma=bulk).spec, "moe",
                   shape)
        # M/N-major: a (sum_k, m) and b (sum_k, n) row-major, TMA-readable with 16-byte rows
        a, b = (plan.Operand(copy=True, mn_readable=rows % 16 == 0, mn_bytes=sum_k * rows) for rows in (m, n))
        staged, a_how, b_how = plan.staging(problem, a, b, force)
        for bulk in (True, False):
            yield (plan.grouped_gemm(staged, device, num_mp=num_mp, force=force, a_scales_tma=bulk).spec, "moe",
                   f"{shape} MN-major")
        for rows, how in ((m, a_how), (n, b_how)):
            if how == plan.COPY:  # the copy reads 16-byte vectors where the MN-major rows allow
                yield transpose_8bit.spec(rows % 16 == 0, device.arch), "transpose", f"{shape} MN-major copy"


def _indexer_suite(row, device, num_mp, force):
    layer = IndexerLayer(row["heads"], (row["next_n"],), paged=True, prefill=False)
    for spec, use in indexer_specs(layer, device):
        yield spec, "indexer", use


def _moe_layers_suite(row, device, num_mp, force):
    """A model's two expert GEMMs at each token count: token-packed (per_expert) rows, and every
    padded size of per_token segments that the routing can give."""
    experts, top_k = row["experts"], row["topk"]
    layer = MoeLayer(experts, top_k, row["hidden"], row["intermediate"])
    for name, n, k in layer.gemms:
        for tokens in row["tokens"]:
            use = f"{row['model']} {name} n={n} k={k} tokens={tokens}"
            problem = GemmProblem(tokens * top_k, n, k, RECIPE_1x128_128x128, E4M3, E4M3, BF16, "per_expert", experts)
            yield plan.grouped_gemm(problem, device, num_mp=num_mp, force=force).spec, "moe", f"{use} per_expert"
            low, high = per_token_row_bounds(tokens, experts, top_k, PER_TOKEN_ALIGNMENT)
            for rows in range(low, high + 1, PER_TOKEN_ALIGNMENT):
                problem = GemmProblem(rows, n, k, RECIPE_1x128_128x128, E4M3, E4M3, BF16, "per_token", experts)
                gemm_plan = plan.grouped_gemm(problem, device, num_mp=num_mp, alignment_m=PER_TOKEN_ALIGNMENT,
                                              force=force)
                yield gemm_plan.spec, "moe", f"{use} per_token rows={rows}"


def _nvfp4_suite(row, device, num_mp, force):
    """The NVFP4 grouped GEMM of `active_experts` token-packed groups of `tokens_per_expert` rows, its
    count given on the host or on the GPU (the same kernel); and the FP8 per_expert GEMM of the same
    shape it is compared with, where K is a whole number of 128-wide scale blocks."""
    groups, tokens, n, k = row["active_experts"], row["tokens_per_expert"], row["n"], row["k"]
    shape = f"groups={groups} tokens_per_expert={tokens} n={n} k={k}"
    for active in (groups, None):
        problem = Nvfp4Problem(groups * tokens, n, k, groups, groups, BF16, active)
        for spec in plan.nvfp4_grouped(problem, device, num_mp, force).specs:
            yield spec, "nvfp4", f"{shape} nvfp4"
    if k % GROUPED_K_MULTIPLE == 0:
        problem = GemmProblem(groups * tokens, n, k, RECIPE_1x128_128x128, E4M3, E4M3, BF16, "per_expert", groups)
        yield plan.grouped_gemm(problem, device, num_mp=num_mp, force=force).spec, "moe", f"{shape} fp8 per_expert"


SUITE_PLANNERS = {"dense": _dense_suite, "bmm": _bmm_suite, "contiguous": _contiguous_suite,
                  "masked": _masked_suite, "k_grouped": _k_grouped_suite, "indexer": _indexer_suite,
                  "moe_layers": _moe_layers_suite, "nvfp4": _nvfp4_suite}
