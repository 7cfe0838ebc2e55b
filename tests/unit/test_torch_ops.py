"""The torch custom ops without a GPU: every public function traces (dynamo, fullgraph) into its op
with fake CUDA tensors, and the fake implementations give the eager outputs' shapes and dtypes."""
import inspect

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import mategemm
from mategemm.runtime import device as rt_device

E4 = torch.float8_e4m3fn
OPS = {"gemm_fp8_nt_groupwise", "gemm_fp8_nt_groupwise_out", "bmm_fp8", "bmm_fp8_out", "bmm_fp16", "bmm_fp16_out",
       "ragged_m_moe_gemm_8bit_out", "ragged_k_moe_gemm_8bit_out", "masked_moe_gemm_8bit", "masked_moe_gemm_8bit_out",
       "batch_deepgemm_fp8_nt_groupwise_out", "get_paged_mqa_logits_metadata", "fp8_paged_mqa_logits",
       "fp8_mqa_logits", "fused_moe", "fused_moe_out", "moe_gemm_mxfp8_nt_groupwise",
       "moe_gemm_mxfp8_nt_groupwise_out", "grouped_matmul_dynamic_scaled_nvfp4_out", "nvfp4_grouped_gemm",
       "nvfp4_grouped_gemm_out"}


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
    "paged bf16 logits": (lambda: mategemm.fp8_paged_mqa_logits(
        empty(5, 2, 64, 128, dtype=E4), empty(30, 64, 1, 132, dtype=torch.uint8), empty(10, 64),
        empty(5, dtype=torch.int32), empty(5, 6, dtype=torch.int32), empty(9, 2, dtype=torch.int32), 333, True,
        logits_dtype=torch.bfloat16),
        ((10, 333), torch.bfloat16), "fp8_paged_mqa_logits"),
    "prefill head_dim 64, bf16": (lambda: mategemm.fp8_mqa_logits(
        empty(7, 32, 64, dtype=E4), (empty(50, 64, dtype=E4), empty(50)), empty(7, 32),
        empty(7, dtype=torch.int32), empty(7, dtype=torch.int32), logits_dtype=torch.bfloat16),
        ((7, 50), torch.bfloat16), "fp8_mqa_logits"),
    "prefill compressed": (lambda: mategemm.deep_gemm.fp8_mqa_logits(
        empty(7, 32, 128, dtype=E4), (empty(50, 128, dtype=E4), empty(50)), empty(7, 32),
        empty(7, dtype=torch.int32), empty(7, dtype=torch.int32), max_seqlen_k=20),
        ((7, 20), torch.float32), "fp8_mqa_logits"),
    "fused_moe": (lambda: mategemm.fused_moe(
        empty(5, 256, dtype=torch.bfloat16), empty(4, 256, 256, dtype=E4), empty(4, 256, 128, dtype=E4),
        empty(4, 2, 2), empty(4, 2, 1), empty(5, 2), empty(5, 2, dtype=torch.int32), activation="swigluoai",
        gemm1_alpha=1.5), ((5, 256), torch.bfloat16), "fused_moe"),
    "fused_moe out=": (lambda: mategemm.fused_moe(
        empty(5, 256, dtype=E4), empty(4, 256, 256, dtype=E4), empty(4, 256, 128, dtype=E4), empty(4, 2, 2),
        empty(4, 2, 1), empty(5, 1), empty(5, 1, dtype=torch.int32), expert_map=empty(8, dtype=torch.int32),
        apply_router_weight_on_input=True, hidden_states_scale=empty(5, 2), out=empty(5, 256, dtype=torch.bfloat16)),
        ((5, 256), torch.bfloat16), "fused_moe_out"),
    "mxfp8": (lambda: mategemm.moe_gemm_mxfp8_nt_groupwise(
        empty(10, 256, dtype=E4), empty(3, 64, 256, dtype=E4), empty(16, 1, dtype=torch.int32),
        empty(3, 64, 1, dtype=torch.int32), empty(4, dtype=torch.int32)),
        ((10, 64), torch.bfloat16), "moe_gemm_mxfp8_nt_groupwise"),
    "mxfp8 out=": (lambda: mategemm.flashinfer.moe_gemm_mxfp8_nt_groupwise(
        empty(10, 256, dtype=E4), empty(3, 64, 256, dtype=E4), empty(16, 1, dtype=torch.int32),
        empty(3, 64, 1, dtype=torch.int32), empty(4, dtype=torch.int32), out=empty(10, 64, dtype=torch.bfloat16)),
        ((10, 64), torch.bfloat16), "moe_gemm_mxfp8_nt_groupwise_out"),
    "nvfp4 MAX form, device count": (lambda: mategemm.grouped_matmul_dynamic_scaled_nvfp4(
        *nvfp4_args(), empty(1, dtype=torch.int32)), ((10, 64), torch.bfloat16),
        "grouped_matmul_dynamic_scaled_nvfp4_out"),
    "nvfp4 MAX form, host count": (lambda: mategemm.grouped_matmul_dynamic_scaled_nvfp4(*nvfp4_args(), 2),
                                   ((10, 64), torch.bfloat16), "grouped_matmul_dynamic_scaled_nvfp4_out"),
    "nvfp4": (lambda: mategemm.nvfp4_grouped_gemm(*nvfp4_args()[1:6], *nvfp4_args()[7:], out_dtype=torch.half),
              ((10, 64), torch.half), "nvfp4_grouped_gemm"),
    "nvfp4 out=": (lambda: mategemm.nvfp4_grouped_gemm(*nvfp4_args()[1:6], *nvfp4_args()[7:],
                                                       out=empty(10, 64, dtype=torch.bfloat16)),
                   ((10, 64), torch.bfloat16), "nvfp4_grouped_gemm_out"),
}


