"""Every MATEGEMM_* environment variable, declared once, typed, with its default.

This module is the only reader of ``os.environ`` in mategemm. Values are read at each call of
the accessor, so a test or a long-lived process can change them; the hot path reads only
``force_config`` and ``num_mp`` (a call's plan) and ``pdl`` (each launch), dictionary look-ups.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Knob:
    name: str
    default: str
    doc: str
    in_cache_key: bool


KNOBS = (
    Knob("MATEGEMM_CACHE_DIR", "", "Kernel cache directory (default: jit_cache/ in a source checkout, "
         "else ~/.cache/mategemm).", False),
    Knob("MATEGEMM_NUM_MP", "0", "Number of SMs the kernels may use; 0 means all.", False),
    Knob("MATEGEMM_PRINT_CONFIGS", "0", "1 prints each chosen kernel config once.", False),
    Knob("MATEGEMM_PDL", "0", "1 launches the GEMM kernels with programmatic dependent launch: each may "
         "start while the kernel before it on the stream finishes, and waits for it before touching "
         "memory.", False),
    Knob("MATEGEMM_JIT_DEBUG", "0", "1 keeps generated sources, prints NVRTC options, times and "
         "ptxas resource usage; adds -lineinfo.", True),
    Knob("MATEGEMM_FORCE_CONFIG", "", "Override heuristic choices, e.g. "
         "'block_m=128,block_n=160,stages=5,num_mp=66,group_n=8,cluster_m=2' (keys: block_m, block_n, "
         "stages, num_mp, group_n, cluster_m, cluster_n, num_splits; split_cluster=1/0: a tile's split-K "
         "work items as one cluster reducing in shared memory / through a global workspace; "
         "transpose=1/0: M/N-major FP8 "
         "operands transposed in the kernel / copied K-major first; tma_scales=0: A scales (ragged K: both "
         "operands') read by the scale warps, never loaded by TMA; tma_scales=2: A scales loaded by TMA "
         "wherever the kernel can (copied MN-major first where TMA cannot read them); stream=1/0: NVFP4 "
         "by the streaming kernel (weights decoded into the wgmma registers; block_m 8/16/32; default up "
         "to 32 rows per group) / by the GEMM core's; decoders=0/1/2: the latter with 0, 4 or 8 more "
         "decoding warps (default: 8 at BLOCK_M 128; at BLOCK_M 64 8 up to 16 rows per group, else 4); "
         "ctas_per_sm=1/2: the streaming NVFP4 kernel's CTAs per SM (default 2 up to 16 rows per tile); "
         "quant_first=1/0: "
         "fused_moe quantises a bf16 input once per token, then gathers the pairs' FP8 rows / pair by "
         "pair; gated_gemm=1/0: fused_moe's first GEMM applies the gated activation and quantises in its "
         "epilogue / a bf16 GEMM then the activation kernel; gather_a=1: fused_moe's first GEMM reads each "
         "pair's FP8 row where it lies instead of a permuted copy).",
         False),
)

_BY_NAME = {knob.name: knob for knob in KNOBS}


def _raw(name: str) -> str:
    return os.environ.get(name, _BY_NAME[name].default)


_TRUE_WORDS = ("1", "true", "yes", "on")


def _flag(name: str) -> bool:
    return _raw(name).strip().lower() in _TRUE_WORDS


def cache_dir() -> str:
    """The configured cache directory, or '' to use the default location."""
    return _raw("MATEGEMM_CACHE_DIR")


def num_mp() -> int:
    raw = _raw("MATEGEMM_NUM_MP").strip() or "0"
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"MATEGEMM_NUM_MP must be an integer, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"MATEGEMM_NUM_MP must be >= 0, got {value}")
    return value


def print_configs() -> bool:
    return _flag("MATEGEMM_PRINT_CONFIGS")


def jit_debug() -> bool:
    return _flag("MATEGEMM_JIT_DEBUG")


def force_config() -> str:
    """The raw override string; parsed by mategemm.heuristics.parse_force_config."""
    return _raw("MATEGEMM_FORCE_CONFIG").strip()


# NOTES: os.environ.get costs ~1.2 us (key encoding through the Mapping protocol), two of them a
# third of a warm call's Python time; os.environ's backing dict (CPython, POSIX: bytes keys,
# kept in step by os.environ's setters) answers in ~40 ns.
_ENV_BYTES = getattr(os.environ, "_data", None) if os.name == "posix" else None
_TRUE_BYTES = tuple(word.encode() for word in _TRUE_WORDS)


def pdl() -> bool:
    """MATEGEMM_PDL, read on every launch (os.environ's backing dict where there is one)."""
    raw = _ENV_BYTES.get(b"MATEGEMM_PDL") if _ENV_BYTES is not None else os.environ.get("MATEGEMM_PDL", "").encode()
    return raw is not None and raw.strip().lower() in _TRUE_BYTES


def hot_knobs() -> tuple:
    """The raw values of the knobs a warm call depends on (for its memo key; no parsing)."""
    if _ENV_BYTES is not None:
        return _ENV_BYTES.get(b"MATEGEMM_FORCE_CONFIG"), _ENV_BYTES.get(b"MATEGEMM_NUM_MP")
    return os.environ.get("MATEGEMM_FORCE_CONFIG"), os.environ.get("MATEGEMM_NUM_MP")


def home_dir() -> str:
    return os.path.expanduser("~")


def snapshot() -> dict[str, str]:
    """Every knob with the value in force (for `mategemm info`)."""
    return {knob.name: _raw(knob.name) for knob in KNOBS}
