"""Launch configurations, built without a GPU (cuda-python's structures only)."""
from cuda.bindings import driver

from mategemm.runtime.launch import LoadedKernel


def config_of(cluster: int, grid: int = 132):
    kernel = LoadedKernel.__new__(LoadedKernel)  # no module load: only the fields _make_config reads
    kernel.num_threads, kernel.smem_bytes, kernel.cluster = 384, 200_000, cluster
    return kernel._make_config(grid, 0)


def test_single_cta_kernels_launch_without_the_cluster_attribute():
    config = config_of(1)
    assert (config.gridDimX, config.blockDimX, config.sharedMemBytes) == (132, 384, 200_000)
    assert config.numAttrs == 0


def test_cluster_kernels_carry_their_cluster_dimension():
    config = config_of(2)
    assert config.numAttrs == 1
    attr = config.attrs[0]
    assert attr.id == driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
    assert (attr.value.clusterDim.x, attr.value.clusterDim.y, attr.value.clusterDim.z) == (2, 1, 1)
