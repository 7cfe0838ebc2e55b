"""mategemm.ep.EPMoE on one GPU, in a single process and in a one-rank NCCL group, against
mategemm.fused_moe of the same experts: each pair's output is the fused layer's and the combine adds
them in the same order in fp32, so the outputs are equal bit for bit; the low_latency call captured
in a CUDA graph and replayed with new inputs."""
import pytest
import torch
import torch.distributed as dist

import mategemm
from mategemm import ep
from mategemm.testing import moe_layer as ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
EXPERTS, TOPK = 8, 4
WEIGHTS = ("w1", "w2", "w1_scale", "w2_scale")


def draw(tokens: int, input_dtype, seed: int = 0, weights=None) -> dict:
    return ref.make_moe_layer_inputs(tokens, 512, 256, EXPERTS, TOPK, input_dtype, routing="skewed",
                                     generator=torch.Generator("cuda").manual_seed(seed), weights=weights)


def layer_for(case: dict, mode: str, input_dtype, group=None) -> ep.EPMoE:
    extra = dict(max_tokens_per_rank=64) if mode == "low_latency" else {}
    return ep.EPMoE(*(case[k] for k in WEIGHTS), num_experts=EXPERTS, topk=TOPK, mode=mode, group=group,
                    input_dtype=input_dtype, **extra)


def fused(case: dict) -> torch.Tensor:
    return mategemm.fused_moe(case["hidden_states"], *(case[k] for k in WEIGHTS), case["topk_weights"],
                              case["topk_ids"], hidden_states_scale=case["hidden_states_scale"])


def call(layer: ep.EPMoE, case: dict, out=None) -> torch.Tensor:
    return layer(case["hidden_states"], case["topk_weights"], case["topk_ids"],
                 hidden_states_scale=case["hidden_states_scale"], out=out)


@pytest.mark.parametrize("input_dtype", [torch.bfloat16, torch.float8_e4m3fn])
@pytest.mark.parametrize("mode", ep.MODES)
def test_one_process_equals_the_fused_layer(mode, input_dtype):
    for tokens in (1, 37, 64):
        case = draw(tokens, input_dtype, seed=tokens)
        assert torch.equal(call(layer_for(case, mode, input_dtype), case), fused(case)), tokens


def test_low_latency_replays_from_a_cuda_graph():
    case = draw(40, torch.bfloat16)
    layer = layer_for(case, "low_latency", torch.bfloat16)
    static = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in case.items()}
    out = torch.empty((40, 512), dtype=torch.bfloat16, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call(layer, static, out)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call(layer, static, out)
    for seed in (1, 2):
        new = draw(40, torch.bfloat16, seed=seed, weights={k: case[k] for k in ("w1", "w1_scale", "w2", "w2_scale")})
        for name in ("hidden_states", "topk_weights", "topk_ids"):
            static[name].copy_(new[name])
        out.fill_(float("nan"))
        graph.replay()
        assert torch.equal(out, fused(new)), seed


def test_a_one_rank_nccl_group(tmp_path):
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        case = draw(29, torch.float8_e4m3fn)
        for mode in ep.MODES:
            layer = layer_for(case, mode, torch.float8_e4m3fn, group=dist.group.WORLD)
            assert torch.equal(call(layer, case), fused(case)), mode
    finally:
        dist.destroy_process_group()