def nvfp4_args():
    """(c, a, b, a_scales, b_scales, group_offsets, group_scale_offsets, expert_ids, expert_scales): 10 tokens
    in 3 groups, 3 experts of 64 x 256."""
    return (empty(10, 64, dtype=torch.bfloat16), empty(10, 128, dtype=torch.uint8),
            empty(3, 64, 128, dtype=torch.uint8), empty(3, 4, 32, 4, 4, dtype=E4), empty(3, 1, 4, 32, 4, 4, dtype=E4),
            empty(4, dtype=torch.int32),
            empty(3, dtype=torch.int32), empty(3, dtype=torch.int32), empty(3))


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


REQUIRED = "required"


def python_defaults(op_name: str) -> dict:
    """The op's arguments that must be required, and the defaults of the others, as the Python function has them.

    An argument is required if the Python function requires it, if it is one of a tuple's parts
    (input_a -> a, a_scale), if it is `out` of an _out op, or if a required argument follows it (a
    schema's defaults are trailing). A tuple default reads as None (a schema cannot hold it); a dtype
    as its ScalarType number.
    """
    python = inspect.signature(getattr(mategemm, op_name.removesuffix("_out"))).parameters
    expected, required_after = {}, False
    for arg in reversed(getattr(torch.ops.mategemm, op_name).default._schema.arguments):
        default = python[arg.name].default if arg.name in python else inspect.Parameter.empty
        if op_name.endswith("_out") and arg.name == "out":
            default = inspect.Parameter.empty
        if default is inspect.Parameter.empty or required_after:
            required_after = True
            expected[arg.name] = REQUIRED
        elif isinstance(default, torch.dtype):  # a schema holds a dtype default as its ScalarType number
            expected[arg.name] = scalar_type_number(default)
        else:  # a schema holds no tuple default: None stands for it
            expected[arg.name] = None if isinstance(default, tuple) else default
    return expected


def scalar_type_number(dtype: torch.dtype) -> int:
    name = str(dtype).removeprefix("torch.")
    return torch._C.parse_schema(f"f(ScalarType x={name}) -> ()").arguments[0].default_value


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_defaults_are_the_python_functions_defaults(name):
    schema = getattr(torch.ops.mategemm, name).default._schema
    got = {arg.name: arg.default_value if arg.has_default_value() else REQUIRED for arg in schema.arguments}
    assert got == python_defaults(name)


