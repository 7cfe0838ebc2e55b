"""sm90_fp8_gemm_blockscaled on the GPU against the fp64 reference."""
import itertools

import pytest
import torch

import mategemm
from mategemm import plan
from mategemm.deep_gemm import get_mn_major_tma_aligned_tensor
from mategemm.testing import assert_close, fp8_gemm_reference, make_fp8_gemm_inputs
from mategemm.types import RECIPE_1x128_128x128, GemmProblem

MS = (1, 7, 64, 128, 1000, 4096)
NS = (576, 2112, 4096, 7168)
KS = (128, 512, 7168)
RECIPES = ((1, 128, 128), (1, 1, 128))
MAJORS = ("K", "MN")


def run_checked(m, n, k, recipe, major, out_dtype=torch.bfloat16, a_dtype=torch.float8_e4m3fn,
                b_dtype=torch.float8_e4m3fn):
    a, b, sa, sb = make_fp8_gemm_inputs(m, n, k, recipe, major, a_dtype=a_dtype, b_dtype=b_dtype)
    out = torch.full((m, n), float("nan"), dtype=out_dtype, device="cuda")  # poisoned
    got = mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, scale_major_mode=major, scale_granularity_mnk=recipe,
                                         out=out)
    assert got is out
    ref = fp8_gemm_reference(a, b, sa, sb, recipe, major)
    assert_close(out, ref, "fp8_gemm", f"m={m} n={n} k={k} recipe={recipe} major={major}")


@pytest.mark.parametrize("m,n,k,recipe,major", list(itertools.product(MS, NS, KS, RECIPES, MAJORS)))
def test_sweep(m, n, k, recipe, major):
    run_checked(m, n, k, recipe, major)


# K not a multiple of 128 (DeepGEMM's dgrad shapes have k = 2112 and 576): TMA zero-fills the tail
# block of A and B, which has its own scales; one 16-wide K, a split-K, K just past 16384 (DeepSeek-V3's
# dense down projection's 18432 is past it too), K just past 32768 (the scale warps then read A's scales
# even when given MN-major).
K_TAIL_CASES = ((1, 576, 64), (128, 7168, 2112), (4096, 2112, 576), (333, 1040, 336), (4096, 7168, 2112),
                (7, 256, 16), (64, 2112, 16384 + 16), (64, 2112, 32768 + 16))


@pytest.mark.parametrize("m,n,k", K_TAIL_CASES)
@pytest.mark.parametrize("recipe,major", list(itertools.product(RECIPES, MAJORS)))
def test_k_tail(m, n, k, recipe, major):
    run_checked(m, n, k, recipe, major)


@pytest.mark.parametrize("force", ("block_m=64,block_n=64,num_splits=3", "block_m=128,block_n=144",
                                   "block_m=128,block_n=192", "block_m=256,block_n=128,cluster_n=2",
                                   "block_m=128,block_n=128,overlap=0", "block_m=64,block_n=64,b_evict_first=1",
                                   "block_m=128,block_n=128,overlap=0,b_evict_first=1",
                                   "block_m=64,block_n=64,num_mp=8,scales_ahead=1",
                                   "block_m=128,block_n=128,num_mp=3,num_splits=2,scales_ahead=1"))
def test_k_tail_forced_configs(monkeypatch, force):
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", force)
    for scales in (tma_aligned_scales, torch.Tensor.contiguous):
        a, b, sa, sb = make_fp8_gemm_inputs(256, 1008, 336, (1, 128, 128), "MN")  # 8 N-blocks: cluster_n 2 fits
        sa = scales(sa)
        out = mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, scale_major_mode="MN")
        assert_close(out, fp8_gemm_reference(a, b, sa, sb, (1, 128, 128), "MN"), "fp8_gemm", force)


@pytest.mark.parametrize("out_dtype", (torch.bfloat16, torch.float16))
@pytest.mark.parametrize("a_dtype,b_dtype", ((torch.float8_e4m3fn, torch.float8_e5m2),
                                             (torch.float8_e5m2, torch.float8_e5m2),
                                             (torch.float8_e5m2, torch.float8_e4m3fn)))
def test_dtypes(out_dtype, a_dtype, b_dtype):
    run_checked(300, 1024, 1024, (1, 128, 128), "K", out_dtype, a_dtype, b_dtype)


