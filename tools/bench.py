#!/usr/bin/env python3
"""mategemm against its peers, side by side in one run on one card.

    python tools/bench.py dense_fp8 [--out-dir docs/bench] [--shapes mategemm/shapes/shapes.json]
    python tools/bench.py grouped [--modes contiguous masked k_grouped per_expert moe_layer]
                                    (MoE GEMMs: DeepGEMM's grouped shapes, decode per-expert
                                     counts vs padding, real models' MoE layers)
    python tools/bench.py bmm       (bmm_fp8 in its four recipes vs torch._scaled_mm per batch entry and
                                     torch.bmm in bf16; dense_fp8's shapes as batch 1 in (1,128,128))
    python tools/bench.py indexer   (fp8_paged_mqa_logits, DeepSeek's lightning indexer in decode, over
                                     "paged_mqa_logits": GB/s against the copy bandwidth and DeepGEMM's
                                     anchors, and a plain torch peer)
    python tools/bench.py host      (host overhead per warm call, first call in a new process,
                                     cold NVRTC compile time per kernel)
    python tools/bench.py moe_layer (mategemm.fused_moe on the "moe_layers" models at 1-16384 tokens,
                                     uniform and skewed routing, against the seed's 128-row padded
                                     pipeline and a bf16 torch._grouped_mm pipeline)
    python tools/bench.py mxfp8     (moe_gemm_mxfp8_nt_groupwise at both granularities on the contiguous
                                     shapes and decode-size experts, against our FP8 ragged path and
                                     dequantised bf16 torch._grouped_mm)
    python tools/bench.py nvfp4     (the NVFP4 grouped GEMM on "nvfp4_moe", DeepSeek-V3's and Qwen3's expert
                                     shapes at 1-4096 tokens per active expert, against our FP8 per_expert
                                     GEMM, dequantise-to-bf16 + torch._grouped_mm and bf16 torch._grouped_mm;
                                     the NVFP4 weights' GB/s beside the copy bandwidth)
    python tools/bench.py plot [SUITE ...]   (no GPU: redraw docs/bench/<suite>.png from <suite>.json)
    python tools/bench.py docs      (no GPU: rewrite the generated tables of README.md and
                                     docs/benchmarks.md from docs/bench/*.json)

Before the timing, the kernels of the suite's shipped shape lists are compiled in parallel into the
kernel cache (`mategemm prewarm`; --no-prewarm skips it).

Timing (docs/benchmarks.md): CUDA events around each call, 5 warm-up calls, then
30 timed calls queued behind a ~10 ms GPU sleep, median; input sets rotated so the data touched
exceeds 3x L2. Benchmarks never assert; correctness is reported as calc_diff beside each row.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # mategemm from this checkout when it is not installed

from benchkit.common import SHAPES, require_gpu_or_exit  # noqa: E402
from benchkit.docs_tables import redraw, write_docs  # noqa: E402
from benchkit.grouped_suite import GROUPED_MODES  # noqa: E402
from benchkit.registry import PLOTS, RUNNERS, SUITES, UNMEASURED_SUITES, prewarm_names  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=(*SUITES, *UNMEASURED_SUITES, "plot", "docs"),
                        help="a suite to run on the GPU; or, without a GPU, plot: redraw the plots from the result "
                             "files, docs: rewrite the README's and docs/benchmarks.md's tables from them")
    parser.add_argument("plots", nargs="*", metavar="SUITE", help="plot only: the suites to redraw (default: all)")
    parser.add_argument("--out-dir", default=str(ROOT / "docs" / "bench"))
    parser.add_argument("--shapes", default=str(SHAPES))
    parser.add_argument("--scale-major", choices=("K", "MN"), default="K",
                        help="dense_fp8 only: A's scales K-major (m, k/128) or MN-major (k/128, m), DeepGEMM's "
                             "kernel layout (default K)")
    parser.add_argument("--other-scale-path", action="store_true",
                        help="dense_fp8 only: also time ours with A's scales taken the other way, in turns with the "
                             "rest (K-major: copied MN-major for TMA first, MATEGEMM_FORCE_CONFIG tma_scales=2; MN: "
                             "read by the scale warps, tma_scales=0)")
    parser.add_argument("--modes", nargs="+", choices=GROUPED_MODES, default=list(GROUPED_MODES),
                        help="grouped suite only: the modes to run (default: all)")
    parser.add_argument("--no-prewarm", action="store_true",
                        help="do not compile the suite's kernels in parallel first (`mategemm prewarm`); they are "
                             "then compiled one by one as the rows first call them")
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    if args.plots and (args.suite != "plot" or set(args.plots) - set(PLOTS)):
        parser.error(f"only plot takes suites, one of {', '.join(PLOTS)}")
    if args.suite == "plot":
        redraw(out_dir, args.plots or [s for s in PLOTS if (out_dir / f"{s}.json").exists()])
        return
    if args.suite == "docs":
        write_docs(out_dir)
        return
    require_gpu_or_exit(f"tools/bench.py {args.suite}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_prewarm:
        prewarm(prewarm_names(args.suite, args.modes))
    result = RUNNERS[args.suite](args)
    (out_dir / f"{args.suite}.json").write_text(json.dumps(result, indent=1) + "\n")
    if args.suite in PLOTS:
        PLOTS[args.suite](result, out_dir / f"{args.suite}.png")


def prewarm(names: list[str]) -> None:
    """Compile the kernels of these shipped shape suites into the kernel cache, one worker process per
    CPU core (MATEGEMM_CACHE_DIR and MATEGEMM_FORCE_CONFIG apply as to the run). A failure only warns:
    the run then compiles what is missing as it goes."""
    if not names:
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    done = subprocess.run([sys.executable, "-m", "mategemm", "prewarm", "--shapes", ",".join(names),
                           "--jobs", str(os.cpu_count() or 1)], env=env, capture_output=True, text=True)
    lines = (done.stdout + done.stderr).strip().splitlines()
    print(f"prewarm {','.join(names)}: {lines[-1] if lines else ''}"
          + ("" if done.returncode == 0 else f" (exit {done.returncode}; continuing)"), flush=True)


if __name__ == "__main__":
    main()
