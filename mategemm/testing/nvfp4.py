"""Exact references for NVFP4 (e2m1 values two per byte, e4m3 scales per 16 values in NVIDIA's
128x4 blocked layout), written from the format's definition, independent of mategemm.quant."""
from __future__ import annotations

import torch

E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def e2m1_values(codes: torch.Tensor) -> torch.Tensor:
    """float64 values of 4-bit e2m1 codes (bit 3 the sign)."""
    magnitude = torch.tensor(E2M1_MAGNITUDES, dtype=torch.float64, device=codes.device)[(codes & 7).long()]
    return torch.where((codes & 8) != 0, -magnitude, magnitude)


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """float64 (..., 2 x bytes) of packed uint8 (..., bytes): the low nibble is the even column."""
    low, high = e2m1_values(packed & 0x0F), e2m1_values(packed >> 4)
    return torch.stack([low, high], dim=-1).flatten(-2)


def unswizzle_scales(blocked: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """float64 (..., rows, cols) of scales in the blocked layout (..., tiles_r, tiles_c, 32, 4, 4),
    where [t, c, i, g, j] holds row t*128 + g*32 + i, column c*4 + j."""
    *lead, tiles_r, tiles_c, _, _, _ = blocked.shape
    out = torch.empty((*lead, tiles_r * 128, tiles_c * 4), dtype=torch.float64, device=blocked.device)
    values = blocked.double()
    for g in range(4):
        for j in range(4):
            # rows t*128 + g*32 + i for every t, i; columns c*4 + j for every c
            part = values[..., :, :, :, g, j]  # (..., t, c, i)
            out.view(*lead, tiles_r, 4, 32, tiles_c, 4)[..., :, g, :, :, j] = part.transpose(-1, -2)
    return out[..., :rows, :cols]


def nvfp4_dequantize(packed: torch.Tensor, blocked_scales: torch.Tensor, global_scale) -> torch.Tensor:
    """float64 x ~ value x scale / global_scale of weights (E, n, k/2) with (E, ..., 32, 4, 4) scales,
    or of one group's token rows (rows, k/2) with its own scale tiles."""
    values = unpack_e2m1(packed)
    rows, k = values.shape[-2:]
    scales = unswizzle_scales(blocked_scales, rows, k // 16).repeat_interleave(16, dim=-1)
    g = torch.as_tensor(global_scale, dtype=torch.float64, device=packed.device)
    if values.dim() == 3 and g.numel() > 1:
        g = g.view(-1, 1, 1)
    return values * scales / g


def grouped_nvfp4_reference(a, b, a_scales, b_scales, group_offsets, group_scale_offsets, expert_ids,
                            expert_scales, n_groups: int | None = None) -> torch.Tensor:
    """float64 (tokens, n) of grouped_matmul_dynamic_scaled_nvfp4: the rows of group g times expert
    expert_ids[g]'s weights (values x block scales), times expert_scales[expert]; rows of groups
    with expert id -1 (or past n_groups, the active count) are NaN (left untouched)."""
    offsets = [int(v) for v in group_offsets]
    groups = len(offsets) - 1 if n_groups is None else n_groups
    out = torch.full((a.shape[0], b.shape[1]), float("nan"), dtype=torch.float64, device=a.device)
    for g in range(groups):
        lo, hi, expert = offsets[g], offsets[g + 1], int(expert_ids[g])
        if expert < 0 or hi == lo:
            continue
        first, tiles = int(group_scale_offsets[g]), -(-(hi - lo) // 128)
        a64 = nvfp4_dequantize(a[lo:hi], a_scales[first:first + tiles], 1.0)
        b64 = nvfp4_dequantize(b[expert], b_scales[expert], 1.0)
        out[lo:hi] = (a64 @ b64.t()) * float(expert_scales[expert])
    return out
