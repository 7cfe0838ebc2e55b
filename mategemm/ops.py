"""The public functions as torch custom ops (torch.library), for torch.compile and CUDA graphs.

Each public function, while torch.compile traces it, calls its op here instead of running: the op's
fake implementation gives dynamo the output's shape and dtype, and the compiled graph calls the
real function (through the op) when it runs. Functions that return a new tensor have a functional
op `mategemm::<name>` and a `mategemm::<name>_out` that writes `out` (declared mutated); functions
whose `out` is required have only the latter. Eager calls never go through here (no dispatcher
overhead). Each op's arguments have its function's defaults, except those before a required argument
(a schema's defaults are trailing) and `out` of the `_out` ops.
"""
from typing import List, Optional

import torch

from mategemm import bmm, formats, gemm, indexer, moe
from mategemm import moe_layer
from mategemm.runtime import device as rt_device

# Annotations torch.library reads to infer each op's schema (evaluated, in forms every torch takes).
Tensor = torch.Tensor
OptTensor = Optional[torch.Tensor]
OptDtype = Optional[torch.dtype]
OptInts = Optional[List[int]]
OptInt = Optional[int]
OptStr = Optional[str]


def _op(name, mutates=()):
    return torch.library.custom_op(f"mategemm::{name}", mutates_args=mutates)


def _tuple(values):
    return None if values is None else tuple(values)


