"""Host side of kernels_src/sm90_fp8_moe_layer.cuh: the MoE layer's permute (with the input's FP8
1x128 quantisation), gated activation + quantisation, and weighted unpermute."""
from __future__ import annotations

import math

import torch

from mategemm.jit.cache import KernelCache, KernelSpec, instance_spec
from mategemm.runtime import launch as rt

KERNEL = "sm90_fp8_moe_layer"
THREADS = 256
ROUTE_THREADS = 1024
ROUTE_CHUNK = 4 * ROUTE_THREADS           # pairs per CTA where the routing is split (kRouteChunk)
ROUTE_ONE_CTA = 2 * ROUTE_CHUNK           # up to this many pairs one CTA routes them all
MAX_EXPERTS = 1024                        # validate.MAX_GROUPS
ROUTE_SMEM = 33 * (MAX_EXPERTS + 1) * 4   # next row per key, and per (warp, key)
GROUP = 128       # columns per scale
# A permute warp's work item, in groups of 128 columns of one row: kGroupsPerItem for a bf16 input,
# kFp8ItemBytes / 128 for an FP8 one.
PERMUTE_GROUPS_PER_ITEM = {False: 4, True: 16}
CTAS_PER_SM = 8   # the grids stride over their rows, at most this many CTAs per SM and no more than fit
ACTIVATION_KINDS = {"silu": 0, "swigluoai": 0, "swiglustep": 1}  # kGatedSigmoid, kSwigluStep
PERMUTE_TYPES = (rt.PTR, rt.I64, rt.PTR, rt.I64, rt.PTR, rt.INT, rt.PTR, rt.INT, rt.PTR, rt.I64, rt.PTR, rt.I64,
                 rt.INT, rt.PTR, rt.INT)
ACT_TYPES = (rt.PTR, rt.I64, rt.PTR, rt.I64, rt.PTR, rt.I64, rt.INT, rt.PTR, rt.INT, rt.FLOAT, rt.FLOAT, rt.FLOAT)
ROUTE_TYPES = (rt.PTR, rt.INT, rt.PTR, rt.INT, rt.INT, rt.PTR, rt.PTR, rt.PTR, rt.PTR)
ROUTE_COUNT_TYPES = (rt.PTR, rt.INT, rt.PTR, rt.INT, rt.INT, rt.PTR)
ROUTE_PLACE_TYPES = (rt.PTR, rt.INT, rt.PTR, rt.INT, rt.INT, rt.PTR, rt.PTR, rt.PTR, rt.PTR, rt.PTR)
UNPERMUTE_TYPES = (rt.PTR, rt.I64, rt.PTR, rt.INT, rt.PTR, rt.INT, rt.PTR, rt.I64, rt.INT, rt.INT, rt.PTR, rt.INT)

_loaded: dict[tuple, rt.LoadedKernel] = {}


def route_specs(ids_64bit: bool, arch: str) -> tuple[KernelSpec, KernelSpec, KernelSpec]:
    """The routing's kernels: one CTA for all pairs; and, for more than ROUTE_ONE_CTA pairs, the count
    per range of ROUTE_CHUNK pairs and the placing of each range."""
    ids = "true" if ids_64bit else "false"
    return tuple(instance_spec(KERNEL, arch, ids, name=f"sm90_fp8_moe_route{part}")
                 for part in ("", "_count", "_place"))


