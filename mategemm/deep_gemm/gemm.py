"""DeepGEMM's GEMM names on mategemm's kernels: FP8 operands as (tensor, scale) pairs, the output
`d` written in place, None returned, as DeepGEMM does.

Hopper takes float32 scales per recipe (1, 128, 128) (A per 1 x 128, B per 128 x 128 block, bf16
out) or (1, 1, 128) (both per 1 x 128); DeepGEMM's disable_ue8m0_cast and compiled_dims change
nothing here (its UE8M0 scales and baked-in dims are SM100 matters). FP4 operands, packed UE8M0
scales and per-operand recipes raise NotImplementedError.
"""
from __future__ import annotations

import torch

import mategemm
from mategemm import moe
from mategemm.deep_gemm.utils import layout

RECIPE_BLOCK_B, RECIPE_ROW_B = (1, 128, 128), (1, 1, 128)


def _sm100_only(func: str, what: str):
    return NotImplementedError(f"{func}: {what} is DeepGEMM's SM100 (Blackwell) feature; Hopper takes FP8 "
                               "e4m3 operands with float32 scales")


def _operand(pair, name: str, func: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"{name} must be a (tensor, scale) pair, got {type(pair).__name__}")
    x, scale = pair
    if isinstance(x, torch.Tensor) and x.dtype in (torch.int8, torch.uint8):
        raise _sm100_only(func, f"{name} as packed FP4")
    if isinstance(scale, torch.Tensor) and scale.dtype == torch.int32:
        raise _sm100_only(func, f"{name}'s packed UE8M0 scales")
    return x, scale


def _recipe(recipe, recipe_a, recipe_b, func: str) -> tuple[int, int, int]:
    if recipe_a is not None or recipe_b is not None:
        if recipe is not None:
            raise ValueError("give recipe, or recipe_a and recipe_b, not both")
        raise _sm100_only(func, "a per-operand recipe (recipe_a, recipe_b)")
    recipe = RECIPE_BLOCK_B if recipe is None else tuple(recipe)
    if recipe not in (RECIPE_BLOCK_B, RECIPE_ROW_B):
        raise ValueError(f"recipe must be {RECIPE_BLOCK_B} or {RECIPE_ROW_B} on Hopper, got {recipe}")
    return recipe


def _start_from(c: torch.Tensor | None, d: torch.Tensor) -> None:
    """d = c before a product is added to it (nothing to copy when c is d), or zeros without c."""
    if c is None:
        d.zero_()
    elif c.data_ptr() != d.data_ptr():
        d.copy_(c)


def fp8_gemm_nt(a, b, d: torch.Tensor, c: torch.Tensor | None = None, recipe=None, recipe_a=None, recipe_b=None,
                compiled_dims: str = "nk", disable_ue8m0_cast: bool = False) -> None:
    """d = a @ b^T with a = (a (m, k) e4m3, sfa (m, k/128)), b = (b (n, k) e4m3, sfb per recipe).

    recipe (1, 128, 128): d bf16, c None. recipe (1, 1, 128): d float32 and c float32 (m, n), which
    may be d itself: d = c + a @ b^T. k == 0 gives d = c (or zeros).
    """
    func = "fp8_gemm_nt"
    (a, sfa), (b, sfb) = _operand(a, "a", func), _operand(b, "b", func)
    recipe = _recipe(recipe, recipe_a, recipe_b, func)
    if not isinstance(d, torch.Tensor):
        raise TypeError(f"d must be a tensor, got {type(d).__name__}")
    if recipe == RECIPE_BLOCK_B:
        if c is not None:
            raise ValueError("c needs recipe (1, 1, 128) and a float32 d on Hopper (as in DeepGEMM)")
        if d.dtype != torch.bfloat16:
            raise TypeError(f"d must be bfloat16 with recipe (1, 128, 128), got {d.dtype}")
    else:
        if d.dtype != torch.float32 or not isinstance(c, torch.Tensor) or c.dtype != torch.float32:
            raise TypeError(f"recipe (1, 1, 128) accumulates: d and c float32 on Hopper, got d {d.dtype}, "
                            f"c {getattr(c, 'dtype', c)}")
        if tuple(c.shape) != tuple(d.shape):
            raise ValueError(f"c must have d's shape {tuple(d.shape)}, got {tuple(c.shape)}")
    if isinstance(a, torch.Tensor) and a.dim() == 2 and a.shape[1] == 0:
        _start_from(c, d)
        return None
    if recipe == RECIPE_BLOCK_B:
        mategemm.gemm_fp8_nt_groupwise(a, b, sfa, sfb, scale_granularity_mnk=recipe, out=d)
    else:
        mategemm.bmm_fp8(a.unsqueeze(0), b.unsqueeze(0), sfa.unsqueeze(0), sfb.unsqueeze(0), torch.float32,
                         out=d.unsqueeze(0), scale_granularity_mnk=recipe, c=c.unsqueeze(0))
    return None


