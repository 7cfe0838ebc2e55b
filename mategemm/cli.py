"""The `mategemm` console command: info | prewarm | cache ls/verify/clear | demo."""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from typing import NamedTuple

from mategemm import env, prewarm, suites
from mategemm.jit import nvrtc
from mategemm.jit.cache import MARKER, CacheDirError, KernelCache, default_cache, default_cache_dir

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
    report = KernelCache(default_cache_dir()).report()
    size = sum(f.stat().st_size for entry in report.entries for f in entry.iterdir() if f.is_file())
    print(f"cache:     {report.root} ({len(report.entries)} entries, {size / 2**20:.1f} MiB{cache_notes(report)})")
    print("env:")
    for name, value in env.snapshot().items():
        print(f"  {name}={value}")
    return 0


# ---- prewarm ----------------------------------------------------------------------------------
def cmd_prewarm(args) -> int:
    from mategemm.runtime.device import get_num_mp, info_for_arch

    if args.max_tokens is not None and args.preset is None:
        raise ValueError("--max-tokens applies to --preset only (a --shapes suite gives its own sizes)")
    device = info_for_arch(args.arch)
    num_mp, force = get_num_mp(device), env.force_config()
    start = time.perf_counter()
    if args.preset is None:
        suite_list = suites.resolve(args.shapes)
        planned = prewarm.plan_suites(suite_list, args.arch, num_mp=num_mp, force=force)
        label = what = f"shapes {', '.join(s.name for s in suite_list)}"
    else:
        preset = prewarm.load_preset(args.preset)
        max_tokens = args.max_tokens or prewarm.DEFAULT_MAX_TOKENS
        planned = prewarm.plan_preset(preset, max_tokens, args.arch, num_mp=num_mp, force=force)
        label = f"preset {preset.name}"
        what = f"{label}, M = 1..{max_tokens} tokens"
    families = {}
    for item in planned:
        families[item.family] = families.get(item.family, 0) + 1
    print(f"{what}, {args.arch} ({num_mp} SMs): {' + '.join(f'{n} {f}' for f, n in families.items())} kernels, "
          f"planned in {time.perf_counter() - start:.1f} s", flush=True)
    cache = default_cache()
    why = cache.report().unwritable
    if why or not cache.writable:
        print(f"mategemm prewarm: the cache directory {cache.root} is not writable ({why or 'see above'}): "
              f"nothing would be stored", file=sys.stderr)
        return 1
    progress = Progress(len(planned))
    try:
        results = compile_specs([item.spec for item in planned], args.jobs, progress.update)
    except nvrtc.CompileError as exc:
        progress.close()
        print(f"mategemm prewarm: {exc}", file=sys.stderr)
        return 1
    progress.close()
    compiled = sum(r.compiled for r in results)
    print(f"{len(planned)} kernels for {label}: {compiled} compiled, {len(planned) - compiled} already cached, "
          f"{progress.seconds():.1f} s (--jobs {args.jobs})")
    unstored = sum(r.entry is None for r in results)
    if unstored:
        print(f"mategemm prewarm: {unstored} kernels were compiled but not stored: the cache directory {cache.root} "
              f"is not writable", file=sys.stderr)
        return 1
    return 0


class CompileResult(NamedTuple):
    compiled: bool         # NVRTC ran for it (else it was found in the cache)
    seconds: float
    entry: str | None      # the cache entry's directory name, None when compiled in memory only


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
def cache_notes(report) -> str:
    """What a user should know of a cache directory beyond its entries, as '; ...' clauses."""
    notes = []
    if not report.exists:
        notes.append("does not exist yet")
    if report.refusal():
        notes.append(f"NOT a mategemm cache: no {MARKER}, holds {', '.join(report.foreign)}")
    elif report.foreign:
        notes.append(f"also holds {len(report.foreign)} items mategemm did not write, left alone: "
                     f"{', '.join(report.foreign)}")
    if report.unwritable:
        notes.append(f"NOT writable: {report.unwritable}")
    return "".join(f"; {note}" for note in notes)


