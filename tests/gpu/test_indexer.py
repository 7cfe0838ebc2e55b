"""The lightning indexer on the GPU against the float64 references of mategemm.testing.indexer.

Logits start poisoned (NaN): positions a call must leave alone are checked to still be NaN. Logits
are float32 or bfloat16 (the kernel rounds), each within its tolerance of the reference.
"""
import pytest
import torch

import mategemm
from mategemm import indexer, validate
from mategemm.quant import paged_kv_cache_split
from mategemm.testing import indexer as ref
from mategemm.testing.numerics import TOLERANCE, calc_diff

F32, BF16 = torch.float32, torch.bfloat16
DTYPES = pytest.mark.parametrize("logits_dtype", (F32, BF16), ids=("f32", "bf16"))


def check(got: torch.Tensor, want: torch.Tensor, clean: bool, what: str) -> None:
    """Visible positions match (the tolerance of got's dtype); invisible ones are -inf (clean) or
    still the NaN poison."""
    visible = torch.isfinite(want)
    assert torch.isfinite(got[visible]).all(), f"{what}: a visible position is not finite"
    if visible.any():
        diff = calc_diff(got[visible].double(), want[visible].double())
        tol = TOLERANCE[("mqa_logits", got.dtype)]
        assert diff <= tol, f"{what}: calc_diff {diff:.2e} > {tol:.0e}"
    hidden = got[~visible]
    if clean:
        assert (hidden == float("-inf")).all(), f"{what}: an invisible position is not -inf"
    else:
        assert torch.isnan(hidden).all(), f"{what}: an invisible position was written"


def run_paged(case: dict, clean: bool, num_mps: int = 0, logits_dtype: torch.dtype = F32) -> torch.Tensor:
    meta = mategemm.get_paged_mqa_logits_metadata(case["context_lens"], 64, num_mps)
    rows = case["q"].shape[0] * case["q"].shape[1]
    logits = torch.full((rows, case["max_context_len"]), float("nan"), dtype=logits_dtype, device="cuda")
    args = (case["q"], case["fused_kv_cache"], case["weights"], case["context_lens"], case["block_table"], meta)
    validate.paged_mqa_logits(*args, case["max_context_len"], clean, logits_dtype)
    return indexer._paged_into(logits, *args, clean)


def paged_want(case: dict, clean: bool) -> torch.Tensor:
    return ref.paged_reference(case["q"], case["fused_kv_cache"], case["weights"], case["context_lens"],
                               case["block_table"], case["max_context_len"], clean_logits=clean)


@pytest.mark.parametrize("next_n,heads", [(1, 32), (1, 64), (2, 32), (2, 64), (3, 32), (3, 64), (4, 32), (4, 64)])
@pytest.mark.parametrize("two_d", (False, True))
@pytest.mark.parametrize("clean", (True, False))
@DTYPES
def test_paged_logits(next_n, heads, two_d, clean, logits_dtype):
    gen = torch.Generator(device="cuda").manual_seed(next_n * 100 + heads + two_d)
    lens = [1 + next_n, 63, 64, 65, 200, 1000, 777]
    if two_d:
        lens = [[max(n - (next_n - 1 - j) * 7, 0) for j in range(next_n)] for n in lens]
    case = ref.make_paged_case(len(lens), next_n, heads, lens, shared_prefix_blocks=2, generator=gen, device="cuda")
    got = run_paged(case, clean, logits_dtype=logits_dtype)
    assert got.dtype == logits_dtype
    check(got, paged_want(case, clean), clean, f"paged next_n={next_n} heads={heads} 2d={two_d} {logits_dtype}")


@pytest.mark.parametrize("next_n,heads", [(1, 64), (2, 64), (2, 32), (4, 32)])
def test_paged_logits_negative_and_zero_key_scales(next_n, heads):
    """relu(q.k * s) where some keys' scales are negative or zero (the slow head-sum path)."""
    gen = torch.Generator(device="cuda").manual_seed(next_n + heads)
    case = ref.make_paged_case(3, next_n, heads, [500, 131, 64], generator=gen, device="cuda")
    _, scales = paged_kv_cache_split(case["fused_kv_cache"])
    scales[:, ::3] *= -1  # a view of the cache: the kernel and the reference both see these
    scales[:, 1::7] = 0.0
    for clean in (True, False):
        check(run_paged(case, clean), paged_want(case, clean), clean, f"signed scales next_n={next_n} heads={heads}")


