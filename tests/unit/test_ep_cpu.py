"""mategemm.ep without a GPU: the pure routing, packing and combine functions by hand; the layer in
one process and on 2 and 4 gloo ranks (spawned) with the float64 reference experts, against the
single-process float64 reference of the same experts and routing; the default experts' call path
on fake CUDA tensors."""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import ep_ranks
from ep_ranks import build, draw, forward, scenario
from fake_device import NoLaunch, recorded_specs
from mategemm import ep
from mategemm.kernels import sm90_fp8_gemm_blockscaled
from mategemm.quant import per_token_cast_to_fp8
from mategemm.runtime import device as rt_device
from mategemm.testing import moe_layer as ref

E4M3 = torch.float8_e4m3fn
FLOAT64_CLOSE = dict(rtol=1e-12, atol=1e-12)  # the reference sums in expert order, the layer in slot order
BF16_CLOSE = dict(rtol=2 ** -7, atol=2 ** -7)  # one bf16 rounding, from fp32 vs from float64


# ---------------------------------------------------------------- pure functions


def test_route_pairs_by_hand():
    owners = torch.tensor([0, 0, 1, 1, 2, 2])
    ids = torch.tensor([[4, 0], [2, 5], [0, 6], [-1, 1]], dtype=torch.int32)
    route = ep.route_pairs(ids, owners, 3)
    assert route.dest.tolist() == [2, 0, 1, 2, 0, 3, 3, 0]
    assert route.counts.tolist() == [3, 1, 2, 2]
    assert route.rank_in_dest.tolist() == [0, 0, 0, 1, 1, 0, 1, 2]
    assert ep.packed_rows(route).tolist() == [4, 0, 3, 5, 1, -1, -1, 2]
    assert ep.fixed_rows(route, 2).tolist() == [4, 0, 2, 5, 1, -1, -1, -1]  # rank 0's third pair: no room
    empty = ep.route_pairs(torch.empty((0, 2), dtype=torch.int64), owners, 3)
    assert empty.counts.tolist() == [0, 0, 0, 0] and ep.packed_rows(empty).numel() == 0


def test_expert_placement():
    assert ep.even_expert_ranges(8, 4) == ((0, 2), (2, 4), (4, 6), (6, 8))
    with pytest.raises(ValueError, match="not divisible by the group's 3 ranks; pass expert_ranges"):
        ep.even_expert_ranges(8, 3)
    assert ep.expert_owners(((0, 1), (1, 4), (4, 5)), 5, "cpu").tolist() == [0, 1, 1, 1, 2]
    assert ep.local_expert_map((1, 4), 5, "cpu").tolist() == [-1, 0, 1, 2, -1]


@pytest.mark.parametrize("dtype", [torch.bfloat16, E4M3])
def test_row_layout_keeps_operands_aligned(dtype):
    layout = ep.RowLayout(384, dtype)
    assert layout.row_bytes % ep.ROW_ALIGN == 0 and layout.row_bytes >= layout.id_offset + 4
    rows = torch.zeros((3, layout.row_bytes), dtype=torch.uint8)
    hidden, scale, ids = layout.unpack(rows)
    assert hidden.shape == (3, 384) and hidden.dtype == dtype and hidden.stride(1) == 1
    assert hidden.stride(0) * hidden.element_size() == layout.row_bytes
    assert (scale is None) == (dtype == torch.bfloat16)
    if scale is not None:
        assert scale.shape == (3, 3) and scale.dtype == torch.float32
    assert ids.shape == (3,) and ids.dtype == torch.int32


def test_pack_pairs_writes_each_pair_to_its_row_and_marks_the_rest_empty():
    layout = ep.RowLayout(128, E4M3)
    x, scale = per_token_cast_to_fp8(torch.randn(2, 128).to(torch.bfloat16))
    ids = torch.tensor([[5, 1], [3, 9]], dtype=torch.int32)
    send = torch.full((5, layout.row_bytes), 7, dtype=torch.uint8)
    ep.pack_pairs(layout, send, torch.tensor([2, 0, -1, 3]), x, scale, ids)
    hidden, scales, expert_ids = layout.unpack(send[:-1])
    assert expert_ids.tolist() == [1, -1, 5, 9]
    for row, token in ((0, 0), (2, 0), (3, 1)):
        assert torch.equal(hidden[row].view(torch.uint8), x[token].view(torch.uint8))
        assert torch.equal(scales[row], scale[token])