@pytest.mark.parametrize("m,n", ((1, 8), (129, 136), (257, 1000), (65, 4104)))
def test_ragged_shapes_leave_neighbours_untouched(m, n):
    """out is a view inside a larger poisoned buffer: only its m x n elements change."""
    k = 256
    a, b, sa, sb = make_fp8_gemm_inputs(m, n, k)
    big = torch.full((m + 3, n + 24), 7.0, dtype=torch.bfloat16, device="cuda")
    out = big[1:m + 1, 8:n + 8]
    out.fill_(float("nan"))
    mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out)
    assert_close(out, fp8_gemm_reference(a, b, sa, sb), "fp8_gemm", f"m={m} n={n}")
    mask = torch.ones_like(big, dtype=torch.bool)
    mask[1:m + 1, 8:n + 8] = False
    assert (big[mask] == 7.0).all()


def test_allocates_out_with_dtype():
    a, b, sa, sb = make_fp8_gemm_inputs(64, 256, 128)
    out = mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out_dtype=torch.float16)
    assert out.dtype == torch.float16 and out.shape == (64, 256)
    assert_close(out, fp8_gemm_reference(a, b, sa, sb), "fp8_gemm")


def test_empty_m():
    a, b, sa, sb = make_fp8_gemm_inputs(1, 256, 128)
    out = mategemm.gemm_fp8_nt_groupwise(a[:0], b, sa[:0], sb)
    assert out.shape == (0, 256)


@pytest.mark.parametrize("num_mp", (1, 7, 66))
def test_num_mp(num_mp):
    a, b, sa, sb = make_fp8_gemm_inputs(1000, 2112, 512)
    mategemm.set_num_mp(num_mp)
    try:
        assert mategemm.get_num_mp() == num_mp
        out = mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb)
    finally:
        mategemm.set_num_mp(None)
    assert_close(out, fp8_gemm_reference(a, b, sa, sb), "fp8_gemm", f"num_mp={num_mp}")


@pytest.mark.parametrize("force", ("block_m=64,block_n=160,stages=3", "block_m=128,block_n=48,group_n=1",
                                   "block_m=128,block_n=144,num_mp=5", "block_m=64,block_n=16,stages=3"))
def test_forced_configs(force, monkeypatch):
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", force)
    for major in ("K", "MN"):
        a, b, sa, sb = make_fp8_gemm_inputs(333, 1040, 640, scale_major_mode=major)
        out = mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, scale_major_mode=major)
        assert_close(out, fp8_gemm_reference(a, b, sa, sb, scale_major_mode=major), "fp8_gemm", force)


# (forced config, m, n): ragged M and N; clusters need an even number of blocks along their axis.
CLUSTER_CASES = (
    ("block_m=128,block_n=128,cluster_m=2", 250, 1000),
    ("block_m=128,block_n=144,cluster_m=2,num_mp=5", 250, 1000),
    ("block_m=64,block_n=96,cluster_m=2,group_n=1", 250, 1000),
    ("block_m=128,block_n=160,cluster_m=2,stages=3", 250, 1000),
    ("block_m=128,block_n=128,cluster_n=2", 250, 1000),
    ("block_m=256,block_n=128,cluster_n=2", 520, 1000),
    ("block_m=256,block_n=112,cluster_n=2,num_mp=6", 300, 888),
    ("block_m=256,block_n=64,cluster_n=2,group_n=1", 700, 1000),
    ("block_m=256,block_n=96", 250, 1000),
)


@pytest.mark.parametrize("force,m,n", CLUSTER_CASES)
@pytest.mark.parametrize("recipe,major", (((1, 128, 128), "K"), ((1, 1, 128), "MN")))
def test_cluster_and_block_m_256_configs(force, m, n, recipe, major, monkeypatch):
    """2-CTA clusters (multicast A or B) and 256-row tiles: poisoned buffer, several tiles per CTA."""
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", force)
    k = 640
    a, b, sa, sb = make_fp8_gemm_inputs(m, n, k, recipe, major)
    big = torch.full((m + 2, n + 16), 7.0, dtype=torch.bfloat16, device="cuda")
    out = big[1:m + 1, 8:n + 8]
    out.fill_(float("nan"))
    mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, scale_major_mode=major, scale_granularity_mnk=recipe, out=out)
    assert_close(out, fp8_gemm_reference(a, b, sa, sb, recipe, major), "fp8_gemm", force)
    mask = torch.ones_like(big, dtype=torch.bool)
    mask[1:m + 1, 8:n + 8] = False
    assert (big[mask] == 7.0).all()


