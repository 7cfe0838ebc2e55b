"""The fused MoE layer without a GPU: argument checks, the routing (torch ops, run on the CPU),
and the call path on fake CUDA tensors asking only for kernels that prewarm plans."""
import pytest
import torch

import mategemm
from fake_device import NoLaunch, call, recorded_specs
from mategemm import moe_layer as layer_module
from mategemm import prewarm
from mategemm.testing import moe_layer as ref
from mategemm.kernels import sm90_fp8_gemm_blockscaled
from mategemm.runtime import device as rt_device

E4M3 = torch.float8_e4m3fn


@pytest.mark.parametrize("case", ["plain", "map", "out_of_range", "all_off", "one_expert"])
def test_the_routing_reference(case):
    """testing.moe_layer.route_reference (what the routing kernel must write) on hand-made cases."""
    ids = torch.tensor([[2, 0], [0, 1], [2, 3]], dtype=torch.int32)
    expert_map = None
    global_experts, experts = 4, 4
    want_order = {"plain": [1, 2, 3, 0, 4, 5], "one_expert": [0, 1, 2, 3, 4, 5]}
    if case == "map":
        expert_map, global_experts, experts = torch.tensor([1, -1, 0, 1], dtype=torch.int32), 4, 2
        want_order["map"] = [0, 4, 1, 2, 5, 3]  # expert 0: pairs 0, 4 (global 2); expert 1: 1, 5; off-rank: 3
    if case == "out_of_range":
        ids = torch.tensor([[-1, 0], [7, 1], [2, 4]], dtype=torch.int64)
        want_order["out_of_range"] = [1, 3, 4, 0, 2, 5]
    if case == "all_off":
        expert_map, experts = torch.full((4,), -1, dtype=torch.int32), 3
        want_order["all_off"] = [0, 1, 2, 3, 4, 5]
    if case == "one_expert":
        ids = torch.full((3, 2), 3, dtype=torch.int32)
    order, inv, counts, live = ref.route_reference(ids, expert_map, global_experts, experts)
    assert order == want_order[case]
    assert [inv[p] for p in order] == list(range(6))
    assert sum(counts) == 6 and live == sum(counts[:experts])
    if case == "all_off":
        assert live == 0


def test_routing_views_of_a_larger_workspace():
    big = layer_module.Routing.empty(16, 3, "cpu")
    small = big.first(4)
    assert small.order.shape == (4,) and small.order.data_ptr() == big.order.data_ptr()
    assert small.counts is big.counts and small.live is big.live


