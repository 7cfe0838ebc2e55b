#!/usr/bin/env python3
"""Run DeepGEMM's own test files against mategemm.deep_gemm, unmodified.

    python tools/deepgemm_tests.py DEEPGEMM_TESTS_DIR [FILE ...] [--timeout S]

DEEPGEMM_TESTS_DIR is a checkout's tests/ folder (nothing is fetched; nothing of it is copied here).
Each file runs in its own process as its `__main__` block runs it, with `deep_gemm` (and
deep_gemm.utils, .testing) resolving to mategemm.deep_gemm. Every test function the file defines
is recorded as it returns: passed, failed (the exception), or skipped-as-SM100 (mategemm raised
NotImplementedError for DeepGEMM's SM100-only features); a failure does not stop the file's next
test. Exit 1 when any test failed or a file did not finish.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import traceback
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = ("test_fp8_fp4.py", "test_bf16.py", "test_attention.py", "test_layout.py")
RESULT_PREFIX = "deepgemm_tests result: "
FINISHED = "deepgemm_tests: file finished"


def alias_deep_gemm() -> None:
    """`import deep_gemm` (and its submodules the tests import) gives mategemm.deep_gemm."""
    sys.path.insert(0, str(ROOT))
    import mategemm.deep_gemm as dg

    for name, module in {"": dg, ".utils": dg.utils, ".utils.math": dg.utils.math, ".utils.layout": dg.utils.layout,
                         ".testing": dg.testing}.items():
        sys.modules[f"deep_gemm{name}"] = module


def outcome(error: BaseException) -> str:
    if isinstance(error, NotImplementedError) and "SM100" in str(error):
        return "skipped-as-SM100"
    return "failed"


class RecordingNamespace(dict):
    """A module namespace whose test functions record their outcome instead of raising."""

    def __init__(self, module_globals: dict):
        super().__init__()
        self.module_globals = module_globals

    def __setitem__(self, name, value):
        if name.startswith("test_") and callable(value):
            value = self.recorded(name, value)
        self.module_globals[name] = value

    def __getitem__(self, name):
        return self.module_globals[name]

    def recorded(self, name, func):
        def run(*args, **kwargs):
            try:
                func(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - recorded, and the file goes on
                traceback.print_exc()
                result = {"test": name, "outcome": outcome(error),
                          "error": f"{type(error).__name__}: {str(error)[:300]}"}
            else:
                result = {"test": name, "outcome": "passed"}
            print(RESULT_PREFIX + json.dumps(result), flush=True)  # as it returns: a timeout keeps it
        return run


def run_one(path: Path) -> int:
    """Run one test file as its __main__ block does; each test prints its result line as it returns."""
    alias_deep_gemm()
    sys.path.insert(0, str(path.parent))  # its generators.py
    module = types.ModuleType("__main__")
    module.__file__ = str(path)
    sys.modules["__main__"], sys.argv = module, [str(path)]
    code = compile(path.read_text(), str(path), "exec")
    exec(code, module.__dict__, RecordingNamespace(module.__dict__))
    print(FINISHED, flush=True)
    return 0


def split_output(stdout: str | bytes | None) -> tuple[list, str, bool]:
    """A child's stdout as (its recorded results, the rest of its output, whether it finished)."""
    text = stdout.decode(errors="replace") if isinstance(stdout, bytes) else stdout or ""
    results, rest = [], []
    for line in text.splitlines(keepends=True):
        if line.startswith(RESULT_PREFIX):
            results.append(json.loads(line[len(RESULT_PREFIX):]))
        elif line.rstrip("\n") != FINISHED:
            rest.append(line)
    return results, "".join(rest), FINISHED in text.splitlines()


def run_file(path: Path, timeout: float) -> tuple[list, str | None]:
    """(results, None) or (results so far, why the file did not finish)."""
    try:
        proc = subprocess.run([sys.executable, __file__, "--one", str(path)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        results, rest, _ = split_output(expired.stdout)
        sys.stdout.write(rest)
        return results, f"timed out after {timeout:.0f} s"
    results, rest, finished = split_output(proc.stdout)
    sys.stdout.write(rest)
    sys.stderr.write(proc.stderr)
    if proc.returncode or not finished:
        return results, f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}"
    return results, None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tests_dir", nargs="?", help="DeepGEMM's tests/ folder")
    parser.add_argument("files", nargs="*", help=f"test files in it (default: {' '.join(FILES)})")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per file (default 600)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return run_one(Path(args.one))
    if not args.tests_dir:
        parser.error("DEEPGEMM_TESTS_DIR is required")
    tests_dir = Path(args.tests_dir)
    paths = [tests_dir / f for f in (args.files or FILES)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        parser.error(f"no such test file: {', '.join(missing)}")
    summary, ok = [], True
    for path in paths:
        results, unfinished = run_file(path, args.timeout)
        counts = {k: sum(r["outcome"] == k for r in results) for k in ("passed", "failed", "skipped-as-SM100")}
        ok &= not counts["failed"] and unfinished is None
        summary.append((path.name, counts, unfinished, [r for r in results if r["outcome"] != "passed"]))
    print("\nDeepGEMM's tests against mategemm.deep_gemm:")
    for name, counts, unfinished, others in summary:
        print(f"  {name}: {counts['passed']} passed, {counts['failed']} failed, "
              f"{counts['skipped-as-SM100']} skipped-as-SM100" + (f"; did not finish ({unfinished})" if unfinished else ""))
        for r in others:
            print(f"    {r['test']}: {r['outcome']}: {r['error']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
