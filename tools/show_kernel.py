"""Show what mategemm runs for one dense FP8 GEMM: config, kernel.cu, cache entry and SASS.

    python tools/show_kernel.py 4096 7168 7168 [--recipe 1,128,128] [--arch sm_90a]

Works without a GPU (compiles for the named arch; nothing is launched).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from mategemm import env, validate
from mategemm.heuristics import fp8_gemm
from mategemm.jit.cache import default_cache
from mategemm.kernels import sm90_fp8_gemm_blockscaled as kernel_fp8
from mategemm.runtime.device import KNOWN_ARCHS, get_num_mp, info_for_arch
from mategemm.testing.sass import dump_sass
from mategemm.types import FP8_DTYPES, OUT_DTYPES, GemmProblem

DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2, "bf16": torch.bfloat16,
          "fp16": torch.float16}


class BadArgument(ValueError):
    """An argument the API would refuse."""


def parse_recipe(text: str) -> tuple[int, int, int]:
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3:
        raise BadArgument(f"--recipe must be three comma-separated ints (gm,gn,gk), got {text!r}")
    return tuple(parts)


def checked_problem(m: int, n: int, k: int, recipe: tuple[int, int, int], a_dtype, b_dtype, out_dtype) -> GemmProblem:
    """The problem as gemm_fp8_nt_groupwise would run it, checked by the API's own rules
    (validate.py) on fake CUDA tensors of these shapes; raises BadArgument naming the rule."""
    for name, value in (("m", m), ("n", n), ("k", k)):
        if value < 1:
            raise BadArgument(f"{name} must be >= 1, got {value}")
    k_blocks = k // 128
    b_scale_rows = -(-n // 128) if recipe[1] == 128 else n
    try:
        # the checks read data pointers: fake tensors have none, and warn
        with FakeTensorMode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = torch.empty((m, k), dtype=a_dtype, device="cuda")
            b = torch.empty((n, k), dtype=b_dtype, device="cuda")
            a_scale = torch.empty((m, k_blocks), device="cuda")
            b_scale = torch.empty((b_scale_rows, k_blocks), device="cuda")
            problem = validate.gemm_fp8_nt_groupwise(a, b, a_scale, b_scale, None, None, recipe, None, out_dtype,
                                                     "auto", None).problem
    except (TypeError, ValueError) as error:
        rule = str(error).replace("scale_granularity_mnk", "scale_granularity_mnk (--recipe)")
        raise BadArgument(f"m={m} n={n} k={k} --recipe {','.join(map(str, recipe))}: {rule}") from None
    return problem


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("m", type=int)
    parser.add_argument("n", type=int)
    parser.add_argument("k", type=int)
    parser.add_argument("--recipe", default="1,128,128", help="gm,gn,gk (the API's scale_granularity_mnk)")
    parser.add_argument("--arch", choices=sorted(KNOWN_ARCHS), default="sm_90a")
    parser.add_argument("--a-dtype", choices=[n for n, d in DTYPES.items() if d in FP8_DTYPES], default="e4m3")
    parser.add_argument("--b-dtype", choices=[n for n, d in DTYPES.items() if d in FP8_DTYPES], default="e4m3")
    parser.add_argument("--out-dtype", choices=[n for n, d in DTYPES.items() if d in OUT_DTYPES], default="bf16")
    parser.add_argument("--no-sass", action="store_true", help="skip the SASS dump")
    args = parser.parse_args(argv)

    try:
        problem = checked_problem(args.m, args.n, args.k, parse_recipe(args.recipe), DTYPES[args.a_dtype],
                                  DTYPES[args.b_dtype], DTYPES[args.out_dtype])
    except BadArgument as error:
        print(f"show_kernel.py: {error}", file=sys.stderr)
        return 2
    device = info_for_arch(args.arch)
    config = fp8_gemm.choose(problem, device, get_num_mp(device), env.force_config())
    spec = kernel_fp8.spec(problem, config, args.arch)
    compiled = default_cache().get(spec)

    print(f"== problem\n{problem}\n== device\n{device}\n== config\n{config}")
    print(f"== instance\n{spec.name_expr}\n   lowered: {compiled.lowered_name}")
    print(f"== cache entry ({'compiled now' if compiled.compiled_here else 'cached'})\n{compiled.path}")
    if compiled.path is None:
        print("(cache not writable: compiled in memory, no kernel.cu / SASS on disk)")
        return 0
    print(f"== kernel.cu\n{(compiled.path / 'kernel.cu').read_text()}")
    if not args.no_sass:
        print(f"== SASS (cuobjdump --dump-sass {compiled.path / 'kernel.cubin'})")
        print(dump_sass(compiled.path / "kernel.cubin"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
