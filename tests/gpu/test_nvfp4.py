"""The NVFP4 grouped GEMM on the GPU against the exact reference (mategemm.testing.nvfp4): odd, empty
and skipped groups, expert scales, M = 1, K from 32 up (odd multiples of 32), every tile config,
the active count on the host and on the GPU, a CUDA graph replayed with new routing, and the decode
itself bit for bit (one-hot rows pick single weights out of every code and scale).

Outputs start poisoned (NaN): rows that must stay untouched are checked to still be NaN."""
import pytest
import torch

import mategemm
from mategemm import quant
from mategemm.testing import TOLERANCE, calc_diff
from mategemm.testing import nvfp4 as ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
E4M3 = torch.float8_e4m3fn


def make_case(counts, n=256, k=512, experts=4, expert_ids=None, seed=0):
    """Token-packed groups of `counts` rows and `experts` weights, quantised by nvfp4_quantize; rows,
    columns and experts of different magnitudes so that a scale on the wrong one shows."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    rows = offsets[-1]
    x = torch.randn((rows, k), device="cuda", generator=gen)
    x *= torch.logspace(-1, 1, max(rows, 1), device="cuda")[:rows, None]
    w = torch.randn((experts, n, k), device="cuda", generator=gen)
    w *= torch.logspace(-1, 1, n, device="cuda")[None, :, None]
    w *= torch.logspace(-2, 2, experts, device="cuda")[:, None, None]
    gs_a = 448 * 6 / x.abs().max().clamp(min=1e-6)
    gs_b = 448 * 6 / w.abs().amax(dim=(1, 2))
    a, a_scales, starts = quant.nvfp4_quantize(x, gs_a, offsets)
    b, b_scales = quant.nvfp4_quantize(w, gs_b)
    if expert_ids is None:
        expert_ids = torch.randint(-1, experts, (len(counts),), generator=gen, device="cuda").tolist()
    factors = torch.rand(experts, device="cuda", generator=gen) * 3 + 0.25  # beyond the global scales
    return dict(a=a, b=b, a_scales=a_scales, b_scales=b_scales,
                group_offsets=torch.tensor(offsets, dtype=torch.int32, device="cuda"),
                group_scale_offsets=starts, expert_ids=torch.tensor(expert_ids, dtype=torch.int32, device="cuda"),
                expert_scales=(factors / (gs_a * gs_b)).float())


def reference(case, active=None):
    return ref.grouped_nvfp4_reference(case["a"], case["b"], case["a_scales"], case["b_scales"],
                                       case["group_offsets"].tolist(), case["group_scale_offsets"].tolist(),
                                       case["expert_ids"].tolist(), case["expert_scales"], active)


def poisoned(case, dtype=torch.bfloat16):
    return torch.full((case["a"].shape[0], case["b"].shape[1]), float("nan"), dtype=dtype, device="cuda")


def check_rows(out, want, what=""):
    """Rows the reference defines match it; the others still hold the poison."""
    defined = torch.isfinite(want).all(dim=-1)
    if defined.any():
        diff = calc_diff(out[defined], want[defined])
        assert diff <= TOLERANCE[("nvfp4_gemm", out.dtype)], f"{what}: calc_diff {diff:.3e}"
    assert torch.isnan(out[~defined].float()).all(), f"{what}: rows that must stay untouched were written"


def run(case, c, count):
    return mategemm.grouped_matmul_dynamic_scaled_nvfp4(c, case["a"], case["b"], case["a_scales"], case["b_scales"],
                                                        case["group_offsets"], case["group_scale_offsets"],
                                                        case["expert_ids"], case["expert_scales"], count)


def device_count(value):
    return torch.tensor([value], dtype=torch.int32, device="cuda")


COUNTS = [[1], [5, 0, 130, 1, 64], [0, 0, 7], [63, 64, 65], [200, 300], [3] * 40, [0, 1] * 20 + [129], [4096, 1]]


@pytest.mark.parametrize("counts", COUNTS, ids=lambda c: f"{len(c)}groups-{sum(c)}rows")
@pytest.mark.parametrize("count_on", ["host", "device"])
def test_matches_the_exact_reference(counts, count_on):
    case = make_case(counts, seed=len(counts))
    c = poisoned(case)
    groups = len(counts)
    assert run(case, c, groups if count_on == "host" else device_count(groups)) is c
    check_rows(c, reference(case), f"{counts} {count_on}")


@pytest.mark.parametrize("n,k", [(8, 32), (64, 64), (72, 96), (200, 160), (136, 2080), (4096, 7168), (7168, 2048)])
def test_shapes_and_k_tails(n, k):
    """K = 32 (half a 64-value stage: the TMA fills the rest with zeros), odd multiples of 32, N
    not a multiple of the tile."""
    case = make_case([1, 17, 0, 70], n=n, k=k, expert_ids=[2, 0, 1, 3], seed=n + k)
    c = poisoned(case)
    run(case, c, 4)
    check_rows(c, reference(case), f"n={n} k={k}")


def test_one_token():
    case = make_case([1], n=4096, k=7168, experts=1, expert_ids=[0])
    c = poisoned(case)
    run(case, c, device_count(1))
    check_rows(c, reference(case), "M = 1")


@pytest.mark.parametrize("count_on", ["host", "device"])
def test_groups_past_the_active_count_are_untouched(count_on):
    case = make_case([5, 9, 33, 2, 70], expert_ids=[0, 1, 2, 3, 0])
    for active in (0, 1, 3):
        c = poisoned(case)
        run(case, c, active if count_on == "host" else device_count(active))
        check_rows(c, reference(case, active), f"active {active}")


def test_skipped_groups_and_expert_scales():
    case = make_case([10, 10, 10, 10], expert_ids=[-1, 3, -1, 1])
    c = poisoned(case)
    run(case, c, 4)
    want = reference(case)
    assert torch.isnan(want[:10]).all() and torch.isnan(want[20:30]).all()
    check_rows(c, want, "skipped")
    # every expert's scale scales its rows alone
    case["expert_scales"] = case["expert_scales"] * torch.tensor([1.0, 8.0, 1.0, 0.125], device="cuda")
    c2 = poisoned(case)
    run(case, c2, 4)
    assert torch.equal(c2[10:20].float(), (c[10:20].float() * 0.125).bfloat16().float())
    assert torch.equal(c2[30:40].float(), (c[30:40].float() * 8).bfloat16().float())


@pytest.mark.parametrize("force", ["block_m=128", "block_m=64,block_n=64", "block_m=64,block_n=256",
                                   "block_m=128,block_n=64,stages=3", "stages=3,num_mp=3", "block_m=64,decoders=1",
                                   "block_m=64,block_n=64,decoders=1", "block_m=64,block_n=256,decoders=1",
                                   "block_m=64,decoders=2", "block_m=64,block_n=64,decoders=2", "decoders=0",
                                   "block_m=128,decoders=1", "block_m=128,decoders=2",
                                   "block_m=128,block_n=64,decoders=2", "stream=1", "stream=1,block_m=8",
                                   "stream=1,block_m=16,stages=2", "stream=1,block_m=32,num_mp=3",
                                   "decoded_a=1", "block_m=64,decoded_a=1", "block_m=128,decoded_a=0",
                                   "stream=1,block_m=64", "stream=1,decoded_a=1", "stream=1,block_m=64,decoded_a=1",
                                   "stream=1,block_m=8,decoded_a=1,num_mp=5", "stream=1,block_m=8,ctas_per_sm=1",
                                   "stream=1,block_m=32,ctas_per_sm=2", "block_m=256", "block_m=256,block_n=64",
                                   "decoded_b=1", "block_m=128,decoded_b=1", "block_m=256,block_n=64,decoded_b=1,num_mp=3"])
def test_every_tile_config(monkeypatch, force):
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", force)
    case = make_case([1, 130, 0, 64, 257], n=384, k=1056, seed=7)
    for count in (5, device_count(5)):
        c = poisoned(case)
        run(case, c, count)
        check_rows(c, reference(case), force)


@pytest.mark.parametrize("count_on", ["host", "device"])
def test_weights_decoded_beforehand_match_the_kernel_decode(monkeypatch, count_on):
    """decoded_b=1 (the groups' weights decoded to bf16 in group order before the GEMM, the groups'
    experts and scales remapped to them) gives, bit for bit, what decoding them in the kernel gives:
    skipped groups, an expert used twice, groups past the active count, N not a multiple of the
    128-row scale tiles."""
    case = make_case([5, 9, 33, 2, 70], n=200, k=160, expert_ids=[0, 1, -1, 3, 0], seed=11)
    for active in (0, 3, 5):
        outs = []
        for force in ("block_m=128", "block_m=128,decoded_b=1"):
            monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", force)
            c = poisoned(case)
            run(case, c, active if count_on == "host" else device_count(active))
            outs.append(c)
        check_rows(outs[1], reference(case, active), f"decoded_b, active {active}")
        assert torch.equal(outs[0].nan_to_num(7.0), outs[1].nan_to_num(7.0)), f"active {active}"


def test_scale_tiles_in_any_order():
    """group_scale_offsets says where each group's scales are: here the tiles in reverse order."""
    case = make_case([3, 140, 9])
    starts = case["group_scale_offsets"].tolist()  # [0, 1, 3] of 4 tiles
    tiles = [(0, 1), (1, 3), (3, 4)]
    reordered = torch.cat([case["a_scales"][lo:hi] for lo, hi in reversed(tiles)])
    new_starts = [4 - hi for _, hi in tiles]
    case["a_scales"], case["group_scale_offsets"] = reordered.contiguous(), torch.tensor(
        new_starts, dtype=torch.int32, device="cuda")
    assert starts == [0, 1, 3]
    c = poisoned(case)
    run(case, c, 3)
    check_rows(c, reference(case), "reordered scale tiles")


