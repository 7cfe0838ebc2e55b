"""The host suite: host overhead per warm call, the first call in a new process, cold compile time."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import mategemm
from mategemm.testing import make_fp8_gemm_inputs

from .common import ROOT
from .timing import SLEEP_CYCLES


FIRST_CALL_SCRIPT = """
import time, torch, mategemm
from mategemm.testing import make_fp8_gemm_inputs
a, b, sa, sb = make_fp8_gemm_inputs(128, 2112, 7168)
torch.cuda.synchronize()
t = time.perf_counter()
mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb)
torch.cuda.synchronize()
print(time.perf_counter() - t)
"""


def bench_host(args) -> dict:
    """Host overhead per warm call, first call in a new process (warm disk cache), cold compiles."""
    from mategemm.jit.cache import KernelCache
    from mategemm.prewarm import plan

    result = {"suite": "host", "card": torch.cuda.get_device_name(0), "date": time.strftime("%Y-%m-%d")}
    a, b, sa, sb = make_fp8_gemm_inputs(1, 576, 128)
    out = torch.empty((1, 576), dtype=torch.bfloat16, device="cuda")
    for _ in range(20):
        mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out)
    torch.cuda.synchronize()
    samples = []
    for _ in range(10):
        torch.cuda._sleep(SLEEP_CYCLES * 2)  # GPU busy: the loop below measures the host alone
        t = time.perf_counter()
        for _ in range(200):
            mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out)
        samples.append((time.perf_counter() - t) / 200 * 1e6)
        torch.cuda.synchronize()
    result["host_us_per_call"] = round(statistics.median(samples), 2)

    subprocess.run([sys.executable, "-c", FIRST_CALL_SCRIPT], check=True, capture_output=True, cwd=ROOT)  # warm disk
    firsts = [float(subprocess.run([sys.executable, "-c", FIRST_CALL_SCRIPT], check=True, capture_output=True,
                                   text=True, cwd=ROOT).stdout.split()[-1]) for _ in range(3)]
    result["first_call_warm_disk_ms"] = round(statistics.median(firsts) * 1e3, 2)

    with tempfile.TemporaryDirectory() as tmp:
        cache = KernelCache(tmp)
        shapes = [(r["m"], r["n"], r["k"]) for r in json.loads(Path(args.shapes).read_text())["dense_fp8"]]
        seconds = []
        for planned in plan(shapes, "sm_90a"):
            t = time.perf_counter()
            cache.get(planned.spec)
            seconds.append(time.perf_counter() - t)
    result["cold_compile_s"] = {"kernels": len(seconds), "mean": round(statistics.mean(seconds), 3),
                                "max": round(max(seconds), 3), "total": round(sum(seconds), 2)}
    print(json.dumps(result, indent=1), flush=True)
    return result
