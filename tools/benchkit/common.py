"""Shared by the suites: paths, the card, anchors, timing implementations into a result row, ratios, table cells."""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
from pathlib import Path

import torch

from .timing import median_ms


ROOT = Path(__file__).resolve().parents[2]

SHAPES = ROOT / "mategemm" / "shapes" / "shapes.json"
ANCHORS = ROOT / "tools" / "shapes" / "anchors.json"


def card_kind(name: str) -> str:
    return "H200" if "H200" in name else "H100"


def copy_tbps() -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms([lambda: dst.copy_(src)])
    return 2 * src.numel() / (ms * 1e-3) / 1e12


def load_anchors(suite: str, kind: str, fields: tuple = ("m", "n", "k"), path: Path = ANCHORS) -> dict:
    """anchors.json's rows of `suite` on a card kind, keyed by their values of `fields`."""
    data = json.loads(Path(path).read_text())
    return {tuple(r[f] for f in fields): r for r in data.get(suite, {}).get(kind, [])}


def dense_bytes(m: int, n: int, k: int) -> int:
    return m * k + n * k + m * (k // 128) * 4 + math.ceil(n / 128) * (k // 128) * 4 + m * n * 2


def require_gpu_or_exit(what: str) -> None:
    """Exit with status 2 and the reason on stderr when there is no CUDA GPU for `what` to run on."""
    from mategemm.runtime.device import require_cuda_gpu
    from mategemm.runtime.errors import NoCudaGpuError
    try:
        require_cuda_gpu(what)
    except NoCudaGpuError as error:
        print(error, file=sys.stderr)
        raise SystemExit(2)


def live_deepgemm():
    """DeepGEMM's module when it imports (a build on the PYTHONPATH, or in $DEEPGEMM_BUILD:
    tools/deepgemm_build.sh sets both), else None: the suites then take DeepGEMM's numbers from the
    anchors. $DEEPGEMM_BUILD keeps the build found where PYTHONPATH is set anew (lab copies of the tree)."""
    build = os.environ.get("DEEPGEMM_BUILD")
    if build and build not in sys.path:
        sys.path.append(build)
    try:
        import deep_gemm
    except Exception:  # noqa: BLE001 - not built here, or built for another torch
        return None
    return deep_gemm


def mark_live_deepgemm(result: dict):
    """Records in a suite's result that its DeepGEMM column is timed live (and which version);
    returns live_deepgemm()'s module or None."""
    deep_gemm = live_deepgemm()
    if deep_gemm is not None:
        result["deepgemm"] = f"live, {getattr(deep_gemm, '__version__', '?')}"
    return deep_gemm


def ratio(row: dict, peer: str) -> float | None:
    if "mategemm_ms" in row and f"{peer}_ms" in row:
        return row[f"{peer}_ms"] / row["mategemm_ms"]
    return None


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def rotation_sets(touched_bytes: int, l2_bytes: int, cap: int = 32) -> int:
    """Input sets to rotate over so the data touched by the timed calls exceeds 3x L2."""
    return min(cap, max(1, math.ceil(3 * l2_bytes / max(touched_bytes, 1))))


def speedup(row: dict, ours: str, peer: str) -> float | None:
    """peer time / our time (> 1: ours is faster), or None if either is missing.

    Against DeepGEMM's anchors the ratio of TFLOPS: its contiguous and k-grouped rows were timed
    on its own random group sizes, so the work differs from ours by a few per cent either way.
    """
    if peer == "deepgemm" and f"{ours}_tflops" in row and f"{peer}_tflops" in row:
        return row[f"{ours}_tflops"] / row[f"{peer}_tflops"]
    if f"{ours}_ms" in row and f"{peer}_ms" in row:
        return row[f"{peer}_ms"] / row[f"{ours}_ms"]
    return None


def add_timing(row: dict, impl: str, ms: float, flops: float, nbytes: float) -> None:
    row[f"{impl}_ms"] = round(ms, 5)
    row[f"{impl}_tflops"] = round(flops / (ms * 1e-3) / 1e12, 1)
    row[f"{impl}_gbps"] = round(nbytes / (ms * 1e-3) / 1e9, 1)


def time_impl(row: dict, impl: str, make_calls, flops: float, nbytes: float) -> None:
    """Time one implementation into `row`; an implementation that fails records `<impl>_error`."""
    try:
        add_timing(row, impl, median_ms(make_calls()), flops, nbytes)
    except Exception as exc:  # noqa: BLE001 - a peer (or ours, while in progress) that cannot run this shape
        row[f"{impl}_error"] = f"{type(exc).__name__}: {str(exc)[:160]}"


def in_turns(names: list, round_index: int) -> list:
    """`names` in the order of round `round_index`: the first one rotated each round, so that under the
    card's power cap, whose clock drifts within a run, no one always goes first."""
    start = round_index % len(names) if names else 0
    return names[start:] + names[:start]


def time_interleaved(row: dict, impls: list, flops: float, nbytes: float, rounds: int = 3) -> None:
    """Time implementations [(name, make_calls, nbytes or None)] taking turns, `rounds` times with
    the starting one rotated, and record each one's median over the rounds: under the card's power
    cap the clock drifts within a run, and a fixed order would favour whoever goes first."""
    calls, times = {}, {}
    for impl, make_calls, _ in impls:
        try:
            calls[impl] = make_calls()
        except Exception as exc:  # noqa: BLE001 - as time_impl
            row[f"{impl}_error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
    names = list(calls)
    for r in range(rounds):
        for impl in in_turns(names, r):
            try:
                times.setdefault(impl, []).append(median_ms(calls[impl]))
            except Exception as exc:  # noqa: BLE001
                row[f"{impl}_error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
                calls.pop(impl)
                names.remove(impl)
                break
    for impl, _, impl_bytes in impls:
        if impl in times and f"{impl}_error" not in row:
            add_timing(row, impl, statistics.median(times[impl]), flops, impl_bytes or nbytes)


def record_diff(row: dict, impl: str, compute) -> None:
    try:
        row[f"{impl}_diff"] = compute()
    except Exception as exc:  # noqa: BLE001
        row[f"{impl}_error"] = f"{type(exc).__name__}: {str(exc)[:160]}"


def cell(row: dict, impl: str, metric: str = "tflops"):
    """A table cell: the row's value of impl's metric, ERR where that impl failed, else '-'."""
    return row.get(f"{impl}_{metric}", "ERR" if f"{impl}_error" in row else "-")


def forcing(call, force: str):
    """`call` run with MATEGEMM_FORCE_CONFIG=force (e.g. transpose=1): read by every call's memo key."""
    def run():
        os.environ["MATEGEMM_FORCE_CONFIG"] = force
        try:
            return call()
        finally:
            os.environ.pop("MATEGEMM_FORCE_CONFIG", None)
    return run


def called_once(calls: list) -> list:
    """`calls`, each run once: every input set's first (argument-checking) call happens before the timing."""
    for call in calls:
        call()
    return calls


def num(value, digits: int = 1, unit: str = "") -> str:
    return f"{value:.{digits}f}{unit}" if isinstance(value, (int, float)) else "–"


def times(value) -> str:
    return num(value, 2, "x")


def ms_text(value) -> str:
    return f"{value:#.3g}".rstrip(".") if isinstance(value, (int, float)) else "–"


def pct(value) -> str:
    return f"{value:.0%}" if isinstance(value, (int, float)) else "–"
