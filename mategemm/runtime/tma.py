"""TMA descriptors (cuTensorMapEncodeTiled) for row-major 2-D and 3-D tensors."""
from __future__ import annotations

import torch

from mategemm.runtime.errors import check

_SWIZZLE = {0: "CU_TENSOR_MAP_SWIZZLE_NONE", 32: "CU_TENSOR_MAP_SWIZZLE_32B",
            64: "CU_TENSOR_MAP_SWIZZLE_64B", 128: "CU_TENSOR_MAP_SWIZZLE_128B"}
_DTYPE = {
    torch.float8_e4m3fn: "CU_TENSOR_MAP_DATA_TYPE_UINT8",
    torch.float8_e5m2: "CU_TENSOR_MAP_DATA_TYPE_UINT8",
    torch.uint8: "CU_TENSOR_MAP_DATA_TYPE_UINT8",
    torch.bfloat16: "CU_TENSOR_MAP_DATA_TYPE_BFLOAT16",
    torch.float16: "CU_TENSOR_MAP_DATA_TYPE_FLOAT16",
    torch.float32: "CU_TENSOR_MAP_DATA_TYPE_FLOAT32",
}


_descriptors: dict[tuple, object] = {}
MAX_CACHED_DESCRIPTORS = 4096


def encode_2d(t: torch.Tensor, box_inner: int, box_outer: int, swizzle: int, rows: int | None = None):
    """Descriptor over a row-major 2-D view of `t` (inner dim contiguous) with the given box.

    `rows` overrides the outer extent (e.g. a 3-D tensor flattened over its leading dims).
    Descriptors depend only on address, extents, strides and box, so they are memoised on those.
    """
    outer = rows if rows is not None else t.shape[-2]
    return encode_rows(t.data_ptr(), t.dtype, t.shape[-1], outer, t.stride(-2), box_inner, box_outer, swizzle)


def encode_rows(address: int, dtype: torch.dtype, inner: int, outer: int, row_stride: int, box_inner: int,
                box_outer: int, swizzle: int):
    """Descriptor over `outer` rows of `inner` contiguous elements, `row_stride` elements apart."""
    elem = dtype.itemsize
    row_stride_bytes = row_stride * elem
    key = (address, dtype, inner, outer, row_stride_bytes, box_inner, box_outer, swizzle)
    desc = _descriptors.get(key)
    if desc is None:
        if len(_descriptors) >= MAX_CACHED_DESCRIPTORS:
            _descriptors.clear()
        if outer == 1:  # a single row's stride is never used but must still be legal
            row_stride_bytes = -(-inner * elem // 16) * 16
        desc = _descriptors[key] = _encode(dtype, address, (inner, outer), (row_stride_bytes,), (box_inner, box_outer),
                                           swizzle)
    return desc


def encode_3d(t: torch.Tensor, box_inner: int, box_middle: int, swizzle: int):
    """Descriptor over a 3-D tensor (inner dim contiguous), box (box_inner, box_middle, 1)."""
    dims = (t.shape[2], t.shape[1], t.shape[0])
    strides = (t.stride(1) * t.element_size(), t.stride(0) * t.element_size())
    key = (t.data_ptr(), t.dtype, dims, strides, box_inner, box_middle, swizzle)
    desc = _descriptors.get(key)
    if desc is None:
        if len(_descriptors) >= MAX_CACHED_DESCRIPTORS:
            _descriptors.clear()
        desc = _descriptors[key] = _encode(t.dtype, key[0], dims, strides, (box_inner, box_middle, 1), swizzle)
    return desc


def _encode(dtype, ptr, dims, strides_bytes, box, swizzle):
    from cuda.bindings import driver

    return check(driver.cuTensorMapEncodeTiled(
        getattr(driver.CUtensorMapDataType, _DTYPE[dtype]), len(dims), ptr,
        [driver.cuuint64_t(d) for d in dims], [driver.cuuint64_t(s) for s in strides_bytes],
        [driver.cuuint32_t(b) for b in box], [driver.cuuint32_t(1)] * len(dims),
        driver.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE,
        getattr(driver.CUtensorMapSwizzle, _SWIZZLE[swizzle]),
        driver.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        driver.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE), "cuTensorMapEncodeTiled")