def _list(values, name="scale_granularity_mnk"):
    """A recipe as the ops' int[] (the eager checks run later, inside the op, on the tuple again)."""
    if values is None:
        return None
    if not isinstance(values, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise TypeError(f"{name} must be a tuple of three ints, got {values!r}")
    return list(values)


# ---- gemm_fp8_nt_groupwise ----------------------------------------------------------------------

@_op("gemm_fp8_nt_groupwise")
def _gemm(a: Tensor, b: Tensor, a_scale: Tensor, b_scale: Tensor, scale_major_mode: OptStr = None,
          mma_sm: OptInt = None, scale_granularity_mnk: OptInts = None, out_dtype: OptDtype = None,
          backend: str = "auto", output_scale: OptTensor = None) -> Tensor:
    return gemm.gemm_fp8_nt_groupwise(a, b, a_scale, b_scale, scale_major_mode, mma_sm, _tuple(scale_granularity_mnk),
                                      None, out_dtype, backend, output_scale)


@_gemm.register_fake
def _(a, b, a_scale, b_scale, scale_major_mode=None, mma_sm=None, scale_granularity_mnk=None, out_dtype=None,
      backend="auto", output_scale=None):
    dtype = torch.float8_e4m3fn if output_scale is not None else out_dtype or torch.bfloat16
    return a.new_empty((a.shape[0], b.shape[0]), dtype=dtype)


@_op("gemm_fp8_nt_groupwise_out", ("out",))
def _gemm_out(a: Tensor, b: Tensor, a_scale: Tensor, b_scale: Tensor, scale_major_mode: OptStr,
              mma_sm: OptInt, scale_granularity_mnk: OptInts, out: Tensor, out_dtype: OptDtype = None,
              backend: str = "auto", output_scale: OptTensor = None) -> None:
    gemm.gemm_fp8_nt_groupwise(a, b, a_scale, b_scale, scale_major_mode, mma_sm, _tuple(scale_granularity_mnk), out,
                               out_dtype, backend, output_scale)


def gemm_fp8_nt_groupwise(a, b, a_scale, b_scale, scale_major_mode, mma_sm, scale_granularity_mnk, out, out_dtype,
                          backend, output_scale):
    args = (a, b, a_scale, b_scale, scale_major_mode, mma_sm, _list(scale_granularity_mnk))
    if out is None:
        return _gemm(*args, out_dtype, backend, output_scale)
    _gemm_out(*args, out, out_dtype, backend, output_scale)
    return out


# ---- bmm_fp8 / bmm_fp16 --------------------------------------------------------------------------

@_op("bmm_fp8")
def _bmm_fp8(a: Tensor, b: Tensor, a_scale: Tensor, b_scale: Tensor, out_dtype: torch.dtype, backend: str = "auto",
             scale_granularity_mnk: OptInts = None, output_scale: OptTensor = None, c: OptTensor = None,
             major_a_mode: str = "K", major_b_mode: str = "K") -> Tensor:
    return bmm.bmm_fp8(a, b, a_scale, b_scale, out_dtype, None, backend, _tuple(scale_granularity_mnk), output_scale,
                       c, major_a_mode, major_b_mode)


@_bmm_fp8.register_fake
def _(a, b, a_scale, b_scale, out_dtype, backend="auto", scale_granularity_mnk=None, output_scale=None, c=None,
      major_a_mode="K", major_b_mode="K"):
    m = a.shape[2] if major_a_mode == "M" else a.shape[1]
    n = b.shape[2] if major_b_mode == "N" else b.shape[1]
    return a.new_empty((a.shape[0], m, n), dtype=out_dtype)


@_op("bmm_fp8_out", ("out",))
def _bmm_fp8_out(a: Tensor, b: Tensor, a_scale: Tensor, b_scale: Tensor, out_dtype: torch.dtype, out: Tensor,
                 backend: str = "auto", scale_granularity_mnk: OptInts = None, output_scale: OptTensor = None,
                 c: OptTensor = None, major_a_mode: str = "K", major_b_mode: str = "K") -> None:
    bmm.bmm_fp8(a, b, a_scale, b_scale, out_dtype, out, backend, _tuple(scale_granularity_mnk), output_scale, c,
                major_a_mode, major_b_mode)


def bmm_fp8(a, b, a_scale, b_scale, out_dtype, out, backend, scale_granularity_mnk, output_scale, c, major_a_mode,
            major_b_mode):
    rest = (backend, _list(scale_granularity_mnk), output_scale, c, major_a_mode, major_b_mode)
    if out is None:
        return _bmm_fp8(a, b, a_scale, b_scale, out_dtype, *rest)
    _bmm_fp8_out(a, b, a_scale, b_scale, out_dtype, out, *rest)
    return out


@_op("bmm_fp16")
def _bmm_fp16(a: Tensor, b: Tensor, out_dtype: torch.dtype, backend: str = "auto", c: OptTensor = None) -> Tensor:
    return bmm.bmm_fp16(a, b, out_dtype, None, backend, c)


@_bmm_fp16.register_fake
def _(a, b, out_dtype, backend="auto", c=None):
    return a.new_empty((a.shape[0], a.shape[1], b.shape[1]), dtype=out_dtype)


@_op("bmm_fp16_out", ("out",))
def _bmm_fp16_out(a: Tensor, b: Tensor, out_dtype: torch.dtype, out: Tensor, backend: str = "auto",
                  c: OptTensor = None) -> None:
    bmm.bmm_fp16(a, b, out_dtype, out, backend, c)


def bmm_fp16(a, b, out_dtype, out, backend, c):
    if out is None:
        return _bmm_fp16(a, b, out_dtype, backend, c)
    _bmm_fp16_out(a, b, out_dtype, out, backend, c)
    return out


# ---- MoE grouped GEMMs ----------------------------------------------------------------------------

@_op("ragged_m_moe_gemm_8bit_out", ("out",))
def _ragged_m_out(a: Tensor, a_scale: Tensor, b: Tensor, b_scale: Tensor, ragged_tokens_info: Tensor, out: Tensor,
                  gemm_mode: str = "per_token", major_a_mode: str = "K", major_b_mode: str = "K",
                  scale_granularity_mnk: OptInts = None, num_mp: OptInt = None, alignment_m: OptInt = None,
                  backend: str = "auto") -> None:
    moe.ragged_m_moe_gemm_8bit((a, a_scale), (b, b_scale), ragged_tokens_info, out, gemm_mode, major_a_mode,
                               major_b_mode, _tuple(scale_granularity_mnk), num_mp, alignment_m, backend)


def ragged_m_moe_gemm_8bit(input_a, input_b, ragged_tokens_info, out, gemm_mode, major_a_mode, major_b_mode,
                           scale_granularity_mnk, num_mp, alignment_m, backend):
    _ragged_m_out(*input_a, *input_b, ragged_tokens_info, out, gemm_mode, major_a_mode, major_b_mode,
                  _list(scale_granularity_mnk), num_mp, alignment_m, backend)
    return out


@_op("ragged_k_moe_gemm_8bit_out", ("out",))
def _ragged_k_out(a: Tensor, a_scale: Tensor, b: Tensor, b_scale: Tensor, ragged_tokens_info: Tensor, out: Tensor,
                  gemm_mode: str = "per_expert", major_a_mode: str = "M", major_b_mode: str = "N",
                  scale_granularity_mnk: OptInts = None, num_mp: OptInt = None) -> None:
    moe.ragged_k_moe_gemm_8bit((a, a_scale), (b, b_scale), ragged_tokens_info, out, gemm_mode, major_a_mode,
                               major_b_mode, _tuple(scale_granularity_mnk), num_mp)


def ragged_k_moe_gemm_8bit(input_a, input_b, ragged_tokens_info, out, gemm_mode, major_a_mode, major_b_mode,
                           scale_granularity_mnk, num_mp):
    _ragged_k_out(*input_a, *input_b, ragged_tokens_info, out, gemm_mode, major_a_mode, major_b_mode,
                  _list(scale_granularity_mnk), num_mp)
    return out


@_op("masked_moe_gemm_8bit")
def _masked(a: Tensor, a_scale: Tensor, b: Tensor, b_scale: Tensor, masked_tokens_info: Tensor,
            scale_granularity_mnk: OptInts = None, expect_tokens: OptInt = None, backend: str = "auto") -> Tensor:
    return moe.masked_moe_gemm_8bit((a, a_scale), (b, b_scale), masked_tokens_info, None,
                                    _tuple(scale_granularity_mnk), expect_tokens, False, None, backend)


@_masked.register_fake
def _(a, a_scale, b, b_scale, masked_tokens_info, scale_granularity_mnk=None, expect_tokens=None, backend="auto"):
    return a.new_empty((a.shape[0], a.shape[1], b.shape[1]), dtype=torch.bfloat16)


@_op("masked_moe_gemm_8bit_out", ("out",))
def _masked_out(a: Tensor, a_scale: Tensor, b: Tensor, b_scale: Tensor, masked_tokens_info: Tensor, out: Tensor,
                scale_granularity_mnk: OptInts = None, expect_tokens: OptInt = None, backend: str = "auto") -> None:
    moe.masked_moe_gemm_8bit((a, a_scale), (b, b_scale), masked_tokens_info, out, _tuple(scale_granularity_mnk),
                             expect_tokens, False, None, backend)


def masked_moe_gemm_8bit(input_a, input_b, masked_tokens_info, out, scale_granularity_mnk, expect_tokens,
                         enable_overlap, signal, backend):
    if enable_overlap or signal is not None:
        raise ValueError("enable_overlap (and signal) is not supported under torch.compile: its (block_m, "
                         "threshold) are host values chosen at run time; call it outside the compiled region")
    args = (*input_a, *input_b, masked_tokens_info)
    rest = (_list(scale_granularity_mnk), expect_tokens, backend)
    if out is None:
        return _masked(*args, *rest)
    _masked_out(*args, out, *rest)
    return out


@_op("batch_deepgemm_fp8_nt_groupwise_out", ("out",))
def _batch_deepgemm_out(a: Tensor, b: Tensor, a_scale: Tensor, b_scale: Tensor, masked_m: Tensor, expected_m: int,
                        scale_granularity_mnk: List[int], out: Tensor, out_dtype: OptDtype = None) -> None:
    moe.batch_deepgemm_fp8_nt_groupwise(a, b, a_scale, b_scale, masked_m, expected_m, tuple(scale_granularity_mnk),
                                        out, out_dtype)


def batch_deepgemm_fp8_nt_groupwise(a, b, a_scale, b_scale, masked_m, expected_m, scale_granularity_mnk, out,
                                    out_dtype):
    if out is None:
        out = a.new_empty((a.shape[0], a.shape[1], b.shape[1]), dtype=out_dtype or torch.bfloat16)
    _batch_deepgemm_out(a, b, a_scale, b_scale, masked_m, expected_m, _list(scale_granularity_mnk), out, out_dtype)
    return out


# ---- lightning indexer ----------------------------------------------------------------------------

@_op("get_paged_mqa_logits_metadata")
def _metadata(context_lens: Tensor, block_kv: int, num_mps: int = 0) -> Tensor:
    return indexer.get_paged_mqa_logits_metadata(context_lens, block_kv, num_mps)


@_metadata.register_fake
def _(context_lens, block_kv, num_mps=0):
    if num_mps == 0:
        num_mps = rt_device.device_info(context_lens.device.index).num_sms
    return context_lens.new_empty((num_mps + 1, 2), dtype=torch.int32)


def get_paged_mqa_logits_metadata(context_lens, block_kv, num_mps):
    return _metadata(context_lens, block_kv, num_mps)


@_op("fp8_paged_mqa_logits")
def _paged(q: Tensor, fused_kv_cache: Tensor, weights: Tensor, context_lens: Tensor, block_table: Tensor,
           schedule_meta: Tensor, max_context_len: int, clean_logits: bool,
           logits_dtype: torch.dtype = torch.float32) -> Tensor:
    return indexer.fp8_paged_mqa_logits(q, fused_kv_cache, weights, context_lens, block_table, schedule_meta,
                                        max_context_len, clean_logits, logits_dtype)


@_paged.register_fake
def _(q, fused_kv_cache, weights, context_lens, block_table, schedule_meta, max_context_len, clean_logits,
      logits_dtype=torch.float32):
    return q.new_empty((q.shape[0] * q.shape[1], max_context_len), dtype=logits_dtype)


def fp8_paged_mqa_logits(q, fused_kv_cache, weights, context_lens, block_table, schedule_meta, max_context_len,
                         clean_logits, logits_dtype):
    return _paged(q, fused_kv_cache, weights, context_lens, block_table, schedule_meta, max_context_len, clean_logits,
                  logits_dtype)


@_op("fp8_mqa_logits")
def _prefill(q: Tensor, k: Tensor, k_scale: Tensor, weights: Tensor, cu_seq_len_k_start: Tensor,
             cu_seq_len_k_end: Tensor, clean_logits: bool = True, max_seqlen_k: int = 0,
             logits_dtype: torch.dtype = torch.float32) -> Tensor:
    return indexer.fp8_mqa_logits(q, (k, k_scale), weights, cu_seq_len_k_start, cu_seq_len_k_end, clean_logits,
                                  max_seqlen_k, logits_dtype)


@_prefill.register_fake
def _(q, k, k_scale, weights, cu_seq_len_k_start, cu_seq_len_k_end, clean_logits=True, max_seqlen_k=0,
      logits_dtype=torch.float32):
    return q.new_empty((q.shape[0], max_seqlen_k if max_seqlen_k > 0 else k.shape[0]), dtype=logits_dtype)


def fp8_mqa_logits(q, kv, weights, cu_seq_len_k_start, cu_seq_len_k_end, clean_logits, max_seqlen_k, logits_dtype):
    return _prefill(q, *kv, weights, cu_seq_len_k_start, cu_seq_len_k_end, clean_logits, max_seqlen_k, logits_dtype)


# ---- the fused MoE layer ------------------------------------------------------------------------
OptFloat = Optional[float]


@_op("fused_moe")
def _fused_moe(hidden_states: Tensor, w1: Tensor, w2: Tensor, w1_scale: Tensor, w2_scale: Tensor,
               topk_weights: Tensor, topk_ids: Tensor, activation: str = "silu", gemm1_alpha: OptFloat = None,
               gemm1_beta: OptFloat = None, gemm1_clamp_limit: OptFloat = None, expert_map: OptTensor = None,
               global_num_experts: int = -1, apply_router_weight_on_input: bool = False,
               hidden_states_scale: OptTensor = None) -> Tensor:
    return moe_layer.fused_moe(
        hidden_states, w1, w2, w1_scale, w2_scale, topk_weights, topk_ids, activation=activation,
        gemm1_alpha=gemm1_alpha, gemm1_beta=gemm1_beta, gemm1_clamp_limit=gemm1_clamp_limit, expert_map=expert_map,
        global_num_experts=global_num_experts, apply_router_weight_on_input=apply_router_weight_on_input,
        hidden_states_scale=hidden_states_scale)


@_fused_moe.register_fake
def _(hidden_states, w1, w2, w1_scale, w2_scale, topk_weights, topk_ids, activation="silu", gemm1_alpha=None,
      gemm1_beta=None, gemm1_clamp_limit=None, expert_map=None, global_num_experts=-1,
      apply_router_weight_on_input=False, hidden_states_scale=None):
    return hidden_states.new_empty(hidden_states.shape, dtype=torch.bfloat16)


@_op("fused_moe_out", ("out",))
def _fused_moe_out(hidden_states: Tensor, w1: Tensor, w2: Tensor, w1_scale: Tensor, w2_scale: Tensor,
                   topk_weights: Tensor, topk_ids: Tensor, out: Tensor, activation: str = "silu",
                   gemm1_alpha: OptFloat = None, gemm1_beta: OptFloat = None, gemm1_clamp_limit: OptFloat = None,
                   expert_map: OptTensor = None, global_num_experts: int = -1,
                   apply_router_weight_on_input: bool = False, hidden_states_scale: OptTensor = None) -> None:
    moe_layer.fused_moe(
        hidden_states, w1, w2, w1_scale, w2_scale, topk_weights, topk_ids, activation=activation,
        gemm1_alpha=gemm1_alpha, gemm1_beta=gemm1_beta, gemm1_clamp_limit=gemm1_clamp_limit, expert_map=expert_map,
        global_num_experts=global_num_experts, apply_router_weight_on_input=apply_router_weight_on_input,
        hidden_states_scale=hidden_states_scale, out=out)


def fused_moe(hidden_states, w1, w2, w1_scale, w2_scale, topk_weights, topk_ids, activation, gemm1_alpha, gemm1_beta,
              gemm1_clamp_limit, expert_map, global_num_experts, apply_router_weight_on_input, hidden_states_scale,
              out):
    args = (hidden_states, w1, w2, w1_scale, w2_scale, topk_weights, topk_ids)
    options = (gemm1_alpha, gemm1_beta, gemm1_clamp_limit, expert_map, global_num_experts,
               apply_router_weight_on_input, hidden_states_scale)
    if out is None:
        return _fused_moe(*args, activation, *options)
    _fused_moe_out(*args, out, activation, *options)
    return out


# ---- MXFP8 grouped GEMM -------------------------------------------------------------------------
MXFP8_DEFAULT_GRANULARITY = (1, 1, 128)


@_op("moe_gemm_mxfp8_nt_groupwise")
def _mxfp8(a: Tensor, b: Tensor, a_scale: Tensor, b_scale: Tensor, m_indptr: Tensor,
           scale_granularity_mnk: OptInts = None, scale_major_mode: str = "MN", backend: str = "auto",
           out_dtype: OptDtype = None) -> Tensor:  # a schema has no tuple default: None is (1, 1, 128)
    return formats.moe_gemm_mxfp8_nt_groupwise(a, b, a_scale, b_scale, m_indptr,
                                               _tuple(scale_granularity_mnk) or MXFP8_DEFAULT_GRANULARITY,
                                               scale_major_mode, backend, None, out_dtype)


@_mxfp8.register_fake
def _(a, b, a_scale, b_scale, m_indptr, scale_granularity_mnk=None, scale_major_mode="MN", backend="auto",
      out_dtype=None):
    return a.new_empty((a.shape[0], b.shape[1]), dtype=torch.bfloat16)


@_op("moe_gemm_mxfp8_nt_groupwise_out", ("out",))
def _mxfp8_out(a: Tensor, b: Tensor, a_scale: Tensor, b_scale: Tensor, m_indptr: Tensor,
               scale_granularity_mnk: OptInts, scale_major_mode: str, backend: str, out: Tensor,
               out_dtype: OptDtype = None) -> None:
    formats.moe_gemm_mxfp8_nt_groupwise(a, b, a_scale, b_scale, m_indptr,
                                        _tuple(scale_granularity_mnk) or MXFP8_DEFAULT_GRANULARITY, scale_major_mode,
                                        backend, out, out_dtype)


def moe_gemm_mxfp8_nt_groupwise(a, b, a_scale, b_scale, m_indptr, scale_granularity_mnk, scale_major_mode, backend,
                                out, out_dtype):
    args = (a, b, a_scale, b_scale, m_indptr, _list(scale_granularity_mnk), scale_major_mode, backend)
    if out is None:
        return _mxfp8(*args, out_dtype)
    _mxfp8_out(*args, out, out_dtype)
    return out


# ---- NVFP4 grouped GEMM -------------------------------------------------------------------------
# num_active_experts is an int or a tensor: the schema holds the one given (the other None).

@_op("grouped_matmul_dynamic_scaled_nvfp4_out", ("c",))
def _nvfp4_max_out(c: Tensor, a: Tensor, b: Tensor, a_scales: Tensor, b_scales: Tensor, group_offsets: Tensor,
                   group_scale_offsets: Tensor, expert_ids: Tensor, expert_scales: Tensor,
                   num_active_experts: OptInt, num_active_experts_tensor: OptTensor) -> None:
    formats.grouped_matmul_dynamic_scaled_nvfp4(
        c, a, b, a_scales, b_scales, group_offsets, group_scale_offsets, expert_ids, expert_scales,
        num_active_experts_tensor if num_active_experts is None else num_active_experts)


def grouped_matmul_dynamic_scaled_nvfp4(c, a, b, a_scales, b_scales, group_offsets, group_scale_offsets, expert_ids,
                                        expert_scales, num_active_experts):
    as_tensor = isinstance(num_active_experts, torch.Tensor)
    _nvfp4_max_out(c, a, b, a_scales, b_scales, group_offsets, group_scale_offsets, expert_ids, expert_scales,
                   None if as_tensor else num_active_experts, num_active_experts if as_tensor else None)
    return c


@_op("nvfp4_grouped_gemm")
def _nvfp4(a: Tensor, b: Tensor, a_scales: Tensor, b_scales: Tensor, group_offsets: Tensor, expert_ids: Tensor,
           expert_scales: Tensor, out_dtype: torch.dtype = torch.bfloat16) -> Tensor:
    return formats.nvfp4_grouped_gemm(a, b, a_scales, b_scales, group_offsets, expert_ids, expert_scales, None,
                                      out_dtype)


@_nvfp4.register_fake
def _(a, b, a_scales, b_scales, group_offsets, expert_ids, expert_scales, out_dtype=torch.bfloat16):
    return a.new_empty((a.shape[0], b.shape[1]), dtype=out_dtype)


@_op("nvfp4_grouped_gemm_out", ("out",))
def _nvfp4_out(a: Tensor, b: Tensor, a_scales: Tensor, b_scales: Tensor, group_offsets: Tensor, expert_ids: Tensor,
               expert_scales: Tensor, out: Tensor, out_dtype: torch.dtype = torch.bfloat16) -> None:
    formats.nvfp4_grouped_gemm(a, b, a_scales, b_scales, group_offsets, expert_ids, expert_scales, out, out_dtype)


def nvfp4_grouped_gemm(a, b, a_scales, b_scales, group_offsets, expert_ids, expert_scales, out, out_dtype):
    args = (a, b, a_scales, b_scales, group_offsets, expert_ids, expert_scales)
    if out is None:
        return _nvfp4(*args, out_dtype)
    _nvfp4_out(*args, out, out_dtype)
    return out
