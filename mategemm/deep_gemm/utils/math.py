"""DeepGEMM's quantisation helpers, same arguments and results (float32 scales, or UE8M0 powers of
two, optionally packed four to an int32): the inputs its tests feed to the GEMMs.

Every cast takes the group's absolute maximum (at least 1e-4), divides it by the format's largest
value (448 for e4m3, 6 for e2m1) for the scale, and multiplies by the scale's reciprocal; padding
to whole groups is zeros and is cut off again.
"""
from __future__ import annotations

import torch

E4M3_MAX, E2M1_MAX, AMAX_FLOOR = 448.0, 6.0, 1e-4
# e2m1 magnitudes by code 0..7, and the midpoints between neighbours: a magnitude gets the code of
# the number of midpoints it exceeds (a tie goes to the smaller magnitude).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


def ceil_div(x: int, y: int) -> int:
    return -(-x // y)


def align(x: int, y: int) -> int:
    return ceil_div(x, y) * y


def _matrix(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor, got {getattr(x, 'shape', type(x).__name__)}")


def ceil_to_ue8m0(x: torch.Tensor) -> torch.Tensor:
    """The power of two at or above |x| (float32), its exponent kept within UE8M0's 2^-126..2^127."""
    bits = x.abs().float().view(torch.int32)
    exponent = (bits >> 23) + ((bits & 0x7FFFFF) != 0).int()
    return (exponent.clamp(1, 254) << 23).view(torch.float32)


def pack_ue8m0_to_int(x: torch.Tensor) -> torch.Tensor:
    """float32 powers of two (..., 4j) -> their exponent bytes, four to an int32 (..., j), first in
    the lowest byte."""
    if x.dtype != torch.float32 or x.shape[-1] % 4:
        raise ValueError(f"x must be float32 with a last dimension a multiple of 4, got {x.dtype} {tuple(x.shape)}")
    bits = x.view(torch.int32)
    if bool(((bits < 0) | ((bits & 0x7FFFFF) != 0)).any()):
        raise ValueError("x must hold non-negative powers of two (UE8M0 scales)")
    return (bits >> 23).to(torch.uint8).view(torch.int32)


def unpack_ue8m0_from_int(packed_sf: torch.Tensor) -> torch.Tensor:
    """The inverse of pack_ue8m0_to_int: int32 (..., j) -> float32 powers of two (..., 4j)."""
    return (packed_sf.view(torch.uint8).int() << 23).view(torch.float32)


def _scales(amax: torch.Tensor, largest: float, use_ue8m0: bool) -> torch.Tensor:
    scale = amax.float().clamp(min=AMAX_FLOOR) / largest
    return ceil_to_ue8m0(scale) if use_ue8m0 else scale


def _padded(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    if tuple(x.shape) == (rows, cols):
        return x
    out = x.new_zeros((rows, cols))
    out[:x.shape[0], :x.shape[1]] = x
    return out


def per_token_cast_to_fp8(x: torch.Tensor, use_ue8m0: bool, gran_k: int = 128,
                          use_packed_ue8m0: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """x (m, n) -> (e4m3 (m, n), scales (m, ceil(n/gran_k)) float32, or packed int32) per 1 x gran_k."""
    _matrix(x)
    m, n = x.shape
    groups = _padded(x, m, align(n, gran_k)).view(m, -1, gran_k)
    scale = _scales(groups.abs().amax(dim=2), E4M3_MAX, use_ue8m0)
    q = (groups * (1.0 / scale.unsqueeze(2))).to(torch.float8_e4m3fn).view(m, -1)[:, :n].contiguous()
    return q, pack_ue8m0_to_int(scale) if use_packed_ue8m0 else scale


def per_channel_cast_to_fp8(x: torch.Tensor, use_ue8m0: bool, gran_k: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """x (m, n), m a multiple of gran_k -> (e4m3 (m, n), scales (m/gran_k, n)) per gran_k x 1."""
    _matrix(x)
    m, n = x.shape
    if m % gran_k:
        raise ValueError(f"x's rows ({m}) must be a multiple of gran_k ({gran_k})")
    groups = x.view(m // gran_k, gran_k, n)
    scale = _scales(groups.abs().amax(dim=1), E4M3_MAX, use_ue8m0)
    return (groups * (1.0 / scale.unsqueeze(1))).to(torch.float8_e4m3fn).view(m, n), scale


def per_block_cast_to_fp8(x: torch.Tensor, use_ue8m0: bool, gran_k: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """x (m, n) -> (e4m3 (m, n), scales (ceil(m/gran_k), ceil(n/gran_k))) per gran_k x gran_k block."""
    _matrix(x)
    m, n = x.shape
    padded = _padded(x, align(m, gran_k), align(n, gran_k))
    blocks = padded.view(padded.shape[0] // gran_k, gran_k, padded.shape[1] // gran_k, gran_k)
    scale = _scales(blocks.abs().amax(dim=(1, 3), keepdim=True), E4M3_MAX, use_ue8m0)
    q = (blocks * (1.0 / scale)).to(torch.float8_e4m3fn).view_as(padded)[:m, :n].contiguous()
    return q, scale.view(blocks.shape[0], blocks.shape[2])


def per_custom_dims_cast_to_fp8(x: torch.Tensor, dims: tuple, use_ue8m0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale per index of `dims` (the maximum over every other dimension); scales squeezed."""
    reduced = tuple(d for d in range(x.dim()) if d not in {d % x.dim() for d in dims})
    scale = _scales(x.abs().amax(dim=reduced, keepdim=True), E4M3_MAX, use_ue8m0)
    return (x * (1.0 / scale)).to(torch.float8_e4m3fn), scale.squeeze()


def _e2m1_codes(x: torch.Tensor) -> torch.Tensor:
    """4-bit e2m1 codes (sign in bit 3; no negative zero) of values already scaled, as int8."""
    midpoints = torch.tensor(E2M1_MIDPOINTS, dtype=torch.float32, device=x.device)
    code = torch.bucketize(x.abs().float().contiguous(), midpoints).to(torch.int8)
    return code | (((x < 0) & (code != 0)).to(torch.int8) << 3)


def _e2m1_values(codes: torch.Tensor) -> torch.Tensor:
    magnitude = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=codes.device)[(codes & 7).long()]
    return torch.where((codes & 8) != 0, -magnitude, magnitude)


def _pack_pairs(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes (m, 2j) -> (m, j): column 2i in the low nibble, 2i+1 in the high one."""
    return (codes[:, 0::2] & 0x0F) | ((codes[:, 1::2] & 0x0F) << 4)


def _unpack_pairs(packed: torch.Tensor) -> torch.Tensor:
    codes = torch.empty((packed.shape[0], 2 * packed.shape[1]), dtype=torch.int8, device=packed.device)
    codes[:, 0::2], codes[:, 1::2] = packed & 0x0F, (packed >> 4) & 0x0F
    return codes


def per_token_cast_to_fp4(x: torch.Tensor, use_ue8m0: bool, gran_k: int = 128,
                          use_packed_ue8m0: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """x (m, n), n even -> (e2m1 pairs packed in int8 (m, n/2), scales (m, ceil(n/gran_k))) per
    1 x gran_k; packed UE8M0 scales are padded with 1.0 to a multiple of four first."""
    _matrix(x)
    m, n = x.shape
    if n % 2:
        raise ValueError(f"x's columns ({n}) must be even: two e2m1 values share a byte")
    if use_packed_ue8m0 and not use_ue8m0:
        raise ValueError("use_packed_ue8m0 needs use_ue8m0")
    groups = _padded(x, m, align(n, gran_k)).view(m, -1, gran_k)
    scale = _scales(groups.abs().amax(dim=2), E2M1_MAX, use_ue8m0)
    codes = _e2m1_codes(groups * (1.0 / scale.unsqueeze(2))).view(m, -1)
    packed = _pack_pairs(codes)[:, :n // 2].contiguous()
    if not use_packed_ue8m0:
        return packed, scale
    padding = align(scale.shape[1], 4) - scale.shape[1]
    return packed, pack_ue8m0_to_int(torch.nn.functional.pad(scale, (0, padding), value=1.0))


def transpose_packed_fp4(a: torch.Tensor) -> torch.Tensor:
    """Packed e2m1 (m, n/2) int8 -> the packed transpose (n, m/2); m even."""
    if a.dtype != torch.int8 or a.dim() != 2 or a.shape[0] % 2:
        raise ValueError(f"a must be a 2-D int8 tensor with an even number of rows, got {a.dtype} {tuple(a.shape)}")
    return _pack_pairs(_unpack_pairs(a).t().contiguous()).contiguous()


def cast_back_from_fp4(packed: torch.Tensor, sf: torch.Tensor, gran_k: int = 128,
                       use_packed_ue8m0: bool = False) -> torch.Tensor:
    """float32 (m, n) from per_token_cast_to_fp4's packed values and scales."""
    scale = unpack_ue8m0_from_int(sf) if use_packed_ue8m0 else sf
    values = _e2m1_values(_unpack_pairs(packed))
    return values * scale[:, torch.arange(values.shape[1], device=packed.device) // gran_k]
