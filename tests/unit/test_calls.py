"""Prepared-call reuse (mategemm.runtime.calls) and the grouped heuristic's bounds, without a GPU."""
import math

import torch

from mategemm.heuristics import grouped
from mategemm.runtime import calls
from mategemm.runtime.device import SM90_NO_DEVICE
from mategemm.types import RECIPE_1x128_128x128, GemmProblem

E4M3 = torch.float8_e4m3fn


def test_memo_key_tracks_tensor_layout_not_values():
    a = torch.zeros((4, 8))
    key = calls.memo_key("x", a, (a, a), 3, None)
    a.fill_(1.0)  # new values, same tensor: the same call
    assert calls.memo_key("x", a, (a, a), 3, None) == key
    assert calls.memo_key("x", a.t(), (a, a), 3, None) != key  # other strides
    assert calls.memo_key("x", torch.zeros((4, 8)), (a, a), 3, None) != key  # other address
    assert calls.memo_key("x", a, (a, a), 4, None) != key  # other option


def test_memo_key_refuses_what_it_cannot_key():
    assert calls.memo_key("x", [1, 2]) is None      # a list where tensors are expected
    assert calls.memo_key("x", {"a": 1}) is None   # unhashable


def test_warm_calls_stay_bounded():
    cache = calls.WarmCalls(limit=2)
    for i in range(5):
        cache.remember(("k", i), calls.PreparedCall(None, (), i))
    assert cache.get(("k", 4)).threshold == 4
    assert sum(cache.get(("k", i)) is not None for i in range(5)) <= 2
    cache.remember(None, calls.PreparedCall(None, (), 0))  # no key: nothing stored
    assert cache.get(None) is None


def test_k_major_stages_a_copy_only_when_asked():
    t = torch.arange(12.0).reshape(3, 4).t()
    staged = []
    assert calls.k_major(t, False, staged) is t and not staged
    workspace = calls.k_major(t, True, staged)
    assert workspace.is_contiguous() and staged == [(workspace, t)]


def test_tile_bound_covers_every_routing():
    """The grid bound is never below the tiles any routing can produce."""
    problem = GemmProblem(1000, 512, 1024, RECIPE_1x128_128x128, E4M3, E4M3, torch.bfloat16, "per_expert", 7)
    for block_m in (64, 128):
        bound = grouped.tile_bound(problem, block_m, 128, 0, 0)
        worst = sum(math.ceil(c / block_m) for c in (1, 1, 1, 1, 1, 1, 994)) * 4  # six 1-row experts
        assert bound >= worst
    masked = GemmProblem(4 * 300, 512, 1024, RECIPE_1x128_128x128, E4M3, E4M3, torch.bfloat16, "masked", 4)
    assert grouped.tile_bound(masked, 128, 128, 0, 300) == 4 * 3 * 4


def test_grouped_grid_never_exceeds_the_tiles():
    problem = GemmProblem(8, 512, 1024, RECIPE_1x128_128x128, E4M3, E4M3, torch.bfloat16, "batched", 2)
    config = grouped.choose(problem, 8, SM90_NO_DEVICE, 132)
    tiles = grouped.tile_bound(problem, config.block_m, config.block_n, 0, 0)
    assert config.num_mp <= tiles + tiles % config.cluster_n  # rounded up to whole clusters
