#!/usr/bin/env python3
"""Static SASS of DeepGEMM's dense FP8 kernel (sm90_fp8_gemm_1d2d, compiled here with nvcc from a
DeepGEMM tree) beside ours for one shape: opcode counts side by side. No GPU needed.

    python tools/experiments/sass_vs_deepgemm.py DEEPGEMM_TREE [--shape 4096,4096,7168]
        [--deepgemm-config 256,128,128,3,2]   (block m, n, k, stages, A multicast: DeepGEMM's pick)

DEEPGEMM_TREE: an extracted .peers/deepgemm-src.tgz (tools/deepgemm_pack.sh); nvcc on the PATH.
Or, without nvcc, a kernel DeepGEMM compiled on the device (its JIT cache, kept in
.peers/deepgemm-built.tgz: deepgemm-jit/cache/kernel.sm90_fp8_gemm_1d2d.*/kernel.cubin, the
configuration in the kernel.cu beside it):

    python tools/experiments/sass_vs_deepgemm.py --deepgemm-cubin CUBIN --shape 64,2112,7168 [--dump DIR]
"""
import argparse
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mategemm import plan  # noqa: E402
from mategemm.jit.cache import default_cache  # noqa: E402
from mategemm.runtime.device import SM90_NO_DEVICE  # noqa: E402
from mategemm.testing import sass  # noqa: E402
from mategemm.types import RECIPE_1x128_128x128, GemmProblem  # noqa: E402

STUB = """#include <deep_gemm/impls/sm90_fp8_gemm_1d2d.cuh>
using namespace deep_gemm;
static void instantiate() {{
    auto ptr = reinterpret_cast<void*>(&sm90_fp8_gemm_1d2d_impl<cute::UMMA::Major::K, 0, {n}, {k}, 1,
        {bm}, {bn}, {bk}, 128, 128, {swizzle_d}, {stages}, 128, {math}, {multicast}, true, 132, GemmType::Normal,
        cutlass::bfloat16_t, epilogue::transform::EpilogueIdentity>);
}}
"""


def deepgemm_cubin(tree: Path, n: int, k: int, bm: int, bn: int, bk: int, stages: int, multicast: int) -> Path:
    out = Path(tempfile.mkdtemp()) / "deepgemm.cubin"
    source = out.with_suffix(".cu")
    # the output's swizzle: the widest of 128, 64, 32 bytes that a bf16 row of the tile fills (its heuristic)
    swizzle_d = next(s for s in (128, 64, 32, 16) if bn * 2 % s == 0)
    source.write_text(STUB.format(n=n, k=k, bm=bm, bn=bn, bk=bk, stages=stages, math=256 if bm > 64 else 128,
                                  multicast=multicast, swizzle_d=swizzle_d))
    # DeepGEMM's JIT flags (csrc/jit/compiler.hpp)
    subprocess.run(["nvcc", "-cubin", "-arch=sm_90a", "-std=c++20", "-O3", "--expt-relaxed-constexpr",
                    "--expt-extended-lambda", "--diag-suppress=39,161,174,177,186,940",
                    "--ptxas-options=--register-usage-level=10", f"-I{tree / 'deep_gemm' / 'include'}",
                    f"-I{tree / 'third-party' / 'cutlass' / 'include'}", "-o", str(out), str(source)], check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tree", type=Path, nargs="?")
    parser.add_argument("--deepgemm-cubin", type=Path, help="DeepGEMM's kernel as compiled already")
    parser.add_argument("--shape", default="4096,4096,7168")
    parser.add_argument("--deepgemm-config", default="256,128,128,3,2")
    parser.add_argument("--dump", type=Path, help="write both kernels' SASS into this folder")
    args = parser.parse_args()
    m, n, k = (int(v) for v in args.shape.split(","))
    bm, bn, bk, stages, multicast = (int(v) for v in args.deepgemm_config.split(","))
    e4m3 = torch.float8_e4m3fn
    # A's scales given MN-major, as DeepGEMM takes them and tools/bench.py dense_fp8 --scale-major MN
    # passes them: loaded by TMA at every size
    problem = GemmProblem(m, n, k, RECIPE_1x128_128x128, e4m3, e4m3, torch.bfloat16)
    ours_plan = plan.dense(problem, SM90_NO_DEVICE, SM90_NO_DEVICE.num_sms, "", a_scales_tma=True)
    ours_sass = sass.dump_sass(default_cache().get(ours_plan.spec).path / "kernel.cubin")
    if args.deepgemm_cubin is None and args.tree is None:
        parser.error("DEEPGEMM_TREE or --deepgemm-cubin")
    cubin = args.deepgemm_cubin or deepgemm_cubin(args.tree, n, k, bm, bn, bk, stages, multicast)
    theirs_sass = sass.dump_sass(cubin)
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
        (args.dump / "ours.sass").write_text(ours_sass)
        (args.dump / "deepgemm.sass").write_text(theirs_sass)
    ours, theirs = sass.opcodes(ours_sass), sass.opcodes(theirs_sass)
    a, b = collections.Counter(theirs), collections.Counter(ours)
    anchor = args.deepgemm_cubin or f"{bm}x{bn}x{bk}, {stages} stages, multicast {multicast}"
    print(f"{m}x{n}x{k}: DeepGEMM {anchor}; ours {ours_plan.config}")
    print(f"{'opcode':10} {'DeepGEMM':>9} {'ours':>6}")
    for op in sorted(set(a) | set(b), key=lambda o: -(a[o] + b[o])):
        print(f"{op:10} {a[op]:9} {b[op]:6}")
    print(f"{'total':10} {sum(a.values()):9} {sum(b.values()):6}")


if __name__ == "__main__":
    main()
