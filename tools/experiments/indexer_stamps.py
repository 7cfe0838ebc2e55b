"""Where a paged indexer call's time goes: the kernel, patched with per-CTA clock64 and globaltimer
stamps at its milestones, runs twice on one case (GPU; run from the repository root with PYTHONPATH=.).

Prints, per milestone, its min / median / max over the CTAs (microseconds after the CTA's entry, at
1.98 GHz), the spread of CTA end times, the mean end of CTAs with one and with two requests in their
schedule range, and how well the end times of the two runs correlate per SM (1: the slow SMs are
always the same ones; 0: the imbalance is random).
`python tools/experiments/indexer_stamps.py [batch next_n heads context]` (default 64 1 64 8192)."""
import sys
from pathlib import Path

import numpy as np
import torch
from cuda.bindings import driver

import mategemm
from mategemm.jit.cache import KernelSpec
from mategemm.kernels import sm90_fp8_mqa_logits as K
from mategemm.testing import indexer as ref
from mategemm.testing.timing import median_ms

MAX_CTAS = 264
MILESTONES = ["barriers set", "walker ready", "1st block TMA", "last block TMA", "1st block full", "math done"]
SM_SLOT = 7  # the stamp slot that holds the CTA's SM id


def stamped_source() -> str:
    text = Path("kernels_src/sm90_fp8_mqa_logits.cuh").read_text()
    patches = [
        ("namespace mategemm {\n", f'extern "C" __device__ unsigned long long mqa_stamps[{MAX_CTAS} * 8];\n'
         f'extern "C" __device__ unsigned long long mqa_globaltimer[{MAX_CTAS} * 2];\n'
         "namespace mategemm {\n"
         "__device__ __forceinline__ void stamp(int i, bool first) {\n"
         "  unsigned long long* s = mqa_stamps + blockIdx.x * 8 + i;\n"
         "  if (!first || *s == 0) *s = clock64();\n"
         "}\n"
         "__device__ __forceinline__ unsigned long long globaltimer() {\n"
         '  unsigned long long t; asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t)); return t;\n'
         "}\n"),
        ("  const int lane = threadIdx.x % 32;\n",
         "  const int lane = threadIdx.x % 32;\n"
         "  if (threadIdx.x == 0) {\n"
         "    stamp(0, true);\n"
         "    mqa_globaltimer[blockIdx.x * 2] = globaltimer();\n"
         '    unsigned sm; asm volatile("mov.u32 %0, %smid;" : "=r"(sm));\n'
         f"    mqa_stamps[blockIdx.x * 8 + {SM_SLOT}] = sm;\n"
         "  }\n"),
        ("  __syncthreads();\n\n  MqaWalker", "  __syncthreads();\n  if (threadIdx.x == 0) stamp(1, true);\n\n  MqaWalker"),
        ("        if (warp == 0 && lane == 0) {\n          const int buf = q_loads & 1;",
         "        if (warp == 0 && lane == 0) {\n          stamp(2, true);\n          const int buf = q_loads & 1;"),
        ("            tma_load_2d(scales, &tmap_scales, bar, 0, physical * kFusedBlockRows + kKvBlock);\n",
         "            tma_load_2d(scales, &tmap_scales, bar, 0, physical * kFusedBlockRows + kKvBlock);\n"
         "            if (warp == 0) stamp(3, true);\n"),
        ("    __syncwarp();\n    if (clean) {", "    if (warp == 0 && lane == 0) stamp(4, false);\n    __syncwarp();\n    if (clean) {"),
        ("      mbar_wait(full_bar + stage * 8, pipe.phase);\n      pipe.advance();\n",
         "      mbar_wait(full_bar + stage * 8, pipe.phase);\n      if (threadIdx.x == 128) stamp(5, true);\n"
         "      pipe.advance();\n"),
        ("      }\n    }\n  }\n}\n\n}  // namespace mategemm",
         "      }\n    }\n  }\n  if (threadIdx.x == 128) {\n    stamp(6, false);\n"
         "    mqa_globaltimer[blockIdx.x * 2 + 1] = globaltimer();\n  }\n}\n\n}  // namespace mategemm"),
    ]
    return apply_patches(text, patches, "stamped")


def apply_patches(text: str, patches: list[tuple[str, str]], tag: str) -> str:
    """`text` with each (old, new) replaced, every old found exactly once, tagged at the end."""
    for old, new in patches:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text + f"\n// {tag}\n"


