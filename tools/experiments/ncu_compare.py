#!/usr/bin/env python3
"""FP8 GEMM kernels on one shape under Nsight Compute, side by side (a lab tool): DeepGEMM's and
mategemm's dense GEMM, or with --groups their contiguous grouped GEMM (and our dense one on the
same work), or with --k-groups their k-grouped (weight-gradient) GEMM. `run` needs a GPU, ncu and
DeepGEMM importable (`source tools/deepgemm_build.sh`) where a DeepGEMM column is asked for;
`table` reads ncu's raw CSV pages anywhere.

    python tools/experiments/ncu_compare.py run --shape 4096x4096x7168 [--out DIR] [--set full] [--clock-control none]
    python tools/experiments/ncu_compare.py run --shape 8192x4096x7168 --groups 4 --impls mategemm_dense,mategemm
    python tools/experiments/ncu_compare.py table A_raw.csv B_raw.csv [...] [--labels deepgemm,mategemm]
    python tools/experiments/ncu_compare.py run --shape 7168x2048x2048 --k-groups 8
    python tools/experiments/ncu_compare.py run --shape 4096x32768x512 --source   (and per SASS line)
    python tools/experiments/ncu_compare.py hot A_sass.csv [...]

`run` profiles one launch of each (after two warm-up launches; A's scales MN-major for all, the
layout DeepGEMM's kernel reads), writes DIR/<impl>_<shape>_raw.csv (`ncu --csv --page raw`) and
prints the table: the metrics the core-speed work compares, each kernel's value and its ratio to
the first column's. --source also keeps each report and exports its SASS source page
(DIR/<impl>_<shape>_sass.csv: executed instructions and warp-stall samples per instruction), then
prints per kernel the opcodes by executed instructions and the lines that drew the most stall
samples (`hot` prints the same from exported pages). --groups G: G experts of m rows each
(multiples of 128: no padding rows, so every tile is whole), per_token ids for ours, DeepGEMM's
contiguous layout; mategemm_dense is our dense GEMM of (G * m, n, k). --k-groups G: G groups of k
K-rows each (a multiple of 128) adding into one fp32 (G, m, n) output, both operands K-major (ours
strided over all groups' K, DeepGEMM's one group after another), scales MN-major.
"""
import argparse
import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# (row label, ncu metric)
METRICS = (
    ("duration (ns)", "gpu__time_duration.sum"),
    ("elapsed cycles", "gpc__cycles_elapsed.max"),
    ("SM frequency (Hz)", "sm__cycles_elapsed.avg.per_second"),
    ("tensor pipe active (%)", "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active"),
    ("issued IPC", "sm__inst_issued.avg.per_cycle_active"),
    ("executed instructions", "smsp__inst_executed.sum"),
    ("branch instructions", "smsp__inst_executed_op_branch.sum"),
    ("warp cycles per issued instruction", "smsp__average_warp_latency_per_inst_issued.ratio"),
    ("stall long scoreboard / issue", "smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio"),
    ("stall wait / issue", "smsp__average_warps_issue_stalled_wait_per_issue_active.ratio"),
    ("stall gmma / issue", "smsp__average_warps_issue_stalled_gmma_per_issue_active.ratio"),
    ("stall barrier / issue", "smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio"),
    ("stall short scoreboard / issue", "smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio"),
    ("stall mio throttle / issue", "smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio"),
    ("stall math pipe throttle / issue", "smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio"),
    ("shared load wavefronts", "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum"),
    ("global load instructions", "smsp__sass_inst_executed_op_global_ld.sum"),
    ("shared store instructions", "smsp__sass_inst_executed_op_shared_st.sum"),
    ("stmatrix instructions", "smsp__inst_executed_op_shared_stsm.sum"),
    ("shared store bank conflicts", "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum"),
    ("L2 throughput (%)", "lts__throughput.avg.pct_of_peak_sustained_elapsed"),
    ("L2 hit rate (%)", "lts__t_sector_hit_rate.pct"),
    ("L2 sectors from the other partition", "lts__t_sectors_srcunit_ltcfabric.sum"),
    ("DRAM throughput (%)", "dram__throughput.avg.pct_of_peak_sustained_elapsed"),
    ("DRAM bytes read", "dram__bytes_read.sum"),
    ("achieved warps per SM", "sm__warps_active.avg.per_cycle_active"),
)
KERNELS = {"mategemm": "sm90_fp8_gemm_blockscaled", "mategemm_dense": "sm90_fp8_gemm_blockscaled",
           "deepgemm": "sm90_fp8_gemm_1d2d", "mategemm_k_grouped": "sm90_fp8_gemm_blockscaled",
           "deepgemm_k_grouped": "sm90_fp8_gemm_1d1d"}


