#!/usr/bin/env python3
"""Patch the GEMM core into a lab variant (used by promotion_cost.sh on a copy of the tree).

    python tools/experiments/gemm_variants.py VARIANT TREE

Variants (several may be joined with '+'):
  double_ffma   every promotion FFMA twice (wrong results on purpose: the cost of issue slots)
  unit_scales   no shared-memory scale loads in the math warps (scales = 1; wrong on purpose)
  no_overlap    the second scratch accumulator off: issue, wait, promote (DeepGEMM's order); in one
                instance: MATEGEMM_FORCE_CONFIG overlap=0
  lane0_empty   one lane per math warp arrives on the empty barrier, after __syncwarp
  lane0_full    one lane of the scale warp arrives on the full barrier, after __syncwarp
  const_nk      N and K compiled in as constants for dense block-scaled calls (DeepGEMM's compiled_dims
                "nk"): constant loop bounds and tile counts, one kernel per (N, K)
  clusters_large dense GEMMs of at least 1024 rows and more than one wave run as 2-CTA clusters,
                DeepGEMM's picks there: 256-row tiles in N-block pairs sharing A (cluster_n 2), 128-row
                ones in M-block pairs sharing B (4096x2112x7168: 128x192 cluster_m 2). The H200 sweep of
                2026-11-28 had the best pair 1-4% behind the tile alone, before A's scales by TMA and
                the main-loop changes. Measured (H100, 8 shapes, 2 rounds): 1-5% slower, geomean
                against DeepGEMM 0.957 / 0.953 against 0.976 / 0.976
  cluster_own_loads a cluster pair's CTAs each load their whole tiles themselves (two boxes of half the
                rows, no multicast) and release stages to their own producer only: the pair is launched
                and walks the tiles as with multicast, but nothing couples the two rings. With forced
                clusters (MATEGEMM_FORCE_CONFIG cluster_m=2 or cluster_n=2) beside base's, it splits
                the clusters' loss (4096x2112x7168 at 128x192: 1261 TFLOPS alone, 1191 with cluster_m 2,
                DeepGEMM's pick, where DeepGEMM gains) into the launch and walk of pairs (this variant)
                and the coupled rings with shared loads (base)
  cluster_leader_loads the shared tile loaded whole by the pair's rank-0 CTA into both (DeepGEMM's SM90
                multicast: its rank 1 issues no load of that operand), instead of half by each CTA
  no_sfa_tma    A's scales not loaded by the producer (wrong results on purpose): what the scale box
                of each stage costs. H100, live DeepGEMM, 2 passes: 128x2112x7168 271 -> 281 TFLOPS
                (+3.5%), 64x2112x7168, 128x4096x7168, 64x7168x16384 and 4096x7168x2048 level
  end_wait_read the math warpgroups' last wait before the CTA exits only for their stores to leave
                shared memory (CUTLASS's store tail), not for the writes to complete
  end_no_wait   no wait there at all (DeepGEMM's kernels). Both from an Nsight Compute reading of
                128x2112x7168 (stall samples after the main loop 57 ours / 23 DeepGEMM's); H100, 7
                decode and short-K rows, 2 passes: both level within 0.6% (the samples were not time)
  fast_moe_act  (patches/fast_moe_act.diff; the fused MoE layer's kernels, not the GEMM core) the
                gated activation's sigmoid from the approximate exp2 and reciprocal, the 1x128
                quantisation as values x (448 / amax) instead of divided by the scale (an e4m3
                value moves only at an exact tie: 11 of 25.6M on random data), and the activation's
                (row, group) walk stepped without a 64-bit division per item. SASS: the activation's
                loop 295 -> 174 instructions per warp and 128 columns, the bf16 permute's 565 -> 421;
                the activation kernel looked issue-bound (~290 instructions x 786K items at 16384
                tokens of Qwen3-30B-A3B: ~250 us of issue, 263 us measured). Measured with
                layer_mn_scales (H100, 2 rounds): activation 267 -> 183 us, layer -4% at 4096 and
                16384 tokens, but swigluoai's reference check and the gated GEMM's bit equality with
                the activation kernel under the scale warps (swigluoai, swiglustep) fail
  layer_mn_scales (patches/layer_mn_scales.diff, on top of fast_moe_act) the fused layer's FP8 rows'
                scales written MN-major (rows rounded up to 4), as the GEMMs' TMA reads them: no copy
                of A's scales before GEMM1 and GEMM2 where they load them by TMA (13 us at 16384
                tokens of Qwen3-30B-A3B on the H100); the permute and activation kernels take a
                stride per scale group
  nvfp4_feed_only the NVFP4 grouped GEMM's producer loads each stage and the decoding warps arrive
                without decoding (the wgmma read stale tiles): the feed's and the barriers' pace alone
  nvfp4_decode_only the decoding warps decode whatever the staging area holds, the producer arrives on
                each stage without loading it: the decode's and the barriers' pace alone. A decode
                stage took ~1140 cycles (H100, 1-4 tokens per expert) and a deeper ring of packed
                bytes did not shorten it; these two say which half sets the pace
  desc32        (patches/desc32.diff) wgmma descriptors advanced by a 32-bit add (the address field
                never carries into the high word): SASS per 8 k-blocks at 256x128, grouped modes
                2039 -> 1868 instructions between the first and last wgmma, dense 1519 -> 1575
                (measured before the grouped walks stopped depending on data; NVFP4's still does)
  stream_math_decode (patches/stream_math_decode.diff) the streaming NVFP4 kernel at two CTAs of 288
                threads per SM: the math warpgroups decode the group's rows themselves (one 8-value
                word per thread and stage at 8 rows, then a 256-thread named barrier) and the
                producer is one warp, so each thread keeps up to 96 registers (no spill at 8 and 16
                rows, NVRTC 12 and 13; 32 and 64 rows spill a word or two, or serialise their
                wgmma). H100 (one run, time against base): -5..-1% at 1 token, -3..+2% at 16, +7..+12%
                at 32 and 64. The diff now sits on the decode cuts and kCtasPerSm (2 at every tile);
                not timed there
  per_token_pairs (patches/per_token_pairs.diff) per_token's 128-row tiles in M-block pairs, forced with
                MATEGEMM_FORCE_CONFIG block_m=128,cluster_m=2 (any block_n): B multicast where both blocks
                start in one expert, each CTA's own B where they differ, and a block with no rows of the
                GEMM beside one with rows runs its peer's expert in lockstep and stores nothing; DeepGEMM's
                contiguous pick is 128x192 with cluster_m 2. SASS (NVRTC 13.5): 128x192 131 instructions a
                K block in the unrolled turn (127 unpaired), 168 registers, no local memory (the (1,1,128)
                recipe at 192 columns: 1 LDL, 1 STL, as with cluster_n 2). With its unit and GPU tests
                (tests/gpu/test_moe.py::test_per_token_block_pairs)
  two_ctas_dense (patches/two_ctas_dense.diff) two CTAs an SM for dense 64-row tiles, forced with
                MATEGEMM_FORCE_CONFIG ctas_per_sm=2: launch bounds (256, 2), the registers split by
                setmaxnreg (producer 40, math 216), half the shared memory a CTA, up to twice the SMs in
                the grid; for two-item rows like 64x32768x512, where each SM runs its items one after
                the other. SASS: no local memory. With its unit, SASS and GPU tests
Larger variants may come as unified diffs under patches/ (PATCH_FILES), applied with git apply.
A's scales by TMA (dense, MN-major scales) measured faster as a diff and is now the product's
path; MATEGEMM_FORCE_CONFIG tma_scales=0 runs the scale warps instead. So are the compile-time
chunk selection with two B scale blocks (a warp-uniform dispatch per chunk count measured the same),
the two-wave loop unrolled 8 deep (since replaced by whole ring turns unrolled), split-K's finishing
item summing its own partial from registers
and loading two slices at a time (-1.5..2% at 1x2112x7168 and 64x2112x7168 on the H100), the next
work item's B scales loaded by the math threads under the current item's main loop, in two-wave
tiles (H100 against live DeepGEMM, 2 rounds, with 256x128 tiles: 4096x32768x512 +3.3%, K 1536-2048
+2%; one-wave tiles, which keep loading at the item's start: 128x192 at 4096x2112x7168 -2..-5%,
decode -1%), the scratch accumulator overlap with per-column B scales (ragged K; since off by
default there, MATEGEMM_FORCE_CONFIG overlap=1: the H100 up to 12% faster without), the grouped tile
walks that depend on no data (gemm/scheduler.cuh), per_token's second pass inside the work item
with the row ids loaded when a tile starts, 16-bit outputs staged by stmatrix (+1.3..3.3% at
K <= 2048 on the H100), NVFP4's 256x128 tiles from 1024 rows per group with A's rows decoded
beforehand (nvfp4_tile256: H100, 4096 tokens per expert 1.16-1.21x on all six expert GEMMs),
the epilogue of the 256x128 NVFP4 GEMM on weights decoded beforehand staged one 64-row wave per
math warpgroup, for a fourth stage (decoded_out_one_wave: H100, 4096 tokens per expert 4-7% faster),
and the streaming NVFP4 kernel's pair decode by one multiply per word and its scale factors two at a
time (decode_mul, factor_pairs) and two CTAs per SM up to 16 rows (stream_two_ctas): H100, 16 tokens
per expert, time -3..-5% for the two cuts, -6..-9% all three; at 1 and 4 tokens (memory-bound on the
H100) -4..+2%; at 64 tokens two CTAs +6..+9%, so one CTA from 32 rows.
Measured and dropped (patches in the history): the first K block's B scales loaded per thread so
the tile-start barrier moves after its wgmma (sfb_overlap: -1.7% at 4096x32768x512), gathered A
rows copied by all four producer warps (gather_4warps: as slow as one warp's copies), the tile
walk's divisions as float-reciprocal multiplies (sched_fast: H100, 7 shapes, 2 rounds, level within
1%), the scale products formed when promoted (late_products: level on 7 decode and short-K shapes),
the second scratch accumulator with per-column B scales in the packed token modes (overlap_packed:
MXFP8 granularity 128 at 128x128, 0.754 of the FP8 path against 0.750 without), the B scales staged
by the producer's idle warp (sfb_warp, sfb_sync: +4.7% at K=512 but -3..-10% at long K and decode),
granularity 32's two scratch accumulators in turn (overlap32: 0.240 of the FP8 path at block_n 128
against 0.243 without), the tiles past the last whole wave split over K (tail_split: H100, 2 rounds,
4096x2112x7168 -8..-9% and 4096x7168x16384 -11..-12% where +5..10% was predicted), forced
2-CTA clusters sharing A at decode (decode_share_a: 5-15% slower on four 64-128-row decode shapes),
and the streaming kernel's pair decode in the GEMM core's NVFP4 kernel (nvfp4_pair_core: H100,
64 tokens per expert 8-11% faster, where the streaming kernel with decoded rows is 2x faster; 256
and 4096 tokens -5..+4%), and the next eight K blocks' B boxes prefetched into L2 every eight
(b_prefetch_burst, for DRAM row-buffer hits: H100, -9..-25% on seven dense rows, 128x2112x7168 270 ->
242 TFLOPS; its text is in the notebook). B's tiles evict-first in L2 where one 64-row M-block covers
m (decode_b_evict_first) measured up to 5% faster and is the product's b_evict_first
(heuristics.fp8_gemm.b_read_once).

Rings of up to 16 stages (DeepGEMM's cap; stages16) measured no gain on the picks of 2026-12-06
and +1.5..3% on DeepGEMM's 64x16 / 64x32 tiles; MATEGEMM_FORCE_CONFIG stages now reaches 16 for the
FP8 GEMM instead, and 12 stages are the default of the decode rows where they measured faster
(fp8_gemm.ring_stages).

Waits that sleep (a suspend-time hint on every mbarrier try_wait) and DeepGEMM's M-grouped tile walk
measured level or 1-2% slower on the core shapes (H200) and left the lab; of the walk, group_n 1
where one wave holds several M-blocks is the heuristic's now.

The ping-pong turn order of the two math warpgroups was measured 8-10% slower at 128x128 and
neutral at 256x128 (notebook, 2026-11-28) and left the kernel; its code is in the history.
"""
import subprocess
import sys
from pathlib import Path

