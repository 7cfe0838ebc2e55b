"""Prepared-call reuse (mategemm.prepare's warm-call memo), operand staging (mategemm.plan and prepare) and the
grouped heuristic's bounds, without a GPU."""
import dataclasses
import math

import torch

from mategemm import plan, prepare
from mategemm.heuristics import grouped
from mategemm.runtime import calls
from mategemm.runtime.device import SM90_NO_DEVICE
from mategemm.types import GemmProblem, RECIPE_1x128_128x128, RECIPE_1x128_1x128

E4M3 = torch.float8_e4m3fn


def test_memo_key_tracks_tensor_layout_not_values():
    a = torch.zeros((4, 8))
    key = prepare.memo_key("x", a, (a, a), 3, None)
    a.fill_(1.0)  # new values, same tensor: the same call
    assert prepare.memo_key("x", a, (a, a), 3, None) == key
    assert prepare.memo_key("x", a.t(), (a, a), 3, None) != key  # other strides
    assert prepare.memo_key("x", torch.zeros((4, 8)), (a, a), 3, None) != key  # other address
    assert prepare.memo_key("x", a, (a, a), 4, None) != key  # other option


def test_memo_key_keys_option_tuples_by_value():
    """A recipe tuple such as scale_granularity_mnk is part of the call (once, every bmm_fp8 call
    that named one was checked and prepared again: tuples were taken for tensors)."""
    key = prepare.memo_key("x", (1, 128, 128), 3)
    assert key is not None and prepare.memo_key("x", (1, 128, 128), 3) == key
    assert prepare.memo_key("x", (1, 1, 128), 3) != key
    assert prepare.memo_key("x", (1, 128), (128, 3)) != prepare.memo_key("x", (1, 128, 128), (3,))


def test_memo_key_refuses_what_it_cannot_key():
    assert prepare.memo_key("x", {"a": 1}) is None   # unhashable
    assert prepare.memo_key("x", ([1], 2)) is None   # unhashable inside a tuple


def test_warm_calls_stay_bounded():
    cache = prepare.WarmCalls(limit=2)
    for i in range(5):
        cache.remember(("k", i), calls.PreparedCall(None, (), i))
    assert cache.get(("k", 4)).threshold == 4
    assert sum(cache.get(("k", i)) is not None for i in range(5)) <= 2
    cache.remember(None, calls.PreparedCall(None, (), 0))  # no key: nothing stored
    assert cache.get(None) is None
    cache.remember(("k", [1]), calls.PreparedCall(None, (), 0))  # unhashable: not memoised, no error
    assert cache.get(("k", [1])) is None


def test_a_copy_is_staged_only_when_planned():
    t = torch.arange(12.0).reshape(3, 4).t()
    staged = []
    assert prepare.operand(t, None, plan.AS_IS, staged) is t and not staged
    workspace = prepare.operand(t, None, plan.COPY, staged)
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


def staged(problem, a_view, copy=True, force=""):
    """How plan.staging has A (offered as a_view) reach the kernel, B given K-major."""
    return plan.staging(problem, prepare.operand_facts(a_view, copy), plan.Operand(), force)[1]


def test_operand_reads_mn_major_in_place_only_when_chosen_and_addressable():
    problem = GemmProblem(96, 256, 256, RECIPE_1x128_1x128, E4M3, E4M3, torch.float32, "ragged_k", 1)
    mn = fp8((256, 96))  # (K rows, M): a 96-byte row stride
    assert staged(problem, mn, force="transpose=1") == plan.IN_KERNEL
    assert staged(problem, mn, force="transpose=0") == plan.COPY
    assert staged(problem, mn, copy=False, force="transpose=0") == plan.AS_IS
    ragged = fp8((256, 100))[:, :90]  # a 100-byte row stride: TMA cannot read it
    assert staged(problem, ragged, force="transpose=1") == plan.COPY
    unstacked = fp8((2, 256 + 128, 96))[:, :256]  # groups not stacked row after row
    assert staged(problem, unstacked, force="transpose=1") == plan.COPY
    assert staged(problem, None, force="transpose=1") == plan.COPY  # given K-major: nothing to read MN-major
    workspace = prepare.operand(mn.t(), mn, plan.COPY, [])
    assert workspace.is_contiguous() and workspace.shape == (96, 256)
    assert prepare.operand(mn.t(), mn, plan.IN_KERNEL, []) is mn


def test_staging_sets_mn_major_and_follows_the_cost_model():
    """Without a forced choice: in the kernel where the GEMM is memory-bound anyway (a decode-like
    shape), copied where it is compute-bound; a packed mode's A is always copied."""
    a = plan.Operand(copy=True, mn_readable=True, mn_bytes=64 * 7168)
    b = plan.Operand(copy=True, mn_readable=True, mn_bytes=8 * 4096 * 7168)
    decode = GemmProblem(64, 4096, 7168, RECIPE_1x128_128x128, E4M3, E4M3, torch.bfloat16, "per_token", 8)
    assert plan.staging(decode, a, b, "") == (dataclasses.replace(decode, mn_major=3), plan.IN_KERNEL,
                                               plan.IN_KERNEL)
    big = plan.Operand(copy=True, mn_readable=True, mn_bytes=8192 * 8192 * 16)
    batched = GemmProblem(8192, 8192, 8192, RECIPE_1x128_128x128, E4M3, E4M3, torch.bfloat16, "batched", 16)
    assert plan.staging(batched, big, big, "")[1:] == (plan.COPY, plan.COPY)
    packed = dataclasses.replace(decode, group_mode="per_expert")
    problem, a_how, b_how = plan.staging(packed, a, b, "")
    assert (a_how, b_how, problem.mn_major) == (plan.COPY, plan.IN_KERNEL, 2)
