"""DeepGEMM's einsum names on mategemm's batched GEMMs: d written in place, None returned, as
DeepGEMM does. Each expression is a batched NT product (batch, M, N, K) of bmm_fp16 / bmm_fp8:

  "bhr,hdr->bhd"  (h, b, d, r): a (and its scales) and d seen with h first, b as it is
  "bhd,hdr->bhr"  (h, b, r, d): likewise, b seen as (h, r, d)
  "bmk,bnk->mn"   a sum over b: GEMMs over K' = b x k (see _sum_over_batch)

bmm reads its operands as K-major rows stacked batch after batch and stores d per batch entry with a
3-D TMA: the permuted d is written in place, while a with h moved first (not stacked) and b of
"bhd,hdr->bhr" (N-major; bmm_fp16 takes K-major operands only) are copied K-major by bmm before
its launch. fp8_einsum takes "bhr,hdr->bhd", DeepGEMM's SM90 form; its other forms are SM100's.
"""
from __future__ import annotations

import torch

import mategemm
from mategemm.deep_gemm.gemm import _operand, _recipe, _sm100_only, _start_from
from mategemm.runtime import device as rt_device

# The (batch, M, N, K) letters of the batched NT product that each per-head expression is.
PER_HEAD = {"bhr,hdr->bhd": "hbdr", "bhd,hdr->bhr": "hbrd"}
BATCH_SUM = "bmk,bnk->mn"
FP8_EXPRESSIONS = ("bhr,hdr->bhd",)
FP8_SM100_EXPRESSIONS = ("bhd,hdr->bhr", "bhd,bhr->hdr")
SUM_TILE = 128  # the output tile side assumed when counting the CTAs of one GEMM over all of K'


def _tensors(func: str, **tensors) -> None:
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{func}: {name} must be a tensor, got {type(t).__name__}")


def _expression(func: str, expr, supported) -> None:
    if not isinstance(expr, str):
        raise TypeError(f"{func}: expr must be a str, got {type(expr).__name__}")
    if expr not in supported:
        raise ValueError(f"{func}: unsupported expression {expr!r}; Hopper takes {', '.join(map(repr, supported))}")


def _sizes(expr: str, **operands) -> dict[str, int]:
    """Each letter's size, the operands' shapes checked against the expression and one another."""
    inputs, output = expr.split("->")
    shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in operands.items())
    sizes: dict[str, int] = {}
    for (name, t), letters in zip(operands.items(), (*inputs.split(","), output)):
        if t.dim() != len(letters):
            raise ValueError(f"{name} must be {len(letters)}-D ({letters}) for {expr!r}, got shape {tuple(t.shape)}")
        for letter, size in zip(letters, t.shape):
            if sizes.setdefault(letter, size) != size:
                raise ValueError(f"{name}: its {letter!r} dimension is {size}, an earlier operand's is "
                                 f"{sizes[letter]} ({expr!r}: {shapes})")
    return sizes


def _unit_inner_stride(expr: str, **tensors) -> None:
    for name, t in tensors.items():
        if t.shape[-1] > 1 and t.stride(-1) != 1:
            raise ValueError(f"{name} must have stride 1 along its last dimension for {expr!r}, got strides "
                             f"{t.stride()}")


def _seen_as(t: torch.Tensor, letters: str, order: str) -> torch.Tensor:
    """The view of t (dimensions named by `letters`) with its dimensions in `order`."""
    return t.permute([letters.index(letter) for letter in order])


def _nothing_to_launch(k: int, c, d: torch.Tensor) -> bool:
    """d empty, or no K to sum over (then d = c, or zeros)."""
    if d.numel() and k == 0:
        _start_from(c, d)
    return d.numel() == 0 or k == 0


