"""FP8 quantisers: per-token 1x128 groups and 128x128 blocks, with dequantisation scales."""
from __future__ import annotations

import torch

FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}
_EPS = 1e-4


def _check(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor")
    if x.shape[1] % 128:
        raise ValueError(f"{name}.shape[1] must be a multiple of 128, got {x.shape[1]}")


def per_token_cast_to_fp8(x: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn):
    """x (m, k) -> (q (m, k) fp8, scales (m, k/128) fp32) with x ~= q * scale per 1x128 group."""
    _check(x)
    m, k = x.shape
    groups = x.float().view(m, k // 128, 128)
    amax = groups.abs().amax(dim=2).clamp(min=_EPS)
    scale = amax / FP8_MAX[dtype]
    q = (groups / scale.unsqueeze(2)).to(dtype).view(m, k)
    return q, scale


def per_block_cast_to_fp8(x: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn):
    """x (n, k) -> (q (n, k) fp8, scales (ceil(n/128), k/128) fp32) per 128x128 block."""
    _check(x)
    n, k = x.shape
    n_pad = -(-n // 128) * 128
    padded = torch.zeros((n_pad, k), dtype=torch.float32, device=x.device)
    padded[:n] = x.float()
    blocks = padded.view(n_pad // 128, 128, k // 128, 128)
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=_EPS)
    scale = amax / FP8_MAX[dtype]
    q = (blocks / scale[:, None, :, None]).to(dtype).view(n_pad, k)[:n].contiguous()
    return q, scale
