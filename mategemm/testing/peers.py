"""The peers a user already has through torch: cuBLAS FP8 blockwise and tensorwise GEMMs, torch's grouped GEMMs."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _scaling(*names):
    kind = getattr(F, "ScalingType", None) or getattr(F, "_ScalingType")
    for name in names:
        if hasattr(kind, name):
            return getattr(kind, name)
    raise AttributeError(f"torch.nn.functional.ScalingType has none of {names}")


def cublas_blockwise(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor):
    """A callable running cuBLAS's (1,128,128) blockwise GEMM on K-major scales (as ours take them).

    cuBLAS wants A's scales M-major ((k/128, m) storage seen as (m, k/128)) and B's as the
    transpose of a (ceil(n/128), k/128) tensor; the layouts are prepared here, outside the timing.
    """
    m, k_blocks = a_scale.shape
    sa = torch.empty_strided((m, k_blocks), (1, max(m, 1)), dtype=a_scale.dtype, device=a_scale.device)
    sa.copy_(a_scale)  # explicit strides: .contiguous() keeps a 1-row tensor's strides as they are
    sb = b_scale.contiguous().t()
    bt = b.t()
    rec_a = _scaling("BlockWise1x128", "Blockwise_1x128")
    rec_b = _scaling("BlockWise128x128", "Blockwise_128x128")
    return lambda: F.scaled_mm(a, bt, sa, rec_a, sb, rec_b, output_dtype=torch.bfloat16)


def cublas_tensorwise(a: torch.Tensor, b: torch.Tensor):
    """A callable running cuBLAS's per-tensor FP8 GEMM (unit scales): the ceiling of the FP8 path."""
    one = torch.ones((), dtype=torch.float32, device=a.device)
    bt = b.t()
    return lambda: torch._scaled_mm(a, bt, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)


def torch_scaled_grouped_rowwise(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor | None = None):
    """A callable running torch._scaled_grouped_mm (row-wise FP8 scales, bf16 out) on MoE operands.

    a (total_m, k) with offs the int32 cumulative row ends of each expert (E,), or a (E, m, k) with
    offs None; b (E, n, k). Unit scales ((total_m,) or (E, m) for A, (E, n) for B): a row-wise
    scale costs the same whatever its value, so this is for timing only.
    """
    bt = b.transpose(-2, -1)
    scale_a = torch.ones(a.shape[:-1], dtype=torch.float32, device=a.device)
    scale_b = torch.ones(b.shape[:-1], dtype=torch.float32, device=b.device)
    return lambda: torch._scaled_grouped_mm(a, bt, scale_a, scale_b, offs=offs, out_dtype=torch.bfloat16)


def torch_grouped_bf16(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor | None = None):
    """A callable running torch._grouped_mm in bf16: a (total_m, k) with offs, or (E, m, k); b (E, n, k)."""
    bt = b.transpose(-2, -1)
    return lambda: torch._grouped_mm(a, bt, offs=offs, out_dtype=torch.bfloat16)
