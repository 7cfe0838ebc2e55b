"""float64 reference of the fused MoE expert layer (`mategemm.fused_moe`) and its random inputs.

The layer, per token m and top-k slot j routed to local expert e:
    x = the token's FP8 row dequantised (quantised 1x128 per token here when it comes in bf16)
    h = bf16(x @ W1[e]^T)                   (2N,)  gate = h[:N], up = h[N:]
    a = fp8_1x128(gated_activation(gate, up)) dequantised
    y = bf16(a @ W2[e]^T)                   (K,)
    out[m] += topk_weights[m, j] * y        (float64)
W1 (E, 2N, K) and W2 (E, K, N) are FP8 e4m3 with one fp32 scale per 128x128 block. Everything runs
on the tensors' own device, CPU included.
"""
from __future__ import annotations

import math

import torch

from mategemm.moe_layer import ACTIVATIONS, activation_params
from mategemm.quant import per_block_cast_to_fp8, per_token_cast_to_fp8
from mategemm.testing.moe import _magnitudes

FP8 = torch.float8_e4m3fn
ROUTINGS = ("uniform", "skewed")
HOT_EXPERT_FRACTION = 0.2   # skewed routing: this fraction of the experts ...
HOT_PAIR_FRACTION = 0.8     # ... draws this fraction of the (token, slot) picks
# root mean square of _magnitudes' U(0.25, 4.25) factors: dividing by it keeps the rms of the data at 1
_MAG_RMS = math.sqrt(2.25 ** 2 + 4.0 ** 2 / 12)
# rms of GEMM1's output on make_moe_layer_inputs' data: gate and up reach the default clamp limit (7)
# now and then, and GEMM2's output stays O(1)
_GEMM1_GAIN = 2.0


# ---------------------------------------------------------------- activation

def gated_activation(gate: torch.Tensor, up: torch.Tensor, activation: str, alpha: float | None = None,
                     beta: float | None = None, limit: float | None = None) -> torch.Tensor:
    """act(gate, up) in float64, same shape as gate and up (any shape, any float dtype in).

    alpha, beta, limit: None takes the activation's default (`activation_params`).
      silu:       gate = min(gate, limit), up = clamp(up, -limit, limit) when limit is given;
                  silu(gate) * up
      swigluoai:  gate = min(gate, limit), up = clamp(up, -limit, limit);
                  (up + beta) * gate * sigmoid(alpha * gate)
      swiglustep: min(silu(gate), limit) * clamp(up, -limit, limit)
    Raises ValueError for an unknown activation.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    alpha, beta, limit = activation_params(activation, alpha, beta, limit)
    gate = gate.double()
    up = up.double()
    if activation == "silu":
        if limit is not None:
            gate = gate.clamp(max=limit)
            up = up.clamp(-limit, limit)
        return gate * torch.sigmoid(gate) * up
    if activation == "swigluoai":
        gate = gate.clamp(max=limit)
        up = up.clamp(-limit, limit)
        return (up + beta) * gate * torch.sigmoid(alpha * gate)
    # swiglustep
    return (gate * torch.sigmoid(gate)).clamp(max=limit) * up.clamp(-limit, limit)


# ---------------------------------------------------------------- reference

def _dequant_blocks(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """One expert's (rows, cols) fp8 with (rows/128, cols/128) scales -> float64 (rows, cols)."""
    s = scale.double().repeat_interleave(128, dim=0).repeat_interleave(128, dim=1)
    return w.double() * s[:w.shape[0], :w.shape[1]]