MAINLOOP = "kernels_src/gemm/mainloop.cuh"
TRAITS = "kernels_src/gemm/traits.cuh"
STAGING = "kernels_src/gemm/scale_staging.cuh"
ENTRY = "kernels_src/sm90_fp8_gemm_blockscaled.cuh"
HOST = "mategemm/kernels/sm90_fp8_gemm_blockscaled.py"
FP8_HEURISTIC = "mategemm/heuristics/fp8_gemm.py"
PRODUCER = "kernels_src/gemm/producer.cuh"
NVFP4 = "kernels_src/gemm/nvfp4_staging.cuh"
KERNEL = "kernels_src/gemm/kernel.cuh"


def shared_tile_load(x: str, row0: str) -> str:
    """The producer's load of its half of a tile shared by a cluster pair (operand x, "a" or "b"),
    multicast into both CTAs, as the kernel has it."""
    return (f"          tma_load_2d_multicast({x}_dst + offset * kBlockK, args.tmap_{x}, loaded.addr, "
            f"kb * T::kBlockKElems,\n                                {row0} + offset, 0x3);\n")


def own_tile_loads(x: str, row0: str) -> str:
    """Both halves of the shared tile loaded by each CTA into its own shared memory."""
    return (f"          tma_load_2d({x}_dst + offset * kBlockK, args.tmap_{x}, loaded.addr, kb * T::kBlockKElems, "
            f"{row0} + offset);\n"
            f"          tma_load_2d({x}_dst + (kHalfRows - offset) * kBlockK, args.tmap_{x}, loaded.addr, "
            f"kb * T::kBlockKElems,\n                      {row0} + kHalfRows - offset);\n")