def kernel_inputs():
    """Per op, fake CUDA values of exactly the arguments its schema requires."""
    a, b, sa, sb = empty(40, 256, dtype=E4), empty(72, 256, dtype=E4), empty(40, 2), empty(1, 2)
    xa, xsa = empty(4, 64, 256, dtype=E4), empty(4, 64, 2)
    w, wsb = empty(4, 128, 256, dtype=E4), empty(4, 1, 2)
    counts = empty(4, dtype=torch.int32)
    gemm = dict(a=a, b=b, a_scale=sa, b_scale=sb)
    bmm8 = dict(a=empty(3, 40, 256, dtype=E4), b=empty(3, 64, 256, dtype=E4), a_scale=empty(1), b_scale=empty(1),
                out_dtype=torch.bfloat16)
    bmm16 = dict(a=empty(2, 9, 64, dtype=torch.half), b=empty(2, 24, 64, dtype=torch.half), out_dtype=torch.float32)
    masked = dict(a=xa, a_scale=xsa, b=w, b_scale=wsb, masked_tokens_info=counts)
    layer = dict(hidden_states=empty(5, 256, dtype=torch.bfloat16), w1=empty(4, 256, 256, dtype=E4),
                 w2=empty(4, 256, 128, dtype=E4), w1_scale=empty(4, 2, 2), w2_scale=empty(4, 2, 1),
                 topk_weights=empty(5, 2), topk_ids=empty(5, 2, dtype=torch.int32))
    mxfp8 = dict(a=empty(10, 256, dtype=E4), b=empty(3, 64, 256, dtype=E4), a_scale=empty(16, 1, dtype=torch.int32),
                 b_scale=empty(3, 64, 1, dtype=torch.int32), m_indptr=empty(4, dtype=torch.int32))
    names = ("c", "a", "b", "a_scales", "b_scales", "group_offsets", "group_scale_offsets", "expert_ids",
             "expert_scales")
    nvfp4_max = dict(zip(names, nvfp4_args()))
    nvfp4 = {name: value for name, value in nvfp4_max.items() if name not in ("c", "group_scale_offsets")}
    return {
        "gemm_fp8_nt_groupwise": gemm,
        # a schema's defaults are trailing: those before the required out stay required
        "gemm_fp8_nt_groupwise_out": dict(gemm, scale_major_mode=None, mma_sm=None, scale_granularity_mnk=None,
                                          out=empty(40, 72, dtype=torch.bfloat16)),
        "bmm_fp8": bmm8,
        "bmm_fp8_out": dict(bmm8, out=empty(3, 40, 64, dtype=torch.bfloat16)),
        "bmm_fp16": bmm16,
        "bmm_fp16_out": dict(bmm16, out=empty(2, 9, 24)),
        "ragged_m_moe_gemm_8bit_out": dict(a=empty(256, 256, dtype=E4), a_scale=empty(256, 2), b=w, b_scale=wsb,
                                           ragged_tokens_info=empty(256, dtype=torch.int32),
                                           out=empty(256, 128, dtype=torch.bfloat16)),
        "ragged_k_moe_gemm_8bit_out": dict(a=empty(512, 64, dtype=E4), a_scale=empty(4, 64),
                                           b=empty(512, 32, dtype=E4), b_scale=empty(4, 32),
                                           ragged_tokens_info=empty(2, dtype=torch.int32), out=empty(2, 64, 32)),
        "masked_moe_gemm_8bit": masked,
        "masked_moe_gemm_8bit_out": dict(masked, out=empty(4, 64, 128, dtype=torch.bfloat16)),
        "batch_deepgemm_fp8_nt_groupwise_out": dict(a=xa, b=w, a_scale=xsa, b_scale=wsb, masked_m=counts,
                                                    expected_m=16, scale_granularity_mnk=[1, 128, 128],
                                                    out=empty(4, 64, 128, dtype=torch.bfloat16)),
        "get_paged_mqa_logits_metadata": dict(context_lens=empty(5, dtype=torch.int32), block_kv=64),
        "fp8_paged_mqa_logits": dict(q=empty(5, 2, 64, 128, dtype=E4), fused_kv_cache=empty(30, 64, 1, 132,
                                                                                             dtype=torch.uint8),
                                     weights=empty(10, 64), context_lens=empty(5, dtype=torch.int32),
                                     block_table=empty(5, 6, dtype=torch.int32),
                                     schedule_meta=empty(9, 2, dtype=torch.int32), max_context_len=333,
                                     clean_logits=True),
        "fp8_mqa_logits": dict(q=empty(7, 32, 128, dtype=E4), k=empty(50, 128, dtype=E4), k_scale=empty(50),
                               weights=empty(7, 32), cu_seq_len_k_start=empty(7, dtype=torch.int32),
                               cu_seq_len_k_end=empty(7, dtype=torch.int32)),
        "fused_moe": layer,
        "moe_gemm_mxfp8_nt_groupwise": mxfp8,
        "moe_gemm_mxfp8_nt_groupwise_out": dict(mxfp8, scale_granularity_mnk=None, scale_major_mode="MN",
                                                backend="auto", out=empty(10, 64, dtype=torch.bfloat16)),
        "fused_moe_out": dict(layer, out=empty(5, 256, dtype=torch.bfloat16)),
        "grouped_matmul_dynamic_scaled_nvfp4_out": dict(nvfp4_max, num_active_experts=None,
                                                        num_active_experts_tensor=empty(1, dtype=torch.int32)),
        "nvfp4_grouped_gemm": nvfp4,
        "nvfp4_grouped_gemm_out": dict(nvfp4, out=empty(10, 64, dtype=torch.bfloat16)),
    }


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_runs_with_only_its_required_arguments(name, monkeypatch):
    """The defaults fill in the rest: the op reaches its fake implementation (the GPU's SM count: an H100's)."""
    monkeypatch.setattr(rt_device, "device_info", lambda index: rt_device.SM90_NO_DEVICE)
    op = getattr(torch.ops.mategemm, name).default
    with FakeTensorMode():
        inputs = kernel_inputs()[name]
        assert set(inputs) == {arg.name for arg in op._schema.arguments if not arg.has_default_value()}
        op(**inputs)


def test_each_public_function_traces_as_the_op_of_its_name_with_its_arguments_in_order():
    """mategemm.api calls ops.<name> with the function's arguments in the function's order."""
    import inspect

    for name in set(mategemm.__all__) - {"get_num_mp", "set_num_mp", "__version__"}:
        function = getattr(mategemm, name)
        assert list(inspect.signature(function.__wrapped__).parameters) == \
            list(inspect.signature(getattr(mategemm.ops, name)).parameters), name