def test_offsets_are_clipped_and_made_monotone():
    """Offsets past the rows or going back are clipped (no fault, nothing outside c written):
    [0, 6, 2, 50] over 20 rows runs groups [0, 6), [6, 6), [6, 20)."""
    case = make_case([6, 0, 14], expert_ids=[1, 2, 0])
    c = poisoned(case)
    want = reference(case)
    case["group_offsets"] = torch.tensor([0, 6, 2, 50], dtype=torch.int32, device="cuda")
    run(case, c, 3)
    check_rows(c, want, "clipped offsets")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pythonic_form(dtype):
    case = make_case([7, 0, 100, 1], expert_ids=[3, 0, -1, 1])
    args = [case[name] for name in ("a", "b", "a_scales", "b_scales", "group_offsets", "expert_ids", "expert_scales")]
    got = mategemm.nvfp4_grouped_gemm(*args, out_dtype=dtype)
    want = reference(case)
    defined = torch.isfinite(want).all(dim=-1)
    assert got.dtype == dtype and got.shape == (108, 256)
    assert calc_diff(got[defined], want[defined]) <= TOLERANCE[("nvfp4_gemm", dtype)]
    out = poisoned(case, dtype)
    assert mategemm.nvfp4_grouped_gemm(*args, out=out, out_dtype=dtype) is out
    check_rows(out, want, "out=")


