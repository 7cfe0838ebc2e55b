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
    """`fn`, calling ops.<its name> with every argument in `fn`'s order (defaults filled in) while traced.

    NOTES: the wrapper is written with `fn`'s own parameters (no *args / **kwargs): packing them cost
    ~0.3 us of host time per call, which decode-sized GEMMs (~10 us kernels, ~9 us of host time per
    warm call) feel."""
    signature = inspect.signature(fn)
    defaults = {f"_default_{name}": p.default for name, p in signature.parameters.items()
                if p.default is not inspect.Parameter.empty}
    params, names, passed = [], [], []
    for name, p in signature.parameters.items():
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise TypeError(f"{fn.__name__}: *args / **kwargs cannot be traced as an op's arguments")
        keyword_only = p.kind == inspect.Parameter.KEYWORD_ONLY
        if keyword_only and "*" not in params:
            params.append("*")
        params.append(f"{name}=_default_{name}" if p.default is not inspect.Parameter.empty else name)
        names.append(name)
        passed.append(f"{name}={name}" if keyword_only else name)
    source = (f"def {fn.__name__}({', '.join(params)}):\n"
              f"    if _is_compiling():\n"
              f"        return _op({', '.join(names)})\n"
              f"    return _fn({', '.join(passed)})\n")
    scope = {"_is_compiling": torch.compiler.is_compiling, "_fn": fn, **defaults,
             "_op": lambda *values: getattr(ops, fn.__name__)(*values)}
    exec(compile(source, f"<mategemm.api.{fn.__name__}>", "exec"), scope)  # noqa: S102
    return functools.wraps(fn)(scope[fn.__name__])


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