def _transposed(pair):
    x, scale = pair
    return x.transpose(0, 1), scale.transpose(0, 1)


def fp8_gemm_nn(a, b, d, c=None, recipe=None, recipe_a=None, recipe_b=None, compiled_dims: str = "nk",
                disable_ue8m0_cast: bool = False) -> None:
    """fp8_gemm_nt with b given as (k, n) and its scales transposed alike (Hopper's FP8 kernels need
    both operands K-major, so b must be the transpose of a K-major tensor)."""
    fp8_gemm_nt(a, _transposed(_operand(b, "b", "fp8_gemm_nn")), d, c, recipe, recipe_a, recipe_b, compiled_dims,
                disable_ue8m0_cast)


def fp8_gemm_tn(a, b, d, c=None, recipe=None, recipe_a=None, recipe_b=None, compiled_dims: str = "mn",
                disable_ue8m0_cast: bool = False) -> None:
    """fp8_gemm_nt with a given as (k, m) and b as (k, n) (each the transpose of a K-major tensor)."""
    fp8_gemm_nt(_transposed(_operand(a, "a", "fp8_gemm_tn")), _transposed(_operand(b, "b", "fp8_gemm_tn")), d, c,
                recipe, recipe_a, recipe_b, compiled_dims, disable_ue8m0_cast)


def fp8_gemm_tt(a, b, d, c=None, recipe=None, recipe_a=None, recipe_b=None, compiled_dims: str = "mn",
                disable_ue8m0_cast: bool = False) -> None:
    """fp8_gemm_nt with a given as (k, m) (the transpose of a K-major tensor)."""
    fp8_gemm_nt(_transposed(_operand(a, "a", "fp8_gemm_tt")), b, d, c, recipe, recipe_a, recipe_b, compiled_dims,
                disable_ue8m0_cast)


