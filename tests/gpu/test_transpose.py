"""transpose_8bit: the K-major copy of MN-major FP8 operands, against torch's copy (bit-exact)."""
import pytest
import torch

from mategemm import prepare
from mategemm.kernels import transpose_8bit
from mategemm.runtime import calls
from mategemm.runtime import device as rt_device


def run_k_major(source: torch.Tensor) -> torch.Tensor:
    """prepare.k_major_copy on the K-major view of `source` (K rows, MN), as the GEMM paths call it."""
    staged = []
    view = source.transpose(-1, -2)
    workspace = prepare.k_major_copy(view, staged)
    assert len(staged) == 1 and isinstance(staged[0], transpose_8bit.Transpose)
    workspace.fill_(0x7F)  # poison: a NaN in e4m3
    staged[0](rt_device.current_stream_handle(source.device.index))
    return workspace


def random_fp8(shape, dtype=torch.float8_e4m3fn):
    return torch.randint(0, 256, shape, dtype=torch.uint8, device="cuda").view(dtype)


@pytest.mark.parametrize("shape", [(128, 64), (256, 1), (128, 200), (384, 4096), (1024, 7168 + 16), (3, 128, 96),
                                   (5, 256, 1000), (2, 1152, 33)])
@pytest.mark.parametrize("dtype", (torch.float8_e4m3fn, torch.float8_e5m2))
def test_transpose_matches_torch(shape, dtype):
    source = random_fp8(shape, dtype)
    got = run_k_major(source)
    assert torch.equal(got.view(torch.uint8), source.transpose(-1, -2).contiguous().view(torch.uint8))


@pytest.mark.parametrize("row_stride,offset", [(208, 0), (205, 0), (256, 3), (1040, 16)])
def test_strided_and_unaligned_sources(row_stride, offset):
    """Rows padded (16-byte multiple or not) and a base that is not 16-byte aligned: byte loads."""
    k, mn = 256, 200
    storage = random_fp8((k * row_stride + offset + 64,))
    source = storage[offset:offset + k * row_stride].view(k, row_stride)[:, :mn]
    got = run_k_major(source)
    assert torch.equal(got.view(torch.uint8), source.t().contiguous().view(torch.uint8))


def test_batched_source_with_gaps_between_groups():
    storage = random_fp8((4, 256 + 128, 160))
    source = storage[:, :256, :144]  # group stride > rows * row stride
    got = run_k_major(source)
    assert torch.equal(got.view(torch.uint8), source.transpose(1, 2).contiguous().view(torch.uint8))


def test_non_fp8_or_unaligned_k_falls_back_to_torch():
    staged = []
    half = torch.randn((128, 64), device="cuda", dtype=torch.bfloat16)
    prepare.k_major_copy(half.t(), staged)
    ragged_k = random_fp8((200, 64))
    prepare.k_major_copy(ragged_k.t(), staged)
    assert all(isinstance(s, calls.TorchCopy) for s in staged)
