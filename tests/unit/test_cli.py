"""The `mategemm` command, run as `python -m mategemm` against a private cache directory."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mategemm
from mategemm import env, prewarm, suites
from mategemm.jit.cache import MARKER

REPO = Path(__file__).resolve().parents[2]
NUM_DENSE_KERNELS = len(prewarm.plan_suites(suites.resolve("dense_fp8"), "sm_90a"))
# One dense shape (below: 128x4096x512) plans 3 kernels: (1,128,128) with A's scales copied by the
# scale warps and loaded by TMA, and (1,1,128).


def mategemm_cmd(cache: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("MATEGEMM_")}
    run_env.update(MATEGEMM_CACHE_DIR=str(cache),
                   PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "mategemm", *args], env=run_env, text=True, timeout=600,
                          **{"capture_output": True, **kwargs})


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"rc {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def cache(shared_kernel_cache) -> Path:
    return shared_kernel_cache


@pytest.fixture(scope="module")
def first_prewarm(cache) -> str:
    return ok(mategemm_cmd(cache, "prewarm", "--arch", "sm_90a", "--shapes", "dense_fp8"))


def test_prewarm_compiles_then_finds_all_cached(cache, first_prewarm):
    summary = rf"^{NUM_DENSE_KERNELS} kernels for shapes dense_fp8: \d+ compiled, \d+ already cached"
    assert re.search(summary, first_prewarm, re.M)
    second = ok(mategemm_cmd(cache, "prewarm", "--arch", "sm_90a", "--shapes", "dense_fp8", "--jobs", "2"))
    assert f"{NUM_DENSE_KERNELS} kernels for shapes dense_fp8: 0 compiled, {NUM_DENSE_KERNELS} already cached" in second


def test_shapes_and_preset_share_one_progress_display(tmp_path):
    shapes = ok_run(mategemm_cmd(tmp_path / "cache", "prewarm", "--shapes", "grouped_k_fp8"))
    preset = ok_run(mategemm_cmd(tmp_path / "cache", "prewarm", "--preset", "qwen3_30b_a3b", "--max-tokens", "1"))
    for done in (shapes, preset):
        assert re.search(r"^shapes grouped_k_fp8|^preset qwen3_30b_a3b", done.stdout, re.M)
        summary = r"^(\d+) kernels for (shapes|preset) \w+: \d+ compiled, \d+ already cached, [\d.]+ s \(--jobs \d+\)$"
        assert re.search(summary, done.stdout, re.M)
        assert re.search(r"^prewarm: (\d+)/\1 kernels, ", done.stderr, re.M)
        assert not re.search(r"^(compiled|cached) ", done.stdout, re.M)


def ok_run(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    ok(done)
    return done


def test_cache_ls_json(cache, first_prewarm):
    rows = json.loads(ok(mategemm_cmd(cache, "cache", "ls", "--json")))
    assert len(rows) >= NUM_DENSE_KERNELS
    for row in rows:
        assert row["kernel"].startswith("sm90_") or row["kernel"] == "transpose_8bit"
        assert len(row["key"]) == 64
        assert Path(row["cubin"]).is_file() and row["bytes"] == Path(row["cubin"]).stat().st_size > 0
    assert "sm90_fp8_gemm_blockscaled" in ok(mategemm_cmd(cache, "cache", "ls"))


def test_cache_ls_into_a_closed_pipe_is_quiet(cache, first_prewarm):
    """`mategemm cache ls | head -1`: the reader is gone before the output is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        for args in (("cache", "ls"), ("cache", "ls", "--json")):
            done = mategemm_cmd(cache, *args, capture_output=False, stdout=write_end, stderr=subprocess.PIPE)
            assert done.returncode == 0 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, \
                done.stderr
    finally:
        os.close(write_end)


def test_cache_verify_finds_and_repairs_a_corrupt_cubin(tmp_path):
    cache = tmp_path / "cache"
    shapes = write_json(tmp_path / "mine.json", [{"m": 128, "n": 4096, "k": 512}])
    ok(mategemm_cmd(cache, "prewarm", "--shapes", str(shapes)))
    assert "all 3 entries OK" in ok(mategemm_cmd(cache, "cache", "verify"))
    cubin = Path(json.loads(ok(mategemm_cmd(cache, "cache", "ls", "--json")))[0]["cubin"])
    data = bytearray(cubin.read_bytes())
    data[100] ^= 0x40
    cubin.write_bytes(bytes(data))

    bad = mategemm_cmd(cache, "cache", "verify")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"BAD {cubin.parent.name}: kernel.cubin fails its checksum" in bad.stdout
    assert not cubin.parent.exists()
    assert "all 2 entries OK" in ok(mategemm_cmd(cache, "cache", "verify"))
    rewarm = ok(mategemm_cmd(cache, "prewarm", "--shapes", str(shapes)))
    assert "3 kernels for shapes mine: 1 compiled, 2 already cached" in rewarm