def open_cache_report():
    """(cache, report) of the configured directory; raises CacheDirError when it is not a cache."""
    cache = KernelCache(default_cache_dir())
    report = cache.report()
    if report.refusal():
        raise CacheDirError(report.refusal())
    return cache, report


def warn_foreign(report) -> None:
    if report.foreign:
        print(f"left alone (not written by mategemm): {', '.join(report.foreign)}", file=sys.stderr)


def cmd_cache_ls(args) -> int:
    _, report = open_cache_report()
    rows = []
    for entry in report.entries:
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
        warn_foreign(report)
        return 0
    print(f"{report.root}: {len(rows)} entries{cache_notes(report)}")
    for row in rows:
        print(f"{row['kernel']}  {row['key'][:16]}  {row['bytes']:>9} B  {row['cubin']}\n    {row['name_expr']}")
    return 0


def cmd_cache_verify(args) -> int:
    cache, report = open_cache_report()
    if not report.exists:
        notes = cache_notes(report).replace("; does not exist yet", "")
        print(f"no cache at {report.root} yet: nothing to verify{notes}")
        return 0
    writable = not report.unwritable
    bad = cache.verify(repair=writable)
    action = "removed; rebuilt on next use" if writable else "NOT removed: the directory is not writable"
    for entry, problem in bad:
        print(f"BAD {entry.name}: {problem} ({action})")
    warn_foreign(report)
    if report.unwritable:
        print(f"warning: the cache directory is not writable ({report.unwritable})", file=sys.stderr)
    if bad:
        print(f"{len(bad)} of {len(report.entries)} entries were bad")
        return 1
    print(f"all {len(report.entries)} entries OK")
    return 0


def cmd_cache_clear(args) -> int:
    cache, report = open_cache_report()
    if not report.exists:
        print(f"nothing to clear: no cache at {report.root}")
        return 0
    removed = cache.clear()
    print(f"removed {removed} entries from {cache.root}")
    warn_foreign(report)
    return 0


# ---- demo -------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    import torch

    if torch.cuda.is_available():
        return demo_gpu()
    return demo_cpu()


def demo_ms(call) -> float:
    """Median time of one call in ms (torch.utils.benchmark: warmed up, CUDA-synchronised). The
    benchmarks' method, with peers beside ours, is tools/bench.py's."""
    from torch.utils import benchmark

    return benchmark.Timer("call()", globals={"call": call}).blocked_autorange(min_run_time=0.2).median * 1e3


def demo_gpu() -> int:
    import torch

    import mategemm
    from mategemm.testing import TOLERANCE, calc_diff, fp8_gemm_reference, make_fp8_gemm_inputs

    m, n, k = DEMO_SHAPE
    print(f"device: {torch.cuda.get_device_name()}; gemm_fp8_nt_groupwise m={m} n={n} k={k} recipe (1,128,128)")
    a, b, sa, sb = make_fp8_gemm_inputs(m, n, k)
    out = mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb)
    diff = calc_diff(out, fp8_gemm_reference(a, b, sa, sb))
    tol = TOLERANCE[("fp8_gemm", out.dtype)]
    print(f"calc_diff vs fp64 reference: {diff:.2e} (tolerance {tol:.0e}) {'OK' if diff <= tol else 'FAILED'}")
    ms = demo_ms(lambda: mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out))
    print(f"mategemm {ms:8.3f} ms  {2.0 * m * n * k / ms / 1e9:7.1f} TFLOPS")
    moe_ok = demo_moe_gpu()
    return 0 if diff <= tol and moe_ok else 1


