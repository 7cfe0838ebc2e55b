"""Fuzzed bad input for every public op: calls that each break one argument of an otherwise valid
call, each of which must raise ValueError or TypeError naming an argument. On the CPU (tests/unit)
the baselines live on the CPU, so a call that got as far as the device check let the broken argument
through; on a GPU (tests/gpu) the baselines are valid CUDA calls and nothing may launch.
"""
import random
import re

import pytest
import torch

E4M3 = torch.float8_e4m3fn
DEVICE_ERRORS = re.compile(r"CUDA tensor|CUDA device|needs context_lens on a CUDA")
TRIALS = 500


def fp8(*shape, device="cpu"):
    return torch.randint(0, 120, shape, dtype=torch.uint8, device=device).view(E4M3)


def scales(*shape, device="cpu"):
    return torch.rand(shape, device=device) + 0.5


# ---- one broken argument -----------------------------------------------------------------------
# Arguments read in place by TMA (a base off the 16-byte grid is an error, not a copy), and integer
# arguments with an upper bound (elsewhere a huge value is clamped: SM counts, token hints).
IN_PLACE = {"q", "fused_kv_cache", "kv"}
BOUNDED = {"max_context_len", "max_seqlen_k", "num_mps", "block_kv"}


def tensor_mutations(t: torch.Tensor, misalign: bool, free_rows: bool, host_ok: bool = False) -> list:
    """Replacements no op accepts for a tensor argument: a list, float64, one more dimension, one
    row more (unless any count of rows is valid), (1-byte elements read in place) a base address
    off the 16-byte grid, and for a CUDA tensor its CPU copy (unless the op takes it on the host)."""
    out = [t.tolist() if t.numel() < 64 else [1, 2], t.double(),
           t.unsqueeze(0) if t.dim() != 1 or not free_rows else t.view(1, 1, -1)]
    if t.dim() and not free_rows:
        out.append(torch.zeros((t.shape[0] + 1, *t.shape[1:]), dtype=t.dtype, device=t.device))
    if misalign and t.element_size() == 1 and t.dim() >= 1 and t.numel() > 0:
        flat = torch.zeros(t.numel() + 16, dtype=torch.uint8, device=t.device)[1:1 + t.numel()]
        out.append(flat.view(t.dtype).view(t.shape))
    if t.is_cuda and not host_ok:
        out.append(t.cpu())
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


def mutations(name: str, value, free_rows: set, host_ok: set = frozenset()) -> list:
    misalign, free = name in IN_PLACE, name in free_rows
    if isinstance(value, torch.Tensor):
        return tensor_mutations(value, misalign, free, name in host_ok)
    if isinstance(value, tuple) and value and isinstance(value[0], torch.Tensor):  # (tensor, scales) pairs
        first, second = value
        return ([(m, second) for m in tensor_mutations(first, misalign, free)]
                + [(first, m) for m in tensor_mutations(second, False, free)]
                + [first, (first,), (first, second, second)])
    return value_mutations(value, name in BOUNDED)


def fuzz(op, baselines, names_of, skip=(), free_rows=(), host_ok=()):
    """TRIALS calls of `op`, each a random baseline with one argument replaced by one of its
    mutations; `names_of[arg]`: the words an error about that argument may name; `free_rows`: the
    arguments whose leading dimension is free (cache blocks, schedule rows, keys); `host_ok`: the
    tensor arguments the op also takes on the CPU."""
    free_rows, host_ok = set(free_rows), set(host_ok)
    rng = random.Random(0)
    candidates = []
    for base in baselines:
        for name, value in base.items():
            if name in skip:
                continue
            candidates += [(base, name, i) for i in range(len(mutations(name, value, free_rows, host_ok)))]
    assert len(candidates) >= 10
    picks = [candidates[i % len(candidates)] for i in range(len(candidates))]
    picks += [rng.choice(candidates) for _ in range(max(0, TRIALS - len(picks)))]
    on_cpu = not any(isinstance(v, torch.Tensor) and v.is_cuda for base in baselines for v in base.values())
    for base, name, i in picks:
        args = dict(base)
        args[name] = mutations(name, base[name], free_rows, host_ok)[i]
        with pytest.raises((ValueError, TypeError)) as info:
            op(**args)
        message = str(info.value)
        if on_cpu:
            assert not DEVICE_ERRORS.search(message), f"{op.__name__}: broken {name} ({i}) passed the checks: {message}"
        words = names_of.get(name, (name,))
        assert any(re.search(rf"(?<![\w]){re.escape(w)}(?![\w])", message) for w in words), \
            f"{op.__name__}: broken {name} ({i}): the message names none of {words}: {message}"
    assert len(picks) >= TRIALS