def test_info(cache, first_prewarm):
    out = ok(mategemm_cmd(cache, "info"))
    assert re.search(r"^nvrtc: +\d+\.\d+$", out, re.M)
    assert re.search(rf"^mategemm: +{re.escape(mategemm.__version__)} \(torch ", out, re.M)
    assert re.search(r"^kernels: +\S+kernels_src \(headers [0-9a-f]{16}, ", out, re.M)
    assert re.search(rf"^cache: +{re.escape(str(cache))} \(\d+ entries, [\d.]+ MiB\)$", out, re.M)
    if not torch.cuda.is_available():
        assert "no GPU" in out
    for knob in env.KNOBS:
        assert f"{knob.name}=" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU demo")
def test_demo_without_gpu(cache, first_prewarm):
    out = ok(mategemm_cmd(cache, "demo"))
    assert "no GPU" in out and "NO GPU" in out
    assert f"{NUM_DENSE_KERNELS} kernels: 0 compiled" in out
    assert out.count(" OK") == 2


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_prewarm_from_a_file_then_clear(tmp_path):
    shapes = write_json(tmp_path / "shapes.json", {"_about": "ignored", "mine": [{"m": 128, "n": 4096, "k": 512}],
                                                  "my_masked": [{"groups": 2, "m_per_group": 8, "n": 64, "k": 128}]})
    cache = tmp_path / "cache"
    out = ok(mategemm_cmd(cache, "prewarm", "--arch", "sm_90a", "--shapes", str(shapes)))
    assert "shapes mine, my_masked, sm_90a (132 SMs): 3 dense + 1 moe kernels" in out
    assert "4 kernels for shapes mine, my_masked: 4 compiled, 0 already cached" in out
    assert f"removed 4 entries from {cache}" in ok(mategemm_cmd(cache, "cache", "clear"))
    assert json.loads(ok(mategemm_cmd(cache, "cache", "ls", "--json"))) == []
    assert "all 0 entries OK" in ok(mategemm_cmd(cache, "cache", "verify"))
    assert sorted(p.name for p in cache.iterdir()) == [".locks", ".staging", MARKER]
    assert list((cache / ".locks").iterdir()) == []  # clear removes its lock files too


def test_prewarm_takes_a_plain_list_of_shapes(tmp_path):
    shapes = write_json(tmp_path / "decode.json", [{"m": 64, "n": 2112, "k": 7168}, {"m": 64, "n": 7168, "k": 2048}])
    out = ok(mategemm_cmd(tmp_path / "cache", "prewarm", "--shapes", str(shapes)))
    assert out.startswith("shapes decode, sm_90a")


BAD_ROWS = [({"m": -64, "n": 4096, "k": 512}, "m must be a positive integer, got -64"),
            ({"m": 0, "n": 4096, "k": 512}, "m must be a positive integer, got 0"),
            ({"m": "64", "n": 4096, "k": 512}, "m must be a positive integer, got '64'"),
            ({"m": 64, "n": 100, "k": 512}, "n must be a positive multiple of 8, got 100"),
            ({"m": 64, "n": 4096, "k": 7168.5}, "k must be a positive multiple of 16, got 7168.5"),
            ({"m": 64, "n": 4096, "k": 100}, "k must be a positive multiple of 16, got 100"),
            ({"m": 64, "n": 4096}, "missing field(s) ['k']"),
            ({"m": 64, "n": 4096, "k": 512, "batch": 2, "x": 1}, "unknown field(s) ['batch', 'x']")]