def test_combine_adds_in_slot_order_once_rounded():
    g = torch.Generator().manual_seed(1)
    returned = torch.randn((6, 256), generator=g).to(torch.bfloat16)
    returned[5] = float("nan")  # a dropped pair's row must not leak
    rows = torch.tensor([3, 0, 5, 1, 4, 2])
    weights = torch.rand((3, 2), generator=g)
    dropped = torch.tensor([3, 0, -1, 1, 4, 2])
    out = ep.combine(returned, dropped, weights, torch.bfloat16)
    want = torch.zeros((3, 256))
    for j in range(2):
        for m in range(3):
            r = dropped[2 * m + j]
            if r >= 0:
                want[m] += weights[m, j] * returned[r].float()
    assert torch.equal(out, want.to(torch.bfloat16))
    assert torch.isfinite(out).all()
    full = ep.combine(returned, rows, weights, torch.float64)
    assert full.dtype == torch.float64 and torch.isnan(full[1]).all()
    into = torch.empty((3, 256), dtype=torch.float32)
    assert ep.combine(returned, dropped, weights, torch.float32, into) is into


def test_reference_experts_give_each_row_its_experts_output():
    g = torch.Generator().manual_seed(2)
    weights = ref.make_moe_layer_weights(3, 128, 128, "cpu", g)
    x, scale = per_token_cast_to_fp8(torch.randn(5, 128, generator=g).to(torch.bfloat16))
    ids = torch.tensor([4, -1, 2, 0, 3], dtype=torch.int32)  # global ids; this rank owns 2, 3, 4
    expert_map = ep.local_expert_map((2, 5), 6, "cpu")
    y = ref.reference_experts(**weights, expert_map=expert_map)(x, scale, ids)
    assert y.dtype == torch.bfloat16 and torch.equal(y[[1, 3]], torch.zeros(2, 128, dtype=torch.bfloat16))
    live = [0, 2, 4]
    want = ref.fused_moe_reference(x[live], **weights, topk_weights=torch.ones(3, 1), topk_ids=ids[live, None] - 2,
                                   hidden_states_scale=scale[live])
    assert torch.equal(y[live].double(), want)


# ---------------------------------------------------------------- one process


def expected(spec: dict, data: dict) -> list[torch.Tensor]:
    """Per rank: the float64 reference of the whole layer on one process, the pairs the layer drops
    (ids out of range, or past max_pairs_per_peer of their rank) given weight 0."""
    ranges = ep_ranks.expert_ranges(spec)
    owners = ep.expert_owners(ranges, spec["experts"], "cpu")
    capacity = spec["layer"].get("max_pairs_per_peer", math.inf)
    outs = []
    for inputs in data["ranks"]:
        ids, weights = inputs["topk_ids"].clone(), inputs["topk_weights"].clone()
        kept = {}
        for p, g in enumerate(ids.flatten().tolist()):
            m, j = divmod(p, spec["topk"])
            rank = int(owners[g]) if 0 <= g < spec["experts"] else None
            kept[rank] = kept.get(rank, 0) + 1
            if rank is None or kept[rank] > capacity:
                ids[m, j], weights[m, j] = 0, 0.0
        outs.append(ref.fused_moe_reference(inputs["hidden_states"], **data["weights"], topk_weights=weights,
                                            topk_ids=ids, hidden_states_scale=inputs["hidden_states_scale"]))
    return outs


def single_process(spec: dict, data: dict) -> list[torch.Tensor]:
    """Per rank: the layer with every expert on one process, run once on all ranks' tokens."""
    total = sum(spec["tokens"])
    layer = build(spec, data["weights"], (0, spec["experts"]),
                  **(dict(max_tokens_per_rank=max(total, 1)) if spec["mode"] == "low_latency" else {}))
    inputs = {k: None if data["ranks"][0][k] is None else torch.cat([r[k] for r in data["ranks"]])
              for k in data["ranks"][0]}
    return list(forward(layer, inputs).split(spec["tokens"]))


