"""Where each warp of a paged indexer call spends its cycles: the kernel, patched with clock()
accounting per math warpgroup (waiting for a block, wgmma, head sums, stores) and per producer warp
(waiting for a free stage, then lane 0 issuing a block's loads), runs on one case (GPU; run from the
repository root with PYTHONPATH=.). Prints per role the mean over CTAs of each part, in us at
1.98 GHz and as a share of the role's time.
`python tools/experiments/indexer_profile.py [batch next_n heads context]` (default 128 1 64 8192)."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from indexer_stamps import MAX_CTAS, apply_patches, patched_call, read_global, run_zeroed  # noqa: E402

RECORDS = 16  # per CTA: math warpgroup w at w (1-4), producer warp p at 8 + p
WORDS = 8
MATH_PARTS = ["wait for block", "wgmma", "head sums", "stores"]
PRODUCER_PARTS = ["wait for stage", "issue loads"]
CLOCK_GHZ = 1.98


def profiled_source() -> str:
    text = Path("kernels_src/sm90_fp8_mqa_logits.cuh").read_text()
    out = "mqa_prof + (blockIdx.x * 16 + {slot}) * 8"
    patches = [
        ("namespace mategemm {\n",
         f'extern "C" __device__ long long mqa_prof[{MAX_CTAS} * {RECORDS} * {WORDS}];\nnamespace mategemm {{\n'),
        # producer warps
        ("      PipelineState<kRingStages> pipe;\n      int t, begin, end, q_loads = 0;\n",
         "      PipelineState<kRingStages> pipe;\n      int t, begin, end, q_loads = 0;\n"
         "      unsigned pp[4] = {0, 0, 0, 0};\n      const unsigned pt0 = clock();\n"),
        ("          mbar_wait(empty_bar + stage * 8, pipe.phase ^ 1);\n",
         "          const unsigned qc0 = clock();\n          mbar_wait(empty_bar + stage * 8, pipe.phase ^ 1);\n"
         "          const unsigned qc1 = clock();\n          pp[0] += qc1 - qc0;\n"),
        ("            tma_load_2d(scales, &tmap_scales, bar, block * kKvBlock, 0);\n          }\n",
         "            tma_load_2d(scales, &tmap_scales, bar, block * kKvBlock, 0);\n          }\n"
         "          pp[1] += clock() - qc1;\n          pp[3] += 1;\n"),
        ("          pp[3] += 1;\n        }\n      }\n    }\n    __syncwarp();",
         "          pp[3] += 1;\n        }\n      }\n      if (lane == 0) {\n"
         f"        long long* o = {out.format(slot='8 + warp')};\n"
         "        o[0] = pp[0]; o[1] = pp[1]; o[4] = pp[3]; o[5] = static_cast<unsigned>(clock()) - pt0;\n"
         "      }\n    }\n    __syncwarp();"),
        # math warpgroups
        ("  float w[kN / 4];  // the weights of this thread's columns: 2 per 8-column chunk\n",
         "  float w[kN / 4];  // the weights of this thread's columns: 2 per 8-column chunk\n"
         "  unsigned prof[5] = {0, 0, 0, 0, 0};\n  const unsigned prof_t0 = clock();\n"),
        ("      const int stage = ring * kRingStages + pipe.stage;\n      mbar_wait(full_bar + stage * 8, pipe.phase);\n",
         "      const int stage = ring * kRingStages + pipe.stage;\n      const unsigned pc0 = clock();\n"
         "      mbar_wait(full_bar + stage * 8, pipe.phase);\n      const unsigned pc1 = clock();\n"
         "      prof[0] += pc1 - pc0;\n"),
        ("      mbar_arrive(empty_bar + stage * 8);\n\n",
         "      mbar_arrive(empty_bar + stage * 8);\n      const unsigned pc2 = clock();\n      prof[1] += pc2 - pc1;\n"),
        ("      // The quad's 2 x kRows values",
         "      const unsigned pc3 = clock();\n      prof[2] += pc3 - pc2;\n      // The quad's 2 x kRows values"),
        ("neg_inf();\n      }\n    }\n  }\n}\n\n}  // namespace mategemm",
         "neg_inf();\n      }\n      prof[3] += clock() - pc3;\n      prof[4] += 1;\n    }\n  }\n"
         "  if (threadIdx.x % 128 == 0) {\n"
         f"    long long* o = {out.format(slot='warpgroup')};\n"
         "    for (int i = 0; i < 5; ++i) o[i] = prof[i];\n    o[5] = static_cast<unsigned>(clock()) - prof_t0;\n  }\n"
         "}\n\n}  // namespace mategemm"),
    ]
    return apply_patches(text, patches, "profiled")


def report(name: str, rows: np.ndarray, parts: list[str]) -> None:
    total = rows[:, 5].astype(float)
    blocks = rows[:, 4].astype(float)
    line = [f"{name}: {total.mean() / CLOCK_GHZ / 1e3:6.2f} us, {blocks.mean():5.1f} blocks"]
    for i, part in enumerate(parts):
        us = rows[:, i].mean() / CLOCK_GHZ / 1e3
        line.append(f"{part} {us:6.2f} us ({rows[:, i].sum() / total.sum():4.0%}, "
                    f"{rows[:, i].sum() / max(blocks.sum(), 1):5.0f} cycles a block)")
    other = total - rows[:, :len(parts)].sum(axis=1)
    line.append(f"other {other.mean() / CLOCK_GHZ / 1e3:6.2f} us ({other.sum() / total.sum():4.0%})")
    print("  " + " | ".join(line), flush=True)


def main(batch: int, next_n: int, heads: int, context: int) -> None:
    call, _, ctas = patched_call(profiled_source(), batch, next_n, heads, context)
    print(f"batch {batch}, next_n {next_n}, {heads} heads, {context} keys, {ctas} CTAs", flush=True)
    for run in range(2):
        run_zeroed(call, "mqa_prof")
        prof = read_global("mqa_prof", MAX_CTAS * RECORDS * WORDS).reshape(MAX_CTAS, RECORDS, WORDS)[:ctas]
        print(f"run {run}:")
        report("math warpgroups", prof[:, 1:5].reshape(-1, WORDS), MATH_PARTS)
        report("producer warps ", prof[:, 8:12].reshape(-1, WORDS), PRODUCER_PARTS)


if __name__ == "__main__":
    main(*(int(v) for v in sys.argv[1:5])) if len(sys.argv) > 1 else main(128, 1, 64, 8192)
