"""Expert-parallel scenarios on CPU ranks: gloo process groups in spawned processes, each rank
running mategemm.ep.EPMoE with the float64 reference experts; the inputs of a scenario are drawn
from its seed alone, so the test process draws the same ones for its single-process references."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mategemm import ep
from mategemm.testing import moe_layer as ref

HIDDEN, INTERMEDIATE = 128, 128
HOST_CONVERSIONS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def no_host_sync():
    """Every Tensor -> Python conversion raises AssertionError inside: code that runs through makes
    none, so it never waits for the device."""
    saved = {name: torch.Tensor.__dict__.get(name) for name in HOST_CONVERSIONS}

    def refuse(name):
        def conversion(self, *args, **kwargs):
            raise AssertionError(f"host synchronisation: Tensor.{name}")
        return conversion

    try:
        for name in HOST_CONVERSIONS:
            setattr(torch.Tensor, name, refuse(name))
        yield
    finally:
        for name, original in saved.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)


def scenario(name: str, tokens: list[int], mode: str = "throughput", topk: int = 2, experts: int = 8,
             routing: str = "uniform", input_dtype=torch.bfloat16, out_dtype=torch.float64, seed: int = 0,
             rank_layer: dict | None = None, **layer) -> dict:
    """A scenario: tokens per rank (len = world size), routing "uniform", "skewed", "local" (each
    rank's tokens to its own experts only), "one_expert" (every pair to the last expert), "duplicates"
    (each token's slot 1 repeats slot 0), "out_of_range" (the last rank's first id is `experts`);
    `layer`: more EPMoE keywords (expert_ranges, max_pairs_per_peer, ...); rank_layer: {rank:
    keywords} overriding them on one rank."""
    return dict(name=name, tokens=tokens, mode=mode, topk=topk, experts=experts, routing=routing,
                input_dtype=input_dtype, out_dtype=out_dtype, seed=seed, layer=layer, rank_layer=rank_layer or {})


def expert_ranges(spec: dict) -> tuple:
    return spec["layer"].get("expert_ranges") or ep.even_expert_ranges(spec["experts"], len(spec["tokens"]))


def draw(spec: dict) -> dict:
    """The scenario's weights (all experts) and each rank's inputs."""
    g = torch.Generator().manual_seed(spec["seed"])
    weights = ref.make_moe_layer_weights(spec["experts"], HIDDEN, INTERMEDIATE, "cpu", g)
    total, topk, experts = sum(spec["tokens"]), spec["topk"], spec["experts"]
    routing = "skewed" if spec["routing"] == "skewed" else "uniform"
    drawn = ref.make_moe_layer_inputs(total, HIDDEN, INTERMEDIATE, experts, topk, spec["input_dtype"], routing,
                                      device="cpu", generator=g, weights=weights)
    ids = drawn["topk_ids"]
    ranks = []
    start = 0
    ranges = expert_ranges(spec)
    for rank, m in enumerate(spec["tokens"]):
        rows = slice(start, start + m)
        rank_ids = ids[rows].clone()
        if spec["routing"] == "local":
            lo, hi = ranges[rank]
            rank_ids = torch.randint(lo, hi, rank_ids.shape, generator=g, dtype=torch.int32)
        elif spec["routing"] == "one_expert":
            rank_ids.fill_(experts - 1)
        elif spec["routing"] == "duplicates":
            rank_ids[:, 1] = rank_ids[:, 0]
        elif spec["routing"] == "out_of_range" and rank == len(spec["tokens"]) - 1 and m:
            rank_ids[0, 0] = experts
        scale = drawn["hidden_states_scale"]
        ranks.append(dict(hidden_states=drawn["hidden_states"][rows],
                          hidden_states_scale=None if scale is None else scale[rows],
                          topk_weights=drawn["topk_weights"][rows], topk_ids=rank_ids))
        start += m
    return dict(weights=weights, ranks=ranks)


def build(spec: dict, weights: dict, expert_range: tuple[int, int], **layer) -> ep.EPMoE:
    """The scenario's layer for the experts of expert_range (all of them: a single process) with the
    reference experts; `layer` replaces the scenario's EPMoE keywords."""
    lo, hi = expert_range
    local = {k: v[lo:hi] for k, v in weights.items()}
    expert_map = ep.local_expert_map(expert_range, spec["experts"], "cpu")
    return ep.EPMoE(local["w1"], local["w2"], local["w1_scale"], local["w2_scale"], num_experts=spec["experts"],
                    topk=spec["topk"], mode=spec["mode"], input_dtype=spec["input_dtype"], out_dtype=spec["out_dtype"],
                    experts=ref.reference_experts(**local, expert_map=expert_map), **layer)


def forward(layer: ep.EPMoE, inputs: dict) -> torch.Tensor:
    """A low_latency call runs with every host conversion refused."""
    guard = no_host_sync() if layer.mode == "low_latency" else contextlib.nullcontext()
    with guard:
        return layer(**inputs)


def _rank_main(rank: int, world: int, init_file: str, specs: list[dict], out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results = {}
    for spec in specs:
        data = draw(spec)
        try:
            layer = build(spec, data["weights"], expert_ranges(spec)[rank],
                          **dict(spec["layer"], **spec["rank_layer"].get(rank, {})))
            started = time.perf_counter()
            out = forward(layer, data["ranks"][rank])
            results[spec["name"]] = dict(out=out, dropped=int(layer.dropped_pairs),
                                         seconds=time.perf_counter() - started)
        except (TypeError, ValueError) as exc:
            results[spec["name"]] = dict(error=f"{type(exc).__name__}: {exc}")
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def run_ranks(world: int, specs: list[dict], workdir: Path, timeout: float = 60.0) -> list[dict]:
    """Run the scenarios on `world` spawned gloo ranks: per rank, {name: {out, dropped} or {error}}."""
    workdir.mkdir(parents=True, exist_ok=True)
    context = mp.start_processes(_rank_main, args=(world, str(workdir / "init"), specs, str(workdir)), nprocs=world,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world} ranks did not finish in {timeout} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [torch.load(workdir / f"rank{rank}.pt") for rank in range(world)]
