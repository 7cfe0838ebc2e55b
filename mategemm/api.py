"""The public functions: each runs eagerly, or, while torch.compile traces it, as its torch custom
op (mategemm.ops), whose fake implementation gives the traced graph its outputs' shapes and dtypes
and whose real one runs the same eager function when the graph runs. Eager calls never pass
through the dispatcher."""
from __future__ import annotations

import functools
import inspect

import torch

from mategemm import bmm, formats, gemm, indexer, moe, moe_layer, ops


def _traced_as(fn):
    """`fn`, calling ops.<its name> with every argument in `fn`'s order (defaults filled in) while traced."""
    parameters = inspect.signature(fn).parameters
    names = tuple(parameters)
    defaults = {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    is_compiling = torch.compiler.is_compiling  # NOTES: looked up once: each lookup is host time per call

    @functools.wraps(fn)
    def dispatch(*args, **kwargs):
        if is_compiling():
            values = list(args) + [kwargs[name] if name in kwargs else defaults[name] for name in names[len(args):]]
            return getattr(ops, fn.__name__)(*values)
        return fn(*args, **kwargs)

    return dispatch


gemm_fp8_nt_groupwise = _traced_as(gemm.gemm_fp8_nt_groupwise)
bmm_fp8 = _traced_as(bmm.bmm_fp8)
bmm_fp16 = _traced_as(bmm.bmm_fp16)
ragged_m_moe_gemm_8bit = _traced_as(moe.ragged_m_moe_gemm_8bit)
masked_moe_gemm_8bit = _traced_as(moe.masked_moe_gemm_8bit)
batch_deepgemm_fp8_nt_groupwise = _traced_as(moe.batch_deepgemm_fp8_nt_groupwise)
ragged_k_moe_gemm_8bit = _traced_as(moe.ragged_k_moe_gemm_8bit)
get_paged_mqa_logits_metadata = _traced_as(indexer.get_paged_mqa_logits_metadata)
fp8_paged_mqa_logits = _traced_as(indexer.fp8_paged_mqa_logits)
fp8_mqa_logits = _traced_as(indexer.fp8_mqa_logits)
fused_moe = _traced_as(moe_layer.fused_moe)
moe_gemm_mxfp8_nt_groupwise = _traced_as(formats.moe_gemm_mxfp8_nt_groupwise)
grouped_matmul_dynamic_scaled_nvfp4 = _traced_as(formats.grouped_matmul_dynamic_scaled_nvfp4)
nvfp4_grouped_gemm = _traced_as(formats.nvfp4_grouped_gemm)
