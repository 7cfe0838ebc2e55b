"""Module load and cuLaunchKernelEx on torch's current stream.

NOTES: cuda-python's driver module is imported with mategemm (17 ms on the H200 host) rather than
at the first call; it loads libcuda only when first used, so this works on machines without a GPU.
"""
from __future__ import annotations

import ctypes

from cuda.bindings import driver

from mategemm import env
from mategemm.jit.cache import CompiledKernel, KernelCache, KernelSpec, default_cache
from mategemm.runtime.errors import check

# Kernel argument kinds for PackedArgs: a ctypes type, or TMAP for a cuda.bindings CUtensorMap.
PTR = ctypes.c_void_p
INT = ctypes.c_int
I64 = ctypes.c_longlong
FLOAT = ctypes.c_float
TMAP = None

_launch = driver.cuLaunchKernelEx
_SUCCESS = driver.CUresult.CUDA_SUCCESS
_pdl_override: bool | None = None


def set_pdl(enabled: bool | None) -> None:
    """Programmatic dependent launch for the kernels that wait for their predecessor before touching
    memory (the GEMM kernels): True / False, or None for MATEGEMM_PDL."""
    global _pdl_override
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool or None, got {type(enabled).__name__}")
    _pdl_override = enabled


def pdl_enabled() -> bool:
    """set_pdl()'s value, else MATEGEMM_PDL."""
    return env.pdl() if _pdl_override is None else _pdl_override


class LoadedKernel:
    """A kernel function loaded into the current context, ready to launch."""

    def __init__(self, compiled: CompiledKernel, num_threads: int, smem_bytes: int, cluster: int = 1,
                 pdl: bool = False):
        """pdl: the kernel waits for the grids before it (griddepcontrol.wait) before touching global
        memory, so it may launch with programmatic dependent launch when pdl_enabled()."""
        self.compiled = compiled
        self.pdl = pdl
        self.num_threads = num_threads
        self.smem_bytes = smem_bytes
        self.cluster = cluster
        self.module = check(driver.cuModuleLoadData(compiled.cubin), "cuModuleLoadData")
        self.function = check(driver.cuModuleGetFunction(self.module, compiled.lowered_name.encode()),
                              "cuModuleGetFunction")
        check(driver.cuFuncSetAttribute(
            self.function, driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem_bytes), "cuFuncSetAttribute")
        # NOTES: one CUlaunchConfig per (grid, stream, pdl), made once: setting its fields through
        # cuda-python costs more per call than the dictionary look-up.
        self._configs: dict[tuple[int, int, bool], object] = {}
        self.max_resident_ctas = None if cluster == 1 else self._max_resident_ctas()
        # CTAs of this kernel one SM holds at once (its registers, shared memory and threads)
        self.resident_per_sm = max(1, check(driver.cuOccupancyMaxActiveBlocksPerMultiprocessor(
            self.function, num_threads, smem_bytes), "cuOccupancyMaxActiveBlocksPerMultiprocessor"))

    def _make_config(self, grid: int, stream: int, pdl: bool = False):
        config = driver.CUlaunchConfig()
        config.gridDimX = grid
        config.gridDimY = 1
        config.gridDimZ = 1
        config.blockDimX = self.num_threads
        config.blockDimY = 1
        config.blockDimZ = 1
        config.sharedMemBytes = self.smem_bytes
        config.hStream = driver.CUstream(stream)
        # NOTES: a kernel without CTA clusters launches without the cluster attribute: with a cluster
        # dimension of 1 it ran slower (H200, bmm_fp16 128x512x128x512: 32.2 -> 30.2 us without it;
        # a single 128x128 tile 6.2 -> 6.1 us).
        attrs = []
        if self.cluster > 1:
            attr = driver.CUlaunchAttribute()
            attr.id = driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
            attr.value.clusterDim.x = self.cluster
            attr.value.clusterDim.y = 1
            attr.value.clusterDim.z = 1
            attrs.append(attr)
        if pdl:
            attr = driver.CUlaunchAttribute()
            attr.id = driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
            attr.value.programmaticStreamSerializationAllowed = 1
            attrs.append(attr)
        if attrs:
            config.attrs = attrs
            config.numAttrs = len(attrs)
        return config

    def _max_resident_ctas(self) -> int:
        """CTAs of this kernel's clusters that fit on the device at once (a GPC's SMs may not
        pair up): a persistent grid beyond it would run its last clusters in a second wave."""
        config = self._make_config(self.cluster, 0)
        clusters = check(driver.cuOccupancyMaxActiveClusters(self.function, config), "cuOccupancyMaxActiveClusters")
        return max(1, clusters) * self.cluster

    @staticmethod
    def pack(values: tuple, types: tuple) -> "PackedArgs":
        return PackedArgs(values, types)

    def launch(self, grid: int, stream: int, args: "PackedArgs") -> None:
        """Launch `grid` CTAs on the raw CUstream handle `stream`; DriverError on failure."""
        key = (grid, stream, self.pdl and pdl_enabled())
        config = self._configs.get(key)
        if config is None:
            if len(self._configs) >= 256:
                self._configs.clear()
            config = self._configs[key] = self._make_config(*key)
        err = _launch(config, self.function, args.address, 0)
        if err[0] != _SUCCESS:
            check(err, "cuLaunchKernelEx")


def load_once(loaded: dict, key, kernel_spec: KernelSpec, num_threads: int, smem_bytes: int = 0, cluster: int = 1,
              cache: KernelCache | None = None, pdl: bool = False) -> LoadedKernel:
    """The kernel of `kernel_spec` from `loaded[key]`, compiled (or taken from `cache`) and loaded there
    the first time."""
    kernel = loaded.get(key)
    if kernel is None:
        kernel = loaded[key] = LoadedKernel((cache or default_cache()).get(kernel_spec), num_threads, smem_bytes,
                                            cluster, pdl)
    return kernel


PACKED_PER_LAUNCH = 64  # argument arrays a launcher keeps (per output address, strides, stream, ...)


def keep_packed(packed: dict, key, args: "PackedArgs") -> "PackedArgs":
    """`args` stored as packed[key]; a full dict (PACKED_PER_LAUNCH entries) is emptied first."""
    if len(packed) >= PACKED_PER_LAUNCH:
        packed.clear()
    packed[key] = args
    return args


class PackedArgs:
    """Kernel arguments as cuLaunchKernelEx's void*[] (one pointer to each argument's bytes), built
    once and never changed, so launches from several threads can share it.

    NOTES: passing this array's address instead of the (values, types) tuple saves the per-call
    marshalling (TOOLCHAIN_FACTS: 3.8 vs 5.1 us per launch on an H100 host).
    """

    def __init__(self, values: tuple, types: tuple):
        self.values = values
        self._keep = []
        self._pointers = (ctypes.c_void_p * len(values))()
        for i, (value, kind) in enumerate(zip(values, types)):
            if kind is TMAP:  # a CUtensorMap: its 128 bytes, copied 64-byte aligned
                raw = ctypes.create_string_buffer(128 + 64)
                address = (ctypes.addressof(raw) + 63) & ~63
                ctypes.memmove(address, value.getPtr(), 128)
                self._keep.append(raw)
            else:
                raw = kind(value)
                address = ctypes.addressof(raw)
                self._keep.append(raw)
            self._pointers[i] = address
        self.address = ctypes.addressof(self._pointers)
