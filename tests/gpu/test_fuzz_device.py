"""Fuzzed bad input on the GPU: the CPU suite's 500+ broken calls per public op, here around valid
CUDA calls and with CPU tensors where CUDA ones belong. Each raises ValueError/TypeError naming the
argument, no kernel is launched, and the GPU stays healthy (a valid call runs afterwards)."""
import pytest
import torch

import mategemm
from mategemm.runtime import launch as rt
from mategemm.testing import fuzz


@pytest.mark.parametrize("name", fuzz.CASES)
def test_public_op_on_cuda(name, monkeypatch):
    launches = []
    real_launch = rt.LoadedKernel.launch

    def counted(self, *args):
        launches.append(self)
        return real_launch(self, *args)

    monkeypatch.setattr(rt.LoadedKernel, "launch", counted)
    fuzz.fuzz_public_op(name, "cuda")
    torch.cuda.synchronize()
    assert launches == [], f"{name}: {len(launches)} launches from calls that should have been refused"
    baselines, _, _ = fuzz.CASES[name]("cuda")
    getattr(mategemm, name)(**baselines[0])
    torch.cuda.synchronize()