def bf16_gemm_nt(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, c: torch.Tensor | None = None,
                 compiled_dims: str = "nk") -> None:
    """d = a @ b^T (+ c) with a (m, k), b (n, k) bf16; d bf16 or float32; c of d's dtype, which may
    be d itself. An operand that is not K-major (the nn/tn/tt forms' transposed views) is copied
    K-major first."""
    for name, x in (("a", a), ("b", b), ("d", d)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if c is not None and (not isinstance(c, torch.Tensor) or c.dtype != d.dtype or c.shape != d.shape):
        raise ValueError(f"c must be a tensor of d's dtype and shape ({d.dtype}, {tuple(d.shape)})")
    if a.dim() == 2 and a.shape[1] == 0:
        _start_from(c, d)
        return None
    a, b = (x if x.stride(-1) == 1 else x.contiguous() for x in (a, b))
    acc = None if c is None else c.unsqueeze(0).float()  # bf16 c: a float32 copy, taken before d is written
    mategemm.bmm_fp16(a.unsqueeze(0), b.unsqueeze(0), d.dtype, out=d.unsqueeze(0), c=acc)
    return None


def bf16_gemm_nn(a, b, d, c=None, compiled_dims: str = "nk") -> None:
    bf16_gemm_nt(a, b.transpose(0, 1), d, c, compiled_dims)


def bf16_gemm_tn(a, b, d, c=None, compiled_dims: str = "mn") -> None:
    bf16_gemm_nt(a.transpose(0, 1), b.transpose(0, 1), d, c, compiled_dims)


def bf16_gemm_tt(a, b, d, c=None, compiled_dims: str = "mn") -> None:
    bf16_gemm_nt(a.transpose(0, 1), b, d, c, compiled_dims)


def m_grouped_fp8_gemm_nt_masked(a, b, d: torch.Tensor, masked_m: torch.Tensor, expected_m: int, recipe=None,
                                 recipe_a=None, recipe_b=None, compiled_dims: str = "nk",
                                 disable_ue8m0_cast: bool = False) -> None:
    """d[g, :masked_m[g]] = a[g, :masked_m[g]] @ b[g]^T; a = (a (G, max_m, k), sfa (G, max_m, k/128)),
    b = (b (G, n, k), sfb), d bf16 (G, max_m, n); expected_m: the host's guess of rows per group."""
    func = "m_grouped_fp8_gemm_nt_masked"
    a, b = _operand(a, "a", func), _operand(b, "b", func)
    recipe = _recipe(recipe, recipe_a, recipe_b, func)
    if isinstance(expected_m, bool) or not isinstance(expected_m, int) or expected_m <= 0:
        raise ValueError(f"expected_m must be an int > 0, got {expected_m!r}")
    mategemm.masked_moe_gemm_8bit(a, b, masked_m, out=d, scale_granularity_mnk=recipe, expect_tokens=expected_m)
    return None


def psum_row_groups(psum: torch.Tensor, rows: int, alignment: int) -> torch.Tensor:
    """int32 (rows,): each row's group under the psum layout (group g's rows run from its previous
    group's end rounded up to `alignment` to psum[g]), -1 in the gaps; on psum's device, no sync."""
    ends = psum.to(torch.int64)
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    starts = (starts + alignment - 1) // alignment * alignment
    row = torch.arange(rows, device=psum.device)
    group = torch.searchsorted(starts, row, right=True) - 1
    return torch.where(row < ends[group], group, -1).to(torch.int32)


def m_grouped_fp8_gemm_nt_contiguous(a, b, d: torch.Tensor, grouped_layout: torch.Tensor, recipe=None, recipe_a=None,
                                     recipe_b=None, compiled_dims: str = "nk", disable_ue8m0_cast: bool = False,
                                     use_psum_layout: bool = False, ensure_zero_padding: bool = True,
                                     expected_m_for_psum_layout: int | None = None) -> None:
    """Rows of all groups stacked along M, each group starting at a multiple of
    get_mk_alignment_for_contiguous_layout().

    grouped_layout: int32 (M,) with each row's group and -1 on the padding rows (written as zeros,
    as DeepGEMM's kernel gives for A's zero padding rows); or with use_psum_layout, int32 (G,) of
    each group's row end (the gaps up to the next aligned start are left as they were).
    expected_m_for_psum_layout: a hint DeepGEMM's tile choice takes; not needed here.
    """
    func = "m_grouped_fp8_gemm_nt_contiguous"
    a, b = _operand(a, "a", func), _operand(b, "b", func)
    recipe = _recipe(recipe, recipe_a, recipe_b, func)
    if expected_m_for_psum_layout is not None and not use_psum_layout:
        raise ValueError("expected_m_for_psum_layout goes with use_psum_layout=True")
    alignment = layout.get_mk_alignment_for_contiguous_layout()
    row_groups = grouped_layout
    if use_psum_layout:
        groups = b[0].shape[0] if isinstance(b[0], torch.Tensor) and b[0].dim() == 3 else None
        if not isinstance(grouped_layout, torch.Tensor) or grouped_layout.dim() != 1 or \
                grouped_layout.shape[0] != groups:
            raise ValueError(f"grouped_layout must hold one row end per group ({groups}) with use_psum_layout")
        row_groups = psum_row_groups(grouped_layout, d.shape[0], alignment)
    mategemm.ragged_m_moe_gemm_8bit(a, b, row_groups, d, gemm_mode="per_token", scale_granularity_mnk=recipe,
                                    alignment_m=alignment)
    if not use_psum_layout and isinstance(grouped_layout, torch.Tensor) and d.shape[0] == grouped_layout.shape[0]:
        d.masked_fill_(grouped_layout.lt(0).unsqueeze(1), 0)
    return None


def fp8_gemm_nt_skip_head_mid(a, b, d: torch.Tensor, head_splits: tuple, recipe=None, compiled_dims: str = "nk",
                              disable_ue8m0_cast: bool = False) -> None:
    """fp8_gemm_nt whose n = heads x (left + right) columns land in d (m, heads x (left + mid + right)) head
    by head as [left | mid | right], the mid columns of d left as they were.

    The product goes through a bf16 buffer of (m, n) and is then copied around the gaps.
    """
    func = "fp8_gemm_nt_skip_head_mid"
    left, mid, right = (int(v) for v in head_splits)
    (a_x, _), (b_x, _) = _operand(a, "a", func), _operand(b, "b", func)
    if min(left, mid, right) < 0 or left + right == 0:
        raise ValueError(f"head_splits must be (left, mid, right) >= 0 with left + right > 0, got {head_splits}")
    n = b_x.shape[0]
    heads = n // (left + right)
    if n % (left + right) or not isinstance(d, torch.Tensor) or d.dim() != 2 or \
            d.shape[1] != n + heads * mid or d.shape[0] != a_x.shape[0]:
        raise ValueError(f"d must be (m={a_x.shape[0]}, {n + heads * mid}) for n={n} and head_splits {head_splits} "
                         f"(n a multiple of left + right), got {tuple(getattr(d, 'shape', ()))}")
    if d.dtype != torch.bfloat16:
        raise TypeError(f"d must be bfloat16, got {d.dtype}")
    product = torch.empty((a_x.shape[0], n), dtype=torch.bfloat16, device=d.device)
    fp8_gemm_nt(a, b, product, recipe=recipe)
    by_head, out = product.view(-1, heads, left + right), d.view(-1, heads, left + mid + right)
    out[:, :, :left] = by_head[:, :, :left]
    out[:, :, left + mid:] = by_head[:, :, left:]
    return None


def cublaslt_gemm_nt(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, c: torch.Tensor | None = None) -> None:
    """d = a @ b^T (+ c) through torch's cuBLAS, the reference and peer of DeepGEMM's tests: FP8 a, b
    with unit scales (torch._scaled_mm), or 16/32-bit ones (torch.mm in d's dtype)."""
    if a.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        one = torch.ones((), dtype=torch.float32, device=a.device)
        product = torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one, out_dtype=d.dtype)
    else:
        product = torch.mm(a.to(d.dtype), b.to(d.dtype).t())
    d.copy_(product if c is None else product + c)


