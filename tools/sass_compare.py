#!/usr/bin/env python3
"""Compare the SASS of every planned kernel between two trees (no GPU): a check that a change to
kernel source leaves the instructions that matter as they were.

    python tools/sass_compare.py dump DIR [--num-mp 132,8] [--force CONFIG]
    python tools/sass_compare.py compare BEFORE_DIR AFTER_DIR

`dump` compiles, through NVRTC, every kernel that the shipped shape suites and model presets plan
(at each SM budget of --num-mp: a small one brings split-K), and writes each one's SASS without
addresses and encodings to DIR, named by the first call that picks it (stable when kernel names or
template arguments change). Run it in each tree, e.g. a worktree of the base commit:

    git worktree add /tmp/base HEAD && (cd /tmp/base && python tools/sass_compare.py dump /tmp/sass_before)
    python tools/sass_compare.py dump /tmp/sass_after
    python tools/sass_compare.py compare /tmp/sass_before /tmp/sass_after

`compare` reports, per kernel, the opcodes whose counts moved among those that cost time or carry
data (wgmma, FP math, shared and global memory, barriers, TMA, shuffles, local memory), and the
change in total instructions; exit 1 when any of those counts moved or a kernel is missing.
"""
import argparse
import collections
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mategemm import prewarm, suites  # noqa: E402
from mategemm.jit.cache import KernelCache  # noqa: E402
from mategemm.testing import sass  # noqa: E402

ARCH = "sm_90a"
HOT = ("QGMMA", "HGMMA", "WARPGROUP", "FFMA", "FMUL", "FADD", "FMNMX", "MUFU", "F2FP", "LDS", "STS", "STSM", "LDSM",
       "LDG", "STG", "LDL", "STL", "ATOMS", "ATOMG", "RED", "REDG", "SYNCS", "BAR", "MEMBAR", "FENCE", "UTMALDG",
       "UTMASTG", "UTMAREDG", "UTMAPF", "UBLKCP", "SHFL", "MATCH", "USETMAXREG", "ELECT")
_ADDRESS = re.compile(r"/\*[0-9a-f]{4,}\*/")
_ENCODING = re.compile(r"^\s*/\* 0x[0-9a-f]+ \*/\s*$")
_PREDICATE = re.compile(r"^@!?U?P[T0-9]+\s+")


def planned_uses(num_mps: list[int], force: str):
    """{use: spec} of every kernel the shipped suites and presets plan, at each SM budget."""
    every_suite = suites.resolve(",".join(suites.read(suites.SHAPES_FILE)))
    uses = {}
    for num_mp in num_mps:
        kernels = prewarm.plan_suites(every_suite, ARCH, num_mp, force)
        for preset in prewarm.preset_names():
            kernels += prewarm.plan_preset(prewarm.load_preset(preset), arch=ARCH, num_mp=num_mp, force=force)
        for k in kernels:
            uses.setdefault(f"num_mp={num_mp} {k.use}", k.spec)
    # one file per kernel: the first use of each spec
    first = {}
    for use, spec in uses.items():
        first.setdefault(spec, use)
    return {use: spec for spec, use in first.items()}


def normalized(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if _ENCODING.match(line) or "Function :" in line or not line.strip():
            continue
        lines.append(_ADDRESS.sub("", line.split(";")[0]).strip())
    return "\n".join(lines) + "\n"


def dump(out: Path, num_mps: list[int], force: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cache = KernelCache(Path(tempfile.mkdtemp(prefix="sass_compare_")))
    uses = planned_uses(num_mps, force)
    for i, (use, spec) in enumerate(sorted(uses.items())):
        compiled = cache.get(spec)
        name = re.sub(r"[^A-Za-z0-9=.,_-]+", "_", use)[:180]
        (out / f"{name}.sass").write_text(f"// {spec.kernel}: {use}\n" + normalized(sass.dump_sass(
            compiled.path / "kernel.cubin")))
        print(f"[{i + 1}/{len(uses)}] {spec.kernel} {use}", flush=True)


def opcodes(path: Path) -> list[str]:
    ops = []
    for line in path.read_text().splitlines()[1:]:
        tokens = _PREDICATE.sub("", line).split()
        if tokens and re.match(r"^[A-Z][A-Za-z0-9_.]*$", tokens[0]):
            ops.append(tokens[0])
    return ops


def compare(before: Path, after: Path) -> int:
    moved, changes, missing = [], [], []
    for old in sorted(before.glob("*.sass")):
        new = after / old.name
        if not new.exists():
            missing.append(old.name)
            continue
        a, b = opcodes(old), opcodes(new)
        hot_a = collections.Counter(o for o in a if o.split(".")[0] in HOT)
        hot_b = collections.Counter(o for o in b if o.split(".")[0] in HOT)
        changes.append((len(b) - len(a)) / len(a))
        if hot_a != hot_b:
            moved.append((old.stem, {op: hot_b[op] - hot_a[op] for op in sorted(set(hot_a) | set(hot_b))
                                     if hot_a[op] != hot_b[op]}))
    for name, delta in moved:
        print(f"MOVED {name}: {delta}")
    for name in missing:
        print(f"MISSING in {after}: {name}")
    if changes:
        print(f"{len(changes)} kernels compared; {len(moved)} with moved hot-opcode counts; total instructions "
              f"{100 * min(changes):+.1f}% .. {100 * max(changes):+.1f}%")
    return 1 if moved or missing or not changes else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump", help="compile every planned kernel, write its SASS")
    d.add_argument("dir", type=Path)
    d.add_argument("--num-mp", default="132,8", help="SM budgets, comma-separated (default 132,8)")
    d.add_argument("--force", default="", help="a MATEGEMM_FORCE_CONFIG string for every GEMM")
    c = sub.add_parser("compare", help="hot-opcode counts of two dumps, kernel by kernel")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "dump":
        dump(args.dir, [int(v) for v in args.num_mp.split(",")], args.force)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