def check_close(spec: dict, got: torch.Tensor, want: torch.Tensor) -> None:
    close = FLOAT64_CLOSE if spec["out_dtype"] == torch.float64 else BF16_CLOSE
    assert got.dtype == spec["out_dtype"]
    torch.testing.assert_close(got.double(), want, **close)


SINGLE = [scenario("uniform", [9], topk=3),
          scenario("fp8_input", [7], topk=2, input_dtype=E4M3),
          scenario("topk_1", [5], topk=1),
          scenario("topk_8", [4], topk=8),
          scenario("one_expert", [6], routing="one_expert"),
          scenario("duplicates", [6], routing="duplicates"),
          scenario("no_tokens", [0]),
          scenario("bf16_out", [8], topk=4, out_dtype=torch.bfloat16)]


@pytest.mark.parametrize("mode", ep.MODES)
@pytest.mark.parametrize("spec", SINGLE, ids=[s["name"] for s in SINGLE])
def test_one_process_equals_the_reference(spec, mode):
    spec = dict(spec, mode=mode, layer=dict(max_tokens_per_rank=12) if mode == "low_latency" else {})
    data = draw(spec)
    layer = build(spec, data["weights"], (0, spec["experts"]), **spec["layer"])
    out = forward(layer, data["ranks"][0])
    check_close(spec, out, expected(spec, data)[0])
    assert int(layer.dropped_pairs) == 0


def test_a_one_rank_gloo_group_runs_the_collectives(tmp_path):
    spec = scenario("one_rank", [6], topk=2, mode="low_latency", max_tokens_per_rank=8)
    data = draw(spec)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        outs = {}
        for mode, layer_args in (("low_latency", spec["layer"]), ("throughput", {})):
            layer = build(dict(spec, mode=mode), data["weights"], (0, 8), **layer_args)
            assert layer.group is dist.group.WORLD
            outs[mode] = forward(layer, data["ranks"][0])
    finally:
        dist.destroy_process_group()
    check_close(spec, outs["low_latency"], expected(spec, data)[0])
    assert torch.equal(outs["low_latency"], outs["throughput"])


def test_throughput_reads_the_counts_on_the_host_once():
    """The guard low_latency calls run under does catch the throughput mode's one synchronisation."""
    spec = scenario("sync", [4])
    data = draw(spec)
    layer = build(spec, data["weights"], (0, 8))
    with pytest.raises(AssertionError, match="host synchronisation: Tensor.tolist"):
        with ep_ranks.no_host_sync():
            layer(**data["ranks"][0])
    assert torch.Tensor.tolist is not None and torch.tensor([1]).tolist() == [1]  # restored


def test_low_latency_drops_pairs_past_a_peers_capacity():
    spec = scenario("capacity", [6], topk=2, mode="low_latency", max_tokens_per_rank=6, max_pairs_per_peer=5)
    data = draw(spec)
    layer = build(spec, data["weights"], (0, 8), **spec["layer"])
    out = forward(layer, data["ranks"][0])
    assert int(layer.dropped_pairs) == 12 - 5
    check_close(spec, out, expected(spec, data)[0])


def test_out_of_range_ids_raise_in_throughput_and_drop_in_low_latency():
    spec = scenario("ids", [3], routing="out_of_range")
    data = draw(spec)
    layer = build(spec, data["weights"], (0, 8))
    with pytest.raises(ValueError, match=r"topk_ids must be in \[0, 8\): ids outside it \(rank: count\) \{0: 1\}"):
        layer(**data["ranks"][0])
    spec = dict(spec, mode="low_latency", layer=dict(max_tokens_per_rank=3))
    layer = build(spec, data["weights"], (0, 8), **spec["layer"])
    out = forward(layer, data["ranks"][0])
    assert int(layer.dropped_pairs) == 1
    check_close(spec, out, expected(spec, data)[0])