def inputs(tokens=5, hidden=256, inter=128, experts=4, topk=2, dtype=torch.bfloat16):
    cuda = lambda *shape, dtype=torch.float32: torch.empty(shape, dtype=dtype, device="cuda")  # noqa: E731
    return dict(hidden_states=cuda(tokens, hidden, dtype=dtype), w1=cuda(experts, 2 * inter, hidden, dtype=E4M3),
                w2=cuda(experts, hidden, inter, dtype=E4M3), w1_scale=cuda(experts, 2 * inter // 128, hidden // 128),
                w2_scale=cuda(experts, hidden // 128, inter // 128), topk_weights=cuda(tokens, topk),
                topk_ids=cuda(tokens, topk, dtype=torch.int32))


BAD = [(dict(activation="gelu"), ValueError, "activation must be one of"),
       (dict(gemm1_alpha=1.0), ValueError, "apply to activation 'swigluoai' only"),
       (dict(gemm1_clamp_limit=-1.0), ValueError, "gemm1_clamp_limit must be positive"),
       (dict(apply_router_weight_on_input=True), ValueError, "needs topk == 1"),
       (dict(global_num_experts=8), ValueError, "pass expert_map"),
       (dict(expert_map="x"), TypeError, "expert_map must be a torch.Tensor"),
       (dict(hidden_states_scale="x"), ValueError, "goes with FP8 hidden_states only"),
       (dict(out="x"), TypeError, "out must be a torch.Tensor")]


@pytest.mark.parametrize("change,error,message", BAD, ids=[m for _, _, m in BAD])
def test_bad_arguments_are_named(monkeypatch, change, error, message):
    with recorded_specs(monkeypatch) as asked:
        args = inputs()
        with pytest.raises(error, match=message):
            mategemm.fused_moe(*args.values(), **change)
    assert asked == []


def test_bad_shapes_are_named(monkeypatch):
    with recorded_specs(monkeypatch):
        args = inputs()
        args["w2"] = torch.empty((4, 256, 256), dtype=E4M3, device="cuda")
        with pytest.raises(ValueError, match="w2 must have shape"):
            mategemm.fused_moe(*args.values())
        args = inputs(dtype=E4M3)
        with pytest.raises(ValueError, match="needs hidden_states_scale"):
            mategemm.fused_moe(*args.values())
        args = inputs(hidden=200)
        with pytest.raises(ValueError, match="multiple of 128"):
            mategemm.fused_moe(*args.values())


@pytest.mark.parametrize("input_dtype", [torch.bfloat16, E4M3])
@pytest.mark.parametrize("activation", ["silu", "swigluoai", "swiglustep"])
def test_the_layer_asks_only_for_kernels_the_preset_plans(monkeypatch, input_dtype, activation):
    """DeepSeek-V3's experts at a few token counts: the layer's own kernels and its two GEMMs (forced
    gated_gemm=1: the first of them the gated GEMM)."""
    preset = prewarm.load_preset("deepseek_v3")
    moe = preset.moe
    planned = {p.spec for p in prewarm.plan_preset(preset, 2049, "sm_90a", activations=(activation,))}
    for force in ("gated_gemm=1", "gather_a=1", "gated_gemm=1,gather_a=1"):
        planned |= {p.spec for p in prewarm.plan_preset(preset, 2049, "sm_90a", force=force,
                                                          activations=(activation,))}

    with recorded_specs(monkeypatch) as asked:
        monkeypatch.setattr(sm90_fp8_gemm_blockscaled, "Launch", NoLaunch)
        monkeypatch.setattr(sm90_fp8_gemm_blockscaled, "GatedLaunch", NoLaunch)
        monkeypatch.setattr(rt_device, "run_on_current_stream", lambda index, fn, *args: None)
        for force, tokens in (("", 1), ("", 7), ("", 64), ("", 2049), ("gated_gemm=1", 7), ("gated_gemm=1", 2049),
                              ("gather_a=1", 7), ("gather_a=1", 2049), ("gated_gemm=1,gather_a=1", 2049)):
            monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", force)
            args = inputs(tokens, moe.hidden, moe.moe_intermediate, moe.num_experts, moe.top_k, input_dtype)
            scale = torch.empty((tokens, moe.hidden // 128), device="cuda") if input_dtype == E4M3 else None
            call(mategemm.fused_moe, *args.values(), activation=activation, hidden_states_scale=scale)
    kernels = {spec.kernel for spec in asked}
    assert kernels == {"sm90_fp8_moe_layer", "sm90_fp8_gemm_blockscaled", "sm90_fp8_gemm_gated"}
    missing = sorted({spec.name_expr for spec in asked if spec not in planned})
    assert not missing, missing


@pytest.mark.parametrize("dtype,tokens,gathered", [(torch.bfloat16, 2048, True), (torch.bfloat16, 100, False),
                                                   (E4M3, 100, True)])
def test_gathered_rows_leave_the_pairs_rows_unwritten(monkeypatch, dtype, tokens, gathered):
    """gather_a=1: GEMM1 reads the tokens quantised once (bf16 input, from 1024 tokens) or the FP8
    input by the routing's order, divided by topk; no permute writes the pairs' rows. A bf16 input
    quantised pair by pair is permuted as before."""
    from mategemm.kernels import sm90_fp8_moe_layer

    permutes, gemm1 = [], []
    real = sm90_fp8_moe_layer.permute
    monkeypatch.setattr(sm90_fp8_moe_layer, "permute", lambda *args: permutes.append(args) or real(*args))
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", "gather_a=1")

    class Recorded(NoLaunch):
        def __init__(self, kernel, problem, config, a, b, sfa, sfa_strides, sfb, sfb_strides, group=None, **kw):
            gemm1.append((problem, a, group))

    with recorded_specs(monkeypatch):
        monkeypatch.setattr(sm90_fp8_gemm_blockscaled, "Launch", Recorded)
        monkeypatch.setattr(rt_device, "run_on_current_stream", lambda index, fn, *args: None)
        args = inputs(tokens=tokens, topk=4, dtype=dtype)
        scale = torch.empty((tokens, 2), device="cuda") if dtype == E4M3 else None
        call(mategemm.fused_moe, *args.values(), hidden_states_scale=scale)
    problem, a, group = gemm1[0]
    assert problem.gather_a == gathered and (group.gather is not None) == gathered
    if gathered:
        assert a.shape == (tokens, 256) and group.gather.shape == (tokens * 4,) and group.gather_div == 4
        assert a is args["hidden_states"] if dtype == E4M3 else len(permutes) == 1  # the quantisation alone
        assert not (dtype == E4M3 and permutes)
    else:
        assert a.shape == (tokens * 4, 256) and len(permutes) == 1


@pytest.mark.parametrize("name", ["w1", "w2"])
def test_weights_tma_cannot_read_in_place_are_named_before_any_launch(monkeypatch, name):
    """The layer's GEMMs read w1 and w2 in place as (E x rows, K) rows: experts stacked with a gap (a
    slice of larger weights) or a K stride other than 1 is a ValueError naming the weight."""
    with recorded_specs(monkeypatch) as asked:
        args = inputs(tokens=5, topk=2)
        e, rows, k = args[name].shape
        args[name] = torch.empty_strided((e, rows, k), ((rows + 128) * k, k, 1), dtype=E4M3, device="cuda")
        with pytest.raises(ValueError, match=f"{name}: the experts' weights must be stacked"):
            mategemm.fused_moe(*args.values())
        args = inputs(tokens=5, topk=2)
        args[name] = torch.empty_strided((e, rows, k), (rows * k, 1, rows), dtype=E4M3, device="cuda")
        with pytest.raises(ValueError, match=f"{name} must be contiguous along its last dimension"):
            mategemm.fused_moe(*args.values())
    assert asked == []


def test_new_activations_of_the_same_layout_reuse_the_prepared_layer(monkeypatch):
    """A serving step passes new hidden_states, ids and weights each time: checked and set up once."""
    from mategemm import validate

    with recorded_specs(monkeypatch) as asked:
        monkeypatch.setattr(sm90_fp8_gemm_blockscaled, "Launch", NoLaunch)
        monkeypatch.setattr(rt_device, "run_on_current_stream", lambda index, fn, *args: None)
        checks = []
        real = validate.fused_moe
        monkeypatch.setattr(validate, "fused_moe", lambda *args: checks.append(1) or real(*args))
        weights = inputs()
        requested = []
        for _ in range(3):
            step = dict(inputs(), **{k: weights[k] for k in ("w1", "w2", "w1_scale", "w2_scale")})
            mategemm.fused_moe(*step.values())
            requested.append(len(asked))
        assert len(checks) == 1 and requested[0] >= 4 and requested == requested[:1] * 3  # kernels loaded once
        step = dict(inputs(tokens=6), **{k: weights[k] for k in ("w1", "w2", "w1_scale", "w2_scale")})
        mategemm.fused_moe(*step.values())  # another token count: another layout
        assert len(checks) == 2


@pytest.mark.parametrize("topk,dtype,split", [(4, torch.bfloat16, True), (1, torch.bfloat16, False),
                                              (4, E4M3, False)])
def test_quantize_first_permutes_the_tokens_then_gathers_the_pairs(monkeypatch, topk, dtype, split):
    """MATEGEMM_FORCE_CONFIG quant_first=1 with a bf16 input and topk >= 2: the bf16 permute quantises
    each token once (identity order, topk 1, every row) into the token buffers, then the FP8 permute
    gathers the pairs' rows from them; otherwise one permute of the pairs."""
    from mategemm.kernels import sm90_fp8_moe_layer

    permutes = []
    real = sm90_fp8_moe_layer.permute
    monkeypatch.setattr(sm90_fp8_moe_layer, "permute", lambda *args: permutes.append(args) or real(*args))
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", "quant_first=1")
    with recorded_specs(monkeypatch) as asked:
        monkeypatch.setattr(sm90_fp8_gemm_blockscaled, "Launch", NoLaunch)
        monkeypatch.setattr(rt_device, "run_on_current_stream", lambda index, fn, *args: None)
        args = inputs(tokens=5, topk=topk, dtype=dtype)
        scale = torch.empty((5, 2), device="cuda") if dtype == E4M3 else None
        call(mategemm.fused_moe, *args.values(), hidden_states_scale=scale)
    fp8_permute = [s for s in asked if "permute<true>" in s.name_expr]
    if not split:
        assert len(permutes) == 1 and permutes[0][4] == topk and permutes[0][7].shape == (5 * topk, 256)
        assert bool(fp8_permute) == (dtype == E4M3)
        return
    (_, x, x_scale, order, one, _, weight_input, q, q_scale, live, _), gather = permutes
    assert x is args["hidden_states"] and x_scale is None and live is None and (one, weight_input) == (1, False)
    assert order.shape == (5,) and order.dtype == torch.int64 and q.shape == (5, 256) and q_scale.shape == (5, 2)
    assert gather[1] is q and gather[2] is q_scale and gather[4] == topk and gather[7].shape == (5 * topk, 256)
    assert gather[9] is not None and fp8_permute


@pytest.mark.parametrize("force,tokens,want", [("", 1023, False), ("", 1024, True), ("quant_first=0", 4096, False),
                                               ("quant_first=1", 1, True)])
def test_quantize_first_from_a_thousand_tokens_or_forced(force, tokens, want):
    """A bf16 input with topk >= 2 is quantised once per token from QUANTIZE_FIRST_MIN_TOKENS tokens
    (or as forced); an FP8 input or topk 1 never."""
    from mategemm import plan

    assert plan.moe_quantize_first(False, tokens, 8, force) == want
    assert not plan.moe_quantize_first(True, tokens, 8, force) and not plan.moe_quantize_first(False, tokens, 1, force)


def test_row_kernels_launch_no_more_ctas_than_fit():
    """The row kernels' grids stride over their rows with at most the CTAs an SM holds at once (more
    would leave a second wave of a few CTAs per SM running at a fraction of the occupancy)."""
    from mategemm.kernels import sm90_fp8_moe_layer as kernel

    class Fits:
        def __init__(self, per_sm):
            self.resident_per_sm = per_sm

    assert kernel._grid(Fits(5), 10**6, 132) == 5 * 132
    assert kernel._grid(Fits(16), 10**6, 132) == kernel.CTAS_PER_SM * 132
    assert kernel._grid(Fits(5), 7, 132) == 7 and kernel._grid(Fits(5), 0, 132) == 1
    assert kernel._warp_grid(Fits(6), 100000, 768, 1, 132) == 6 * 132  # 6 groups a row, a warp each


def test_host_constants_mirror_the_kernel():
    """The launches' threads, the split routing's pairs per CTA (a mismatch would place pairs wrongly)
    and the permute grid's work item (groups of 128 columns per warp) match the kernel's constants."""
    import re

    from mategemm.jit.key import KERNELS_SRC
    from mategemm.kernels import sm90_fp8_moe_layer as kernel

    text = (KERNELS_SRC / "sm90_fp8_moe_layer.cuh").read_text()
    constants: dict[str, int] = {}
    for name, expr in re.findall(r"^constexpr int (\w+) = ([\w\s*/+()]+);", text, re.MULTILINE):
        constants[name] = eval(expr.replace("/", "//"), {}, dict(constants))  # the file's own integer expressions

    assert kernel.THREADS == constants["kMoeThreads"] and kernel.ROUTE_THREADS == constants["kRouteThreads"]
    assert kernel.ROUTE_CHUNK == constants["kRouteChunk"] and kernel.GROUP == constants["kQuantGroup"]
    assert kernel.PERMUTE_GROUPS_PER_ITEM[False] == constants["kGroupsPerItem"]
    assert kernel.PERMUTE_GROUPS_PER_ITEM[True] == constants["kFp8ItemBytes"] // kernel.GROUP
