"""The peers a user already has through torch: cuBLAS FP8 blockwise, tensorwise and rowwise GEMMs (one
matrix, or a Python loop over a batch: torch has no batched FP8 GEMM), torch's grouped GEMMs."""
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


def _entry_scale(scale: torch.Tensor, i: int) -> torch.Tensor:
    """Batch entry i's per-tensor scale (a 0-d fp32 tensor) from a scale of 1 or `batch` elements."""
    flat = scale.reshape(-1)
    return flat[i if flat.numel() > 1 else 0].float().clone()


def _loop(calls: list):
    def run():
        for call in calls:
            call()
    return run


def cublas_tensorwise_loop(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor):
    """A callable running torch._scaled_mm (per-tensor scales, bf16 out) once per batch entry.

    a (batch, m, k), b (batch, n, k) fp8 K-major; a_scale, b_scale fp32 with 1 or `batch` elements.
    The per-entry scales and B's column-major views are prepared here, outside the timing.
    """
    args = [(a[i], b[i].t(), _entry_scale(a_scale, i), _entry_scale(b_scale, i)) for i in range(a.shape[0])]
    return _loop([lambda x=x, y=y, sx=sx, sy=sy: torch._scaled_mm(x, y, scale_a=sx, scale_b=sy,
                                                                   out_dtype=torch.bfloat16)
                  for x, y, sx, sy in args])


def cublas_rowwise_loop(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor):
    """A callable running torch._scaled_mm with row-wise scales (bf16 out) once per batch entry.

    a (batch, m, k), b (batch, n, k) fp8 K-major; a_scale (batch, m) fp32; b_scale per tensor (1 or
    `batch` elements), broadcast to torch's (1, n) row-wise B scale. torch wants scale_a (m, 1) and
    scale_b (1, n), both contiguous fp32, and B column-major: prepared here, outside the timing.
    """
    m, n = a.shape[1], b.shape[1]
    args = [(a[i], b[i].t(), a_scale[i].float().reshape(m, 1).contiguous(),
             _entry_scale(b_scale, i).reshape(1, 1).expand(1, n).contiguous()) for i in range(a.shape[0])]
    return _loop([lambda x=x, y=y, sx=sx, sy=sy: torch._scaled_mm(x, y, scale_a=sx, scale_b=sy,
                                                                   out_dtype=torch.bfloat16)
                  for x, y, sx, sy in args])


def cublas_blockwise_loop(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor):
    """A callable running cublas_blockwise ((1,128,128) recipe) once per batch entry.

    a (batch, m, k), b (batch, n, k) fp8 K-major; a_scale (batch, m, k/128), b_scale
    (batch, ceil(n/128), k/128), K-major as bmm_fp8 takes them; each entry's cuBLAS layouts are
    prepared here, outside the timing.
    """
    return _loop([cublas_blockwise(a[i], b[i], a_scale[i], b_scale[i]) for i in range(a.shape[0])])