def test_low_latency_refuses_more_tokens_than_its_buffers_before_moving_any(monkeypatch):
    spec = scenario("too_many", [5], mode="low_latency", max_tokens_per_rank=4)
    data = draw(spec)
    layer = build(spec, data["weights"], (0, 8), **spec["layer"])
    monkeypatch.setattr(ep, "all_to_all", lambda *args: pytest.fail("communicated"))
    with pytest.raises(ValueError, match="5 tokens; the low_latency buffers hold max_tokens_per_rank = 4"):
        layer(**data["ranks"][0])


# ---------------------------------------------------------------- argument checks

def _weights(experts=4, hidden=128, inter=128):
    return ref.make_moe_layer_weights(experts, hidden, inter, "cpu", torch.Generator().manual_seed(0))


def _experts(*args):
    raise AssertionError("not called")


BAD_LAYER = [
    (dict(num_experts=6), ValueError, r"w1 holds 4 experts; rank 0 owns experts \[0, 6\)"),
    (dict(num_experts=0), ValueError, "num_experts must be at least 1"),
    (dict(topk=2.0), TypeError, "topk must be an int"),
    (dict(group="world"), TypeError, "group must be a torch.distributed ProcessGroup"),
    (dict(expert_ranges=[(0, 2), (2, 4)]), ValueError, r"one \(start, stop\) per rank of the group \(1\)"),
    (dict(expert_ranges=[(0, 3)]), ValueError, "every expert in \\[0, 4\\) to exactly one rank"),
    (dict(expert_ranges=[(1, 0)]), ValueError, r"expert_ranges\[0\] must satisfy 0 <= start < stop"),
    (dict(expert_ranges=[3]), TypeError, "a sequence of \\(start, stop\\) pairs"),
    (dict(mode="fast"), ValueError, "mode must be one of"),
    (dict(mode="low_latency"), ValueError, "needs max_tokens_per_rank"),
    (dict(mode="low_latency", max_tokens_per_rank=2, max_pairs_per_peer=5), ValueError,
     "max_pairs_per_peer must be at most max_tokens_per_rank x topk = 4"),
    (dict(max_tokens_per_rank=2), ValueError, "of mode 'low_latency' only"),
    (dict(input_dtype=torch.float16), TypeError, "input_dtype must be one of"),
    (dict(out_dtype=torch.float16), TypeError, "out_dtype must be one of"),
    (dict(activation="gelu"), ValueError, "activation must be one of"),
    (dict(activation="swigluoai"), ValueError, "configure the default experts"),
    (dict(gemm1_alpha=1.0), ValueError, "apply to activation 'swigluoai' only"),
    (dict(experts=None), ValueError, "the default experts run mategemm.fused_moe on a CUDA device"),
    (dict(experts=3), TypeError, "experts must be callable"),
]


@pytest.mark.parametrize("change,error,message", BAD_LAYER, ids=[m for _, _, m in BAD_LAYER])
def test_bad_layer_arguments_are_named(change, error, message):
    w = _weights()
    kwargs = dict(num_experts=4, topk=2, experts=_experts) | change
    with pytest.raises(error, match=message):
        ep.EPMoE(w["w1"], w["w2"], w["w1_scale"], w["w2_scale"], **kwargs)


def test_bad_weights_are_named():
    w = _weights()
    with pytest.raises(ValueError, match="w2 must have shape"):
        ep.EPMoE(w["w1"], w["w2"][:, :, :0], w["w1_scale"], w["w2_scale"], num_experts=4, topk=2, experts=_experts)
    with pytest.raises(TypeError, match="w1 must have dtype"):
        ep.EPMoE(w["w1"].float(), w["w2"], w["w1_scale"], w["w2_scale"], num_experts=4, topk=2, experts=_experts)


def _call(**change):
    tokens = 3
    args = dict(hidden_states=torch.zeros((tokens, 128), dtype=torch.bfloat16),
                topk_weights=torch.ones((tokens, 2)), topk_ids=torch.zeros((tokens, 2), dtype=torch.int32))
    return args | change


