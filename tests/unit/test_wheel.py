"""A built wheel (not the checkout) carries the kernel sources and compiles from them."""
import os
import shutil
import subprocess
import sys
import textwrap
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


def test_wheel_ships_kernels_src_and_compiles_from_it(tmp_path):
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    source = tmp_path / "src"  # a copy: the build leaves nothing in the checkout
    for name in ("mategemm", "kernels_src"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("mategemm-*.whl")
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-c", INSTALLED_COMPILE, str(site), str(tmp_path / "cache")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("cubin ")
