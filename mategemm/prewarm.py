"""Pre-warm planning: shape lists -> the unique kernel specialisations the heuristics would pick.

Pure functions only; the CLI and the tests compile the plan through the kernel cache.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from mategemm.heuristics import fp8_gemm
from mategemm.jit.cache import KernelSpec
from mategemm.kernels import sm90_fp8_gemm_blockscaled as kernel_fp8
from mategemm.runtime.device import info_for_arch
from mategemm.types import RECIPE_1x128_128x128, RECIPE_1x128_1x128, GemmConfig, GemmProblem, Recipe

_CHECKOUT = Path(__file__).resolve().parent.parent
# Searched in order for suite names: the checkout's preset, then the shared benchmark list.
DEFAULT_SHAPE_FILES = (_CHECKOUT / "tools" / "shapes" / "shapes.json",
                       _CHECKOUT.parent / "shared" / "bench" / "shapes.json")
RECIPES = (RECIPE_1x128_128x128, RECIPE_1x128_1x128)


@dataclass(frozen=True)
class PlannedKernel:
    """One kernel to compile and the first problem (of possibly many) that picks it."""

    spec: KernelSpec
    problem: GemmProblem
    config: GemmConfig


def default_shapes_file() -> Path:
    for path in DEFAULT_SHAPE_FILES:
        if path.is_file():
            return path
    raise FileNotFoundError(f"no default shapes file; looked for {', '.join(map(str, DEFAULT_SHAPE_FILES))}")


def read_suites(path: Path | str) -> dict[str, list[tuple[int, int, int]]]:
    """The dense suites of a shapes JSON: {suite: [(m, n, k), ...]}.

    Keys starting with '_' and suites whose rows are not all {m, n, k} dicts are skipped.
    """
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be an object of suite name -> list of shapes")
    suites = {}
    for name, rows in data.items():
        if name.startswith("_") or not isinstance(rows, list) or not rows:
            continue
        if all(isinstance(r, dict) and {"m", "n", "k"} <= r.keys() for r in rows):
            suites[name] = [(int(r["m"]), int(r["n"]), int(r["k"])) for r in rows]
    return suites


def resolve_shapes(shapes: str) -> list[tuple[int, int, int]]:
    """`shapes` is a JSON file (every dense suite in it) or a suite name in the default file."""
    path = Path(shapes)
    if path.is_file():
        suites = read_suites(path)
        if not suites:
            raise ValueError(f"{path} holds no suite of {{m, n, k}} shapes")
        return [shape for rows in suites.values() for shape in rows]
    default = default_shapes_file()
    suites = read_suites(default)
    if shapes not in suites:
        raise ValueError(f"--shapes {shapes!r} is neither a file nor a suite of {default}; "
                         f"suites: {', '.join(sorted(suites))}")
    return suites[shapes]


def plan(shapes: list[tuple[int, int, int]], arch: str, recipes: tuple[Recipe, ...] = RECIPES,
         a_dtype: torch.dtype = torch.float8_e4m3fn, b_dtype: torch.dtype = torch.float8_e4m3fn,
         out_dtype: torch.dtype = torch.bfloat16, num_mp: int | None = None, force: str = "") -> list[PlannedKernel]:
    """The unique kernel specs the heuristics pick for `shapes` x `recipes` on `arch`, in first-seen order.

    num_mp defaults to all SMs of the arch's device; `force` is a MATEGEMM_FORCE_CONFIG string.
    """
    device = info_for_arch(arch)
    num_mp = num_mp or device.num_sms
    planned: dict[KernelSpec, PlannedKernel] = {}
    for m, n, k in shapes:
        for recipe in recipes:
            problem = GemmProblem(m, n, k, recipe, a_dtype, b_dtype, out_dtype)
            config = fp8_gemm.choose(problem, device, num_mp, force)
            spec = kernel_fp8.spec(problem, config, arch)
            planned.setdefault(spec, PlannedKernel(spec, problem, config))
    return list(planned.values())
