"""tools/deepgemm_tests.py on a stand-in for DeepGEMM's tests/ folder (no GPU): `deep_gemm` is
mategemm.deep_gemm inside the files, each test function is recorded, a failure does not stop the
file, NotImplementedError naming SM100 counts as skipped, and a crashing or timed-out file is reported
with the results it reached."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tools" / "deepgemm_tests.py"

STAND_IN = '''
import dataclasses
import torch
import deep_gemm
from deep_gemm.testing import calc_diff, count_bytes
from deep_gemm.utils import per_token_cast_to_fp8, ceil_div
from generators import helper


@dataclasses.dataclass
class Case:
    m: int


def test_passes():
    assert deep_gemm.__name__ == "mategemm.deep_gemm" and helper() == 3
    x, sf = per_token_cast_to_fp8(torch.randn(4, 256), use_ue8m0=False)
    assert sf.shape == (4, ceil_div(256, 128)) and Case(1).m == 1 and count_bytes(x) == 1024


def test_fails():
    assert calc_diff(torch.ones(3), -torch.ones(3)) < 1e-3, "wrong sign"


def test_sm100_only():
    deep_gemm.get_mn_major_tma_aligned_packed_ue8m0_tensor(torch.ones(4, 4), psum_layout=torch.zeros(1))


if __name__ == "__main__":
    test_passes()
    test_fails()
    test_sm100_only()
    print("main block ran to the end")
'''


def run(tmp_path, *files):
    return subprocess.run([sys.executable, str(HARNESS), str(tmp_path), *files], capture_output=True, text=True,
                          timeout=300)


def test_harness_records_each_test_function(tmp_path):
    (tmp_path / "generators.py").write_text("def helper():\n    return 3\n")
    (tmp_path / "test_stand_in.py").write_text(STAND_IN)
    (tmp_path / "test_crash.py").write_text("import os\nif __name__ == '__main__':\n    os._exit(3)\n")
    proc = run(tmp_path, "test_stand_in.py", "test_crash.py")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "main block ran to the end" in proc.stdout
    assert "test_stand_in.py: 1 passed, 1 failed, 1 skipped-as-SM100" in proc.stdout
    assert "test_fails: failed: AssertionError: wrong sign" in proc.stdout
    assert "test_crash.py: 0 passed, 0 failed, 0 skipped-as-SM100; did not finish (exit 3" in proc.stdout


def test_harness_passes_when_nothing_fails(tmp_path):
    (tmp_path / "test_ok.py").write_text("import deep_gemm\n\ndef test_ok():\n    assert deep_gemm.align(5, 4) == 8\n"
                                         "\nif __name__ == '__main__':\n    test_ok()\n")
    proc = run(tmp_path, "test_ok.py")
    assert proc.returncode == 0 and "test_ok.py: 1 passed, 0 failed" in proc.stdout, proc.stdout + proc.stderr


def test_harness_names_missing_files(tmp_path):
    proc = run(tmp_path)
    assert proc.returncode == 2 and "no such test file" in proc.stderr and "test_fp8_fp4.py" in proc.stderr


def test_a_file_past_its_timeout_keeps_the_results_so_far(tmp_path):
    (tmp_path / "test_slow.py").write_text("import time\n\ndef test_quick():\n    pass\n\ndef test_slow():\n"
                                           "    time.sleep(60)\n\nif __name__ == '__main__':\n"
                                           "    test_quick()\n    test_slow()\n")
    proc = subprocess.run([sys.executable, str(HARNESS), str(tmp_path), "test_slow.py", "--timeout", "10"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "test_slow.py: 1 passed, 0 failed, 0 skipped-as-SM100; did not finish (timed out after 10 s)" in proc.stdout
