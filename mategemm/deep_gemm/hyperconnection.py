"""DeepGEMM's hyperconnection pre-norm GEMM (`tf32_hc_prenorm_gemm`), on torch's matmul."""
from __future__ import annotations

import torch


def _check(name: str, t, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")


def tf32_hc_prenorm_gemm(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, sqr_sum: torch.Tensor,
                         num_splits: int | None = None) -> None:
    """d = a @ b^T and sqr_sum[r] = sum over K of a[r]^2, written in place.

    a (m, k) bfloat16 and b (n, k) float32, both K-major; d (m, n) float32 with unit column stride,
    sqr_sum (m,) float32 contiguous. With num_splits: d (num_splits, m, n) and sqr_sum (num_splits, m)
    hold partial sums over num_splits consecutive slices of K, whose sum is the result (as
    DeepGEMM's split kernel leaves them). The products run on torch's float32 matmul, at its
    precision setting (TF32 with torch.backends.cuda.matmul.allow_tf32, as DeepGEMM's test sets it).
    """
    func = "tf32_hc_prenorm_gemm"
    for name, t, dtype in (("a", a, torch.bfloat16), ("b", b, torch.float32)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{func}: {name} must be a 2-D tensor")
        if t.dtype != dtype:
            raise TypeError(f"{func}: {name} must be {dtype}, got {t.dtype}")
        if t.shape[1] > 1 and t.stride(1) != 1:
            raise ValueError(f"{func}: {name} must be K-major (unit stride along K), got strides {t.stride()}")
    m, k = a.shape
    n = b.shape[0]
    if b.shape[1] != k or n == 0 or k == 0:
        raise ValueError(f"{func}: a (m, k) and b (n, k) must share a positive K and have n > 0, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int)
                                   or num_splits < 1):
        raise ValueError(f"{func}: num_splits must be a positive integer or None, got {num_splits!r}")
    splits = 1 if num_splits is None else num_splits
    lead = () if num_splits is None else (num_splits,)
    _check("d", d, torch.float32, (*lead, m, n))
    _check("sqr_sum", sqr_sum, torch.float32, (*lead, m))
    if n > 1 and d.stride(-1) != 1:
        raise ValueError(f"{func}: d must be N-major (unit stride along N), got strides {d.stride()}")
    if not sqr_sum.is_contiguous():
        raise ValueError(f"{func}: sqr_sum must be contiguous")
    if len({t.device for t in (a, b, d, sqr_sum)}) != 1:
        raise ValueError(f"{func}: a, b, d and sqr_sum must be on one device")
    if m == 0:
        return None
    step = -(-k // splits)
    for i in range(splits):
        part = slice(min(k, i * step), min(k, (i + 1) * step))
        a_part = a[:, part].float()
        d_part, s_part = (d, sqr_sum) if num_splits is None else (d[i], sqr_sum[i])
        d_part.copy_(a_part @ b[:, part].t())
        s_part.copy_(a_part.square().sum(dim=1))
    return None
