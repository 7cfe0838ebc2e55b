"""The torch custom ops without a GPU: every public function traces (dynamo, fullgraph) into its op
with fake CUDA tensors, and the fake implementations give the eager outputs' shapes and dtypes."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import mategemm

E4 = torch.float8_e4m3fn
OPS = {"gemm_fp8_nt_groupwise", "gemm_fp8_nt_groupwise_out", "bmm_fp8", "bmm_fp8_out", "bmm_fp16", "bmm_fp16_out",
       "ragged_m_moe_gemm_8bit_out", "ragged_k_moe_gemm_8bit_out", "masked_moe_gemm_8bit", "masked_moe_gemm_8bit_out",
       "batch_deepgemm_fp8_nt_groupwise_out", "get_paged_mqa_logits_metadata", "fp8_paged_mqa_logits",
       "fp8_mqa_logits"}


def test_every_public_function_has_its_ops():
    registered = {name for name in dir(torch.ops.mategemm) if not name.startswith("_") and name != "name"}
    assert registered == OPS
    public = set(mategemm.__all__) - {"get_num_mp", "set_num_mp", "__version__"}
    assert public == {name.removesuffix("_out") for name in OPS}


def empty(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="cuda")


# (call of the public API on fake CUDA tensors, expected (shape, dtype) of its result, op it traces to)
CASES = {
    "gemm": (lambda: mategemm.gemm_fp8_nt_groupwise(empty(40, 256, dtype=E4), empty(72, 256, dtype=E4),
                                                    empty(40, 2), empty(1, 2)),
             ((40, 72), torch.bfloat16), "gemm_fp8_nt_groupwise"),
    "gemm fp8 out": (lambda: mategemm.gemm_fp8_nt_groupwise(empty(40, 256, dtype=E4), empty(72, 256, dtype=E4),
                                                            empty(40, 2), empty(1, 2), output_scale=empty(1)),
                     ((40, 72), E4), "gemm_fp8_nt_groupwise"),
    "gemm out=": (lambda: mategemm.gemm_fp8_nt_groupwise(empty(40, 256, dtype=E4), empty(72, 256, dtype=E4),
                                                         empty(40, 2), empty(1, 2),
                                                         out=empty(40, 72, dtype=torch.half)),
                  ((40, 72), torch.half), "gemm_fp8_nt_groupwise_out"),
    "bmm_fp8 M/N-major": (lambda: mategemm.bmm_fp8(empty(3, 256, 40, dtype=E4), empty(3, 256, 64, dtype=E4), empty(1),
                                                   empty(1), torch.float32, major_a_mode="M", major_b_mode="N"),
                          ((3, 40, 64), torch.float32), "bmm_fp8"),
    "bmm_fp8 out=": (lambda: mategemm.bmm_fp8(empty(3, 40, 256, dtype=E4), empty(3, 64, 256, dtype=E4), empty(1),
                                              empty(1), torch.bfloat16, out=empty(3, 40, 64, dtype=torch.bfloat16)),
                     ((3, 40, 64), torch.bfloat16), "bmm_fp8_out"),
    "bmm_fp16": (lambda: mategemm.bmm_fp16(empty(2, 9, 64, dtype=torch.half), empty(2, 24, 64, dtype=torch.half),
                                           torch.float32),
                 ((2, 9, 24), torch.float32), "bmm_fp16"),
    "ragged_m": (lambda: mategemm.ragged_m_moe_gemm_8bit(
        (empty(256, 256, dtype=E4), empty(256, 2)), (empty(4, 128, 256, dtype=E4), empty(4, 1, 2)),
        empty(256, dtype=torch.int32), empty(256, 128, dtype=torch.bfloat16)),
        ((256, 128), torch.bfloat16), "ragged_m_moe_gemm_8bit_out"),
    "ragged_k": (lambda: mategemm.ragged_k_moe_gemm_8bit(
        (empty(512, 64, dtype=E4), empty(4, 64)), (empty(512, 32, dtype=E4), empty(4, 32)),
        empty(2, dtype=torch.int32), empty(2, 64, 32)),
        ((2, 64, 32), torch.float32), "ragged_k_moe_gemm_8bit_out"),
    "masked": (lambda: mategemm.masked_moe_gemm_8bit(
        (empty(4, 64, 256, dtype=E4), empty(4, 64, 2)), (empty(4, 128, 256, dtype=E4), empty(4, 1, 2)),
        empty(4, dtype=torch.int32)),
        ((4, 64, 128), torch.bfloat16), "masked_moe_gemm_8bit"),
    "batch_deepgemm": (lambda: mategemm.batch_deepgemm_fp8_nt_groupwise(
        empty(4, 64, 256, dtype=E4), empty(4, 128, 256, dtype=E4), empty(4, 64, 2), empty(4, 1, 2),
        empty(4, dtype=torch.int32), 16, out_dtype=torch.half),
        ((4, 64, 128), torch.half), "batch_deepgemm_fp8_nt_groupwise_out"),
    "metadata": (lambda: mategemm.get_paged_mqa_logits_metadata(empty(5, dtype=torch.int32), 64, 7),
                 ((8, 2), torch.int32), "get_paged_mqa_logits_metadata"),
    "paged logits": (lambda: mategemm.fp8_paged_mqa_logits(
        empty(5, 2, 64, 128, dtype=E4), empty(30, 64, 1, 132, dtype=torch.uint8), empty(10, 64),
        empty(5, dtype=torch.int32), empty(5, 6, dtype=torch.int32), empty(9, 2, dtype=torch.int32), 333, True),
        ((10, 333), torch.float32), "fp8_paged_mqa_logits"),
    "prefill logits": (lambda: mategemm.fp8_mqa_logits(
        empty(7, 32, 128, dtype=E4), (empty(50, 128, dtype=E4), empty(50)), empty(7, 32),
        empty(7, dtype=torch.int32), empty(7, dtype=torch.int32)),
        ((7, 50), torch.float32), "fp8_mqa_logits"),
    "prefill compressed": (lambda: mategemm.deep_gemm.fp8_mqa_logits(
        empty(7, 32, 128, dtype=E4), (empty(50, 128, dtype=E4), empty(50)), empty(7, 32),
        empty(7, dtype=torch.int32), empty(7, dtype=torch.int32), max_seqlen_k=20),
        ((7, 20), torch.float32), "fp8_mqa_logits"),
}


class Calls(torch.nn.Module):
    def __init__(self, call):
        super().__init__()
        self.call = call

    def forward(self, x):
        return self.call(), x + 1


@pytest.mark.parametrize("case", CASES)
def test_public_call_traces_to_its_op(case):
    """dynamo (torch.export strict: a full graph, no break) sees the op, and its fake output."""
    call, (shape, dtype), op = CASES[case]
    with FakeTensorMode():
        program = torch.export.export(Calls(call), (torch.empty(2, device="cuda"),), strict=True)
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert any(t.startswith(f"mategemm.{op}.") for t in targets), targets
    result = next(n for n in program.graph.nodes if n.op == "output").args[0][0]
    value = result.meta["val"]
    assert tuple(value.shape) == shape and value.dtype == dtype and value.device.type == "cuda"


def test_masked_overlap_is_refused_under_compile():
    def overlap():
        return mategemm.masked_moe_gemm_8bit(
            (empty(4, 64, 256, dtype=E4), empty(4, 64, 2)), (empty(4, 128, 256, dtype=E4), empty(4, 1, 2)),
            empty(4, dtype=torch.int32), enable_overlap=True)[0]

    with FakeTensorMode(), pytest.raises(Exception, match="enable_overlap .* not supported under torch.compile"):
        torch.export.export(Calls(overlap), (torch.empty(2, device="cuda"),), strict=True)


def test_eager_calls_do_not_go_through_the_dispatcher(monkeypatch):
    """Outside tracing the public functions run directly: no dispatcher overhead per call."""
    def traced(*args):
        raise AssertionError("an eager call went through the custom op")

    monkeypatch.setattr(mategemm.ops, "gemm_fp8_nt_groupwise", traced)
    with pytest.raises(TypeError, match="a must have dtype"):
        mategemm.gemm_fp8_nt_groupwise(torch.zeros(4, 128), torch.zeros(4, 128), torch.zeros(4, 1), torch.zeros(1, 1))


def test_a_bad_recipe_is_named_while_tracing():
    def bad():
        return mategemm.gemm_fp8_nt_groupwise(empty(40, 256, dtype=E4), empty(72, 256, dtype=E4), empty(40, 2),
                                              empty(1, 2), scale_granularity_mnk="1,128,128")

    with FakeTensorMode(), pytest.raises(Exception, match="scale_granularity_mnk must be a tuple of three ints"):
        torch.export.export(Calls(bad), (torch.empty(2, device="cuda"),), strict=True)
