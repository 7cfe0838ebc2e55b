"""Config choice per kernel family; MATEGEMM_FORCE_CONFIG overrides; PRINT_CONFIGS shows choices."""
from __future__ import annotations

import functools

from mategemm import env
from mategemm.log import verbose

FORCE_KEYS = ("block_m", "block_n", "stages", "num_mp", "group_n", "cluster_m", "cluster_n", "num_splits", "transpose",
              "tma_scales", "decoders", "quant_first", "gated_gemm", "gather_a", "stream", "decoded_a",
              "decoded_b", "overlap", "split_cluster", "ctas_per_sm", "gemv", "b_evict_first", "scales_ahead")
_printed: set = set()


@functools.lru_cache(maxsize=64)
def parse_force_config(raw: str) -> dict[str, int]:
    """'block_m=128,block_n=160,stages=5' -> {'block_m': 128, ...}; ValueError names bad parts."""
    forced: dict[str, int] = {}
    if not raw:
        return forced
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in FORCE_KEYS:
            raise ValueError(f"MATEGEMM_FORCE_CONFIG: bad entry {part!r}; expected key=value with key in {FORCE_KEYS}")
        try:
            forced[name] = int(value)
        except ValueError:
            raise ValueError(f"MATEGEMM_FORCE_CONFIG: {name} must be an integer, got {value.strip()!r}") from None
    return forced


def forced_flag(forced: dict, key: str, default: int) -> bool:
    """A 0/1 key of MATEGEMM_FORCE_CONFIG, or `default`."""
    value = forced.get(key, default)
    if value not in (0, 1):
        raise ValueError(f"MATEGEMM_FORCE_CONFIG: {key} must be 0 or 1, got {value}")
    return bool(value)


def report(kind: str, problem, config) -> None:
    """Log a config once per (kind, problem, config) when MATEGEMM_PRINT_CONFIGS=1."""
    if not env.print_configs():
        return
    key = (kind, problem, config)
    if key in _printed:
        return
    _printed.add(key)
    verbose().info("%s %s -> %s", kind, problem, config)
