"""The kernel cache: in-process memo -> disk entry -> per-key FileLock -> re-check -> NVRTC.

An entry is a directory ``<kernel>.<hash16>/`` holding ``kernel.cu`` (the rendered stub),
``kernel.cubin`` and ``meta.json`` (the full key, the cubin's sha256, the lowered kernel name).
It is built in a staging directory, fsynced, and renamed into place, so an entry is complete or
absent whatever processes race or die. Nothing read from the cache is unpickled or imported:
``meta.json`` is parsed as JSON and the cubin is handed to the driver after its checksum matches.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from mategemm import env
from mategemm.jit import nvrtc
from mategemm.jit.key import cache_key, headers_hash, key_fields
from mategemm.log import log, verbose

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent
STAGING = ".staging"
LOCKS = ".locks"
FAILED = "failed"


@dataclass(frozen=True)
class KernelSpec:
    """One specialisation to compile: the stub source and the template instance it names."""

    kernel: str          # family name, e.g. sm90_fp8_gemm_blockscaled
    source: str          # rendered stub: #include + nothing else needed
    name_expr: str       # e.g. &mategemm::sm90_fp8_gemm_blockscaled<128, 128, ...>
    arch: str            # e.g. sm_90a


@dataclass(frozen=True)
class CompiledKernel:
    kernel: str
    key: str
    cubin: bytes
    lowered_name: str
    path: Path | None    # entry directory, or None when compiled in memory only
    compiled_here: bool  # this process ran NVRTC for it


class CacheDirError(RuntimeError):
    """The cache directory is unusable (symlink, foreign owner, not a directory)."""


def default_cache_dir() -> Path:
    configured = env.cache_dir()
    if configured:
        return Path(configured).expanduser()
    checkout_cache = _PACKAGE_ROOT / "jit_cache"
    if (_PACKAGE_ROOT / "pyproject.toml").is_file() and checkout_cache.is_dir():
        return checkout_cache
    return Path(env.home_dir()) / ".cache" / "mategemm"


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class KernelCache:
    """Compiled kernels by key, in memory and in one cache directory."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self._memo: dict[str, CompiledKernel] = {}
        self._writable: bool | None = None
        self.num_compiles = 0

    # ---- public ---------------------------------------------------------------------------
    def key_for(self, spec: KernelSpec, nvrtc_version: tuple[int, int] | None = None) -> tuple[str, tuple[str, ...]]:
        """The cache key and NVRTC options of `spec` (under the loaded NVRTC's version by default)."""
        options = nvrtc.base_options(spec.arch, env.jit_debug())
        version = nvrtc_version or nvrtc.nvrtc_version()
        return cache_key(spec.kernel, spec.source, spec.arch, options, version, headers_hash(), spec.name_expr), options

    def entry_dir(self, spec_kernel: str, key: str) -> Path:
        return self.root / f"{spec_kernel}.{key[:16]}"

    def get(self, spec: KernelSpec) -> CompiledKernel:
        """Return the compiled kernel, compiling at most once across processes.

        Raises CompileError (source and log kept under ``<cache>/failed/``), CacheDirError.
        """
        hint = nvrtc.wheel_version()
        if hint is not None:  # a look-up that does not load NVRTC
            key, _ = self.key_for(spec, hint)
            hit = self._memo.get(key)
            if hit is None and self._ensure_root():
                hit = self._load(self.entry_dir(spec.kernel, key), spec.kernel, key, warn=False)
                if hit is not None:
                    self._memo[key] = hit
            if hit is not None:
                return hit
        key, options = self.key_for(spec)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        if not self._ensure_root():
            compiled = self._compile(spec, key, options, None)
            self._memo[key] = compiled
            return compiled
        entry = self.entry_dir(spec.kernel, key)
        compiled = self._load(entry, spec.kernel, key, warn=True)
        if compiled is None:
            lock = FileLock(str(self.root / LOCKS / f"{entry.name}.lock"))
            with lock:
                compiled = self._load(entry, spec.kernel, key, warn=False)  # second check, under the lock
                if compiled is None:
                    self._remove_leftovers(entry.name)
                    compiled = self._compile(spec, key, options, entry)
        self._memo[key] = compiled
        return compiled

    def entries(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
                      and p.name != FAILED)

    def verify(self, repair: bool = False) -> list[tuple[Path, str]]:
        """Check every entry; return (entry, problem) for the bad ones; repair removes them."""
        problems = []
        for entry in self.entries():
            problem = self._entry_problem(entry)
            if problem:
                problems.append((entry, problem))
                if repair:
                    self._discard(entry)
        if repair:
            self.clean_staging()
        return problems

    def clean_staging(self, older_than_s: float = 0.0) -> int:
        """Remove staging directories left by processes that died mid-compile."""
        staging = self.root / STAGING
        removed = 0
        if not staging.is_dir():
            return 0
        now = time.time()
        for path in staging.iterdir():
            try:
                if now - path.stat().st_mtime >= older_than_s:
                    shutil.rmtree(path, ignore_errors=True)
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def _remove_leftovers(self, entry_name: str) -> None:
        """Staging and trash directories of this entry left by a process killed mid-compile or
        mid-rename. Called under the entry's lock, so no live process is writing them."""
        staging = self.root / STAGING
        for path in staging.glob(f"{entry_name}.*"):
            shutil.rmtree(path, ignore_errors=True)
        for path in staging.glob(f"trash.{entry_name}.*"):
            shutil.rmtree(path, ignore_errors=True)

    def clear(self) -> int:
        count = 0
        for entry in self.entries():
            self._discard(entry)
            count += 1
        for sub in (STAGING, FAILED):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        self._memo.clear()
        return count

    # ---- internals ------------------------------------------------------------------------
    def _ensure_root(self) -> bool:
        """Create/check the root once; False means read-only (compile in memory)."""
        if self._writable is not None:
            return self._writable
        root = self.root
        if root.is_symlink():
            raise CacheDirError(f"cache directory {root} is a symlink; point MATEGEMM_CACHE_DIR at a real directory")
        if not root.exists():
            try:
                root.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                log.warning("mategemm: cannot create cache directory %s (%s); compiling in memory", root, exc)
                self._writable = False
                return False
        if not root.is_dir():
            raise CacheDirError(f"cache directory {root} is not a directory")
        if hasattr(os, "getuid") and root.stat().st_uid != os.getuid():
            raise CacheDirError(f"cache directory {root} is owned by another user; set MATEGEMM_CACHE_DIR to a "
                                f"directory of your own")
        try:
            for sub in (STAGING, LOCKS):
                (root / sub).mkdir(mode=0o700, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=root / STAGING, delete=True)
            probe.close()
        except OSError as exc:
            log.warning("mategemm: cache directory %s is not writable (%s); compiling in memory", root, exc)
            self._writable = False
            return False
        self._writable = True
        return True

    def _read_entry(self, entry: Path, key: str | None = None) -> tuple[str, dict, bytes]:
        """(problem, meta, cubin); problem is '' for a complete entry (of `key`, when given)."""
        try:
            meta = json.loads((entry / "meta.json").read_text())
        except FileNotFoundError:
            return "meta.json missing", {}, b""
        except (OSError, ValueError) as exc:
            return f"meta.json unreadable ({exc})", {}, b""
        if not isinstance(meta, dict) or not {"key", "kernel", "cubin_sha256", "lowered_name"} <= meta.keys():
            return "meta.json incomplete", {}, b""
        if key is not None and meta["key"] != key:
            return "key mismatch", {}, b""
        if entry.name != f"{meta['kernel']}.{str(meta['key'])[:16]}":
            return "entry name does not match its key", {}, b""
        try:
            cubin = (entry / "kernel.cubin").read_bytes()
        except OSError:
            return "kernel.cubin missing", {}, b""
        if hashlib.sha256(cubin).hexdigest() != meta["cubin_sha256"]:
            return "kernel.cubin fails its checksum", {}, b""
        return "", meta, cubin

    def _entry_problem(self, entry: Path) -> str:
        return self._read_entry(entry)[0]

    def _load(self, entry: Path, kernel: str, key: str, warn: bool) -> CompiledKernel | None:
        if not (entry / "meta.json").exists():
            return None
        problem, meta, cubin = self._read_entry(entry, key)
        if problem:
            if warn:
                log.warning("mategemm: cache entry %s is bad (%s); rebuilding", entry, problem)
            return None
        return CompiledKernel(kernel, key, cubin, meta["lowered_name"], entry, compiled_here=False)

    def _discard(self, entry: Path) -> None:
        """Move an entry out of the way atomically, then delete it."""
        trash = self.root / STAGING / f"trash.{entry.name}.{uuid.uuid4().hex[:8]}"
        try:
            os.replace(entry, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def _compile(self, spec: KernelSpec, key: str, options: tuple[str, ...], entry: Path | None) -> CompiledKernel:
        debug = env.jit_debug()
        if debug:
            verbose().debug("nvrtc %s %s", spec.kernel, " ".join(options))
        start = time.perf_counter()
        try:
            cubin, lowered, nvrtc_log = nvrtc.compile_cubin(spec.source, spec.name_expr, options)
        except nvrtc.CompileError as exc:
            kept = self._keep_failed(spec, key, str(exc))
            log.error("mategemm: NVRTC failed on %s (%s); source and log kept in %s", spec.kernel, spec.name_expr, kept)
            raise nvrtc.CompileError(f"{exc}\nsource and log kept in {kept}") from None
        seconds = time.perf_counter() - start
        self.num_compiles += 1
        log.info("compiled %s.%s (%s) in %.3f s", spec.kernel, key[:16], spec.name_expr, seconds)
        if debug:
            verbose().debug("%s.%s NVRTC log:\n%s", spec.kernel, key[:16], nvrtc_log)
        if entry is None:
            return CompiledKernel(spec.kernel, key, cubin, lowered, None, compiled_here=True)

        meta = {
            **key_fields(spec.kernel, spec.source, spec.arch, options, nvrtc.nvrtc_version(), headers_hash(),
                         spec.name_expr),
            "key": key,
            "name_expr": spec.name_expr,
            "lowered_name": lowered,
            "cubin_sha256": hashlib.sha256(cubin).hexdigest(),
            "cubin_bytes": len(cubin),
            "compile_seconds": round(seconds, 4),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        del meta["source"]  # kept as kernel.cu
        staging = Path(tempfile.mkdtemp(prefix=f"{entry.name}.", dir=self.root / STAGING))
        try:
            _fsync_write(staging / "kernel.cu", spec.source.encode())
            _fsync_write(staging / "kernel.cubin", cubin)
            _fsync_write(staging / "meta.json", json.dumps(meta, indent=1, sort_keys=True).encode())  # last
            _fsync_dir(staging)
            os.chmod(staging, 0o700)
            if entry.exists():
                self._discard(entry)  # a bad entry found under the lock
            os.replace(staging, entry)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return CompiledKernel(spec.kernel, key, cubin, lowered, entry, compiled_here=True)

    def _keep_failed(self, spec: KernelSpec, key: str, message: str) -> Path:
        base = self.root if self._writable else Path(tempfile.gettempdir()) / "mategemm"
        kept = base / FAILED / f"{spec.kernel}.{key[:16]}"
        try:
            kept.mkdir(parents=True, exist_ok=True)
            (kept / "kernel.cu").write_text(spec.source)
            (kept / "nvrtc.log").write_text(message)
        except OSError:
            pass
        return kept


_DEFAULT: KernelCache | None = None


def default_cache() -> KernelCache:
    """The process-wide cache at the configured directory (re-created if the directory changed)."""
    global _DEFAULT
    root = default_cache_dir()
    if _DEFAULT is None or _DEFAULT.root != root:
        _DEFAULT = KernelCache(root)
    return _DEFAULT
