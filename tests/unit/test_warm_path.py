"""The warm-call memo of gemm_fp8_nt_groupwise, with the driver and device stubbed out (CPU)."""
import contextlib

import pytest
import torch

import mategemm
from mategemm import gemm, validate
from mategemm.kernels import sm90_fp8_gemm_blockscaled as kernel_fp8
from mategemm.runtime import device as rt_device
from mategemm.runtime import tma
from mategemm.testing import make_fp8_gemm_inputs


class FakeKernel:
    max_resident_ctas = None

    def __init__(self):
        self.launches = []

    @staticmethod
    def pack(values, types):
        assert len(values) == len(types)
        return values

    def launch(self, grid, stream, values):
        self.launches.append((grid, values))


@pytest.fixture
def stubbed(monkeypatch):
    """CPU tensors pass as CUDA ones; loads and launches are recorded instead of run."""
    counts = {"validate": 0}
    real_validate = validate.gemm_fp8_nt_groupwise

    def counting_validate(*args):
        counts["validate"] += 1
        return real_validate(*args)

    kernel = FakeKernel()
    monkeypatch.setattr(validate, "cuda", lambda name, t: None)
    monkeypatch.setattr(validate, "gemm_fp8_nt_groupwise", counting_validate)
    monkeypatch.setattr(rt_device, "device_info", lambda index: rt_device.SM90_NO_DEVICE)
    monkeypatch.setattr(kernel_fp8, "load", lambda *args, **kwargs: kernel)
    monkeypatch.setattr(tma, "_encode", lambda *args: object())
    monkeypatch.setattr(rt_device, "current_device_index", lambda: None)
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    monkeypatch.setattr(rt_device, "current_stream_handle", lambda index: 0)
    monkeypatch.setattr(gemm, "_warm", type(gemm._warm)())
    monkeypatch.delenv("MATEGEMM_FORCE_CONFIG", raising=False)
    return counts, kernel


def test_repeated_call_skips_checks(stubbed):
    counts, kernel = stubbed
    a, b, sa, sb = make_fp8_gemm_inputs(64, 256, 256, device="cpu")
    out = torch.empty((64, 256), dtype=torch.bfloat16)
    for _ in range(10):
        mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out)
    assert counts["validate"] == 1
    assert len(kernel.launches) == 10


def test_anything_that_changes_the_call_is_checked_again(stubbed, monkeypatch):
    counts, kernel = stubbed
    a, b, sa, sb = make_fp8_gemm_inputs(64, 256, 256, device="cpu")
    out = torch.empty((64, 256), dtype=torch.bfloat16)
    mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out)
    mategemm.gemm_fp8_nt_groupwise(a.clone(), b, sa, sb, out=out)                      # new address
    mategemm.gemm_fp8_nt_groupwise(a, b, sa.t().contiguous(), sb.t().contiguous(), out=out,
                                   scale_major_mode="MN")                             # layout and option
    mategemm.gemm_fp8_nt_groupwise(a[:32], b, sa[:32], sb, out=out[:32])              # shape
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", "block_m=128,block_n=64")
    mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out)                             # knob
    assert counts["validate"] == 5
    wide = torch.empty((64, 264), dtype=torch.bfloat16)[:, :256]
    mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=wide)                            # out strides
    assert counts["validate"] == 6


def test_bad_call_after_a_warm_one_still_raises(stubbed):
    a, b, sa, sb = make_fp8_gemm_inputs(64, 256, 256, device="cpu")
    out = torch.empty((64, 256), dtype=torch.bfloat16)
    mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out)
    with pytest.raises(ValueError, match="out"):
        mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=torch.empty((64, 128), dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="scale_granularity_mnk"):
        mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out, scale_granularity_mnk=[1, 128])
    with pytest.raises(ValueError, match="scale_major_mode"):
        mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out, scale_major_mode="X")


def test_allocated_out_has_the_requested_dtype(stubbed):
    a, b, sa, sb = make_fp8_gemm_inputs(16, 128, 128, device="cpu")
    for _ in range(2):
        out = mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out_dtype=torch.float16)
        assert out.dtype == torch.float16 and out.shape == (16, 128)


def test_unhashable_options_take_the_checked_path(stubbed):
    counts, kernel = stubbed
    a, b, sa, sb = make_fp8_gemm_inputs(16, 128, 128, device="cpu")
    out = torch.empty((16, 128), dtype=torch.bfloat16)
    for _ in range(2):
        mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out, scale_granularity_mnk=[1, 128, 128])
    assert counts["validate"] == 2 and len(kernel.launches) == 2