def global_ptr(name: str) -> tuple:
    (kernel,) = K._loaded.values()
    err, ptr, size = driver.cuModuleGetGlobal(kernel.module, name.encode())
    assert err == driver.CUresult.CUDA_SUCCESS, err
    return ptr, size


def run_zeroed(call, name: str) -> None:
    """Zero the kernel's global `name`, then run `call` once to completion."""
    ptr, size = global_ptr(name)
    driver.cuMemsetD8(ptr, 0, size)
    torch.cuda.synchronize()
    call()
    torch.cuda.synchronize()


def read_global(name: str, words: int) -> np.ndarray:
    ptr, size = global_ptr(name)
    assert size == words * 8, size
    host = np.zeros(words, dtype=np.uint64)
    driver.cuMemcpyDtoH(host.ctypes.data, ptr, size)
    return host.astype(np.int64)


def patched_call(source: str, batch: int, next_n: int, heads: int, context: int) -> tuple:
    """(call, schedule metadata, CTAs): a paged call of `context` keys per request running `source`
    as the kernel, called once (compiled and loaded)."""
    original = K.spec
    K.spec = lambda *a: KernelSpec(original(*a).kernel, source, original(*a).name_expr, a[-1])
    K._loaded.clear()
    case = ref.make_paged_case(batch, next_n, heads, [context] * batch,
                               generator=torch.Generator(device="cuda").manual_seed(0), device="cuda")
    meta = mategemm.get_paged_mqa_logits_metadata(case["context_lens"], 64)
    ctas = meta.shape[0] - 1
    assert ctas <= MAX_CTAS

    def call():
        return mategemm.fp8_paged_mqa_logits(case["q"], case["fused_kv_cache"], case["weights"], case["context_lens"],
                                             case["block_table"], meta, case["max_context_len"], True)

    call()
    return call, meta, ctas


def main(batch: int, next_n: int, heads: int, context: int) -> None:
    call, meta, ctas = patched_call(stamped_source(), batch, next_n, heads, context)
    print(f"batch {batch}, next_n {next_n}, {heads} heads, {context} keys, {ctas} CTAs: event time "
          f"{median_ms([call]) * 1e3:.1f} us; an x.add_(1) kernel: "
          f"{median_ms([lambda x=torch.zeros(1, device='cuda'): x.add_(1)]) * 1e3:.1f} us")
    schedule = meta.cpu().tolist()
    requests = np.array([schedule[i + 1][0] - schedule[i][0] + (schedule[i + 1][1] > 0) for i in range(ctas)])
    ends_by_sm = []
    for run in range(2):
        run_zeroed(call, "mqa_stamps")
        stamps = read_global("mqa_stamps", MAX_CTAS * 8).reshape(MAX_CTAS, 8)[:ctas]
        timer = read_global("mqa_globaltimer", MAX_CTAS * 2).reshape(MAX_CTAS, 2)[:ctas]
        end = (timer[:, 1] - timer[:, 0].min()) / 1e3
        print(f"run {run}: kernel span {end.max():.2f} us (globaltimer), CTA starts within "
              f"{(timer[:, 0].max() - timer[:, 0].min()) / 1e3:.2f} us, ends within {end.max() - end.min():.2f} us "
              f"(mean {end.mean():.2f})")
        for i, name in enumerate(MILESTONES, 1):
            after = (stamps[:, i] - stamps[:, 0]) / 1.98e3
            print(f"  {name:>15}: min {after.min():6.2f}  median {np.median(after):6.2f}  max {after.max():6.2f} us")
        for k in sorted(set(requests.tolist())):
            chosen = requests == k
            print(f"  CTAs with {k} request(s): {chosen.sum()}, mean end {end[chosen].mean():.2f} us")
        by_sm = np.full(1024, np.nan)
        by_sm[stamps[:, SM_SLOT]] = end
        ends_by_sm.append(by_sm)
    both = ~np.isnan(ends_by_sm[0]) & ~np.isnan(ends_by_sm[1])
    print(f"end times of the two runs per SM: correlation {np.corrcoef(ends_by_sm[0][both], ends_by_sm[1][both])[0, 1]:.2f}")


if __name__ == "__main__":
    main(*(int(v) for v in sys.argv[1:5])) if len(sys.argv) > 1 else main(64, 1, 64, 8192)
