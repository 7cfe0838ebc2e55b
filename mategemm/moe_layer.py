"""The fused MoE expert layer (the job of vLLM's DeepGemmExperts, in one call):

    route      local expert of every (token, slot) pair, pairs sorted by expert (stable), counts
               per expert: one kernel (two above 8192 pairs), no host synchronisation
    permute    the pairs' FP8 rows packed by expert, a bf16 input quantised 1x128 on the way (from
               1024 tokens quantised once per token first, then the pairs' rows gathered; where
               plan.moe_gather_a_wanted, GEMM1 gathers them itself)
    GEMM1      per_expert grouped GEMM: h = a . w1[e]^T, gate and up (bf16)
    gated_act  act(gate, up) quantised 1x128 to FP8 in one kernel
               (or, where plan.moe_gated_gemm_wanted, one kernel does both: the gated GEMM, which
               applies the activation and quantises in its epilogue)
    GEMM2      ragged_m_moe_gemm_8bit per_expert: y = q . w2[e]^T (bf16)
    unpermute  out[m] = sum_j w[m, j] * y[row of (m, j)], in slot order

Token-packed rows need no per-expert padding. Buffers come from a workspace kept per (device,
layer shape) and grown to the largest token count seen: after a first call of the largest size a
call allocates nothing but its output (none with `out`), and a CUDA graph captures it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mategemm import moe, plan, prepare, validate
from mategemm.kernels import sm90_fp8_moe_layer as kernel
from mategemm.runtime import calls
from mategemm.runtime import device as rt_device

ACTIVATIONS = validate.MOE_ACTIVATIONS
# OpenAI's gpt-oss gate: (up' + beta) * gate' * sigmoid(alpha * gate'), gate' and up' clamped to limit.
SWIGLUOAI_ALPHA, SWIGLUOAI_BETA, SWIGLUOAI_LIMIT = 1.702, 1.0, 7.0
SWIGLUSTEP_LIMIT = 7.0


def activation_params(activation: str, alpha: float | None, beta: float | None,
                      limit: float | None) -> tuple[float, float, float | None]:
    """(alpha, beta, limit) an activation runs with: the arguments, else its defaults. silu takes
    no alpha or beta and clamps only when given a limit."""
    if activation == "swigluoai":
        return (SWIGLUOAI_ALPHA if alpha is None else alpha, SWIGLUOAI_BETA if beta is None else beta,
                SWIGLUOAI_LIMIT if limit is None else limit)
    if activation == "swiglustep":
        return 1.0, 0.0, SWIGLUSTEP_LIMIT if limit is None else limit
    return 1.0, 0.0, limit


# ---- routing -----------------------------------------------------------------------------------
@dataclass
class Routing:
    """What the routing kernel writes for `pairs` = M x topk (token, slot) pairs and E local experts."""

    order: torch.Tensor    # int64 (pairs,): packed row r holds pair order[r] (rows past `live`: other ranks)
    inv: torch.Tensor      # int64 (pairs,): the packed row of each pair
    counts: torch.Tensor   # int32 (E + 1,): rows per local expert, then the pairs with none
    live: torch.Tensor     # int32 (): rows of local experts (the packed rows in use)
    range_counts: torch.Tensor  # int32: the split routing's pairs per (range of pairs, key)

    @staticmethod
    def empty(pairs: int, experts: int, device) -> "Routing":
        return Routing(torch.empty(pairs, dtype=torch.int64, device=device),
                       torch.empty(pairs, dtype=torch.int64, device=device),
                       torch.empty(experts + 1, dtype=torch.int32, device=device),
                       torch.empty((), dtype=torch.int32, device=device),
                       torch.empty(kernel.route_ranges(pairs) * (experts + 1), dtype=torch.int32, device=device))

    def first(self, pairs: int) -> "Routing":
        """Views for the first `pairs` pairs (the rest shared)."""
        return Routing(self.order.narrow(0, 0, pairs), self.inv.narrow(0, 0, pairs), self.counts, self.live,
                       self.range_counts)


# ---- workspace ---------------------------------------------------------------------------------
class Workspace:
    """The buffers of one layer shape on one device for up to `capacity` pairs: FP8 rows and their
    scales (A of GEMM1, then A of GEMM2), bf16 rows (GEMM1's output, then GEMM2's) and the
    routing's. Views of the first M x topk rows serve a call."""

    def __init__(self, device, capacity: int, hidden: int, intermediate: int, experts: int):
        widest = max(hidden, intermediate)
        self.capacity = capacity
        self.hidden = hidden
        self.intermediate = intermediate
        self.token_buffers: tuple[torch.Tensor, ...] | None = None  # see tokens()
        self.gated_buffers: tuple[torch.Tensor, ...] | None = None  # see gated_rows()
        self.fp8 = torch.empty(capacity * widest, dtype=torch.uint8, device=device)
        self.scales = torch.empty(capacity * widest // 128, dtype=torch.float32, device=device)
        self.bf16 = torch.empty(capacity * max(2 * intermediate, hidden), dtype=torch.bfloat16, device=device)
        self.routing = Routing.empty(capacity, experts, device)

    def rows(self, pairs: int, cols: int, kind: str) -> tuple[torch.Tensor, ...]:
        """(pairs, cols) views: "fp8" -> (e4m3 rows, their (pairs, cols/128) scales); "bf16" -> (rows,)."""
        if kind == "bf16":
            return (self.bf16.narrow(0, 0, pairs * cols).view(pairs, cols),)
        return _fp8_rows(self.fp8, self.scales, pairs, cols)

    def tokens(self, tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(e4m3 (tokens, hidden), scales (tokens, hidden/128), int64 0 .. tokens - 1): a bf16 input
        quantised once per token (plan.moe_quantize_first, topk >= 2), allocated on first use for
        half the capacity in pairs."""
        if self.token_buffers is None:
            rows, device = self.capacity // 2, self.fp8.device
            self.token_buffers = (torch.empty(rows * self.hidden, dtype=torch.uint8, device=device),
                                  torch.empty(rows * self.hidden // 128, dtype=torch.float32, device=device),
                                  torch.arange(rows, dtype=torch.int64, device=device))
        fp8, scales, identity = self.token_buffers
        return (*_fp8_rows(fp8, scales, tokens, self.hidden), identity.narrow(0, 0, tokens))

    def gated_rows(self, pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(e4m3 (pairs, intermediate), scales (pairs, intermediate/128)): the gated GEMM's output, apart
        from the FP8 rows it reads (those of `rows`), allocated on first use for the capacity."""
        if self.gated_buffers is None:
            device, cols = self.fp8.device, self.intermediate
            self.gated_buffers = (torch.empty(self.capacity * cols, dtype=torch.uint8, device=device),
                                  torch.empty(self.capacity * cols // 128, dtype=torch.float32, device=device))
        return _fp8_rows(*self.gated_buffers, pairs, self.intermediate)


def _fp8_rows(fp8: torch.Tensor, scales: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 (rows, cols), their (rows, cols/128) scales): views of the first rows of byte and float buffers."""
    q = fp8.narrow(0, 0, rows * cols).view(torch.float8_e4m3fn).view(rows, cols)
    return q, scales.narrow(0, 0, rows * cols // 128).view(rows, cols // 128)


_workspaces: dict[tuple, Workspace] = {}
# Outgrown workspaces stay allocated: a CUDA graph captured with one keeps its addresses and holds
# no reference to it (a power-of-two growth keeps them below the size of the newest).
_outgrown: list[Workspace] = []


def workspace(device, pairs: int, hidden: int, intermediate: int, experts: int) -> Workspace:
    """The workspace of a layer shape on a device, grown to hold `pairs` (capacity a power of two)."""
    key = (device, hidden, intermediate, experts)
    ws = _workspaces.get(key)
    if ws is None or ws.capacity < pairs:
        if ws is not None:
            _outgrown.append(ws)
        ws = _workspaces[key] = Workspace(device, 1 << max(pairs - 1, 0).bit_length(), hidden, intermediate, experts)
    return ws


# ---- the layer ---------------------------------------------------------------------------------
class Layer:
    """A layer's steps for its weights, options and input layouts: kernels loaded, workspace views
    and GEMM calls set up once; the launches that read a call's own tensors (permute: the inputs
    and weights; unpermute: the weights and `out`) packed once per set of addresses."""

    def __init__(self, checked: validate.FusedMoeChecked, device, w1, w2, w1_scale, w2_scale, expert_map,
                 apply_router_weight_on_input: bool, alpha: float, beta: float, limit: float | None):
        c = self.checked = checked
        self.index = device.index
        info = rt_device.device_info(self.index)
        pairs = c.tokens * c.topk
        ws = workspace(device, pairs, c.hidden, c.intermediate, c.experts)
        r = self.routing = ws.routing.first(pairs)
        self.expert_map = expert_map
        self.weight_input = apply_router_weight_on_input
        self.a = ws.rows(pairs, c.hidden, "fp8")
        (h,) = ws.rows(pairs, 2 * c.intermediate, "bf16")
        gated = plan.moe_gated_gemm_wanted(c.tokens)
        # the gated GEMM writes its FP8 rows beside the ones it reads; the activation kernel over them
        q, q_scale = ws.gated_rows(pairs) if gated else ws.rows(pairs, c.intermediate, "fp8")
        (self.y,) = ws.rows(pairs, c.hidden, "bf16")
        *route, permute, gated_act, unpermute = plan.moe_layer_kernels(c.input_fp8, c.activation, c.ids_64bit, info)
        # quantise each token once into x_q, then gather the pairs' rows with the FP8-input permute
        quantize_first = plan.moe_quantize_first(c.input_fp8, c.tokens, c.topk)
        self.x_q = ws.tokens(c.tokens) if quantize_first else None
        # or GEMM1 gathers them itself, from x_q or an FP8 input
        self.gather = plan.moe_gather_a_wanted(c.input_fp8, quantize_first, apply_router_weight_on_input)
        with torch.cuda.device(self.index):
            self.route_kernels = tuple(kernel.load(spec, self.index) for spec in route)
            self.permute_kernel = kernel.load(permute, self.index)
            self.unpermute_kernel = kernel.load(unpermute, self.index)
            if self.x_q is not None and not self.gather:
                self.gather_kernel = kernel.load(kernel.permute_spec(True, info.arch), self.index)
            self.gated_act = None if gated else kernel.gated_act(kernel.load(gated_act, self.index), h, q, q_scale,
                                                                 r.live, alpha, beta, limit, info.num_sms)
        self.counts = r.counts.narrow(0, 0, c.experts)
        self.w1 = (w1, w1_scale)
        # GEMM1's A rows: packed by the permute (their scales' layout decides A's scale path), or gathered
        a_scale = self.a[1]
        a_scales_tma = not self.gather and plan.a_scales_tma_readable((a_scale.stride(0), a_scale.stride(1)),
                                                                      a_scale.data_ptr(), pairs)
        self.gemm1_plan = plan.moe_gemm1(pairs, c.intermediate, c.hidden, c.experts, info,
                                         activation=c.activation if gated else None, gather_a=self.gather,
                                         a_scales_tma=a_scales_tma)
        self.act = ((alpha, beta, math.inf if limit is None else limit), q_scale) if gated else (None, None)
        self.gemm1_out = q if gated else h
        self.gemm2 = ((q, q_scale), (w2, w2_scale), self.counts, self.y)
        self.num_sms = info.num_sms
        self._launches: dict[tuple, kernel.Launch] = {}

    def _gemm1(self, a, a_scale) -> calls.PreparedCall:
        """GEMM1's prepared launch reading `a`: the packed rows, or the tokens' rows when gathered."""
        gather = (self.routing.order, self.checked.topk) if self.gather else None
        return prepare.moe_gemm1_call(self.gemm1_plan, a, a_scale, *self.w1, self.counts, gather, *self.act)

    def _launch(self, key: tuple, make) -> kernel.Launch:
        launch = self._launches.get(key)
        if launch is None:
            if len(self._launches) >= 64:
                self._launches.clear()
            launch = self._launches[key] = make()
        return launch

    def __call__(self, hidden_states, hidden_states_scale, topk_weights, topk_ids, out) -> torch.Tensor:
        c, r = self.checked, self.routing
        route = self._launch(
            ("route", topk_ids.data_ptr()),
            lambda: kernel.route(self.route_kernels, topk_ids, self.expert_map, c.global_experts, c.experts, r.counts,
                                 r.live, r.order, r.inv, r.range_counts))
        if self.gather:  # GEMM1 reads each pair's row where it lies: the tokens quantised once, or the input
            a, a_scale = self.x_q[:2] if self.x_q is not None else (hidden_states, hidden_states_scale)
            gemm1 = self._launch(("gemm1", a.data_ptr(), a_scale.data_ptr()), lambda: self._gemm1(a, a_scale))
        else:
            gemm1 = self._launch(("gemm1",), lambda: self._gemm1(*self.a))
        if self.x_q is None:
            permute = None if self.gather else self._launch(
                ("permute", hidden_states.data_ptr(),
                 0 if hidden_states_scale is None else hidden_states_scale.data_ptr(), topk_weights.data_ptr()),
                lambda: kernel.permute(self.permute_kernel, hidden_states, hidden_states_scale, r.order, c.topk,
                                       topk_weights, self.weight_input, *self.a, r.live, self.num_sms))
        else:
            x_q, x_q_scale, identity = self.x_q
            quantize = self._launch(
                ("quantize", hidden_states.data_ptr(), topk_weights.data_ptr()),
                lambda: kernel.permute(self.permute_kernel, hidden_states, None, identity, 1, topk_weights, False, x_q,
                                       x_q_scale, None, self.num_sms))
            permute = quantize if self.gather else self._launch(
                ("quantize, gather", hidden_states.data_ptr(), topk_weights.data_ptr()),
                lambda: kernel.Launches(quantize, kernel.permute(self.gather_kernel, x_q, x_q_scale, r.order, c.topk,
                                                                 topk_weights, False, *self.a, r.live, self.num_sms)))
        unpermute = self._launch(
            ("unpermute", topk_weights.data_ptr(), out.data_ptr()),
            lambda: kernel.unpermute(self.unpermute_kernel, self.y, r.inv, c.topk, topk_weights, not self.weight_input,
                                     out, r.live, self.num_sms))
        rt_device.run_on_current_stream(self.index, route)
        if permute is not None:
            rt_device.run_on_current_stream(self.index, permute)
        calls.launch(gemm1, self.gemm1_out)
        if self.gated_act is not None:
            rt_device.run_on_current_stream(self.index, self.gated_act)
        moe.ragged_m_moe_gemm_8bit(*self.gemm2, gemm_mode="per_expert")
        rt_device.run_on_current_stream(self.index, unpermute)
        return out


def _layout(t: torch.Tensor | None):
    """What the checks read of a per-call tensor: all but its values and its exact address."""
    if t is None:
        return None
    return t.dtype, t.shape, t.stride(), t.device, t.data_ptr() % 16 == 0


_warm = prepare.WarmCalls(limit=256)


def fused_moe(hidden_states, w1, w2, w1_scale, w2_scale, topk_weights, topk_ids, *, activation="silu",
              gemm1_alpha=None, gemm1_beta=None, gemm1_clamp_limit=None, expert_map=None, global_num_experts=-1,
              apply_router_weight_on_input=False, hidden_states_scale=None, out=None) -> torch.Tensor:
    """A MoE layer's routed experts: out (M, K) bf16 = sum over each token's top-k experts e of
    topk_weights x w2[e] . act(w1[e] . x).

    hidden_states (M, K) bf16 (quantised inside, one scale per token and 128 columns) or FP8 e4m3
    with hidden_states_scale (M, K/128) fp32. w1 (E, 2N, K) e4m3, gate rows then up rows, w1_scale
    (E, 2N/128, K/128); w2 (E, K, N) e4m3, w2_scale (E, K/128, N/128); fp32 scales per 128x128
    block; K and N multiples of 128; w1 and w2 read in place: unit stride along K, 16-byte rows,
    experts stacked row after row (as torch allocates them). topk_ids (M, topk) int32/int64,
    topk_weights (M, topk) fp32.
    activation: "silu" (silu(gate) * up; with gemm1_clamp_limit, gate clamped above and up to
    +-limit first), "swigluoai" ((up' + beta) * gate' * sigmoid(alpha * gate'), defaults alpha
    1.702, beta 1.0, limit 7.0) or "swiglustep" (min(silu(gate), limit) * clamp(up, +-limit), limit
    7.0). expert_map (global E,) int32: the local index of each global expert, -1 for an expert of
    another rank (its pairs add nothing); ids outside the map add nothing either.
    apply_router_weight_on_input (topk 1): the weight scales the input row, the output sums with
    weight 1. out: (M, K) bf16, written and returned; None: a new tensor.
    Raises TypeError/ValueError naming the argument before anything runs.
    """
    try:
        key = ("fused_moe", *(_layout(t) for t in (hidden_states, hidden_states_scale, topk_weights, topk_ids)),
               prepare.memo_key(w1, w2, w1_scale, w2_scale, expert_map, activation, gemm1_alpha, gemm1_beta,
                              gemm1_clamp_limit, global_num_experts, apply_router_weight_on_input))
        layer = _warm.get(key if key[-1] is not None else None)
    except (AttributeError, TypeError):  # not tensors where tensors belong: the checks say which
        key = layer = None
    if layer is None:
        checked = validate.fused_moe(hidden_states, w1, w2, w1_scale, w2_scale, topk_weights, topk_ids, activation,
                                     gemm1_alpha, gemm1_beta, gemm1_clamp_limit, expert_map, global_num_experts,
                                     apply_router_weight_on_input, hidden_states_scale, out)
        if checked.tokens == 0:
            return out if out is not None else hidden_states.new_empty((0, checked.hidden), dtype=torch.bfloat16)
        alpha, beta, limit = activation_params(checked.activation, gemm1_alpha, gemm1_beta, gemm1_clamp_limit)
        layer = Layer(checked, hidden_states.device, w1, w2, w1_scale, w2_scale, expert_map,
                      apply_router_weight_on_input, alpha, beta, limit)
        if key is not None and key[-1] is not None:
            _warm.remember(key, layer)
    elif out is not None:
        validate.fused_moe_out(out, hidden_states, layer.checked.tokens, layer.checked.hidden)
    if out is None:
        out = torch.empty((layer.checked.tokens, layer.checked.hidden), dtype=torch.bfloat16,
                          device=hidden_states.device)
    return layer(hidden_states, hidden_states_scale, topk_weights, topk_ids, out)
