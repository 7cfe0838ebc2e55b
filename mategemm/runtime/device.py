"""Facts about the target device: arch, SM count, shared-memory limit; and the MP (SM) budget."""
from __future__ import annotations

import functools
from dataclasses import dataclass

from mategemm import env
from mategemm.runtime.errors import NoCudaGpuError


@dataclass(frozen=True)
class DeviceInfo:
    index: int           # CUDA device index, -1 for a named arch without a device
    name: str
    arch: str            # NVRTC target, e.g. sm_90a
    num_sms: int
    smem_per_block: int  # opt-in dynamic shared memory per block, bytes
    l2_bytes: int


# NOTES: H100 SXM and H200 both have 132 SMs, 227 KB (232,448 B) opt-in shared memory per block
# and 50 MB of L2; used when compiling for sm_90a on a machine with no GPU.
SM90_NO_DEVICE = DeviceInfo(-1, "sm_90a (no device)", "sm_90a", 132, 232448, 50 * 1024 * 1024)
KNOWN_ARCHS = {"sm_90a": SM90_NO_DEVICE}

_num_mp_override: int | None = None


def arch_of(major: int, minor: int) -> str:
    # wgmma and setmaxnreg exist only in the arch-specific target sm_90a.
    return "sm_90a" if (major, minor) == (9, 0) else f"sm_{major}{minor}"


def require_cuda_gpu(needed_by: str) -> None:
    """Raise NoCudaGpuError, naming `needed_by`, unless torch sees a CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        raise NoCudaGpuError(f"{needed_by} needs a CUDA GPU (torch.cuda.is_available() is False); without one, "
                             "kernels can still be compiled for sm_90a: python -m mategemm prewarm")


@functools.lru_cache(maxsize=None)
def device_info(index: int) -> DeviceInfo:
    import torch

    require_cuda_gpu("mategemm's device query")
    props = torch.cuda.get_device_properties(index)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or 232448
    l2 = getattr(props, "L2_cache_size", 0) or 50 * 1024 * 1024
    return DeviceInfo(index, props.name, arch_of(props.major, props.minor), props.multi_processor_count, smem, l2)


def current_device_info(needed_by: str = "mategemm's device query") -> DeviceInfo:
    import torch

    require_cuda_gpu(needed_by)
    return device_info(torch.cuda.current_device())


def info_for_arch(arch: str) -> DeviceInfo:
    """The device to plan for when compiling for `arch` (the real one if a GPU of that arch is present)."""
    if arch not in KNOWN_ARCHS:
        raise ValueError(f"arch must be one of {sorted(KNOWN_ARCHS)}, got {arch!r}")
    try:
        import torch

        if torch.cuda.is_available():
            info = current_device_info()
            if info.arch == arch:
                return info
    except Exception:  # noqa: BLE001 - no usable GPU: plan for the named arch
        pass
    return KNOWN_ARCHS[arch]


def set_num_mp(num_mp: int | None) -> None:
    """Limit every kernel to `num_mp` SMs (None restores MATEGEMM_NUM_MP / all SMs)."""
    global _num_mp_override
    if num_mp is not None:
        if isinstance(num_mp, bool) or not isinstance(num_mp, int):
            raise TypeError(f"num_mp must be an int or None, got {type(num_mp).__name__}")
        if num_mp < 1:
            raise ValueError(f"num_mp must be >= 1, got {num_mp}")
    _num_mp_override = num_mp


def get_num_mp_override() -> int | None:
    """set_num_mp()'s value (None: not set)."""
    return _num_mp_override


def get_num_mp_setting() -> int:
    """set_num_mp()'s value, else MATEGEMM_NUM_MP; 0 means all SMs (cheap: no device query)."""
    return _num_mp_override or env.num_mp()


def get_num_mp(info: DeviceInfo | None = None) -> int:
    """SMs the kernels may use: set_num_mp(), else MATEGEMM_NUM_MP, else all SMs of the device."""
    if info is None:
        info = current_device_info("mategemm.get_num_mp")
    limit = get_num_mp_setting() or info.num_sms
    return min(limit, info.num_sms)


def current_device_index() -> int:
    """torch's current CUDA device (a direct query: torch.cuda.current_device costs ~1 us more)."""
    return _torch_queries()[0]()


def current_stream_handle(index: int) -> int:
    """The raw CUstream of torch's current stream on device `index`.

    NOTES: torch.cuda.current_stream() builds a Stream object per call (several us on the H200
    host); torch's private raw-stream query (also used by Triton) returns the handle directly.
    """
    return _torch_queries()[1](index)


def run_on_current_stream(index: int, fn, *args) -> None:
    """fn(*args, stream): the raw CUstream of torch's current stream on device `index`, with that
    device current (modules and streams belong to the tensors' device)."""
    if index == current_device_index():
        fn(*args, current_stream_handle(index))
    else:
        import torch

        with torch.cuda.device(index):
            fn(*args, current_stream_handle(index))


@functools.lru_cache(maxsize=1)
def _torch_queries():
    """(current device, raw current stream) functions, looked up once (a torch._C getattr costs
    ~1 us); the public API where the private ones are missing."""
    import torch

    device = getattr(torch._C, "_cuda_getDevice", None) or torch.cuda.current_device
    stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if stream is None:
        def stream(index):
            return torch.cuda.current_stream(index).cuda_stream
    return device, stream
