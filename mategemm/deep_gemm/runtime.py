"""DeepGEMM's runtime settings under their names, mapped onto mategemm's.

set_num_sms/get_num_sms are mategemm's set_num_mp/get_num_mp (0 restores all SMs). The other
settings are kept and read back; what they change here is said on each.
"""
from __future__ import annotations

from mategemm.runtime import device, launch

_settings = {"tc_util": 0, "ignore_compile_dims": False, "block_size_multiple_of": (1, 1)}


def set_num_sms(num_sms: int) -> None:
    """Limit every kernel to num_sms SMs; 0 restores the default (MATEGEMM_NUM_MP, else all)."""
    if isinstance(num_sms, bool) or not isinstance(num_sms, int) or num_sms < 0:
        raise ValueError(f"num_sms must be an int >= 0, got {num_sms!r}")
    device.set_num_mp(num_sms or None)


def get_num_sms() -> int:
    return device.get_num_mp()


def set_tc_util(tc_util: int) -> None:
    """DeepGEMM's expected tensor-core share (0..100) for its SM100 BF16 heuristics: kept, unused on
    Hopper (as in DeepGEMM)."""
    if isinstance(tc_util, bool) or not isinstance(tc_util, int) or not 0 <= tc_util <= 100:
        raise ValueError(f"tc_util must be an int in 0..100, got {tc_util!r}")
    _settings["tc_util"] = tc_util


def get_tc_util() -> int:
    return _settings["tc_util"] or 100


def set_pdl(enable_pdl: bool) -> None:
    """Programmatic dependent launch for the GEMM kernels (mategemm.runtime.launch.set_pdl; off by
    default, as in DeepGEMM)."""
    launch.set_pdl(bool(enable_pdl))


def get_pdl() -> bool:
    return launch.pdl_enabled()


def set_ignore_compile_dims(ignore: bool) -> None:
    """DeepGEMM's switch for baking problem dims into kernels: kept, no effect (mategemm's kernels
    take every size at run time)."""
    _settings["ignore_compile_dims"] = bool(ignore)


def set_block_size_multiple_of(multiple) -> None:
    """DeepGEMM's constraint on its tile sizes: kept, no effect (mategemm's heuristics choose tiles)."""
    pair = (multiple, multiple) if isinstance(multiple, int) else tuple(multiple)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"multiple must be a positive int or a pair of them, got {multiple!r}")
    _settings["block_size_multiple_of"] = pair
