"""Expert parallelism: a MoE layer whose experts are split over the ranks of a torch.distributed group.

    route     the destination rank of every (token, slot) pair: the owner of its expert
    dispatch  each pair's row (hidden row, its scales, the expert id) to that rank: one all_to_all_single
    experts   the received rows through this rank's experts (default: fused_moe, topk 1, expert_map)
    combine   the outputs back with one all_to_all_single; out[m] = sum_j w[m, j] * y[m, j], in slot order

Every step but the two exchanges (and the counts exchange of the throughput mode) is a pure torch
function of its arguments, on any device, so a CPU process group (gloo) runs the same code as NCCL.

NOTES:
1. A row per pair, not per (token, rank): the owning rank returns each pair's bf16 output and the
   token's rank sums them in slot order in fp32, as fused_moe's unpermute does, so the layer equals
   the single-GPU fused_moe of the same experts. Partial sums per rank would be rounded to bf16
   twice. The price: a token with two experts on one rank travels twice.
2. throughput: buffers hold exactly the pairs sent. all_to_all_single takes its split sizes as host
   ints, so each call reads the exchanged counts on the host once (one synchronisation); the ids
   are checked at the same point, on every rank at once.
3. low_latency: every rank sends `max_pairs_per_peer` rows to every rank, whether used or not, from
   buffers allocated at construction; a row carries its expert id and -1 marks an empty one, so
   there is no counts exchange, no host synchronisation, no data-dependent shape: a CUDA graph
   can capture the call. The whole buffer moves every call: size it to the decode batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from mategemm import api, validate

MODES = ("throughput", "low_latency")
INPUT_DTYPES = (torch.bfloat16, torch.float8_e4m3fn)
OUT_DTYPES = (torch.bfloat16, torch.float32, torch.float64)
ROW_ALIGN = 16  # bytes: a received row is a TMA operand of the experts' GEMMs


# ---- expert placement --------------------------------------------------------------------------
def even_expert_ranges(num_experts: int, world_size: int) -> tuple[tuple[int, int], ...]:
    """Rank r owns experts [r * E / W, (r + 1) * E / W). Raises ValueError unless W divides E."""
    if num_experts % world_size:
        raise ValueError(f"num_experts {num_experts} is not divisible by the group's {world_size} ranks; pass "
                         f"expert_ranges")
    per_rank = num_experts // world_size
    return tuple((r * per_rank, (r + 1) * per_rank) for r in range(world_size))


def expert_owners(expert_ranges, num_experts: int, device) -> torch.Tensor:
    """int64 (num_experts,): the rank owning each expert."""
    owners = torch.empty(num_experts, dtype=torch.int64)
    for rank, (start, stop) in enumerate(expert_ranges):
        owners[start:stop] = rank
    return owners.to(device)


def local_expert_map(expert_range: tuple[int, int], num_experts: int, device) -> torch.Tensor:
    """int32 (num_experts,): an expert's index among this rank's experts, -1 for another rank's
    (fused_moe's expert_map)."""
    start, stop = expert_range
    expert_map = torch.full((num_experts,), -1, dtype=torch.int32)
    expert_map[start:stop] = torch.arange(stop - start, dtype=torch.int32)
    return expert_map.to(device)


# ---- route -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    """Where the P = M x topk (token, slot) pairs of one rank go, in pair order p = m * topk + j."""

    dest: torch.Tensor          # int64 (P,): the rank owning the pair's expert; W when its id is out of range
    counts: torch.Tensor        # int64 (W + 1,): pairs per destination rank, then the pairs out of range
    rank_in_dest: torch.Tensor  # int64 (P,): the pair's index among the pairs of its destination


def route_pairs(topk_ids: torch.Tensor, owners: torch.Tensor, world_size: int) -> Route:
    """The Route of topk_ids (M, topk) int given each expert's owner (G,) int64 (on ids' device).
    No host synchronisation."""
    ids = topk_ids.reshape(-1).long()
    num_experts = owners.numel()
    in_range = (ids >= 0) & (ids < num_experts)
    dest = torch.where(in_range, owners.index_select(0, ids.clamp(0, num_experts - 1)), world_size)
    # bincount would read its maximum on the host; a scatter-add does not
    counts = torch.zeros(world_size + 1, dtype=torch.int64, device=ids.device)
    counts.scatter_add_(0, dest, torch.ones_like(dest))
    order = torch.argsort(dest, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    sorted_rank = torch.arange(ids.numel(), device=ids.device) - starts.index_select(0, dest.index_select(0, order))
    return Route(dest, counts, torch.empty_like(dest).index_copy_(0, order, sorted_rank))


def packed_rows(route: Route) -> torch.Tensor:
    """int64 (P,): each pair's row in a send buffer packed by destination rank (rank 0's pairs first,
    each rank's in pair order); -1 for a pair whose id is out of range."""
    world_size = route.counts.numel() - 1
    starts = torch.cumsum(route.counts, 0) - route.counts
    return torch.where(route.dest < world_size, starts.index_select(0, route.dest) + route.rank_in_dest, -1)


def fixed_rows(route: Route, capacity: int) -> torch.Tensor:
    """int64 (P,): each pair's row in a send buffer of `capacity` rows per destination rank; -1 for
    a pair whose id is out of range or that comes after the first `capacity` pairs of its rank."""
    world_size = route.counts.numel() - 1
    sent = (route.dest < world_size) & (route.rank_in_dest < capacity)
    return torch.where(sent, route.dest * capacity + route.rank_in_dest, -1)


# ---- dispatch ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RowLayout:
    """One dispatched pair as a row of bytes: the hidden row (bf16, or FP8 followed by its fp32
    scales per 128 columns), then the int32 expert id, padded to ROW_ALIGN bytes. Every rank of a
    layer uses the same layout; rows travel as uint8, whatever the backend supports."""

    hidden: int
    dtype: torch.dtype

    @property
    def hidden_bytes(self) -> int:
        return self.hidden * self.dtype.itemsize

    @property
    def scale_bytes(self) -> int:
        return self.hidden // 128 * 4 if self.dtype == torch.float8_e4m3fn else 0

    @property
    def id_offset(self) -> int:
        return self.hidden_bytes + self.scale_bytes

    @property
    def row_bytes(self) -> int:
        return -(-(self.id_offset + 4) // ROW_ALIGN) * ROW_ALIGN

    def expert_ids(self, rows: torch.Tensor) -> torch.Tensor:
        """int32 (R,) view of the expert ids of rows (R, row_bytes)."""
        return rows.narrow(1, self.id_offset, 4).view(torch.int32).view(-1)

    def unpack(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Views of rows (R, row_bytes): hidden (R, K), scales (R, K/128) fp32 or None, expert ids (R,)."""
        hidden = rows.narrow(1, 0, self.hidden_bytes).view(self.dtype)
        scale = rows.narrow(1, self.hidden_bytes, self.scale_bytes).view(torch.float32) if self.scale_bytes else None
        return hidden, scale, self.expert_ids(rows)


def pack_pairs(layout: RowLayout, send: torch.Tensor, rows: torch.Tensor, hidden_states: torch.Tensor,
               hidden_states_scale: torch.Tensor | None, topk_ids: torch.Tensor) -> None:
    """Write pair p (token p // topk) into row rows[p] of send (R + 1, row_bytes) uint8. Pairs with row
    -1 land in the last row, which is never sent; every row that no pair writes gets expert id -1."""
    tokens, topk = topk_ids.shape
    token_rows = send.new_empty((tokens, layout.row_bytes))
    token_rows.narrow(1, 0, layout.hidden_bytes).copy_(hidden_states.view(torch.uint8))
    if layout.scale_bytes:
        token_rows.narrow(1, layout.hidden_bytes, layout.scale_bytes).copy_(hidden_states_scale.view(torch.uint8))
    token_of_pair = torch.arange(tokens * topk, device=send.device) // topk
    pair_rows = token_rows.index_select(0, token_of_pair)
    layout.expert_ids(pair_rows).copy_(topk_ids.reshape(-1))
    layout.expert_ids(send).fill_(-1)
    send.index_copy_(0, torch.where(rows >= 0, rows, send.shape[0] - 1), pair_rows)


def all_to_all(output: torch.Tensor, input: torch.Tensor, output_splits: list[int] | None,
               input_splits: list[int] | None, group) -> None:
    """dist.all_to_all_single along dim 0 (split sizes in rows; None: equal parts); a copy when there
    is no process group (a single rank)."""
    if group is None:
        output.copy_(input)
    else:
        dist.all_to_all_single(output, input, output_splits, input_splits, group=group)


def exchange_counts(sent: torch.Tensor, group) -> torch.Tensor:
    """sent (W, C) int64, row r for rank r -> (W, C): row s is what rank s sent to this rank. Stays on
    the tensors' device."""
    received = torch.empty_like(sent)
    all_to_all(received, sent.contiguous(), None, None, group)
    return received


# ---- combine -----------------------------------------------------------------------------------
def combine(returned: torch.Tensor, rows: torch.Tensor, topk_weights: torch.Tensor, out_dtype: torch.dtype,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """out (M, K) = sum over slots j = 0, 1, ... of topk_weights[m, j] * returned[rows[m * topk + j]],
    added in that order in fp32 (fp64 for a float64 out) and rounded to out_dtype once; a pair with
    row -1 adds nothing. returned (R, K) is what the experts gave back for the rows sent."""
    tokens, topk = topk_weights.shape
    hidden = returned.shape[1]
    acc_dtype = torch.float64 if out_dtype == torch.float64 else torch.float32
    acc = torch.zeros((tokens, hidden), dtype=acc_dtype, device=returned.device)
    if returned.shape[0]:
        rows = rows.view(tokens, topk)
        y = returned.index_select(0, rows.clamp(min=0).reshape(-1)).view(tokens, topk, hidden).to(acc_dtype)
        y = torch.where((rows >= 0)[:, :, None], y, 0)  # a dropped pair's row may hold anything, NaN too
        weights = topk_weights.to(acc_dtype)
        for j in range(topk):  # a fixed order: the result does not depend on a reduction's schedule
            acc.addcmul_(y[:, j], weights[:, j, None])
    if out is None:
        return acc.to(out_dtype)
    return out.copy_(acc)


# ---- experts -----------------------------------------------------------------------------------
class FusedExperts:
    """The default expert function: mategemm.fused_moe on the received rows, each row a token with
    topk 1, weight 1 and its global expert id, the expert_map keeping this rank's experts. A row's
    output is its expert's bf16 output, unweighted; a row with id -1 gives zeros."""

    def __init__(self, w1, w2, w1_scale, w2_scale, expert_map: torch.Tensor, activation: str, gemm1_alpha,
                 gemm1_beta, gemm1_clamp_limit):
        self.weights = (w1, w2, w1_scale, w2_scale)
        self.expert_map = expert_map
        self.options = dict(activation=activation, gemm1_alpha=gemm1_alpha, gemm1_beta=gemm1_beta,
                            gemm1_clamp_limit=gemm1_clamp_limit)
        self._ones = torch.ones((0, 1), dtype=torch.float32, device=w1.device)
        # A CUDA graph captured with a smaller buffer keeps its address: outgrown buffers stay alive.
        self._outgrown: list[torch.Tensor] = []

    def __call__(self, hidden_states, hidden_states_scale, expert_ids):
        rows = expert_ids.shape[0]
        if self._ones.shape[0] < rows:
            self._outgrown.append(self._ones)
            self._ones = torch.ones((1 << (rows - 1).bit_length(), 1), dtype=torch.float32, device=expert_ids.device)
        return api.fused_moe(hidden_states, *self.weights, self._ones.narrow(0, 0, rows), expert_ids.view(rows, 1),
                             expert_map=self.expert_map, global_num_experts=self.expert_map.numel(),
                             hidden_states_scale=hidden_states_scale, **self.options)


# ---- the layer ---------------------------------------------------------------------------------
def _group(group):
    """(the process group or None for a single process, rank, world size)."""
    if group is None:
        if not (dist.is_available() and dist.is_initialized()):
            return None, 0, 1
        group = dist.group.WORLD
    elif not (dist.is_available() and isinstance(group, dist.ProcessGroup)):
        raise TypeError(f"group must be a torch.distributed ProcessGroup or None, got {type(group).__name__}")
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("group: this process is not one of its ranks")
    return group, rank, dist.get_world_size(group)


def _int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def _expert_ranges(expert_ranges, num_experts: int, world_size: int) -> tuple[tuple[int, int], ...]:
    if expert_ranges is None:
        return even_expert_ranges(num_experts, world_size)
    try:
        ranges = tuple((start, stop) for start, stop in expert_ranges)
    except (TypeError, ValueError):
        raise TypeError(f"expert_ranges must be a sequence of (start, stop) pairs, got {expert_ranges!r}") from None
    if len(ranges) != world_size:
        raise ValueError(f"expert_ranges must hold one (start, stop) per rank of the group ({world_size}), got "
                         f"{len(ranges)}")
    owned = [0] * num_experts
    for rank, (start, stop) in enumerate(ranges):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, stop)):
            raise TypeError(f"expert_ranges[{rank}] must be two ints, got {(start, stop)!r}")
        if not 0 <= start < stop <= num_experts:
            raise ValueError(f"expert_ranges[{rank}] must satisfy 0 <= start < stop <= num_experts = {num_experts}, "
                             f"got {(start, stop)}")
        for e in range(start, stop):
            owned[e] += 1
    if owned != [1] * num_experts:
        raise ValueError(f"expert_ranges must give every expert in [0, {num_experts}) to exactly one rank, got "
                         f"{ranges}")
    return ranges


class EPMoE:
    """A MoE layer's routed experts spread over the ranks of a process group (expert parallelism).

    Every rank builds one with its own experts' weights and the same settings, then each forward
    call takes that rank's tokens (any number per rank, zero included) and returns their outputs:
    out (M, K) = sum over each token's top-k experts e of topk_weights x w2[e] . act(w1[e] . x), as
    mategemm.fused_moe computes it on one GPU holding every expert.

    w1 (E_local, 2N, K), w2 (E_local, K, N) FP8 e4m3 with w1_scale (E_local, 2N/128, K/128) and
    w2_scale (E_local, K/128, N/128) fp32: this rank's experts, in expert order. num_experts: G, the
    experts of the whole layer. topk: experts per token. group: a torch.distributed ProcessGroup;
    None: the default group, or a single process when torch.distributed is not initialised.
    expert_ranges: one (start, stop) per rank of the group, the same on every rank, tiling [0, G);
    None: the contiguous even split (G divisible by the group size). Rank r's weights are experts
    [start_r, stop_r).
    mode "throughput": buffers sized per call to the pairs exchanged; one host synchronisation per
    call reads the exchanged counts. "low_latency": max_tokens_per_rank (the most tokens a rank
    passes to one call) sizes fixed buffers of max_pairs_per_peer rows for each pair of ranks
    (default max_tokens_per_rank x topk, which never overflows); no host synchronisation and fixed
    shapes, so a CUDA graph can capture a call after a first (warm-up) call.
    input_dtype: hidden_states' dtype, bf16 (sent as bf16, quantised 1x128 by the experts) or FP8
    e4m3 with hidden_states_scale (half the bytes). out_dtype: bf16 (fused_moe's), fp32 or fp64.
    activation, gemm1_alpha, gemm1_beta, gemm1_clamp_limit: as mategemm.fused_moe.
    experts: the function running this rank's experts, (hidden_states (R, K), hidden_states_scale
    (R, K/128) or None, expert_ids (R,) int32 global ids, -1 for an empty row) -> (R, K) floating
    tensor, row r the unweighted output of row r's expert (empty rows: any value). None: FusedExperts
    (fused_moe, CUDA weights). mategemm.testing.moe_layer.reference_experts runs in float64 anywhere.
    The activation options configure the default experts only.

    Raises TypeError/ValueError naming the argument before any communication (the other ranks then
    wait in their next collective, as in any torch.distributed program). Constructing is
    collective: the ranks compare their settings and all raise ValueError if they differ.
    The tensors live on w1's device; NCCL needs CUDA tensors, gloo CPU ones. dropped_pairs: an
    int64 device scalar, the pairs the last low_latency call could not send (see forward).
    """

    def __init__(self, w1, w2, w1_scale, w2_scale, *, num_experts: int, topk: int, group=None, expert_ranges=None,
                 mode: str = "throughput", max_tokens_per_rank: int | None = None,
                 max_pairs_per_peer: int | None = None, input_dtype: torch.dtype = torch.bfloat16,
                 out_dtype: torch.dtype = torch.bfloat16, activation: str = "silu", gemm1_alpha=None, gemm1_beta=None,
                 gemm1_clamp_limit=None, experts=None):
        self.group, self.rank, self.world_size = _group(group)
        self.num_experts = _int("num_experts", num_experts, 1)
        self.topk = _int("topk", topk, 1)
        self.expert_ranges = _expert_ranges(expert_ranges, num_experts, self.world_size)
        self.expert_range = self.expert_ranges[self.rank]
        local_experts, _ = validate.moe_weights(w1, w2, w1_scale, w2_scale)
        start, stop = self.expert_range
        if local_experts != stop - start:
            raise ValueError(f"w1 holds {local_experts} experts; rank {self.rank} owns experts [{start}, {stop}): "
                             f"{stop - start}")
        self.device = w1.device
        validate.same_device("w1", self.device, w2=w2, w1_scale=w1_scale, w2_scale=w2_scale)
        self.mode = validate.choice("mode", mode, MODES, "throughput")
        if self.mode == "low_latency":
            if max_tokens_per_rank is None:
                raise ValueError("mode 'low_latency' needs max_tokens_per_rank (it sizes the fixed buffers)")
            self.max_tokens_per_rank = _int("max_tokens_per_rank", max_tokens_per_rank, 1)
            most = self.max_tokens_per_rank * self.topk
            self.capacity = most if max_pairs_per_peer is None else _int("max_pairs_per_peer", max_pairs_per_peer, 1)
            if self.capacity > most:
                raise ValueError(f"max_pairs_per_peer must be at most max_tokens_per_rank x topk = {most}, got "
                                 f"{self.capacity}")
        elif max_tokens_per_rank is not None or max_pairs_per_peer is not None:
            raise ValueError("max_tokens_per_rank and max_pairs_per_peer size the buffers of mode 'low_latency' only")
        if input_dtype not in INPUT_DTYPES:
            raise TypeError(f"input_dtype must be one of {INPUT_DTYPES}, got {input_dtype}")
        if out_dtype not in OUT_DTYPES:
            raise TypeError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
        self.out_dtype = out_dtype
        self.layout = RowLayout(w1.shape[2], input_dtype)
        self.owners = expert_owners(self.expert_ranges, num_experts, self.device)
        self.expert_map = local_expert_map(self.expert_range, num_experts, self.device)
        activation = validate.moe_activation(activation, gemm1_alpha, gemm1_beta, gemm1_clamp_limit)
        if experts is None:
            if self.device.type != "cuda":
                raise ValueError(f"w1 is on {self.device}: the default experts run mategemm.fused_moe on a CUDA "
                                 f"device; pass experts= to run elsewhere")
            experts = FusedExperts(w1, w2, w1_scale, w2_scale, self.expert_map, activation, gemm1_alpha, gemm1_beta,
                                   gemm1_clamp_limit)
        elif not callable(experts):
            raise TypeError(f"experts must be callable, got {type(experts).__name__}")
        elif (activation, gemm1_alpha, gemm1_beta, gemm1_clamp_limit) != ("silu", None, None, None):
            raise ValueError("activation, gemm1_alpha, gemm1_beta and gemm1_clamp_limit configure the default "
                             "experts; pass them to the experts function instead")
        self.experts = experts
        if self.group is not None and "nccl" in str(dist.get_backend(self.group)) and self.device.type != "cuda":
            raise ValueError(f"w1 is on {self.device}: an NCCL group moves CUDA tensors only (use a gloo group for CPU "
                             f"tensors)")
        self._agree()
        # pairs of the last low_latency call that were not sent: ids out of range, or past a peer's capacity
        self.dropped_pairs = torch.zeros((), dtype=torch.int64, device=self.device)
        if self.mode == "low_latency":
            rows = self.world_size * self.capacity
            self.send = torch.zeros((rows + 1, self.layout.row_bytes), dtype=torch.uint8, device=self.device)
            self.received = torch.zeros((rows, self.layout.row_bytes), dtype=torch.uint8, device=self.device)

    def _agree(self) -> None:
        """Every rank's settings must match: they fix the rows' layout and the buffers' sizes."""
        if self.group is None:
            return
        names = ("num_experts", "hidden", "input dtype", "mode", "max_pairs_per_peer", "expert_ranges")
        mine = [self.num_experts, self.layout.hidden, INPUT_DTYPES.index(self.layout.dtype), MODES.index(self.mode),
                getattr(self, "capacity", 0)] + [v for pair in self.expert_ranges for v in pair]
        local = torch.tensor(mine, dtype=torch.int64, device=self.device)
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local, group=self.group)
        for rank, theirs in enumerate(t.tolist() for t in gathered):
            if theirs != mine:
                which = next(i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b)
                name = names[min(which, len(names) - 1)]
                raise ValueError(f"EPMoE settings differ between ranks: {name} of rank {rank} differs from rank "
                                 f"{self.rank}'s ({theirs} vs {mine})")

    def _check_call(self, hidden_states, topk_weights, topk_ids, hidden_states_scale, out) -> int:
        validate.tensor("hidden_states", hidden_states, ndim=2, dtypes=(self.layout.dtype,))
        tokens, hidden = hidden_states.shape
        if hidden != self.layout.hidden:
            raise ValueError(f"hidden_states must be (M, {self.layout.hidden}) (w1's K), got {tuple(hidden_states.shape)}")
        if hidden_states.stride(1) != 1:
            raise ValueError("hidden_states must be contiguous along its last dimension")
        if self.layout.scale_bytes:
            if hidden_states_scale is None:
                raise ValueError("FP8 hidden_states need hidden_states_scale (M, K/128) fp32")
            validate.tensor("hidden_states_scale", hidden_states_scale, ndim=2, dtypes=(torch.float32,))
            validate.shape("hidden_states_scale", hidden_states_scale, (tokens, hidden // 128),
                           "one scale per token and 128 columns")
            if hidden_states_scale.stride(1) != 1:
                raise ValueError("hidden_states_scale must be contiguous along its last dimension")
        elif hidden_states_scale is not None:
            raise ValueError("hidden_states_scale goes with input_dtype torch.float8_e4m3fn only")
        validate.tensor("topk_ids", topk_ids, ndim=2, dtypes=(torch.int32, torch.int64))
        validate.shape("topk_ids", topk_ids, (tokens, self.topk), "(M, topk)")
        validate.tensor("topk_weights", topk_weights, ndim=2, dtypes=(torch.float32,))
        validate.shape("topk_weights", topk_weights, (tokens, self.topk), "(M, topk)")
        if out is not None:
            validate.tensor("out", out, ndim=2, dtypes=(self.out_dtype,))
            validate.shape("out", out, (tokens, hidden))
        validate.same_device("the layer's weights", self.device, hidden_states=hidden_states,
                             hidden_states_scale=hidden_states_scale, topk_ids=topk_ids, topk_weights=topk_weights,
                             out=out)
        if self.mode == "low_latency" and tokens > self.max_tokens_per_rank:
            raise ValueError(f"hidden_states has {tokens} tokens; the low_latency buffers hold max_tokens_per_rank = "
                             f"{self.max_tokens_per_rank} per rank: split the batch or build the layer larger")
        return tokens

    def forward(self, hidden_states, topk_weights, topk_ids, hidden_states_scale=None, out=None) -> torch.Tensor:
        """This rank's tokens through the layer: (M, K) out_dtype (written into `out` when given).

        hidden_states (M, K) of input_dtype (FP8: with hidden_states_scale (M, K/128) fp32),
        topk_weights (M, topk) fp32, topk_ids (M, topk) int32/int64 global expert ids. Collective:
        every rank of the group calls it, M may differ per rank and be 0.
        throughput: an id outside [0, num_experts) on any rank raises ValueError on every rank, after
        the counts exchange and before any token moves. low_latency: such a pair, and a pair past
        max_pairs_per_peer for its rank, is dropped (adds nothing) and counted in dropped_pairs.
        """
        self._check_call(hidden_states, topk_weights, topk_ids, hidden_states_scale, out)
        route = route_pairs(topk_ids, self.owners, self.world_size)
        if self.mode == "low_latency":
            rows = fixed_rows(route, self.capacity)
            pack_pairs(self.layout, self.send, rows, hidden_states, hidden_states_scale, topk_ids)
            sent = self.send.narrow(0, 0, self.received.shape[0])
            all_to_all(self.received, sent, None, None, self.group)
            received, sent_splits, received_splits = self.received, None, None
            self.dropped_pairs.copy_((rows < 0).sum())
        else:
            sent_splits, received_splits = self._split_sizes(route)
            rows = packed_rows(route)
            send = torch.empty((sum(sent_splits) + 1, self.layout.row_bytes), dtype=torch.uint8, device=self.device)
            pack_pairs(self.layout, send, rows, hidden_states, hidden_states_scale, topk_ids)
            sent = send.narrow(0, 0, sum(sent_splits))
            received = send.new_empty((sum(received_splits), self.layout.row_bytes))
            all_to_all(received, sent, received_splits, sent_splits, self.group)
        x, x_scale, expert_ids = self.layout.unpack(received)
        y = self._run_experts(x, x_scale, expert_ids.contiguous())
        returned = y.new_empty((sent.shape[0], y.shape[1]))  # row r: the output for send row r
        all_to_all(returned.view(torch.uint8), y.view(torch.uint8), sent_splits, received_splits, self.group)
        return combine(returned, rows, topk_weights, self.out_dtype, out)

    __call__ = forward

    def _split_sizes(self, route: Route) -> tuple[list[int], list[int]]:
        """(rows to each rank, rows from each rank) on the host: the throughput mode's one host
        synchronisation, which also tells every rank whether any rank has ids out of range."""
        w = self.world_size
        sent = torch.stack([route.counts[:w], route.counts[w:].expand(w)], dim=1)
        received = exchange_counts(sent, self.group)
        host = torch.cat([sent, received]).tolist()
        out_of_range = {rank: row[1] for rank, row in enumerate(host[w:]) if row[1]}
        if out_of_range:
            raise ValueError(f"topk_ids must be in [0, {self.num_experts}): ids outside it (rank: count) "
                             f"{out_of_range}; every rank raised before moving any token")
        return [row[0] for row in host[:w]], [row[0] for row in host[w:]]

    def _run_experts(self, x, x_scale, expert_ids) -> torch.Tensor:
        y = self.experts(x, x_scale, expert_ids)
        rows, hidden = x.shape
        if not isinstance(y, torch.Tensor) or not y.is_floating_point() or tuple(y.shape) != (rows, hidden):
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"experts must return a floating ({rows}, {hidden}) tensor, got {got}")
        if y.device != self.device:
            raise ValueError(f"experts returned a tensor on {y.device}, expected {self.device}")
        return y.contiguous()
