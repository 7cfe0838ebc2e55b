import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))  # benchkit, the benchmark suites' pure helpers are tested without a GPU


@pytest.fixture(scope="session")
def bench():
    """tools/bench.py as a module: its command line."""
    spec = importlib.util.spec_from_file_location("mategemm_tools_bench", ROOT / "tools" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def shared_kernel_cache(tmp_path_factory):
    """One kernel cache for the tests that run the command line on the shipped suites."""
    return tmp_path_factory.mktemp("kernel_cache") / "cache"