def cublaslt_gemm_nn(a, b, d, c=None) -> None:
    cublaslt_gemm_nt(a, b.transpose(0, 1), d, c)


def cublaslt_gemm_tn(a, b, d, c=None) -> None:
    cublaslt_gemm_nt(a.transpose(0, 1), b.transpose(0, 1), d, c)


def cublaslt_gemm_tt(a, b, d, c=None) -> None:
    cublaslt_gemm_nt(a.transpose(0, 1), b, d, c)


def _columns_by_group(flat: torch.Tensor, ks: list[int], rows: int) -> torch.Tensor:
    """(rows, sum_k) row-major from groups stored one after another as (rows, k_i) row-major blocks."""
    out = flat.new_empty((rows, sum(ks)))
    offset = column = 0
    for k in ks:
        out[:, column:column + k] = flat[offset:offset + rows * k].view(rows, k)
        offset, column = offset + rows * k, column + k
    return out


def k_grouped_fp8_gemm_nt_contiguous(a, b, d: torch.Tensor, ks_cpu, grouped_layout: torch.Tensor,
                                     c: torch.Tensor | None = None, recipe=(1, 1, 128), compiled_dims: str = "mn",
                                     use_psum_layout: bool = False) -> None:
    """d[g] = c[g] + A_g @ B_g^T for the weight gradients of G groups with k_g tokens each.

    a = (flat fp8 of the groups' (m, k_g) row-major blocks one after another, sfa (m, sum_k/128));
    b likewise with n; ks_cpu the k_g (multiples of 128, zeros allowed) and grouped_layout the same
    as an int32 tensor on the GPU; d float32 (G, m, n); c float32 like d (may be d; None: zeros).
    The groups are gathered into one K-major operand first (a copy of a and b), then mategemm's
    ragged-K kernel runs.
    """
    func = "k_grouped_fp8_gemm_nt_contiguous"
    (a, sfa), (b, sfb) = _operand(a, "a", func), _operand(b, "b", func)
    if use_psum_layout:
        raise _sm100_only(func, "use_psum_layout")
    if tuple(recipe) != RECIPE_ROW_B:
        raise ValueError(f"recipe must be {RECIPE_ROW_B} for K-grouped GEMMs, got {tuple(recipe)}")
    if not ks_cpu:
        raise ValueError("ks_cpu must list every group's K (DeepGEMM's empty ks_cpu goes with its SM100 psum layout)")
    ks = [int(k) for k in ks_cpu]
    if not isinstance(d, torch.Tensor) or d.dtype != torch.float32 or d.dim() != 3 or d.shape[0] != len(ks):
        raise ValueError(f"d must be float32 (G={len(ks)}, m, n), got {getattr(d, 'dtype', d)} "
                         f"{tuple(getattr(d, 'shape', ()))}")
    if c is not None and (not isinstance(c, torch.Tensor) or c.dtype != torch.float32 or c.shape != d.shape):
        raise ValueError(f"c must be float32 of d's shape {tuple(d.shape)}")
    _, m, n = d.shape
    for name, x, rows in (("a", a, m), ("b", b, n)):
        if not isinstance(x, torch.Tensor) or x.dim() != 1 or x.numel() != rows * sum(ks):
            raise ValueError(f"{name} must be 1-D with {rows} x sum(ks_cpu) = {rows * sum(ks)} elements, got "
                             f"{tuple(getattr(x, 'shape', ()))}")
    _start_from(c, d)
    a_rows, b_rows = _columns_by_group(a, ks, m), _columns_by_group(b, ks, n)
    mategemm.ragged_k_moe_gemm_8bit((a_rows.t(), sfa.t()), (b_rows.t(), sfb.t()), grouped_layout, d,
                                    major_a_mode="K", major_b_mode="K", scale_granularity_mnk=RECIPE_ROW_B)
    return None