def test_decode_is_exact_for_every_code_and_scale():
    """One-hot rows of A (1.0 at column i) pick B's column i out: c equals the decoded weights
    exactly, for every byte of packed values and every non-negative e4m3 scale (subnormals, 0)."""
    k, n = 256, 512
    gen = torch.Generator(device="cuda").manual_seed(3)
    a = torch.zeros((k, k // 2), dtype=torch.uint8, device="cuda")
    rows = torch.arange(k, device="cuda")
    a[rows, rows // 2] = torch.where(rows % 2 == 0, 0x02, 0x20).to(torch.uint8)  # e2m1 code 2 = 1.0
    a_scales = quant.swizzle_nvfp4_scales(torch.full((k, k // 16), 1.0, device="cuda").to(E4M3))
    b = torch.randint(0, 256, (1, n, k // 2), dtype=torch.uint8, device="cuda", generator=gen)
    b[0, :256, 0] = torch.arange(256, dtype=torch.uint8, device="cuda")  # every byte at least once
    scale_bytes = torch.randint(0, 0x7F, (1, n, k // 16), dtype=torch.uint8, device="cuda", generator=gen)
    scale_bytes[0, :127, 0] = torch.arange(127, dtype=torch.uint8, device="cuda")  # every non-NaN scale
    b_scales = quant.swizzle_nvfp4_scales(scale_bytes.view(E4M3))
    case = dict(a=a, b=b, a_scales=a_scales, b_scales=b_scales,
                group_offsets=torch.tensor([0, k], dtype=torch.int32, device="cuda"),
                group_scale_offsets=torch.zeros(1, dtype=torch.int32, device="cuda"),
                expert_ids=torch.zeros(1, dtype=torch.int32, device="cuda"),
                expert_scales=torch.ones(1, dtype=torch.float32, device="cuda"))
    c = poisoned(case)
    run(case, c, 1)
    weights = ref.nvfp4_dequantize(b[0], b_scales[0], 1.0)  # (n, k) float64, exact
    assert torch.equal(c.double(), weights.t()), "decoded weights differ"
    # and the other way round: one-hot weights pick A's decoded values out
    case_t = dict(case, a=b[0], a_scales=b_scales[0], b=a[None], b_scales=quant.swizzle_nvfp4_scales(
        torch.full((1, k, k // 16), 1.0, device="cuda").to(E4M3)), group_offsets=torch.tensor(
        [0, n], dtype=torch.int32, device="cuda"))
    c_t = poisoned(case_t)
    run(case_t, c_t, 1)
    assert torch.equal(c_t.double(), weights), "decoded tokens differ"


def test_cuda_graph_replays_with_a_device_count_and_new_routing():
    """Captured once; the count, offsets, experts, tokens and their scales change in place between
    replays (five non-empty groups: the A scales hold five 128-row tiles, enough for any routing)."""
    case = make_case([9, 1, 40, 3, 76], expert_ids=[0, 1, 2, 3, 1])
    count = device_count(5)
    c = poisoned(case)
    run(case, c, count)  # warm-up: kernel, prepared launch
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run(case, c, count)
    gen = torch.Generator(device="cuda").manual_seed(11)
    for active, ids, offsets in ((3, [3, 0, -1, 2, 0], [0, 20, 20, 60, 100, 129]),
                                 (5, [1, 1, 1, 1, 1], [0, 1, 2, 3, 4, 129])):
        a, a_scales, starts = quant.nvfp4_quantize(torch.randn((129, 512), device="cuda", generator=gen), 1.0,
                                                   offsets)
        count.fill_(active)
        case["expert_ids"].copy_(torch.tensor(ids, dtype=torch.int32))
        case["group_offsets"].copy_(torch.tensor(offsets, dtype=torch.int32))
        case["group_scale_offsets"].copy_(starts)
        case["a"].copy_(a)
        case["a_scales"][:a_scales.shape[0]].copy_(a_scales)
        c.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        check_rows(c, reference(case, active), f"replay active={active}")
        eager = poisoned(case)
        run(case, eager, device_count(active))
        assert torch.equal(c.nan_to_num(7.0), eager.nan_to_num(7.0)), "replay differs from eager"


def test_torch_compile_traces_the_pythonic_form():
    case = make_case([4, 12], expert_ids=[1, 0])
    args = [case[name] for name in ("a", "b", "a_scales", "b_scales", "group_offsets", "expert_ids", "expert_scales")]

    def layer(*tensors):
        return mategemm.nvfp4_grouped_gemm(*tensors) * 2

    compiled = torch.compile(layer, fullgraph=True)
    assert torch.equal(compiled(*args), layer(*args))


@pytest.mark.parametrize("counts,given_starts",
                         [([5, 0, 130, 1, 64], True), ([3] * 40, False), ([0, 1] * 20 + [129], True)],
                         ids=["odd", "many", "empty"])
def test_token_rows_decoded_to_bf16_exactly(counts, given_starts):
    """sm90_nvfp4_dequant_a writes each group's rows as the exact dequantisation (every e2m1 x e4m3
    product is a bf16), its scales from the group's tiles (given, or each group after the last's);
    rows past the groups untouched."""
    from mategemm.kernels import sm90_nvfp4_dequant_a as dequant
    from mategemm.runtime import device as rt_device

    case = make_case(counts, k=544, seed=3)
    m, k = case["a"].shape[0], case["a"].shape[1] * 2
    out = torch.full((m + 8, k), float("nan"), dtype=torch.bfloat16, device="cuda")
    info = rt_device.device_info(torch.cuda.current_device())
    starts = case["group_scale_offsets"] if given_starts else None
    run_dequant = dequant.DequantA(case["a"], case["a_scales"], case["group_offsets"], starts, None, len(counts), k,
                                   32 if len(counts) <= 32 else 64, info.arch, info.num_sms)
    run_dequant(out, torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    offsets = case["group_offsets"].tolist()
    for g in range(len(counts)):
        lo, hi = offsets[g], offsets[g + 1]
        if hi == lo:
            continue
        first = int(case["group_scale_offsets"][g])
        want = ref.nvfp4_dequantize(case["a"][lo:hi], case["a_scales"][first:first - (-(hi - lo) // 128)], 1.0)
        assert torch.equal(out[lo:hi].double(), want), f"group {g}"
    assert torch.isnan(out[m:].float()).all()


def test_token_rows_decoded_in_stream_order_exactly():
    """In stream order each 256 values of a row sit where sm90_nvfp4_stream_gemm's B tile holds them:
    position 32w + 8c + 2q + e of a stage holds nibble c + 4e of word w of the 32-byte span q, each
    value x 2^-8; whole stages, zeros past k."""
    from mategemm.kernels import sm90_nvfp4_dequant_a as dequant

    case = make_case([5, 0, 130, 1], k=544, seed=4)
    m, k = case["a"].shape[0], case["a"].shape[1] * 2
    run_dequant = dequant.DequantA.for_problem(
        mategemm.types.Nvfp4Problem(m, 8, k, 4, 4, torch.bfloat16, None), case["a"], case["a_scales"],
        case["group_offsets"], case["group_scale_offsets"], None, 8, stream_order=True)
    out = torch.full((m, 768), float("nan"), dtype=torch.bfloat16, device="cuda")
    run_dequant(out, torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    p = torch.arange(256)
    w, c, q, e = p // 32, p // 8 % 4, p // 2 % 4, p % 2
    k_of = 64 * q + 8 * w + c + 4 * e
    offsets = case["group_offsets"].tolist()
    for g in range(4):
        lo, hi = offsets[g], offsets[g + 1]
        if hi == lo:
            continue
        first = int(case["group_scale_offsets"][g])
        values = ref.nvfp4_dequantize(case["a"][lo:hi], case["a_scales"][first:first - (-(hi - lo) // 128)], 1.0)
        padded = torch.nn.functional.pad(values, (0, 768 - k))
        want = torch.cat([padded[:, 256 * s + k_of] for s in range(3)], dim=1) * 2.0 ** -8
        assert torch.equal(out[lo:hi].double(), want), f"group {g}"
