"""Argument checks shared by every entry point. Each failure names the argument and the rule."""
from __future__ import annotations

import torch

from mategemm.types import FP8_CODES, OUT_CODES, RECIPE_1x128_128x128, RECIPE_1x128_1x128, GemmProblem, Recipe

FP8_DTYPES = tuple(FP8_CODES)
OUT_DTYPES = tuple(OUT_CODES)
INT32_MAX = 2**31 - 1


def tensor(name: str, t, ndim: int | None = None, dtypes: tuple | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {_names(dtypes)}, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    return t


def shape(name: str, t: torch.Tensor, expected: tuple[int, ...], hint: str = "") -> None:
    if tuple(t.shape) != tuple(expected):
        extra = f" ({hint})" if hint else ""
        raise ValueError(f"{name} must have shape {tuple(expected)}{extra}, got {tuple(t.shape)}")


def tma_operand(name: str, t: torch.Tensor) -> None:
    """Row-major 2-D view usable by TMA: unit inner stride, 16-byte row stride and base."""
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous along its last dimension (stride 1), got strides {t.stride()}")
    row_bytes = t.stride(-2) * t.element_size()
    if t.shape[-2] > 1 and row_bytes % 16:
        raise ValueError(f"{name}: row stride {t.stride(-2)} elements = {row_bytes} bytes must be a multiple of 16")
    if t.shape[-2] > 1 and t.stride(-2) < t.shape[-1]:
        raise ValueError(f"{name}: rows overlap (row stride {t.stride(-2)} < row length {t.shape[-1]})")
    if t.data_ptr() % 16:
        raise ValueError(f"{name} data pointer must be 16-byte aligned")


def same_device(device: torch.device, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device}, expected {device} (same device as a)")


def cuda(name: str, t: torch.Tensor) -> None:
    if not t.is_cuda:
        raise ValueError(f"{name} must be a CUDA tensor, got device {t.device}")


def recipe(value, allowed: tuple[Recipe, ...], default: Recipe, name: str = "scale_granularity_mnk") -> Recipe:
    if value is None:
        return default
    if not isinstance(value, (tuple, list)) or len(value) != 3 or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise TypeError(f"{name} must be a tuple of three ints, got {value!r}")
    r = Recipe(*value)
    if r not in allowed:
        raise ValueError(f"{name} must be one of {[a.name for a in allowed]}, got {r.name}")
    return r


def choice(name: str, value, allowed: tuple, default=None):
    if value is None:
        return default
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def _names(dtypes) -> str:
    return "(" + ", ".join(str(d) for d in dtypes) + ")"


def scale_strides(name: str, t: torch.Tensor, major: str, rows: int, k_blocks: int, hint: str) -> tuple[int, int]:
    """Check an FP32 scale tensor of `rows` x `k_blocks` in `major` layout; return (row, k) strides."""
    tensor(name, t, ndim=2, dtypes=(torch.float32,))
    if major == "K":
        shape(name, t, (rows, k_blocks), f"{hint}, scale_major_mode='K'")
        strides = (t.stride(0), t.stride(1))
    else:
        shape(name, t, (k_blocks, rows), f"{hint}, scale_major_mode='MN'")
        strides = (t.stride(1), t.stride(0))
    if t.data_ptr() % 4:
        raise ValueError(f"{name} data pointer must be 4-byte aligned")
    if max(rows - 1, 0) * abs(strides[0]) + max(k_blocks - 1, 0) * abs(strides[1]) > INT32_MAX:
        raise ValueError(f"{name} spans more than 2**31 elements")
    return strides


def gemm_fp8_nt_groupwise(a, b, a_scale, b_scale, scale_major_mode, mma_sm, scale_granularity_mnk, out, out_dtype,
                          backend, output_scale):
    """Validate gemm_fp8_nt_groupwise's arguments.

    Returns (problem, a_scale strides, b_scale strides). Raises TypeError/ValueError naming the argument.
    """
    tensor("a", a, ndim=2, dtypes=FP8_DTYPES)
    tensor("b", b, ndim=2, dtypes=FP8_DTYPES)
    m, k = a.shape
    n, kb_ = b.shape
    if kb_ != k:
        raise ValueError(f"a and b must share K: a is {tuple(a.shape)}, b is {tuple(b.shape)}")
    if k == 0 or k % 128:
        raise ValueError(f"k (a.shape[1]) must be a positive multiple of 128, got {k}")
    if n == 0 or n % 8:
        raise ValueError(f"n (b.shape[0]) must be a positive multiple of 8, got {n}")
    if m > INT32_MAX or n > INT32_MAX:
        raise ValueError(f"m and n must be below 2**31, got m={m}, n={n}")
    tma_operand("a", a)
    tma_operand("b", b)
    choice("backend", backend, ("auto", "sm90"), "auto")
    if mma_sm is not None and mma_sm != 1:
        raise ValueError(f"mma_sm must be 1 or None on Hopper, got {mma_sm!r}")
    rec = recipe(scale_granularity_mnk, (RECIPE_1x128_128x128, RECIPE_1x128_1x128), RECIPE_1x128_128x128)
    major = choice("scale_major_mode", scale_major_mode, ("K", "MN"), "K")
    k_blocks = k // 128
    sfa = scale_strides("a_scale", a_scale, major, m, k_blocks, "one scale per row and 128-K block")
    n_rows = -(-n // 128) if rec.gn == 128 else n
    sfb = scale_strides("b_scale", b_scale, major, n_rows, k_blocks,
                        "one scale per 128x128 block" if rec.gn == 128 else "one scale per column and 128-K block")
    if output_scale is not None:
        raise NotImplementedError("output_scale (FP8 output) is not supported yet by gemm_fp8_nt_groupwise")
    if out is not None:
        tensor("out", out, ndim=2, dtypes=OUT_DTYPES)
        shape("out", out, (m, n))
        if out_dtype is not None and out_dtype != out.dtype:
            raise ValueError(f"out_dtype {out_dtype} differs from out.dtype {out.dtype}")
        if m > 0:
            tma_operand("out", out)
        dtype = out.dtype
    else:
        if out_dtype is not None and out_dtype not in OUT_DTYPES:
            raise TypeError(f"out_dtype must be one of {_names(OUT_DTYPES)}, got {out_dtype}")
        dtype = out_dtype or torch.bfloat16
    same_device(a.device, b=b, a_scale=a_scale, b_scale=b_scale, out=out)
    cuda("a", a)
    return GemmProblem(m, n, k, rec, a.dtype, b.dtype, dtype), sfa, sfb