# (forced config, m, n, k): split-K on decode shapes; k = 640 is 5 k-blocks (3 splits of 2, 2, 1).
SPLIT_CASES = (
    ("block_m=64,block_n=32,num_splits=2", 1, 2112, 1024),
    ("block_m=64,block_n=64,num_splits=3", 64, 1000, 640),
    ("block_m=64,block_n=16,num_splits=8,num_mp=7", 37, 576, 7168),
    ("block_m=128,block_n=128,num_splits=4", 128, 1040, 2048),
    ("block_m=64,block_n=144,num_splits=5", 100, 2112, 640),
)
# The same in clusters (one CTA per K slice, reduced in shared memory): pairs, a cluster of 8 taking
# every tile in turn, one of 3 over 5 k-blocks, two math warpgroups.
SPLIT_CLUSTER_CASES = (
    ("block_m=64,block_n=32,num_splits=2", 1, 2112, 1024),
    ("block_m=64,block_n=64,num_splits=4", 64, 1000, 7168),
    ("block_m=64,block_n=16,num_splits=8,num_mp=8", 37, 576, 7168),
    ("block_m=64,block_n=64,num_splits=3,num_mp=6", 100, 2112, 640),
    ("block_m=128,block_n=128,num_splits=2", 128, 1040, 2048),
)
SPLIT_CASES += tuple((force + ",split_cluster=1", m, n, k) for force, m, n, k in SPLIT_CLUSTER_CASES)


@pytest.mark.parametrize("force,m,n,k", SPLIT_CASES)
@pytest.mark.parametrize("recipe,major", (((1, 128, 128), "K"), ((1, 1, 128), "MN")))
def test_split_k(force, m, n, k, recipe, major, monkeypatch):
    """Split-K: right result in a poisoned buffer, bitwise the same on every call and graph replay."""
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", force)
    a, b, sa, sb = make_fp8_gemm_inputs(m, n, k, recipe, major)
    big = torch.full((m + 2, n + 16), 7.0, dtype=torch.bfloat16, device="cuda")
    out = big[1:m + 1, 8:n + 8]
    out.fill_(float("nan"))
    call = lambda: mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, scale_major_mode=major,  # noqa: E731
                                                  scale_granularity_mnk=recipe, out=out)
    call()
    assert_close(out, fp8_gemm_reference(a, b, sa, sb, recipe, major), "fp8_gemm", force)
    mask = torch.ones_like(big, dtype=torch.bool)
    mask[1:m + 1, 8:n + 8] = False
    assert (big[mask] == 7.0).all()
    first = out.clone()
    for _ in range(3):
        out.fill_(float("nan"))
        call()
        assert torch.equal(out, first)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    for _ in range(2):
        out.fill_(float("nan"))
        graph.replay()
        assert torch.equal(out, first)


@pytest.mark.parametrize("force,m,n,k", SPLIT_CLUSTER_CASES)
def test_split_k_in_cluster_matches_workspace(force, m, n, k, monkeypatch):
    """Both reductions add the partials in split order: the same bits."""
    a, b, sa, sb = make_fp8_gemm_inputs(m, n, k, (1, 128, 128), "MN")
    outs = []
    for where in ("", ",split_cluster=1"):
        monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", force + where)
        outs.append(mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, scale_major_mode="MN"))
    assert torch.equal(outs[0], outs[1])


def test_split_k_on_two_streams_at_once(monkeypatch):
    """The same split-K call on two streams at once: each stream has its own workspace."""
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", "block_m=64,block_n=64,num_splits=4")
    a, b, sa, sb = make_fp8_gemm_inputs(64, 2112, 7168)
    ref = fp8_gemm_reference(a, b, sa, sb)
    mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb)  # compile outside the timed part
    streams = [torch.cuda.Stream() for _ in range(2)]
    outs = [torch.full((64, 2112), float("nan"), dtype=torch.bfloat16, device="cuda") for _ in streams]
    for stream in streams:
        stream.wait_stream(torch.cuda.current_stream())
    for _ in range(20):
        for stream, out in zip(streams, outs):
            with torch.cuda.stream(stream):
                mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out)
    torch.cuda.synchronize()
    for out in outs:
        assert_close(out, ref, "fp8_gemm", "two streams")


def test_cluster_rejects_odd_m_blocks(monkeypatch):
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", "block_m=128,cluster_m=2")
    a, b, sa, sb = make_fp8_gemm_inputs(129 + 128, 256, 128)  # 3 M-blocks
    with pytest.raises(ValueError, match="cluster_m"):
        mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb)


