"""The fused MoE layer's float64 reference and input maker (mategemm.testing.moe_layer) on the CPU:
activations against their formulas written out per element, the reference against a naive loop over
(token, slot) pairs with its own dequantisation and 1x128 quantisation, and the maker's invariants."""
import math

import pytest
import torch

from mategemm.moe_layer import activation_params
from mategemm.testing.moe_layer import (fused_moe_reference, gated_activation, make_moe_layer_inputs,
                                        route_counts)

FP8 = torch.float8_e4m3fn
BF16 = torch.bfloat16
K = 256
ACTS = ("silu", "swigluoai", "swiglustep")


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(20240611)


# ---------------------------------------------------------------- independent formulas

def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def act_formula(g: float, u: float, activation: str, alpha=None, beta=None, limit=None) -> float:
    """One element of the gated activation, written from its definition."""
    alpha, beta, limit = activation_params(activation, alpha, beta, limit)
    if activation == "silu":
        if limit is not None:
            g = min(g, limit)
            u = max(-limit, min(u, limit))
        return g * _sigmoid(g) * u
    if activation == "swigluoai":
        g = min(g, limit)
        u = max(-limit, min(u, limit))
        return (u + beta) * g * _sigmoid(alpha * g)
    if activation == "swiglustep":
        return min(g * _sigmoid(g), limit) * max(-limit, min(u, limit))
    raise AssertionError(activation)


def act_formula_tensor(gate, up, activation, alpha=None, beta=None, limit=None) -> torch.Tensor:
    values = [act_formula(float(g), float(u), activation, alpha, beta, limit)
              for g, u in zip(gate.double().flatten().tolist(), up.double().flatten().tolist())]
    return torch.tensor(values, dtype=torch.float64).view(gate.shape)


def quant_dequant_1x128(v: torch.Tensor, whole_row: bool = False) -> torch.Tensor:
    """A 1-D float32 vector quantised to e4m3 per 128 elements (scale = max(amax, 1e-4) / 448, in
    float32), returned dequantised in float64. whole_row: one scale for the whole vector (a mistake)."""
    assert v.dtype == torch.float32 and v.dim() == 1
    group = v.numel() if whole_row else 128
    parts = []
    for start in range(0, v.numel(), group):
        seg = v[start:start + group]
        scale = torch.maximum(seg.abs().max(), torch.tensor(1e-4, dtype=torch.float32)) / 448.0
        parts.append((seg / scale).to(FP8).double() * scale.double())
    return torch.cat(parts)