# ---- every public op: valid baseline calls (on `device`) and the words its errors may name ------
PAIR_NAMES = {"input_a": ("input_a[0]", "input_a[1]", "input_a", "k"),
              "input_b": ("input_b[0]", "input_b[1]", "input_b", "k")}


def _moe_weights(experts, n, k, device):
    return fp8(experts, n, k, device=device), scales(experts, -(-n // 128), k // 128, device=device)


def _ints(values, device):
    return torch.tensor(values, dtype=torch.int32, device=device)


def gemm_fp8_nt_groupwise_case(device):
    baselines = [dict(a=fp8(m, k, device=device), b=fp8(n, k, device=device),
                      a_scale=scales(m, k // 128, device=device), b_scale=scales(-(-n // 128), k // 128, device=device),
                      out=torch.zeros((m, n), dtype=torch.bfloat16, device=device),
                      scale_granularity_mnk=(1, 128, 128), scale_major_mode="K", backend="auto")
                 for m, n, k in ((1, 128, 128), (64, 256, 512), (200, 136, 256))]
    return baselines, {"a": ("a", "k", "a_scale", "out"), "b": ("b", "n", "k", "b_scale", "out"),
                       "a_scale": ("a_scale",), "b_scale": ("b_scale",), "out": ("out",)}, {}


def bmm_fp8_case(device):
    baselines = [dict(a=fp8(batch, m, k, device=device), b=fp8(batch, n, k, device=device),
                      a_scale=scales(batch, m, k // 128, device=device),
                      b_scale=scales(batch, -(-n // 128), k // 128, device=device), out_dtype=torch.bfloat16,
                      scale_granularity_mnk=(1, 128, 128), major_a_mode="K", major_b_mode="K",
                      c=torch.zeros((batch, m, n), device=device))
                 for batch, m, n, k in ((1, 1, 128, 128), (3, 64, 256, 256))]
    return baselines, {"a": ("a", "k", "batch"), "b": ("b", "n", "k", "batch"), "a_scale": ("a_scale",),
                       "b_scale": ("b_scale",), "c": ("c",), "out_dtype": ("out_dtype",)}, {"skip": ("out_dtype",)}


def bmm_fp16_case(device):
    bf16 = torch.bfloat16
    baselines = [dict(a=torch.zeros((2, 64, 128), dtype=bf16, device=device),
                      b=torch.zeros((2, 96, 128), dtype=bf16, device=device), out_dtype=bf16,
                      c=torch.zeros((2, 64, 96), device=device), backend="auto")]
    return baselines, {"a": ("a", "k", "batch"), "b": ("b", "n", "k", "batch"), "c": ("c",)}, {"skip": ("out_dtype",)}


def ragged_m_moe_gemm_8bit_case(device):
    counts = _ints([3, 0, 70, 40], device)
    rows = 113
    baselines = [dict(input_a=(fp8(rows, 256, device=device), scales(rows, 2, device=device)),
                      input_b=_moe_weights(4, 256, 256, device), ragged_tokens_info=counts,
                      out=torch.zeros((rows, 256), dtype=torch.bfloat16, device=device),
                      gemm_mode="per_expert", major_a_mode="K", major_b_mode="K", num_mp=4)]
    return baselines, {**PAIR_NAMES, "ragged_tokens_info": ("ragged_tokens_info",), "out": ("out",)}, {}


def masked_moe_gemm_8bit_case(device):
    baselines = [dict(input_a=(fp8(4, 96, 256, device=device), scales(4, 96, 2, device=device)),
                      input_b=_moe_weights(4, 256, 256, device), masked_tokens_info=_ints([1, 96, 0, 7], device),
                      out=torch.zeros((4, 96, 256), dtype=torch.bfloat16, device=device), expect_tokens=32)]
    return baselines, {**PAIR_NAMES, "masked_tokens_info": ("masked_tokens_info",), "out": ("out",),
                       "expect_tokens": ("expect_tokens",)}, {}


def ragged_k_moe_gemm_8bit_case(device):
    baselines = [dict(input_a=(fp8(384, 96, device=device), scales(3, 96, device=device)),
                      input_b=(fp8(384, 64, device=device), scales(3, 64, device=device)),
                      ragged_tokens_info=_ints([128, 0, 256], device), out=torch.zeros((3, 96, 64), device=device),
                      major_a_mode="M", major_b_mode="N")]
    return baselines, {"input_a": ("input_a[0]", "input_a[1]", "input_a", "sum_k"),
                       "input_b": ("input_b[0]", "input_b[1]", "input_b", "sum_k", "n"),
                       "ragged_tokens_info": ("ragged_tokens_info", "sum_k"),
                       "out": ("out", "ragged_tokens_info")}, {"host_ok": ("ragged_tokens_info",)}


def get_paged_mqa_logits_metadata_case(device):
    baselines = [dict(context_lens=_ints([100, 0, 7000], device), block_kv=64, num_mps=8),
                 dict(context_lens=_ints([[5, 6], [70, 71]], device), block_kv=64, num_mps=3)]
    return baselines, {}, {"free_rows": ("context_lens",), "host_ok": ("context_lens",)}


def fp8_paged_mqa_logits_case(device):
    baselines = [dict(q=fp8(batch, next_n, heads, 128, device=device),
                      fused_kv_cache=torch.zeros((6, 64, 1, 132), dtype=torch.uint8, device=device),
                      weights=scales(batch * next_n, heads, device=device),
                      context_lens=torch.full((batch,), 100, dtype=torch.int32, device=device),
                      block_table=torch.zeros((batch, 4), dtype=torch.int32, device=device),
                      schedule_meta=torch.zeros((9, 2), dtype=torch.int32, device=device), max_context_len=300,
                      clean_logits=True)
                 for batch, next_n, heads in ((2, 1, 32), (3, 2, 64), (2, 4, 64))]
    return baselines, {"q": ("q", "weights", "context_lens", "block_table", "fused_kv_cache")}, \
        {"free_rows": ("fused_kv_cache", "schedule_meta")}


def fp8_mqa_logits_case(device):
    baselines = [dict(q=fp8(seq, heads, 128, device=device),
                      kv=(fp8(kv, 128, device=device), scales(kv, device=device)),
                      weights=scales(seq, heads, device=device),
                      cu_seq_len_k_start=torch.zeros(seq, dtype=torch.int32, device=device),
                      cu_seq_len_k_end=torch.full((seq,), kv, dtype=torch.int32, device=device), clean_logits=True,
                      max_seqlen_k=0)
                 for seq, heads, kv in ((5, 32, 100), (64, 64, 1000))]
    return baselines, {"q": ("q", "weights", "cu_seq_len_k_start", "cu_seq_len_k_end"),
                       "kv": ("kv", "kv[0]", "kv[1]")}, {"free_rows": ("kv",)}


def batch_deepgemm_fp8_nt_groupwise_case(device):
    """FlashInfer's names: errors name a, b, a_scale, b_scale, masked_m, expected_m, not the masked op's."""
    baselines = [dict(a=fp8(3, 64, 256, device=device), b=fp8(3, 128, 256, device=device),
                      a_scale=scales(3, 64, 2, device=device), b_scale=scales(3, 1, 2, device=device),
                      masked_m=_ints([5, 64, 0], device), expected_m=16,
                      out=torch.zeros((3, 64, 128), dtype=torch.bfloat16, device=device))]
    return baselines, {"a": ("a", "a_scale", "k"), "b": ("b", "b_scale", "k"), "masked_m": ("masked_m",),
                       "out": ("out",)}, {}


def fused_moe_case(device):
    def layer(tokens, experts, topk, input_fp8, expert_map):
        hidden = fp8(tokens, 256, device=device) if input_fp8 else torch.zeros((tokens, 256), dtype=torch.bfloat16,
                                                                             device=device)
        return dict(hidden_states=hidden, w1=fp8(experts, 256, 256, device=device), w2=fp8(experts, 256, 128,
                                                                                         device=device),
                    w1_scale=scales(experts, 2, 2, device=device), w2_scale=scales(experts, 2, 1, device=device),
                    topk_weights=scales(tokens, topk, device=device),
                    topk_ids=_ints([[j % experts for j in range(topk)]] * tokens, device),
                    activation="swigluoai", gemm1_alpha=1.5, gemm1_clamp_limit=7.0,
                    expert_map=_ints(list(range(experts)) + [-1] * 3, device) if expert_map else None,
                    apply_router_weight_on_input=topk == 1,
                    hidden_states_scale=scales(tokens, 2, device=device) if input_fp8 else None,
                    out=torch.zeros((tokens, 256), dtype=torch.bfloat16, device=device))

    baselines = [layer(5, 4, 2, False, False), layer(3, 8, 1, True, True)]
    weights = ("w1", "w2", "w1_scale", "w2_scale")
    return baselines, {"hidden_states": ("hidden_states", "hidden_states_scale", "topk_ids"),
                       **{w: weights for w in weights}, "topk_ids": ("topk_ids", "topk_weights"),
                       "topk_weights": ("topk_weights",), "activation": ("activation", "gemm1_alpha"),
                       "gemm1_alpha": ("gemm1_alpha",), "gemm1_clamp_limit": ("gemm1_clamp_limit",),
                       "expert_map": ("expert_map",), "apply_router_weight_on_input": ("apply_router_weight_on_input",),
                       "hidden_states_scale": ("hidden_states_scale",), "out": ("out",)}, \
        {"skip": ("global_num_experts",), "free_rows": ("expert_map",)}


def moe_gemm_mxfp8_nt_groupwise_case(device):
    baselines = [dict(a=fp8(10, 256, device=device), b=fp8(3, 64, 256, device=device),
                      a_scale=torch.zeros((16, 1), dtype=torch.int32, device=device),
                      b_scale=torch.zeros((3, 64, 1), dtype=torch.int32, device=device),
                      m_indptr=_ints([0, 4, 4, 10], device), scale_granularity_mnk=(1, 1, 128),
                      out=torch.zeros((10, 64), dtype=torch.bfloat16, device=device))]
    return baselines, {"a": ("a", "a_scale", "k", "m_indptr", "out"), "b": ("b", "b_scale", "k", "n", "a_scale",
                                                                           "m_indptr"),
                       "a_scale": ("a_scale",), "b_scale": ("b_scale",), "m_indptr": ("m_indptr", "a_scale"),
                       "scale_granularity_mnk": ("scale_granularity_mnk",), "out": ("out",)}, {"host_ok": ("m_indptr",)}


def _nvfp4_operands(device):
    """10 tokens in 3 groups (3, 0 and 7 rows: the quantiser's 2 scale tiles), 3 experts of 64 x 256."""
    return dict(a=torch.zeros((10, 128), dtype=torch.uint8, device=device),
                b=torch.zeros((3, 64, 128), dtype=torch.uint8, device=device),
                a_scales=torch.zeros((2, 4, 32, 4, 4), dtype=torch.uint8, device=device).view(E4M3),
                b_scales=torch.zeros((3, 1, 4, 32, 4, 4), dtype=torch.uint8, device=device).view(E4M3),
                group_offsets=_ints([0, 3, 3, 10], device), expert_ids=_ints([2, -1, 0], device),
                expert_scales=scales(3, device=device))


NVFP4_NAMES = {"a": ("a", "c", "out", "K"), "b": ("b", "b_scales", "expert_scales", "N", "K"),
               "group_offsets": ("group_offsets", "expert_ids", "group_scale_offsets")}


def grouped_matmul_dynamic_scaled_nvfp4_case(device):
    operands = _nvfp4_operands(device)
    baselines = [dict(c=torch.zeros((10, 64), dtype=torch.bfloat16, device=device), **operands,
                      group_scale_offsets=_ints([0, 1, 1], device), num_active_experts=count)
                 for count in (3, _ints([2], device))]
    return baselines, NVFP4_NAMES, {"free_rows": ("a_scales",)}


def nvfp4_grouped_gemm_case(device):
    operands = _nvfp4_operands(device)
    baselines = [dict(**operands, out=torch.zeros((10, 64), dtype=torch.float16, device=device),
                      out_dtype=torch.float16), dict(**operands, out=None, out_dtype=torch.bfloat16)]
    # with out None any number of token rows is a valid call (rows past the last group are left alone)
    return baselines, NVFP4_NAMES, {"free_rows": ("a_scales", "a")}


CASES = {
    "gemm_fp8_nt_groupwise": gemm_fp8_nt_groupwise_case, "bmm_fp8": bmm_fp8_case, "bmm_fp16": bmm_fp16_case,
    "ragged_m_moe_gemm_8bit": ragged_m_moe_gemm_8bit_case, "masked_moe_gemm_8bit": masked_moe_gemm_8bit_case,
    "ragged_k_moe_gemm_8bit": ragged_k_moe_gemm_8bit_case,
    "get_paged_mqa_logits_metadata": get_paged_mqa_logits_metadata_case,
    "fp8_paged_mqa_logits": fp8_paged_mqa_logits_case, "fp8_mqa_logits": fp8_mqa_logits_case,
    "batch_deepgemm_fp8_nt_groupwise": batch_deepgemm_fp8_nt_groupwise_case, "fused_moe": fused_moe_case,
    "moe_gemm_mxfp8_nt_groupwise": moe_gemm_mxfp8_nt_groupwise_case,
    "grouped_matmul_dynamic_scaled_nvfp4": grouped_matmul_dynamic_scaled_nvfp4_case,
    "nvfp4_grouped_gemm": nvfp4_grouped_gemm_case,
}


def fuzz_public_op(name: str, device: str) -> None:
    """fuzz() of mategemm.<name> around its baseline calls on `device`."""
    import mategemm

    baselines, names_of, options = CASES[name](device)
    fuzz(getattr(mategemm, name), baselines, names_of, **options)
