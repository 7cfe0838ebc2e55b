"""Prepared-call reuse (mategemm.runtime.calls) and the grouped heuristic's bounds, without a GPU."""
import math

import torch

from mategemm.heuristics import grouped
from mategemm.runtime import calls
from mategemm.runtime.device import SM90_NO_DEVICE
from mategemm.types import GemmProblem, Recipe, RECIPE_1x128_128x128

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


def fp8(shape):
    return torch.zeros(shape, dtype=torch.uint8).view(E4M3)


def test_operand_reads_mn_major_in_place_only_when_chosen_and_addressable(monkeypatch):
    monkeypatch.delenv("MATEGEMM_FORCE_CONFIG", raising=False)
    mn = fp8((256, 96))  # (K rows, M): a 96-byte row stride
    staged = []
    assert calls.operand(mn.t(), mn, True, staged, in_kernel=True) == (mn, True) and not staged
    workspace, in_place = calls.operand(mn.t(), mn, True, staged, in_kernel=False)
    assert not in_place and workspace.is_contiguous() and workspace.shape == (96, 256) and len(staged) == 1
    ragged = fp8((256, 100))[:, :90]  # a 100-byte row stride: TMA cannot read it
    assert not calls.operand(ragged.t(), ragged, True, [], in_kernel=True)[1]
    unstacked = fp8((2, 256 + 128, 96))[:, :256]  # groups not stacked row after row
    assert not calls.operand(unstacked.transpose(1, 2), unstacked, True, [], in_kernel=True)[1]
    assert calls.operand(mn.t(), None, True, [], in_kernel=True)[1] is False  # given K-major
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", "transpose=0")
    assert not calls.operand(mn.t(), mn, True, [], in_kernel=True)[1]
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", "transpose=1")
    assert calls.operand(mn.t(), mn, True, [], in_kernel=False)[1]


def test_transpose_in_kernel_only_where_memory_bound():
    """The choices the H200 measurements in heuristics/grouped.py's NOTES call for."""
    def batched(batch, m, n, k, recipe=RECIPE_1x128_128x128):
        return GemmProblem(m, n, k, recipe, E4M3, E4M3, torch.bfloat16, "batched", batch)
    per_tensor = Recipe(1, -1, -1)

    def both(batch, m, n, k):  # bytes of A and B
        return batch * k * (m + n)
    assert grouped.transpose_in_kernel(batched(64, 128, 7168, 512, per_tensor), both(64, 128, 7168, 512))
    assert grouped.transpose_in_kernel(batched(64, 128, 7168, 512, per_tensor), 64 * 7168 * 512)  # weights only
    assert grouped.transpose_in_kernel(batched(128, 512, 128, 512), both(128, 512, 128, 512))
    assert not grouped.transpose_in_kernel(batched(16, 4096, 4096, 4096, per_tensor), both(16, 4096, 4096, 4096))
    assert not grouped.transpose_in_kernel(batched(8, 8192, 8192, 8192), both(8, 8192, 8192, 8192))
    for groups, k_per_group, m, n in ((4, 8192, 4096, 7168), (16, 1024, 7168, 2048), (16, 1024, 4096, 4096)):
        weight_grad = GemmProblem(m, n, groups * k_per_group, Recipe(1, 1, 128), E4M3, E4M3, torch.float32,
                                  "ragged_k", groups)
        assert not grouped.transpose_in_kernel(weight_grad, groups * k_per_group * (m + n))


def test_mn_major_tiles_fit_the_transposing_kernel():
    """M-major A: no cluster pair shares it; N-major B: 64/128-wide tiles; batched promoted: 64 rows."""
    for mn_major, mode, recipe_gn in ((1, "batched", -1), (2, "batched", -1), (3, "ragged_k", 1), (2, "per_expert", 128),
                                      (3, "batched", 128), (1, "per_token", 128)):
        recipe = {-1: (1, -1, -1), 1: (1, 1, 128), 128: (1, 128, 128)}[recipe_gn]
        out = torch.float32 if mode == "ragged_k" else torch.bfloat16
        problem = GemmProblem(4096, 4096, 8192, Recipe(*recipe), E4M3, E4M3, out, mode, 8, mn_major)
        config = grouped.choose(problem, 512, SM90_NO_DEVICE, 132, "", 128 if mode == "per_token" else 0)
        assert config.block_m in (64, 128) and config.block_n <= 128
        assert not (mn_major & 1 and config.cluster_n > 1)
        assert not (mn_major & 2) or config.block_n % 64 == 0
        assert not (mode == "batched" and recipe_gn > 0) or config.block_m == 64
    packed = GemmProblem(4096, 4096, 8192, RECIPE_1x128_128x128, E4M3, E4M3, torch.bfloat16, "per_expert", 8, 1)
    try:
        grouped.choose(packed, 512, SM90_NO_DEVICE, 132)
    except ValueError as exc:
        assert "M-major" in str(exc)
    else:
        raise AssertionError("an M-major A in packed segments must be refused")
