"""The MoE generators and float64 references (mategemm.testing.moe) on the CPU, against a naive
dequantise-and-matmul; and the grouped benchmark's pure parts (anchor matching, summary maths)."""
import json
import math
from pathlib import Path

import pytest
import torch

from mategemm.testing import calc_diff, moe

from benchkit import common, grouped_suite, peers

ROOT = Path(__file__).resolve().parents[2]
FP8 = torch.float8_e4m3fn


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)


def dequant_tokens(a, sfa):
    """(rows, k) fp8 with (rows, k/128) scales -> float64."""
    return a.double() * sfa.double().repeat_interleave(128, dim=-1)


def dequant_weights(b, sfb, n):
    """(n, k) fp8 with (ceil(n/g), k/128) scales, g = 128 or 1 -> float64."""
    gran = 1 if sfb.shape[0] == n else 128
    return b.double() * sfb.double().repeat_interleave(gran, dim=0)[:n].repeat_interleave(128, dim=1)


# ---------------------------------------------------------------- generators


@pytest.mark.parametrize("recipe, n", [((1, 128, 128), 256), ((1, 128, 128), 200), ((1, 1, 128), 200)])
def test_expert_weights_shapes_and_per_expert_quantisation(recipe, n, generator):
    b, sfb = moe.make_expert_weights(3, n, 384, recipe, device="cpu", generator=generator)
    assert b.shape == (3, n, 384) and b.dtype == FP8
    rows = n if recipe[1] == 1 else math.ceil(n / 128)
    assert sfb.shape == (3, rows, 3) and sfb.dtype == torch.float32
    assert (sfb > 0).all()
    # Each quantisation group of each expert reaches the FP8 maximum: quantised on its own.
    blocks = dequant_weights(b[1], torch.ones_like(sfb[1]), n).abs()
    gran = recipe[1]
    for r in range(rows):
        for c in range(3):
            assert blocks[r * gran:(r + 1) * gran, c * 128:(c + 1) * 128].max() == 448


def test_tokens_shapes_and_zero_rows(generator):
    a, sfa = moe.make_tokens(5, 256, device="cpu", generator=generator)
    assert a.shape == (5, 256) and a.dtype == FP8 and sfa.shape == (5, 2)
    a0, sfa0 = moe.make_tokens(0, 256, device="cpu")
    assert a0.shape == (0, 256) and sfa0.shape == (0, 2)


def test_k_grouped_operand_and_k_major_view(generator):
    x, sx = moe.make_k_grouped_operand(384, 40, device="cpu", generator=generator)
    assert x.shape == (384, 40) and x.is_contiguous() and sx.shape == (3, 40)
    xk = moe.k_major(x)
    assert xk.shape == (384, 40) and xk.stride() == (1, 384)
    assert torch.equal(xk.view(torch.uint8), x.view(torch.uint8))
    # one scale per (128 K rows, column): each such group reaches the FP8 maximum
    groups = x.double().abs().view(3, 128, 40).amax(dim=1)
    assert (groups == 448).all()


def test_routing_counts(generator):
    counts = moe.routing_counts(4096, 256, 8, generator=generator)
    assert len(counts) == 256 and sum(counts) == 4096 * 8
    assert max(counts) <= 4096
    assert counts.count(0) >= 256 // 16  # some experts empty
    assert max(counts) > 2 * (4096 * 8 / 256)  # a few hot
    again = moe.routing_counts(4096, 256, 8, generator=torch.Generator().manual_seed(1234))
    assert again == counts
    decode = moe.routing_counts(1, 256, 8, generator=generator)
    assert sum(decode) == 8 and set(decode) == {0, 1}
    assert moe.routing_counts(0, 8, 2) == [0] * 8
    assert sum(moe.routing_counts(10, 8, 8)) == 80  # topk == experts: nobody cold
    with pytest.raises(ValueError, match="topk"):
        moe.routing_counts(4, 4, 5)


def test_deepgemm_group_sizes(generator):
    sizes = moe.deepgemm_group_sizes(64, 4096, generator=generator)
    assert len(sizes) == 64 and all(isinstance(s, int) for s in sizes)
    assert all(int(0.7 * 4096) <= s <= int(1.3 * 4096) for s in sizes)
    assert len(set(sizes)) > 32


