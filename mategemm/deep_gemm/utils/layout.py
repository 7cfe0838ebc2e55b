"""DeepGEMM's scale-factor layout helpers, same arguments and results, in torch (any device).

TMA wants each scale column's start 16-byte aligned, so MN-major scales get a leading dimension of
mn rounded up to 4 (float32 or int32); the padding entries are never read.
"""
from __future__ import annotations

import torch

from mategemm.deep_gemm.utils.math import align, ceil_div

TMA_ALIGNMENT_BYTES = 16
DEFAULT_MK_ALIGNMENT = 128  # rows (M) or K per group of a contiguous grouped layout on Hopper
_mk_alignment = DEFAULT_MK_ALIGNMENT


def get_tma_aligned_size(x: int, element_size: int) -> int:
    if element_size <= 0 or TMA_ALIGNMENT_BYTES % element_size:
        raise ValueError(f"element_size must divide {TMA_ALIGNMENT_BYTES}, got {element_size}")
    return align(x, TMA_ALIGNMENT_BYTES // element_size)


def set_mk_alignment_for_contiguous_layout(alignment: int) -> None:
    """The M (and K) alignment of every group in a contiguous grouped layout."""
    global _mk_alignment
    if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0 or alignment % 32:
        raise ValueError(f"alignment must be a positive multiple of 32, got {alignment!r}")
    _mk_alignment = alignment


def get_mk_alignment_for_contiguous_layout() -> int:
    return _mk_alignment


def get_theoretical_mk_alignment_for_contiguous_layout(expected_m: int | None = None) -> int:
    """The alignment the Hopper kernels are built for (128 whatever expected_m)."""
    return DEFAULT_MK_ALIGNMENT


get_m_alignment_for_contiguous_layout = get_mk_alignment_for_contiguous_layout
get_k_alignment_for_contiguous_layout = get_mk_alignment_for_contiguous_layout


def _scale_matrices(sf: torch.Tensor) -> torch.Tensor:
    """float32 (mn, sf_k) or (groups, mn, sf_k) -> 3-D."""
    if not isinstance(sf, torch.Tensor) or sf.dtype != torch.float32 or sf.dim() not in (2, 3):
        raise ValueError(f"sf must be a float32 tensor of 2 or 3 dimensions, got "
                         f"{getattr(sf, 'dtype', type(sf).__name__)} {tuple(getattr(sf, 'shape', ()))}")
    return sf if sf.dim() == 3 else sf.unsqueeze(0)


def get_mn_major_tma_aligned_tensor(sf: torch.Tensor) -> torch.Tensor:
    """sf's values, MN-major with the TMA-aligned leading dimension: strides (aligned_mn * sf_k, 1,
    aligned_mn); sf itself when it already is."""
    groups = _scale_matrices(sf)
    g, mn, sf_k = groups.shape
    lead = get_tma_aligned_size(mn, 4)
    strides = (lead * sf_k, 1, lead)
    if groups.stride()[1:] == strides[1:] and (sf.dim() == 2 or groups.stride(0) == strides[0]):
        return sf
    out = torch.empty_strided((g, mn, sf_k), strides, dtype=sf.dtype, device=sf.device)
    out.copy_(groups)
    return out if sf.dim() == 3 else out.squeeze(0)


def _ue8m0_bytes(sf: torch.Tensor) -> torch.Tensor:
    """float32 scales (powers of two) -> their exponent bytes, uint8."""
    return (sf.view(torch.int32) >> 23).to(torch.uint8)


def get_mn_major_tma_aligned_packed_ue8m0_tensor(sf: torch.Tensor, psum_layout: torch.Tensor | None = None):
    """float32 scales (…, mn, sf_k) -> int32 (…, mn, ceil(sf_k/4)) holding the exponent bytes four K
    blocks to a word (first in the lowest byte; missing blocks zero), MN-major and TMA-aligned."""
    if psum_layout is not None:
        raise NotImplementedError("get_mn_major_tma_aligned_packed_ue8m0_tensor: psum_layout is DeepGEMM's SM100 "
                                  "(packed UE8M0 scales); Hopper kernels take float32 scales")
    groups = _scale_matrices(sf)
    g, mn, sf_k = groups.shape
    words = ceil_div(sf_k, 4)
    packed_bytes = torch.zeros((g, mn, 4 * words), dtype=torch.uint8, device=sf.device)
    packed_bytes[..., :sf_k] = _ue8m0_bytes(groups)
    lead = get_tma_aligned_size(mn, 4)
    out = torch.empty_strided((g, mn, words), (lead * words, 1, lead), dtype=torch.int32, device=sf.device)
    out.copy_(packed_bytes.view(torch.int32))
    return out if sf.dim() == 3 else out.squeeze(0)


def get_k_grouped_mn_major_tma_aligned_packed_ue8m0_tensor(sf: torch.Tensor, grouped_layout: torch.Tensor, ks_cpu,
                                                           gran_k: int, k_alignment: int,
                                                           use_psum_layout: bool = False) -> torch.Tensor:
    """float32 scales (sum_k/gran_k, mn) of K-grouped operands -> int32 (Σ ceil(k_i/(4 gran_k)), mn):
    each group's exponent bytes packed four K blocks to a word, groups one after another."""
    if use_psum_layout:
        raise NotImplementedError("get_k_grouped_mn_major_tma_aligned_packed_ue8m0_tensor: use_psum_layout is "
                                  "DeepGEMM's SM100 layout")
    if not isinstance(sf, torch.Tensor) or sf.dtype != torch.float32 or sf.dim() != 2:
        raise ValueError(f"sf must be a 2-D float32 tensor, got {getattr(sf, 'dtype', type(sf).__name__)}")
    ks = [int(k) for k in ks_cpu]
    if any(k < 0 or k % k_alignment for k in ks):
        raise ValueError(f"ks_cpu must hold multiples of k_alignment ({k_alignment}), got {ks}")
    blocks = [ceil_div(k, gran_k) for k in ks]
    if sum(blocks) != sf.shape[0]:
        raise ValueError(f"sf has {sf.shape[0]} rows of K blocks; ks_cpu needs {sum(blocks)}")
    parts = []
    for rows in sf.split(blocks):
        if not rows.shape[0]:
            continue  # an empty group has no scales
        padded = torch.zeros((sf.shape[1], 4 * ceil_div(rows.shape[0], 4)), dtype=torch.uint8, device=sf.device)
        padded[:, :rows.shape[0]] = _ue8m0_bytes(rows).t()
        parts.append(padded.view(torch.int32).t())
    return torch.cat(parts) if parts else sf.new_zeros((0, sf.shape[1]), dtype=torch.int32)


def transform_sf_into_required_layout(sf: torch.Tensor, mn: int, k: int, recipe: tuple, num_groups: int | None = None,
                                      is_sfa: bool | None = None, disable_ue8m0_cast: bool = False,
                                      psum_layout: torch.Tensor | None = None) -> torch.Tensor:
    """Scales as the Hopper kernels read them: float32 per 1 x 128 -> MN-major and TMA-aligned;
    float32 per 128 x 128 -> unchanged (checked contiguous, or contiguous once transposed).

    recipe: (gran_m, gran_n, gran_k) with is_sfa saying which operand, or (gran_mn, gran_k) without.
    Packed UE8M0 scales and other granularities are DeepGEMM's SM100 layouts: NotImplementedError.
    """
    if len(recipe) == 3:
        if is_sfa is None:
            raise ValueError("is_sfa is needed with a 3-element recipe (which operand's granularity)")
        gran_mn, gran_k = (recipe[0] if is_sfa else recipe[1]), recipe[2]
    elif len(recipe) == 2:
        if is_sfa is not None:
            raise ValueError("is_sfa must be None with a 2-element recipe (gran_mn, gran_k)")
        gran_mn, gran_k = recipe
    else:
        raise ValueError(f"recipe must have 2 or 3 elements, got {recipe!r}")
    if not isinstance(sf, torch.Tensor) or sf.dtype not in (torch.float32, torch.int32):
        raise ValueError(f"sf must be a float32 (or packed int32) tensor, got {getattr(sf, 'dtype', type(sf).__name__)}")
    expected = ((num_groups,) if num_groups is not None else ()) + (ceil_div(mn, gran_mn), ceil_div(k, gran_k))
    if sf.dtype == torch.float32 and tuple(sf.shape) != expected:
        raise ValueError(f"sf must have shape {expected} for mn={mn}, k={k}, granularity ({gran_mn}, {gran_k}), "
                         f"got {tuple(sf.shape)}")
    if sf.dtype != torch.float32 or psum_layout is not None or (gran_mn, gran_k) not in ((1, 128), (128, 128)):
        raise NotImplementedError(f"transform_sf_into_required_layout: {sf.dtype} scales per ({gran_mn}, {gran_k})"
                                  f"{' with psum_layout' if psum_layout is not None else ''} are DeepGEMM's SM100 "
                                  "layouts; Hopper takes float32 scales per (1, 128) or (128, 128)")
    if gran_mn == 1:
        return get_mn_major_tma_aligned_tensor(sf)
    rows, cols = sf.shape[-2:]
    if num_groups is not None and sf.stride(0) != rows * cols:
        raise ValueError(f"sf's groups must be packed (stride {rows * cols}), got stride {sf.stride(0)}")
    if not ((sf.stride(-1) == 1 and sf.stride(-2) == cols) or (sf.stride(-1) == rows and sf.stride(-2) == 1)):
        raise ValueError(f"sf (128 x 128 blocks) must be contiguous or contiguous once transposed, got strides "
                         f"{sf.stride()}")
    return sf
