"""Without a GPU, the calls and tools that need one say so plainly."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mategemm
from mategemm.runtime import device as rt_device
from mategemm.runtime.errors import NoCudaGpuError

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


def test_get_num_mp_says_a_cuda_gpu_is_needed():
    with pytest.raises(NoCudaGpuError, match=r"mategemm.get_num_mp needs a CUDA GPU \(torch.cuda.is_available\(\) "
                                             r"is False\)"):
        mategemm.get_num_mp()


def test_device_query_says_a_cuda_gpu_is_needed():
    with pytest.raises(NoCudaGpuError, match="needs a CUDA GPU"):
        rt_device.device_info(0)
    with pytest.raises(NoCudaGpuError, match="needs a CUDA GPU"):
        rt_device.current_device_info()


def test_no_gpu_error_is_a_runtime_error():
    assert issubclass(NoCudaGpuError, RuntimeError)


@pytest.mark.parametrize("command", [
    ["tools/bench.py", "dense_fp8", "--out-dir", "{tmp}"],
    ["tools/compare_configs.py", "--shapes", "64x256x256", "--configs", ""],
])
def test_gpu_tools_exit_2_with_one_line(command, tmp_path):
    command = [part.format(tmp=tmp_path) for part in command]
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "needs a CUDA GPU" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
