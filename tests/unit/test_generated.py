"""Generated sources are fresh: kernels_src/common/wgmma.cuh is what tools/gen_wgmma.py writes."""
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lab_tools import load_tool

ROOT = Path(__file__).resolve().parents[2]


def test_wgmma_header_matches_its_generator():
    generator = load_tool("gen_wgmma.py")
    assert generator.HEADER == ROOT / "kernels_src" / "common" / "wgmma.cuh"
    assert generator.render() == generator.HEADER.read_text(), "run python tools/gen_wgmma.py and commit the header"


def test_every_experiment_patch_applies_to_the_product_kernel():
    """The lab variants under tools/experiments patch the kernels' text: each anchor is still there."""
    indexer = load_tool("experiments/indexer_variants.py")
    for name in indexer.VARIANTS:
        assert indexer.source(name).endswith(f"// variant {name}\n")
    promotion = load_tool("experiments/gemm_variants.py")
    files = {path: (ROOT / path).read_text() for patches in promotion.PATCHES.values() for path, _, _ in patches}
    assert len(promotion.PATCHES) >= 5
    for name in promotion.PATCHES:
        assert promotion.apply(name, files) != files, name
    for name in promotion.PATCH_FILES:  # on a copy of the sources, after the patches it builds on
        with tempfile.TemporaryDirectory() as tree:
            for part in ("kernels_src", "mategemm", "tests"):
                shutil.copytree(ROOT / part, Path(tree) / part, ignore=shutil.ignore_patterns("__pycache__"))
            subprocess.run([sys.executable, str(ROOT / "tools" / "experiments" / "gemm_variants.py"), name, tree],
                           check=True)
