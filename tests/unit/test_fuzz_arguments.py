"""Fuzzed bad input, without a GPU: for every public op, at least 500 calls that each break one
argument of an otherwise valid call (valid but for living on the CPU). Each must raise ValueError or
TypeError naming an argument, before the device check: a call that got as far as asking for a CUDA
tensor let the broken argument through.
"""
import random
import re

import pytest
import torch

import mategemm

E4M3 = torch.float8_e4m3fn
DEVICE_ERRORS = re.compile(r"CUDA tensor|CUDA device|needs context_lens on a CUDA")
TRIALS = 500


def fp8(*shape):
    return torch.randint(0, 120, shape, dtype=torch.uint8).view(E4M3)


def scales(*shape):
    return torch.rand(shape) + 0.5


# ---- one broken argument -----------------------------------------------------------------------
# Arguments read in place by TMA (a base off the 16-byte grid is an error, not a copy), and integer
# arguments with an upper bound (elsewhere a huge value is clamped: SM counts, token hints).
IN_PLACE = {"q", "fused_kv_cache", "kv"}
BOUNDED = {"max_context_len", "max_seqlen_k", "num_mps", "block_kv"}


def tensor_mutations(t: torch.Tensor, misalign: bool, free_rows: bool) -> list:
    """Replacements no op accepts for a tensor argument: a list, float64, one more dimension, one
    row more (unless any count of rows is valid), and (1-byte elements read in place) a base address
    off the 16-byte grid."""
    out = [t.tolist() if t.numel() < 64 else [1, 2], t.double(),
           t.unsqueeze(0) if t.dim() != 1 or not free_rows else t.view(1, 1, -1)]
    if t.dim() and not free_rows:
        out.append(torch.zeros((t.shape[0] + 1, *t.shape[1:]), dtype=t.dtype))
    if misalign and t.element_size() == 1 and t.dim() >= 1 and t.numel() > 0:
        flat = torch.zeros(t.numel() + 16, dtype=torch.uint8)[1:1 + t.numel()].view(t.dtype).view(t.shape)
        out.append(flat)
    return out


def value_mutations(value, bounded: bool) -> list:
    if isinstance(value, bool):
        return [1, "yes"]
    if isinstance(value, int):
        return [-1, 1.5, "4"] + ([2**40] if bounded else [])
    if isinstance(value, str):
        return ["bogus", 3]
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):  # a recipe
        return [(1, 2, 3), (1, 128), "1,128,128"]
    return [object()]


def mutations(name: str, value, free_rows: set) -> list:
    misalign, free = name in IN_PLACE, name in free_rows
    if isinstance(value, torch.Tensor):
        return tensor_mutations(value, misalign, free)
    if isinstance(value, tuple) and value and isinstance(value[0], torch.Tensor):  # (tensor, scales) pairs
        first, second = value
        return ([(m, second) for m in tensor_mutations(first, misalign, free)]
                + [(first, m) for m in tensor_mutations(second, False, free)]
                + [first, (first,), (first, second, second)])
    return value_mutations(value, name in BOUNDED)


def fuzz(op, baselines, names_of, skip=(), free_rows=()):
    """TRIALS calls of `op`, each a random baseline with one argument replaced by one of its
    mutations; `names_of[arg]`: the words an error about that argument may name; `free_rows`: the
    arguments whose leading dimension is free (cache blocks, schedule rows, keys)."""
    free_rows = set(free_rows)
    rng = random.Random(0)
    candidates = []
    for base in baselines:
        for name, value in base.items():
            if name in skip:
                continue
            candidates += [(base, name, i) for i in range(len(mutations(name, value, free_rows)))]
    assert len(candidates) >= 10
    picks = [candidates[i % len(candidates)] for i in range(len(candidates))]
    picks += [rng.choice(candidates) for _ in range(max(0, TRIALS - len(picks)))]
    for base, name, i in picks:
        args = dict(base)
        args[name] = mutations(name, base[name], free_rows)[i]
        with pytest.raises((ValueError, TypeError)) as info:
            op(**args)
        message = str(info.value)
        assert not DEVICE_ERRORS.search(message), f"{op.__name__}: broken {name} ({i}) passed the checks: {message}"
        words = names_of.get(name, (name,))
        assert any(re.search(rf"(?<![\w]){re.escape(w)}(?![\w])", message) for w in words), \
            f"{op.__name__}: broken {name} ({i}): the message names none of {words}: {message}"
    assert len(picks) >= TRIALS


