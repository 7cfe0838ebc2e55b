"""mategemm: JIT-compiled FP8 GEMM kernels for NVIDIA Hopper."""
from mategemm.gemm import gemm_fp8_nt_groupwise
from mategemm.runtime.device import get_num_mp, set_num_mp
from mategemm.version import __version__

__all__ = ["gemm_fp8_nt_groupwise", "get_num_mp", "set_num_mp", "__version__"]
