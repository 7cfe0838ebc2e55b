"""tools/show_kernel.py: bad arguments get one line and exit code 2 before anything compiles."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def show_kernel(cache_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MATEGEMM_CACHE_DIR=str(cache_dir))
    return subprocess.run([sys.executable, "tools/show_kernel.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["4096", "7168", "100"], "k (a.shape[1]) must be a positive multiple of 16 (16-byte rows), got 100"),
    (["4096", "100", "7168"], "n (b.shape[0]) must be a positive multiple of 8, got 100"),
    (["0", "7168", "7168"], "m must be >= 1, got 0"),
    (["4096", "7168", "7168", "--recipe", "1,64,64"], "scale_granularity_mnk (--recipe) must be one of"),
    (["4096", "7168", "7168", "--recipe", "garbage"], "--recipe must be three comma-separated ints"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, message):
    result = show_kernel(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "failed").exists()
    assert list(tmp_path.iterdir()) == []


def test_good_arguments_show_the_kernel(tmp_path):
    result = show_kernel(tmp_path, "64", "256", "256", "--no-sass")
    assert result.returncode == 0, result.stderr
    assert "== config" in result.stdout and "== kernel.cu" in result.stdout
    assert not (tmp_path / "failed").exists()
