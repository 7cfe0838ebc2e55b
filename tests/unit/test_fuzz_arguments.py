"""Fuzzed bad input, without a GPU: for every public op, at least 500 calls that each break one
argument of an otherwise valid call (valid but for living on the CPU). Each must raise ValueError or
TypeError naming an argument, before the device check (mategemm/testing/fuzz.py; tests/gpu runs
the same on CUDA tensors).
"""
import pytest

import mategemm
from mategemm.testing import fuzz


@pytest.mark.parametrize("name", fuzz.CASES)
def test_public_op(name):
    fuzz.fuzz_public_op(name, "cpu")


def test_every_public_op_is_fuzzed():
    assert set(fuzz.CASES) == set(mategemm.__all__) - {"get_num_mp", "set_num_mp", "__version__"}


def test_set_num_mp():
    for bad in (0, -1, 1.5, "4", True):
        with pytest.raises((ValueError, TypeError), match="num_mp"):
            mategemm.set_num_mp(bad)