def test_every_bad_row_is_rejected_with_file_suite_row_and_reason(tmp_path):
    good = {"m": 64, "n": 4096, "k": 512}
    shapes = write_json(tmp_path / "shapes.json", {
        "mixed": [good] + [row for row, _ in BAD_ROWS],
        "masked": [{"groups": 0, "m_per_group": 8, "n": 64, "k": 128}],
        "contiguous": [{"groups": 2, "m_per_group": 8, "n": 64, "k": 2112}],  # grouped: whole 128-K blocks
        "indexer": [{"batch": 1, "next_n": 5, "heads": 64, "index_dim": 128, "block_kv": 64, "avg_context": 10}],
        "models": {"m": {"hidden": 7168, "intermediate": 2048, "experts": 8, "topk": 9, "tokens": [1]}},
        "nothing": [], "number": 3, "odd": [{"a": 1}]})
    cache = tmp_path / "cache"
    done = mategemm_cmd(cache, "prewarm", "--shapes", str(shapes))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    for i, (row, reason) in enumerate(BAD_ROWS, start=1):
        assert f"{shapes}: suite 'mixed', row {i} {json.dumps(row)}: {reason}" in done.stderr
    assert "suite 'mixed', row 0 " not in done.stderr
    assert f"{shapes}: suite 'masked', row 0 " in done.stderr
    assert "groups must be an integer in [1, 1024], got 0" in done.stderr
    assert "suite 'contiguous', row 0 " in done.stderr and "k must be a positive multiple of 128, got 2112" \
        in done.stderr
    assert "suite 'indexer', row 0 " in done.stderr and "next_n must be an integer in [1, 4], got 5" in done.stderr
    assert "suite 'models', model 'm' " in done.stderr and "topk must be an integer in [1, experts = 8], got 9" \
        in done.stderr
    for name in ("nothing", "number"):
        assert f"suite '{name}': must be a non-empty list of rows" in done.stderr
    assert "suite 'odd': no row has the fields of a suite kind" in done.stderr
    assert not cache.exists() or cache_entry_count(cache) == 0  # nothing compiled


def cache_entry_count(root: Path) -> int:
    from mategemm.jit.cache import KernelCache

    return len(KernelCache(root).entries())