@pytest.mark.parametrize("alignment", [128, 256])
def test_per_token_layout(alignment):
    counts = [3, 0, 130, 0, 128, 1]
    ids, starts = moe.per_token_layout(counts, alignment, device="cpu")
    assert ids.dtype == torch.int32 and ids.shape == (sum(moe.align(c, alignment) for c in counts),)
    assert ids.numel() % alignment == 0
    assert all(s % alignment == 0 for s in starts)
    ends = starts[1:] + [ids.numel()]
    for e, (start, end, c) in enumerate(zip(starts, ends, counts)):
        assert (ids[start:start + c] == e).all()
        assert (ids[start + c:end] == -1).all()  # padding up to the next segment start
    assert starts[1] == starts[2]  # an empty expert takes no rows
    assert int((ids >= 0).sum()) == sum(counts)
    empty, starts = moe.per_token_layout([0, 0], alignment, device="cpu")
    assert empty.numel() == 0 and starts == [0, 0]


def test_packed_layout_and_pack_rows():
    counts, psum = moe.packed_layout([3, 0, 5, 1], device="cpu")
    assert counts.dtype == psum.dtype == torch.int32
    assert psum.tolist() == [3, 3, 8, 9] and torch.equal(psum, torch.cumsum(counts, 0).int())
    ids, _ = moe.per_token_layout([3, 0, 5, 1], 128, device="cpu")
    x = torch.arange(ids.numel(), dtype=torch.float32).view(-1, 1).expand(-1, 128).to(FP8)
    packed = moe.pack_rows(x, ids)
    assert packed.dtype == FP8 and packed.shape == (9, 128)
    assert packed[:, 0].float().tolist() == [float(x[r, 0]) for r in (ids >= 0).nonzero().flatten().tolist()]


def test_expert_rows_agree_across_modes():
    counts = [2, 0, 3]
    ids = torch.tensor([0, 0, -1, 2, 2, 2, -1], dtype=torch.int32)
    per_token = moe.expert_rows(ids, "per_token", 3)
    assert [r.tolist() for r in per_token] == [[0, 1], [], [3, 4, 5]]
    per_expert = moe.expert_rows(counts, "per_expert", 3)
    psum = moe.expert_rows(torch.tensor([2, 2, 5]), "psum_expert", 3)
    assert [r.tolist() for r in per_expert] == [r.tolist() for r in psum] == [[0, 1], [], [2, 3, 4]]
    with pytest.raises(ValueError, match="gemm_mode"):
        moe.expert_rows(counts, "per_row", 3)


def test_spot_check_experts():
    counts = [0, 5, 1, 100, 0, 2, 0]
    assert moe.spot_check_experts(counts, 1.0, 1e9) == [1, 2, 3, 5]
    assert moe.spot_check_experts(counts, 1.0, 0) == [5]  # always one: the last live expert first
    assert moe.spot_check_experts(counts, 1.0, 7) == [1, 5]  # last, first; the hottest does not fit
    assert moe.spot_check_experts(counts, 1.0, 110) == [1, 2, 3, 5]
    assert moe.spot_check_experts([0, 0], 1.0, 1e9) == []


# ---------------------------------------------------------------- references


def naive_ragged_m(a, sfa, b, sfb, row_experts, n):
    out = torch.full((a.shape[0], n), float("nan"), dtype=torch.float64)
    for r, e in enumerate(row_experts):
        if e >= 0:
            out[r] = dequant_tokens(a[r:r + 1], sfa[r:r + 1]) @ dequant_weights(b[e], sfb[e], n).t()
    return out


@pytest.mark.parametrize("recipe", [(1, 128, 128), (1, 1, 128)])
def test_ragged_m_reference_all_modes(recipe, generator):
    counts, n, k = [3, 0, 5, 1], 136, 256
    b, sfb = moe.make_expert_weights(4, n, k, recipe, device="cpu", generator=generator)
    ids, _ = moe.per_token_layout(counts, 128, device="cpu")
    a, sfa = moe.make_tokens(ids.numel(), k, device="cpu", generator=generator)
    ref = moe.ragged_m_reference(a, sfa, b, sfb, ids, "per_token", recipe)
    assert ref.dtype == torch.float32 and ref.shape == (ids.numel(), n)
    assert torch.equal(torch.isnan(ref).all(dim=1), ids < 0)  # NaN rows exactly the padding rows
    assert not torch.isnan(ref[ids >= 0]).any()
    naive = naive_ragged_m(a, sfa, b, sfb, ids.tolist(), n)
    torch.testing.assert_close(ref[ids >= 0].double(), naive[ids >= 0], rtol=1e-6, atol=1e-5)

    a_packed, sfa_packed = moe.pack_rows(a, ids), moe.pack_rows(sfa, ids)
    counts_t, psum = moe.packed_layout(counts, device="cpu")
    packed = moe.ragged_m_reference(a_packed, sfa_packed, b, sfb, counts_t, "per_expert", recipe)
    assert torch.equal(packed, moe.pack_rows(ref, ids))
    assert torch.equal(moe.ragged_m_reference(a_packed, sfa_packed, b, sfb, psum, "psum_expert", recipe), packed)