def demo_moe_gpu() -> bool:
    """DeepSeek-V3's first expert GEMM at decode: 64 tokens x top-8 over 256 experts, token-packed
    (per_expert) against 128-row padding (per_token), checked on a few experts."""
    import torch

    import mategemm
    from mategemm.testing import TOLERANCE, moe

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
    ms_packed, ms_padded = demo_ms(packed), demo_ms(padded)
    print(f"MoE decode, 64 tokens x top-8 / 256 experts, n={n} k={k}: per_expert {ms_packed:.3f} ms, per_token "
          f"(128-row padding) {ms_padded:.3f} ms; calc_diff on {len(experts)} experts {diff:.2e} "
          f"{'OK' if diff <= tol else 'FAILED'}")
    return diff <= tol


def demo_cpu() -> int:
    print("no GPU found: compiling the dense_fp8 kernels for sm_90a and checking the reference on the CPU "
          "(nothing is launched)")
    planned = prewarm.plan_suites(suites.resolve(DEMO_SUITE), "sm_90a")
    start = time.perf_counter()
    results = compile_specs([item.spec for item in planned], 1)
    compiled = sum(r.compiled for r in results)
    print(f"{len(planned)} kernels: {compiled} compiled, {len(planned) - compiled} cached, "
          f"{time.perf_counter() - start:.1f} s")
    grouped_specs = demo_grouped_specs()
    start = time.perf_counter()
    stored = all(r.entry is not None for r in results)
    for spec in grouped_specs:
        stored &= default_cache().get(spec).path is not None
    seconds = time.perf_counter() - start
    print(f"{len(grouped_specs)} more kernels (MoE decode, bmm, M/N-major operands, MQA logits): ready in "
          f"{seconds:.1f} s")
    if not stored:
        print(f"warning: the cache directory {default_cache().root} is not writable: the kernels were compiled in "
              f"memory only", file=sys.stderr)
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

    from mategemm import plan
    from mategemm.kernels import transpose_8bit
    from mategemm.runtime.device import SM90_NO_DEVICE
    from mategemm.types import GemmProblem, Recipe, RECIPE_1x128_128x128

    e4m3, device = torch.float8_e4m3fn, SM90_NO_DEVICE
    problems = [GemmProblem(512, 4096, 7168, RECIPE_1x128_128x128, e4m3, e4m3, torch.bfloat16, "per_expert", 256),
                GemmProblem(4096, 4096, 4096, Recipe(1, -1, -1), e4m3, e4m3, torch.bfloat16, "batched", 16),
                GemmProblem(128, 7168, 512, Recipe(1, -1, -1), e4m3, e4m3, torch.bfloat16, "batched", 64, 2)]
    specs = [plan.grouped_gemm(problem, device, num_mp=device.num_sms, force="").spec for problem in problems]
    specs += [transpose_8bit.spec(vector_loads, "sm_90a") for vector_loads in (True, False)]
    # the lightning indexer: DeepSeek-V3.2's decode (64 heads, next_n 1 and 2) and prefill tiles
    specs += [plan.mqa_logits(rows, 64, 128, paged, torch.float32, device).spec
              for rows, paged in ((1, True), (2, True), (2, False))]
    return specs