@pytest.mark.parametrize("num_mps", (1, 7, 132, 300))
def test_paged_logits_any_split(num_mps):
    """Every SM count splits requests mid-way differently; the logits stay the same."""
    gen = torch.Generator(device="cuda").manual_seed(num_mps)
    case = ref.make_paged_case(5, 2, 64, [3000, 0, 129, 1, 4095], generator=gen, device="cuda")
    check(run_paged(case, True, num_mps), paged_want(case, True), True, f"num_mps={num_mps}")


@pytest.mark.parametrize("num_mps", (1, 3))
def test_paged_many_short_requests(num_mps):
    """Requests of one or two blocks: most math warpgroups get no block of a request and pass it by;
    none may run ahead onto a query buffer still in use (a race that corrupted logits)."""
    gen = torch.Generator(device="cuda").manual_seed(11 + num_mps)
    lens = torch.randint(1, 129, (300,), generator=torch.Generator().manual_seed(num_mps)).tolist()
    case = ref.make_paged_case(len(lens), 2, 64, lens, generator=gen, device="cuda")
    check(run_paged(case, True, num_mps), paged_want(case, True), True, f"short requests num_mps={num_mps}")


def test_paged_long_context_through_the_public_api():
    gen = torch.Generator(device="cuda").manual_seed(7)
    case = ref.make_paged_case(3, 1, 64, [70000, 65537, 123], generator=gen, device="cuda")
    meta = mategemm.get_paged_mqa_logits_metadata(case["context_lens"], 64)
    got = mategemm.fp8_paged_mqa_logits(case["q"], case["fused_kv_cache"], case["weights"], case["context_lens"],
                                        case["block_table"], meta, case["max_context_len"], True)
    check(got, paged_want(case, True), True, "long context")


def test_paged_block_table_out_of_range_reads_zeros():
    """Entries past the cache or negative: those blocks score 0, nothing faults (run under memcheck)."""
    gen = torch.Generator(device="cuda").manual_seed(3)
    case = ref.make_paged_case(2, 1, 32, [200, 200], generator=gen, device="cuda")
    want = paged_want(case, True)  # with the valid table (the reference would index out of range)
    num_blocks = case["fused_kv_cache"].shape[0]
    case["block_table"][0, 1] = num_blocks + 1000
    case["block_table"][1, 2] = -5
    got = run_paged(case, True)
    zero = torch.zeros_like(want[0, 64:128])
    assert torch.equal(got[0, 64:128], zero) and torch.equal(got[1, 128:192], zero)
    keep = torch.ones_like(want, dtype=torch.bool)
    keep[0, 64:128] = False
    keep[1, 128:192] = False
    seen = keep & torch.isfinite(want)
    assert calc_diff(got[seen].double(), want[seen].double()) <= TOLERANCE[("mqa_logits", F32)]


def run_prefill(case: dict, clean: bool, compressed: bool, logits_dtype: torch.dtype) -> tuple:
    """(got, want) of one prefill call into NaN-poisoned logits."""
    max_k = case["max_seqlen_k"] if compressed else 0
    num_cols = max_k if compressed else case["kv"][0].shape[0]
    logits = torch.full((case["q"].shape[0], num_cols), float("nan"), dtype=logits_dtype, device="cuda")
    args = (case["q"], case["kv"], case["weights"], case["ks"], case["ke"], clean, max_k)
    validate.mqa_logits(*args, logits_dtype)
    return indexer._prefill_into(logits, *args), ref.prefill_reference(*args)


@pytest.mark.parametrize("heads", (32, 64))
@pytest.mark.parametrize("head_dim", (32, 64, 128))
@pytest.mark.parametrize("causal", (False, True))
@pytest.mark.parametrize("compressed", (False, True))
@pytest.mark.parametrize("clean", (True, False))
@DTYPES
def test_prefill_logits(heads, head_dim, causal, compressed, clean, logits_dtype):
    gen = torch.Generator(device="cuda").manual_seed(heads + head_dim + 2 * causal + 4 * compressed)
    case = ref.make_prefill_case(301, 1000, heads, generator=gen, device="cuda", causal_chunks=causal,
                                 head_dim=head_dim)
    got, want = run_prefill(case, clean, compressed, logits_dtype)
    assert got.dtype == logits_dtype
    check(got, want, clean, f"prefill heads={heads} head_dim={head_dim} causal={causal} compressed={compressed} "
                            f"{logits_dtype}")


