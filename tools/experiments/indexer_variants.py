"""Indexer kernel variants as text patches of kernels_src/sm90_fp8_mqa_logits.cuh, compiled and timed
side by side (run from the repository root with PYTHONPATH=.).
`python tools/experiments/indexer_variants.py compile` checks each compiles for sm_90a without spills (CPU);
`python tools/experiments/indexer_variants.py time` times each on the GPU (b128 n1/n2 h64 ctx 8192; b64 n1/n2)."""
import sys
from pathlib import Path

KERNEL = Path("kernels_src/sm90_fp8_mqa_logits.cuh")

OLD_PRODUCER = KERNEL.read_text()[KERNEL.read_text().index("    if (warp < kMathWG && lane == 0) {"):
                                  KERNEL.read_text().index("    __syncwarp();\n    if (clean) {")]

def _kernel_lines(start: str, stop: str, indent: int, drop: str = "") -> str:
    """The kernel producer's lines from `start` up to `stop`, shifted right by `indent` spaces,
    without those containing `drop`: the variant reuses them as they are."""
    first = OLD_PRODUCER.index(start)
    lines = OLD_PRODUCER[first:OLD_PRODUCER.index(stop, first)].rstrip("\n").split("\n")
    return "".join(" " * indent + line + "\n" for line in lines if not (drop and drop in line))


def _prefetch_producer():
    """The whole producer warp walks; lane i prefetches the i-th next block-table entry of the ring,
    lane 0 issues the barrier ops and TMA with the entry shuffled to it (one table load per 32 blocks).
    The query (and weights) load and each block's loads are the kernel's own lines."""
    q_load = _kernel_lines("          const int buf = q_loads & 1;", "          ++q_loads;\n", 2)
    block_load = _kernel_lines("          const int stage = warp * kRingStages", "          pipe.advance();\n", 4,
                               drop="= __ldg(block_table")
    return (r'''    if (warp < kMathWG) {
      PipelineState<kRingStages> pipe;
      int t, begin, end, q_loads = 0;
      while (walker.next(t, begin, end)) {
        if (warp == 0) {
          if (lane == 0) {
''' + q_load + r'''          }
          ++q_loads;
          __syncwarp();
        }
        for (int base = first_block_of<kMathWG>(warp, t, begin); base < end; base += 32 * kMathWG) {
          int physical_mine = 0;
          if constexpr (kPaged) {
            const int mine = base + lane * kMathWG;
            if (mine < end) physical_mine = __ldg(block_table + static_cast<i64>(t) * block_table_ld + mine);
          }
          const int count = min(32, (end - base + kMathWG - 1) / kMathWG);
          for (int i = 0; i < count; ++i) {
            const int physical = __shfl_sync(0xffffffffu, physical_mine, i);
            const int block = base + i * kMathWG;
            if (lane == 0) {
''' + block_load + r'''            }
            __syncwarp();
            pipe.advance();
          }
        }
      }
    }
''')


PREFETCH_PRODUCER = _prefetch_producer()

VARIANTS = {
    "base": [],
    "prefetch_table": [(OLD_PRODUCER, PREFETCH_PRODUCER)],
}


def source(name):
    text = KERNEL.read_text()
    for old, new in VARIANTS[name]:
        assert old in text, name
        text = text.replace(old, new)
    return text + f"\n// variant {name}\n"


def specs(name):
    from mategemm.jit.cache import KernelSpec
    from mategemm.kernels import sm90_fp8_mqa_logits as K
    out = []
    for rows, heads, paged in ((1, 64, True), (2, 64, True), (4, 64, True), (2, 64, False)):
        s = K.spec(rows, heads, K.stages_for(rows, heads, 232448), paged, "sm_90a")
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


def time_all():
    import torch, mategemm
    from mategemm.jit.cache import KernelSpec
    from mategemm.kernels import sm90_fp8_mqa_logits as K
    from mategemm.testing import indexer as ref
    from mategemm.testing.timing import median_ms
    orig = K.spec
    cases = []
    for batch, next_n in ((128, 1), (128, 2), (64, 1), (64, 2)):
        gen = torch.Generator(device="cuda").manual_seed(0)
        case = ref.make_paged_case(batch, next_n, 64, [8192] * batch, generator=gen, device="cuda")
        meta = mategemm.get_paged_mqa_logits_metadata(case["context_lens"], 64)
        want = ref.paged_reference(case["q"], case["fused_kv_cache"], case["weights"], case["context_lens"],
                                   case["block_table"], case["max_context_len"]) if batch == 64 else None
        cases.append((batch, next_n, case, meta, want))
    for rnd, stages in ((0, 12), (0, 8), (1, 12)):
        K.MAX_STAGES = stages
        for name in VARIANTS:
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
                line.append(f"b{batch}n{next_n} {median_ms([call]) * 1e3:6.1f} us {ok}")
            print(f"round {rnd} stages {stages} {name:>15}: " + " | ".join(line), flush=True)


if __name__ == "__main__":
    compile_all() if sys.argv[1] == "compile" else time_all()