def _bf16_tensors(func: str, **tensors) -> None:
    for name, x in tensors.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{func}: {name} must be a tensor, got {type(x).__name__}")
        if x.dtype != torch.bfloat16:
            raise TypeError(f"{func}: {name} must be bfloat16, got {x.dtype}")


def _k_major(x: torch.Tensor) -> torch.Tensor:
    """x itself when K-major (unit stride along its last dimension), else a K-major copy: Hopper's
    16-bit path here reads K-major operands only."""
    return x if x.stride(-1) == 1 else x.contiguous()


def m_grouped_bf16_gemm_nt_contiguous(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, grouped_layout: torch.Tensor,
                                      compiled_dims: str = "nk", use_psum_layout: bool = False,
                                      ensure_zero_padding: bool = True,
                                      expected_m_for_psum_layout: int | None = None) -> None:
    """m_grouped_fp8_gemm_nt_contiguous for bf16 a (M, k), b (G, n, k) and d (M, n), no scales: the
    same layouts (-1 rows written as zeros; or the psum layout, its gaps left as they were)."""
    func = "m_grouped_bf16_gemm_nt_contiguous"
    _bf16_tensors(func, a=a, b=b, d=d)
    if expected_m_for_psum_layout is not None and not use_psum_layout:
        raise ValueError("expected_m_for_psum_layout goes with use_psum_layout=True")
    alignment = layout.get_mk_alignment_for_contiguous_layout()
    row_groups = grouped_layout
    if use_psum_layout:
        if not isinstance(grouped_layout, torch.Tensor) or grouped_layout.dim() != 1 or \
                grouped_layout.shape[0] != b.shape[0]:
            raise ValueError(f"grouped_layout must hold one row end per group ({b.shape[0]}) with use_psum_layout")
        row_groups = psum_row_groups(grouped_layout, d.shape[0], alignment)
    moe.grouped_gemm_16bit(a, _k_major(b), row_groups, d, "per_token", alignment_m=alignment)
    if not use_psum_layout and isinstance(grouped_layout, torch.Tensor) and d.shape[0] == grouped_layout.shape[0]:
        d.masked_fill_(grouped_layout.lt(0).unsqueeze(1), 0)
    return None