def leader_tile_loads(x: str, row0: str) -> str:
    """Both halves of the shared tile multicast by rank 0 (offset 0) alone."""
    return (f"          if (offset == 0) {{\n"
            f"            tma_load_2d_multicast({x}_dst, args.tmap_{x}, loaded.addr, kb * T::kBlockKElems, "
            f"{row0}, 0x3);\n"
            f"            tma_load_2d_multicast({x}_dst + kHalfRows * kBlockK, args.tmap_{x}, loaded.addr, "
            f"kb * T::kBlockKElems,\n                                  {row0} + kHalfRows, 0x3);\n"
            f"          }}\n")


# Larger variants as unified diffs against the tree (under patches/), applied with git apply.
PATCH_FILES: dict[str, Path] = {
    "desc32": Path(__file__).resolve().parent / "patches" / "desc32.diff",
    "fast_moe_act": Path(__file__).resolve().parent / "patches" / "fast_moe_act.diff",
    "layer_mn_scales": Path(__file__).resolve().parent / "patches" / "layer_mn_scales.diff",
    "stream_math_decode": Path(__file__).resolve().parent / "patches" / "stream_math_decode.diff",
    "per_token_pairs": Path(__file__).resolve().parent / "patches" / "per_token_pairs.diff",
    "two_ctas_dense": Path(__file__).resolve().parent / "patches" / "two_ctas_dense.diff",
}
# Patch files written against the tree with others applied first (applied before them, once).
PATCH_BASES: dict[str, tuple[str, ...]] = {"layer_mn_scales": ("fast_moe_act",)}

