"""Run the public API's call path without a GPU, as far as the kernel launch: fake CUDA tensors
(torch's FakeTensorMode), an sm_90a device description, and every kernel the path loads recorded
instead of compiled and loaded; a Launch stops the call. What the call path would compile can
then be compared with what `prewarm` plans."""
from __future__ import annotations

import contextlib
import warnings

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from mategemm import bmm, formats, gemm, moe, moe_layer
from mategemm.jit.cache import CompiledKernel, KernelCache
from mategemm.kernels import (sm90_fp8_gemm_blockscaled, sm90_fp8_gemv, sm90_fp8_moe_layer, sm90_fp8_mqa_logits,
                              sm90_nvfp4_grouped_gemm, sm90_nvfp4_stream_gemm, transpose_8bit)
from mategemm.runtime import device as rt_device
from mategemm.runtime import launch as rt_launch


class LaunchReached(Exception):
    """The call got as far as building its launch."""


class _LoadedStandIn:
    resident_per_sm = 8

    def __init__(self, compiled, *args, **kwargs):
        self.compiled = compiled

    def pack(self, *args):
        return None


def _stop(*args, **kwargs):
    raise LaunchReached


class NoLaunch:
    """Stands in for the GEMMs' Launch: built and called as the real one, runs nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args):
        pass


@contextlib.contextmanager
def recorded_specs(monkeypatch):
    """Yields the list of KernelSpecs the calls made inside ask the kernel cache for; tensors made
    inside are fake (use device="cuda"). Each call should be wrapped in `call(...)`."""
    asked = []

    def get(self, spec):
        asked.append(spec)
        return CompiledKernel(spec.kernel, "0" * 64, b"", "stand_in", None, compiled_here=False)

    monkeypatch.setattr(KernelCache, "get", get)
    monkeypatch.setattr(rt_launch, "LoadedKernel", _LoadedStandIn)
    monkeypatch.setattr(rt_device, "device_info", lambda index: rt_device.SM90_NO_DEVICE)
    monkeypatch.setattr(rt_device, "current_device_info", lambda: rt_device.SM90_NO_DEVICE)
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    monkeypatch.setattr(sm90_fp8_gemm_blockscaled, "Launch", _stop)
    monkeypatch.setattr(sm90_fp8_gemm_blockscaled, "GatedLaunch", _stop)
    monkeypatch.setattr(sm90_fp8_gemv, "Launch", _stop)
    monkeypatch.setattr(sm90_nvfp4_grouped_gemm, "Launch", _stop)
    monkeypatch.setattr(sm90_nvfp4_stream_gemm, "Launch", _stop)
    monkeypatch.setattr(sm90_fp8_mqa_logits, "encode_2d", _stop)  # its launch loads the kernel first
    for module in (sm90_fp8_gemm_blockscaled, sm90_fp8_gemv, sm90_fp8_moe_layer, sm90_fp8_mqa_logits, transpose_8bit):
        monkeypatch.setattr(module, "_loaded", {})
    monkeypatch.setattr(gemm, "_warm", type(gemm._warm)())
    for module in (bmm, formats, moe, moe_layer):
        monkeypatch.setattr(module, "_warm", type(module._warm)())
    monkeypatch.setattr(moe_layer, "_workspaces", {})
    monkeypatch.setattr(moe_layer, "_outgrown", [])
    with FakeTensorMode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the checks read data pointers, which fake tensors lack
        yield asked


def call(fn, *args, **kwargs) -> None:
    """fn(*args, **kwargs) up to its launch."""
    try:
        fn(*args, **kwargs)
    except LaunchReached:
        pass
