"""Argument checks shared by every entry point. Each failure names the argument and the rule."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mategemm.kernels import sm90_fp8_mqa_logits as mqa
from mategemm.types import (FP8_DTYPES, OUT_DTYPES, RECIPE_1x32_1x32, RECIPE_1x128_128x128, RECIPE_1x128_1x128,
                            RECIPE_PER_ROW, RECIPE_PER_TENSOR, GemmProblem, Nvfp4Problem, Recipe)

INT32_MAX = 2**31 - 1
# K of a dense or batched FP8 GEMM with K-major operands: 16-byte rows for TMA. A K tail past the
# last whole 128-wide scale block is zero-filled by TMA and has its own scales (ceil(k / 128) of
# them). The grouped modes, and MN-major operands, keep K a multiple of 128.
FP8_K_MULTIPLE = 16


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


def same_device(first: str, device: torch.device, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device}, expected {device} (same device as {first})")


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


def fp8_output(out, out_dtype, output_scale) -> None:
    """The FP8-output arguments of gemm_fp8_nt_groupwise: one fp32 output_scale, an e4m3 output."""
    tensor("output_scale", output_scale, dtypes=(torch.float32,))
    if output_scale.numel() != 1:
        raise ValueError(f"output_scale must hold one fp32 element, got shape {tuple(output_scale.shape)}")
    if out_dtype not in (None, torch.float8_e4m3fn):
        raise ValueError(f"out_dtype must be torch.float8_e4m3fn (or None) with output_scale, got {out_dtype}")
    if out is not None:
        tensor("out", out, ndim=2)
        if out.dtype != torch.float8_e4m3fn:
            raise TypeError(f"out.dtype must be torch.float8_e4m3fn with output_scale, got {out.dtype}")


@dataclass(frozen=True)
class GemmChecked:
    problem: GemmProblem
    sfa_strides: tuple[int, int]  # (along M, along K blocks), floats
    sfb_strides: tuple[int, int]  # (along N or N blocks, along K blocks)


def gemm_fp8_nt_groupwise(a, b, a_scale, b_scale, scale_major_mode, mma_sm, scale_granularity_mnk, out, out_dtype,
                          backend, output_scale) -> GemmChecked:
    """Validate gemm_fp8_nt_groupwise's arguments. Raises TypeError/ValueError naming the argument."""
    tensor("a", a, ndim=2, dtypes=FP8_DTYPES)
    tensor("b", b, ndim=2, dtypes=FP8_DTYPES)
    m, k = a.shape
    n, kb_ = b.shape
    if kb_ != k:
        raise ValueError(f"a and b must share K: a is {tuple(a.shape)}, b is {tuple(b.shape)}")
    if k == 0 or k % FP8_K_MULTIPLE:
        raise ValueError(f"k (a.shape[1]) must be a positive multiple of {FP8_K_MULTIPLE} (16-byte rows), got {k}")
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
    k_blocks = -(-k // 128)
    sfa = scale_strides("a_scale", a_scale, major, m, k_blocks, "one scale per row and 128-K block")
    n_rows = -(-n // 128) if rec.gn == 128 else n
    sfb = scale_strides("b_scale", b_scale, major, n_rows, k_blocks,
                        "one scale per 128x128 block" if rec.gn == 128 else "one scale per column and 128-K block")
    out_dtypes = OUT_DTYPES
    if output_scale is not None:  # FP8 output: e4m3, the result divided by output_scale
        fp8_output(out, out_dtype, output_scale)
        out_dtype, out_dtypes = torch.float8_e4m3fn, (torch.float8_e4m3fn,)
    if out is not None:
        tensor("out", out, ndim=2, dtypes=out_dtypes)
        shape("out", out, (m, n))
        if out_dtype is not None and out_dtype != out.dtype:
            raise ValueError(f"out_dtype {out_dtype} differs from out.dtype {out.dtype}")
        if m > 0:
            tma_operand("out", out)
        dtype = out.dtype
    else:
        if out_dtype is not None and out_dtype not in out_dtypes:
            raise TypeError(f"out_dtype must be one of {_names(out_dtypes)}, got {out_dtype}")
        dtype = out_dtype or torch.bfloat16
    same_device("a", a.device, b=b, a_scale=a_scale, b_scale=b_scale, out=out, output_scale=output_scale)
    cuda("a", a)
    return GemmChecked(GemmProblem(m, n, k, rec, a.dtype, b.dtype, dtype), sfa, sfb)


# ---- grouped (MoE) GEMMs ----------------------------------------------------------------------

MAX_GROUPS = 1024       # the kernel's group table lives in shared memory (12 bytes per group)
MAX_GROUPED_ROWS = 2**30  # the kernel's saturating prefix sums stay below 2**31


def pair(name: str, value) -> tuple[torch.Tensor, torch.Tensor]:
    """An (fp8 tensor, fp32 scale tensor) tuple."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a tuple (fp8 tensor, fp32 scale tensor), got {type(value).__name__}")
    return value[0], value[1]


def group_info(name: str, t, length: int, device: torch.device, allow_cpu: bool = False) -> torch.Tensor:
    tensor(name, t, ndim=1, dtypes=(torch.int32,))
    shape(name, t, (length,))
    if t.device != device and not (allow_cpu and t.device.type == "cpu"):
        raise ValueError(f"{name} is on {t.device}, expected {device} (same device as input_a[0])")
    if t.stride(0) != 1 and length > 1:
        raise ValueError(f"{name} must be contiguous")
    return t


def _stacked(name: str, t: torch.Tensor, rows: int, rows_name: str, what: str) -> None:
    """A (groups, rows, ...) tensor whose groups follow each other with no gap, so that it can be
    addressed as (groups * rows, ...) rows at one stride."""
    if t.shape[0] > 1 and t.stride(0) != rows * t.stride(1):
        raise ValueError(f"{name}: the experts' {what} must be stacked with no gap "
                         f"(stride(0) == {rows_name} * stride(1))")


def _fp8_operand(name: str, t, ndim: int) -> torch.Tensor:
    return tensor(name, t, ndim=ndim, dtypes=FP8_DTYPES)


def _grouped_common(k: int, n: int, num_groups: int) -> None:
    if k == 0 or k % 128:
        raise ValueError(f"k (hidden size, the last dimension of the operands) must be a positive multiple of 128, "
                         f"got {k}")
    if n == 0 or n % 8:
        raise ValueError(f"n (the weights' output size) must be a positive multiple of 8, got {n}")
    if not 1 <= num_groups <= MAX_GROUPS:
        raise ValueError(f"the number of experts must be in [1, {MAX_GROUPS}], got {num_groups}")


def _expert_weights(b, sfb, rec: Recipe, k: int, k_major: bool = True, name: str = "input_b"):
    """b (E, n, k) fp8 with per-group scales (E, ceil(n/128) or n, k/128, or k/32 with (1,1,32));
    returns (E, n, strides). k_major: b is read in place (else it is copied K-major first)."""
    _fp8_operand(f"{name}[0]", b, 3)
    num_groups, n, kb_ = b.shape
    if kb_ != k:
        raise ValueError(f"{name}[0] must have K = {k} (as input_a) in its last dimension, got shape {tuple(b.shape)}")
    _grouped_common(k, n, num_groups)
    if k_major:
        tma_operand(f"{name}[0]", b)
    if k_major:
        _stacked(f"{name}[0]", b, n, "n", "weights")
    tensor(f"{name}[1]", sfb, ndim=3, dtypes=(torch.float32,))
    rows = -(-n // 128) if rec.gn == 128 else n
    shape(f"{name}[1]", sfb, (num_groups, rows, k // rec.gk),
          "one scale per 128x128 block" if rec.gn == 128 else f"one scale per column and {rec.gk}-K block")
    strides = (sfb.stride(1), sfb.stride(2))
    if num_groups * sfb.stride(0) > INT32_MAX or sfb.data_ptr() % 4:
        raise ValueError(f"{name}[1] must be 4-byte aligned and span less than 2**31 elements")
    return num_groups, n, strides


def _out_dtype_check(out: torch.Tensor) -> None:
    if out.dtype not in OUT_DTYPES:
        raise TypeError(f"out must have dtype in {_names(OUT_DTYPES)}, got {out.dtype}")


@dataclass(frozen=True)
class RaggedMChecked:
    problem: GemmProblem          # m: the rows of A (all experts), group_mode per_token / per_expert / psum_expert
    sfa_strides: tuple[int, int]
    sfb_strides: tuple[int, int]  # within one expert's scales
    major_a: str
    major_b: str
    alignment_m: int              # per_token's segment alignment


def ragged_m(input_a, input_b, info, out, gemm_mode, major_a_mode, major_b_mode, scale_granularity_mnk, num_mp,
             alignment_m, backend) -> RaggedMChecked:
    """Validate ragged_m_moe_gemm_8bit's arguments."""
    a, sfa = pair("input_a", input_a)
    b, sfb = pair("input_b", input_b)
    mode = choice("gemm_mode", gemm_mode, ("per_token", "per_expert", "psum_expert"), "per_token")
    major_a = choice("major_a_mode", major_a_mode, ("K", "M"), "K")
    major_b = choice("major_b_mode", major_b_mode, ("K", "N"), "K")
    choice("backend", backend, ("auto", "sm90"), "auto")
    rec = recipe(scale_granularity_mnk, (RECIPE_1x128_128x128, RECIPE_1x128_1x128, RECIPE_1x32_1x32),
                 RECIPE_1x128_128x128)
    if alignment_m is not None and alignment_m not in (128, 256):
        raise ValueError(f"alignment_m must be 128 or 256, got {alignment_m!r}")
    _fp8_operand("input_a[0]", a, 2)
    rows, k = a.shape
    if rows >= MAX_GROUPED_ROWS:
        raise ValueError(f"input_a[0] must have fewer than 2**30 rows, got {rows}")
    if major_a == "K":
        tma_operand("input_a[0]", a)
    num_groups, n, sfb_strides = _expert_weights(b, sfb, rec, k, k_major=major_b == "K")
    sfa_strides = scale_strides("input_a[1]", sfa, "K", rows, k // rec.gk, f"one scale per row and {rec.gk}-K block")
    group_info("ragged_tokens_info", info, rows if mode == "per_token" else num_groups, a.device)
    tensor("out", out, ndim=2)
    _out_dtype_check(out)
    shape("out", out, (rows, n))
    tma_operand("out", out)
    _num_mp(num_mp)
    same_device("input_a[0]", a.device, **{"input_a[1]": sfa, "input_b[0]": b, "input_b[1]": sfb}, out=out)
    cuda("input_a[0]", a)
    problem = GemmProblem(rows, n, k, rec, a.dtype, b.dtype, out.dtype, mode, num_groups)
    return RaggedMChecked(problem, sfa_strides, sfb_strides, major_a, major_b, alignment_m or 128)


@dataclass(frozen=True)
class MaskedChecked:
    problem: GemmProblem          # m: experts x max_m rows, group_mode masked
    max_m: int                    # rows per expert
    sfa_strides: tuple[int, int]  # the rows of all experts at one stride
    sfb_strides: tuple[int, int]


def masked(input_a, input_b, info, out, scale_granularity_mnk, expect_tokens, enable_overlap, signal,
           backend) -> MaskedChecked:
    """Validate masked_moe_gemm_8bit's arguments."""
    a, sfa = pair("input_a", input_a)
    b, sfb = pair("input_b", input_b)
    choice("backend", backend, ("auto", "sm90"), "auto")
    rec = recipe(scale_granularity_mnk, (RECIPE_1x128_128x128, RECIPE_1x128_1x128), RECIPE_1x128_128x128)
    _fp8_operand("input_a[0]", a, 3)
    groups_a, max_m, k = a.shape
    num_groups, n, sfb_strides = _expert_weights(b, sfb, rec, k)
    if groups_a != num_groups:
        raise ValueError(f"input_a[0] has {groups_a} experts, input_b[0] has {num_groups}")
    if groups_a * max_m >= MAX_GROUPED_ROWS:
        raise ValueError(f"input_a[0] must have fewer than 2**30 rows in all, got {groups_a} x {max_m}")
    tma_operand("input_a[0]", a)
    _stacked("input_a[0]", a, max_m, "max_m", "rows")
    tensor("input_a[1]", sfa, ndim=3, dtypes=(torch.float32,))
    shape("input_a[1]", sfa, (num_groups, max_m, k // 128), "one scale per row and 128-K block")
    _stacked("input_a[1]", sfa, max_m, "max_m", "scales")
    sfa_strides = (sfa.stride(1), sfa.stride(2))  # rows of all experts at one stride (checked above)
    if num_groups * max_m * abs(sfa_strides[0]) + k // 128 * abs(sfa_strides[1]) > INT32_MAX or sfa.data_ptr() % 4:
        raise ValueError("input_a[1] must be 4-byte aligned and span less than 2**31 elements")
    group_info("masked_tokens_info", info, num_groups, a.device)
    if out is not None:
        tensor("out", out, ndim=3)
        _out_dtype_check(out)
        shape("out", out, (num_groups, max_m, n))
        tma_operand("out", out)
        _stacked("out", out, max_m, "max_m", "rows")
    if expect_tokens is not None and (not isinstance(expect_tokens, int) or isinstance(expect_tokens, bool)
                                      or expect_tokens < 0):
        raise ValueError(f"expect_tokens must be a non-negative int (a host-side hint), got {expect_tokens!r}")
    if not isinstance(enable_overlap, bool):
        raise TypeError(f"enable_overlap must be a bool, got {type(enable_overlap).__name__}")
    blocks = num_groups * -(-max_m // 64)
    if signal is not None:
        if not enable_overlap:
            raise ValueError("signal is used only with enable_overlap=True")
        tensor("signal", signal, ndim=1, dtypes=(torch.int32,))
        shape("signal", signal, (blocks,), "one counter per expert and 64-row block: E * ceil(max_m / 64)")
        if not signal.is_contiguous():
            raise ValueError("signal must be contiguous")
    same_device("input_a[0]", a.device, **{"input_a[1]": sfa, "input_b[0]": b, "input_b[1]": sfb}, out=out,
                signal=signal)
    cuda("input_a[0]", a)
    dtype = out.dtype if out is not None else torch.bfloat16
    problem = GemmProblem(num_groups * max_m, n, k, rec, a.dtype, b.dtype, dtype, "masked", num_groups)
    return MaskedChecked(problem, max_m, sfa_strides, sfb_strides)


@dataclass(frozen=True)
class RaggedKChecked:
    problem: GemmProblem          # k: the sum of the experts' K, group_mode ragged_k, fp32 out
    major_a: str
    major_b: str
    sfa_strides: tuple[int, int]
    sfb_strides: tuple[int, int]


def ragged_k(input_a, input_b, info, out, gemm_mode, major_a_mode, major_b_mode, scale_granularity_mnk,
             num_mp) -> RaggedKChecked:
    """Validate ragged_k_moe_gemm_8bit's arguments."""
    a, sfa = pair("input_a", input_a)
    b, sfb = pair("input_b", input_b)
    choice("gemm_mode", gemm_mode, ("per_expert",), "per_expert")
    major_a = choice("major_a_mode", major_a_mode, ("M", "K"), "M")
    major_b = choice("major_b_mode", major_b_mode, ("N", "K"), "N")
    rec = recipe(scale_granularity_mnk, (RECIPE_1x128_1x128,), RECIPE_1x128_1x128)
    _fp8_operand("input_a[0]", a, 2)
    _fp8_operand("input_b[0]", b, 2)
    sum_k, m = a.shape
    sum_k_b, n = b.shape
    if sum_k_b != sum_k:
        raise ValueError(f"input_a[0] and input_b[0] must share sum_k (dimension 0): {tuple(a.shape)} vs "
                         f"{tuple(b.shape)}")
    if sum_k % 128:
        raise ValueError(f"sum_k (input_a[0].shape[0]) must be a multiple of 128, got {sum_k}")
    if sum_k >= MAX_GROUPED_ROWS or m > INT32_MAX:
        raise ValueError(f"sum_k must be below 2**30, got {sum_k}")
    if m == 0 or n == 0 or n % 8:
        raise ValueError(f"m must be positive and n a positive multiple of 8, got m={m}, n={n}")
    for name, t, major in (("input_a[0]", a, major_a), ("input_b[0]", b, major_b)):
        if major == "K":  # the (rows, sum_k) K-major operand, given as its transpose's view
            tma_operand(f"{name}.t() (major mode 'K')", t.t())
    tensor("out", out, ndim=3, dtypes=(torch.float32,))
    num_groups = out.shape[0]
    shape("out", out, (num_groups, m, n), "(num_experts, m, n)")
    if not 1 <= num_groups <= MAX_GROUPS:
        raise ValueError(f"out.shape[0] (experts) must be in [1, {MAX_GROUPS}], got {num_groups}")
    tma_operand("out", out)
    if out.stride(0) * 4 % 16:
        raise ValueError(f"out.stride(0) must be a multiple of 4 elements (16 bytes), got {out.stride(0)}")
    sfa_strides = scale_strides("input_a[1]", sfa, "MN", m, sum_k // 128, "one scale per 128-K block and row")
    sfb_strides = scale_strides("input_b[1]", sfb, "MN", n, sum_k // 128, "one scale per 128-K block and column")
    group_info("ragged_tokens_info", info, num_groups, a.device, allow_cpu=True)
    if info.device.type == "cpu":  # checkable without a device sync
        ragged_k_host_counts(info, sum_k)
    _num_mp(num_mp)
    same_device("input_a[0]", a.device, **{"input_a[1]": sfa, "input_b[0]": b, "input_b[1]": sfb}, out=out)
    cuda("input_a[0]", a)
    problem = GemmProblem(m, n, sum_k, rec, a.dtype, b.dtype, torch.float32, "ragged_k", num_groups)
    return RaggedKChecked(problem, major_a, major_b, sfa_strides, sfb_strides)


def _num_mp(num_mp) -> None:
    if num_mp is not None and (not isinstance(num_mp, int) or isinstance(num_mp, bool) or num_mp < 1):
        raise ValueError(f"num_mp must be None or a positive int, got {num_mp!r}")


def ragged_k_host_counts(info: torch.Tensor, sum_k: int) -> None:
    """Counts held on the host: each a non-negative multiple of 128, together at most sum_k."""
    counts = info.tolist()
    bad = [c for c in counts if c < 0 or c % 128]
    if bad:
        raise ValueError(f"ragged_tokens_info: every expert's token count must be a non-negative multiple of 128, "
                         f"got {bad[0]}")
    if sum(counts) > sum_k:
        raise ValueError(f"ragged_tokens_info sums to {sum(counts)} tokens, more than sum_k = {sum_k}")


# ---- batched FP8 GEMM ---------------------------------------------------------------------------

BMM_OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn)


@dataclass(frozen=True)
class BmmChecked:
    problem: GemmProblem          # as called (group_mode "batched"): the recipe given, the output dtype asked for
    add_c: bool                   # a `c` to add to the product
    sfa_strides: tuple            # (along M, along K blocks, between batch entries), floats; 0: broadcast
    sfb_strides: tuple            # (along N or N blocks, along K blocks, between batch entries)
    major_a: str
    major_b: str
    a_in_place: bool              # A given K-major and TMA-readable as it is (tma_rows)
    b_in_place: bool
    out_shape: tuple


def _batched_dims(batch: int, m: int, n: int, k: int, k_multiple: int, k_why: str) -> None:
    """K a positive multiple of k_multiple, n of 8, and the stacked rows of the batch below 2**30."""
    if k == 0 or k % k_multiple:
        raise ValueError(f"k must be a positive multiple of {k_multiple}{k_why}, got {k}")
    if n == 0 or n % 8:
        raise ValueError(f"n must be a positive multiple of 8, got {n}")
    if batch * max(m, n) >= MAX_GROUPED_ROWS:
        raise ValueError(f"batch x m and batch x n must stay below 2**30, got batch={batch}, m={m}, n={n}")


def _batched_out_and_c(out, out_dtype, c, out_shape: tuple) -> None:
    """A given `out` (batch, m, n) of out_dtype a 3-D TMA can store; `c` fp32 of the same shape."""
    if out is not None:
        tensor("out", out, ndim=3)
        if out.dtype != out_dtype:
            raise TypeError(f"out.dtype {out.dtype} differs from out_dtype {out_dtype}")
        shape("out", out, out_shape)
        tma_operand("out", out)
        if out_shape[0] > 1 and (out.stride(0) * out.element_size()) % 16:
            raise ValueError(f"out.stride(0) must be a multiple of 16 bytes, got {out.stride(0)} elements")
    if c is not None:
        tensor("c", c, ndim=3, dtypes=(torch.float32,))
        shape("c", c, out_shape, "fp32, added to the product")


def tma_rows(t: torch.Tensor) -> bool:
    """(rows, cols) or (groups, rows, cols) readable in place by TMA as rows of one stride: unit
    column stride, 16-byte rows that do not overlap, a 16-byte base, groups stacked row after row."""
    rows = t.shape[-2]
    return (t.stride(-1) == 1
            and (rows <= 1 or (t.stride(-2) * t.element_size()) % 16 == 0 and t.stride(-2) >= t.shape[-1])
            and (t.dim() == 2 or t.shape[0] <= 1 or t.stride(0) == rows * t.stride(-2)) and t.data_ptr() % 16 == 0)


def _per_tensor_scale(name: str, t, batch: int) -> tuple[int, int, int]:
    tensor(name, t, dtypes=(torch.float32,))
    if t.numel() == 1 and t.dim() <= 1:
        return 0, 0, 0
    if t.dim() == 1 and t.shape[0] == batch:
        return 0, 0, t.stride(0)
    raise ValueError(f"{name} must hold one fp32 scale (shape () or (1,)) or one per batch entry (shape ({batch},)) "
                     f"for a per-tensor recipe, got shape {tuple(t.shape)}")


def bmm_fp8(a, b, a_scale, b_scale, out_dtype, out, backend, scale_granularity_mnk, output_scale, c, major_a_mode,
            major_b_mode) -> BmmChecked:
    """Validate bmm_fp8's arguments."""
    major_a = choice("major_a_mode", major_a_mode, ("K", "M"), "K")
    major_b = choice("major_b_mode", major_b_mode, ("K", "N"), "K")
    choice("backend", backend, ("auto", "sm90"), "auto")
    rec = recipe(scale_granularity_mnk, (RECIPE_PER_TENSOR, RECIPE_PER_ROW, RECIPE_1x128_128x128, RECIPE_1x128_1x128),
                 RECIPE_PER_TENSOR)
    tensor("a", a, ndim=3, dtypes=FP8_DTYPES)
    tensor("b", b, ndim=3, dtypes=FP8_DTYPES)
    if a.stride(2) != 1 and a.shape[2] > 1:
        raise ValueError(f"a: its declared major dimension (the last, major_a_mode={major_a!r}) must have stride 1, "
                         f"got strides {a.stride()}")
    if b.stride(2) != 1 and b.shape[2] > 1:
        raise ValueError(f"b: its declared major dimension (the last, major_b_mode={major_b!r}) must have stride 1, "
                         f"got strides {b.stride()}")
    batch, m, k = a.shape if major_a == "K" else (a.shape[0], a.shape[2], a.shape[1])
    batch_b, n, k_b = b.shape if major_b == "K" else (b.shape[0], b.shape[2], b.shape[1])
    if batch_b != batch or k_b != k:
        raise ValueError(f"a and b must share batch and K: a is {tuple(a.shape)} (major {major_a!r}), b is "
                         f"{tuple(b.shape)} (major {major_b!r})")
    k_major = major_a == "K" and major_b == "K"
    _batched_dims(batch, m, n, k, FP8_K_MULTIPLE if k_major else 128,
                  " (16-byte rows)" if k_major else " with an MN-major operand")
    k_blocks = -(-k // 128)
    if rec in (RECIPE_PER_TENSOR, RECIPE_PER_ROW):
        if rec == RECIPE_PER_ROW:
            tensor("a_scale", a_scale, ndim=2, dtypes=(torch.float32,))
            shape("a_scale", a_scale, (batch, m), "one scale per row of A for recipe (1,-1,-1)")
            sfa = (a_scale.stride(1), 0, a_scale.stride(0))
        else:
            sfa = _per_tensor_scale("a_scale", a_scale, batch)
        sfb = _per_tensor_scale("b_scale", b_scale, batch)
    else:
        tensor("a_scale", a_scale, ndim=3, dtypes=(torch.float32,))
        shape("a_scale", a_scale, (batch, m, k_blocks), "one scale per row and 128-K block")
        rows_b = -(-n // 128) if rec.gn == 128 else n
        tensor("b_scale", b_scale, ndim=3, dtypes=(torch.float32,))
        shape("b_scale", b_scale, (batch, rows_b, k_blocks),
              "one scale per 128x128 block" if rec.gn == 128 else "one scale per column and 128-K block")
        sfa = (a_scale.stride(1), a_scale.stride(2), a_scale.stride(0))
        sfb = (b_scale.stride(1), b_scale.stride(2), b_scale.stride(0))
    for name, t in (("a_scale", a_scale), ("b_scale", b_scale)):
        if t.data_ptr() % 4 or t.numel() * 4 >= 2**33:
            raise ValueError(f"{name} must be 4-byte aligned and below 2**31 elements")
    if out_dtype not in BMM_OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of {_names(BMM_OUT_DTYPES)}, got {out_dtype}")
    if (out_dtype == torch.float8_e4m3fn) != (output_scale is not None):
        raise ValueError("an FP8 output needs output_scale, and output_scale needs out_dtype=torch.float8_e4m3fn")
    if output_scale is not None:
        tensor("output_scale", output_scale, dtypes=(torch.float32,))
        if output_scale.numel() != 1:
            raise ValueError(f"output_scale must hold one fp32 element, got shape {tuple(output_scale.shape)}")
    out_shape = (batch, m, n)
    _batched_out_and_c(out, out_dtype, c, out_shape)
    same_device("a", a.device, b=b, a_scale=a_scale, b_scale=b_scale, out=out, c=c, output_scale=output_scale)
    cuda("a", a)
    problem = GemmProblem(m, n, k, rec, a.dtype, b.dtype, out_dtype, "batched", batch)
    return BmmChecked(problem, c is not None, sfa, sfb, major_a, major_b, major_a == "K" and tma_rows(a),
                      major_b == "K" and tma_rows(b), out_shape)


HALF_DTYPES = (torch.float16, torch.bfloat16)


def bmm_fp16(a, b, out_dtype, out, backend, c) -> BmmChecked:
    """Validate bmm_fp16's arguments: a (batch, m, k), b (batch, n, k), fp16 or bf16 alike."""
    choice("backend", backend, ("auto", "sm90"), "auto")
    tensor("a", a, ndim=3, dtypes=HALF_DTYPES)
    tensor("b", b, ndim=3, dtypes=HALF_DTYPES)
    if b.dtype != a.dtype:
        raise TypeError(f"a and b must have the same dtype, got {a.dtype} and {b.dtype}")
    batch, m, k = a.shape
    batch_b, n, k_b = b.shape
    if batch_b != batch or k_b != k:
        raise ValueError(f"a (batch, m, k) and b (batch, n, k) must share batch and K: {tuple(a.shape)} vs "
                         f"{tuple(b.shape)}")
    _batched_dims(batch, m, n, k, 8, " (16-byte rows)")
    if out_dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"out_dtype must be one of (torch.bfloat16, torch.float16, torch.float32), got {out_dtype}")
    out_shape = (batch, m, n)
    _batched_out_and_c(out, out_dtype, c, out_shape)
    same_device("a", a.device, b=b, out=out, c=c)
    cuda("a", a)
    problem = GemmProblem(m, n, k, RECIPE_PER_ROW, a.dtype, b.dtype, out_dtype, "batched", batch)
    return BmmChecked(problem, c is not None, (0, 0, 0), (0, 0, 0), "K", "K", tma_rows(a), tma_rows(b), out_shape)


@dataclass(frozen=True)
class Grouped16Checked:
    problem: GemmProblem  # 16-bit operands, no scales (the scale-at-end kernel)
    max_m: int            # masked: rows per group (0 otherwise)


GROUPED_16BIT_MODES = ("per_token", "masked", "ragged_k")


def grouped_16bit(a, b, info, out, mode) -> Grouped16Checked:
    """Validate a 16-bit grouped GEMM (mategemm.moe.grouped_gemm_16bit): bf16 or fp16 a and b alike,
    K-major, with
      per_token: a (rows, k), b (E, n, k), info int32 (rows,) group per row (-1: skipped), out (rows, n);
      masked:    a (E, max_m, k), b (E, n, k), info int32 (E,) rows per group, out (E, max_m, n);
      ragged_k:  a (m, sum_k) and b (n, sum_k) (views, K-major rows), info int32 (E,) K per group
                 (multiples of 64; on the host: checked), out float32 (E, m, n), added into.
    M modes' out: bf16 or fp16. k: a positive multiple of 8 (16-byte rows; a tail is zero-filled)."""
    choice("mode", mode, GROUPED_16BIT_MODES)
    tensor("a", a, dtypes=HALF_DTYPES)
    tensor("b", b, dtypes=HALF_DTYPES)
    if b.dtype != a.dtype:
        raise TypeError(f"a and b must have the same dtype, got {a.dtype} and {b.dtype}")
    max_m = 0
    if mode == "ragged_k":
        tensor("a", a, ndim=2)
        tensor("b", b, ndim=2)
        (m, k), (n, k_b) = a.shape, b.shape
        if k_b != k:
            raise ValueError(f"a (m, sum_k) and b (n, sum_k) must share sum_k: {tuple(a.shape)} vs {tuple(b.shape)}")
        if k % 64 or k >= MAX_GROUPED_ROWS:
            raise ValueError(f"sum_k must be a multiple of 64 below 2**30, got {k}")
        tensor("out", out, ndim=3, dtypes=(torch.float32,))
        num_groups = out.shape[0]
        shape("out", out, (num_groups, m, n), "(groups, m, n)")
        if out.stride(0) * 4 % 16:
            raise ValueError(f"out.stride(0) must be a multiple of 4 elements (16 bytes), got {out.stride(0)}")
        group_info("info", info, num_groups, a.device, allow_cpu=True)
        if info.device.type == "cpu":
            counts = info.tolist()
            if any(c < 0 or c % 64 for c in counts) or sum(counts) > k:
                raise ValueError(f"info: every group's K must be a non-negative multiple of 64, together at most "
                                 f"sum_k = {k}, got {counts}")
        rows, out_dtype = m, torch.float32
    else:
        tensor("b", b, ndim=3)
        num_groups, n, k_b = b.shape
        if mode == "masked":
            tensor("a", a, ndim=3)
            groups_a, max_m, k = a.shape
            if groups_a != num_groups:
                raise ValueError(f"a has {groups_a} groups, b has {num_groups}")
            _stacked("a", a, max_m, "max_m", "rows")
            rows, out_shape = num_groups * max_m, (num_groups, max_m, n)
            group_info("info", info, num_groups, a.device)
        else:
            tensor("a", a, ndim=2)
            rows, k = a.shape
            out_shape = (rows, n)
            group_info("info", info, rows, a.device)
        if k_b != k:
            raise ValueError(f"b must have K = {k} (as a) in its last dimension, got shape {tuple(b.shape)}")
        if rows >= MAX_GROUPED_ROWS:
            raise ValueError(f"a must have fewer than 2**30 rows, got {rows}")
        tensor("out", out, ndim=len(out_shape), dtypes=HALF_DTYPES)
        shape("out", out, out_shape)
        if mode == "masked":
            _stacked("out", out, max_m, "max_m", "rows")
        out_dtype = out.dtype
    if k == 0 or k % 8:
        raise ValueError(f"k must be a positive multiple of 8 (16-byte rows), got {k}")
    if n == 0 or n % 8:
        raise ValueError(f"n must be a positive multiple of 8, got {n}")
    if not 1 <= num_groups <= MAX_GROUPS:
        raise ValueError(f"the number of groups must be in [1, {MAX_GROUPS}], got {num_groups}")
    tma_operand("a", a)
    tma_operand("b", b)
    if mode != "ragged_k":
        _stacked("b", b, n, "n", "weights")
    tma_operand("out", out)
    same_device("a", a.device, b=b, out=out)
    cuda("a", a)
    problem = GemmProblem(rows, n, k, RECIPE_PER_ROW, a.dtype, b.dtype, out_dtype, mode, num_groups)
    return Grouped16Checked(problem, max_m)


MQA_FP8 = (torch.float8_e4m3fn,)
MAX_MPS = 1 << 16  # schedule rows: one per CTA of the persistent grid


# ---- the lightning indexer ---------------------------------------------------------------------
def _contiguous(name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous, got strides {t.stride()}")
    if t.data_ptr() % 16:
        raise ValueError(f"{name} data pointer must be 16-byte aligned")


def _int32_lens(context_lens) -> None:
    if not isinstance(context_lens, torch.Tensor):
        raise TypeError(f"context_lens must be a torch.Tensor, got {type(context_lens).__name__}")
    if context_lens.dtype != torch.int32:
        raise TypeError(f"context_lens must be int32, got {context_lens.dtype}")
    if context_lens.dim() not in (1, 2) or context_lens.shape[0] == 0:
        raise ValueError(f"context_lens must be (batch,) or (batch, next_n) with batch >= 1, got shape "
                         f"{tuple(context_lens.shape)}")
    if not context_lens.is_contiguous():
        raise ValueError(f"context_lens must be contiguous, got strides {context_lens.stride()}")


def _heads(name: str, heads: int, rows: int, dim: int, paged: bool) -> None:
    if paged and dim != mqa.INDEX_DIM:
        raise ValueError(f"{name}: index_dim must be {mqa.INDEX_DIM} in the paged form (its fused cache's layout), "
                         f"got {dim}")
    if dim not in mqa.HEAD_DIMS:
        raise ValueError(f"{name}: head_dim (the last dimension) must be one of {mqa.HEAD_DIMS}, got {dim}")
    if heads % mqa.HEADS_MULTIPLE or heads == 0 or rows * heads > mqa.MAX_TILE_HEADS:
        raise ValueError(f"{name}: heads must be a positive multiple of {mqa.HEADS_MULTIPLE} with next_n x heads <= "
                         f"{mqa.MAX_TILE_HEADS}, got heads={heads}, next_n={rows}")


def _logits_dtype(logits_dtype) -> None:
    if not isinstance(logits_dtype, torch.dtype) or logits_dtype not in mqa.LOGIT_TYPES:
        raise TypeError(f"logits_dtype must be one of {_names(mqa.LOGIT_TYPES)}, got {logits_dtype!r}")


@dataclass(frozen=True)
class PagedChecked:
    batch: int
    next_n: int
    heads: int


@dataclass(frozen=True)
class PrefillChecked:
    seq_len: int
    heads: int
    seq_len_kv: int


def paged_mqa_metadata(context_lens, block_kv, num_mps) -> None:
    """Validate get_paged_mqa_logits_metadata's arguments."""
    _int32_lens(context_lens)
    if block_kv != mqa.KV_BLOCK:
        raise ValueError(f"block_kv must be {mqa.KV_BLOCK}, got {block_kv!r}")
    if not isinstance(num_mps, int) or isinstance(num_mps, bool) or not 0 <= num_mps <= MAX_MPS:
        raise ValueError(f"num_mps must be an int in [0, {MAX_MPS}], got {num_mps!r}")
    if num_mps == 0 and not context_lens.is_cuda:
        raise ValueError("num_mps=0 (all SMs) needs context_lens on a CUDA device")


def paged_mqa_logits(q, cache, weights, context_lens, block_table, schedule_meta, max_context_len,
                     clean_logits, logits_dtype) -> PagedChecked:
    """Validate fp8_paged_mqa_logits's arguments."""
    tensor("q", q, 4, MQA_FP8)
    batch, next_n, heads, dim = q.shape
    if not 1 <= next_n <= mqa.MAX_NEXT_N:
        raise ValueError(f"q: next_n (dimension 1) must be in [1, {mqa.MAX_NEXT_N}], got {next_n}")
    _heads("q", heads, next_n, dim, paged=True)
    _contiguous("q", q)
    tensor("fused_kv_cache", cache, 4, (torch.uint8,) + MQA_FP8)
    if tuple(cache.shape[1:]) != (mqa.KV_BLOCK, 1, dim + 4):
        raise ValueError(f"fused_kv_cache must have shape (num_blocks, {mqa.KV_BLOCK}, 1, {dim + 4}), got "
                         f"{tuple(cache.shape)}")
    _contiguous("fused_kv_cache", cache)
    tensor("weights", weights, 2, (torch.float32,))
    if tuple(weights.shape) != (batch * next_n, heads):
        raise ValueError(f"weights must have shape (batch * next_n, heads) = {(batch * next_n, heads)}, got "
                         f"{tuple(weights.shape)}")
    _contiguous("weights", weights)
    _int32_lens(context_lens)
    expected = (batch,) if context_lens.dim() == 1 else (batch, next_n)
    if tuple(context_lens.shape) != expected:
        raise ValueError(f"context_lens must have shape {expected}, got {tuple(context_lens.shape)}")
    tensor("block_table", block_table, 2, (torch.int32,))
    if block_table.shape[0] != batch or block_table.stride(1) != 1:
        raise ValueError(f"block_table must be (batch={batch}, max_blocks) int32 with unit column stride, got shape "
                         f"{tuple(block_table.shape)}, strides {block_table.stride()}")
    tensor("schedule_meta", schedule_meta, 2, (torch.int32,))
    if schedule_meta.shape[0] < 2 or schedule_meta.shape[1] != 2 or not schedule_meta.is_contiguous():
        raise ValueError(f"schedule_meta must be (num_mps + 1, 2) int32 from get_paged_mqa_logits_metadata, got "
                         f"shape {tuple(schedule_meta.shape)}")
    if not isinstance(max_context_len, int) or isinstance(max_context_len, bool) or not 0 < max_context_len < 2**31:
        raise ValueError(f"max_context_len must be a positive int, got {max_context_len!r}")
    if not isinstance(clean_logits, bool):
        raise TypeError(f"clean_logits must be a bool, got {type(clean_logits).__name__}")
    _logits_dtype(logits_dtype)
    cuda("q", q)
    same_device("q", q.device, fused_kv_cache=cache, weights=weights, context_lens=context_lens,
                         block_table=block_table, schedule_meta=schedule_meta)
    return PagedChecked(batch, next_n, heads)


def mqa_logits(q, kv, weights, ks, ke, clean_logits, max_seqlen_k, logits_dtype) -> PrefillChecked:
    """Validate fp8_mqa_logits's arguments."""
    tensor("q", q, 3, MQA_FP8)
    seq_len, heads, dim = q.shape
    _heads("q", heads, max(1, 128 // max(heads, 1)), dim, paged=False)
    _contiguous("q", q)
    if not isinstance(kv, (tuple, list)) or len(kv) != 2:
        raise TypeError("kv must be a pair (k (seq_len_kv, head_dim) FP8, k_scale (seq_len_kv,) fp32)")
    k, k_scale = kv
    tensor("kv[0]", k, 2, MQA_FP8)
    if k.shape[1] != dim:
        raise ValueError(f"kv[0] must be (seq_len_kv, {dim}), got {tuple(k.shape)}")
    _contiguous("kv[0]", k)
    tensor("kv[1]", k_scale, 1, (torch.float32,))
    if k_scale.shape[0] != k.shape[0]:
        raise ValueError(f"kv[1] must hold one scale per key: shape ({k.shape[0]},), got {tuple(k_scale.shape)}")
    _contiguous("kv[1]", k_scale)
    tensor("weights", weights, 2, (torch.float32,))
    if tuple(weights.shape) != (seq_len, heads):
        raise ValueError(f"weights must have shape (seq_len, heads) = {(seq_len, heads)}, got {tuple(weights.shape)}")
    _contiguous("weights", weights)
    for name, t in (("cu_seq_len_k_start", ks), ("cu_seq_len_k_end", ke)):
        tensor(name, t, 1, (torch.int32,))
        if t.shape[0] != seq_len or not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous ({seq_len},) int32, got shape {tuple(t.shape)}")
    if not isinstance(clean_logits, bool):
        raise TypeError(f"clean_logits must be a bool, got {type(clean_logits).__name__}")
    if not isinstance(max_seqlen_k, int) or isinstance(max_seqlen_k, bool) or not 0 <= max_seqlen_k < 2**31:
        raise ValueError(f"max_seqlen_k must be a non-negative int, got {max_seqlen_k!r}")
    _logits_dtype(logits_dtype)
    if k.shape[0] >= 2**31:
        raise ValueError(f"kv[0] must have fewer than 2**31 keys, got {k.shape[0]}")
    cuda("q", q)
    same_device("q", q.device, **{"kv[0]": k, "kv[1]": k_scale, "weights": weights,
                                           "cu_seq_len_k_start": ks, "cu_seq_len_k_end": ke})
    return PrefillChecked(seq_len, heads, k.shape[0])


# ---- the fused MoE layer -----------------------------------------------------------------------
MOE_ACTIVATIONS = ("silu", "swigluoai", "swiglustep")
E4M3 = torch.float8_e4m3fn


@dataclass(frozen=True)
class FusedMoeChecked:
    tokens: int            # M
    hidden: int            # K: hidden_states' columns, w2's rows
    intermediate: int      # N: w1 has 2N rows (gate, then up), w2 N columns
    experts: int           # E, local
    topk: int
    input_fp8: bool        # hidden_states given FP8 with hidden_states_scale
    activation: str
    global_experts: int    # ids range over [0, global_experts)
    ids_64bit: bool        # topk_ids int64 (else int32)


def _float_or_none(name: str, value, positive: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise TypeError(f"{name} must be a float or None, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


def moe_weights(w1, w2, w1_scale, w2_scale, hidden: int | None = None) -> tuple[int, int]:
    """A MoE layer's expert weights: w1 (E, 2N, K) and w2 (E, K, N) e4m3 with fp32 scales per 128x128
    block; K = hidden when given, else w1's. Returns (E, N)."""
    tensor("w1", w1, ndim=3, dtypes=(E4M3,))
    experts, two_n, k1 = w1.shape
    if hidden is None:
        hidden = k1
    if k1 != hidden or hidden == 0 or hidden % 128 or two_n % 256 or two_n == 0:
        raise ValueError(f"w1 must be (E, 2N, K) with K = {hidden}, K and N positive multiples of 128, got "
                         f"{tuple(w1.shape)}")
    intermediate = two_n // 2
    if not 1 <= experts <= MAX_GROUPS:
        raise ValueError(f"w1: the number of experts must be in [1, {MAX_GROUPS}], got {experts}")
    tensor("w2", w2, ndim=3, dtypes=(E4M3,))
    shape("w2", w2, (experts, hidden, intermediate), "(E, K, N)")
    tensor("w1_scale", w1_scale, ndim=3, dtypes=(torch.float32,))
    shape("w1_scale", w1_scale, (experts, two_n // 128, hidden // 128), "one scale per 128x128 block")
    tensor("w2_scale", w2_scale, ndim=3, dtypes=(torch.float32,))
    shape("w2_scale", w2_scale, (experts, hidden // 128, intermediate // 128), "one scale per 128x128 block")
    return experts, intermediate


def moe_activation(activation, gemm1_alpha, gemm1_beta, gemm1_clamp_limit) -> str:
    """The gated activation's name (None: "silu") and its options: alpha and beta for swigluoai only,
    a positive clamp limit."""
    activation = choice("activation", activation, MOE_ACTIVATIONS, "silu")
    if activation != "swigluoai" and (gemm1_alpha is not None or gemm1_beta is not None):
        raise ValueError(f"gemm1_alpha and gemm1_beta apply to activation 'swigluoai' only, got activation "
                         f"{activation!r}")
    _float_or_none("gemm1_alpha", gemm1_alpha)
    _float_or_none("gemm1_beta", gemm1_beta)
    _float_or_none("gemm1_clamp_limit", gemm1_clamp_limit, positive=True)
    return activation


def fused_moe(hidden_states, w1, w2, w1_scale, w2_scale, topk_weights, topk_ids, activation, gemm1_alpha, gemm1_beta,
              gemm1_clamp_limit, expert_map, global_num_experts, apply_router_weight_on_input, hidden_states_scale,
              out) -> FusedMoeChecked:
    """Validate fused_moe's arguments."""
    tensor("hidden_states", hidden_states, ndim=2, dtypes=(torch.bfloat16, E4M3))
    tokens, hidden = hidden_states.shape
    if hidden == 0 or hidden % 128:
        raise ValueError(f"hidden_states: K (its columns) must be a positive multiple of 128, got {hidden}")
    tma_operand("hidden_states", hidden_states)
    input_fp8 = hidden_states.dtype == E4M3
    if input_fp8:
        if hidden_states_scale is None:
            raise ValueError("hidden_states in FP8 needs hidden_states_scale (M, K/128) fp32")
        tensor("hidden_states_scale", hidden_states_scale, ndim=2, dtypes=(torch.float32,))
        shape("hidden_states_scale", hidden_states_scale, (tokens, hidden // 128),
              "one scale per token and 128 columns")
        if hidden_states_scale.stride(1) != 1:
            raise ValueError("hidden_states_scale must be contiguous along its last dimension")
    elif hidden_states_scale is not None:
        raise ValueError("hidden_states_scale goes with FP8 hidden_states only (bf16 is quantised inside)")
    experts, intermediate = moe_weights(w1, w2, w1_scale, w2_scale, hidden)
    for name, w in (("w1", w1), ("w2", w2)):  # read in place by TMA: K-major rows, experts stacked
        tma_operand(name, w)
        _stacked(name, w, w.shape[1], "rows", "weights")
    tensor("topk_ids", topk_ids, ndim=2, dtypes=(torch.int32, torch.int64))
    topk = topk_ids.shape[1]
    if topk_ids.shape[0] != tokens or topk == 0:
        raise ValueError(f"topk_ids must be (M={tokens}, topk) with topk >= 1, got {tuple(topk_ids.shape)}")
    if not topk_ids.is_contiguous():
        raise ValueError("topk_ids must be contiguous")
    tensor("topk_weights", topk_weights, ndim=2, dtypes=(torch.float32,))
    shape("topk_weights", topk_weights, (tokens, topk), "one weight per token and slot")
    if not topk_weights.is_contiguous():
        raise ValueError("topk_weights must be contiguous")
    activation = moe_activation(activation, gemm1_alpha, gemm1_beta, gemm1_clamp_limit)
    if not isinstance(apply_router_weight_on_input, bool):
        raise TypeError(f"apply_router_weight_on_input must be a bool, got {apply_router_weight_on_input!r}")
    if apply_router_weight_on_input and topk != 1:
        raise ValueError(f"apply_router_weight_on_input needs topk == 1 (the weight scales the token's one copy), "
                         f"got topk {topk}")
    if isinstance(global_num_experts, bool) or not isinstance(global_num_experts, int):
        raise TypeError(f"global_num_experts must be an int, got {global_num_experts!r}")
    if expert_map is None:
        if global_num_experts not in (-1, experts):
            raise ValueError(f"global_num_experts {global_num_experts} differs from the {experts} local experts of "
                             f"w1; pass expert_map to run a slice of the experts")
        global_experts = experts
    else:
        tensor("expert_map", expert_map, ndim=1, dtypes=(torch.int32,))
        global_experts = expert_map.shape[0]
        if global_num_experts not in (-1, global_experts):
            raise ValueError(f"global_num_experts {global_num_experts} differs from expert_map's length "
                             f"{global_experts}")
        if not expert_map.is_contiguous():
            raise ValueError("expert_map must be contiguous")
    if out is not None:
        fused_moe_out(out, hidden_states, tokens, hidden)
    same_device("hidden_states", hidden_states.device, w1=w1, w2=w2, w1_scale=w1_scale, w2_scale=w2_scale,
                topk_weights=topk_weights, topk_ids=topk_ids, expert_map=expert_map,
                hidden_states_scale=hidden_states_scale)
    cuda("hidden_states", hidden_states)
    return FusedMoeChecked(tokens, hidden, intermediate, experts, topk, input_fp8, activation, global_experts,
                           topk_ids.dtype == torch.int64)


def fused_moe_out(out, hidden_states, tokens: int, hidden: int) -> None:
    """fused_moe's `out`: (M, K) bf16 with 16-byte rows, on hidden_states' device."""
    tensor("out", out, ndim=2, dtypes=(torch.bfloat16,))
    shape("out", out, (tokens, hidden))
    tma_operand("out", out)
    same_device("hidden_states", hidden_states.device, out=out)


# ---- MXFP8 grouped GEMM ------------------------------------------------------------------------
@dataclass(frozen=True)
class Mxfp8Checked:
    cum_m: int
    n: int
    k: int
    experts: int
    k_granularity: int


def moe_gemm_mxfp8(a, b, a_scale, b_scale, m_indptr, scale_granularity_mnk, scale_major_mode, backend, out,
                   out_dtype) -> Mxfp8Checked:
    """Validate moe_gemm_mxfp8_nt_groupwise's arguments."""
    if (not isinstance(scale_granularity_mnk, (tuple, list)) or len(scale_granularity_mnk) != 3
            or tuple(scale_granularity_mnk) not in ((1, 1, 128), (1, 1, 32))):
        raise ValueError(f"scale_granularity_mnk must be (1, 1, 128) or (1, 1, 32), got {scale_granularity_mnk!r}")
    k_gran = scale_granularity_mnk[2]
    choice("scale_major_mode", scale_major_mode, ("MN",), "MN")
    choice("backend", backend, ("auto", "sm90", "cute"), "auto")
    if out_dtype not in (None, torch.bfloat16):
        raise TypeError(f"out_dtype must be torch.bfloat16 (or None), got {out_dtype}")
    tensor("a", a, ndim=2, dtypes=(E4M3,))
    tensor("b", b, ndim=3, dtypes=(E4M3,))
    cum_m, k = a.shape
    experts, n, k_b = b.shape
    if k_b != k:
        raise ValueError(f"a (cum_m, k) and b (E, n, k) must share k: {tuple(a.shape)} vs {tuple(b.shape)}")
    if k == 0 or k % 128:
        raise ValueError(f"k must be a positive multiple of 128 (the FP8 core's K block), got {k}")
    if n == 0 or n % 8:
        raise ValueError(f"n (b.shape[1]) must be a positive multiple of 8, got {n}")
    if not 1 <= experts <= MAX_GROUPS:
        raise ValueError(f"b: the number of experts must be in [1, {MAX_GROUPS}], got {experts}")
    k_align = -(-k // (4 * k_gran))
    tensor("a_scale", a_scale, ndim=2, dtypes=(torch.int32,))
    shape("a_scale", a_scale, ((cum_m + experts * 3) // 4 * 4, k_align),
          "(m_padded, k_align): 4 UE8M0 exponents per int32, each expert's rows padded to a multiple of 4")
    tensor("b_scale", b_scale, ndim=3, dtypes=(torch.int32,))
    shape("b_scale", b_scale, (experts, n, k_align), "(E, n, k_align): one row of exponents per row of b")
    if a_scale.stride(1) != 1 or not b_scale.is_contiguous():
        raise ValueError("a_scale must be contiguous along its rows and b_scale contiguous")
    tensor("m_indptr", m_indptr, ndim=1, dtypes=(torch.int32,))
    shape("m_indptr", m_indptr, (experts + 1,), "CSR offsets of the experts' rows")
    if m_indptr.device.type == "cpu":
        offsets = m_indptr.tolist()
        if offsets[0] != 0 or offsets[-1] != cum_m or any(b_ < a_ for a_, b_ in zip(offsets, offsets[1:])):
            raise ValueError(f"m_indptr must rise from 0 to cum_m = {cum_m}, got {offsets}")
    if out is not None:
        tensor("out", out, ndim=2, dtypes=(torch.bfloat16,))
        shape("out", out, (cum_m, n))
        tma_operand("out", out)
    if cum_m:
        tma_operand("a", a)
    tma_operand("b", b)
    same_device("a", a.device, b=b, a_scale=a_scale, b_scale=b_scale, out=out)
    if m_indptr.device != a.device and m_indptr.device.type != "cpu":
        raise ValueError(f"m_indptr is on {m_indptr.device}, expected {a.device} or the CPU")
    cuda("a", a)
    return Mxfp8Checked(cum_m, n, k, experts, k_gran)


# ---- NVFP4 grouped GEMM ------------------------------------------------------------------------
NVFP4_K_MULTIPLE = 32  # 16-byte packed rows (TMA), whole 16-value scale blocks
NVFP4_OUT_DTYPES = (torch.bfloat16, torch.float16)
GROUP_INDEX_DTYPES = (torch.int32, torch.uint32)


@dataclass(frozen=True)
class Nvfp4Checked:
    problem: Nvfp4Problem
    active: torch.Tensor | None  # the device count of the groups that count, or None (problem.active)


def _nvfp4_index(name: str, t, length: int, dtypes: tuple, device: torch.device) -> None:
    tensor(name, t, ndim=1, dtypes=dtypes)
    shape(name, t, (length,))
    if length > 1 and t.stride(0) != 1:
        raise ValueError(f"{name} must be contiguous")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} (same device as a)")


def nvfp4_grouped(c, a, b, a_scales, b_scales, group_offsets, group_scale_offsets, expert_ids, expert_scales,
                  num_active_experts, scale_offsets_given: bool = True, out_name: str = "c") -> Nvfp4Checked:
    """Validate grouped_matmul_dynamic_scaled_nvfp4's arguments (scale_offsets_given False: the
    Pythonic form, whose group_scale_offsets is None and whose output is `out_name`).
    TypeError/ValueError naming the argument."""
    tensor("a", a, ndim=2, dtypes=(torch.uint8,))
    tensor("b", b, ndim=3, dtypes=(torch.uint8,))
    tokens, k_bytes = a.shape
    experts, n, b_k_bytes = b.shape
    if b_k_bytes != k_bytes:
        raise ValueError(f"a (tokens, K/2) and b (E, N, K/2) must hold the same K/2 packed bytes per row, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    k = 2 * k_bytes
    if k == 0 or k % NVFP4_K_MULTIPLE:
        raise ValueError(f"K (2 x a.shape[1], two e2m1 values per byte) must be a positive multiple of "
                         f"{NVFP4_K_MULTIPLE}, got {k}")
    if n == 0 or n % 8:
        raise ValueError(f"N (b.shape[1]) must be a positive multiple of 8 (16-byte rows of c), got {n}")
    if experts == 0 or experts * n > INT32_MAX:
        raise ValueError(f"b must hold 1 or more experts with E x N < 2**31 rows, got {tuple(b.shape)}")
    if tokens > MAX_GROUPED_ROWS:
        raise ValueError(f"a must have at most {MAX_GROUPED_ROWS} rows, got {tokens}")
    k_tiles = -(-k // 64)
    tensor("a_scales", a_scales, ndim=5, dtypes=(E4M3,))
    if tuple(a_scales.shape[1:]) != (k_tiles, 32, 4, 4) or (tokens and a_scales.shape[0] == 0):
        raise ValueError(f"a_scales must have shape (tiles, {k_tiles}, 32, 4, 4): one e4m3 scale per 16 values in "
                         f"128x4 blocks, each group from a new 128-row tile (as quant.nvfp4_quantize writes them), "
                         f"got {tuple(a_scales.shape)}")
    tensor("b_scales", b_scales, ndim=6, dtypes=(E4M3,))
    shape("b_scales", b_scales, (experts, -(-n // 128), k_tiles, 32, 4, 4),
          "(E, ceil(N/128), ceil(K/64), 32, 4, 4): one e4m3 scale per 16 values in 128x4 blocks")
    for name, t in (("a_scales", a_scales), ("b_scales", b_scales)):
        if not t.is_contiguous() or t.data_ptr() % 16:
            raise ValueError(f"{name} must be contiguous with a 16-byte aligned base (its 512-byte blocks are "
                             f"loaded whole)")
    if a_scales.numel() // 128 > INT32_MAX:
        raise ValueError(f"a_scales spans more than 2**31 rows of 128 bytes, got {tuple(a_scales.shape)}")
    tensor("group_offsets", group_offsets, ndim=1, dtypes=GROUP_INDEX_DTYPES)
    groups = group_offsets.shape[0] - 1
    if not 1 <= groups <= MAX_GROUPS:
        raise ValueError(f"group_offsets must have shape (groups + 1,) with 1 to {MAX_GROUPS} groups, got "
                         f"{tuple(group_offsets.shape)}")
    _nvfp4_index("group_offsets", group_offsets, groups + 1, GROUP_INDEX_DTYPES, a.device)
    _nvfp4_index("expert_ids", expert_ids, groups, (torch.int32,), a.device)
    if scale_offsets_given:
        _nvfp4_index("group_scale_offsets", group_scale_offsets, groups, GROUP_INDEX_DTYPES, a.device)
    _nvfp4_index("expert_scales", expert_scales, experts, (torch.float32,), a.device)
    active = None
    if isinstance(num_active_experts, torch.Tensor):
        tensor("num_active_experts", num_active_experts, dtypes=(torch.int32,))
        if num_active_experts.numel() != 1 or num_active_experts.dim() > 1:
            raise ValueError(f"num_active_experts as a tensor must hold one int32, got shape "
                             f"{tuple(num_active_experts.shape)}")
        if num_active_experts.device != a.device:
            raise ValueError(f"num_active_experts is on {num_active_experts.device}, expected {a.device} (a count on "
                             f"the host is passed as an int)")
        count = None
    elif isinstance(num_active_experts, int) and not isinstance(num_active_experts, bool):
        if not 0 <= num_active_experts <= groups:
            raise ValueError(f"num_active_experts must be in [0, {groups}] (the groups of expert_ids), got "
                             f"{num_active_experts}")
        count = num_active_experts
    else:
        raise TypeError(f"num_active_experts must be an int or an int32 tensor, got "
                        f"{type(num_active_experts).__name__}")
    tensor(out_name, c, ndim=2, dtypes=NVFP4_OUT_DTYPES)
    shape(out_name, c, (tokens, n), "(tokens, N)")
    if tokens:
        tma_operand(out_name, c)
        tma_operand("a", a)
    if not tma_rows(b):
        raise ValueError("b must be contiguous along K with its experts' rows stacked (stride(0) == N x stride(1)) "
                         "and 16-byte aligned")
    same_device("a", a.device, b=b, a_scales=a_scales, b_scales=b_scales, **{out_name: c})
    cuda("a", a)
    if count is None:
        active = num_active_experts.reshape(1)
    problem = Nvfp4Problem(tokens, n, k, groups, experts, c.dtype, count)
    return Nvfp4Checked(problem, active)