BAD_CALL = [
    (dict(hidden_states=torch.zeros((3, 128))), TypeError, "hidden_states must have dtype"),
    (dict(hidden_states=torch.zeros((3, 256), dtype=torch.bfloat16)), ValueError, r"must be \(M, 128\)"),
    (dict(hidden_states=torch.zeros((128, 3), dtype=torch.bfloat16).t()), ValueError, "contiguous along its last"),
    (dict(hidden_states_scale=torch.ones((3, 1))), ValueError, "goes with input_dtype torch.float8_e4m3fn only"),
    (dict(topk_ids=torch.zeros((3, 3), dtype=torch.int32)), ValueError, r"topk_ids must have shape \(3, 2\)"),
    (dict(topk_ids=torch.zeros((3, 2))), TypeError, "topk_ids must have dtype"),
    (dict(topk_weights=torch.ones((3, 2), dtype=torch.float64)), TypeError, "topk_weights must have dtype"),
    (dict(out=torch.empty((3, 128))), TypeError, "out must have dtype"),
    (dict(out=torch.empty((2, 128), dtype=torch.bfloat16)), ValueError, "out must have shape"),
    (dict(topk_ids=torch.zeros((3, 2), dtype=torch.int32, device="meta")), ValueError,
     "topk_ids is on meta, expected cpu"),
]


@pytest.mark.parametrize("change,error,message", BAD_CALL, ids=[m for _, _, m in BAD_CALL])
def test_bad_call_arguments_are_named_before_anything_moves(monkeypatch, change, error, message):
    w = _weights()
    layer = ep.EPMoE(w["w1"], w["w2"], w["w1_scale"], w["w2_scale"], num_experts=4, topk=2, experts=_experts)
    monkeypatch.setattr(ep, "all_to_all", lambda *args: pytest.fail("communicated"))
    with pytest.raises(error, match=message):
        layer(**_call(**change))


def test_fp8_input_needs_its_scales():
    w = _weights()
    layer = ep.EPMoE(w["w1"], w["w2"], w["w1_scale"], w["w2_scale"], num_experts=4, topk=2, input_dtype=E4M3,
                     experts=_experts)
    with pytest.raises(ValueError, match="FP8 hidden_states need hidden_states_scale"):
        layer(**_call(hidden_states=torch.zeros((3, 128), dtype=E4M3)))
    with pytest.raises(ValueError, match="hidden_states_scale must have shape"):
        layer(**_call(hidden_states=torch.zeros((3, 128), dtype=E4M3), hidden_states_scale=torch.ones(3, 2)))


def test_experts_must_return_a_row_per_row():
    w = _weights()
    layer = ep.EPMoE(w["w1"], w["w2"], w["w1_scale"], w["w2_scale"], num_experts=4, topk=2,
                     experts=lambda x, s, ids: x[:, :64].float())
    with pytest.raises(ValueError, match=r"experts must return a floating \(6, 128\) tensor, got \(6, 64\)"):
        layer(**_call())


# ---------------------------------------------------------------- the default experts on a fake GPU


