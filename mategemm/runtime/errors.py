"""Driver errors that name the failing driver function; the error of a GPU call where there is no GPU."""
from __future__ import annotations


class DriverError(RuntimeError):
    """A CUDA driver call failed; the message names the driver function and the error."""


class NoCudaGpuError(RuntimeError):
    """A call that needs a CUDA GPU ran where torch sees none."""


def check(result, function: str):
    """Unpack a cuda.bindings result tuple ``(CUresult, *values)``; raise DriverError on failure."""
    from cuda.bindings import driver

    err = result[0]
    if err != driver.CUresult.CUDA_SUCCESS:
        _, text = driver.cuGetErrorString(err)
        detail = text.decode() if isinstance(text, bytes) else str(text)
        raise DriverError(f"{function} failed: {err.name} ({detail})")
    if len(result) == 1:
        return None
    if len(result) == 2:
        return result[1]
    return result[1:]
