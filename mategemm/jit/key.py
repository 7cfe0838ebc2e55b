"""Cache keys: a sha256 over everything that changes a kernel's binary."""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from mategemm.version import __version__

# In a checkout mategemm/kernels_src links to the top-level kernels_src/; a wheel carries the files.
KERNELS_SRC = (Path(__file__).resolve().parent.parent / "kernels_src").resolve()


def headers_hash(root: Path = KERNELS_SRC) -> str:
    """sha256 over every file under kernels_src/ (relative path and bytes), memoised per root."""
    return _headers_hash(str(root))


@functools.lru_cache(maxsize=None)
def _headers_hash(root: str) -> str:
    digest = hashlib.sha256()
    base = Path(root)
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        digest.update(path.relative_to(base).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def key_fields(kernel: str, source: str, arch: str, options: tuple[str, ...], nvrtc_version: tuple[int, int],
               headers: str, name_expr: str = "") -> dict:
    return {
        "kernel": kernel,
        "source": source,
        "name_expr": name_expr,  # the instance compiled: two specs may share a source
        "headers": headers,
        "arch": arch,
        "nvrtc": list(nvrtc_version),
        "options": list(options),
        "mategemm": __version__,
    }


def cache_key(kernel: str, source: str, arch: str, options: tuple[str, ...], nvrtc_version: tuple[int, int],
              headers: str, name_expr: str = "") -> str:
    """Hex sha256 of the canonical JSON of the key fields."""
    canonical = json.dumps(key_fields(kernel, source, arch, options, nvrtc_version, headers, name_expr),
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