# variant -> [(file, old text, new text)]
PATCHES = {
    "double_ffma": [(MAINLOOP, "        for (int c = 0; c < T::BLOCK_N / 8; ++c) promote_chunk(out + c * 4, part + c * 4, sc.lo[0], sc.hi[0]);\n",
                     "        for (int c = 0; c < T::BLOCK_N / 8; ++c) promote_chunk(out + c * 4, part + c * 4, sc.lo[0], sc.hi[0]);\n"
                     "        for (int c = 0; c < T::BLOCK_N / 8; ++c) promote_chunk(out + c * 4, part + c * 4, sc.hi[0], sc.lo[0]);\n")],
    "unit_scales": [(MAINLOOP, "    sc.lo[0] = ld_shared_f32(sf);", "    sc.lo[0] = 1.0f;"),
                    (MAINLOOP, "    sc.hi[0] = ld_shared_f32(sf + 8 * 4);", "    sc.hi[0] = 1.0f;")],
    "no_overlap": [(MAINLOOP, "static constexpr bool kOverlap = T::kAllowOverlap &&", "static constexpr bool kOverlap = false &&")],
    "lane0_empty": [(TRAITS, "static constexpr int kEmptyArrivals = kNumMathWG * 128 +",
                     "static constexpr int kEmptyArrivals = kNumMathWG * 4 +"),
                    (MAINLOOP, "    empty[stage].arrive();\n", "    __syncwarp();\n    if (lane == 0) empty[stage].arrive();\n")],
    "lane0_full": [(TRAITS, "(kScaleAtEnd || kTmaScales ? 1 : 1 + 32)", "(kScaleAtEnd || kTmaScales ? 1 : 1 + 1)"),
                   (STAGING, "      smem.full[stage].arrive();  // release",
                    "      __syncwarp();\n      if (lane == 0) smem.full[stage].arrive();  // release")],
    "const_nk": [(ENTRY, "          bool kAllowOverlap = true, bool kBEvictFirst = false, "
                         "bool kScalesAheadAll = false>\n",
                  "          int kConstN, int kConstK, bool kAllowOverlap = true, bool kBEvictFirst = false,\n"
                  "          bool kScalesAheadAll = false>\n"),
                 (ENTRY, "  gemm_kernel_body<Traits>(MATEGEMM_GEMM_ARGS);",
                  "  if constexpr (kConstN > 0) n = kConstN;\n  if constexpr (kConstK > 0) k = kConstK;\n"
                  "  gemm_kernel_body<Traits>(MATEGEMM_GEMM_ARGS);"),
                 (HOST, "              if name == KERNEL else ()))\n",
                  "              if name == KERNEL else ()))\n"
                  "    if name == KERNEL:\n"
                  "        args += (problem.n, problem.k) if problem.group_mode == \"none\" else (0, 0)\n")],
    # The math warpgroups' last wait before the CTA exits: for the tile's stores to leave shared
    # memory only (CUTLASS's store tail), or none (DeepGEMM's kernels), instead of for their writes
    "end_wait_read": [(KERNEL, "  if ((threadIdx.x % 128) == 0) tma_store_wait_all();\n",
                       "  if ((threadIdx.x % 128) == 0) tma_store_wait_read();\n")],
    "end_no_wait": [(KERNEL, "  if ((threadIdx.x % 128) == 0) tma_store_wait_all();\n", "")],
    # Cluster pairs without multicast: each CTA loads its whole tiles (the half-row boxes twice) and
    # its stages go back to its own producer only
    "cluster_own_loads": [(PRODUCER, shared_tile_load("a", "t.a_row0"), own_tile_loads("a", "t.a_row0")),
                          (PRODUCER, shared_tile_load("b", "b_row0"), own_tile_loads("b", "b_row0")),
                          (MAINLOOP, "      if (lane == 0) empty[stage].arrive_on(peer_cta);\n", ""),
                          (TRAITS, "kNumMathWG * 128 + (kCluster - 1) * kNumMathWG * 4;", "kNumMathWG * 128;")],
    # The shared tile multicast whole by the pair's rank 0 (both halves), none by rank 1
    "cluster_leader_loads": [(PRODUCER, shared_tile_load("a", "t.a_row0"), leader_tile_loads("a", "t.a_row0")),
                             (PRODUCER, shared_tile_load("b", "b_row0"), leader_tile_loads("b", "b_row0"))],
    # A's scales not loaded (wrong results on purpose): what one TMA box a stage costs the feed
    "no_sfa_tma": [(PRODUCER, "(T::kItemBScales ? Layout::kScaleBoxes * Layout::kScaleBoxRows * 4 : 0)", "0"),
                   (PRODUCER, "if constexpr (T::kItemBScales) {  // A's scales", "if constexpr (false) {  // A's scales")],
    # DeepGEMM's picks at the compute-bound dense shapes: A shared by N-block pairs with 256-row tiles,
    # B by M-block pairs with 128-row ones
    "clusters_large": [(FP8_HEURISTIC, "    _, block_m, block_n, (cluster_m, cluster_n), num_splits = best\n",
                        "    _, block_m, block_n, (cluster_m, cluster_n), num_splits = best\n"
                        "    pair = (1, 2) if block_m == 256 else (2, 1)\n"
                        "    if (free and problem.group_mode == \"none\" and problem.m >= 1024 and num_splits == 1\n"
                        "            and math.ceil(problem.m / block_m) * math.ceil(problem.n / block_n) > num_mp\n"
                        "            and tile_allowed(problem, block_m, block_n, pair, num_mp)):\n"
                        "        cluster_m, cluster_n = pair\n")],
    # NVFP4 decode stages taken apart: the loads and barriers without the decode, or the decode and
    # barriers without the loads (wrong results on purpose both)
    "nvfp4_feed_only": [(NVFP4, "      decode_nvfp4_stage<T>(smem_addr(", "      if (kb < 0) decode_nvfp4_stage<T>(smem_addr(")],
    "nvfp4_decode_only": [(NVFP4, "      loaded.arrive_expect_tx(kStageBytes);\n", "      loaded.arrive();\n      if (kb < 0) {\n"),
                          (NVFP4, "      pipe.advance();\n", "      }\n      pipe.advance();\n")],
}


def patch(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise SystemExit(f"pattern found {text.count(old)} times, expected 1: {old!r}")
    return text.replace(old, new)


def apply(variant: str, files: dict[str, str]) -> dict[str, str]:
    """The patched texts of `files` (path relative to the tree -> text) for one variant."""
    if variant == "base":
        return dict(files)
    if variant not in PATCHES:
        raise SystemExit(f"unknown variant {variant}; known: base, {', '.join((*PATCHES, *PATCH_FILES))}")
    out = dict(files)
    for path, old, new in PATCHES[variant]:
        out[path] = patch(out[path], old, new)
    return out


def main() -> None:
    variants, tree = sys.argv[1], Path(sys.argv[2])
    paths = {path for patches in PATCHES.values() for path, _, _ in patches}
    applied = set()
    for variant in variants.split("+"):
        if variant in PATCH_FILES:
            for name in (*PATCH_BASES.get(variant, ()), variant):
                if name not in applied:
                    subprocess.run(["git", "apply", str(PATCH_FILES[name])], cwd=tree, check=True)
                    applied.add(name)
            continue
        files = apply(variant, {path: (tree / path).read_text() for path in paths})
        for path, text in files.items():
            (tree / path).write_text(text)


if __name__ == "__main__":
    main()
