"""torch.compile and torch.library.opcheck through the custom ops, on the CPU: where the ops call the
kernels, the fp64 references stand in (monkeypatched), so what runs is the plumbing: dynamo's full
graph, AOT functionalisation of out=, and the fake implementations against real outputs' metadata.
tests/gpu/test_torch_integration.py runs the same with the kernels."""
import pytest
import torch

import mategemm
from mategemm import gemm, indexer, moe
from mategemm.testing import fp8_gemm_reference, make_fp8_gemm_inputs, make_expert_weights, make_tokens
from mategemm.testing import indexer as ref
from mategemm.testing.moe import masked_reference


def reference_gemm(a, b, a_scale, b_scale, scale_major_mode=None, mma_sm=None, scale_granularity_mnk=None,
                   out=None, out_dtype=None, backend="auto", output_scale=None):
    result = fp8_gemm_reference(a, b, a_scale, b_scale, scale_granularity_mnk or (1, 128, 128),
                                scale_major_mode or "K")
    result = result.to(out.dtype if out is not None else out_dtype or torch.bfloat16)
    return result if out is None else out.copy_(result)


def reference_masked(input_a, input_b, masked_tokens_info, out=None, scale_granularity_mnk=None,
                     expect_tokens=None, enable_overlap=False, signal=None, backend="auto"):
    result = masked_reference(*input_a, *input_b, masked_tokens_info).nan_to_num(0.0)
    if out is None:
        return result.to(torch.bfloat16)
    return out.copy_(result)


def reference_paged(q, fused_kv_cache, weights, context_lens, block_table, schedule_meta, max_context_len,
                    clean_logits, logits_dtype=torch.float32):
    return ref.paged_reference(q, fused_kv_cache, weights, context_lens, block_table, max_context_len,
                               clean_logits).to(logits_dtype)


@pytest.fixture
def references(monkeypatch):
    monkeypatch.setattr(gemm, "gemm_fp8_nt_groupwise", reference_gemm)
    monkeypatch.setattr(moe, "masked_moe_gemm_8bit", reference_masked)
    monkeypatch.setattr(indexer, "fp8_paged_mqa_logits", reference_paged)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def gemm_inputs():
    return make_fp8_gemm_inputs(64, 256, 256, device="cpu", generator=torch.Generator().manual_seed(0))


def masked_inputs():
    gen = torch.Generator().manual_seed(1)
    a, sa = make_tokens(2 * 32, 256, device="cpu", generator=gen)
    b, sb = make_expert_weights(2, 128, 256, device="cpu", generator=gen)
    return (a.view(2, 32, 256), sa.view(2, 32, 2)), (b, sb), torch.tensor([32, 32], dtype=torch.int32)


def paged_inputs():
    case = ref.make_paged_case(3, 2, 32, [70, 1, 200], generator=torch.Generator().manual_seed(2))
    meta = mategemm.get_paged_mqa_logits_metadata(case["context_lens"], 64, 4)  # runs on the CPU
    return (case["q"], case["fused_kv_cache"], case["weights"], case["context_lens"], case["block_table"], meta,
            case["max_context_len"], True)


def model(api, a, b, sa, sb, input_a, input_b, counts, paged):
    y = api.gemm_fp8_nt_groupwise(a, b, sa, sb)
    z = api.masked_moe_gemm_8bit(input_a, input_b, counts)
    logits = api.fp8_paged_mqa_logits(*paged)
    return torch.relu(y.float()) * 2, z.float().sum(dim=1), logits.clamp(min=-1e30)


class References:
    gemm_fp8_nt_groupwise = staticmethod(reference_gemm)
    masked_moe_gemm_8bit = staticmethod(reference_masked)
    fp8_paged_mqa_logits = staticmethod(reference_paged)


def test_compile_fullgraph_through_the_ops(references):
    args = (*gemm_inputs(), *masked_inputs(), paged_inputs())
    compiled = torch.compile(lambda *a: model(mategemm, *a), fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(*args), model(References, *args)):
        assert torch.equal(got, want)


def test_compile_out_variant_writes_its_argument(references):
    a, b, sa, sb = gemm_inputs()

    def step(a, b, sa, sb, out):
        mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out)
        return out + 1

    out = torch.zeros(64, 256, dtype=torch.float16)
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(a, b, sa, sb, out)
    want = reference_gemm(a, b, sa, sb, out_dtype=torch.float16)
    assert torch.equal(out, want) and torch.equal(got, want + 1)


def test_opcheck_fake_implementations_match_real_outputs(references):
    a, b, sa, sb = gemm_inputs()
    (xa, xsa), (w, wsb), counts = masked_inputs()
    checks = [
        (torch.ops.mategemm.gemm_fp8_nt_groupwise.default, (a, b, sa, sb, None, None, None, None, "auto", None)),
        (torch.ops.mategemm.gemm_fp8_nt_groupwise.default,
         (a, b, sa, sb, None, None, [1, 128, 128], torch.float16, "auto", None)),
        (torch.ops.mategemm.gemm_fp8_nt_groupwise_out.default,
         (a, b, sa, sb, None, None, None, torch.empty(64, 256, dtype=torch.bfloat16), None, "auto", None)),
        (torch.ops.mategemm.masked_moe_gemm_8bit.default, (xa, xsa, w, wsb, counts, None, None, "auto")),
        (torch.ops.mategemm.fp8_paged_mqa_logits.default, paged_inputs()),
        (torch.ops.mategemm.get_paged_mqa_logits_metadata.default,
         (torch.tensor([70, 1, 200], dtype=torch.int32), 64, 4)),
    ]
    for op, args in checks:
        # test_schema is left out: its mutation check compares inputs with allclose, which FP8 lacks
        torch.library.opcheck(op, args, test_utils=("test_faketensor", "test_aot_dispatch_dynamic"))
