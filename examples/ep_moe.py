"""Expert parallelism over N processes: a DeepSeek-V3-shaped MoE layer (FP8 experts with 128x128
block scales, silu, top-k routing) split over the ranks with mategemm.ep.EPMoE, checked on every
rank against one process holding every expert.

    torchrun --nproc-per-node 8 examples/ep_moe.py                          # GPUs: NCCL, mategemm.fused_moe
    torchrun --nproc-per-node 8 examples/ep_moe.py --preset deepseek_v3     # DeepSeek-V3's own sizes
    torchrun --nproc-per-node 2 examples/ep_moe.py --backend gloo --reference   # CPUs: float64 reference experts

Every rank draws the weights of all experts from one seed and keeps its contiguous slice, draws
its own tokens (rank r: --tokens + r of them), runs the layer in each mode and compares its outputs
with the layer of all experts on its own tokens: mategemm.fused_moe on the GPU (the same arithmetic,
so the outputs should be equal bit for bit), or with --reference testing.moe_layer.fused_moe_reference
in float64. --cuda-graph also captures the low_latency call in a CUDA graph and replays it. Exit
status 1 when a rank's outputs differ.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist

import mategemm
from mategemm import ep, prewarm
from mategemm.testing import moe_layer as ref
from mategemm.testing.numerics import TOLERANCE, calc_diff

WEIGHT_NAMES = ("w1", "w2", "w1_scale", "w2_scale")
FLOAT64_CLOSE = dict(rtol=1e-12, atol=1e-12)  # the reference adds in expert order, the layer in slot order


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("nccl", "gloo"),
                        default="nccl" if torch.cuda.is_available() else "gloo")
    parser.add_argument("--reference", action="store_true",
                        help="run the float64 reference experts (any device) instead of mategemm.fused_moe")
    parser.add_argument("--mode", choices=(*ep.MODES, "both"), default="both")
    parser.add_argument("--preset", help="take hidden, intermediate, experts and topk from a model preset "
                                         "(e.g. deepseek_v3)")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=256)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--topk", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=8, help="tokens of rank 0; rank r has this + r")
    parser.add_argument("--routing", choices=ref.ROUTINGS, default="uniform")
    parser.add_argument("--input-dtype", choices=("bf16", "fp8"), default="bf16")
    parser.add_argument("--cuda-graph", action="store_true", help="also replay the low_latency call from a CUDA graph")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.backend == "gloo" and not args.reference:
        parser.error("--backend gloo moves CPU tensors, and mategemm.fused_moe needs a GPU: add --reference")
    if args.preset:
        moe = prewarm.load_preset(args.preset).moe
        args.hidden, args.intermediate, args.experts, args.topk = moe.hidden, moe.moe_intermediate, \
            moe.num_experts, moe.top_k
    return args


def draw(args, rank: int, device) -> tuple[dict, dict]:
    """(the weights of all experts, the same on every rank; this rank's inputs)."""
    weights = ref.make_moe_layer_weights(args.experts, args.hidden, args.intermediate, device,
                                         torch.Generator(device).manual_seed(args.seed))
    input_dtype = torch.float8_e4m3fn if args.input_dtype == "fp8" else torch.bfloat16
    inputs = ref.make_moe_layer_inputs(args.tokens + rank, args.hidden, args.intermediate, args.experts, args.topk,
                                       input_dtype, args.routing, device=device,
                                       generator=torch.Generator(device).manual_seed(args.seed + 1 + rank),
                                       weights=weights)
    return weights, {k: inputs[k] for k in ("hidden_states", "topk_weights", "topk_ids", "hidden_states_scale")}


def single_process(args, weights: dict, inputs: dict) -> torch.Tensor:
    """The layer of all experts on this rank's tokens."""
    call = (inputs["hidden_states"], *(weights[k] for k in WEIGHT_NAMES), inputs["topk_weights"], inputs["topk_ids"])
    if args.reference:
        return ref.fused_moe_reference(*call, hidden_states_scale=inputs["hidden_states_scale"])
    return mategemm.fused_moe(*call, hidden_states_scale=inputs["hidden_states_scale"])


def build(args, mode: str, weights: dict, rank: int, world: int) -> ep.EPMoE:
    expert_range = ep.even_expert_ranges(args.experts, world)[rank]
    local = {k: weights[k][expert_range[0]:expert_range[1]] for k in WEIGHT_NAMES}
    options = dict(num_experts=args.experts, topk=args.topk, mode=mode,
                   input_dtype=torch.float8_e4m3fn if args.input_dtype == "fp8" else torch.bfloat16)
    if mode == "low_latency":
        options["max_tokens_per_rank"] = args.tokens + world - 1
    if args.reference:
        expert_map = ep.local_expert_map(expert_range, args.experts, local["w1"].device)
        options.update(experts=ref.reference_experts(**local, expert_map=expert_map), out_dtype=torch.float64)
    return ep.EPMoE(*local.values(), **options)


def replayed(layer: ep.EPMoE, inputs: dict) -> torch.Tensor:
    """The call captured in a CUDA graph (after a warm-up call on a side stream) and replayed."""
    out = torch.empty((inputs["hidden_states"].shape[0], layer.layout.hidden), dtype=layer.out_dtype,
                      device=layer.device)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        layer(**inputs, out=out)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        layer(**inputs, out=out)
    out.zero_()
    graph.replay()
    return out


def compare(args, got: torch.Tensor, want: torch.Tensor) -> tuple[bool, str]:
    if args.reference:
        ok = torch.allclose(got, want, **FLOAT64_CLOSE)
        return ok, f"max |diff| {float((got - want).abs().max()) if got.numel() else 0.0:.2e} (float64)"
    equal = torch.equal(got, want)
    diff = calc_diff(got, want)
    return equal or diff <= TOLERANCE[("fused_moe", torch.bfloat16)], \
        f"{'bitwise equal' if equal else 'not bitwise equal'}, calc_diff {diff:.2e}"


def main(argv=None) -> int:
    args = parse_args(argv)
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    if args.backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    weights, inputs = draw(args, rank, device)
    want = single_process(args, weights, inputs)
    failures = 0
    modes = ep.MODES if args.mode == "both" else (args.mode,)
    for mode in modes:
        layer = build(args, mode, weights, rank, world)
        runs = [("eager", layer(**inputs))]
        if args.cuda_graph and mode == "low_latency" and device.type == "cuda":
            runs.append(("graph", replayed(layer, inputs)))
        for how, got in runs:
            ok, summary = compare(args, got, want)
            failures += not ok
            # one write per line: the ranks share the launcher's stdout
            sys.stdout.write(f"rank {rank}/{world} {mode:<11} {how}: {got.shape[0]} tokens, experts "
                             f"{list(layer.expert_range)}, {summary}: {'OK' if ok else 'MISMATCH'}\n")
            sys.stdout.flush()
    total = torch.tensor([failures], device=device)
    dist.all_reduce(total)
    dist.destroy_process_group()
    return int(total.item() > 0)


if __name__ == "__main__":
    sys.exit(main())
