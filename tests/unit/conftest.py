import sys
from pathlib import Path
from unittest import mock

import pytest

from lab_tools import load_tool

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))  # benchkit, the benchmark suites' pure helpers are tested without a GPU


@pytest.fixture(scope="session")
def bench():
    """tools/bench.py as a module: its command line."""
    return load_tool("bench.py")


@pytest.fixture(scope="session")
def shared_kernel_cache(tmp_path_factory):
    """One kernel cache for the tests that run the command line on the shipped suites."""
    return tmp_path_factory.mktemp("kernel_cache") / "cache"


@pytest.fixture(scope="module")
def sass_cache(request, tmp_path_factory):
    """A kernel cache of the module's own, for the tests that read compiled kernels' SASS (skipped
    without the CUDA binary tools)."""
    from mategemm.jit.cache import KernelCache
    from mategemm.testing import sass

    if sass.tools_dir() is None:
        pytest.skip("cuobjdump not found (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    return KernelCache(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]))


@pytest.fixture
def record_calls(monkeypatch):
    """record_calls(module, names): each named function of `module` appends (name, args, kwargs) to
    the returned list instead of running."""
    def install(module, names):
        calls = []
        for name in names:
            monkeypatch.setattr(module, name,
                                lambda *args, name=name, **kwargs: calls.append((name, args, kwargs)))
        return calls
    return install


@pytest.fixture
def fake_pyplot(monkeypatch):
    """matplotlib replaced by mocks whose subplots hand out one mock axes per grid cell: (fig, axes),
    axes filled as the plot asks for them."""
    plt, fig = mock.MagicMock(), mock.MagicMock()
    axes = []

    def subplots(rows=1, cols=1, **kwargs):
        grid = [[mock.MagicMock() for _ in range(cols)] for _ in range(rows)]
        axes.extend(a for line in grid for a in line)
        return (fig, grid) if kwargs.get("squeeze") is False else (fig, grid[0][0])

    plt.subplots.side_effect = subplots
    matplotlib = mock.MagicMock()
    matplotlib.pyplot = plt
    monkeypatch.setitem(sys.modules, "matplotlib", matplotlib)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", plt)
    return fig, axes
