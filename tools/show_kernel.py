"""Show what mategemm runs for one dense FP8 GEMM: config, kernel.cu, cache entry and SASS.

    python tools/show_kernel.py 4096 7168 7168 [--recipe 1,128,128] [--arch sm_90a]

Works without a GPU (compiles for the named arch; nothing is launched).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from mategemm import env
from mategemm.heuristics import fp8_gemm
from mategemm.jit.cache import default_cache
from mategemm.kernels import sm90_fp8_gemm_blockscaled as kernel_fp8
from mategemm.runtime.device import get_num_mp, info_for_arch
from mategemm.testing.sass import dump_sass
from mategemm.types import FP8_CODES, OUT_CODES, GemmProblem, Recipe

DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2, "bf16": torch.bfloat16,
          "fp16": torch.float16}


def parse_recipe(text: str) -> Recipe:
    parts = [int(p) for p in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"--recipe must be three comma-separated ints, got {text!r}")
    return Recipe(*parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("m", type=int)
    parser.add_argument("n", type=int)
    parser.add_argument("k", type=int)
    parser.add_argument("--recipe", type=parse_recipe, default=Recipe(1, 128, 128), help="gm,gn,gk")
    parser.add_argument("--arch", default="sm_90a")
    parser.add_argument("--a-dtype", choices=[n for n, d in DTYPES.items() if d in FP8_CODES], default="e4m3")
    parser.add_argument("--b-dtype", choices=[n for n, d in DTYPES.items() if d in FP8_CODES], default="e4m3")
    parser.add_argument("--out-dtype", choices=[n for n, d in DTYPES.items() if d in OUT_CODES], default="bf16")
    parser.add_argument("--no-sass", action="store_true", help="skip the SASS dump")
    args = parser.parse_args(argv)

    problem = GemmProblem(args.m, args.n, args.k, args.recipe, DTYPES[args.a_dtype], DTYPES[args.b_dtype],
                          DTYPES[args.out_dtype])
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