def test_ragged_m_reference_rows_past_the_experts_and_subsets(generator):
    b, sfb = moe.make_expert_weights(3, 128, 128, device="cpu", generator=generator)
    a, sfa = moe.make_tokens(8, 128, device="cpu", generator=generator)
    ref = moe.ragged_m_reference(a, sfa, b, sfb, [2, 1, 3], "per_expert")
    assert torch.isnan(ref).all(dim=1).tolist() == [False] * 6 + [True] * 2  # only 6 rows routed
    subset = moe.ragged_m_reference(a, sfa, b, sfb, [2, 1, 3], "per_expert", experts=[2])
    assert torch.isnan(subset).all(dim=1).tolist() == [True] * 3 + [False] * 3 + [True] * 2
    assert torch.equal(subset[3:6], ref[3:6])


@pytest.mark.parametrize("recipe", [(1, 128, 128), (1, 1, 128)])
def test_masked_reference(recipe, generator):
    num_experts, max_m, n, k = 3, 6, 72, 256
    b, sfb = moe.make_expert_weights(num_experts, n, k, recipe, device="cpu", generator=generator)
    a, sfa = moe.make_tokens(num_experts * max_m, k, device="cpu", generator=generator)
    a, sfa = a.view(num_experts, max_m, k), sfa.view(num_experts, max_m, k // 128)
    masked_m = torch.tensor([6, 0, 1], dtype=torch.int32)
    ref = moe.masked_reference(a, sfa, b, sfb, masked_m, recipe)
    assert ref.shape == (num_experts, max_m, n) and ref.dtype == torch.float32
    for e, m in enumerate(masked_m.tolist()):
        assert torch.isnan(ref[e, m:]).all() and not torch.isnan(ref[e, :m]).any()
        naive = dequant_tokens(a[e, :m], sfa[e, :m]) @ dequant_weights(b[e], sfb[e], n).t()
        torch.testing.assert_close(ref[e, :m].double(), naive, rtol=1e-6, atol=1e-5)
    assert torch.isnan(moe.masked_reference(a, sfa, b, sfb, masked_m, recipe, experts=[2])[0]).all()


def test_ragged_k_reference(generator):
    counts, m, n = [256, 0, 128], 24, 40
    sum_k = sum(counts)
    a, sfa = moe.make_k_grouped_operand(sum_k, m, device="cpu", generator=generator)
    b, sfb = moe.make_k_grouped_operand(sum_k, n, device="cpu", generator=generator)
    out_init = torch.randn((3, m, n), generator=generator)
    ref = moe.ragged_k_reference(a, sfa, b, sfb, counts, out_init)
    assert ref.shape == (3, m, n) and ref.dtype == torch.float32
    a_deq = a.double() * sfa.double().repeat_interleave(128, dim=0)
    b_deq = b.double() * sfb.double().repeat_interleave(128, dim=0)
    starts = [0, 256, 256]
    for e, (start, c) in enumerate(zip(starts, counts)):
        naive = out_init[e].double() + a_deq[start:start + c].t() @ b_deq[start:start + c]
        torch.testing.assert_close(ref[e].double(), naive, rtol=1e-6, atol=1e-5)
    assert torch.equal(ref[1], out_init[1])  # an empty expert leaves its output as it was
    k_major = moe.ragged_k_reference(moe.k_major(a), sfa, moe.k_major(b), sfb, torch.tensor(counts), out_init)
    assert torch.equal(k_major, ref)
    subset = moe.ragged_k_reference(a, sfa, b, sfb, counts, out_init, experts=[0])
    assert torch.equal(subset[0], ref[0]) and torch.isnan(subset[1:]).all()
    with pytest.raises(ValueError, match="multiples of 128"):
        moe.ragged_k_reference(a, sfa, b, sfb, [200, 184], out_init[:2])


def test_calc_diff_rows():
    ref = torch.tensor([[1.0, 2.0], [float("nan")] * 2, [3.0, 4.0]])
    out = torch.tensor([[1.0, 2.0], [7.0, 7.0], [3.0, 4.0]])
    assert moe.calc_diff_rows(out, ref) == 0.0
    out[2, 1] = 5.0
    assert moe.calc_diff_rows(out, ref) == pytest.approx(calc_diff(out[[0, 2]], ref[[0, 2]]))
    out[0, 0] = float("nan")  # a defined row left unwritten (poisoned) never passes
    assert moe.calc_diff_rows(out, ref) == float("inf")


# ---------------------------------------------------------------- peers (shape checks on the meta device)


def test_torch_grouped_peers_accept_our_layouts():
    num_experts, rows, n, k = 4, 64, 256, 512
    b = torch.empty((num_experts, n, k), dtype=FP8, device="meta")
    offs = torch.empty((num_experts,), dtype=torch.int32, device="meta")
    a = torch.empty((rows, k), dtype=FP8, device="meta")
    assert peers.torch_scaled_grouped_rowwise(a, b, offs)().shape == (rows, n)
    a3 = torch.empty((num_experts, rows, k), dtype=FP8, device="meta")
    assert peers.torch_scaled_grouped_rowwise(a3, b)().shape == (num_experts, rows, n)
    out = peers.torch_grouped_bf16(a.to(torch.bfloat16), b.to(torch.bfloat16), offs)()
    assert out.shape == (rows, n) and out.dtype == torch.bfloat16


# ---------------------------------------------------------------- the grouped benchmark's pure parts


def test_every_grouped_anchor_matches_a_benchmarked_shape():
    shapes = json.loads((ROOT / "mategemm" / "shapes" / "shapes.json").read_text())
    lists = {"contiguous": "grouped_contiguous_fp8", "masked": "grouped_masked_fp8", "k_grouped": "grouped_k_fp8"}
    keys = {grouped_suite.grouped_anchor_key({"mode": mode, **s}) for mode, name in lists.items() for s in shapes[name]}
    for kind in ("H100", "H200"):
        anchors = grouped_suite.load_grouped_anchors(kind)
        assert anchors and set(anchors) <= keys, f"{kind}: anchors without a benchmarked shape"
    assert grouped_suite.grouped_anchor_key({"mode": "k_grouped", "groups": 4, "m": 4096, "n": 7168, "k_per_group": 8192,
                                     "k_sum": 1}) == ("k_grouped", 4, 4096, 7168, 8192)
    assert grouped_suite.grouped_anchor_key({"mode": "moe_layer", "n": 1}) is None


def test_grouped_summary_maths():
    rows = [
        {"mode": "contiguous", "mategemm_ms": 1.0, "deepgemm_ms": 2.0},
        {"mode": "masked", "mategemm_ms": 2.0, "deepgemm_ms": 1.0},
        {"mode": "masked", "mategemm_ms": 1.0},  # no anchor: left out
        {"mode": "k_grouped", "mategemm_error": "boom", "deepgemm_ms": 1.0},  # ours failed: left out
        {"mode": "per_expert", "tokens_per_expert": 1, "mategemm_packed_ms": 1.0, "mategemm_padded_ms": 4.0},
        {"mode": "per_expert", "tokens_per_expert": 1, "mategemm_packed_ms": 1.0, "mategemm_padded_ms": 1.0},
        {"mode": "per_expert", "tokens_per_expert": 32, "mategemm_packed_ms": 2.0, "mategemm_padded_ms": 1.0},
        {"mode": "moe_layer", "mategemm_packed_ms": 1.0, "mategemm_padded_ms": 3.0,
         "torch_scaled_grouped_rowwise_error": "shape"},
    ]
    summary = grouped_suite.grouped_summary(rows)
    assert summary["geomean_vs_deepgemm"] == 1.0 and summary["min_vs_deepgemm"] == 0.5
    assert summary["rows_vs_deepgemm"] == 2
    assert summary["contiguous_geomean_vs_deepgemm"] == 2.0 and summary["masked_geomean_vs_deepgemm"] == 0.5
    assert "k_grouped_geomean_vs_deepgemm" not in summary
    assert summary["packed_vs_padded_tpe1"] == 2.0 and summary["packed_vs_padded_tpe32"] == 0.5
    assert summary["moe_layer_geomean_vs_mategemm_padded"] == 3.0
    assert "moe_layer_geomean_vs_torch_scaled_grouped_rowwise" not in summary


def test_grouped_row_helpers():
    assert common.rotation_sets(10 << 20, 50 << 20) == 15
    assert common.rotation_sets(1 << 40, 50 << 20) == 1
    assert common.rotation_sets(1, 50 << 20) == 32
    row = {"mode": "masked", "groups": 1, "m_per_group": 1024, "n": 4096, "k": 7168}
    common.add_timing(row, "mategemm", 0.05, 2 * 1024 * 4096 * 7168, 45e6)
    assert row["mategemm_tflops"] == pytest.approx(1202.6, abs=0.1) and row["mategemm_gbps"] == 900.0
    row.update(deepgemm_ms=0.1, deepgemm_tflops=601.3, torch_scaled_grouped_rowwise_error="no")
    assert common.speedup(row, "mategemm", "deepgemm") == 2.0
    head, line = grouped_suite.format_grouped_row(row)
    assert "DeepGEMM" in head and "2.00" in line and "ERR" in line
    assert grouped_suite.model_gemms({"hidden": 7168, "intermediate": 2048}) == [("gemm1", 4096, 7168),
                                                                          ("gemm2", 7168, 2048)]
