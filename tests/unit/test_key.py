"""jit/key: the cache key moves with every input that changes the binary, and only with those."""
import shutil

import pytest

from mategemm.jit import key as jit_key
from mategemm.jit.key import KERNELS_SRC, cache_key, headers_hash

BASE = dict(kernel="sm90_fp8_gemm_blockscaled", source='#include "x.cuh"\n', arch="sm_90a",
            options=("--gpu-architecture=sm_90a", "-std=c++17"), nvrtc_version=(13, 5), headers="ab" * 32)
CHANGED = {
    "kernel": "sm90_fp8_gemm_other",
    "source": '#include "x.cuh"\n// other instance\n',
    "arch": "sm_100a",
    "options": ("--gpu-architecture=sm_90a", "-std=c++17", "-lineinfo"),
    "nvrtc_version": (13, 6),
    "headers": "cd" * 32,
    "name_expr": "&other<1>",
}


def test_identical_inputs_give_identical_keys():
    assert cache_key(**BASE) == cache_key(**dict(BASE))
    assert len(cache_key(**BASE)) == 64


@pytest.mark.parametrize("field", sorted(CHANGED))
def test_each_input_changes_the_key(field):
    assert cache_key(**{**BASE, field: CHANGED[field]}) != cache_key(**BASE)


def test_option_order_is_part_of_the_key():
    options = BASE["options"]
    assert cache_key(**{**BASE, "options": options[::-1]}) != cache_key(**BASE)


def test_mategemm_version_changes_the_key(monkeypatch):
    before = cache_key(**BASE)
    monkeypatch.setattr(jit_key, "__version__", "999.0")
    assert cache_key(**BASE) != before


def test_headers_hash_follows_every_file_under_kernels_src(tmp_path):
    tree = tmp_path / "kernels_src"
    shutil.copytree(KERNELS_SRC, tree)
    jit_key._headers_hash.cache_clear()
    original = headers_hash(tree)
    assert original == headers_hash(KERNELS_SRC)  # content, not location

    nested = sorted(tree.rglob("common/*.cuh"))[0]
    nested.write_bytes(nested.read_bytes() + b"\n// edited\n")
    jit_key._headers_hash.cache_clear()
    edited = headers_hash(tree)
    assert edited != original

    (tree / "common" / "new.cuh").write_text("// a new header\n")
    jit_key._headers_hash.cache_clear()
    assert headers_hash(tree) not in (original, edited)
    jit_key._headers_hash.cache_clear()
