"""Indexer kernel variants as text patches of kernels_src/sm90_fp8_mqa_logits.cuh, compiled and timed
side by side (run from the repository root with PYTHONPATH=.:tools).
`python tools/experiments/indexer_variants.py compile` checks each compiles for sm_90a without spills (CPU);
`python tools/experiments/indexer_variants.py time [name ...]` times each (or the named ones) on the GPU
(b128 n1/n2 h64 ctx 8192; b64 n1/n2)."""
import sys
from pathlib import Path

KERNEL = Path("kernels_src/sm90_fp8_mqa_logits.cuh")

# The schedule loads leave before the barrier set-up (their latency overlaps it) and each producer
# warp asks L2 for its first block-table entry while the walker loads the request's length.
EARLY_WALKER = [
    ("  if (threadIdx.x == 0) {\n    tma_prefetch_desc(&tmap_q);",
     "  MqaWalker<kRows, kPaged> walker(schedule, lens, lens_2d, first_block, last_block);\n"
     "  if constexpr (kPaged) {\n"
     "    if (warpgroup == 0 && warp < kMathWG && lane == 0 && walker.tile < walker.end_tile) {\n"
     "      const int* first_entry = block_table + static_cast<i64>(walker.tile) * block_table_ld +\n"
     "                               first_block_of<kMathWG>(warp, walker.tile, walker.block);\n"
     "      asm volatile(\"prefetch.global.L2 [%0];\" ::\"l\"(first_entry));\n"
     "    }\n"
     "  }\n"
     "  if (threadIdx.x == 0) {\n    tma_prefetch_desc(&tmap_q);"),
    ("  __syncthreads();\n\n  MqaWalker<kRows, kPaged> walker(schedule, lens, lens_2d, first_block, last_block);\n",
     "  __syncthreads();\n\n"),
]

# The math skipped (each block released as soon as it lands; logits wrong on purpose): what the
# producer path alone takes, i.e. the most that overlapping the math could win.
NO_MATH = [
    ("      pipe.advance();\n      const u64 desc_keys",
     "      pipe.advance();\n      mbar_arrive(empty_bar + stage * 8);\n      continue;\n      const u64 desc_keys"),
]

# The wgmma kept, the head sums and stores skipped; and the sums kept, the stores skipped (a value
# never met keeps the sums alive): which part of the math costs the time.
NO_EPILOGUE = [
    ("      mbar_arrive(empty_bar + stage * 8);\n\n", "      mbar_arrive(empty_bar + stage * 8);\n      continue;\n"),
]
NO_STORE = [
    ("    if (whole) {\n      store_logit(out_row + position, value);",
     "    if (value != -1234.5f) continue;\n    if (whole) {\n      store_logit(out_row + position, value);"),
]
# Each block released as soon as it lands, the math then run on it anyway (it may be overwritten:
# wrong on purpose): whether holding the stage through the wgmma is what slows the stream.
EARLY_RELEASE = [
    ("      pipe.advance();\n      const u64 desc_keys",
     "      pipe.advance();\n      mbar_arrive(empty_bar + stage * 8);\n      const u64 desc_keys"),
    ("      mbar_arrive(empty_bar + stage * 8);\n\n", "\n"),
]
# The math warps' per-tile length loads replaced by "every key visible" (wrong on purpose): what the
# load's latency at each request change costs the math warpgroups.
NO_LENS = [
    ("      if constexpr (kPaged) tile_info.load(t, lens, lens_end, lens_2d, num_rows);",
     "      if constexpr (kPaged) {\n"
     "        for (int j = 0; j < kRows; ++j) tile_info.lo[j] = 0, tile_info.hi[j] = 0x7fffffff;\n"
     "        tile_info.all_lo = 0;\n        tile_info.all_hi = 0x7fffffff;\n      }"),
]
# The logits stored with the streaming (evict-first) hint.
STREAMING_STORES = [  # fp32 logits only
    ("      store_logit(out_row + position, value);", "      __stcs(out_row + position, value);"),
    ("store_logit(out_row + col, visible ? value : neg_inf());", "__stcs(out_row + col, visible ? value : neg_inf());"),
]

