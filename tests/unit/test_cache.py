"""jit/cache: one compile per key across calls, caches and processes; bad entries are rebuilt."""
import hashlib
import json
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mategemm.jit import nvrtc
from mategemm.jit.cache import MARKER, CacheDirError, KernelCache, KernelSpec, default_cache, default_cache_dir

REPO = Path(__file__).resolve().parents[2]
TINY_SOURCE = "template <int N> __global__ void tiny(float* x) { x[threadIdx.x] = N; }\n"
TINY = KernelSpec("tiny", TINY_SOURCE, "&tiny<3>", "sm_90a")
ENTRY_FILES = {"kernel.cu", "kernel.cubin", "meta.json"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def only_entry(root: Path) -> Path:
    entries = KernelCache(root).entries()
    assert len(entries) == 1, entries
    return entries[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ten_calls_compile_once(tmp_path):
    cache = KernelCache(tmp_path / "cache")
    kernels = [cache.get(TINY) for _ in range(10)]
    assert cache.num_compiles == 1
    assert all(k.cubin == kernels[0].cubin for k in kernels)
    entry = only_entry(cache.root)
    assert entry == kernels[0].path and entry.name.startswith("tiny.")
    assert ENTRY_FILES <= {p.name for p in entry.iterdir()}
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["cubin_sha256"] == sha256((entry / "kernel.cubin").read_bytes()) == sha256(kernels[0].cubin)
    assert meta["key"] == kernels[0].key and meta["lowered_name"] == kernels[0].lowered_name
    assert (entry / "kernel.cu").read_text() == TINY_SOURCE


def test_new_cache_on_same_root_hits_disk(tmp_path):
    first = KernelCache(tmp_path).get(TINY)
    second_cache = KernelCache(tmp_path)
    second = second_cache.get(TINY)
    assert second_cache.num_compiles == 0
    assert first.compiled_here and not second.compiled_here
    assert second.cubin == first.cubin and second.path == first.path


def test_warm_hit_does_not_load_nvrtc(tmp_path, monkeypatch):
    """With the NVRTC wheel's version known from its dist-info, a disk hit never asks NVRTC."""
    first = KernelCache(tmp_path).get(TINY)
    real = nvrtc.nvrtc_version()
    monkeypatch.setattr(nvrtc, "wheel_version", lambda: real)

    def must_not_load():
        raise AssertionError("NVRTC loaded for a cache hit")

    monkeypatch.setattr(nvrtc, "nvrtc_version", must_not_load)
    second = KernelCache(tmp_path).get(TINY)
    assert second.cubin == first.cubin and not second.compiled_here


def test_wrong_wheel_version_falls_back_to_nvrtc(tmp_path, monkeypatch):
    """A stale hint only costs the NVRTC query: the entry under the real version is found."""
    first = KernelCache(tmp_path).get(TINY)
    monkeypatch.setattr(nvrtc, "wheel_version", lambda: (1, 0))
    cache = KernelCache(tmp_path)
    assert cache.get(TINY).cubin == first.cubin and cache.num_compiles == 0


def test_wheel_version_matches_the_loaded_nvrtc():
    hint = nvrtc.wheel_version()
    if hint is None:
        pytest.skip("NVRTC does not come from exactly one nvidia-cuda-nvrtc wheel here")
    assert hint == nvrtc.nvrtc_version()


WORKER = """
import hashlib, json, sys, time
from pathlib import Path
from mategemm.jit.cache import KernelCache, KernelSpec
root, go, ready = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
spec = KernelSpec("tiny", {source!r}, "&tiny<3>", "sm_90a")
ready.touch()
while not go.exists():
    time.sleep(0.002)
kernel = KernelCache(root).get(spec)
entry_cubin = (kernel.path / "kernel.cubin").read_bytes()
meta = json.loads((kernel.path / "meta.json").read_text())
print(json.dumps({{"compiled_here": kernel.compiled_here, "cubin": hashlib.sha256(kernel.cubin).hexdigest(),
                   "entry_cubin": hashlib.sha256(entry_cubin).hexdigest(), "meta": meta["cubin_sha256"]}}))
"""


RACERS = 16


def test_sixteen_processes_racing_compile_once(tmp_path):
    root, go = tmp_path / "cache", tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    script = WORKER.format(source=TINY_SOURCE)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(root), str(go), str(tmp_path / f"ready{i}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(RACERS)]
    deadline = time.time() + 240
    while not all((tmp_path / f"ready{i}").exists() for i in range(RACERS)):  # every worker imported
        assert time.time() < deadline and all(p.poll() is None for p in procs), "a worker died before the race"
        time.sleep(0.05)
    go.touch()
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(r["compiled_here"] for r in reports) == 1
    hashes = {r[field] for r in reports for field in ("cubin", "entry_cubin", "meta")}
    assert len(hashes) == 1
    assert len(KernelCache(root).entries()) == 1 and KernelCache(root).verify() == []  # 0 incomplete entries


def test_corrupted_cubin_is_rebuilt(tmp_path, caplog):
    good = KernelCache(tmp_path).get(TINY)
    cubin = good.path / "kernel.cubin"
    data = bytearray(cubin.read_bytes())
    data[len(data) // 2] ^= 0x01
    cubin.write_bytes(bytes(data))
    cache = KernelCache(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mategemm"):
        again = cache.get(TINY)
    assert cache.num_compiles == 1 and again.cubin == good.cubin
    assert any("checksum" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    assert KernelCache(tmp_path).verify() == []


def test_truncated_meta_is_rebuilt(tmp_path, caplog):
    good = KernelCache(tmp_path).get(TINY)
    meta = good.path / "meta.json"
    meta.write_text(meta.read_text()[:40])
    cache = KernelCache(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mategemm"):
        again = cache.get(TINY)
    assert cache.num_compiles == 1 and again.cubin == good.cubin
    assert any("meta.json" in r.getMessage() for r in caplog.records)
    json.loads(meta.read_text())  # complete again


def test_verify_reports_then_repairs(tmp_path):
    cache = KernelCache(tmp_path)
    entry = cache.get(TINY).path
    assert cache.verify() == []
    (entry / "kernel.cubin").write_bytes(b"not a cubin")
    problems = cache.verify()
    assert problems == [(entry, "kernel.cubin fails its checksum")]
    assert entry.exists()  # reporting alone changes nothing
    assert cache.verify(repair=True) == problems
    assert not entry.exists() and cache.verify() == []
    fresh = KernelCache(tmp_path)
    fresh.get(TINY)
    assert fresh.num_compiles == 1


def test_symlinked_root_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with pytest.raises(CacheDirError, match="symlink"):
        KernelCache(link).get(TINY)


def test_default_cache_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MATEGEMM_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    assert default_cache().root == tmp_path / "mine"
    monkeypatch.setenv("MATEGEMM_CACHE_DIR", "~/somewhere")
    assert default_cache_dir() == Path.home() / "somewhere"


def test_root_and_entries_are_private(tmp_path):
    root = tmp_path / "a" / "cache"
    entry = KernelCache(root).get(TINY).path
    assert mode(root) == 0o700
    assert mode(entry) == 0o700


def test_compile_error_keeps_source_and_log(tmp_path, caplog):
    broken = KernelSpec("broken", "__global__ void broken() { this is not C++; }\n", "&broken", "sm_90a")
    with caplog.at_level(logging.ERROR, logger="mategemm"), pytest.raises(nvrtc.CompileError) as info:
        KernelCache(tmp_path).get(broken)
    kept = next((tmp_path / "failed").iterdir())
    assert str(kept) in str(info.value)
    assert [r.levelno for r in caplog.records] == [logging.ERROR] and str(kept) in caplog.records[0].getMessage()
    assert (kept / "kernel.cu").read_text() == broken.source
    assert "nvrtcCompileProgram" in (kept / "nvrtc.log").read_text()
    assert KernelCache(tmp_path).entries() == []


KILLED_WORKER = """
import os, sys, time
from pathlib import Path
from mategemm.jit import cache as cache_module
from mategemm.jit.cache import KernelCache, KernelSpec

stage = sys.argv[3]
real_write = cache_module._fsync_write
def slow_write(path, data):  # stop for good once the staging directory holds a file
    real_write(path, data)
    if stage == "write":
        Path(sys.argv[2]).touch()
        time.sleep(600)
cache_module._fsync_write = slow_write
real_replace = os.replace
def slow_replace(src, dst):  # stop for good just before the rename that publishes the entry
    if stage == "rename" and "staging" in str(src) and "trash" not in str(dst) and "probe." not in str(src):
        Path(sys.argv[2]).touch()
        time.sleep(600)
    return real_replace(src, dst)
cache_module.os.replace = slow_replace
KernelCache(sys.argv[1]).get(KernelSpec("tiny", {source!r}, "&tiny<3>", "sm_90a"))
"""


@pytest.mark.parametrize("stage", ("write", "rename"))
def test_a_process_killed_mid_compile_leaves_a_usable_cache(tmp_path, stage):
    """SIGKILL while the staging directory is half written, or just before the rename: the lock
    dies with the process, the next call compiles once and removes the leftovers."""
    import signal

    root, marker = tmp_path / "cache", tmp_path / "stopped"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WORKER.format(source=TINY_SOURCE), str(root), str(marker),
                             stage], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "the worker never reached the compile"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    leftovers = list((root / ".staging").glob("tiny.*"))
    assert leftovers, "the killed process left no staging directory to recover from"
    assert KernelCache(root).entries() == []  # nothing half-published
    cache = KernelCache(root)
    kernel = cache.get(TINY)
    assert cache.num_compiles == 1 and kernel.path is not None
    assert not any(p.exists() for p in leftovers)
    assert KernelCache(root).verify() == []


def test_an_unwritable_cache_dir_compiles_in_memory_with_one_warning(tmp_path, monkeypatch, caplog):
    """(Running as root, permissions do not stop writes: the write probe is made to fail.)"""
    from mategemm.jit import cache as cache_module

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache_module.tempfile, "NamedTemporaryFile", refuse)
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    cache = KernelCache(root)
    other = KernelSpec("tiny", TINY_SOURCE, "&tiny<4>", "sm_90a")
    with caplog.at_level(logging.WARNING, logger="mategemm"):
        first, second, again = cache.get(TINY), cache.get(other), cache.get(TINY)
    assert first.path is None and second.path is None and again is first
    assert cache.num_compiles == 2
    warnings = [r for r in caplog.records if "not writable" in r.getMessage()]
    assert len(warnings) == 1 and "compiling in memory" in warnings[0].getMessage()
    assert KernelCache(root).entries() == []


def test_nothing_from_the_cache_is_unpickled_or_executed():
    """The cache holds data only (JSON, cubin bytes, source text): no module of mategemm may load
    objects or code from files (pickle, marshal, torch.load, exec/eval, import by path)."""
    import re

    forbidden = re.compile(r"\b(pickle|marshal|shelve|dill)\b|torch\.load\(|\bexec\(|\beval\(|importlib\.(util|machinery)"
                           r"|spec_from_file_location|runpy\b")
    offenders = [f"{path.relative_to(REPO)}:{n}" for path in sorted((REPO / "mategemm").rglob("*.py"))
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if forbidden.search(line.split("#")[0])]
    assert offenders == []


def test_each_compile_is_logged_once_at_info(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="mategemm"):
        KernelCache(tmp_path).get(TINY)
        KernelCache(tmp_path).get(TINY)  # from disk: no compile, no record
    compiles = [r.getMessage() for r in caplog.records if r.getMessage().startswith("compiled ")]
    assert len(compiles) == 1 and TINY.kernel in compiles[0] and TINY.name_expr in compiles[0]


# ---- the cache touches only what it wrote ---------------------------------------------------------
def user_files(root: Path) -> dict:
    (root / "photos").mkdir(parents=True, exist_ok=True)
    (root / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    (root / "notes.txt").write_text("my notes")
    return snapshot(root)


def snapshot(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_directory_of_other_files_is_refused_and_left_as_it_was(tmp_path):
    root = tmp_path / "mine"
    before = user_files(root)
    cache = KernelCache(root)
    for action in (lambda: cache.get(TINY), cache.clear, lambda: cache.verify(repair=True)):
        with pytest.raises(CacheDirError, match="not a mategemm cache.*notes.txt, photos/"):
            action()
    assert snapshot(root) == before and sorted(p.name for p in root.iterdir()) == ["notes.txt", "photos"]
    assert cache.entries() == [] and cache.report().foreign == ("notes.txt", "photos/")


def test_another_tools_cachedir_tag_does_not_make_a_mategemm_cache(tmp_path):
    (tmp_path / MARKER).write_text("Signature: 8a477f597d28d172789f06886806bc55\n# some other tool\n")
    (tmp_path / "data.bin").write_bytes(b"x")
    with pytest.raises(CacheDirError, match="not a mategemm cache"):
        KernelCache(tmp_path).get(TINY)


def test_a_new_or_empty_directory_becomes_a_marked_cache(tmp_path):
    (tmp_path / "empty").mkdir()
    for root in (tmp_path / "new" / "cache", tmp_path / "empty"):
        KernelCache(root).get(TINY)
        report = KernelCache(root).report()
        assert report.marked and report.foreign == () and len(report.entries) == 1


def test_a_cache_from_before_the_marker_is_adopted(tmp_path):
    first = KernelCache(tmp_path)
    first.get(TINY)
    (tmp_path / MARKER).unlink()
    cache = KernelCache(tmp_path)
    assert cache.report().is_cache and not cache.report().marked
    cache.get(TINY)
    assert cache.num_compiles == 0 and (tmp_path / MARKER).is_file()


def test_foreign_items_in_a_cache_are_kept_by_clear_and_verify(tmp_path):
    cache = KernelCache(tmp_path)
    entry = cache.get(TINY).path
    before = user_files(tmp_path)
    lookalikes = {tmp_path / "tiny.0123456789abcdef": ("kernel.cubin", "mine.txt"),  # an entry's name, not its layout
                  tmp_path / "failed" / "tiny.0123456789abcdef": ("notes.md",),
                  tmp_path / ".staging" / "keep": ("x",), tmp_path / ".locks" / "mine": ("y",)}
    for folder, names in lookalikes.items():
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            (folder / name).write_text("mine")
    (tmp_path / ".locks" / "notes.lock").write_text("mine")
    before = snapshot(tmp_path)
    before = {p: data for p, data in before.items() if entry.name not in str(p) and p.name != MARKER}
    assert [p.name for p in cache.entries()] == [entry.name]
    assert set(cache.report().foreign) == {"notes.txt", "photos/", "tiny.0123456789abcdef/"}
    (entry / "kernel.cubin").write_bytes(b"corrupt")
    assert cache.verify(repair=True) == [(entry, "kernel.cubin fails its checksum")]
    assert KernelCache(tmp_path).get(TINY).path == entry  # rebuilt
    assert cache.clear() == 1 and not entry.exists()
    assert {p: data for p, data in snapshot(tmp_path).items() if p.name != MARKER} == before


def test_clear_removes_its_lock_files_but_not_a_held_one(tmp_path):
    from filelock import FileLock

    cache = KernelCache(tmp_path)
    cache.get(TINY)
    other = KernelSpec("tiny", TINY_SOURCE, "&tiny<4>", "sm_90a")
    cache.get(other)
    locks = sorted((tmp_path / ".locks").iterdir())
    assert len(locks) == 2
    with FileLock(str(locks[0])):
        assert KernelCache(tmp_path).clear() == 2
        assert sorted((tmp_path / ".locks").iterdir()) == [locks[0]]
    assert KernelCache(tmp_path).clear() == 0 and list((tmp_path / ".locks").iterdir()) == []


def test_a_read_only_cache_still_loads_its_entries(tmp_path, monkeypatch):
    """A pre-warmed cache shipped read-only (running as root, the write probe is made to fail)."""
    from mategemm.jit import cache as cache_module

    KernelCache(tmp_path).get(TINY)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache_module.tempfile, "NamedTemporaryFile", refuse)
    monkeypatch.setattr(cache_module.nvrtc, "wheel_version", lambda: None)  # the full look-up path
    cache = KernelCache(tmp_path)
    assert cache.get(TINY).path is not None and cache.num_compiles == 0 and not cache.writable
    with pytest.raises(CacheDirError, match="not writable"):
        cache.clear()
