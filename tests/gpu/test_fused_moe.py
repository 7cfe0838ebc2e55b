"""The fused MoE layer on the GPU against testing.moe_layer.fused_moe_reference (float64, with the
layer's own roundings): every activation x input dtype x expert_map x router-weight placement, the
edge routings, a CUDA graph replayed with new inputs, and no allocation per call after warm-up."""
import pytest
import torch

import mategemm
from mategemm.testing import moe_layer as ref
from mategemm.testing.numerics import TOLERANCE, calc_diff

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TOL = TOLERANCE[("fused_moe", torch.bfloat16)]
FEW_PAIRS_TOL = TOLERANCE[("fused_moe_few_pairs", torch.bfloat16)]  # at most 64 routed pairs
LAYER = ("hidden_states", "w1", "w2", "w1_scale", "w2_scale", "topk_weights", "topk_ids")
OPTIONS = ("expert_map", "global_num_experts", "hidden_states_scale")


def run(case: dict, **options) -> torch.Tensor:
    args = [case[name] for name in LAYER]
    kwargs = {name: case[name] for name in OPTIONS if case.get(name) is not None}
    return mategemm.fused_moe(*args, **kwargs, **options)


def reference(case: dict, **options) -> torch.Tensor:
    args = [case[name] for name in LAYER]
    kwargs = {name: case[name] for name in OPTIONS if case.get(name) is not None}
    return ref.fused_moe_reference(*args, **kwargs, **options)


def check(got: torch.Tensor, want: torch.Tensor, what: str, tol: float = TOL) -> None:
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all(), what
    diff = calc_diff(got, want) if want.abs().sum() > 0 else float(got.abs().max())
    assert diff <= tol, f"{what}: calc_diff {diff:.2e}"


@pytest.mark.parametrize("activation", ["silu", "swigluoai", "swiglustep"])
@pytest.mark.parametrize("input_dtype", [torch.bfloat16, torch.float8_e4m3fn])
@pytest.mark.parametrize("expert_map", [False, True])
def test_layer_matches_the_reference(activation, input_dtype, expert_map):
    gen = torch.Generator(device="cuda").manual_seed(7)
    case = ref.make_moe_layer_inputs(37, 512, 256, 8, 4, input_dtype, expert_map=expert_map, generator=gen)
    options = dict(activation=activation)
    if activation == "silu":
        options["gemm1_clamp_limit"] = 6.0
    if activation == "swigluoai":
        options.update(gemm1_alpha=1.5, gemm1_beta=0.5)
    out = torch.full((37, 512), float("nan"), dtype=torch.bfloat16, device="cuda")
    got = run(case, out=out, **options)
    assert got is out
    check(got, reference(case, **options), f"{activation} {input_dtype} map={expert_map}")