def test_non_default_stream():
    """The kernel must run on torch's current stream: queued behind a slow copy of its input."""
    a, b, sa, sb = make_fp8_gemm_inputs(512, 2112, 1024)
    a_new = make_fp8_gemm_inputs(512, 2112, 1024)[0]
    ref = fp8_gemm_reference(a_new, b, sa, sb)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(50_000_000)
        a.copy_(a_new)  # lands only after the sleep, on this stream
        out = mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb)
    torch.cuda.current_stream().wait_stream(stream)
    assert_close(out, ref, "fp8_gemm", "side stream")


def test_cuda_graph_capture_and_replay():
    a, b, sa, sb = make_fp8_gemm_inputs(256, 4096, 1024)
    out = torch.empty((256, 4096), dtype=torch.bfloat16, device="cuda")
    mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out)  # compile and load outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out)
    for _ in range(2):
        a2, b2, sa2, sb2 = make_fp8_gemm_inputs(256, 4096, 1024)
        a.copy_(a2), b.copy_(b2), sa.copy_(sa2), sb.copy_(sb2)
        out.fill_(float("nan"))
        graph.replay()
        assert_close(out, fp8_gemm_reference(a, b, sa, sb), "fp8_gemm", "graph replay")


def test_repeated_calls_are_bitwise_identical():
    a, b, sa, sb = make_fp8_gemm_inputs(1000, 2112, 7168)
    first = mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb)
    for _ in range(3):
        assert torch.equal(mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb), first)


# ---- A's scales by TMA: (1,128,128), given MN-major with 16-byte aligned rows -------------------
def tma_aligned_scales(sa_mn: torch.Tensor) -> torch.Tensor:
    """(k/128, m) MN-major scales copied into rows padded to 4 floats (DeepGEMM's TMA-aligned layout)."""
    return get_mn_major_tma_aligned_tensor(sa_mn.t()).t()


def by_tma(sa: torch.Tensor, m: int, k: int) -> bool:
    """What the call path decides for these scales (plan.dense with the facts gemm.py passes)."""
    readable = plan.a_scales_tma_readable((sa.stride(1), sa.stride(0)), sa.data_ptr(), m)
    return readable and plan.tma_scales_allowed(
        GemmProblem(m, 256, k, RECIPE_1x128_128x128, torch.float8_e4m3fn, torch.float8_e4m3fn, torch.bfloat16))


def tma_and_warps(monkeypatch, m, n, k, scales=tma_aligned_scales, force=""):
    """The same call with A's scales by TMA and by the scale warps (tma_scales=0): both match the
    reference in a poisoned buffer and each other bit for bit (both promote with fp32 sa * sb)."""
    a, b, sa, sb = make_fp8_gemm_inputs(m, n, k, (1, 128, 128), "MN")
    sa = scales(sa)
    ref = fp8_gemm_reference(a, b, sa, sb, (1, 128, 128), "MN")
    outs = []
    force = force or "gemv=0"  # the GEMM at 1-2 rows too (the GEMV sums in another order)
    for knob in (force, ",".join(filter(None, (force, "tma_scales=0")))):
        monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", knob)
        big = torch.full((m + 2, n + 16), 7.0, dtype=torch.bfloat16, device="cuda")
        out = big[1:m + 1, 8:n + 8]
        out.fill_(float("nan"))
        mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, scale_major_mode="MN", out=out)
        assert_close(out, ref, "fp8_gemm", f"m={m} n={n} k={k} {knob}")
        mask = torch.ones_like(big, dtype=torch.bool)
        mask[1:m + 1, 8:n + 8] = False
        assert (big[mask] == 7.0).all()
        outs.append(out.clone())
    assert torch.equal(outs[0], outs[1]), "scales by TMA and by the scale warps differ"
    return sa


@pytest.mark.parametrize("m,n,k", list(itertools.product((1, 3, 64, 130, 1000, 4096), (576, 2112, 7168),
                                                         (128, 7168, 16384, 18432))))
def test_tma_scales_sweep(monkeypatch, m, n, k):
    sa = tma_and_warps(monkeypatch, m, n, k)
    assert by_tma(sa, m, k)