@pytest.mark.parametrize("input_dtype", [torch.bfloat16, E4M3])
def test_default_experts_run_fused_moe_on_the_received_rows(monkeypatch, input_dtype):
    """On fake CUDA tensors, up to the kernels: a low_latency layer with the default experts, whose
    fused_moe accepts the received rows as they lie in the receive buffer (strided views) with the
    rank's expert_map. (Fake CUDA tensors of a CPU build of torch cannot copy, so the exchange and
    the combine run in the gloo tests.)"""
    seen = []
    real = ep.api.fused_moe
    monkeypatch.setattr(ep.api, "fused_moe", lambda *args, **kwargs: seen.append(kwargs) or real(*args, **kwargs))
    with recorded_specs(monkeypatch) as asked:
        monkeypatch.setattr(sm90_fp8_gemm_blockscaled, "Launch", NoLaunch)
        monkeypatch.setattr(rt_device, "run_on_current_stream", lambda index, fn, *args: None)
        cuda = lambda *shape, dtype=torch.float32: torch.empty(shape, dtype=dtype, device="cuda")  # noqa: E731
        experts, hidden, inter = 4, 256, 128
        layer = ep.EPMoE(cuda(experts, 2 * inter, hidden, dtype=E4M3), cuda(experts, hidden, inter, dtype=E4M3),
                         cuda(experts, 2 * inter // 128, hidden // 128), cuda(experts, hidden // 128, inter // 128),
                         num_experts=experts, topk=2, mode="low_latency", max_tokens_per_rank=8,
                         input_dtype=input_dtype, activation="swiglustep")
        x, scale, _ = layer.layout.unpack(layer.received)
        y = layer.experts(x, scale, cuda(16, dtype=torch.int32))
    assert y.shape == (16, hidden) and y.dtype == torch.bfloat16
    (kwargs,) = seen
    assert kwargs["expert_map"].shape == (experts,) and kwargs["global_num_experts"] == experts
    assert kwargs["activation"] == "swiglustep" and (kwargs["hidden_states_scale"] is None) == (scale is None)
    assert {spec.kernel for spec in asked} == {"sm90_fp8_moe_layer", "sm90_fp8_gemm_blockscaled"}


# ---------------------------------------------------------------- ranks


TWO_RANKS = [
    scenario("uniform", [5, 3]),
    scenario("uniform_ll", [5, 3], mode="low_latency", max_tokens_per_rank=6),
    scenario("fp8_input", [4, 6], topk=3, input_dtype=E4M3),
    scenario("fp8_input_ll", [4, 6], topk=3, input_dtype=E4M3, mode="low_latency", max_tokens_per_rank=6),
    scenario("a_rank_without_tokens", [0, 6]),
    scenario("a_rank_without_tokens_ll", [0, 6], mode="low_latency", max_tokens_per_rank=6),
    scenario("no_remote_pairs", [4, 4], routing="local"),
    scenario("no_remote_pairs_ll", [4, 4], routing="local", mode="low_latency", max_tokens_per_rank=4),
    scenario("one_expert", [3, 5], routing="one_expert"),
    scenario("one_expert_ll", [3, 5], routing="one_expert", mode="low_latency", max_tokens_per_rank=5),
    scenario("duplicates", [4, 4], routing="duplicates"),
    scenario("topk_1_ll", [7, 2], topk=1, mode="low_latency", max_tokens_per_rank=7),
    scenario("topk_8", [3, 4], topk=8),
    scenario("topk_8_ll", [3, 4], topk=8, mode="low_latency", max_tokens_per_rank=4),
    scenario("bf16_out", [5, 5], out_dtype=torch.bfloat16),
    scenario("bf16_out_ll", [5, 5], out_dtype=torch.bfloat16, mode="low_latency", max_tokens_per_rank=5),
    scenario("out_of_range_ll", [3, 3], routing="out_of_range", mode="low_latency", max_tokens_per_rank=3),
    scenario("capacity_ll", [6, 6], routing="skewed", mode="low_latency", max_tokens_per_rank=6,
             max_pairs_per_peer=4, seed=3),
]
TWO_RANK_ERRORS = [
    (scenario("out_of_range", [3, 3], routing="out_of_range"),
     r"ValueError: topk_ids must be in \[0, 8\): ids outside it \(rank: count\) \{1: 1\}"),
    (scenario("too_many_tokens_ll", [3, 3], mode="low_latency", max_tokens_per_rank=2),
     "ValueError: hidden_states has 3 tokens; the low_latency buffers hold max_tokens_per_rank = 2"),
    (scenario("settings_differ", [2, 2], mode="low_latency", max_tokens_per_rank=2,
              rank_layer={1: dict(max_pairs_per_peer=3)}),
     "ValueError: EPMoE settings differ between ranks: max_pairs_per_peer of rank [01] differs"),
]
FOUR_RANKS = [
    scenario("ragged", [3, 0, 7, 1], topk=4),
    scenario("ragged_ll", [3, 0, 7, 1], topk=4, mode="low_latency", max_tokens_per_rank=7),
    scenario("uneven_ranges", [2, 5, 4, 3], topk=3, routing="skewed", expert_ranges=((0, 1), (1, 4), (4, 6), (6, 8))),
    scenario("uneven_ranges_ll", [2, 5, 4, 3], topk=3, routing="skewed", mode="low_latency", max_tokens_per_rank=5,
             expert_ranges=((0, 1), (1, 4), (4, 6), (6, 8))),
    scenario("fp8_topk_1_ll", [4, 4, 4, 4], topk=1, input_dtype=E4M3, mode="low_latency", max_tokens_per_rank=4),
    scenario("one_expert", [2, 2, 2, 2], routing="one_expert"),
]
FOUR_RANK_ERRORS = [
    (scenario("out_of_range", [1, 2, 0, 2], routing="out_of_range"),
     r"ValueError: topk_ids must be in \[0, 8\): ids outside it \(rank: count\) \{3: 1\}"),
]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    specs = TWO_RANKS + [spec for spec, _ in TWO_RANK_ERRORS]
    return ep_ranks.run_ranks(2, specs, tmp_path_factory.mktemp("two_ranks"))


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    specs = FOUR_RANKS + [spec for spec, _ in FOUR_RANK_ERRORS]
    return ep_ranks.run_ranks(4, specs, tmp_path_factory.mktemp("four_ranks"))


def check_ranks(spec: dict, results: list[dict]) -> None:
    data = draw(spec)
    got = [r[spec["name"]] for r in results]
    assert all("error" not in g for g in got), [g.get("error") for g in got]
    for rank, (g, want) in enumerate(zip(got, expected(spec, data))):
        assert g["out"].shape == (spec["tokens"][rank], ep_ranks.HIDDEN)
        check_close(spec, g["out"], want)
    if "max_pairs_per_peer" not in spec["layer"]:
        # one process holding every expert: the same pairs, outputs and order of additions
        for g, single in zip(got, single_process(spec, data)):
            assert torch.equal(g["out"], single)
    return got


@pytest.mark.parametrize("spec", TWO_RANKS, ids=[s["name"] for s in TWO_RANKS])
def test_two_ranks_equal_one_process(two_ranks, spec):
    got = check_ranks(spec, two_ranks)
    dropped = [g["dropped"] for g in got]
    if spec["name"] == "out_of_range_ll":
        assert dropped == [0, 1]
    elif spec["name"] == "capacity_ll":
        assert sum(dropped) > 0
    else:
        assert dropped == [0, 0]


@pytest.mark.parametrize("spec,message", TWO_RANK_ERRORS, ids=[s["name"] for s, _ in TWO_RANK_ERRORS])
def test_two_ranks_raise_together(two_ranks, spec, message):
    for results in two_ranks:
        assert re.search(message, results[spec["name"]].get("error", "")), results[spec["name"]]


@pytest.mark.parametrize("spec", FOUR_RANKS, ids=[s["name"] for s in FOUR_RANKS])
def test_four_ranks_equal_one_process(four_ranks, spec):
    got = check_ranks(spec, four_ranks)
    assert [g["dropped"] for g in got] == [0] * 4


@pytest.mark.parametrize("spec,message", FOUR_RANK_ERRORS, ids=[s["name"] for s, _ in FOUR_RANK_ERRORS])
def test_four_ranks_raise_together(four_ranks, spec, message):
    for results in four_ranks:
        assert re.search(message, results[spec["name"]].get("error", "")), results[spec["name"]]


# ---------------------------------------------------------------- the example


def test_the_torchrun_example_runs_on_two_cpu_ranks():
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(root / "examples" / "ep_moe.py"), "--backend", "gloo", "--reference", "--experts", "8",
               "--topk", "3", "--hidden", "256", "--intermediate", "128", "--input-dtype", "fp8"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = re.findall(r"rank (\d)/2 (\w+) +eager: (\d+) tokens.*: (OK|MISMATCH)", done.stdout)
    assert sorted(lines) == [("0", "low_latency", "8", "OK"), ("0", "throughput", "8", "OK"),
                             ("1", "low_latency", "9", "OK"), ("1", "throughput", "9", "OK")]
