"""The lightning indexer's quantisers (mategemm.quant), inputs, float64 references and torch peer
(mategemm.testing.indexer) on the CPU, against slow per-token loops written here."""
import math

import pytest
import torch

from mategemm.quant import (
    paged_kv_cache_cast_to_fp8,
    paged_kv_cache_split,
    per_token_cast_to_fp8,
    write_paged_kv,
)
from mategemm.testing import calc_diff, indexer

FP8 = torch.float8_e4m3fn


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)


def random_keys(num_blocks, generator, dtype=torch.float32):
    k = torch.randn((num_blocks, 64, 1, 128), generator=generator)
    k *= torch.rand((num_blocks, 64, 1, 1), generator=generator) * 4 + 0.25
    return k.to(dtype)


def e4m3_close(deq, x, scale):
    """|deq - x| within e4m3 rounding: half an ulp (2^-4 relative) or half the smallest subnormal step."""
    tol = x.abs() * 2.0**-4 + scale * 2.0**-10
    return bool(((deq - x).abs() <= tol * 1.0001).all())


# ---------------------------------------------------------------- quantisers


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_cast_round_trip_and_layout(dtype, generator):
    k = random_keys(3, generator, dtype)
    k[1, 5] = 0  # an all-zero token: the scale clamps at 1e-4 / 448
    fused = paged_kv_cache_cast_to_fp8(k)
    assert fused.dtype == torch.uint8 and fused.shape == (3, 64, 1, 132)
    keys, scales = paged_kv_cache_split(fused)
    assert keys.dtype == FP8 and keys.shape == (3, 64, 128)
    assert scales.dtype == torch.float32 and scales.shape == (3, 64)

    # scales exact; every non-zero token reaches the e4m3 maximum
    kf = k.float()[:, :, 0]
    assert torch.equal(scales, kf.abs().amax(dim=-1).clamp(min=1e-4) / 448)
    assert scales[1, 5] == pytest.approx(1e-4 / 448)
    amax = keys.float().abs().amax(dim=-1)
    assert (amax[kf.abs().amax(dim=-1) > 0] == 448).all() and amax[1, 5] == 0
    assert e4m3_close(keys.float() * scales[..., None], kf, scales[..., None])

    # bytes: block b = 64 tokens x 128 key bytes, then 64 fp32 scales from byte 8192
    flat = fused.view(3, 8448)
    for b in range(3):
        assert torch.equal(flat[b, :8192].view(FP8).view(64, 128).view(torch.uint8), keys[b].view(torch.uint8))
        assert torch.equal(flat[b, 8192:].clone().view(torch.float32), kf[b].abs().amax(-1).clamp(min=1e-4) / 448)
    assert torch.equal(flat[2, 7 * 128:8 * 128].view(FP8).float(), (kf[2, 7] / scales[2, 7]).to(FP8).float())


def test_split_is_a_view_and_rejects_bad_caches(generator):
    fused = paged_kv_cache_cast_to_fp8(random_keys(2, generator))
    keys, scales = paged_kv_cache_split(fused)
    scales[1, 3] = 2.5
    keys.view(torch.uint8)[0, 0, 0] = 0x38  # e4m3 1.0
    flat = fused.view(2, 8448)
    assert flat[1, 8192 + 12:8192 + 16].clone().view(torch.float32).item() == 2.5
    assert flat[0, 0] == 0x38
    with pytest.raises(TypeError, match="fused must be uint8"):
        paged_kv_cache_split(fused.view(torch.int8))
    with pytest.raises(ValueError, match=r"fused must have shape \(num_blocks, 64, 1, 132\)"):
        paged_kv_cache_split(fused.view(2, 64, 132))
    with pytest.raises(ValueError, match="contiguous"):
        paged_kv_cache_split(torch.zeros((2, 64, 1, 140), dtype=torch.uint8)[..., :132])
    with pytest.raises(ValueError, match="k must have shape"):
        paged_kv_cache_cast_to_fp8(torch.randn(2, 32, 1, 128))
    with pytest.raises(TypeError, match="k must be float32"):
        paged_kv_cache_cast_to_fp8(torch.randn(2, 64, 1, 128).to(FP8))