VARIANTS = {
    "base": [],
    "early_walker": EARLY_WALKER,
    "no_math": NO_MATH,
    "no_epilogue": NO_EPILOGUE,
    "no_store": NO_STORE,
    "early_release": EARLY_RELEASE,
    "no_lens": NO_LENS,
    "streaming_stores": STREAMING_STORES,
}
WRONG_ON_PURPOSE = {"no_math", "no_epilogue", "no_store", "early_release", "no_lens"}  # timing probes: their logits are not checked


def source(name):
    text = KERNEL.read_text()
    for old, new in VARIANTS[name]:
        assert old in text, name
        text = text.replace(old, new)
    return text + f"\n// variant {name}\n"


def specs(name):
    import torch
    from mategemm.jit.cache import KernelSpec
    from mategemm.kernels import sm90_fp8_mqa_logits as K
    out = []
    for rows, heads, paged in ((1, 64, True), (2, 64, True), (4, 64, True), (2, 64, False)):
        s = K.spec(rows, heads, 128, K.stages_for(rows, heads, 128, 232448), paged, torch.float32, "sm_90a")
        out.append(KernelSpec(s.kernel, source(name), s.name_expr, "sm_90a"))
    return out


def compile_all():
    import collections, tempfile
    from mategemm.jit.cache import KernelCache
    from mategemm.testing import sass
    cache = KernelCache(Path(tempfile.mkdtemp()))
    for name in VARIANTS:
        for spec in specs(name):
            ops = collections.Counter(sass.opcodes(sass.dump_sass(cache.get(spec).path / "kernel.cubin")))
            print(name, spec.name_expr, "LDL", ops["LDL"], "STL", ops["STL"], "UTMALDG", ops["UTMALDG"], flush=True)


def time_all(names):
    import torch, mategemm
    from mategemm.jit.cache import KernelSpec
    from mategemm.kernels import sm90_fp8_mqa_logits as K
    from mategemm.testing import indexer as ref
    from benchkit.timing import median_ms
    orig = K.spec
    cases = []
    for batch, next_n in ((128, 1), (128, 2), (64, 1), (64, 2)):
        gen = torch.Generator(device="cuda").manual_seed(0)
        case = ref.make_paged_case(batch, next_n, 64, [8192] * batch, generator=gen, device="cuda")
        meta = mategemm.get_paged_mqa_logits_metadata(case["context_lens"], 64)
        want = ref.paged_reference(case["q"], case["fused_kv_cache"], case["weights"], case["context_lens"],
                                   case["block_table"], case["max_context_len"]) if batch == 64 else None
        cases.append((batch, next_n, case, meta, want))
    for rnd in range(3):
        for name in names:
            K.spec = lambda r, h, st, p, a, name=name: KernelSpec(orig(r, h, st, p, a).kernel, source(name),
                                                                  orig(r, h, st, p, a).name_expr, a)
            K._loaded.clear()
            line = []
            for batch, next_n, case, meta, want in cases:
                call = lambda: mategemm.fp8_paged_mqa_logits(case["q"], case["fused_kv_cache"], case["weights"],
                                                             case["context_lens"], case["block_table"], meta,
                                                             case["max_context_len"], True)
                ok = ""
                if want is not None:
                    got = call()
                    seen = torch.isfinite(want)
                    ok = "ok" if torch.equal(torch.isinf(got), torch.isinf(want)) and \
                        mategemm.testing.calc_diff(got[seen].double(), want[seen].double()) < 1e-5 else "WRONG"
                line.append(f"b{batch}n{next_n} {median_ms([call]) * 1e3:6.1f} us {'' if name in WRONG_ON_PURPOSE else ok}")
            print(f"round {rnd} stages {K.MAX_STAGES} {name:>15}: " + " | ".join(line), flush=True)


if __name__ == "__main__":
    compile_all() if sys.argv[1] == "compile" else time_all(sys.argv[2:] or list(VARIANTS))