def route_ranges(pairs: int) -> int:
    """CTAs of the split routing for `pairs` pairs (0: one CTA routes them all)."""
    return 0 if pairs <= ROUTE_ONE_CTA else -(-pairs // ROUTE_CHUNK)


def permute_spec(input_fp8: bool, arch: str) -> KernelSpec:
    return instance_spec(KERNEL, arch, "true" if input_fp8 else "false", name="sm90_fp8_moe_permute")


def gated_act_spec(activation: str, arch: str) -> KernelSpec:
    return instance_spec(KERNEL, arch, ACTIVATION_KINDS[activation], name="sm90_fp8_moe_gated_act")


def unpermute_spec(arch: str) -> KernelSpec:
    return instance_spec(KERNEL, arch, name="sm90_fp8_moe_unpermute")


def load(kernel_spec: KernelSpec, device_index: int, cache: KernelCache | None = None) -> rt.LoadedKernel:
    routing = "moe_route" in kernel_spec.name_expr
    return rt.load_once(_loaded, (device_index, kernel_spec), kernel_spec, ROUTE_THREADS if routing else THREADS,
                        ROUTE_SMEM if routing else 0, cache=cache)


def _grid(kernel, ctas: int, num_sms: int) -> int:
    """`ctas` CTAs, at most as many as are resident at once (the grid strides over the rest).

    NOTES: the row kernels hold 40-51 registers per thread, so 4-6 of their 256-thread CTAs fit an
    SM: a grid of 8 per SM ran its last 2-3 per SM alone, a second wave at low occupancy."""
    return max(1, min(ctas, num_sms * min(CTAS_PER_SM, kernel.resident_per_sm)))


def _warp_grid(kernel, rows: int, cols: int, groups_per_item: int, num_sms: int) -> int:
    """CTAs for one warp per work item (a row's groups_per_item groups of 128 columns)."""
    items = rows * -(-(cols // GROUP) // groups_per_item)
    return _grid(kernel, -(-items // (THREADS // 32)), num_sms)


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


class Launch:
    """One kernel launch with its arguments packed once (the tensors are kept alive with it)."""

    __slots__ = ("kernel", "grid", "args", "tensors")

    def __init__(self, kernel: rt.LoadedKernel, grid: int, values: tuple, types: tuple, tensors: tuple):
        self.kernel, self.grid, self.tensors = kernel, grid, tensors
        self.args = kernel.pack(values, types)

    def __call__(self, stream: int) -> None:
        self.kernel.launch(self.grid, stream, self.args)


class Launches:
    """Launches run one after another on a stream."""

    __slots__ = ("launches",)

    def __init__(self, *launches: Launch):
        self.launches = launches

    def __call__(self, stream: int) -> None:
        for launch in self.launches:
            launch(stream)


def route(kernels, ids, expert_map, global_experts: int, experts: int, counts, live, order, inv,
          range_counts) -> Launches:
    """counts (E + 1), live, order and inv of the (token, slot) pairs of ids (M, topk). `kernels`: the
    loaded route_specs; range_counts: int32, at least route_ranges(pairs) x (E + 1) (split routing)."""
    pairs = ids.numel()
    head = (ids.data_ptr(), pairs, _ptr(expert_map), global_experts, experts)
    ranges = route_ranges(pairs)
    if ranges == 0:
        values = (*head, counts.data_ptr(), live.data_ptr(), order.data_ptr(), inv.data_ptr())
        return Launches(Launch(kernels[0], 1, values, ROUTE_TYPES, (ids, expert_map, counts, live, order, inv)))
    if range_counts.numel() < ranges * (experts + 1):
        raise ValueError(f"range_counts holds {range_counts.numel()} ints; {ranges} x {experts + 1} needed")
    tensors = (ids, expert_map, range_counts, counts, live, order, inv)
    return Launches(Launch(kernels[1], ranges, (*head, range_counts.data_ptr()), ROUTE_COUNT_TYPES, tensors),
                    Launch(kernels[2], ranges, (*head, range_counts.data_ptr(), counts.data_ptr(), live.data_ptr(),
                                                order.data_ptr(), inv.data_ptr()), ROUTE_PLACE_TYPES, tensors))


def permute(kernel, x, x_scale, order, topk, weights, weight_input: bool, a, a_scale, live, num_sms) -> Launch:
    """a[r], a_scale[r] = the FP8 row (and scales) of pair order[r] for r < *live (every row of a
    when live is None); x bf16 (quantised here) or FP8 with x_scale; times the pair's weight when
    weight_input."""
    rows, k = a.shape
    values = (x.data_ptr(), x.stride(0), _ptr(x_scale), 0 if x_scale is None else x_scale.stride(0), order.data_ptr(),
              topk, weights.data_ptr(), int(weight_input), a.data_ptr(), a.stride(0), a_scale.data_ptr(),
              a_scale.stride(0), rows, _ptr(live), k)
    groups_per_item = PERMUTE_GROUPS_PER_ITEM[x_scale is not None]
    return Launch(kernel, _warp_grid(kernel, rows, k, groups_per_item, num_sms), values, PERMUTE_TYPES,
                  (x, x_scale, order, weights, a, a_scale, live))


def gated_act(kernel, h, q, q_scale, live, alpha: float, beta: float, limit: float | None, num_sms: int) -> Launch:
    """q, q_scale = act(h[:, :n], h[:, n:]) quantised 1x128, for the rows r < *live (a warp per
    group of 128 columns)."""
    rows, n = q.shape
    values = (h.data_ptr(), h.stride(0), q.data_ptr(), q.stride(0), q_scale.data_ptr(), q_scale.stride(0), rows,
              live.data_ptr(), n, alpha, beta, math.inf if limit is None else limit)
    return Launch(kernel, _warp_grid(kernel, rows, n, 1, num_sms), values, ACT_TYPES,
                  (h, q, q_scale, live))


def unpermute(kernel, y, inv, topk, weights, weight_output: bool, out, live, num_sms) -> Launch:
    """out[m] = sum_j w[m, j] * y[inv[m * topk + j]] over the pairs at packed rows < *live."""
    tokens, k = out.shape
    values = (y.data_ptr(), y.stride(0), inv.data_ptr(), topk, weights.data_ptr(), int(weight_output),
              out.data_ptr(), out.stride(0), tokens, y.shape[0], live.data_ptr(), k)
    return Launch(kernel, _grid(kernel, tokens, num_sms), values, UNPERMUTE_TYPES,
                  (y, inv, weights, out, live))
