"""The kernel cache: in-process memo -> disk entry -> per-key FileLock -> re-check -> NVRTC.

An entry is a directory ``<kernel>.<hash16>/`` holding ``kernel.cu`` (the rendered stub),
``kernel.cubin`` and ``meta.json`` (the full key, the cubin's sha256, the lowered kernel name).
It is built in a staging directory, fsynced, and renamed into place, so an entry is complete or
absent whatever processes race or die. Nothing read from the cache is unpickled or imported:
``meta.json`` is parsed as JSON and the cubin is handed to the driver after its checksum matches.

The cache only ever touches what it wrote. Its root carries a ``CACHEDIR.TAG`` marker; inside it
an entry is a directory named ``<kernel>.<16 hex digits>`` holding nothing but the three files
above, ``failed/`` keeps ``kernel.cu`` and ``nvrtc.log`` of failed compiles under the same names,
``.staging/`` and ``.locks/`` hold work directories and lock files named after entries. Anything
else is foreign: reported, never removed. A directory without the marker is taken as a cache only
when it is empty or holds nothing but that layout (a cache from before the marker); otherwise it
is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
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
MARKER = "CACHEDIR.TAG"
# The cache-directory tag that backup tools recognise, with a line that names mategemm.
MARKER_SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"
MARKER_TEXT = f"{MARKER_SIGNATURE}\n# A mategemm kernel cache: compiled kernels, rebuilt on demand when removed.\n"
ENTRY_FILES = frozenset({"kernel.cu", "kernel.cubin", "meta.json"})
FAILED_FILES = frozenset({"kernel.cu", "nvrtc.log"})
ENTRY_NAME = re.compile(r"[a-z][a-z0-9_]*\.[0-9a-f]{16}")
# .staging: an entry being built (mkdtemp with the entry's name as prefix), one being discarded,
# or the write probe; .locks: one FileLock per entry
STAGING_NAME = re.compile(r"(trash\.)?[a-z][a-z0-9_]*\.[0-9a-f]{16}\.[A-Za-z0-9_]+|probe\.[A-Za-z0-9_]+")
LOCK_NAME = re.compile(r"[a-z][a-z0-9_]*\.[0-9a-f]{16}\.lock")


@dataclass(frozen=True)
class KernelSpec:
    """One specialisation to compile: the stub source and the template instance it names."""

    kernel: str          # family name, e.g. sm90_fp8_gemm_blockscaled
    source: str          # rendered stub: #include + nothing else needed
    name_expr: str       # e.g. &mategemm::sm90_fp8_gemm_blockscaled<128, 128, ...>
    arch: str            # e.g. sm_90a


def instance_spec(family: str, arch: str, *args, name: str = "") -> KernelSpec:
    """The stub that includes kernels_src/<family>.cuh and names its kernel `name` (default: the
    family's) with the template arguments `args` (none: a kernel without template)."""
    name_expr = f"&mategemm::{name or family}" + (f"<{', '.join(str(a) for a in args)}>" if args else "")
    return KernelSpec(family, f'#include "{family}.cuh"\n// instance: {name_expr}\n', name_expr, arch)


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


def _is_marker(path: Path) -> bool:
    try:
        return path.is_file() and not path.is_symlink() and path.read_text(errors="replace").startswith(
            MARKER_SIGNATURE) and "mategemm" in path.read_text(errors="replace")
    except OSError:
        return False


def _own_dir(path: Path, name: re.Pattern, files: frozenset) -> bool:
    """A real directory named by `name` that holds nothing but regular files among `files`."""
    if path.is_symlink() or not path.is_dir() or not name.fullmatch(path.name):
        return False
    try:
        return all(child.name in files and child.is_file() and not child.is_symlink() for child in path.iterdir())
    except OSError:
        return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _unwritable(root: Path) -> str:
    """Why nothing could be stored at `root` (its nearest existing folder not one, or read-only), or ''."""
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return ""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class RootReport:
    """What a cache directory holds, read without changing it."""

    root: Path
    exists: bool
    marked: bool               # carries mategemm's CACHEDIR.TAG
    entries: tuple[Path, ...]  # entry directories of the cache's own layout
    foreign: tuple[str, ...]   # names at the root that mategemm did not write ("name/" for folders)
    unwritable: str            # why nothing can be stored there, or ""

    @property
    def is_cache(self) -> bool:
        """Marked, or holding nothing but the cache's own layout (then it is adopted on first use)."""
        return self.marked or not self.foreign

    def refusal(self) -> str:
        """Why the directory is not a mategemm cache ('' when it is one)."""
        if self.is_cache:
            return ""
        shown = ", ".join(self.foreign[:5]) + (f" and {len(self.foreign) - 5} more" if len(self.foreign) > 5 else "")
        return (f"{self.root} is not a mategemm cache: it has no {MARKER} and holds {shown}, which mategemm did not "
                f"write; point MATEGEMM_CACHE_DIR at a new or empty directory")


class KernelCache:
    """Compiled kernels by key, in memory and in one cache directory."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self._memo: dict[str, CompiledKernel] = {}
        self._state: str | None = None  # "writable", "read-only" or "absent", once opened
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
            if hit is None and self._open() != "absent":
                hit = self._load(self.entry_dir(spec.kernel, key), spec.kernel, key, warn=False)
                if hit is not None:
                    self._memo[key] = hit
            if hit is not None:
                return hit
        key, options = self.key_for(spec)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        state = self._open()
        entry = self.entry_dir(spec.kernel, key)
        compiled = None if state == "absent" else self._load(entry, spec.kernel, key, warn=True)
        if compiled is None and state != "writable":
            compiled = self._compile(spec, key, options, None)
        elif compiled is None:
            lock = FileLock(str(self.root / LOCKS / f"{entry.name}.lock"))
            with lock:
                compiled = self._load(entry, spec.kernel, key, warn=False)  # second check, under the lock
                if compiled is None:
                    self._remove_leftovers(entry.name)
                    compiled = self._compile(spec, key, options, entry)
        self._memo[key] = compiled
        return compiled

    @property
    def writable(self) -> bool:
        """Whether compiled kernels are stored on disk (opens the directory, creating it if needed)."""
        return self._open() == "writable"

    def report(self) -> RootReport:
        """The directory as it is: marker, entries, foreign items, why it is unwritable. Changes nothing."""
        root = self.root
        if not root.is_dir() or root.is_symlink():
            return RootReport(root, root.exists(), False, (), (), _unwritable(root))
        marked, entries, foreign = False, [], []
        for path in sorted(root.iterdir()):
            name = path.name
            if name == MARKER and _is_marker(path):
                marked = True
            elif name in (STAGING, LOCKS, FAILED) and path.is_dir() and not path.is_symlink():
                pass
            elif _own_dir(path, ENTRY_NAME, ENTRY_FILES):
                entries.append(path)
            else:
                foreign.append(name + "/" if path.is_dir() else name)
        return RootReport(root, True, marked, tuple(entries), tuple(foreign), _unwritable(root))

    def entries(self) -> list[Path]:
        """The entry directories (the cache's own layout only; a foreign item is never one)."""
        return list(self.report().entries)

    def verify(self, repair: bool = False) -> list[tuple[Path, str]]:
        """Check every entry; return (entry, problem) for the bad ones; repair removes them.

        Raises CacheDirError when repairing a directory that is not a cache or cannot be written.
        """
        if repair:
            self._open_for_removal()
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
        """Remove work directories left in .staging by processes that died mid-compile."""
        staging = self.root / STAGING
        removed = 0
        if not staging.is_dir():
            return 0
        now = time.time()
        for path in staging.iterdir():
            if not STAGING_NAME.fullmatch(path.name):
                continue
            try:
                if now - path.lstat().st_mtime >= older_than_s:
                    _remove(path)
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def _remove_leftovers(self, entry_name: str) -> None:
        """Staging and trash directories of this entry left by a process killed mid-compile or
        mid-rename. Called under the entry's lock, so no live process is writing them."""
        staging = self.root / STAGING
        for pattern in (f"{entry_name}.*", f"trash.{entry_name}.*"):
            for path in staging.glob(pattern):
                if STAGING_NAME.fullmatch(path.name):
                    _remove(path)

    def clear(self) -> int:
        """Remove every entry, failed-compile record, work directory and free lock file; return the
        number of entries removed. Foreign files are left where they are (see report()).

        Raises CacheDirError for a directory that is not a cache or cannot be written.
        """
        if not self.root.exists():
            return 0
        self._open_for_removal()
        count = sum(self._discard(entry) for entry in self.entries())
        failed = self.root / FAILED
        if failed.is_dir() and not failed.is_symlink():
            for path in failed.iterdir():
                if _own_dir(path, ENTRY_NAME, FAILED_FILES):
                    _remove(path)
            _remove_if_empty(failed)
        self.clean_staging()
        locks = self.root / LOCKS
        for path in locks.iterdir() if locks.is_dir() else ():
            if LOCK_NAME.fullmatch(path.name) and path.is_file() and not path.is_symlink():
                lock = FileLock(str(path), timeout=0)
                try:
                    with lock:  # a lock held by a compiling process stays
                        path.unlink()
                except TimeoutError:
                    pass
        self._memo.clear()
        return count

    # ---- internals ------------------------------------------------------------------------
    def _open(self) -> str:
        """Check the root once: "writable", "read-only" (entries load, new kernels stay in memory)
        or "absent" (no directory and none can be made). Creates a missing root with its marker.

        Raises CacheDirError for a symlink, a file, another user's directory or a foreign one.
        """
        if self._state is not None:
            return self._state
        root = self.root
        if root.is_symlink():
            raise CacheDirError(f"cache directory {root} is a symlink; point MATEGEMM_CACHE_DIR at a real directory")
        if not root.exists():
            try:
                root.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                log.warning("mategemm: cannot create cache directory %s (%s); compiling in memory", root, exc)
                self._state = "absent"
                return self._state
        if not root.is_dir():
            raise CacheDirError(f"cache directory {root} is not a directory")
        if hasattr(os, "getuid") and root.stat().st_uid != os.getuid():
            raise CacheDirError(f"cache directory {root} is owned by another user; set MATEGEMM_CACHE_DIR to a "
                                f"directory of your own")
        report = self.report()
        if not report.is_cache:
            raise CacheDirError(report.refusal())
        try:
            for sub in (STAGING, LOCKS):
                (root / sub).mkdir(mode=0o700, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(prefix="probe.", dir=root / STAGING, delete=False)
            probe.write(MARKER_TEXT.encode())
            probe.close()
            if report.marked:
                os.unlink(probe.name)
            else:  # the marker appears whole: a racing process never reads it half written
                os.replace(probe.name, root / MARKER)
        except OSError as exc:
            log.warning("mategemm: cache directory %s is not writable (%s); compiling in memory (its entries "
                        "still load)", root, exc)
            self._state = "read-only"
            return self._state
        self._state = "writable"
        return self._state

    def _open_for_removal(self) -> None:
        report = self.report()
        if report.exists and not report.is_cache:
            raise CacheDirError(report.refusal())
        if self._open() != "writable":
            raise CacheDirError(f"cache directory {self.root} is not writable: nothing can be removed")

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

    def _discard(self, entry: Path) -> bool:
        """Move an entry out of the way atomically, then delete it; False if it was already gone."""
        trash = self.root / STAGING / f"trash.{entry.name}.{uuid.uuid4().hex[:8]}"
        try:
            os.replace(entry, trash)
        except FileNotFoundError:
            if entry.exists():
                raise
            return False
        shutil.rmtree(trash, ignore_errors=True)
        return True

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
        base = self.root if self._state == "writable" else Path(tempfile.gettempdir()) / "mategemm"
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
