"""FP8 quantisers: per-token 1x128 groups and 128x128 blocks, with dequantisation scales."""
from __future__ import annotations

import torch

FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}
_EPS = 1e-4


def _padded(x: torch.Tensor, row_multiple: int) -> torch.Tensor:
    """x (2-D) as fp32, zero-padded to whole 128-column groups and rows to a multiple of row_multiple
    (zeros never raise a group's amax)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError("x must be a 2-D tensor")
    rows, k = x.shape
    rows_pad, k_pad = -(-rows // row_multiple) * row_multiple, -(-k // 128) * 128
    if (rows_pad, k_pad) == (rows, k):
        return x.float()
    padded = torch.zeros((rows_pad, k_pad), dtype=torch.float32, device=x.device)
    padded[:rows, :k] = x.float()
    return padded


def per_token_cast_to_fp8(x: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn):
    """x (m, k) -> (q (m, k) fp8, scales (m, ceil(k/128)) fp32) with x ~= q * scale per 1x128 group
    (the last group of a K that is not a multiple of 128 is shorter)."""
    padded = _padded(x, 1)
    m, k = x.shape
    k_pad = padded.shape[1]
    groups = padded.view(m, k_pad // 128, 128)
    amax = groups.abs().amax(dim=2).clamp(min=_EPS)
    scale = amax / FP8_MAX[dtype]
    q = (groups / scale.unsqueeze(2)).to(dtype).view(m, k_pad)[:, :k].contiguous()
    return q, scale


def per_block_cast_to_fp8(x: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn):
    """x (n, k) -> (q (n, k) fp8, scales (ceil(n/128), ceil(k/128)) fp32) per 128x128 block."""
    padded = _padded(x, 128)
    n, k = x.shape
    n_pad, k_pad = padded.shape
    blocks = padded.view(n_pad // 128, 128, k_pad // 128, 128)
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=_EPS)
    scale = amax / FP8_MAX[dtype]
    q = (blocks / scale[:, None, :, None]).to(dtype).view(n_pad, k_pad)[:n, :k].contiguous()
    return q, scale


# ---------------------------------------------------------------- paged KV cache (lightning indexer)
# NOTES: one cache block is 8448 contiguous bytes: the 64 tokens' e4m3 keys (64 x 128 bytes, token t
# at bytes t*128 .. t*128+127), then their 64 fp32 scales (256 bytes). The (num_blocks, 64, 1, 132)
# shape is only a view of those bytes; keys and scales are not interleaved per token.
# A non-paged kv (seq, 128) needs no quantiser of its own: per_token_cast_to_fp8 gives one scale per
# row (its (seq, 1) scales, squeezed).

PAGED_BLOCK_TOKENS = 64
PAGED_HEAD_DIM = 128
PAGED_KEY_BYTES = PAGED_BLOCK_TOKENS * PAGED_HEAD_DIM  # 8192
PAGED_BLOCK_BYTES = PAGED_KEY_BYTES + PAGED_BLOCK_TOKENS * 4  # 8448
_PAGED_SHAPE = (PAGED_BLOCK_TOKENS, 1, PAGED_HEAD_DIM + 4)


def _check_fused(fused, name: str = "fused") -> None:
    if not isinstance(fused, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(fused).__name__}")
    if fused.dtype != torch.uint8:
        raise TypeError(f"{name} must be uint8 (fused e4m3 keys + fp32 scales), got {fused.dtype}")
    if fused.dim() != 4 or tuple(fused.shape[1:]) != _PAGED_SHAPE:
        raise ValueError(f"{name} must have shape (num_blocks, 64, 1, 132), got {tuple(fused.shape)}")
    if fused.stride(3) != 1 or fused.stride(1) != 132 or fused.stride(0) % 4:
        raise ValueError(f"{name}: each block's 8448 bytes must be contiguous (strides (8448k, 132, *, 1)), "
                         f"got strides {fused.stride()}; pass fused.contiguous()")


def _check_float_keys(k, name: str, dims: int) -> None:
    if not isinstance(k, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(k).__name__}")
    if not k.is_floating_point() or k.element_size() == 1:
        raise TypeError(f"{name} must be float32, float16 or bfloat16 (unquantised keys), got {k.dtype}")
    if k.dim() != dims or k.shape[-1] != PAGED_HEAD_DIM:
        want = "(T, 128)" if dims == 2 else "(num_blocks, 64, 1, 128)"
        raise ValueError(f"{name} must have shape {want}, got {tuple(k.shape)}")


def _per_token_e4m3(k: torch.Tensor):
    """(..., 128) float -> (keys e4m3 (..., 128), scales fp32 (...)): amax / 448 per token."""
    k = k.float()
    dtype = torch.float8_e4m3fn
    scale = k.abs().amax(dim=-1).clamp(min=_EPS) / FP8_MAX[dtype]
    return (k / scale.unsqueeze(-1)).to(dtype), scale


def paged_kv_cache_split(fused: torch.Tensor):
    """uint8 (num_blocks, 64, 1, 132) -> (keys e4m3 (num_blocks, 64, 128), scales fp32 (num_blocks, 64)).

    Both are views of `fused` (no copy): writing to them writes the cache.
    Raises TypeError (not a uint8 tensor) or ValueError (shape, or a block's bytes not contiguous).
    """
    _check_fused(fused)
    flat = fused.view(fused.shape[0], PAGED_BLOCK_BYTES)
    keys = flat[:, :PAGED_KEY_BYTES].view(torch.float8_e4m3fn).view(-1, PAGED_BLOCK_TOKENS, PAGED_HEAD_DIM)
    scales = flat[:, PAGED_KEY_BYTES:].view(torch.float32)
    return keys, scales


def paged_kv_cache_cast_to_fp8(k: torch.Tensor) -> torch.Tensor:
    """k float/bf16 (num_blocks, 64, 1, 128) -> fused uint8 (num_blocks, 64, 1, 132), on k's device.

    Per token: scale = max(amax over the 128 dims, 1e-4) / 448, keys = e4m3(k / scale).
    Raises TypeError (dtype) or ValueError (shape).
    """
    _check_float_keys(k, "k", 4)
    if tuple(k.shape[1:3]) != (PAGED_BLOCK_TOKENS, 1):
        raise ValueError(f"k must have shape (num_blocks, 64, 1, 128), got {tuple(k.shape)}")
    num_blocks = k.shape[0]
    keys, scales = _per_token_e4m3(k.reshape(num_blocks, PAGED_BLOCK_TOKENS, PAGED_HEAD_DIM))
    fused = torch.empty((num_blocks, PAGED_BLOCK_BYTES), dtype=torch.uint8, device=k.device)
    fused[:, :PAGED_KEY_BYTES] = keys.view(torch.uint8).view(num_blocks, PAGED_KEY_BYTES)
    fused[:, PAGED_KEY_BYTES:] = scales.contiguous().view(torch.uint8)
    return fused.view(num_blocks, *_PAGED_SHAPE)


def write_paged_kv(fused: torch.Tensor, k: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Quantise k float/bf16 (T, 128) per token and write token t (keys and scale) in place into
    fused uint8 (num_blocks, 64, 1, 132) at flat slot slot_mapping[t] = block * 64 + offset.

    slot_mapping: 1-D integer tensor (T,) of distinct slots in [0, num_blocks * 64), any device.
    Raises TypeError (a wrong type or dtype) or ValueError (shapes, devices, slot values), naming the
    argument. Other slots are left byte for byte as they were.
    """
    _check_fused(fused)
    _check_float_keys(k, "k", 2)
    if not isinstance(slot_mapping, torch.Tensor):
        raise TypeError(f"slot_mapping must be a torch.Tensor, got {type(slot_mapping).__name__}")
    if slot_mapping.is_floating_point() or slot_mapping.is_complex() or slot_mapping.dtype == torch.bool:
        raise TypeError(f"slot_mapping must be an integer tensor, got {slot_mapping.dtype}")
    if slot_mapping.dim() != 1 or slot_mapping.shape[0] != k.shape[0]:
        raise ValueError(f"slot_mapping must have shape ({k.shape[0]},) (one slot per row of k), "
                         f"got {tuple(slot_mapping.shape)}")
    if k.device != fused.device:
        raise ValueError(f"k is on {k.device} but fused is on {fused.device}; move k to fused's device")
    num_slots = fused.shape[0] * PAGED_BLOCK_TOKENS
    slots = slot_mapping.to(device=fused.device, dtype=torch.int64)
    if slots.numel() and (int(slots.min()) < 0 or int(slots.max()) >= num_slots):
        raise ValueError(f"slot_mapping values must be in [0, num_blocks * 64 = {num_slots}), "
                         f"got min {int(slots.min())}, max {int(slots.max())}")
    if torch.unique(slots).numel() != slots.numel():
        raise ValueError("slot_mapping must not repeat a slot (the write order would decide the result)")

    # quantise, then scatter the key bytes and the scale of each token
    keys, scales = _per_token_e4m3(k)
    block, offset = slots // PAGED_BLOCK_TOKENS, slots % PAGED_BLOCK_TOKENS
    flat = fused.view(fused.shape[0], PAGED_BLOCK_BYTES)
    key_bytes = flat[:, :PAGED_KEY_BYTES].view(-1, PAGED_BLOCK_TOKENS, PAGED_HEAD_DIM)
    key_bytes[block, offset] = keys.view(torch.uint8)
    flat[:, PAGED_KEY_BYTES:].view(torch.float32)[block, offset] = scales


# ---- MXFP8: e4m3 values with UE8M0 (power-of-two) scales ----------------------------------------
# A UE8M0 byte e is the scale 2^(e - 127), e in [0, 254] (255 is NaN in the OCP format and never
# written). Packed scales hold 4 bytes per int32 along K blocks, the first block in the lowest byte
# (the int32 view of the little-endian byte rows).
MXFP8_GRANULARITIES = (32, 128)
UE8M0_BIAS = 127


def mxfp8_scale_rows(m_indptr: list[int]) -> tuple[int, list[int]]:
    """(m_padded, first scale row of each expert) of token-packed rows whose per-expert scale
    rows are padded to a multiple of 4: m_padded = (cum_m + E x 3) // 4 x 4."""
    starts, row = [], 0
    for lo, hi in zip(m_indptr, m_indptr[1:]):
        starts.append(row)
        row += -(-(hi - lo) // 4) * 4
    cum_m, experts = m_indptr[-1], len(m_indptr) - 1
    return (cum_m + experts * 3) // 4 * 4, starts


def _ue8m0_quantize(x: torch.Tensor, k_granularity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 values, UE8M0 bytes (..., ceil(k / gran))) of x (..., k): per row and K block, the
    smallest power-of-two scale that maps the block's amax into e4m3 (amax / scale <= 448)."""
    if k_granularity not in MXFP8_GRANULARITIES:
        raise ValueError(f"k_granularity must be one of {MXFP8_GRANULARITIES}, got {k_granularity!r}")
    *lead, k = x.shape
    blocks = -(-k // k_granularity)
    padded = torch.nn.functional.pad(x.float(), (0, blocks * k_granularity - k))
    groups = padded.view(*lead, blocks, k_granularity)
    amax = groups.abs().amax(dim=-1)
    # exponent of the smallest 2^e >= amax / 448 (frexp: amax / 448 = mantissa x 2^exp, mantissa in [0.5, 1))
    mantissa, exponent = torch.frexp(amax / 448.0)
    exponent = torch.where(mantissa == 0.5, exponent - 1, exponent)
    e = (exponent + UE8M0_BIAS).clamp(0, 2 * UE8M0_BIAS).to(torch.int32)
    e = torch.where(amax == 0, torch.zeros_like(e), e)
    scale = torch.ldexp(torch.ones_like(amax), (e - UE8M0_BIAS).to(torch.int32)).unsqueeze(-1)
    q = (groups / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).view(*lead, blocks * k_granularity)
    return q[..., :k].contiguous(), e.to(torch.uint8)


def _pack_ue8m0(e: torch.Tensor) -> torch.Tensor:
    """(..., blocks) UE8M0 bytes -> (..., ceil(blocks / 4)) int32, 4 per int32, padded with zeros."""
    blocks = e.shape[-1]
    padded = torch.nn.functional.pad(e, (0, -(-blocks // 4) * 4 - blocks))
    return padded.contiguous().view(torch.int32)


def mxfp8_quantize(x: torch.Tensor, k_granularity: int = 128, m_indptr: list[int] | torch.Tensor | None = None):
    """MXFP8 e4m3 values and int32-packed UE8M0 scales from bf16/fp32 x, in the layouts of
    moe_gemm_mxfp8_nt_groupwise: x (cum_m, k) token-packed rows -> (values (cum_m, k), a_scale
    (m_padded, k_align)), each expert's scale rows (m_indptr: the (E + 1,) CSR offsets) starting at
    a multiple of 4, padding rows zero; or expert weights x (E, n, k) -> (values, b_scale
    (E, n, k_align)). k_align = ceil(k / (4 x k_granularity)). Scales round up to a power of two:
    2^e with e in [-127, 127] (a block of zeros gets 2^-127)."""
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3) or not x.is_floating_point():
        raise ValueError("x must be a 2-D (tokens, k) or 3-D (experts, n, k) floating-point tensor")
    q, e = _ue8m0_quantize(x, k_granularity)
    if x.dim() == 3:
        if m_indptr is not None:
            raise ValueError("m_indptr goes with 2-D token rows, not 3-D expert weights")
        return q, _pack_ue8m0(e)
    offsets = [0, x.shape[0]] if m_indptr is None else [int(v) for v in m_indptr]
    if offsets[0] != 0 or offsets[-1] != x.shape[0] or any(b < a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"m_indptr must rise from 0 to x.shape[0] = {x.shape[0]}, got {offsets}")
    m_padded, starts = mxfp8_scale_rows(offsets)
    rows = torch.zeros((m_padded, e.shape[1]), dtype=torch.uint8, device=x.device)
    for start, lo, hi in zip(starts, offsets, offsets[1:]):
        rows[start:start + hi - lo] = e[lo:hi]
    return q, _pack_ue8m0(rows)


# ---- NVFP4: e2m1 values two per byte, e4m3 scales per 16 values, in NVIDIA's 128x4 blocked layout ----
NVFP4_BLOCK = 16  # values per e4m3 scale along K
E2M1_MAX, E4M3_MAX = 6.0, 448.0
E2M1_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)  # between the magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6
SCALE_TILE_ROWS, SCALE_TILE_COLS = 128, 4


def e2m1_codes(x: torch.Tensor) -> torch.Tensor:
    """uint8 e2m1 codes (sign in bit 3) of x, rounded to nearest with ties to the even code (as the
    hardware converts), saturating at 6; -0 is coded +0."""
    magnitude = x.abs().float().contiguous()
    midpoints = torch.tensor(E2M1_MIDPOINTS, device=x.device)
    code = torch.bucketize(magnitude, midpoints)  # ties go down here ...
    tie = (code < len(E2M1_MIDPOINTS)) & (magnitude == midpoints[code.clamp(max=len(E2M1_MIDPOINTS) - 1)])
    code = code + (tie & (code % 2 == 1)).long()  # ... and up where the lower code is odd
    return (code | (((x < 0) & (code > 0)).long() << 3)).to(torch.uint8)


def swizzle_nvfp4_scales(scales: torch.Tensor) -> torch.Tensor:
    """(..., rows, k/16) e4m3 -> NVIDIA's blocked layout as (..., ceil(rows/128), ceil(k/64), 32, 4, 4):
    element [t, c, i, g, j] is the scale of row t*128 + g*32 + i, column c*4 + j (zero padding)."""
    *lead, rows, cols = scales.shape
    tiles_r, tiles_c = -(-rows // SCALE_TILE_ROWS), -(-cols // SCALE_TILE_COLS)
    padded = torch.zeros((*lead, tiles_r * SCALE_TILE_ROWS, tiles_c * SCALE_TILE_COLS), dtype=torch.uint8,
                         device=scales.device)
    padded[..., :rows, :cols] = scales.view(torch.uint8)
    blocked = padded.view(*lead, tiles_r, 4, 32, tiles_c, SCALE_TILE_COLS)  # [t, g, i, c, j]
    n = len(lead)
    blocked = blocked.permute(*range(n), n, n + 3, n + 2, n + 1, n + 4).contiguous()  # [t, c, i, g, j]
    return blocked.view(torch.float8_e4m3fn)


def _nvfp4_rows(x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 (..., k/2), e4m3 scales (..., k/16)) of x (..., k); global_scale broadcasts
    against x's leading dimensions."""
    *lead, k = x.shape
    blocks = x.float().view(*lead, k // NVFP4_BLOCK, NVFP4_BLOCK)
    g = global_scale.float().view(*global_scale.shape, 1, 1)
    scale = (blocks.abs().amax(dim=-1, keepdim=True) / E2M1_MAX * g).clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)
    step = scale.float() / g  # the value one e2m1 unit stands for
    codes = e2m1_codes(torch.where(step > 0, blocks / step, torch.zeros_like(blocks))).view(*lead, k)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return packed, scale.squeeze(-1)


def nvfp4_quantize(x: torch.Tensor, global_scale, group_offsets=None):
    """NVFP4 values and block scales from bf16/fp32 x, in grouped_matmul_dynamic_scaled_nvfp4's layouts.

    Per 16 values along K: scale = e4m3(amax / 6 x global_scale), value = e2m1(x x global_scale /
    scale), packed two per byte, the even column in the low nibble; x ~ value x scale / global_scale
    (the GEMM's expert_scales carry 1 / (global_scale_a x global_scale_b)). global_scale: a float or
    fp32 tensor, one per expert for 3-D x (FlashInfer's convention: 448 x 6 / amax(x)).

    x (tokens, k) with group_offsets (the (G + 1,) token offsets of the groups; default one group) ->
    (a (tokens, k/2) uint8, a_scales (tiles, ceil(k/64), 32, 4, 4) e4m3, group_scale_offsets (G,)
    uint32: each group's scales start a new 128-row tile, its first tile's index here).
    x (E, n, k) weights -> (b (E, n, k/2), b_scales (E, ceil(n/128), ceil(k/64), 32, 4, 4)). k % 32 == 0.
    """
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3) or not x.is_floating_point():
        raise ValueError("x must be a 2-D (tokens, k) or 3-D (experts, n, k) floating-point tensor")
    if x.shape[-1] % 32:
        raise ValueError(f"x's k ({x.shape[-1]}) must be a multiple of 32")
    scale = torch.as_tensor(global_scale, dtype=torch.float32, device=x.device)
    experts = x.shape[0] if x.dim() == 3 else 1
    if scale.numel() not in (1, experts) or not bool(torch.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError(f"global_scale must be positive and finite, one value or one per expert ({experts})")
    if x.dim() == 3:
        if group_offsets is not None:
            raise ValueError("group_offsets goes with 2-D token rows, not 3-D expert weights")
        packed, scales = _nvfp4_rows(x, scale.reshape(-1).expand(experts).reshape(experts, 1))
        return packed, swizzle_nvfp4_scales(scales)
    offsets = [0, x.shape[0]] if group_offsets is None else [int(v) for v in group_offsets]
    if offsets[0] != 0 or offsets[-1] != x.shape[0] or any(b < a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"group_offsets must rise from 0 to x.shape[0] = {x.shape[0]}, got {offsets}")
    if scale.numel() != 1:
        raise ValueError("global_scale for token rows is one value")
    packed, scales = _nvfp4_rows(x, scale.reshape(()))
    tiles, starts = [], []
    for lo, hi in zip(offsets, offsets[1:]):
        starts.append(sum(t.shape[0] for t in tiles))
        tiles.append(swizzle_nvfp4_scales(scales[lo:hi]))
    a_scales = torch.cat(tiles) if tiles else swizzle_nvfp4_scales(scales)
    return packed, a_scales, torch.tensor(starts, dtype=torch.uint32, device=x.device)