def _per_head(expr: str, a, b, d, sfa=None, sfb=None, recipe=None, use_cublaslt: bool = False) -> None:
    """One batched NT product over h: bmm_fp8 when scales are given, else bmm_fp16 (or torch's
    cuBLAS with use_cublaslt)."""
    inputs, letters_d = expr.split("->")
    letters_a, letters_b = inputs.split(",")
    batch, m, n, k = PER_HEAD[expr]
    sizes = _sizes(expr, a=a, b=b, d=d)
    _unit_inner_stride(expr, a=a, b=b, d=d)
    if _nothing_to_launch(sizes[k], None, d):
        return
    if use_cublaslt:
        d.copy_(torch.einsum(expr, a, b))
        return
    a_op, b_op = _seen_as(a, letters_a, batch + m + k), _seen_as(b, letters_b, batch + n + k)
    out = _seen_as(d, letters_d, batch + m + n)
    if sfa is None:
        mategemm.bmm_fp16(a_op, b_op, torch.bfloat16, out=out)
    else:
        mategemm.bmm_fp8(a_op, b_op, _seen_as(sfa, letters_a, batch + m + k), _seen_as(sfb, letters_b, batch + n + k),
                         torch.bfloat16, out=out, scale_granularity_mnk=recipe)


def batch_sum_split(batch: int, m: int, n: int, num_sms: int) -> tuple[int, int]:
    """(GEMMs, batch entries each) that "bmk,bnk->mn" runs: enough GEMMs of (m, n) tiles to fill
    num_sms SMs, at most one per batch entry; the last GEMM may hold fewer entries."""
    tiles = -(-m // SUM_TILE) * -(-n // SUM_TILE)
    per_gemm = -(-batch // max(1, min(batch, num_sms // tiles)))
    return -(-batch // per_gemm), per_gemm


def _side_by_side_along_k(x: torch.Tensor, chunks: int, per_chunk: int) -> torch.Tensor:
    """(chunks, rows, per_chunk x k) from x (batch, rows, k): per_chunk batch entries laid side by
    side along K in each chunk, zeros past the last entry; x itself for one entry a chunk."""
    batch, rows, k = x.shape
    if per_chunk == 1:
        return x
    out = x.new_empty((chunks, rows, per_chunk, k))
    entries = out.permute(0, 2, 1, 3)  # (chunks, per_chunk, rows, k): out seen entry by entry
    full = batch // per_chunk
    entries[:full].copy_(x[:full * per_chunk].unflatten(0, (full, per_chunk)))
    if full < chunks:
        rest = batch - full * per_chunk
        entries[full, :rest].copy_(x[full * per_chunk:])
        entries[full, rest:].zero_()
    return out.view(chunks, rows, per_chunk * k)


def _sum_over_batch(a, b, d, c) -> None:
    """d (+)= sum over b of a[b] @ b[b]^T.

    NOTES: the sum is one GEMM over K' = b x k once each operand's batch entries lie side by side
    along K, (b, m, k) -> (m, b x k): a copy of a and b, since no view of a batch-major tensor has
    K' at one stride and bmm reads 2-D rows (a GEMM per batch entry needs no copy but an fp32
    (b, m, n) partial, as large as the operands when m, n ~ k, before its sum). bmm has no split-K,
    so a single GEMM would run on the ceil(m/128) x ceil(n/128) CTAs of its tiles only: K' is cut
    into batch_sum_split GEMMs that fill the SMs, and their fp32 partials (a few MB) are summed.
    With one batch entry a chunk (s no more than the SMs' share), a and b are read as they are.
    """
    sizes = _sizes(BATCH_SUM, a=a, b=b, d=d)
    if d.dtype == torch.float32:
        if not (isinstance(c, torch.Tensor) and c.dtype == d.dtype and c.data_ptr() == d.data_ptr()
                and c.shape == d.shape and c.stride() == d.stride()):
            raise ValueError(f"einsum {BATCH_SUM!r}: a float32 d accumulates (d += the sum), so c must be d itself")
    elif d.dtype == torch.bfloat16:
        if c is not None:
            raise ValueError(f"einsum {BATCH_SUM!r}: a bfloat16 d takes no c (c=d with a float32 d accumulates)")
    else:
        raise TypeError(f"einsum {BATCH_SUM!r}: d must be bfloat16 or float32, got {d.dtype}")
    _unit_inner_stride(BATCH_SUM, d=d)
    batch, m, n, k = sizes["b"], sizes["m"], sizes["n"], sizes["k"]
    if _nothing_to_launch(batch * k, c, d):
        return
    num_sms = rt_device.get_num_mp(rt_device.device_info(d.device.index))
    chunks, per_chunk = batch_sum_split(batch, m, n, num_sms)
    a_k, b_k = _side_by_side_along_k(a, chunks, per_chunk), _side_by_side_along_k(b, chunks, per_chunk)
    if chunks == 1:
        mategemm.bmm_fp16(a_k, b_k, d.dtype, out=d.unsqueeze(0), c=None if c is None else c.unsqueeze(0))
        return
    partial = torch.empty((chunks, m, n), dtype=torch.float32, device=d.device)
    mategemm.bmm_fp16(a_k, b_k, torch.float32, out=partial)
    if c is None:
        d.copy_(partial.sum(0))
    else:
        d.add_(partial.sum(0))


def einsum(expr: str, a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, c: torch.Tensor | None = None,
           use_cublaslt: bool = False) -> None:
    """d = einsum(expr, a, b) for bf16 a, b; d written in place.

    "bmk,bnk->mn": a (s, m, k), b (s, n, k); d (m, n) bf16 without c, or float32 with c being d
    itself (d += the sum over s). Both operands are copied unless s is small (see _sum_over_batch).
    "bhr,hdr->bhd": a (b, h, r), b (h, d, r), d (b, h, d) bf16, no c.
    "bhd,hdr->bhr": a (b, h, d), b (h, d, r), d (b, h, r) bf16, no c.
    Each of a, b, d has stride 1 along its last dimension (other strides free: y = fy[:, :, :r]
    works). use_cublaslt: the per-head forms through torch's cuBLAS (the tests' peer).
    Errors: TypeError (a tensor or dtype), ValueError (an expression, shape, stride or c not taken).
    """
    func = "einsum"
    _expression(func, expr, (BATCH_SUM, *PER_HEAD))
    _tensors(func, a=a, b=b, d=d)
    for name, t in (("a", a), ("b", b)):
        if t.dtype != torch.bfloat16:
            raise TypeError(f"{func}: {name} must be bfloat16, got {t.dtype}")
    if expr == BATCH_SUM:
        if use_cublaslt:
            raise ValueError(f"{func}: use_cublaslt is not taken by {BATCH_SUM!r} (as in DeepGEMM)")
        _sum_over_batch(a, b, d, c)
        return None
    if c is not None:
        raise ValueError(f"{func} {expr!r} takes no c: d is written, not accumulated")
    if d.dtype != torch.bfloat16:
        raise TypeError(f"{func} {expr!r}: d must be bfloat16, got {d.dtype}")
    _per_head(expr, a, b, d, use_cublaslt=use_cublaslt)
    return None


def fp8_einsum(expr: str, a, b, d: torch.Tensor, c: torch.Tensor | None = None, recipe=(1, 128, 128)) -> None:
    """d = einsum(expr, a, b) for FP8 (tensor, scale) pairs; d written in place.

    "bhr,hdr->bhd": a = (x (b, h, r) e4m3, float32 scales (b, h, r/128) per 1 x 128), b = (y (h, d, r)
    e4m3, scales (h, ceil(d/128), r/128) per 128 x 128 block; (h, d, r/128) with recipe (1, 1, 128));
    d (b, h, d) bf16; r a multiple of 128. Stride 1 along each tensor's last dimension.
    Errors: TypeError (a pair, tensor or dtype), ValueError (an expression, shape, stride, recipe, or
    c: DeepGEMM's SM90 form writes d without accumulating), NotImplementedError (SM100's forms).
    """
    func = "fp8_einsum"
    if isinstance(expr, str) and expr in FP8_SM100_EXPRESSIONS:
        raise _sm100_only(func, f"the expression {expr!r}")
    _expression(func, expr, FP8_EXPRESSIONS)
    (x, sx), (y, sy) = _operand(a, "a", func), _operand(b, "b", func)
    recipe = _recipe(recipe, None, None, func)
    _tensors(func, a=x, b=y, d=d)
    for name, scale in (("a's scale", sx), ("b's scale", sy)):
        if not isinstance(scale, torch.Tensor) or scale.dim() != 3:
            raise ValueError(f"{func}: {name} must be a 3-D tensor for {expr!r}, got "
                             f"{tuple(scale.shape) if isinstance(scale, torch.Tensor) else type(scale).__name__}")
    if c is not None:
        raise ValueError(f"{func}: c is not taken on Hopper (DeepGEMM's SM90 {expr!r} writes a bf16 d, "
                         "without accumulating)")
    if d.dtype != torch.bfloat16:
        raise TypeError(f"{func}: d must be bfloat16, got {d.dtype}")
    _per_head(expr, x, y, d, sx, sy, recipe)
    return None
