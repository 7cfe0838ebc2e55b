"""Launch configurations, built without a GPU (cuda-python's structures only); kept argument arrays."""
from cuda.bindings import driver

from mategemm.runtime import launch as rt_launch
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


def pdl_config(cluster: int = 1):
    kernel = LoadedKernel.__new__(LoadedKernel)
    kernel.num_threads, kernel.smem_bytes, kernel.cluster = 384, 200_000, cluster
    return kernel._make_config(132, 0, pdl=True)


def test_programmatic_dependent_launch_is_an_attribute_beside_the_cluster():
    serialization = driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
    config = pdl_config()
    assert config.numAttrs == 1 and config.attrs[0].id == serialization
    assert config.attrs[0].value.programmaticStreamSerializationAllowed == 1
    config = pdl_config(cluster=2)
    assert [a.id for a in config.attrs] == [driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
                                           serialization]


def test_pdl_setting_and_environment(monkeypatch):
    import pytest

    from mategemm.runtime import launch

    monkeypatch.setattr(launch, "_pdl_override", None)
    for raw, expected in (("1", True), ("on", True), ("0", False), ("", False)):
        monkeypatch.setenv("MATEGEMM_PDL", raw)
        assert launch.pdl_enabled() is expected
    monkeypatch.delenv("MATEGEMM_PDL")
    assert launch.pdl_enabled() is False  # off by default
    launch.set_pdl(True)
    assert launch.pdl_enabled() is True
    monkeypatch.setenv("MATEGEMM_PDL", "0")
    assert launch.pdl_enabled() is True  # the setting wins over the environment
    launch.set_pdl(None)
    assert launch.pdl_enabled() is False
    with pytest.raises(TypeError, match="enabled"):
        launch.set_pdl(1)


def test_keep_packed_stores_and_empties_a_full_dict():
    packed = {}
    for i in range(rt_launch.PACKED_PER_LAUNCH):
        assert rt_launch.keep_packed(packed, i, f"args{i}") == f"args{i}"
    assert len(packed) == rt_launch.PACKED_PER_LAUNCH
    assert rt_launch.keep_packed(packed, "next", "args") == "args"
    assert packed == {"next": "args"}
