"""NVRTC through cuda.bindings: source + options -> cubin, or CompileError with the log."""
from __future__ import annotations

import functools
from pathlib import Path

from mategemm.jit.key import KERNELS_SRC


class CompileError(RuntimeError):
    """NVRTC rejected a kernel; the message names the kept source and log."""


@functools.lru_cache(maxsize=1)
def nvrtc_version() -> tuple[int, int]:
    from cuda.bindings import nvrtc

    err, major, minor = nvrtc.nvrtcVersion()
    _check(err, "nvrtcVersion")
    return int(major), int(minor)


@functools.lru_cache(maxsize=1)
def wheel_version() -> tuple[int, int] | None:
    """(major, minor) of the nvidia-cuda-nvrtc wheel, from its dist-info name; None if there is
    not exactly one. cuda-python loads NVRTC from that wheel first.

    NOTES: loading NVRTC only to ask its version cost 38 ms of a new process's first call on the
    H200 host; this reads a directory name. The cache looks kernels up under this version first
    and confirms with nvrtc_version() before compiling (KernelCache.get).
    """
    try:
        import nvidia  # the namespace package of NVIDIA's CUDA wheels
    except ImportError:
        return None
    found = {info.name for base in nvidia.__path__ for info in Path(base).parent.glob("nvidia_cuda_nvrtc*.dist-info")}
    if len(found) != 1:
        return None
    version = found.pop()[:-len(".dist-info")].rpartition("-")[2]
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def _check(err, what: str) -> None:
    from cuda.bindings import nvrtc

    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise CompileError(f"{what} failed: {err.name}")


def base_options(arch: str, debug: bool) -> tuple[str, ...]:
    """Options that enter the cache key (the include path is the same checkout's kernels_src)."""
    opts = [f"--gpu-architecture={arch}", "-std=c++17"]
    if debug:
        opts += ["-lineinfo", "--ptxas-options=-v"]
    return tuple(opts)


def compile_cubin(source: str, name_expr: str, options: tuple[str, ...]) -> tuple[bytes, str, str]:
    """Compile `source`; return (cubin, lowered name of `name_expr`, NVRTC log)."""
    from cuda.bindings import nvrtc

    err, prog = nvrtc.nvrtcCreateProgram(source.encode(), b"kernel.cu", 0, [], [])
    _check(err, "nvrtcCreateProgram")
    try:
        _check(nvrtc.nvrtcAddNameExpression(prog, name_expr.encode())[0], "nvrtcAddNameExpression")
        opts = [o.encode() for o in options] + [f"--include-path={KERNELS_SRC}".encode()]
        (compile_err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        err, size = nvrtc.nvrtcGetProgramLogSize(prog)
        _check(err, "nvrtcGetProgramLogSize")
        log = b" " * size
        _check(nvrtc.nvrtcGetProgramLog(prog, log)[0], "nvrtcGetProgramLog")
        log_text = log.rstrip(b"\0 ").decode(errors="replace")
        if compile_err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CompileError(f"nvrtcCompileProgram failed ({compile_err.name}):\n{log_text}")
        err, lowered = nvrtc.nvrtcGetLoweredName(prog, name_expr.encode())
        _check(err, "nvrtcGetLoweredName")
        err, size = nvrtc.nvrtcGetCUBINSize(prog)
        _check(err, "nvrtcGetCUBINSize")
        cubin = b" " * size
        _check(nvrtc.nvrtcGetCUBIN(prog, cubin)[0], "nvrtcGetCUBIN")
        return bytes(cubin), lowered.decode(), log_text
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