def m_grouped_bf16_gemm_nn_contiguous(a, b, d, grouped_layout, compiled_dims: str = "nk",
                                      use_psum_layout: bool = False, ensure_zero_padding: bool = True) -> None:
    """m_grouped_bf16_gemm_nt_contiguous with b given as (G, k, n) (copied K-major first)."""
    m_grouped_bf16_gemm_nt_contiguous(a, b.transpose(1, 2), d, grouped_layout, compiled_dims, use_psum_layout,
                                      ensure_zero_padding)


def m_grouped_bf16_gemm_nt_masked(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, masked_m: torch.Tensor,
                                  expected_m: int, compiled_dims: str = "nk") -> None:
    """d[g, :masked_m[g]] = a[g, :masked_m[g]] @ b[g]^T for bf16 a (G, max_m, k), b (G, n, k), d (G, max_m, n);
    expected_m: the host's guess of rows per group."""
    func = "m_grouped_bf16_gemm_nt_masked"
    _bf16_tensors(func, a=a, b=b, d=d)
    if isinstance(expected_m, bool) or not isinstance(expected_m, int) or expected_m <= 0:
        raise ValueError(f"expected_m must be an int > 0, got {expected_m!r}")
    moe.grouped_gemm_16bit(a, b, masked_m, d, "masked", expect_tokens=expected_m)
    return None


def k_grouped_bf16_gemm_tn_contiguous(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, ks_cpu,
                                      grouped_layout: torch.Tensor, c: torch.Tensor | None = None,
                                      compiled_dims: str = "mn", use_psum_layout: bool = False) -> None:
    """d[g] = c[g] + A_g^T @ B_g for bf16 a (sum_k, m) and b (sum_k, n), group g's rows being its
    ks_cpu[g] (multiples of 64) rows of K; d float32 (G, m, n); c float32 like d (may be d; None:
    zeros). a and b are copied K-major ((m, sum_k), (n, sum_k)) first, then the ragged-K kernel runs."""
    func = "k_grouped_bf16_gemm_tn_contiguous"
    _bf16_tensors(func, a=a, b=b)
    if use_psum_layout:
        raise _sm100_only(func, "use_psum_layout")
    if not ks_cpu:
        raise ValueError("ks_cpu must list every group's K (DeepGEMM's empty ks_cpu goes with its SM100 psum layout)")
    ks = [int(k) for k in ks_cpu]
    if any(k < 0 or k % 64 for k in ks):
        raise ValueError(f"ks_cpu: every group's K must be a non-negative multiple of 64, got {ks}")
    if not isinstance(d, torch.Tensor) or d.dtype != torch.float32 or d.dim() != 3 or d.shape[0] != len(ks):
        raise ValueError(f"d must be float32 (G={len(ks)}, m, n), got {getattr(d, 'dtype', d)} "
                         f"{tuple(getattr(d, 'shape', ()))}")
    if c is not None and (not isinstance(c, torch.Tensor) or c.dtype != torch.float32 or c.shape != d.shape):
        raise ValueError(f"c must be float32 of d's shape {tuple(d.shape)}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != sum(ks) or b.shape[0] != sum(ks):
        raise ValueError(f"a (sum_k, m) and b (sum_k, n) must have sum(ks_cpu) = {sum(ks)} rows, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    _start_from(c, d)
    moe.grouped_gemm_16bit(a.t().contiguous(), b.t().contiguous(), grouped_layout, d, "ragged_k")
    return None


fp8_fp4_gemm_nt, fp8_fp4_gemm_nn, fp8_fp4_gemm_tn, fp8_fp4_gemm_tt = fp8_gemm_nt, fp8_gemm_nn, fp8_gemm_tn, fp8_gemm_tt
m_grouped_fp8_fp4_gemm_nt_masked = fp8_m_grouped_gemm_nt_masked = m_grouped_fp8_gemm_nt_masked
m_grouped_fp8_fp4_gemm_nt_contiguous = m_grouped_fp8_gemm_nt_contiguous