@pytest.mark.parametrize("input_dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_router_weight_on_input(input_dtype):
    """topk 1 (which the option requires) with weights other than 1: each scales its token's input
    row, which the activation's nonlinearity tells apart from scaling the output."""
    case = ref.make_moe_layer_inputs(64, 256, 128, 4, 1, input_dtype)
    case["topk_weights"] = torch.rand_like(case["topk_weights"]) * 0.9 + 0.1
    got = run(case, apply_router_weight_on_input=True)
    check(got, reference(case, apply_router_weight_on_input=True), f"weight on input {input_dtype}", FEW_PAIRS_TOL)
    # (0.055-0.12 between the two references in 10 draws on the CPU)
    assert calc_diff(got, reference(case)) > 2 * FEW_PAIRS_TOL, "the weight scaled the output, not the input"


@pytest.mark.parametrize("tokens,experts,topk,routing", [(1, 8, 2, "uniform"), (1, 4, 1, "uniform"),
                                                        (300, 16, 4, "skewed"), (64, 256, 8, "skewed")])
def test_routings(tokens, experts, topk, routing):
    case = ref.make_moe_layer_inputs(tokens, 256, 128, experts, topk, routing=routing)
    check(run(case), reference(case), f"M={tokens} E={experts} topk={topk} {routing}",
          FEW_PAIRS_TOL if tokens * topk <= 64 else TOL)


def test_all_tokens_on_one_expert_and_empty_experts():
    # 400 tokens, as the other reference checks (from 300): with 50 the few output values drew
    # calc_diff 1.8e-4 and 2.0e-4 against 1e-4 in two suite runs
    case = ref.make_moe_layer_inputs(400, 256, 128, 8, 1)
    case["topk_ids"].fill_(3)
    check(run(case), reference(case), "all on expert 3")


def test_every_pair_routed_off_rank_gives_zeros():
    case = ref.make_moe_layer_inputs(9, 256, 128, 4, 2, expert_map=True)
    case["expert_map"].fill_(-1)
    out = torch.full((9, 256), float("nan"), dtype=torch.bfloat16, device="cuda")
    run(case, out=out)
    assert (out == 0).all()


def test_no_tokens():
    case = ref.make_moe_layer_inputs(1, 256, 128, 4, 2)
    for name in ("hidden_states", "topk_weights", "topk_ids"):
        case[name] = case[name][:0]
    assert run(case).shape == (0, 256)


def test_cuda_graph_replay_matches_eager_bit_for_bit():
    case = ref.make_moe_layer_inputs(48, 512, 256, 8, 4)
    out = torch.empty((48, 512), dtype=torch.bfloat16, device="cuda")
    run(case, out=out)  # warm-up: workspace, kernels, prepared launches
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run(case, out=out)
    for seed in (1, 2):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        fresh = ref.make_moe_layer_inputs(48, 512, 256, 8, 4, generator=gen)
        for name in LAYER:  # new inputs into the captured tensors
            case[name].copy_(fresh[name])
        graph.replay()
        torch.cuda.synchronize()
        eager = run(fresh)
        assert torch.equal(out, eager), f"replay {seed} differs from eager"


def test_a_warm_call_keeps_memory_flat():
    case = ref.make_moe_layer_inputs(64, 512, 256, 8, 4)
    out = torch.empty((64, 512), dtype=torch.bfloat16, device="cuda")
    run(case, out=out)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(3):
        run(case, out=out)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before


@pytest.mark.parametrize("tokens,topk,experts,global_experts,mapped,dtype",
                         [(1, 1, 1, 1, False, torch.int32), (5, 2, 4, 4, False, torch.int64),
                          (3000, 8, 256, 256, False, torch.int32), (700, 4, 16, 64, True, torch.int64),
                          (2048, 8, 1024, 1024, False, torch.int32), (1024, 8, 64, 64, False, torch.int32),
                          (1025, 8, 128, 256, True, torch.int64), (16384, 8, 128, 128, False, torch.int32)])
def test_route_kernel_matches_the_reference(tokens, topk, experts, global_experts, mapped, dtype):
    """The routing kernels alone, against testing.moe_layer.route_reference: one CTA (up to 8192
    pairs, several 1024-pair chunks) and split into 4096-pair ranges (8200 pairs: a short last
    range; 131072 pairs), an expert map, ids out of range, int32 and int64 ids, 1024 experts."""
    from mategemm import moe_layer
    from mategemm.kernels import sm90_fp8_moe_layer as kernel
    from mategemm.runtime import device as rt_device

    gen = torch.Generator(device="cuda").manual_seed(tokens)
    ids = torch.stack([torch.randperm(global_experts, device="cuda", generator=gen)[:topk] for _ in range(tokens)])
    ids = ids.to(dtype)
    ids.view(-1)[::97] = -1
    ids.view(-1)[5::101] = global_experts + 3
    expert_map = None
    if mapped:
        expert_map = torch.full((global_experts,), -1, dtype=torch.int32, device="cuda")
        chosen = torch.randperm(global_experts, device="cuda", generator=gen)[:experts]
        expert_map[chosen] = torch.arange(experts, dtype=torch.int32, device="cuda")
    r = moe_layer.Routing.empty(tokens * topk, experts, "cuda")
    kernels = tuple(kernel.load(spec, 0) for spec in kernel.route_specs(dtype == torch.int64, "sm_90a"))
    launch = kernel.route(kernels, ids, expert_map, global_experts, experts, r.counts, r.live, r.order, r.inv,
                          r.range_counts)
    rt_device.run_on_current_stream(0, launch)
    order, inv, counts, live = ref.route_reference(ids.cpu(), None if expert_map is None else expert_map.cpu(),
                                                   global_experts, experts)
    assert r.order.tolist() == order and r.inv.tolist() == inv
    assert r.counts.tolist() == counts and r.live.item() == live


@pytest.mark.parametrize("tokens,topk", [(1, 2), (300, 4), (2049, 8)])
def test_quantize_first_gives_the_same_bytes(monkeypatch, tokens, topk):
    """Each token quantised once and the pairs' FP8 rows gathered (quant_first=1, the default from 1024
    tokens): bit for bit the output of quantising pair by pair (quant_first=0), and the reference's."""
    case = ref.make_moe_layer_inputs(tokens, 512, 256, 16, topk, torch.bfloat16, routing="skewed")
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", "quant_first=0")
    pair_by_pair = run(case)
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", "quant_first=1")
    out = torch.full_like(pair_by_pair, float("nan"))
    assert run(case, out=out) is out
    assert torch.equal(out, pair_by_pair)
    if tokens > 1:  # one token's 512 outputs: calc_diff drew 1.1e-4 once (test_routings covers M=1)
        check(out, reference(case), f"quant_first M={tokens} topk={topk}")


@pytest.mark.parametrize("activation", ["silu", "swigluoai", "swiglustep"])
@pytest.mark.parametrize("tokens,experts,topk,force", [
    (3, 8, 2, "block_m=64"), (300, 16, 4, "block_m=128"), (300, 16, 4, "block_m=64,tma_scales=2"),
    (2049, 32, 8, ""), (2049, 32, 8, "tma_scales=2"), (5000, 4, 2, "tma_scales=0")])
def test_gated_gemm_gives_the_same_bytes(monkeypatch, activation, tokens, experts, topk, force):
    """The first GEMM with the activation and quantisation in its epilogue (gated_gemm=1): bit for bit
    the layer with a bf16 GEMM and the activation kernel (gated_gemm=0), and the reference. Skewed
    routing leaves experts empty and segments of every length; N = 384 puts the up rows' scale blocks
    3 blocks after the gate rows'."""
    case = ref.make_moe_layer_inputs(tokens, 512, 384, experts, topk, torch.bfloat16, routing="skewed")
    options = {"activation": activation}
    if activation != "swiglustep":
        options["gemm1_clamp_limit"] = 5.0
    separate = ",".join(filter(None, ("gated_gemm=0", force)))
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", separate)
    two_kernels = run(case, **options)
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", separate.replace("gated_gemm=0", "gated_gemm=1"))
    out = torch.full_like(two_kernels, float("nan"))
    assert run(case, out=out, **options) is out
    assert torch.equal(out, two_kernels), f"{activation} M={tokens} {force}"
    if tokens >= 300:  # 3 tokens' outputs drew calc_diff 2.4e-4 once on the H100 (both paths alike)
        check(out, reference(case, **options), f"gated GEMM {activation} M={tokens} {force}")


@pytest.mark.parametrize("input_dtype,tokens,experts,topk,force", [
    (torch.bfloat16, 2049, 32, 8, "gather_a=1"), (torch.bfloat16, 1500, 16, 4, "gather_a=1,block_m=64"),
    (torch.float8_e4m3fn, 300, 16, 4, "gather_a=1"), (torch.float8_e4m3fn, 3, 8, 2, "gather_a=1"),
    (torch.float8_e4m3fn, 2049, 32, 8, "gather_a=1,block_m=256"),
    (torch.bfloat16, 2049, 32, 8, "gather_a=1,gated_gemm=1"),
    (torch.float8_e4m3fn, 300, 16, 4, "gather_a=1,gated_gemm=1")])
def test_gathered_rows_give_the_same_bytes(monkeypatch, input_dtype, tokens, experts, topk, force):
    """GEMM1 reading each pair's FP8 row where it lies (gather_a=1: the tokens quantised once, or the
    FP8 input, copied row by row in the routing's order): bit for bit the layer whose permute packs
    the rows first (the same values and scales in the same tiles), with the gated GEMM too."""
    case = ref.make_moe_layer_inputs(tokens, 512, 384, experts, topk, input_dtype, routing="skewed")
    packed_force = ",".join(part for part in force.split(",") if part != "gather_a=1")
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", packed_force)
    packed = run(case)
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", force)
    out = torch.full_like(packed, float("nan"))
    assert run(case, out=out) is out
    assert torch.equal(out, packed), f"{input_dtype} M={tokens} {force}"
    if tokens >= 300:  # as above: a few tokens' outputs are too few for calc_diff's tolerance
        check(out, reference(case), f"gathered {input_dtype} M={tokens} {force}")
