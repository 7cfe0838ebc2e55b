"""Run-time compilation: cache keys, NVRTC, and the on-disk kernel cache."""
from mategemm.jit.cache import CompiledKernel, KernelCache, KernelSpec, default_cache

__all__ = ["CompiledKernel", "KernelCache", "KernelSpec", "default_cache"]