@pytest.mark.parametrize("force,m,n,k", [
    ("block_m=128,block_n=144", 333, 1040, 640),            # two B scale blocks per tile
    ("block_m=64,block_n=160,stages=3", 333, 1040, 640),
    ("block_m=128,block_n=112,group_n=1", 250, 1000, 1024),
    ("block_m=128,block_n=128,cluster_m=2", 250, 1000, 640),
    ("block_m=128,block_n=128,cluster_n=2", 250, 1000, 640),
    ("block_m=256,block_n=128,cluster_n=2", 520, 1000, 640),
    ("block_m=256,block_n=112,cluster_n=2,num_mp=6", 300, 888, 640),
    ("block_m=64,block_n=32,num_splits=2", 1, 2112, 1024),  # split-K: each item stages its K slice
    ("block_m=64,block_n=64,num_splits=3", 64, 1000, 640),
    ("block_m=64,block_n=144,num_splits=5", 100, 2112, 640),
    ("block_m=128,block_n=128,num_mp=3", 1000, 4096, 2048),  # many tiles per CTA: both buffers in turn
])
def test_tma_scales_forced_configs(monkeypatch, force, m, n, k):
    tma_and_warps(monkeypatch, m, n, k, force=force)


def shifted_start(sa: torch.Tensor) -> torch.Tensor:
    """sa's values in padded rows whose view starts 4 bytes past a 16-byte boundary."""
    k_blocks, m = sa.shape
    lead = -(-m // 4) * 4
    view = torch.as_strided(torch.zeros(k_blocks * lead + 4, device="cuda"), (k_blocks, m), (lead, 1), 1)
    view.copy_(sa)
    return view


@pytest.mark.parametrize("m,k,scales", [(333, 640, torch.Tensor.contiguous),  # rows of 333 floats: unaligned
                                        (64, 640, shifted_start),
                                        (256, 32768 + 128, tma_aligned_scales)])  # past the B scale buffer
def test_tma_scales_fall_back_where_tma_cannot_read_them(monkeypatch, m, k, scales):
    """The scale warps run instead, with the same results."""
    sa = tma_and_warps(monkeypatch, m, 1024, k, scales=scales)
    assert not by_tma(sa, m, k)


@pytest.mark.parametrize("m,n,k,major", [(1, 2112, 7168, "K"), (333, 1040, 640, "K"), (4096, 7168, 2112, "K"),
                                         (333, 1040, 640, "MN")])
def test_tma_scales_copied_first(monkeypatch, m, n, k, major):
    """MATEGEMM_FORCE_CONFIG tma_scales=2: scales TMA cannot read are copied into a readable layout
    before each launch; the result equals the scale warps' bit for bit, also replayed in a CUDA
    graph after the scales change."""
    a, b, sa, sb = make_fp8_gemm_inputs(m, n, k, (1, 128, 128), major)
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", "tma_scales=0")
    warps = mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, scale_major_mode=major)
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", "tma_scales=2")
    out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    call = lambda: mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, scale_major_mode=major, out=out)  # noqa: E731
    call()
    assert torch.equal(out, warps)
    assert_close(out, fp8_gemm_reference(a, b, sa, sb, (1, 128, 128), major), "fp8_gemm", "copied")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    sa.mul_(0.5)
    out.fill_(float("nan"))
    graph.replay()
    assert_close(out, fp8_gemm_reference(a, b, sa, sb, (1, 128, 128), major), "fp8_gemm", "copied, replayed")


@pytest.mark.parametrize("m,n,k", ((64, 2112, 7168), (1, 576, 7168), (300, 1024, 1024)))
def test_pdl_launches_see_the_previous_kernels_writes(m, n, k, monkeypatch):
    """With programmatic dependent launch the GEMM starts while the kernel before it finishes: the
    inputs a torch kernel wrote just before, and the output the GEMM before wrote, are seen whole."""
    from mategemm.runtime import launch

    monkeypatch.setattr(launch, "_pdl_override", True)
    sets = [make_fp8_gemm_inputs(m, n, k) for _ in range(3)]
    inputs = [t.clone() for t in sets[0]]
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    for i in (1, 2, 0, 1):
        for dst, src in zip(inputs, sets[i]):
            dst.copy_(src)
        out.fill_(float("nan"))
        for _ in range(2):  # back to back: the second waits for the first's stores to the same output
            mategemm.gemm_fp8_nt_groupwise(*inputs, out=out)
        assert_close(out, fp8_gemm_reference(*sets[i]), "fp8_gemm", f"pdl {m}x{n}x{k} set {i}")