@pytest.mark.parametrize("heads", (16, 24, 128))
@pytest.mark.parametrize("head_dim", (32, 64))
def test_prefill_small_heads_at_other_tile_shapes(heads, head_dim):
    """128 // heads rows per tile: 8, 5 (120 columns: the query buffers' swizzle alignment) and 1."""
    gen = torch.Generator(device="cuda").manual_seed(heads * head_dim)
    case = ref.make_prefill_case(77, 500, heads, generator=gen, device="cuda", head_dim=head_dim)
    for logits_dtype in (F32, BF16):
        got, want = run_prefill(case, True, False, logits_dtype)
        check(got, want, True, f"prefill heads={heads} head_dim={head_dim} {logits_dtype}")


def test_prefill_public_api_and_deep_gemm_names():
    gen = torch.Generator(device="cuda").manual_seed(11)
    case = ref.make_prefill_case(64, 333, 64, generator=gen, device="cuda", causal_chunks=True)
    got = mategemm.deep_gemm.fp8_mqa_logits(case["q"], case["kv"], case["weights"], case["ks"], case["ke"])
    want = ref.prefill_reference(case["q"], case["kv"], case["weights"], case["ks"], case["ke"])
    check(got, want, True, "public prefill")
    small = ref.make_prefill_case(64, 333, 32, generator=gen, device="cuda", head_dim=64)
    args = (small["q"], small["kv"], small["weights"], small["ks"], small["ke"])
    got = mategemm.fp8_mqa_logits(*args, logits_dtype=BF16)
    assert got.dtype == BF16 and got.shape == (64, 333)
    check(got, ref.prefill_reference(*args), True, "public prefill, head_dim 64, bf16")


def visible_bits(logits: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """The logits' bytes at the visible positions (zero elsewhere: those may be left unwritten)."""
    return logits.masked_fill(~visible, 0).view(torch.uint8)


@pytest.mark.parametrize("head_dim", (32, 64, 128))
@DTYPES
def test_prefill_repeated_runs_are_bitwise_identical(head_dim, logits_dtype):
    """DeepGEMM's tests compare 20 runs bit for bit: no atomics or timing-dependent sums."""
    gen = torch.Generator(device="cuda").manual_seed(head_dim + 5)
    case = ref.make_prefill_case(512, 2048, 64, generator=gen, device="cuda", causal_chunks=True, head_dim=head_dim)
    args = (case["q"], case["kv"], case["weights"], case["ks"], case["ke"])
    for clean, max_k in ((True, 0), (False, case["max_seqlen_k"])):
        visible = torch.isfinite(ref.prefill_reference(*args, clean, max_k))
        first = visible_bits(mategemm.fp8_mqa_logits(*args, clean, max_k, logits_dtype), visible)
        for _ in range(20):
            again = visible_bits(mategemm.fp8_mqa_logits(*args, clean, max_k, logits_dtype), visible)
            assert torch.equal(again, first), f"head_dim={head_dim} clean={clean} {logits_dtype}"


@pytest.mark.parametrize("next_n", (1, 2))
@DTYPES
def test_paged_repeated_runs_are_bitwise_identical(next_n, logits_dtype):
    gen = torch.Generator(device="cuda").manual_seed(next_n + 17)
    lens = [[max(n - 9 * (next_n - 1 - j), 1) for j in range(next_n)] for n in (5000, 64, 1, 3000, 129, 777)]
    case = ref.make_paged_case(len(lens), next_n, 64, lens, shared_prefix_blocks=1, generator=gen, device="cuda")
    visible = torch.isfinite(paged_want(case, False))
    meta = mategemm.get_paged_mqa_logits_metadata(case["context_lens"], 64)
    args = (case["q"], case["fused_kv_cache"], case["weights"], case["context_lens"], case["block_table"], meta,
            case["max_context_len"], False, logits_dtype)
    first = visible_bits(mategemm.fp8_paged_mqa_logits(*args), visible)
    for _ in range(20):
        assert torch.equal(visible_bits(mategemm.fp8_paged_mqa_logits(*args), visible), first)


def test_metadata_on_the_gpu_matches_the_cpu():
    lens = torch.tensor([5000, 0, 1, 64, 65, 129], dtype=torch.int32)
    for num_mps in (1, 5, 132):
        gpu = mategemm.get_paged_mqa_logits_metadata(lens.cuda(), 64, num_mps)
        assert torch.equal(gpu.cpu(), mategemm.get_paged_mqa_logits_metadata(lens, 64, num_mps))