def test_gemm_fp8_nt_groupwise():
    baselines = []
    for m, n, k in ((1, 128, 128), (64, 256, 512), (200, 136, 256)):
        baselines.append(dict(a=fp8(m, k), b=fp8(n, k), a_scale=scales(m, k // 128),
                              b_scale=scales(-(-n // 128), k // 128), out=torch.zeros((m, n), dtype=torch.bfloat16),
                              scale_granularity_mnk=(1, 128, 128), scale_major_mode="K", backend="auto"))
    fuzz(mategemm.gemm_fp8_nt_groupwise, baselines,
         {"a": ("a", "k", "a_scale", "out"), "b": ("b", "n", "k", "b_scale", "out"), "a_scale": ("a_scale",),
          "b_scale": ("b_scale",), "out": ("out",)})


def test_bmm_fp8():
    baselines = []
    for batch, m, n, k in ((1, 1, 128, 128), (3, 64, 256, 256)):
        baselines.append(dict(a=fp8(batch, m, k), b=fp8(batch, n, k), a_scale=scales(batch, m, k // 128),
                              b_scale=scales(batch, -(-n // 128), k // 128), out_dtype=torch.bfloat16,
                              scale_granularity_mnk=(1, 128, 128), major_a_mode="K", major_b_mode="K",
                              c=torch.zeros((batch, m, n))))
    fuzz(mategemm.bmm_fp8, baselines, {"a": ("a", "k", "batch"), "b": ("b", "n", "k", "batch"),
                                       "a_scale": ("a_scale",), "b_scale": ("b_scale",), "c": ("c",),
                                       "out_dtype": ("out_dtype",)}, skip=("out_dtype",))


def test_bmm_fp16():
    bf16 = torch.bfloat16
    baselines = [dict(a=torch.zeros((2, 64, 128), dtype=bf16), b=torch.zeros((2, 96, 128), dtype=bf16),
                      out_dtype=bf16, c=torch.zeros((2, 64, 96)), backend="auto")]
    fuzz(mategemm.bmm_fp16, baselines, {"a": ("a", "k", "batch"), "b": ("b", "n", "k", "batch"), "c": ("c",)},
         skip=("out_dtype",))


PAIR_NAMES = {"input_a": ("input_a[0]", "input_a[1]", "input_a", "k"),
              "input_b": ("input_b[0]", "input_b[1]", "input_b", "k")}


def moe_weights(experts, n, k):
    return fp8(experts, n, k), scales(experts, -(-n // 128), k // 128)


def test_ragged_m_moe_gemm_8bit():
    counts = torch.tensor([3, 0, 70, 40], dtype=torch.int32)
    rows = int(counts.sum())
    baselines = [dict(input_a=(fp8(rows, 256), scales(rows, 2)), input_b=moe_weights(4, 256, 256),
                      ragged_tokens_info=counts, out=torch.zeros((rows, 256), dtype=torch.bfloat16),
                      gemm_mode="per_expert", major_a_mode="K", major_b_mode="K", num_mp=4)]
    names = {**PAIR_NAMES, "ragged_tokens_info": ("ragged_tokens_info",), "out": ("out",)}
    fuzz(mategemm.ragged_m_moe_gemm_8bit, baselines, names)


def test_masked_moe_gemm_8bit():
    baselines = [dict(input_a=(fp8(4, 96, 256), scales(4, 96, 2)), input_b=moe_weights(4, 256, 256),
                      masked_tokens_info=torch.tensor([1, 96, 0, 7], dtype=torch.int32),
                      out=torch.zeros((4, 96, 256), dtype=torch.bfloat16), expect_tokens=32)]
    names = {**PAIR_NAMES, "masked_tokens_info": ("masked_tokens_info",), "out": ("out",),
             "expect_tokens": ("expect_tokens",)}
    fuzz(mategemm.masked_moe_gemm_8bit, baselines, names)


def test_ragged_k_moe_gemm_8bit():
    counts = torch.tensor([128, 0, 256], dtype=torch.int32)
    baselines = [dict(input_a=(fp8(384, 96), scales(3, 96)), input_b=(fp8(384, 64), scales(3, 64)),
                      ragged_tokens_info=counts, out=torch.zeros((3, 96, 64)), major_a_mode="M", major_b_mode="N")]
    names = {"input_a": ("input_a[0]", "input_a[1]", "input_a", "sum_k"),
             "input_b": ("input_b[0]", "input_b[1]", "input_b", "sum_k", "n"),
             "ragged_tokens_info": ("ragged_tokens_info", "sum_k"), "out": ("out", "ragged_tokens_info")}
    fuzz(mategemm.ragged_k_moe_gemm_8bit, baselines, names)


def test_get_paged_mqa_logits_metadata():
    baselines = [dict(context_lens=torch.tensor([100, 0, 7000], dtype=torch.int32), block_kv=64, num_mps=8),
                 dict(context_lens=torch.tensor([[5, 6], [70, 71]], dtype=torch.int32), block_kv=64, num_mps=3)]
    fuzz(mategemm.get_paged_mqa_logits_metadata, baselines, {}, free_rows=("context_lens",))


def test_fp8_paged_mqa_logits():
    baselines = []
    for batch, next_n, heads in ((2, 1, 32), (3, 2, 64), (2, 4, 64)):
        baselines.append(dict(q=fp8(batch, next_n, heads, 128),
                              fused_kv_cache=torch.zeros((6, 64, 1, 132), dtype=torch.uint8),
                              weights=scales(batch * next_n, heads),
                              context_lens=torch.full((batch,), 100, dtype=torch.int32),
                              block_table=torch.zeros((batch, 4), dtype=torch.int32),
                              schedule_meta=torch.zeros((9, 2), dtype=torch.int32), max_context_len=300,
                              clean_logits=True))
    fuzz(mategemm.fp8_paged_mqa_logits, baselines, {"q": ("q", "weights", "context_lens", "block_table",
                                                          "fused_kv_cache")},
         free_rows=("fused_kv_cache", "schedule_meta"))


def test_fp8_mqa_logits():
    baselines = [dict(q=fp8(seq, heads, 128), kv=(fp8(kv, 128), scales(kv)), weights=scales(seq, heads),
                      cu_seq_len_k_start=torch.zeros(seq, dtype=torch.int32),
                      cu_seq_len_k_end=torch.full((seq,), kv, dtype=torch.int32), clean_logits=True, max_seqlen_k=0)
                 for seq, heads, kv in ((5, 32, 100), (64, 64, 1000))]
    fuzz(mategemm.fp8_mqa_logits, baselines, {"q": ("q", "weights", "cu_seq_len_k_start", "cu_seq_len_k_end"),
                                              "kv": ("kv", "kv[0]", "kv[1]")}, free_rows=("kv",))


def test_batch_deepgemm_fp8_nt_groupwise():
    """FlashInfer's names: errors name a, b, a_scale, b_scale, masked_m, expected_m, not the masked op's."""
    baselines = [dict(a=fp8(3, 64, 256), b=fp8(3, 128, 256), a_scale=scales(3, 64, 2), b_scale=scales(3, 1, 2),
                      masked_m=torch.tensor([5, 64, 0], dtype=torch.int32), expected_m=16,
                      out=torch.zeros((3, 64, 128), dtype=torch.bfloat16))]
    fuzz(mategemm.batch_deepgemm_fp8_nt_groupwise, baselines,
         {"a": ("a", "a_scale", "k"), "b": ("b", "b_scale", "k"), "masked_m": ("masked_m",), "out": ("out",)})


def test_set_num_mp():
    for bad in (0, -1, 1.5, "4", True):
        with pytest.raises((ValueError, TypeError), match="num_mp"):
            mategemm.set_num_mp(bad)