def read_raw(path: Path) -> dict[str, float]:
    """The metrics of the first profiled kernel in an `ncu --csv --page raw` file (header, units,
    values; thousands separators dropped; non-numbers skipped)."""
    lines = path.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), 0)  # after ncu's own lines
    rows = list(csv.reader(lines[start:]))
    header, values = rows[0], rows[2]
    metrics = {}
    for name, value in zip(header, values):
        try:
            metrics[name] = float(value.replace(",", ""))
        except ValueError:
            continue
    return metrics


def table(paths: list[Path], labels: list[str]) -> str:
    runs = [read_raw(p) for p in paths]
    ratios = [f"{label} / {labels[0]}" for label in labels[1:]]
    lines = [f"| metric | {' | '.join(labels)} | {' | '.join(ratios)} |", "|---|" + "---|" * (2 * len(labels) - 1)]
    for label, metric in METRICS:
        cells = [run.get(metric) for run in runs]
        shown = [f"{c:,.3g}" if c is not None and abs(c) < 100 else f"{c:,.0f}" if c is not None else "-" for c in cells]
        shown += [f"{c / cells[0]:.2f}" if c is not None and cells[0] else "-" for c in cells[1:]]
        lines.append(f"| {label} | {' | '.join(shown)} |")
    return "\n".join(lines)