def test_per_token_cast_serves_as_the_prefill_kv_quantiser(generator):
    # No separate kv quantiser: with 128 columns per_token_cast_to_fp8 has one group per row, so its
    # (seq, 1) scales squeezed are the kv scales; the same bytes as the paged cache's quantiser.
    k = random_keys(1, generator)[0, :, 0]  # (64, 128)
    q, s = per_token_cast_to_fp8(k)
    assert s.shape == (64, 1) and torch.equal(s[:, 0], k.abs().amax(-1) / 448)
    keys, scales = paged_kv_cache_split(paged_kv_cache_cast_to_fp8(k.view(1, 64, 1, 128)))
    assert torch.equal(keys[0].view(torch.uint8), q.view(torch.uint8)) and torch.equal(scales[0], s[:, 0])


# ---------------------------------------------------------------- write_paged_kv


def test_write_paged_kv_writes_exactly_the_slots(generator):
    fused = paged_kv_cache_cast_to_fp8(random_keys(4, generator))
    before = fused.clone()
    slots = torch.tensor([0, 63, 64, 200, 130], dtype=torch.int32)
    k = torch.randn((5, 128), generator=generator).to(torch.bfloat16) * 3
    write_paged_kv(fused, k, slots)
    keys, scales = paged_kv_cache_split(fused)
    want_q, want_s = per_token_cast_to_fp8(k.float())
    for t, slot in enumerate(slots.tolist()):
        assert torch.equal(keys[slot // 64, slot % 64].view(torch.uint8), want_q[t].view(torch.uint8))
        assert scales[slot // 64, slot % 64] == want_s[t, 0]
    # every other byte as before: mark the written tokens' key bytes and scale bytes
    touched = torch.zeros((4, 8448), dtype=torch.bool)
    for slot in slots.tolist():
        b, o = divmod(slot, 64)
        touched[b, o * 128:(o + 1) * 128] = True
        touched[b, 8192 + 4 * o:8192 + 4 * (o + 1)] = True
    assert torch.equal(fused.view(4, 8448)[~touched], before.view(4, 8448)[~touched])
    assert not torch.equal(fused.view(4, 8448)[touched], before.view(4, 8448)[touched])


def test_write_paged_kv_token_by_token_equals_the_bulk_cast(generator):
    k = random_keys(3, generator)
    fused = paged_kv_cache_cast_to_fp8(random_keys(3, generator))  # stale contents, all overwritten
    order = torch.randperm(3 * 64, generator=generator)
    for chunk in order.split(50):
        write_paged_kv(fused, k.view(-1, 128)[chunk], chunk)
    assert torch.equal(fused, paged_kv_cache_cast_to_fp8(k))


@pytest.mark.parametrize("fused, k, slots, error, match", [
    (torch.zeros((2, 64, 1, 132), dtype=torch.int8), torch.randn(2, 128), torch.tensor([0, 1]), TypeError, "fused"),
    (torch.zeros((2, 64, 132), dtype=torch.uint8), torch.randn(2, 128), torch.tensor([0, 1]), ValueError, "fused"),
    (None, torch.randn(2, 64), torch.tensor([0, 1]), ValueError, r"k must have shape \(T, 128\)"),
    (None, torch.randn(2, 128).to(FP8), torch.tensor([0, 1]), TypeError, "k must be"),
    (None, [[0.0] * 128], torch.tensor([0]), TypeError, "k must be a torch.Tensor"),
    (None, torch.randn(2, 128), [0, 1], TypeError, "slot_mapping must be a torch.Tensor"),
    (None, torch.randn(2, 128), torch.tensor([0.0, 1.0]), TypeError, "slot_mapping must be an integer"),
    (None, torch.randn(2, 128), torch.tensor([0, 1, 2]), ValueError, r"slot_mapping must have shape \(2,\)"),
    (None, torch.randn(2, 128), torch.tensor([0, 128]), ValueError, r"slot_mapping values must be in \[0, "),
    (None, torch.randn(2, 128), torch.tensor([-1, 0]), ValueError, "slot_mapping values"),
    (None, torch.randn(2, 128), torch.tensor([5, 5]), ValueError, "slot_mapping must not repeat"),
])
def test_write_paged_kv_rejects_bad_arguments(fused, k, slots, error, match):
    if fused is None:
        fused = torch.zeros((2, 64, 1, 132), dtype=torch.uint8)
    before = fused.clone()
    with pytest.raises(error, match=match):
        write_paged_kv(fused, k, slots)
    assert torch.equal(fused, before)  # nothing written


# ---------------------------------------------------------------- paged inputs and visibility


def test_visible_mask_both_forms():
    one_d = indexer.visible_mask(torch.tensor([3, 1], dtype=torch.int32), 2, 5)
    assert one_d.int().tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0],
                                    [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]]  # ctx 1, next_n 2: token 0 sees nothing
    two_d = indexer.visible_mask(torch.tensor([[1, 4], [5, 7]], dtype=torch.int32), 2, 6)
    assert two_d.int().tolist() == [[1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0],
                                    [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    with pytest.raises(ValueError, match="context_lens must have shape"):
        indexer.visible_mask(torch.tensor([[1, 2, 3]]), 2, 4)


def test_make_paged_case(generator):
    case = indexer.make_paged_case(4, 2, 8, [1, 63, 200, 65], shared_prefix_blocks=1, generator=generator)
    q, fused, table = case["q"], case["fused_kv_cache"], case["block_table"]
    assert q.dtype == FP8 and q.shape == (4, 2, 8, 128)
    assert case["weights"].shape == (8, 8) and case["weights"].dtype == torch.float32
    assert case["context_lens"].dtype == torch.int32 and case["context_lens"].tolist() == [1, 63, 200, 65]
    assert case["max_context_len"] == 217 and case["max_context_len"] % 64
    num_blocks = fused.shape[0]
    assert table.dtype == torch.int32 and table.shape == (4, math.ceil(217 / 64))
    assert ((table >= 0) & (table < num_blocks)).all()  # unused entries too
    assert (table[:, 0] == table[0, 0]).all()  # the shared prefix block
    needed = [1, 1, 4, 2]
    own = [table[b, 1:n].tolist() for b, n in enumerate(needed)]
    flat_own = [x for blocks in own for x in blocks]
    assert len(set(flat_own)) == len(flat_own) == 4 and int(table[0, 0]) not in flat_own
    assert table[2, :4].tolist() != sorted(table[2, :4].tolist()) or table[3, :2].tolist() != [0, 1]
    assert num_blocks == 1 + 4 + 3  # 3 spare
    keys, scales = paged_kv_cache_split(fused)
    assert (scales > 1e-3).all() and (keys.float().abs().amax(-1) == 448).all()  # random everywhere
    again = indexer.make_paged_case(4, 2, 8, [1, 63, 200, 65], shared_prefix_blocks=1,
                                    generator=torch.Generator().manual_seed(1234))
    assert torch.equal(again["block_table"], table) and torch.equal(again["fused_kv_cache"], fused)

    two_d = indexer.make_paged_case(2, 2, 4, [[3, 70], [128, 129]], generator=generator)
    assert two_d["context_lens"].shape == (2, 2) and two_d["max_context_len"] == 129 + 17
    with pytest.raises(ValueError, match="num_blocks"):
        indexer.make_paged_case(2, 1, 4, [65, 65], num_blocks=3)


# ---------------------------------------------------------------- paged reference


def slow_paged(q, fused, weights, context_lens, block_table, max_context_len, clean_logits=True):
    """Per request, per draft token, per kv token, in float64."""
    keys, scales = paged_kv_cache_split(fused)
    batch, next_n, _, _ = q.shape
    out = torch.full((batch * next_n, max_context_len), -math.inf if clean_logits else math.nan,
                     dtype=torch.float64)
    ctx = context_lens.tolist()
    for b in range(batch):
        for j in range(next_n):
            row = b * next_n + j
            seen = ctx[b] - next_n + j + 1 if context_lens.dim() == 1 else ctx[b][j]
            for t in range(min(seen, max_context_len)):
                block = int(block_table[b, t // 64])
                k = keys[block, t % 64].double() * float(scales[block, t % 64])
                dots = q[b, j].double() @ k  # (heads,)
                out[row, t] = float((weights[row].double() * torch.relu(dots)).sum())
    return out


def assert_same_logits(out, ref, tol):
    """Same -inf and NaN pattern; calc_diff <= tol on the finite positions."""
    assert torch.equal(torch.isneginf(out), torch.isneginf(ref))
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    finite = torch.isfinite(ref)
    assert finite.any()
    assert calc_diff(out[finite], ref[finite]) <= tol


PAGED_CASES = [
    # (batch, next_n, heads, context_lens, shared_prefix_blocks)
    (1, 1, 4, [1], 0),
    (4, 1, 8, [1, 63, 65, 200], 0),
    (3, 2, 8, [2, 64, 130], 0),
    (3, 2, 4, [65, 129, 200], 1),
    (2, 2, 4, [[1, 63], [200, 65]], 0),
    (3, 2, 8, [[64, 65], [128, 130], [70, 1]], 1),
]


@pytest.mark.parametrize("batch, next_n, heads, ctx, shared", PAGED_CASES)
def test_paged_reference_matches_the_slow_loop(batch, next_n, heads, ctx, shared, generator):
    case = indexer.make_paged_case(batch, next_n, heads, ctx, shared_prefix_blocks=shared, generator=generator)
    args = [case[n] for n in ("q", "fused_kv_cache", "weights", "context_lens", "block_table", "max_context_len")]
    ref = indexer.paged_reference(*args)
    assert ref.dtype == torch.float32 and ref.shape == (batch * next_n, case["max_context_len"])
    slow = slow_paged(*args)
    mask = indexer.visible_mask(case["context_lens"], next_n, case["max_context_len"])
    assert torch.equal(torch.isfinite(ref), mask) and torch.equal(torch.isfinite(slow), mask)
    assert torch.equal(torch.isneginf(ref), ~mask)
    torch.testing.assert_close(ref[mask].double(), slow[mask], rtol=1e-6, atol=1e-5)
    unclean = indexer.paged_reference(*args, clean_logits=False)
    assert torch.equal(torch.isnan(unclean), ~mask) and torch.equal(unclean[mask], ref[mask])


def test_paged_reference_follows_the_block_table_and_scales(generator):
    case = indexer.make_paged_case(2, 1, 8, [200, 130], generator=generator)
    args = [case[n] for n in ("q", "fused_kv_cache", "weights", "context_lens", "block_table", "max_context_len")]
    ref = indexer.paged_reference(*args)
    mask = torch.isfinite(ref)
    swapped = case["block_table"].clone()
    swapped[0, [0, 1]] = swapped[0, [1, 0]]
    wrong = indexer.paged_reference(*args[:4], swapped, args[5])
    assert calc_diff(wrong[mask], ref[mask]) > 1e-2
    fused = case["fused_kv_cache"].clone()
    paged_kv_cache_split(fused)[1][:] = 1.0  # ignore the scales
    wrong = indexer.paged_reference(args[0], fused, *args[2:])
    assert calc_diff(wrong[mask], ref[mask]) > 1e-2


def test_paged_reference_rejects_a_short_block_table(generator):
    case = indexer.make_paged_case(2, 1, 4, [130, 10], generator=generator)
    with pytest.raises(ValueError, match="block_table"):
        indexer.paged_reference(case["q"], case["fused_kv_cache"], case["weights"], case["context_lens"],
                                case["block_table"][:, :2], case["max_context_len"])


# ---------------------------------------------------------------- torch peer


@pytest.mark.parametrize("batch, next_n, heads, ctx, shared", PAGED_CASES)
def test_torch_paged_logits_matches_the_reference(batch, next_n, heads, ctx, shared, generator):
    case = indexer.make_paged_case(batch, next_n, heads, ctx, shared_prefix_blocks=shared, generator=generator)
    args = [case[n] for n in ("q", "fused_kv_cache", "weights", "context_lens", "block_table", "max_context_len")]
    ref = indexer.paged_reference(*args)
    out = indexer.torch_paged_logits(*args)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert_same_logits(out, ref, 1e-6)
    # clean_logits=False: the visible positions agree, the others hold whatever was computed
    raw = indexer.torch_paged_logits(*args, clean_logits=False)
    mask = torch.isfinite(ref)
    assert torch.isfinite(raw).all() and calc_diff(raw[mask], ref[mask]) <= 1e-6


def test_torch_paged_logits_with_a_table_shorter_than_the_logits(generator):
    case = indexer.make_paged_case(2, 2, 4, [65, 100], generator=generator, max_context_len=300)
    args = [case[n] for n in ("q", "fused_kv_cache", "weights", "context_lens", "block_table", "max_context_len")]
    args[4] = args[4][:, :2]
    out = indexer.torch_paged_logits(*args)
    assert out.shape == (4, 300)
    assert_same_logits(out, indexer.paged_reference(*args), 1e-6)


# ---------------------------------------------------------------- prefill


def slow_prefill(q, kv, weights, ks, ke):
    """(seq_len, seq_len_kv) float64, -inf outside [ks, ke): per row, per kv position."""
    k, scale = kv
    out = torch.full((q.shape[0], k.shape[0]), -math.inf, dtype=torch.float64)
    for i in range(q.shape[0]):
        for t in range(int(ks[i]), int(ke[i])):
            dots = q[i].double() @ (k[t].double() * float(scale[t]))
            out[i, t] = float((weights[i].double() * torch.relu(dots)).sum())
    return out


@pytest.mark.parametrize("seq_len, seq_len_kv, causal", [(1, 1, False), (9, 70, False), (17, 40, True), (5, 5, True)])
def test_prefill_reference_matches_the_slow_loop(seq_len, seq_len_kv, causal, generator):
    case = indexer.make_prefill_case(seq_len, seq_len_kv, 4, generator=generator, causal_chunks=causal)
    q, kv, w, ks, ke = case["q"], case["kv"], case["weights"], case["ks"], case["ke"]
    assert q.dtype == FP8 and q.shape == (seq_len, 4, 128)
    assert kv[0].dtype == FP8 and kv[0].shape == (seq_len_kv, 128) and kv[1].shape == (seq_len_kv,)
    assert ks.dtype == ke.dtype == torch.int32 and ((0 <= ks) & (ks <= ke) & (ke <= seq_len_kv)).all()
    if causal:
        assert torch.equal(ke.long(), torch.arange(seq_len_kv - seq_len, seq_len_kv) + 1)
        assert (ks[1:] >= ks[:-1]).all()
    ref = indexer.prefill_reference(q, kv, w, ks, ke)
    assert ref.dtype == torch.float32 and ref.shape == (seq_len, seq_len_kv)
    slow = slow_prefill(q, kv, w, ks, ke)
    assert torch.equal(torch.isneginf(ref), torch.isneginf(slow))
    seen = torch.isfinite(slow)
    torch.testing.assert_close(ref[seen].double(), slow[seen], rtol=1e-6, atol=1e-5)
    unclean = indexer.prefill_reference(q, kv, w, ks, ke, clean_logits=False)
    assert torch.equal(torch.isnan(unclean), ~seen) and torch.equal(unclean[seen], ref[seen])


@pytest.mark.parametrize("head_dim", (32, 64))
def test_prefill_case_and_reference_at_smaller_heads(head_dim, generator):
    case = indexer.make_prefill_case(6, 30, 8, generator=generator, head_dim=head_dim)
    q, kv, w, ks, ke = case["q"], case["kv"], case["weights"], case["ks"], case["ke"]
    assert q.shape == (6, 8, head_dim) and kv[0].shape == (30, head_dim) and kv[0].is_contiguous()
    assert kv[0].dtype == FP8 and kv[1].shape == (30,)
    # one scale per key: its largest value lands on the e4m3 maximum
    assert torch.equal(kv[0].float().abs().amax(dim=1), torch.full((30,), 448.0))
    ref = indexer.prefill_reference(q, kv, w, ks, ke)
    slow = slow_prefill(q, kv, w, ks, ke)
    seen = torch.isfinite(slow)
    assert torch.equal(torch.isneginf(ref), ~seen)
    torch.testing.assert_close(ref[seen].double(), slow[seen], rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="head_dim"):
        indexer.make_prefill_case(2, 4, 8, head_dim=256)


def test_prefill_windows_and_compressed_columns(generator):
    case = indexer.make_prefill_case(3, 10, 2, generator=generator)
    q, kv, w = case["q"], case["kv"], case["weights"]
    ks = torch.tensor([0, 4, 7], dtype=torch.int32)
    ke = torch.tensor([3, 4, 10], dtype=torch.int32)  # row 1 sees nothing
    full = indexer.prefill_reference(q, kv, w, ks, ke)
    assert torch.isfinite(full).int().tolist() == [[1, 1, 1, 0, 0, 0, 0, 0, 0, 0], [0] * 10,
                                                   [0, 0, 0, 0, 0, 0, 0, 1, 1, 1]]
    packed = indexer.prefill_reference(q, kv, w, ks, ke, max_seqlen_k=4)
    assert packed.shape == (3, 4)
    assert torch.equal(packed[0, :3], full[0, :3]) and torch.isneginf(packed[0, 3])
    assert torch.isneginf(packed[1]).all()
    assert torch.equal(packed[2, :3], full[2, 7:10]) and torch.isneginf(packed[2, 3])  # past the kv
    short = indexer.prefill_reference(q, kv, w, ks, ke, max_seqlen_k=2)  # windows cut at 2 columns
    assert torch.equal(short[2], full[2, 7:9]) and torch.equal(short[0], full[0, :2])
    unclean = indexer.prefill_reference(q, kv, w, ks, ke, clean_logits=False, max_seqlen_k=4)
    assert torch.equal(torch.isnan(unclean), torch.isneginf(packed))
    assert case["max_seqlen_k"] == int((case["ke"] - case["ks"]).max())
    with pytest.raises(ValueError, match="ke must lie in"):
        indexer.prefill_reference(q, kv, w, ks, ke + 1)