def check_reference_cpu(shape: tuple[int, int, int], recipe: tuple[int, int, int]) -> tuple[float, float]:
    """calc_diff between fp8_gemm_reference and a per-128-K-block fp32 sum (the kernel's own order)."""
    import torch

    from mategemm.testing import TOLERANCE, calc_diff, fp8_gemm_reference, make_fp8_gemm_inputs

    m, n, k = shape
    a, b, sa, sb = make_fp8_gemm_inputs(m, n, k, recipe, device="cpu")
    sb_rows = sb.repeat_interleave(recipe[1], dim=0)[:n]  # one scale row per column of the output
    blockwise = torch.zeros((m, n), dtype=torch.float32)
    for kb in range(-(-k // 128)):  # a K tail: the last block is shorter
        part = a[:, kb * 128:(kb + 1) * 128].float() @ b[:, kb * 128:(kb + 1) * 128].float().t()
        blockwise += part * sa[:, kb:kb + 1] * sb_rows[:, kb][None, :]
    ref = fp8_gemm_reference(a, b, sa, sb, recipe)
    return calc_diff(blockwise.to(torch.bfloat16), ref), TOLERANCE[("fp8_gemm", torch.bfloat16)]


# ---- argument parsing -------------------------------------------------------------------------
def _shapes_epilog() -> str:
    """--shapes explained: the shipped suites, then the file format (mategemm.suites' own words)."""
    try:
        names = ", ".join(suites.read(suites.SHAPES_FILE))
    except ValueError as exc:
        names = f"(unreadable: {exc})"
    intro = (f"--shapes takes suite names of the shipped list ({names}), comma-separated, or a JSON file of your "
             f"own: an object of suite name -> list of rows, or a plain list of rows (one suite). Every bad row is "
             f"reported with its suite, index and rule, and then nothing is compiled (exit 2). A suite's kind "
             f"follows from its rows' fields:")
    return textwrap.fill(intro, 100) + "\n" + suites.__doc__.split("every row of a suite has the same fields:", 1)[1]


def build_parser() -> argparse.ArgumentParser:
    from mategemm.version import __version__

    parser = argparse.ArgumentParser(prog="mategemm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mategemm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, text: str, run, parent=sub, **kwargs):
        cmd = parent.add_parser(name, help=text, description=text, **kwargs)
        cmd.set_defaults(run=run)
        return cmd

    command("info", "print mategemm, torch, CUDA and NVRTC versions, the device, the kernel sources' hash, the "
                    "cache directory and the MATEGEMM_* settings in force", cmd_info)

    warm = command("prewarm", "compile, without a GPU, every kernel a list of shapes or a model's FP8 GEMMs need, "
                              "into the kernel cache", cmd_prewarm, epilog=_shapes_epilog(),
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    warm.add_argument("--arch", default="sm_90a", help="target arch (default sm_90a)")
    what = warm.add_mutually_exclusive_group(required=True)
    what.add_argument("--shapes", metavar="SUITES|FILE",
                      help="suite names of the shipped shape list, comma-separated, or a shapes JSON file (see below)")
    what.add_argument("--preset", help=f"a model preset ({', '.join(prewarm.preset_names())}, or a preset JSON "
                                       f"file): every kernel that 1..--max-tokens tokens can pick")
    warm.add_argument("--max-tokens", type=_positive_int, default=None,
                      help=f"with --preset: the most tokens per call (default {prewarm.DEFAULT_MAX_TOKENS})")
    warm.add_argument("--jobs", type=_positive_int, default=os.cpu_count() or 1,
                      help="worker processes compiling at once (default: one per CPU core)")

    cache_help = (f"inspect or empty the kernel cache ({default_cache_dir()}; MATEGEMM_CACHE_DIR sets it). Only "
                  f"what mategemm wrote is ever removed")
    cache = sub.add_parser("cache", help=cache_help, description=cache_help).add_subparsers(
        dest="cache_command", required=True)
    ls = command("ls", "list the cache entries: kernel, key, cubin path and size", cmd_cache_ls, cache)
    ls.add_argument("--json", action="store_true", help="print a JSON list")
    command("verify", "check every entry's cubin against its checksum and remove the bad ones (exit 1 if any)",
            cmd_cache_verify, cache)
    command("clear", "remove every entry, failed-compile record and free lock file", cmd_cache_clear, cache)

    command("demo", "with a GPU: check and time one DeepSeek-V3 GEMM against cuBLAS and an MoE decode step, "
                    "packed vs padded; without one: compile the kernels for sm_90a and check the reference on the "
                    "CPU", cmd_demo)
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
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe fails here, inside the handler below
        return code
    except (ValueError, FileNotFoundError, CacheDirError) as exc:
        print(f"mategemm {' '.join(filter(None, (args.command, getattr(args, 'cache_command', None))))}: {exc}",
              file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`mategemm cache ls | head -1`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
