"""The `mategemm` command, run as `python -m mategemm` against a private cache directory."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mategemm
from mategemm import env, prewarm

REPO = Path(__file__).resolve().parents[2]
NUM_DENSE_KERNELS = len(prewarm.plan(prewarm.resolve_shapes("dense_fp8"), "sm_90a"))


def mategemm_cmd(cache: Path, *args: str) -> subprocess.CompletedProcess:
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("MATEGEMM_")}
    run_env.update(MATEGEMM_CACHE_DIR=str(cache),
                   PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "mategemm", *args], env=run_env, capture_output=True, text=True,
                          timeout=600)


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"rc {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def kernel_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if re.match(r"^(compiled|cached) ", line)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli_cache") / "cache"


@pytest.fixture(scope="module")
def first_prewarm(cache) -> str:
    return ok(mategemm_cmd(cache, "prewarm", "--arch", "sm_90a", "--shapes", "dense_fp8"))


def test_prewarm_compiles_then_finds_all_cached(cache, first_prewarm):
    lines = kernel_lines(first_prewarm)
    assert len(lines) == NUM_DENSE_KERNELS and all(line.startswith("compiled ") for line in lines)
    assert f"{NUM_DENSE_KERNELS} compiled, 0 cached" in first_prewarm
    second = ok(mategemm_cmd(cache, "prewarm", "--arch", "sm_90a", "--shapes", "dense_fp8", "--jobs", "2"))
    lines = kernel_lines(second)
    assert len(lines) == NUM_DENSE_KERNELS and all(line.startswith("cached ") for line in lines)
    assert f"0 compiled, {NUM_DENSE_KERNELS} cached" in second


def test_cache_ls_json(cache, first_prewarm):
    rows = json.loads(ok(mategemm_cmd(cache, "cache", "ls", "--json")))
    assert len(rows) == NUM_DENSE_KERNELS
    for row in rows:
        assert row["kernel"] == "sm90_fp8_gemm_blockscaled" and len(row["key"]) == 64
        assert Path(row["cubin"]).is_file() and row["bytes"] == Path(row["cubin"]).stat().st_size > 0
    assert "sm90_fp8_gemm_blockscaled" in ok(mategemm_cmd(cache, "cache", "ls"))


def test_cache_verify_finds_and_repairs_a_corrupt_cubin(cache, first_prewarm):
    assert f"all {NUM_DENSE_KERNELS} entries OK" in ok(mategemm_cmd(cache, "cache", "verify"))
    cubin = Path(json.loads(ok(mategemm_cmd(cache, "cache", "ls", "--json")))[0]["cubin"])
    data = bytearray(cubin.read_bytes())
    data[100] ^= 0x40
    cubin.write_bytes(bytes(data))

    bad = mategemm_cmd(cache, "cache", "verify")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"BAD {cubin.parent.name}: kernel.cubin fails its checksum" in bad.stdout
    assert not cubin.parent.exists()
    assert f"all {NUM_DENSE_KERNELS - 1} entries OK" in ok(mategemm_cmd(cache, "cache", "verify"))
    rewarm = ok(mategemm_cmd(cache, "prewarm", "--shapes", "dense_fp8"))
    assert f"1 compiled, {NUM_DENSE_KERNELS - 1} cached" in rewarm


def test_info(cache, first_prewarm):
    out = ok(mategemm_cmd(cache, "info"))
    assert re.search(r"^nvrtc: +\d+\.\d+$", out, re.M)
    assert re.search(rf"^mategemm: +{re.escape(mategemm.__version__)} \(torch ", out, re.M)
    assert re.search(r"^kernels: +\S+kernels_src \(headers [0-9a-f]{16}, ", out, re.M)
    assert f"{cache} ({NUM_DENSE_KERNELS} entries" in out
    if not torch.cuda.is_available():
        assert "no GPU" in out
    for knob in env.KNOBS:
        assert f"{knob.name}=" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU demo")
def test_demo_without_gpu(cache, first_prewarm):
    out = ok(mategemm_cmd(cache, "demo"))
    assert "no GPU" in out and "NO GPU" in out
    assert f"{NUM_DENSE_KERNELS} kernels: 0 compiled" in out
    assert out.count(" OK") == 2


def test_prewarm_from_a_file_then_clear(tmp_path):
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps({"_about": "ignored", "mine": [{"m": 128, "n": 4096, "k": 512}],
                                  "grouped": [{"groups": 2, "m_per_group": 8, "n": 64, "k": 128}]}))
    cache = tmp_path / "cache"
    out = ok(mategemm_cmd(cache, "prewarm", "--arch", "sm_90a", "--shapes", str(shapes)))
    assert "2 kernels for 1 shapes x 2 recipes: 2 compiled, 0 cached" in out
    assert f"removed 2 entries from {cache}" in ok(mategemm_cmd(cache, "cache", "clear"))
    assert json.loads(ok(mategemm_cmd(cache, "cache", "ls", "--json"))) == []
    assert "all 0 entries OK" in ok(mategemm_cmd(cache, "cache", "verify"))


def test_bad_arguments(tmp_path):
    unknown = mategemm_cmd(tmp_path, "prewarm", "--shapes", "no_such_suite")
    assert unknown.returncode == 2 and "no_such_suite" in unknown.stderr and "dense_fp8" in unknown.stderr
    bad_arch = mategemm_cmd(tmp_path, "prewarm", "--arch", "sm_80", "--shapes", "dense_fp8")
    assert bad_arch.returncode == 2 and "sm_80" in bad_arch.stderr
    assert mategemm_cmd(tmp_path, "frobnicate").returncode == 2


def test_plan_is_deduplicated_and_pure():
    shapes = prewarm.resolve_shapes("dense_fp8")
    assert len(shapes) == 28
    planned = prewarm.plan(shapes + shapes, "sm_90a")
    assert planned == prewarm.plan(shapes, "sm_90a")
    assert len({p.spec for p in planned}) == len(planned) <= 2 * len(shapes)