def _dequant_tokens(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(rows, K) fp8 with (rows, K/128) scales -> float64 (rows, K)."""
    return q.double() * scale.double().repeat_interleave(128, dim=1)


def _quant_dequant_tokens(x: torch.Tensor) -> torch.Tensor:
    """x (rows, cols) -> float64: per_token_cast_to_fp8 (1x128 groups) and back."""
    return _dequant_tokens(*per_token_cast_to_fp8(x))


def _shape(t, name: str, want: tuple) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(want):
        raise ValueError(f"{name} must have shape {tuple(want)}, got {tuple(t.shape)}")


def _local_experts(topk_ids: torch.Tensor, num_experts: int, expert_map, global_num_experts: int) -> torch.Tensor:
    """int64 (M, topk) on topk_ids' device: the local expert of each (token, slot), -1 off this rank."""
    if topk_ids.is_floating_point() or topk_ids.is_complex() or topk_ids.dtype == torch.bool:
        raise TypeError(f"topk_ids must be an integer tensor, got {topk_ids.dtype}")
    ids = topk_ids.long()
    num_global = num_experts if expert_map is None else expert_map.numel()
    if global_num_experts not in (-1, num_global):
        what = "E (w1.shape[0])" if expert_map is None else "expert_map.numel()"
        raise ValueError(f"global_num_experts must be -1 or {what} = {num_global}, got {global_num_experts}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_global):
        raise ValueError(f"topk_ids must be in [0, {num_global}), got min {int(ids.min())}, max {int(ids.max())}")
    if expert_map is None:
        return ids
    emap = expert_map.to(ids.device).long().flatten()
    if emap.numel() and (int(emap.min()) < -1 or int(emap.max()) >= num_experts):
        raise ValueError(f"expert_map values must be -1 or in [0, {num_experts}), "
                         f"got min {int(emap.min())}, max {int(emap.max())}")
    return emap[ids]


def _expert_output(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w1_scale: torch.Tensor,
                   w2_scale: torch.Tensor, activation: str, alpha: float, beta: float, limit: float | None) -> torch.Tensor:
    """One expert on float64 rows x (rows, K) -> bf16 (rows, K): GEMM1 rounded to bf16, the gated
    activation quantised 1x128, GEMM2 rounded to bf16."""
    n = w1.shape[0] // 2
    h = (x @ _dequant_blocks(w1, w1_scale).t()).to(torch.bfloat16)
    a = _quant_dequant_tokens(gated_activation(h[:, :n], h[:, n:], activation, alpha, beta, limit).float())
    return (a @ _dequant_blocks(w2, w2_scale).t()).to(torch.bfloat16)


def fused_moe_reference(hidden_states, w1, w2, w1_scale, w2_scale, topk_weights, topk_ids, *,
                        activation="silu", gemm1_alpha=None, gemm1_beta=None, gemm1_clamp_limit=None,
                        expert_map=None, global_num_experts=-1, apply_router_weight_on_input=False,
                        hidden_states_scale=None) -> torch.Tensor:
    """float64 (M, K) on hidden_states' device: what `mategemm.fused_moe` computes, with the GEMMs in
    float64 (the kernel accumulates in fp32) and every rounding the kernel does (FP8 inputs, bf16 GEMM
    outputs) done here too.

    hidden_states (M, K) bf16 (quantised here with per_token_cast_to_fp8) or FP8 e4m3 with
    hidden_states_scale (M, K/128) fp32. w1 (E, 2N, K) FP8, gate rows 0..N-1 then up rows, w1_scale
    (E, 2N/128, K/128) fp32; w2 (E, K, N) FP8, w2_scale (E, K/128, N/128) fp32. topk_ids (M, topk)
    int32/int64, topk_weights (M, topk) fp32. expert_map: None (ids are local experts 0..E-1) or
    (global_num_experts,) int mapping a global id to a local expert or -1 (that pair adds nothing).
    GEMM1 and GEMM2 outputs are rounded to bf16; the activation is quantised 1x128 with
    per_token_cast_to_fp8. apply_router_weight_on_input: the pair's weight multiplies the input row
    (bf16 input: in fp32, before the quantisation; FP8 input: the dequantised row) and the output
    weight is 1. Raises TypeError / ValueError for wrong shapes, dtypes or ids.
    """
    for name, t in (("hidden_states", hidden_states), ("topk_ids", topk_ids), ("topk_weights", topk_weights)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if hidden_states.dim() != 2 or hidden_states.shape[1] % 128:
        raise ValueError(f"hidden_states must be (M, K) with K a multiple of 128, got {tuple(hidden_states.shape)}")
    m, k = hidden_states.shape
    if not isinstance(w1, torch.Tensor) or w1.dim() != 3 or w1.shape[1] % 256 or w1.shape[2] != k:
        raise ValueError(f"w1 must be (E, 2N, {k}) with N a multiple of 128, got "
                         f"{tuple(w1.shape) if isinstance(w1, torch.Tensor) else type(w1).__name__}")
    num_experts, two_n, _ = w1.shape
    n = two_n // 2
    _shape(w2, "w2", (num_experts, k, n))
    _shape(w1_scale, "w1_scale", (num_experts, two_n // 128, k // 128))
    _shape(w2_scale, "w2_scale", (num_experts, k // 128, n // 128))
    if w1.dtype != FP8 or w2.dtype != FP8:
        raise TypeError(f"w1 and w2 must be {FP8}, got {w1.dtype} and {w2.dtype}")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != m:
        raise ValueError(f"topk_ids must be ({m}, topk), got {tuple(topk_ids.shape)}")
    _shape(topk_weights, "topk_weights", topk_ids.shape)
    fp8_input = hidden_states.element_size() == 1 and hidden_states.is_floating_point()
    if fp8_input:
        if hidden_states.dtype != FP8:
            raise TypeError(f"FP8 hidden_states must be {FP8}, got {hidden_states.dtype}")
        if hidden_states_scale is None:
            raise ValueError("FP8 hidden_states need hidden_states_scale (M, K/128) fp32")
        _shape(hidden_states_scale, "hidden_states_scale", (m, k // 128))
    elif not hidden_states.is_floating_point():
        raise TypeError(f"hidden_states must be bf16 or {FP8}, got {hidden_states.dtype}")
    elif hidden_states_scale is not None:
        raise ValueError("hidden_states_scale is only for FP8 hidden_states")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    alpha, beta, limit = activation_params(activation, gemm1_alpha, gemm1_beta, gemm1_clamp_limit)

    device = hidden_states.device
    local = _local_experts(topk_ids.to(device), num_experts, expert_map, global_num_experts)
    weights32 = topk_weights.to(device=device, dtype=torch.float32)
    weights = weights32.double()
    out = torch.zeros((m, k), dtype=torch.float64, device=device)
    if fp8_input:
        x_all = _dequant_tokens(hidden_states, hidden_states_scale.to(device))
    elif not apply_router_weight_on_input:
        x_all = _quant_dequant_tokens(hidden_states)

    for e in range(num_experts):
        tokens, slots = (local == e).nonzero(as_tuple=True)
        if tokens.numel() == 0:
            continue
        pair_weights = weights[tokens, slots]
        if not apply_router_weight_on_input:
            x = x_all[tokens]
        elif fp8_input:
            x = x_all[tokens] * pair_weights[:, None]
        else:
            x = _quant_dequant_tokens(hidden_states[tokens].float() * weights32[tokens, slots, None])
        y = _expert_output(x, w1[e], w2[e], w1_scale[e], w2_scale[e], activation, alpha, beta, limit).double()
        if not apply_router_weight_on_input:
            y = y * pair_weights[:, None]
        out.index_add_(0, tokens, y)
    return out


def reference_experts(w1, w2, w1_scale, w2_scale, expert_map=None, *, activation="silu", gemm1_alpha=None,
                      gemm1_beta=None, gemm1_clamp_limit=None):
    """An expert function for `mategemm.ep.EPMoE(experts=...)` in float64, on any device.

    Weights and activation options as fused_moe_reference; expert_map (G,) int maps a global expert
    id to a local expert of w1 or -1 (None: ids are local). The function takes (hidden_states (rows,
    K) bf16 or FP8 e4m3, hidden_states_scale (rows, K/128) fp32 or None, expert_ids (rows,) int32)
    and returns bf16 (rows, K): row r is expert expert_ids[r]'s output for row r, unweighted, with the
    roundings of fused_moe_reference; zeros where the id maps to no local expert (-1 marks an empty
    row). Every local expert runs on every row and the rows are picked with torch.where: no host
    synchronisation, meant for small test sizes.
    """
    experts, two_n, hidden = w1.shape
    alpha, beta, limit = activation_params(activation, gemm1_alpha, gemm1_beta, gemm1_clamp_limit)
    local_of = None if expert_map is None else expert_map.to(w1.device).long().flatten()
    num_ids = experts if local_of is None else local_of.numel()

    def run(hidden_states, hidden_states_scale, expert_ids):
        ids = expert_ids.long()
        known = (ids >= 0) & (ids < num_ids)
        local = ids if local_of is None else local_of[ids.clamp(0, num_ids - 1)]
        local = torch.where(known, local, -1)
        if hidden_states_scale is not None:
            x = _dequant_tokens(hidden_states, hidden_states_scale)
        else:
            x = _quant_dequant_tokens(hidden_states)
        y = torch.zeros((ids.numel(), hidden), dtype=torch.bfloat16, device=hidden_states.device)
        for e in range(experts):
            ye = _expert_output(x, w1[e], w2[e], w1_scale[e], w2_scale[e], activation, alpha, beta, limit)
            y = torch.where((local == e)[:, None], ye, y)
        return y

    return run


# ---------------------------------------------------------------- inputs

def _expert_weights(num_experts: int, rows: int, cols: int, gain: float, device, generator):
    """(w (E, rows, cols) fp8, scale (E, rows/128, cols/128) fp32): per expert, bf16 random data with
    random row and column magnitudes and rms gain / sqrt(cols), quantised with per_block_cast_to_fp8."""
    w = torch.empty((num_experts, rows, cols), dtype=FP8, device=device)
    scale = torch.empty((num_experts, rows // 128, cols // 128), dtype=torch.float32, device=device)
    for e in range(num_experts):
        x = torch.randn((rows, cols), device=device, generator=generator)
        x *= _magnitudes((rows, 1), device, generator)
        x *= _magnitudes((1, cols), device, generator)
        x *= gain / (_MAG_RMS ** 2 * math.sqrt(cols))
        w[e], scale[e] = per_block_cast_to_fp8(x.to(torch.bfloat16))
    return w, scale


def make_moe_layer_weights(num_experts: int, hidden: int, intermediate: int, device="cuda", generator=None) -> dict:
    """Random FP8 expert weights with 128x128 block scales: {w1 (E, 2N, K), w1_scale, w2 (E, K, N),
    w2_scale}, as make_moe_layer_inputs draws them (pass them back through its `weights` to reuse
    one set for several token counts)."""
    w1, w1_scale = _expert_weights(num_experts, 2 * intermediate, hidden, _GEMM1_GAIN, device, generator)
    w2, w2_scale = _expert_weights(num_experts, hidden, intermediate, 1.0, device, generator)
    return {"w1": w1, "w1_scale": w1_scale, "w2": w2, "w2_scale": w2_scale}


def make_moe_layer_inputs(num_tokens: int, hidden: int, intermediate: int, num_experts: int, topk: int,
                          input_dtype=torch.bfloat16, routing: str = "uniform", expert_map: bool = False,
                          num_global_experts: int | None = None, device="cuda", generator=None,
                          weights: dict | None = None) -> dict:
    """Random inputs of `mategemm.fused_moe` / `fused_moe_reference`, as a dict of its argument names.

    hidden_states (M, hidden) bf16 (input_dtype bf16) or FP8 e4m3 with hidden_states_scale
    (M, hidden/128) fp32 (per_token_cast_to_fp8 of the same bf16 data; None for bf16 input).
    w1 (E, 2*intermediate, hidden) / w2 (E, hidden, intermediate) FP8 with w1_scale / w2_scale fp32 per
    128x128 block, each expert quantised on its own (per_block_cast_to_fp8 of bf16 data); rows and
    columns have random magnitudes, and GEMM1's output has rms ~2 so that the activations' clamps
    engage now and then while the layer's output stays O(1).
    topk_ids (M, topk) int32: distinct global experts per token, drawn uniformly or, with
    routing="skewed", 20% of the experts drawing ~80% of the picks (when topk allows it).
    topk_weights (M, topk) fp32, positive, each row summing to 1.
    expert_map: False -> None and global_num_experts = E; True -> (G,) int32 mapping a random E of the
    G = num_global_experts (default 2E) global experts to the local experts 0..E-1 (in random order)
    and the rest to -1. `generator`: a torch.Generator on `device`.
    """
    if hidden % 128 or intermediate % 128 or hidden <= 0 or intermediate <= 0:
        raise ValueError(f"hidden and intermediate must be positive multiples of 128, got {hidden}, {intermediate}")
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    if input_dtype not in (torch.bfloat16, FP8):
        raise ValueError(f"input_dtype must be torch.bfloat16 or {FP8}, got {input_dtype}")
    if num_experts < 1 or num_tokens < 0:
        raise ValueError(f"need num_experts >= 1 and num_tokens >= 0, got {num_experts}, {num_tokens}")
    if expert_map:
        num_global = 2 * num_experts if num_global_experts is None else num_global_experts
        if num_global <= num_experts:
            raise ValueError(f"with an expert_map, num_global_experts must exceed num_experts={num_experts}, "
                             f"got {num_global}")
    else:
        num_global = num_experts if num_global_experts is None else num_global_experts
        if num_global != num_experts:
            raise ValueError(f"without an expert_map, num_global_experts must be None or num_experts={num_experts}, "
                             f"got {num_global}")
    if not 1 <= topk <= num_global:
        raise ValueError(f"topk must be in [1, {num_global}], got {topk}")

    x = torch.randn((num_tokens, hidden), device=device, generator=generator)
    x *= _magnitudes((num_tokens, 1), device, generator)
    x *= _magnitudes((1, hidden), device, generator)
    x = (x / _MAG_RMS ** 2).to(torch.bfloat16)
    hidden_states_scale = None
    if input_dtype == FP8:
        x, hidden_states_scale = per_token_cast_to_fp8(x)
    if weights is None:
        weights = make_moe_layer_weights(num_experts, hidden, intermediate, device, generator)
    w1, w1_scale, w2, w2_scale = (weights[k] for k in ("w1", "w1_scale", "w2", "w2_scale"))
    if w1.shape != (num_experts, 2 * intermediate, hidden) or w2.shape != (num_experts, hidden, intermediate):
        raise ValueError(f"weights must be (E, 2N, K) and (E, K, N) for E={num_experts}, K={hidden}, "
                         f"N={intermediate}, got {tuple(w1.shape)} and {tuple(w2.shape)}")

    popularity = torch.ones(num_global, dtype=torch.float32, device=device)
    if routing == "skewed":
        hot = max(1, round(HOT_EXPERT_FRACTION * num_global))
        if hot < num_global:
            order = torch.randperm(num_global, device=device, generator=generator)
            popularity[order[:hot]] = HOT_PAIR_FRACTION / hot
            popularity[order[hot:]] = (1 - HOT_PAIR_FRACTION) / (num_global - hot)
    if num_tokens:
        ids = torch.multinomial(popularity.expand(num_tokens, -1), topk, replacement=False, generator=generator)
    else:
        ids = torch.empty((0, topk), dtype=torch.int64, device=device)
    logits = torch.randn((num_tokens, topk), device=device, generator=generator)
    weights = torch.softmax(logits, dim=1)
    weights = weights / weights.sum(dim=1, keepdim=True)

    emap = None
    if expert_map:
        chosen = torch.randperm(num_global, device=device, generator=generator)[:num_experts]
        emap = torch.full((num_global,), -1, dtype=torch.int32, device=device)
        emap[chosen] = torch.arange(num_experts, dtype=torch.int32, device=device)
    return {
        "hidden_states": x, "hidden_states_scale": hidden_states_scale,
        "w1": w1, "w1_scale": w1_scale, "w2": w2, "w2_scale": w2_scale,
        "topk_ids": ids.to(torch.int32), "topk_weights": weights.float().contiguous(),
        "expert_map": emap, "global_num_experts": num_global,
    }


def route_counts(topk_ids: torch.Tensor, num_experts: int, expert_map: torch.Tensor | None = None) -> list[int]:
    """(token, slot) pairs per local expert 0..num_experts-1, on the host; off-rank pairs (mapped to -1
    by expert_map) are not counted. Raises ValueError for an id or local expert out of range."""
    ids = topk_ids.detach().flatten().long().cpu()
    if expert_map is not None:
        emap = expert_map.detach().flatten().long().cpu()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= emap.numel()):
            raise ValueError(f"topk_ids must be in [0, {emap.numel()}) with this expert_map")
        ids = emap[ids]
        ids = ids[ids >= 0]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_experts):
        raise ValueError(f"local experts must be in [0, {num_experts}), got min {int(ids.min())}, max {int(ids.max())}")
    return torch.bincount(ids, minlength=num_experts).tolist()


def route_reference(topk_ids: torch.Tensor, expert_map: torch.Tensor | None, global_experts: int,
                    experts: int) -> tuple[list[int], list[int], list[int], int]:
    """What the layer's routing kernel writes, on the host: (order, inv, counts (E + 1), live).
    A pair's key is its local expert (expert_map's entry, or the id), or `experts` when the id is
    outside [0, global_experts) or maps outside [0, experts); pairs sorted by key, stable."""
    keys = []
    for g in topk_ids.reshape(-1).tolist():
        e = experts
        if 0 <= g < global_experts:
            e = int(expert_map[g]) if expert_map is not None else g
        keys.append(e if 0 <= e < experts else experts)
    order = sorted(range(len(keys)), key=lambda p: (keys[p], p))
    inv = [0] * len(keys)
    for row, pair in enumerate(order):
        inv[pair] = row
    counts = [keys.count(e) for e in range(experts + 1)]
    return order, inv, counts, sum(counts[:experts])
