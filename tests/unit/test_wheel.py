"""A built wheel (not the checkout) carries every kernel source and the shape suites, compiles from
them, and runs the demo and a suite pre-warm from a directory outside the checkout."""
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

INSTALLED_COMPILE = textwrap.dedent("""
    import sys
    from pathlib import Path
    import mategemm
    from mategemm.jit import key
    from mategemm.jit.cache import KernelCache
    from mategemm.kernels import transpose_8bit
    package = Path(mategemm.__file__).parent
    assert package.is_relative_to(Path(sys.argv[1])), package
    assert key.KERNELS_SRC == (package / "kernels_src").resolve() and not (package / "kernels_src").is_symlink()
    assert (key.KERNELS_SRC / "common" / "ptx.cuh").is_file()
    compiled = KernelCache(Path(sys.argv[2])).get(transpose_8bit.spec(True, "sm_90a"))
    print("cubin", len(compiled.cubin))
""")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site-packages folder, the built wheel, the source it was built from)."""
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"  # a copy: the build leaves nothing in the checkout
    for name in ("mategemm", "kernels_src"):
        shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    nested = source / "kernels_src" / "common" / "nested" / "probe.cuh"  # a header folder not yet known
    nested.parent.mkdir()
    nested.write_text("#pragma once\n")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("mategemm-*.whl")
    site = tmp / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    return site, wheel, source


def run_installed(site: Path, cwd: Path, *args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MATEGEMM_")}
    env.update(PYTHONPATH=str(site), MATEGEMM_CACHE_DIR=str(cache))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_wheel_ships_every_package_file(installed):
    _, wheel, source = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"mategemm/kernels_src/{p.relative_to(source / 'kernels_src').as_posix()}"
                for p in (source / "kernels_src").rglob("*.cuh")}
    expected |= {f"mategemm/{p.relative_to(source / 'mategemm').as_posix()}"
                 for folder in ("presets", "shapes") for p in (source / "mategemm" / folder).glob("*.json")}
    expected |= {"mategemm/py.typed", "mategemm/kernels_src/common/nested/probe.cuh", "mategemm/shapes/shapes.json"}
    assert expected <= names, sorted(expected - names)


def test_wheel_compiles_from_its_own_kernel_sources(installed, tmp_path):
    site, _, _ = installed
    run = run_installed(site, tmp_path, "-c", INSTALLED_COMPILE, str(site), str(tmp_path / "cache"),
                        cache=tmp_path / "cache")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("cubin ")


def test_installed_demo_and_suite_prewarm_run_outside_the_checkout(installed, tmp_path, shared_kernel_cache):
    site, _, _ = installed
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    script = site / "bin" / "mategemm"
    command = (str(script),) if script.is_file() else ("-m", "mategemm")
    demo = run_installed(site, outside, *command, "demo", cache=shared_kernel_cache)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert ("NO GPU" in demo.stdout and demo.stdout.count(" OK") == 2) or "calc_diff" in demo.stdout
    warm = run_installed(site, outside, *command, "prewarm", "--shapes", "grouped_k_fp8", "--jobs", "1",
                         cache=shared_kernel_cache)
    assert warm.returncode == 0, warm.stdout[-2000:] + warm.stderr[-2000:]
    assert re.search(r"^shapes grouped_k_fp8, sm_90a .*: \d+ moe \+ \d+ transpose kernels", warm.stdout, re.M)


def test_the_package_reads_nothing_outside_itself():
    """Shape suites and presets are package data: no module looks in tools/ or a sibling shared/."""
    pattern = re.compile(r"""["'](tools|shared)["'/]|["']\.\./""")
    offenders = [f"{path.relative_to(ROOT)}:{n}" for path in sorted((ROOT / "mategemm").rglob("*.py"))
                 for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line.split("#")[0])]
    assert offenders == []