def test_a_shapes_file_that_is_not_json_is_named(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"a": [')
    done = mategemm_cmd(tmp_path / "cache", "prewarm", "--shapes", str(broken))
    assert done.returncode == 2 and f"{broken}: not valid JSON" in done.stderr and "Traceback" not in done.stderr
    missing = mategemm_cmd(tmp_path / "cache", "prewarm", "--shapes", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_every_shipped_suite_is_prewarmable():
    """What tools/bench.py runs: every suite of the shipped file plans kernels of its own kind."""
    families = {"dense_fp8": {"dense"}, "bmm": {"bmm"}, "grouped_contiguous_fp8": {"moe"},
                "grouped_masked_fp8": {"moe"}, "grouped_k_fp8": {"moe", "transpose"}, "paged_mqa_logits": {"indexer"},
                "moe_layers": {"moe"}, "nvfp4_moe": {"nvfp4", "moe"}}
    shipped = suites.read(suites.SHAPES_FILE)
    assert set(shipped) == set(families)
    for name, suite in shipped.items():
        planned = prewarm.plan_suites([suite], "sm_90a")
        assert {p.family for p in planned} == families[name], name
        assert all(p.use.startswith(f"{name}[") for p in planned)


def test_bmm_suite_plans_the_batched_kernels_of_every_recipe():
    """`--shapes bmm` reads batch and plans bmm_fp8's four recipes and bmm_fp16, not the dense kernels."""
    row = {"batch": 16, "m": 4096, "n": 4096, "k": 4096}
    planned = prewarm.plan_suites([suites.Suite("b", "bmm", (row,))], "sm_90a")
    uses = " | ".join(p.use for p in planned)
    assert "batch=16" in uses
    # (1,-1,-1) runs the per-tensor recipe's kernel (a per-tensor A scale is a per-row one of stride 0)
    for call in ("bmm_fp8 (-1,-1,-1)", "bmm_fp8 (1,128,128)", "bmm_fp8 (1,1,128)", "bmm_fp16 torch.float16",
                 "bmm_fp16 torch.bfloat16"):
        assert call in uses, call
    dense = prewarm.plan_suites([suites.Suite("d", "dense", ({"m": 4096, "n": 4096, "k": 4096},))], "sm_90a")
    assert not {p.spec for p in planned} & {p.spec for p in dense}
    assert len(planned) >= 4


def test_bad_arguments(tmp_path):
    unknown = mategemm_cmd(tmp_path, "prewarm", "--shapes", "no_such_suite")
    assert unknown.returncode == 2 and "no_such_suite" in unknown.stderr and "dense_fp8" in unknown.stderr
    bad_arch = mategemm_cmd(tmp_path, "prewarm", "--arch", "sm_80", "--shapes", "dense_fp8")
    assert bad_arch.returncode == 2 and "sm_80" in bad_arch.stderr
    assert mategemm_cmd(tmp_path, "frobnicate").returncode == 2


def test_version_and_every_command_described(tmp_path):
    assert ok(mategemm_cmd(tmp_path, "--version")).strip() == f"mategemm {mategemm.__version__}"
    for args in (("info",), ("prewarm",), ("cache",), ("cache", "ls"), ("cache", "verify"), ("cache", "clear"),
                 ("demo",)):
        text = ok(mategemm_cmd(tmp_path, *args, "--help"))
        description = text.split("\n\n")[1]  # usage, blank line, description
        assert len(description.split()) >= 5 and not description.startswith(("options", "positional")), (args, text)
    assert "k_grouped" in ok(mategemm_cmd(tmp_path, "prewarm", "--help"))  # the shapes format


# ---- the cache touches only what it wrote -------------------------------------------------------
def user_files(root: Path) -> dict:
    (root / "photos").mkdir(parents=True, exist_ok=True)
    (root / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    (root / "notes.txt").write_text("my notes")
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def still_there(root: Path, files: dict) -> None:
    assert {p: (root / p).read_bytes() for p in files} == files


def test_a_directory_of_user_files_is_refused_never_emptied(tmp_path):
    root = tmp_path / "mine"
    files = user_files(root)
    for args in (("cache", "clear"), ("cache", "verify"), ("cache", "ls"), ("prewarm", "--shapes", "bmm"),
                 ("demo",)):
        done = mategemm_cmd(root, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert f"{root} is not a mategemm cache" in done.stderr and "removed" not in done.stdout, args
        assert "Traceback" not in done.stderr
        still_there(root, files)
    assert "NOT a mategemm cache" in ok(mategemm_cmd(root, "info"))
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt", "photos"]


def test_foreign_files_in_a_cache_are_reported_and_left(tmp_path):
    root = tmp_path / "cache"
    shapes = write_json(tmp_path / "one.json", [{"m": 128, "n": 4096, "k": 512}])
    ok(mategemm_cmd(root, "prewarm", "--shapes", str(shapes)))
    files = user_files(root)
    lookalike = root / "sm90_fp8_gemm_blockscaled.0123456789abcdef"  # an entry's name, not its layout
    lookalike.mkdir()
    (lookalike / "kernel.cubin").write_bytes(b"mine")
    (lookalike / "mine.txt").write_text("mine")
    (root / "failed").mkdir()
    (root / "failed" / "keep.txt").write_text("mine")
    files = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()
             and p.relative_to(root).parts[0] in ("photos", "notes.txt", lookalike.name, "failed")}
    listed = ok(mategemm_cmd(root, "cache", "ls"))
    assert "3 entries; also holds 3 items mategemm did not write" in listed and lookalike.name in listed
    assert "notes.txt" in mategemm_cmd(root, "cache", "ls", "--json").stderr
    verified = ok_run(mategemm_cmd(root, "cache", "verify"))
    assert "all 3 entries OK" in verified.stdout and "photos/" in verified.stderr
    cleared = ok_run(mategemm_cmd(root, "cache", "clear"))
    assert f"removed 3 entries from {root}" in cleared.stdout and "notes.txt" in cleared.stderr
    still_there(root, files)
    assert (root / MARKER).is_file()


def test_clear_before_the_first_compile_says_what_it_did(tmp_path):
    done = ok(mategemm_cmd(tmp_path / "cache", "cache", "clear"))
    assert "nothing to clear" in done and not (tmp_path / "cache").exists()
    (tmp_path / "empty").mkdir()
    assert "removed 0 entries" in ok(mategemm_cmd(tmp_path / "empty", "cache", "clear"))


def test_an_unwritable_cache_is_said_and_fails_what_must_store(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    root = tmp_path / "file" / "cache"
    shapes = write_json(tmp_path / "one.json", [{"m": 128, "n": 4096, "k": 512}])
    for args in (("prewarm", "--shapes", str(shapes)), ("prewarm", "--preset", "qwen3_30b_a3b", "--max-tokens", "1")):
        done = mategemm_cmd(root, *args)
        assert done.returncode == 1 and "not writable" in done.stderr and "Traceback" not in done.stderr, args
    assert "NOT writable" in ok(mategemm_cmd(root, "info"))
    assert "NOT writable" in ok(mategemm_cmd(root, "cache", "verify"))
    assert "NOT writable" in ok(mategemm_cmd(root, "cache", "ls"))


def test_plan_is_deduplicated_and_pure():
    dense = suites.resolve("dense_fp8")
    assert len(dense[0].rows) == 28
    planned = prewarm.plan_suites(dense + dense, "sm_90a")
    assert planned == prewarm.plan_suites(dense, "sm_90a")
    assert len({p.spec for p in planned}) == len(planned) <= 2 * 28
