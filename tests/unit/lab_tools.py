"""The repository's scripts under tools/ loaded as modules, for tests without a GPU."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_tool(relative: str):
    """tools/<relative> (e.g. "experiments/ncu_compare.py") as a module, run once per call."""
    path = ROOT / "tools" / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
