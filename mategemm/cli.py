"""The `mategemm` console command: info | prewarm | cache ls/verify/clear | demo."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import NamedTuple

from mategemm import env, prewarm
from mategemm.jit import nvrtc
from mategemm.jit.cache import CacheDirError, KernelCache, default_cache, default_cache_dir

DEMO_SHAPE = (4096, 7168, 7168)     # DeepSeek-V3's largest dense projection
DEMO_CPU_SHAPE = (64, 256, 256)
DEMO_SUITE = "dense_fp8"


# ---- info -------------------------------------------------------------------------------------
def cmd_info(args) -> int:
    import torch

    from mategemm.jit.key import KERNELS_SRC, headers_hash
    from mategemm.version import __version__

    print(f"mategemm:  {__version__} (torch {torch.__version__}, CUDA {torch.version.cuda or 'none'})")
    if torch.cuda.is_available():
        from mategemm.runtime.device import current_device_info

        info = current_device_info()
        print(f"device:    {info.name} ({info.arch}, {info.num_sms} SMs)")
    else:
        print("device:    no GPU")
    major, minor = nvrtc.nvrtc_version()
    print(f"nvrtc:     {major}.{minor}")
    print(f"kernels:   {KERNELS_SRC} (headers {headers_hash()[:16]}, part of every cache key)")
    cache = KernelCache(default_cache_dir())
    entries = cache.entries()
    size = sum(f.stat().st_size for entry in entries for f in entry.iterdir() if f.is_file())
    print(f"cache:     {cache.root} ({len(entries)} entries, {size / 2**20:.1f} MiB)")
    print("env:")
    for name, value in env.snapshot().items():
        print(f"  {name}={value}")
    return 0


# ---- prewarm ----------------------------------------------------------------------------------
def cmd_prewarm(args) -> int:
    from mategemm.runtime.device import get_num_mp, info_for_arch

    if args.max_tokens is not None and args.preset is None:
        raise ValueError("--max-tokens applies to --preset only (a --shapes list gives its own M)")
    device = info_for_arch(args.arch)
    num_mp, force = get_num_mp(device), env.force_config()
    if args.preset is None:
        shapes = prewarm.resolve_shapes(args.shapes)
        planned = prewarm.plan(shapes, args.arch, num_mp=num_mp, force=force)
        compiled, seconds = compile_plan(planned, args.jobs)
        print(f"{len(planned)} kernels for {len(shapes)} shapes x {len(prewarm.RECIPES)} recipes: "
              f"{compiled} compiled, {len(planned) - compiled} cached, {seconds:.1f} s")
        return 0
    preset = prewarm.load_preset(args.preset)
    max_tokens = args.max_tokens or prewarm.DEFAULT_MAX_TOKENS
    start = time.perf_counter()
    planned = prewarm.plan_preset(preset, max_tokens, args.arch, num_mp=num_mp, force=force)
    families = {}
    for item in planned:
        families[item.family] = families.get(item.family, 0) + 1
    print(f"preset {preset.name}, M = 1..{max_tokens} tokens, {args.arch} ({num_mp} SMs): "
          f"{' + '.join(f'{count} {family}' for family, count in families.items())} kernels, planned in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    progress = Progress(len(planned))
    try:
        results = compile_specs([item.spec for item in planned], args.jobs, progress.update)
    except (nvrtc.CompileError, CacheDirError) as exc:
        progress.close()
        print(f"mategemm prewarm: {exc}", file=sys.stderr)
        return 1
    progress.close()
    compiled = sum(r.compiled for r in results)
    print(f"{len(planned)} kernels for preset {preset.name}: {compiled} compiled, {len(planned) - compiled} already "
          f"cached, {progress.seconds():.1f} s (--jobs {args.jobs})")
    if any(r.entry is None for r in results):
        print(f"mategemm prewarm: the cache directory {default_cache_dir()} is not writable: nothing was stored",
              file=sys.stderr)
        return 1
    return 0


class CompileResult(NamedTuple):
    compiled: bool         # NVRTC ran for it (else it was found in the cache)
    seconds: float
    entry: str | None      # the cache entry's directory name, None when compiled in memory only


def compile_plan(planned: list[prewarm.PlannedKernel], jobs: int = 1) -> tuple[int, float]:
    """Compile (or find cached) every planned kernel, one line each; return (compiled, seconds)."""
    def line(result: CompileResult, done: int, total: int, seconds: float) -> None:
        print(f"{'compiled' if result.compiled else 'cached  '} {result.entry or '(in memory)'} "
              f"{result.seconds:.2f} s", flush=True)

    start = time.perf_counter()
    results = compile_specs([item.spec for item in planned], jobs, line)
    return sum(r.compiled for r in results), time.perf_counter() - start


def compile_specs(specs: list, jobs: int, on_done=None) -> list[CompileResult]:
    """Get every spec from the default cache, compiling what is missing: in this process (jobs 1) or
    in `jobs` spawned worker processes sharing the cache directory (its per-entry lock makes each
    kernel compile once). on_done(result, done, total, seconds) runs in this process as each
    finishes. Raises the first CompileError, after cancelling the kernels not yet started."""
    start = time.perf_counter()
    root = str(default_cache().root)
    results: list[CompileResult] = []

    def done(result: CompileResult) -> None:
        results.append(result)
        if on_done is not None:
            on_done(result, len(results), len(specs), time.perf_counter() - start)

    if jobs > 1:  # kernels already in the cache are looked up here: no worker starts for them
        cache, missing = default_cache(), []
        for spec in specs:
            if cache.entry_dir(spec.kernel, cache.key_for(spec)[0]).is_dir():
                done(compile_in_worker(root, spec))
            else:
                missing.append(spec)
        specs_left = missing
    else:
        specs_left = specs
    if jobs <= 1 or len(specs_left) <= 1:
        for spec in specs_left:
            done(compile_in_worker(root, spec))
        return results
    import concurrent.futures
    import multiprocessing

    # NOTES: "spawn": a forked child would inherit the parent's NVRTC and torch state (and threads).
    # A worker takes ~2-3 s to start (Python, torch); a GEMM kernel ~0.3 s to compile (2-core host).
    with concurrent.futures.ProcessPoolExecutor(min(jobs, len(specs_left)),
                                                mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(compile_in_worker, root, spec) for spec in specs_left]
        try:
            for future in concurrent.futures.as_completed(futures):
                done(future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results


_worker_caches: dict[str, KernelCache] = {}


def compile_in_worker(root: str, spec) -> CompileResult:
    """One kernel through the cache at `root` (one KernelCache per process and root)."""
    cache = _worker_caches.get(root)
    if cache is None:
        cache = _worker_caches[root] = default_cache() if str(default_cache().root) == root else KernelCache(root)
    start = time.perf_counter()
    kernel = cache.get(spec)
    return CompileResult(kernel.compiled_here, time.perf_counter() - start,
                         kernel.path.name if kernel.path is not None else None)


class Progress:
    """A one-line progress report on stderr: rewritten in place on a terminal, else a line at each
    tenth of the kernels."""

    def __init__(self, total: int, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.total, self.compiled, self.done = total, 0, 0
        self.start = time.perf_counter()
        self.next_line = 0
        self.width = 0
        if self.tty:  # workers take a few seconds to start: say so at once
            self._write(f"prewarm: 0/{total} kernels")

    def _write(self, text: str) -> None:
        self.stream.write("\r" + text.ljust(self.width))
        self.width = len(text)
        self.stream.flush()

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def update(self, result: CompileResult, done: int, total: int, seconds: float) -> None:
        self.compiled += result.compiled
        self.done = done
        text = (f"prewarm: {done}/{self.total} kernels, {self.compiled} compiled, {done - self.compiled} cached, "
                f"{self.seconds():.1f} s")
        if self.tty:
            self._write(text)
        elif done >= self.next_line or done == self.total:
            print(text, file=self.stream, flush=True)
            self.next_line = done + max(1, self.total // 10)

    def close(self) -> None:
        if self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()


# ---- cache ------------------------------------------------------------------------------------
def cmd_cache_ls(args) -> int:
    cache = KernelCache(default_cache_dir())
    rows = []
    for entry in cache.entries():
        cubin = entry / "kernel.cubin"
        try:
            meta = json.loads((entry / "meta.json").read_text())
        except (OSError, ValueError):
            meta = {}
        if not isinstance(meta, dict):
            meta = {}
        rows.append({"entry": entry.name, "kernel": meta.get("kernel", "?"), "key": meta.get("key", "?"),
                     "name_expr": meta.get("name_expr", "?"), "cubin": str(cubin),
                     "bytes": cubin.stat().st_size if cubin.is_file() else 0})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{cache.root}: {len(rows)} entries")
    for row in rows:
        print(f"{row['kernel']}  {row['key'][:16]}  {row['bytes']:>9} B  {row['cubin']}\n    {row['name_expr']}")
    return 0


def cmd_cache_verify(args) -> int:
    cache = KernelCache(default_cache_dir())
    total = len(cache.entries())
    bad = cache.verify(repair=True)
    for entry, problem in bad:
        print(f"BAD {entry.name}: {problem} (removed; rebuilt on next use)")
    if bad:
        print(f"{len(bad)} of {total} entries were bad")
        return 1
    print(f"all {total} entries OK")
    return 0


def cmd_cache_clear(args) -> int:
    cache = KernelCache(default_cache_dir())
    removed = cache.clear()
    print(f"removed {removed} entries from {cache.root}")
    return 0


# ---- demo -------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    import torch

    if torch.cuda.is_available():
        return demo_gpu()
    return demo_cpu()


def demo_gpu() -> int:
    import torch

    import mategemm
    from mategemm.testing import TOLERANCE, calc_diff, fp8_gemm_reference, make_fp8_gemm_inputs
    from mategemm.testing.timing import median_ms

    m, n, k = DEMO_SHAPE
    print(f"device: {torch.cuda.get_device_name()}; gemm_fp8_nt_groupwise m={m} n={n} k={k} recipe (1,128,128)")
    a, b, sa, sb = make_fp8_gemm_inputs(m, n, k)
    out = mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb)
    diff = calc_diff(out, fp8_gemm_reference(a, b, sa, sb))
    tol = TOLERANCE[("fp8_gemm", out.dtype)]
    print(f"calc_diff vs fp64 reference: {diff:.2e} (tolerance {tol:.0e}) {'OK' if diff <= tol else 'FAILED'}")

    flops = 2.0 * m * n * k
    rows = [("mategemm", lambda: mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out))]
    try:
        from mategemm.testing.peers import cublas_blockwise

        rows.append(("cuBLAS blockwise", cublas_blockwise(a, b, sa, sb)))
    except Exception as exc:  # noqa: BLE001 - the peer is optional
        print(f"cuBLAS blockwise unavailable: {exc}")
    for name, fn in rows:
        try:
            ms = median_ms([fn])
        except Exception as exc:  # noqa: BLE001 - a peer failing must not hide our result
            print(f"{name:<18} failed: {exc}")
            continue
        print(f"{name:<18} {ms:8.3f} ms  {flops / ms / 1e9:7.1f} TFLOPS")
    moe_ok = demo_moe_gpu()
    return 0 if diff <= tol and moe_ok else 1


def demo_moe_gpu() -> bool:
    """DeepSeek-V3's first expert GEMM at decode: 64 tokens x top-8 over 256 experts, token-packed
    (per_expert) against 128-row padding (per_token), checked on a few experts."""
    import torch

    import mategemm
    from mategemm.testing import TOLERANCE, moe
    from mategemm.testing.timing import median_ms

    n, k = 4096, 7168
    counts = moe.routing_counts(64, 256, 8, generator=torch.Generator().manual_seed(0))
    b, sfb = moe.make_expert_weights(256, n, k)
    count_t, _ = moe.packed_layout(counts)
    a, sfa = moe.make_tokens(sum(counts), k)
    out = torch.full((a.shape[0], n), float("nan"), dtype=torch.bfloat16, device="cuda")
    packed = lambda: mategemm.ragged_m_moe_gemm_8bit((a, sfa), (b, sfb), count_t, out, gemm_mode="per_expert")  # noqa: E731
    packed()
    experts = moe.spot_check_experts(counts, 2.0 * n * k, 5e10)
    diff = moe.calc_diff_rows(out, moe.ragged_m_reference(a, sfa, b, sfb, count_t, "per_expert", experts=experts))
    tol = TOLERANCE[("fp8_gemm", torch.bfloat16)]
    ids, _ = moe.per_token_layout(counts, 128)
    a_pad, sfa_pad = moe.make_tokens(ids.numel(), k)
    out_pad = torch.empty((ids.numel(), n), dtype=torch.bfloat16, device="cuda")
    padded = lambda: mategemm.ragged_m_moe_gemm_8bit((a_pad, sfa_pad), (b, sfb), ids, out_pad)  # noqa: E731
    ms_packed, ms_padded = median_ms([packed]), median_ms([padded])
    print(f"MoE decode, 64 tokens x top-8 / 256 experts, n={n} k={k}: per_expert {ms_packed:.3f} ms, per_token "
          f"(128-row padding) {ms_padded:.3f} ms; calc_diff on {len(experts)} experts {diff:.2e} "
          f"{'OK' if diff <= tol else 'FAILED'}")
    return diff <= tol


def demo_cpu() -> int:
    print("no GPU found: compiling the dense_fp8 kernels for sm_90a and checking the reference on the CPU "
          "(nothing is launched)")
    planned = prewarm.plan(prewarm.resolve_shapes(DEMO_SUITE), "sm_90a")
    compiled, seconds = compile_plan(planned)
    print(f"{len(planned)} kernels: {compiled} compiled, {len(planned) - compiled} cached, {seconds:.1f} s")
    grouped_specs = demo_grouped_specs()
    start = time.perf_counter()
    for spec in grouped_specs:
        default_cache().get(spec)
    seconds = time.perf_counter() - start
    print(f"{len(grouped_specs)} more kernels (MoE decode, bmm, M/N-major operands, MQA logits): ready in "
          f"{seconds:.1f} s")
    ok = True
    for recipe in prewarm.RECIPES:
        diff, tol = check_reference_cpu(DEMO_CPU_SHAPE, (recipe.gm, recipe.gn, recipe.gk))
        passed = diff <= tol
        ok &= passed
        print(f"reference {recipe.name} m,n,k={DEMO_CPU_SHAPE}: calc_diff vs per-block fp32 sum {diff:.2e} "
              f"(tolerance {tol:.0e}) {'OK' if passed else 'FAILED'}")
    print("NO GPU: only compilation and the reference were checked; run `mategemm demo` on an H100/H200 "
          "to run the kernels.")
    return 0 if ok else 1


def demo_grouped_specs() -> list:
    """The kernels of the GPU demo's MoE step, of a per-tensor bmm, of a decode bmm with N-major
    weights transposed in the kernel, the K-major copy kernel and the lightning indexer, planned
    for sm_90a."""
    import torch

    from mategemm.heuristics import grouped
    from mategemm.kernels import sm90_fp8_gemm_blockscaled as kernel_fp8
    from mategemm.kernels import sm90_fp8_mqa_logits as mqa_logits
    from mategemm.kernels import transpose_8bit
    from mategemm.runtime.device import SM90_NO_DEVICE
    from mategemm.types import GemmProblem, Recipe, RECIPE_1x128_128x128

    e4m3 = torch.float8_e4m3fn
    problems = [(GemmProblem(512, 4096, 7168, RECIPE_1x128_128x128, e4m3, e4m3, torch.bfloat16, "per_expert", 256), 2),
                (GemmProblem(4096, 4096, 4096, Recipe(1, -1, -1), e4m3, e4m3, torch.bfloat16, "batched", 16), 4096),
                (GemmProblem(128, 7168, 512, Recipe(1, -1, -1), e4m3, e4m3, torch.bfloat16, "batched", 64, 2), 128)]
    specs = []
    for problem, rows in problems:
        config = grouped.choose(problem, rows, SM90_NO_DEVICE, SM90_NO_DEVICE.num_sms)
        specs.append(kernel_fp8.spec(problem, config, "sm_90a"))
    specs += [transpose_8bit.spec(vector_loads, "sm_90a") for vector_loads in (True, False)]
    # the lightning indexer: DeepSeek-V3.2's decode (64 heads, next_n 1 and 2) and prefill tiles
    for rows, heads, paged in ((1, 64, True), (2, 64, True), (2, 64, False)):
        stages = mqa_logits.stages_for(rows, heads, SM90_NO_DEVICE.smem_per_block)
        specs.append(mqa_logits.spec(rows, heads, stages, paged, "sm_90a"))
    return specs


def check_reference_cpu(shape: tuple[int, int, int], recipe: tuple[int, int, int]) -> tuple[float, float]:
    """calc_diff between fp8_gemm_reference and a per-128-K-block fp32 sum (the kernel's own order)."""
    import torch

    from mategemm.testing import TOLERANCE, calc_diff, fp8_gemm_reference, make_fp8_gemm_inputs

    m, n, k = shape
    a, b, sa, sb = make_fp8_gemm_inputs(m, n, k, recipe, device="cpu")
    sb_rows = sb.repeat_interleave(recipe[1], dim=0)[:n]  # one scale row per column of the output
    blockwise = torch.zeros((m, n), dtype=torch.float32)
    for kb in range(k // 128):
        part = a[:, kb * 128:(kb + 1) * 128].float() @ b[:, kb * 128:(kb + 1) * 128].float().t()
        blockwise += part * sa[:, kb:kb + 1] * sb_rows[:, kb][None, :]
    ref = fp8_gemm_reference(a, b, sa, sb, recipe)
    return calc_diff(blockwise.to(torch.bfloat16), ref), TOLERANCE[("fp8_gemm", torch.bfloat16)]


# ---- argument parsing -------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mategemm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("info", help="device, NVRTC version, cache and env knobs").set_defaults(run=cmd_info)

    warm = sub.add_parser("prewarm", help="compile the kernels a list of shapes or a model needs (no GPU needed)")
    warm.add_argument("--arch", default="sm_90a", help="target arch (default sm_90a)")
    what = warm.add_mutually_exclusive_group(required=True)
    what.add_argument("--shapes",
                      help="a shapes JSON file, or a suite name of tools/shapes/shapes.json (e.g. dense_fp8)")
    what.add_argument("--preset", help=f"a model preset ({', '.join(prewarm.preset_names())}, or a preset JSON "
                                       f"file): every kernel that 1..--max-tokens tokens can pick")
    warm.add_argument("--max-tokens", type=_positive_int, default=None,
                      help=f"with --preset: the most tokens per call (default {prewarm.DEFAULT_MAX_TOKENS})")
    warm.add_argument("--jobs", type=_positive_int, default=os.cpu_count() or 1,
                      help="worker processes compiling at once (default: one per CPU core)")
    warm.set_defaults(run=cmd_prewarm)

    cache = sub.add_parser("cache", help="inspect the kernel cache").add_subparsers(dest="cache_command",
                                                                                    required=True)
    ls = cache.add_parser("ls", help="list entries")
    ls.add_argument("--json", action="store_true", help="print a JSON list")
    ls.set_defaults(run=cmd_cache_ls)
    cache.add_parser("verify", help="check every entry; remove bad ones (exit 1 if any)").set_defaults(
        run=cmd_cache_verify)
    cache.add_parser("clear", help="remove every entry").set_defaults(run=cmd_cache_clear)

    sub.add_parser("demo", help="check and time one DeepSeek-V3 GEMM and an MoE decode step "
                                "(compile-only without a GPU)").set_defaults(
        run=cmd_demo)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"mategemm {args.command}: {exc}", file=sys.stderr)
        return 2