def dequant_blocks(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """(rows, cols) e4m3 with one scale per 128x128 block -> float64, block by block."""
    out = torch.empty(w.shape, dtype=torch.float64)
    for i in range(w.shape[0] // 128):
        for j in range(w.shape[1] // 128):
            rows, cols = slice(i * 128, (i + 1) * 128), slice(j * 128, (j + 1) * 128)
            out[rows, cols] = w[rows, cols].double() * float(s[i, j])
    return out


def naive_moe(inp: dict, activation="silu", alpha=None, beta=None, limit=None, apply_on_input=False,
              swap_gate_up=False, round_h=True, whole_row_quant=False, weight_twice=False) -> torch.Tensor:
    """The layer one (token, slot) pair at a time. The flags after apply_on_input inject mistakes."""
    hs, hs_scale = inp["hidden_states"], inp["hidden_states_scale"]
    w1, w1s, w2, w2s = inp["w1"], inp["w1_scale"], inp["w2"], inp["w2_scale"]
    ids, weights, emap = inp["topk_ids"], inp["topk_weights"], inp["expert_map"]
    m_tokens, k = hs.shape
    n = w2.shape[2]
    out = torch.zeros((m_tokens, k), dtype=torch.float64)
    w1_cache, w2_cache = {}, {}
    for m in range(m_tokens):
        for j in range(ids.shape[1]):
            e = int(ids[m, j])
            if emap is not None:
                e = int(emap[e])
            if e < 0:
                continue
            if e not in w1_cache:
                w1_cache[e] = dequant_blocks(w1[e], w1s[e])
                w2_cache[e] = dequant_blocks(w2[e], w2s[e])
            w = weights[m, j]  # float32 scalar tensor
            if hs.dtype == FP8:
                x = torch.cat([hs[m, g * 128:(g + 1) * 128].double() * float(hs_scale[m, g])
                               for g in range(k // 128)])
                if apply_on_input:
                    x = x * float(w)
            else:
                row = hs[m].float()
                if apply_on_input:
                    row = row * w
                x = quant_dequant_1x128(row)
            h = torch.mv(w1_cache[e], x)
            if round_h:
                h = h.to(BF16).double()
            gate, up = (h[n:], h[:n]) if swap_gate_up else (h[:n], h[n:])
            a = act_formula_tensor(gate, up, activation, alpha, beta, limit)
            a = quant_dequant_1x128(a.float(), whole_row=whole_row_quant)
            y = torch.mv(w2_cache[e], a).to(BF16).double()
            coef = 1.0 if apply_on_input else float(w)
            if weight_twice:
                coef = float(w) * float(w)
            out[m] += coef * y
    return out


def reference(inp: dict, **kwargs) -> torch.Tensor:
    return fused_moe_reference(inp["hidden_states"], inp["w1"], inp["w2"], inp["w1_scale"], inp["w2_scale"],
                               inp["topk_weights"], inp["topk_ids"], expert_map=inp["expert_map"],
                               global_num_experts=inp["global_num_experts"],
                               hidden_states_scale=inp["hidden_states_scale"], **kwargs)


def assert_same(ref: torch.Tensor, naive: torch.Tensor) -> None:
    assert ref.dtype == torch.float64 and ref.shape == naive.shape
    torch.testing.assert_close(ref, naive, rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------- activations

def _grid(limit: float):
    points = [-3 * limit, -limit - 1, -limit, -limit + 0.25, -2.0, -0.5, 0.0, 0.3, 1.0,
              limit - 0.25, limit, limit + 1e-9, limit + 1, 3 * limit]
    g, u = torch.meshgrid(torch.tensor(points, dtype=torch.float64), torch.tensor(points, dtype=torch.float64),
                          indexing="ij")
    return g.contiguous(), u.contiguous()


@pytest.mark.parametrize("activation, params", [
    ("silu", {}), ("silu", {"limit": 7.0}), ("silu", {"limit": 2.5}),
    ("swigluoai", {}), ("swigluoai", {"alpha": 1.0, "beta": 0.5, "limit": 3.0}),
    ("swiglustep", {}), ("swiglustep", {"limit": 2.0}),
])
def test_activation_matches_formula(activation, params):
    limit = params.get("limit", activation_params(activation, None, None, None)[2]) or 7.0
    g, u = _grid(limit)
    got = gated_activation(g, u, activation, **params)
    assert got.dtype == torch.float64 and got.shape == g.shape
    torch.testing.assert_close(got, act_formula_tensor(g, u, activation, **params), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("activation", ACTS)
def test_activation_takes_bf16_and_fp32_and_computes_in_float64(activation, generator):
    g = (torch.randn(64, generator=generator) * 4).to(BF16)
    u = (torch.randn(64, generator=generator) * 4).to(BF16)
    for dtype in (BF16, torch.float32):
        got = gated_activation(g.to(dtype), u.to(dtype), activation)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, act_formula_tensor(g, u, activation), rtol=1e-14, atol=1e-14)


def test_activation_defaults_come_from_activation_params():
    g, u = _grid(7.0)
    for activation in ACTS:
        alpha, beta, limit = activation_params(activation, None, None, None)
        explicit = gated_activation(g, u, activation, alpha, beta, limit)
        assert torch.equal(gated_activation(g, u, activation), explicit)
    # an override is honoured, and differs from the default
    oai = gated_activation(g, u, "swigluoai")
    assert not torch.equal(gated_activation(g, u, "swigluoai", alpha=1.0), oai)
    assert not torch.equal(gated_activation(g, u, "swigluoai", beta=0.0), oai)
    assert not torch.equal(gated_activation(g, u, "swigluoai", limit=2.0), oai)
    # silu without a limit does not clamp
    big = torch.tensor([20.0], dtype=torch.float64)
    assert gated_activation(big, big, "silu").item() == pytest.approx(20.0 * _sigmoid(20.0) * 20.0, rel=1e-15)
    assert activation_params("silu", None, None, None)[2] is None


def test_activation_clamps_at_and_beyond_limit():
    d = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    lim = 3.0
    # swigluoai: gate clamped from above only, up on both sides; at the limit nothing changes
    at = gated_activation(d(lim), d(1.0), "swigluoai", limit=lim)
    assert torch.equal(gated_activation(d(lim + 5), d(1.0), "swigluoai", limit=lim), at)
    assert torch.equal(gated_activation(d(1.0), d(lim + 5), "swigluoai", limit=lim),
                       gated_activation(d(1.0), d(lim), "swigluoai", limit=lim))
    assert torch.equal(gated_activation(d(1.0), d(-lim - 5), "swigluoai", limit=lim),
                       gated_activation(d(1.0), d(-lim), "swigluoai", limit=lim))
    assert not torch.equal(gated_activation(d(-lim - 5), d(1.0), "swigluoai", limit=lim),
                           gated_activation(d(-lim), d(1.0), "swigluoai", limit=lim))
    # silu with a limit: same clamps
    assert torch.equal(gated_activation(d(lim + 1), d(-lim - 1), "silu", limit=lim),
                       gated_activation(d(lim), d(-lim), "silu", limit=lim))
    # swiglustep: silu(gate) capped at limit (gate itself is not clamped), up clamped
    out = gated_activation(d(10.0, -10.0), d(lim + 2, lim + 2), "swiglustep", limit=lim)
    assert out[0].item() == lim * lim
    assert out[1].item() == pytest.approx(-10.0 * _sigmoid(-10.0) * lim, rel=1e-15)
    # just below the cap, silu(gate) passes through
    g = 2.5  # silu(2.5) ~ 2.32 < 3
    assert gated_activation(d(g), d(1.0), "swiglustep", limit=lim).item() == pytest.approx(g * _sigmoid(g), rel=1e-15)


def test_unknown_activation_raises():
    x = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="activation"):
        gated_activation(x, x, "gelu")


# ---------------------------------------------------------------- reference against the naive loop

@pytest.mark.parametrize("m, n, e, topk, input_dtype, with_map, routing, activation, params", [
    (5, 128, 4, 2, BF16, False, "uniform", "silu", {}),
    (33, 256, 8, 4, BF16, True, "uniform", "swigluoai", {}),
    (33, 128, 6, 3, FP8, False, "skewed", "swiglustep", {}),
    (1, 256, 4, 1, FP8, True, "uniform", "silu", {}),
    (5, 128, 5, 2, BF16, False, "skewed", "swigluoai", {"gemm1_alpha": 1.0, "gemm1_beta": 0.5,
                                                        "gemm1_clamp_limit": 2.0}),
    (5, 128, 4, 3, FP8, True, "uniform", "silu", {"gemm1_clamp_limit": 1.5}),
    (33, 128, 4, 2, BF16, True, "skewed", "swiglustep", {"gemm1_clamp_limit": 1.0}),
])
def test_reference_matches_naive(m, n, e, topk, input_dtype, with_map, routing, activation, params, generator):
    inp = make_moe_layer_inputs(m, K, n, e, topk, input_dtype=input_dtype, routing=routing, expert_map=with_map,
                                device="cpu", generator=generator)
    got = reference(inp, activation=activation, **params)
    naive = naive_moe(inp, activation, params.get("gemm1_alpha"), params.get("gemm1_beta"),
                      params.get("gemm1_clamp_limit"))
    assert naive.abs().max() > 0.1
    assert_same(got, naive)


@pytest.mark.parametrize("input_dtype", [BF16, FP8])
def test_reference_catches_layer_mistakes(input_dtype, generator):
    """The comparison is tight enough that each of these mistakes fails it."""
    inp = make_moe_layer_inputs(5, K, 256, 4, 2, input_dtype=input_dtype, device="cpu", generator=generator)
    got = reference(inp, activation="swigluoai")
    assert_same(got, naive_moe(inp, "swigluoai"))
    for mistake in ({"swap_gate_up": True}, {"whole_row_quant": True}, {"weight_twice": True}, {"round_h": False}):
        wrong = naive_moe(inp, "swigluoai", **mistake)
        assert not torch.allclose(got, wrong, rtol=1e-9, atol=1e-10), mistake
    assert not torch.allclose(got, naive_moe(inp, "silu"), rtol=1e-9, atol=1e-10)


def test_int64_ids_and_default_global_num_experts(generator):
    inp = make_moe_layer_inputs(5, K, 128, 4, 2, expert_map=True, device="cpu", generator=generator)
    got = reference(inp)
    inp64 = dict(inp, topk_ids=inp["topk_ids"].long(), global_num_experts=-1)
    assert torch.equal(reference(inp64), got)
    assert_same(got, naive_moe(inp))


def test_all_tokens_off_rank_give_zeros(generator):
    inp = make_moe_layer_inputs(5, K, 128, 4, 3, expert_map=True, device="cpu", generator=generator)
    emap = inp["expert_map"].clone()
    emap[inp["topk_ids"].long().flatten()] = -1
    off = dict(inp, expert_map=emap)
    got = reference(off)
    assert got.shape == (5, K) and got.dtype == torch.float64
    assert torch.equal(got, torch.zeros(5, K, dtype=torch.float64))
    assert route_counts(off["topk_ids"], 4, emap) == [0, 0, 0, 0]


@pytest.mark.parametrize("input_dtype", [BF16, FP8])
def test_token_with_one_local_expert(input_dtype, generator):
    inp = make_moe_layer_inputs(4, K, 128, 4, 3, input_dtype=input_dtype, expert_map=True, num_global_experts=8,
                                device="cpu", generator=generator)
    emap = torch.tensor([-1, 2, -1, 0, -1, 3, 1, -1], dtype=torch.int32)
    ids = torch.tensor([[0, 5, 2],   # one local expert (global 5 -> local 3), in the middle slot
                        [0, 2, 4],   # none: a zero row
                        [1, 3, 6],   # three
                        [7, 4, 3]],  # one, in the last slot
                       dtype=torch.int32)
    inp = dict(inp, expert_map=emap, topk_ids=ids)
    got = reference(inp)
    assert_same(got, naive_moe(inp))
    assert torch.equal(got[1], torch.zeros(K, dtype=torch.float64))
    assert (got[[0, 2, 3]].abs().amax(dim=1) > 0).all()
    # token 0's row is its one pair's contribution alone
    alone = dict(inp, topk_ids=ids[:1, 1:2], topk_weights=inp["topk_weights"][:1, 1:2],
                 hidden_states=inp["hidden_states"][:1],
                 hidden_states_scale=None if input_dtype == BF16 else inp["hidden_states_scale"][:1])
    torch.testing.assert_close(reference(alone)[0], got[0], rtol=1e-12, atol=1e-12)
    assert route_counts(ids, 4, emap) == [2, 1, 1, 1]


@pytest.mark.parametrize("input_dtype, with_map", [(BF16, False), (FP8, False), (BF16, True), (FP8, True)])
def test_router_weight_on_input(input_dtype, with_map, generator):
    inp = make_moe_layer_inputs(33, K, 128, 4, 1, input_dtype=input_dtype, expert_map=with_map, device="cpu",
                                generator=generator)
    # weights of a top-1 router are not 1 here, so applying them on the input or the output differs
    inp["topk_weights"] = torch.rand((33, 1), generator=generator) * 0.9 + 0.05
    got = reference(inp, activation="silu", apply_router_weight_on_input=True)
    assert_same(got, naive_moe(inp, "silu", apply_on_input=True))
    assert not torch.allclose(got, reference(inp, activation="silu"), rtol=1e-3, atol=1e-6)


def test_empty_experts_are_not_read(generator):
    inp = make_moe_layer_inputs(5, K, 128, 4, 2, device="cpu", generator=generator)
    ids = torch.tensor([[0, 2], [2, 0], [0, 2], [2, 0], [0, 2]], dtype=torch.int32)
    inp["topk_ids"] = ids
    assert route_counts(ids, 4) == [5, 0, 5, 0]
    clean = reference(inp)
    # NaN weights and scales on the empty experts change nothing
    for key in ("w1", "w2"):
        inp[key] = inp[key].clone()
        inp[key].view(torch.uint8)[[1, 3]] = 0x7F  # e4m3 NaN
    for key in ("w1_scale", "w2_scale"):
        inp[key] = inp[key].clone()
        inp[key][[1, 3]] = float("nan")
    assert torch.equal(reference(inp), clean)
    assert_same(clean, naive_moe(inp))


@pytest.mark.parametrize("input_dtype", [BF16, FP8])
def test_single_token(input_dtype, generator):
    inp = make_moe_layer_inputs(1, K, 256, 8, 4, input_dtype=input_dtype, device="cpu", generator=generator)
    got = reference(inp, activation="swiglustep")
    assert got.shape == (1, K)
    assert_same(got, naive_moe(inp, "swiglustep"))


def test_no_tokens(generator):
    inp = make_moe_layer_inputs(0, K, 128, 4, 2, device="cpu", generator=generator)
    assert inp["topk_ids"].shape == (0, 2) and inp["hidden_states"].shape == (0, K)
    got = reference(inp)
    assert got.shape == (0, K) and got.dtype == torch.float64


@pytest.mark.parametrize("topk", [1, 2])
def test_all_tokens_on_one_expert(topk, generator):
    inp = make_moe_layer_inputs(33, K, 128, 4, topk, device="cpu", generator=generator)
    inp["topk_ids"] = torch.tensor([[2, 1][:topk]] * 33, dtype=torch.int32)
    got = reference(inp, activation="swigluoai")
    assert_same(got, naive_moe(inp, "swigluoai"))
    assert route_counts(inp["topk_ids"], 4) == ([0, 0, 33, 0] if topk == 1 else [0, 33, 33, 0])


def test_reference_rejects_bad_arguments(generator):
    inp = make_moe_layer_inputs(5, K, 128, 4, 2, input_dtype=FP8, device="cpu", generator=generator)
    with pytest.raises(ValueError, match="hidden_states_scale"):
        reference(dict(inp, hidden_states_scale=None))
    with pytest.raises(ValueError, match="global_num_experts"):
        reference(dict(inp, global_num_experts=8))
    with pytest.raises(ValueError, match="topk_ids"):
        reference(dict(inp, topk_ids=torch.full((5, 2), 4, dtype=torch.int32)))
    with pytest.raises(ValueError, match="activation"):
        reference(inp, activation="gelu")
    bf = make_moe_layer_inputs(5, K, 128, 4, 2, device="cpu", generator=generator)
    with pytest.raises(ValueError, match="hidden_states_scale"):
        reference(dict(bf, hidden_states_scale=inp["hidden_states_scale"]))


# ---------------------------------------------------------------- input maker and route_counts

@pytest.mark.parametrize("input_dtype, with_map", [(BF16, False), (FP8, False), (BF16, True), (FP8, True)])
def test_inputs_shapes_dtypes_and_routing_invariants(input_dtype, with_map, generator):
    m, n, e, topk = 33, 256, 6, 4
    inp = make_moe_layer_inputs(m, K, n, e, topk, input_dtype=input_dtype, expert_map=with_map,
                                device="cpu", generator=generator)
    assert inp["hidden_states"].shape == (m, K) and inp["hidden_states"].dtype == input_dtype
    if input_dtype == FP8:
        s = inp["hidden_states_scale"]
        assert s.shape == (m, K // 128) and s.dtype == torch.float32 and (s > 0).all()
        # per-token 1x128 groups: each group reaches the e4m3 maximum
        assert (inp["hidden_states"].float().abs().view(m, K // 128, 128).amax(dim=2) == 448).all()
    else:
        assert inp["hidden_states_scale"] is None
    assert inp["w1"].shape == (e, 2 * n, K) and inp["w1"].dtype == FP8
    assert inp["w1_scale"].shape == (e, 2 * n // 128, K // 128) and inp["w1_scale"].dtype == torch.float32
    assert inp["w2"].shape == (e, K, n) and inp["w2"].dtype == FP8
    assert inp["w2_scale"].shape == (e, K // 128, n // 128) and inp["w2_scale"].dtype == torch.float32
    for key in ("w1", "w2"):  # each 128x128 block quantised on its own
        blocks = inp[key].float().abs().unflatten(1, (-1, 128)).unflatten(3, (-1, 128))
        assert (blocks.amax(dim=(2, 4)) == 448).all()
    ids, weights = inp["topk_ids"], inp["topk_weights"]
    assert ids.shape == (m, topk) and ids.dtype == torch.int32
    assert weights.shape == (m, topk) and weights.dtype == torch.float32
    assert (weights > 0).all()
    torch.testing.assert_close(weights.double().sum(dim=1), torch.ones(m, dtype=torch.float64), rtol=0, atol=1e-6)
    for row in ids.tolist():
        assert len(set(row)) == topk
    g = inp["global_num_experts"]
    assert int(ids.min()) >= 0 and int(ids.max()) < g
    emap = inp["expert_map"]
    if with_map:
        assert g == 2 * e
        assert emap.shape == (g,) and emap.dtype == torch.int32
        assert int((emap == -1).sum()) == g - e
        assert sorted(emap[emap >= 0].tolist()) == list(range(e))
    else:
        assert emap is None and g == e
    # activations in a sane range: finite, neither tiny nor huge
    out = reference(inp, activation="swigluoai")
    assert torch.isfinite(out).all()
    rms = out.pow(2).mean().sqrt().item()
    assert 0.1 < rms < 50


def test_inputs_custom_global_experts_and_determinism():
    a = make_moe_layer_inputs(9, K, 128, 3, 2, expert_map=True, num_global_experts=10, device="cpu",
                              generator=torch.Generator().manual_seed(7))
    b = make_moe_layer_inputs(9, K, 128, 3, 2, expert_map=True, num_global_experts=10, device="cpu",
                              generator=torch.Generator().manual_seed(7))
    assert a["global_num_experts"] == 10 and a["expert_map"].shape == (10,)
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value.view(torch.uint8) if value.dtype == FP8 else value,
                               b[key].view(torch.uint8) if value.dtype == FP8 else b[key]), key
        else:
            assert value == b[key]


def _top_share(ids: torch.Tensor, num_global: int, fraction: float = 0.2) -> float:
    counts = sorted(torch.bincount(ids.long().flatten(), minlength=num_global).tolist(), reverse=True)
    hot = max(1, round(fraction * num_global))
    return sum(counts[:hot]) / ids.numel()


@pytest.mark.parametrize("num_experts, topk", [(10, 1), (20, 2), (20, 4)])
def test_skewed_routing_concentrates_on_a_fifth_of_the_experts(num_experts, topk, generator):
    skewed = make_moe_layer_inputs(2000, K, 128, num_experts, topk, routing="skewed", device="cpu",
                                   generator=generator)
    uniform = make_moe_layer_inputs(2000, K, 128, num_experts, topk, routing="uniform", device="cpu",
                                    generator=generator)
    assert _top_share(skewed["topk_ids"], num_experts) > 0.65
    assert _top_share(uniform["topk_ids"], num_experts) < 0.3
    for row in skewed["topk_ids"].tolist():
        assert len(set(row)) == topk


def test_input_maker_rejects_bad_arguments():
    with pytest.raises(ValueError, match="routing"):
        make_moe_layer_inputs(4, K, 128, 4, 2, routing="zipf", device="cpu")
    with pytest.raises(ValueError, match="multiples of 128"):
        make_moe_layer_inputs(4, 200, 128, 4, 2, device="cpu")
    with pytest.raises(ValueError, match="num_global_experts"):
        make_moe_layer_inputs(4, K, 128, 4, 2, num_global_experts=8, device="cpu")
    with pytest.raises(ValueError, match="num_global_experts"):
        make_moe_layer_inputs(4, K, 128, 4, 2, expert_map=True, num_global_experts=4, device="cpu")
    with pytest.raises(ValueError, match="topk"):
        make_moe_layer_inputs(4, K, 128, 4, 5, device="cpu")


def test_route_counts_against_a_count_by_hand(generator):
    for with_map in (False, True):
        inp = make_moe_layer_inputs(33, K, 128, 5, 3, expert_map=with_map, device="cpu", generator=generator)
        ids, emap = inp["topk_ids"], inp["expert_map"]
        by_hand = [0] * 5
        for gid in ids.flatten().tolist():
            local = gid if emap is None else int(emap[gid])
            if local >= 0:
                by_hand[local] += 1
        got = route_counts(ids, 5, emap)
        assert got == by_hand and all(isinstance(c, int) for c in got)
        if not with_map:
            assert sum(got) == 33 * 3
    assert route_counts(torch.tensor([[3]]), 4) == [0, 0, 0, 1]
    with pytest.raises(ValueError):
        route_counts(torch.tensor([[4]]), 4)