def read_source(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The rows of an `ncu --page source --csv --print-source sass` export (columns as ncu names them)."""
    lines = path.read_text().splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith(('"Address"', '"# Address"'))), 0)
    rows = list(csv.DictReader(lines[header:]))
    return (list(rows[0]) if rows else []), rows


def _number(value: str | None) -> float:
    try:
        return float((value or "").replace(",", ""))
    except ValueError:
        return 0.0


def hot(path: Path, top: int = 25) -> str:
    """Executed warp instructions per opcode, and the SASS lines that drew the most stall samples."""
    columns, rows = read_source(path)
    executed = next((c for c in columns if c.startswith("Instructions Executed")), None)
    samples = next((c for c in columns if c.startswith("Warp Stall Sampling (All")), None)
    if executed is None or samples is None:
        return f"{path.name}: no executed/stall-sampling columns in {columns}"
    per_op: dict[str, list[float]] = {}
    for row in rows:
        tokens = row.get("Source", "").replace("@", " @").split()
        op = next((t.split(".")[0] for t in tokens if not t.startswith("@")), "?")
        entry = per_op.setdefault(op, [0.0, 0.0])
        entry[0] += _number(row.get(executed))
        entry[1] += _number(row.get(samples))
    total_exec = sum(v[0] for v in per_op.values()) or 1.0
    total_samples = sum(v[1] for v in per_op.values()) or 1.0
    lines = [f"{path.name}: {total_exec:,.0f} warp instructions, {total_samples:,.0f} stall samples",
             "| opcode | executed | % | stall samples % |", "|---|---|---|---|"]
    for op, (n, smp) in sorted(per_op.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"| {op} | {n:,.0f} | {100 * n / total_exec:.1f} | {100 * smp / total_samples:.1f} |")
    lines += ["", "| # | stall samples % | executed | SASS |", "|---|---|---|---|"]
    ranked = sorted(enumerate(rows), key=lambda ir: -_number(ir[1].get(samples)))[:top]
    for i, row in ranked:
        lines.append(f"| {i} | {100 * _number(row.get(samples)) / total_samples:.1f} | "
                     f"{_number(row.get(executed)):,.0f} | {row.get('Source', '').strip()[:70]} |")
    return "\n".join(lines)


def launch_k_grouped(impl: str, m: int, n: int, k: int, groups: int) -> None:
    import torch

    import mategemm
    from mategemm.testing import moe

    (a, sfa), (b, sfb) = (moe.make_k_grouped_operand(groups * k, cols) for cols in (m, n))
    out = torch.zeros((groups, m, n), dtype=torch.float32, device="cuda")
    counts = torch.full((groups,), k, dtype=torch.int32, device="cuda")
    if impl.startswith("deepgemm"):
        import deep_gemm
        flat_a, flat_b = (torch.cat([x[g * k:(g + 1) * k].t().reshape(-1) for g in range(groups)]) for x in (a, b))
    else:
        a_k, b_k = moe.k_major(a), moe.k_major(b)
    for _ in range(3):
        if impl.startswith("deepgemm"):
            deep_gemm.k_grouped_fp8_gemm_nt_contiguous((flat_a, sfa.t()), (flat_b, sfb.t()), out, [k] * groups, counts,
                                                      out)
        else:
            mategemm.ragged_k_moe_gemm_8bit((a_k, sfa), (b_k, sfb), counts, out, major_a_mode="K", major_b_mode="K",
                                            scale_granularity_mnk=(1, 1, 128))
    torch.cuda.synchronize()


def launch(impl: str, m: int, n: int, k: int, groups: int) -> None:
    """Three launches of one implementation (ncu skips the first two)."""
    import torch

    import mategemm
    from mategemm.testing import moe
    from mategemm.testing.reference import make_fp8_gemm_inputs

    if impl.endswith("_k_grouped"):
        return launch_k_grouped(impl, m, n, k, groups)
    if groups and impl != "mategemm_dense":
        a, sfa = moe.make_tokens(groups * m, k)
        sfa = sfa.t().contiguous().t()  # MN-major, as DeepGEMM's kernel reads them
        b, sfb = moe.make_expert_weights(groups, n, k)
        ids = torch.arange(groups, dtype=torch.int32, device="cuda").repeat_interleave(m)
        out = torch.empty((groups * m, n), dtype=torch.bfloat16, device="cuda")
        for _ in range(3):
            if impl == "mategemm":
                mategemm.ragged_m_moe_gemm_8bit((a, sfa), (b, sfb), ids, out, gemm_mode="per_token")
            else:
                import deep_gemm
                deep_gemm.m_grouped_fp8_gemm_nt_contiguous((a, sfa), (b, sfb), out, ids, disable_ue8m0_cast=True)
        torch.cuda.synchronize()
        return
    m = max(1, groups) * m
    a, b, sa, sb = make_fp8_gemm_inputs(m, n, k, scale_major_mode="MN")
    out = torch.empty((m, n), dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        if impl.startswith("mategemm"):
            mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, scale_major_mode="MN", out=out)
        else:
            import deep_gemm
            deep_gemm.fp8_gemm_nt((a, sa.t()), (b, sb.t().contiguous()), out, disable_ue8m0_cast=True)
    torch.cuda.synchronize()


def run(shape: str, out: Path, section_set: str, clock_control: str = "base", groups: int = 0,
        impls: tuple[str, ...] = ("deepgemm", "mategemm"), source: bool = False, cache_control: str = "all") -> None:
    k_grouped = any(impl.endswith("_k_grouped") for impl in impls)
    if k_grouped and (not groups or int(shape.split("x")[2]) % 128):
        raise SystemExit("the k-grouped impls need --k-groups and k (K-rows per group) a multiple of 128")
    if groups and not k_grouped and int(shape.split("x")[0]) % 128:
        raise SystemExit("--groups: m (rows per expert) must be a multiple of 128")
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{groups}x{shape}" if groups else shape
    paths = []
    for impl in impls:
        path = out / f"{impl}_{tag}_raw.csv"
        report = out / f"{impl}_{tag}"
        command = ["ncu", "--set", section_set, "--clock-control", clock_control, "--cache-control", cache_control,
                   *(("--import-source", "no", "-f", "-o", str(report)) if source else ("--csv", "--page", "raw")),
                   "--kernel-name", f"regex:{KERNELS[impl]}", "--launch-skip", "2", "--launch-count", "1",
                   sys.executable, __file__, "_launch", impl, shape, str(groups)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if done.returncode == 0 and source:  # the raw page and the SASS source page of the saved report
            done = subprocess.run(["ncu", "--import", f"{report}.ncu-rep", "--csv", "--page", "raw"],
                                  capture_output=True, text=True)
        csv_start = done.stdout.find('"ID"')
        if done.returncode != 0 or csv_start < 0:
            raise SystemExit(f"ncu failed for {impl} (rc {done.returncode}):\n{done.stderr[-2000:]}")
        path.write_text(done.stdout[csv_start:])
        paths.append(path)
        if source:
            exported = subprocess.run(["ncu", "--import", f"{report}.ncu-rep", "--page", "source", "--csv",
                                       "--print-source", "sass"], capture_output=True, text=True)
            if exported.returncode != 0:
                raise SystemExit(f"ncu source export failed for {impl}:\n{exported.stderr[-2000:]}")
            sass_path = out / f"{impl}_{tag}_sass.csv"
            sass_path.write_text(exported.stdout)
            print(hot(sass_path))
    what = f"{groups} K-groups of {shape}" if k_grouped else f"{groups} experts of {shape}" if groups else shape
    clocks = "locked to base" if clock_control == "base" else "as the card runs them"
    caches = "flushed" if cache_control == "all" else "as the warm-up launches left them"
    print(f"{what}, one launch each (clocks: {clocks}; caches: {caches}):")
    print(table(paths, list(impls)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="profile both kernels (GPU)")
    r.add_argument("--shape", default="4096x4096x7168")
    r.add_argument("--out", type=Path, default=Path("/tmp/ncu_compare"))
    r.add_argument("--set", dest="section_set", default="full")
    r.add_argument("--clock-control", choices=("base", "none"), default="base",
                   help="ncu's default locks the SM clock to base; none profiles at the clocks a benchmark sees")
    r.add_argument("--cache-control", choices=("all", "none"), default="all",
                   help="ncu's default flushes the caches before the launch; none keeps what the warm-up left in L2")
    r.add_argument("--groups", type=int, default=0, help="the contiguous grouped GEMM: experts of --shape's m rows")
    r.add_argument("--k-groups", type=int, default=0,
                   help="the k-grouped GEMM: groups of --shape's k K-rows (impls default to the k-grouped pair)")
    r.add_argument("--impls", default="", help=f"comma-separated, of {', '.join(KERNELS)}")
    r.add_argument("--source", action="store_true", help="also export each kernel's SASS source page")
    h = sub.add_parser("hot", help="opcodes and stall-sampled lines of exported SASS source pages")
    h.add_argument("paths", type=Path, nargs="+")
    t = sub.add_parser("table", help="the table of raw CSV pages")
    t.add_argument("paths", type=Path, nargs="+")
    t.add_argument("--labels", default="deepgemm,mategemm")
    launch_parser = sub.add_parser("_launch")
    launch_parser.add_argument("impl", choices=tuple(KERNELS))
    launch_parser.add_argument("shape")
    launch_parser.add_argument("groups", type=int)
    args = parser.parse_args()
    if args.command == "run":
        default = "deepgemm_k_grouped,mategemm_k_grouped" if args.k_groups else "deepgemm,mategemm"
        impls = tuple((args.impls or default).split(","))
        if set(impls) - set(KERNELS):
            parser.error(f"--impls: each one of {', '.join(KERNELS)}")
        if args.k_groups and args.groups:
            parser.error("--groups and --k-groups: one or the other")
        run(args.shape, args.out, args.section_set, args.clock_control, args.groups or args.k_groups, impls,
            args.source, args.cache_control)
    elif args.command == "table":
        labels = args.labels.split(",")
        if len(labels) != len(args.paths):
            parser.error("--labels: one per path")
        print(table(args.paths, labels))
    elif args.command == "hot":
        for path in args.paths:
            print(hot(path))
    else:
        sys.path.insert(0, str(ROOT))
        launch(args.impl, *(int(v) for v in args.shape.split("x")), args.groups)


if __name__ == "__main__":
    main()
