#!/usr/bin/env python3
"""Patch the FP8 kernel into a lab variant (used by promotion_cost.sh; the source tree is untouched).

    python tools/experiments/promotion_variants.py VARIANT KERNEL_FILE

Variants (several may be joined with '+'):
  double_ffma   every promotion FFMA twice (wrong results on purpose: the cost of issue slots)
  unit_scales   no shared-memory scale loads in the math warps (scales = 1; wrong on purpose)
  no_overlap    the second scratch accumulator off: issue, wait, promote (DeepGEMM's order)
  pingpong      the two math warpgroups take turns issuing their batches
  lane0_empty   one lane per math warp arrives on the empty barrier, after __syncwarp
  lane0_full    one lane of the scale warp arrives on the full barrier, after __syncwarp
  unroll8       the promoted k-block loop unrolled 8 deep (with no_overlap: DeepGEMM's loop shape)
"""
import sys


def patch(text: str, old: str, new: str, count: int = 1) -> str:
    if text.count(old) != count:
        raise SystemExit(f"pattern found {text.count(old)} times, expected {count}: {old!r}")
    return text.replace(old, new)


def apply(variant: str, src: str) -> str:
    if variant == "base":
        return src
    if variant == "double_ffma":
        line = "            for (int c = 0; c < BLOCK_N / 8; ++c) promote_chunk(out + c * 4, part + c * 4, sc.lo[0], sc.hi[0]);\n"
        return patch(src, line, line + line.replace("sc.lo[0], sc.hi[0]", "sc.hi[0], sc.lo[0]"))
    if variant == "unit_scales":
        src = patch(src, "        sc.lo[0] = ld_shared_f32(sf);", "        sc.lo[0] = 1.0f;")
        return patch(src, "        sc.hi[0] = ld_shared_f32(sf + 8 * 4);", "        sc.hi[0] = 1.0f;")
    if variant == "no_overlap":
        return patch(src, "constexpr bool kOverlap = kScaleGranN == 128 && BLOCK_N <= 128 && kWaves == 1 && !kPingPong;",
                     "constexpr bool kOverlap = false;")
    if variant == "pingpong":
        return patch(src, "constexpr bool kPingPongEnabled = false;", "constexpr bool kPingPongEnabled = true;")
    if variant == "lane0_empty":
        src = patch(src, "constexpr int kEmptyArrivals = kNumMathWG * 128 +", "constexpr int kEmptyArrivals = kNumMathWG * 4 +")
        return patch(src, "        mbar_arrive(empty_bar + stage * 8);\n",
                     "        __syncwarp();\n        if (lane == 0) mbar_arrive(empty_bar + stage * 8);\n")
    if variant == "lane0_full":
        src = patch(src, "kScaleAtEnd ? 1 : 1 + 32);", "kScaleAtEnd ? 1 : 1 + 1);")
        return patch(src, "          mbar_arrive(full_bar + stage * 8);  // release",
                     "          __syncwarp();\n          if (lane == 0) mbar_arrive(full_bar + stage * 8);  // release")
    if variant == "unroll8":
        old = ("        for (int kb = 0; kb < num_blocks; ++kb) {\n          const int stage = wait_stage();\n"
               "          #pragma unroll\n          for (int wave = 0; wave < kWaves; ++wave) {\n            BlockScales sc;")
        return patch(src, old, "        #pragma unroll 8\n" + old)
    raise SystemExit(f"unknown variant {variant}")


def main() -> None:
    variants, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        src = f.read()
    for variant in variants.split("+"):
        src = apply(variant, src)
    with open(path, "w") as f:
        f.write(src)


if __name__ == "__main__":
    main()
