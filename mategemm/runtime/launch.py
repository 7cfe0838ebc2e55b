"""Module load and cuLaunchKernelEx on torch's current stream."""
from __future__ import annotations

import ctypes

from mategemm.jit.cache import CompiledKernel
from mategemm.runtime.errors import check

# Kernel argument types for cuLaunchKernelEx's (values, types) form; None passes a
# cuda.bindings object (a CUtensorMap) as is.
PTR = ctypes.c_void_p
INT = ctypes.c_int
TMAP = None


class LoadedKernel:
    """A kernel function loaded into the current context, ready to launch."""

    def __init__(self, compiled: CompiledKernel, num_threads: int, smem_bytes: int, cluster: int = 1):
        from cuda.bindings import driver

        self.compiled = compiled
        self.num_threads = num_threads
        self.smem_bytes = smem_bytes
        self.cluster = cluster
        self.module = check(driver.cuModuleLoadData(compiled.cubin), "cuModuleLoadData")
        self.function = check(driver.cuModuleGetFunction(self.module, compiled.lowered_name.encode()),
                              "cuModuleGetFunction")
        check(driver.cuFuncSetAttribute(
            self.function, driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem_bytes), "cuFuncSetAttribute")
        attr = driver.CUlaunchAttribute()
        attr.id = driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
        attr.value.clusterDim.x = cluster
        attr.value.clusterDim.y = 1
        attr.value.clusterDim.z = 1
        config = driver.CUlaunchConfig()
        config.gridDimY = 1
        config.gridDimZ = 1
        config.blockDimX = num_threads
        config.blockDimY = 1
        config.blockDimZ = 1
        config.sharedMemBytes = smem_bytes
        config.attrs = [attr]
        config.numAttrs = 1
        self._config = config  # reused: only the grid and the stream change between launches
        self._launch = driver.cuLaunchKernelEx
        self._success = driver.CUresult.CUDA_SUCCESS
        self.max_resident_ctas = None if cluster == 1 else self._max_resident_ctas(driver)

    def _max_resident_ctas(self, driver) -> int:
        """CTAs of this kernel's clusters that fit on the device at once (a GPC's SMs may not
        pair up): a persistent grid beyond it would run its last clusters in a second wave."""
        config = self._config
        config.gridDimX = self.cluster
        clusters = check(driver.cuOccupancyMaxActiveClusters(self.function, config), "cuOccupancyMaxActiveClusters")
        return max(1, clusters) * self.cluster

    def launch(self, grid: int, stream: int, values: tuple, types: tuple) -> None:
        """Launch `grid` CTAs on the raw CUstream handle `stream`; DriverError on failure."""
        config = self._config
        config.gridDimX = grid
        config.hStream = _stream(stream)
        err = self._launch(config, self.function, (values, types), 0)
        if err[0] != self._success:
            check(err, "cuLaunchKernelEx")


_streams: dict[int, object] = {}


def _stream(handle: int):
    """CUstream objects by handle, made once each."""
    stream = _streams.get(handle)
    if stream is None:
        from cuda.bindings import driver

        if len(_streams) > 1024:
            _streams.clear()
        stream = _streams[handle] = driver.CUstream(handle)
    return stream
