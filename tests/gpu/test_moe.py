"""Grouped (MoE) FP8 GEMMs on the GPU against the float64 references of mategemm.testing.moe.

Outputs start poisoned (NaN): rows a mode must leave alone are checked to still be NaN.
"""
import ctypes

import pytest
import torch

import mategemm
from mategemm.testing import moe
from mategemm.testing.numerics import TOLERANCE, calc_diff

RECIPES = ((1, 128, 128), (1, 1, 128))
# Rows per expert the issue names, plus empty experts around them.
EDGE_COUNTS = [0, 1, 5, 0, 127, 128, 129, 4096, 0]


def check_rows(out, ref, what):
    """Rows where ref is defined match it; the others still hold the poison."""
    defined = torch.isfinite(ref).all(dim=-1)
    diff = calc_diff(out[defined], ref[defined]) if defined.any() else 0.0
    assert diff <= TOLERANCE[("fp8_gemm", out.dtype)], f"{what}: calc_diff {diff:.3e}"
    assert torch.isnan(out[~defined].float()).all(), f"{what}: rows that must stay untouched were written"


def ragged_inputs(counts, n, k, recipe, gemm_mode, alignment_m=128):
    counts = list(counts)
    if gemm_mode == "per_token":
        info, _ = moe.per_token_layout(counts, alignment_m)
        rows = info.numel()
    else:
        count_t, psum = moe.packed_layout(counts)
        info = count_t if gemm_mode == "per_expert" else psum
        rows = sum(counts)
    a, sfa = moe.make_tokens(max(rows, 1), k)
    a, sfa = a[:rows], sfa[:rows]
    b, sfb = moe.make_expert_weights(len(counts), n, k, recipe)
    return a, sfa, b, sfb, info


@pytest.mark.parametrize("gemm_mode", moe.GEMM_MODES)
@pytest.mark.parametrize("recipe", RECIPES)
def test_ragged_m_edge_counts(gemm_mode, recipe):
    n, k = 384, 512
    a, sfa, b, sfb, info = ragged_inputs(EDGE_COUNTS, n, k, recipe, gemm_mode)
    out = torch.full((a.shape[0], n), float("nan"), dtype=torch.bfloat16, device="cuda")
    got = mategemm.ragged_m_moe_gemm_8bit((a, sfa), (b, sfb), info, out, gemm_mode=gemm_mode,
                                          scale_granularity_mnk=recipe)
    assert got is out
    check_rows(out, moe.ragged_m_reference(a, sfa, b, sfb, info, gemm_mode, recipe), f"{gemm_mode} {recipe}")


def tma_aligned_t(sfa):
    """(rows, k/128) scales viewed MN-major with rows padded to 4 floats: TMA reads them in place."""
    rows, k_blocks = sfa.shape
    padded = torch.empty((k_blocks, -(-rows // 4) * 4), device=sfa.device)
    padded[:, :rows] = sfa.t()
    return padded[:, :rows].t()


@pytest.mark.parametrize("gemm_mode", moe.GEMM_MODES)
@pytest.mark.parametrize("counts,n,k", ((EDGE_COUNTS, 384, 512), ([3, 0, 300, 64, 1], 1040, 2048)))
@pytest.mark.parametrize("layout", ("K", "tma_aligned"))
def test_ragged_m_tma_scales_forced(gemm_mode, counts, n, k, layout, monkeypatch):
    """MATEGEMM_FORCE_CONFIG tma_scales=2: A's scales by TMA (K-major ones copied first), each tile's
    B scales from its expert's: the same bytes as the scale warps, every row the routing defines."""
    a, sfa, b, sfb, info = ragged_inputs(counts, n, k, (1, 128, 128), gemm_mode)
    if layout == "tma_aligned":
        sfa = tma_aligned_t(sfa)
    outs = []
    for force in ("tma_scales=0", "tma_scales=2"):
        monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", force)
        out = torch.full((a.shape[0], n), float("nan"), dtype=torch.bfloat16, device="cuda")
        mategemm.ragged_m_moe_gemm_8bit((a, sfa), (b, sfb), info, out, gemm_mode=gemm_mode)
        outs.append(out)
    check_rows(outs[1], moe.ragged_m_reference(a, sfa, b, sfb, info, gemm_mode), f"{gemm_mode} {layout}")
    assert torch.equal(outs[0].view(torch.int16), outs[1].view(torch.int16))


@pytest.mark.parametrize("max_m,masked", ((64, [0, 1, 64, 33]), (300, [300, 129, 0, 5000, 7]),
                                          (301, [301, 2, 300, 0, 150])))
def test_masked_tma_scales_forced(max_m, masked, monkeypatch):
    """Masked with tma_scales=2: A's scales by TMA over the experts' stacked rows (K-major ones copied
    first; stacked MN-major ones read in place): the same bytes as the scale warps (test_masked
    checks those against the reference). max_m 301: experts' rows start off the 4-row grid of TMA."""
    n, k, groups = 384, 512, len(masked)
    a, sfa = moe.make_tokens(groups * max_m, k)
    b, sfb = moe.make_expert_weights(groups, n, k, (1, 128, 128))
    counts = torch.tensor(masked, dtype=torch.int32, device="cuda")
    for layout in ("K", "stacked MN"):
        scales = sfa if layout == "K" else tma_aligned_t(sfa)
        outs = []
        for force in ("tma_scales=0", "tma_scales=2"):
            monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", force)
            out = torch.full((groups, max_m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
            mategemm.masked_moe_gemm_8bit((a.view(groups, max_m, k), scales.view(groups, max_m, -1)), (b, sfb),
                                          counts, out)
            outs.append(out)
        # the poisoned rows past each count must stay poisoned in both: compared as bytes too
        assert torch.equal(outs[0].view(torch.int16), outs[1].view(torch.int16)), layout


@pytest.mark.parametrize("gemm_mode", moe.GEMM_MODES)
@pytest.mark.parametrize("num_tokens", (1, 37, 600))
def test_ragged_m_realistic_routing(gemm_mode, num_tokens):
    """256 experts, top-8, skewed popularity with cold experts."""
    gen = torch.Generator().manual_seed(num_tokens)
    counts = moe.routing_counts(num_tokens, 256, 8, generator=gen)
    n, k = 256, 384
    a, sfa, b, sfb, info = ragged_inputs(counts, n, k, (1, 128, 128), gemm_mode)
    out = torch.full((a.shape[0], n), float("nan"), dtype=torch.bfloat16, device="cuda")
    mategemm.ragged_m_moe_gemm_8bit((a, sfa), (b, sfb), info, out, gemm_mode=gemm_mode)
    check_rows(out, moe.ragged_m_reference(a, sfa, b, sfb, info, gemm_mode), f"{gemm_mode} tokens={num_tokens}")


@pytest.mark.parametrize("gemm_mode", ("per_token", "per_expert"))
def test_ragged_m_one_expert_takes_all(gemm_mode):
    counts = [0] * 8
    counts[5] = 1000
    a, sfa, b, sfb, info = ragged_inputs(counts, 512, 256, (1, 128, 128), gemm_mode)
    out = torch.full((a.shape[0], 512), float("nan"), dtype=torch.bfloat16, device="cuda")
    mategemm.ragged_m_moe_gemm_8bit((a, sfa), (b, sfb), info, out, gemm_mode=gemm_mode)
    check_rows(out, moe.ragged_m_reference(a, sfa, b, sfb, info, gemm_mode), gemm_mode)


@pytest.mark.parametrize("force", ("block_m=256", "block_m=256,tma_scales=2", "block_m=256,cluster_n=2"))
def test_per_token_256_row_tiles_over_128_row_segments(force, monkeypatch):
    """256-row tiles over segments aligned to 128: a tile whose halves hold different experts runs
    once per expert and stores only that expert's rows. The ids hold every case: segments starting
    on odd 128-row blocks, an empty expert, a padding block (-1) below a segment, an id out of
    range below a valid one, and a lower half whose upper half lies past the last row."""
    blocks = [0, 0, 2, 2, 2, -1, 7, 3, 3, 1, -1, 1, 4]  # each 128-row block's expert (7: out of range)
    ids = torch.tensor(blocks, dtype=torch.int32).repeat_interleave(128)
    ids[0 * 128 + 100:1 * 128] = -1   # a segment's padding tail
    ids[9 * 128 + 5:10 * 128] = -1
    ids = ids[:-64]                  # the last tile: 64 rows, no upper half
    rows, n, k = ids.numel(), 512, 640
    a, sfa = moe.make_tokens(rows, k)
    b, sfb = moe.make_expert_weights(6, n, k, (1, 128, 128))  # expert 5 has no rows
    ids = ids.cuda()
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", force)
    out = torch.full((rows, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    mategemm.ragged_m_moe_gemm_8bit((a, sfa), (b, sfb), ids, out, gemm_mode="per_token")
    ids_ref = torch.where(ids < 6, ids, -1)
    check_rows(out, moe.ragged_m_reference(a, sfa, b, sfb, ids_ref, "per_token"), force)


@pytest.mark.parametrize("alignment_m", (128, 256))
@pytest.mark.parametrize("n", (136, 1000))
def test_per_token_alignment_and_ragged_n(alignment_m, n):
    counts = [3, 0, 300, 256, 1]
    a, sfa, b, sfb, info = ragged_inputs(counts, n, 256, (1, 128, 128), "per_token", alignment_m)
    out = torch.full((a.shape[0], n), float("nan"), dtype=torch.float16, device="cuda")
    mategemm.ragged_m_moe_gemm_8bit((a, sfa), (b, sfb), info, out, alignment_m=alignment_m)
    check_rows(out, moe.ragged_m_reference(a, sfa, b, sfb, info, "per_token"), f"alignment {alignment_m}")


@pytest.mark.parametrize("gemm_mode", ("per_expert", "per_token"))
@pytest.mark.parametrize("transpose", ("in_kernel", "copy"))
def test_ragged_m_major_modes_and_num_mp(gemm_mode, transpose, monkeypatch):
    """M-major tokens and N-major weights: N-major B is transposed in the kernel in every mode, an
    M-major A only in per_token (packed segments start unaligned); with transpose=0 both are copied."""
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", "transpose=0" if transpose == "copy" else "transpose=1")
    counts = [10, 200, 0, 78]  # 288 packed rows: a 16-byte row stride for the M-major A
    a, sfa, b, sfb, info = ragged_inputs(counts, 256, 512, (1, 128, 128), gemm_mode)
    a_mn = a.t().contiguous().t()          # same values, M-major
    b_mn = b.transpose(1, 2).contiguous().transpose(1, 2)  # N-major
    out = torch.full((a.shape[0], 256), float("nan"), dtype=torch.bfloat16, device="cuda")
    mategemm.ragged_m_moe_gemm_8bit((a_mn, sfa), (b_mn, sfb), info, out, gemm_mode=gemm_mode, major_a_mode="M",
                                    major_b_mode="N", num_mp=5)
    check_rows(out, moe.ragged_m_reference(a, sfa, b, sfb, info, gemm_mode), f"M/N-major {gemm_mode}, num_mp=5")


def test_ragged_m_warm_call_sees_new_routing():
    """The same tensors with new routing values: the kernel reads them at run time."""
    counts = [50, 0, 70]
    a, sfa, b, sfb, info = ragged_inputs(counts, 256, 256, (1, 128, 128), "per_expert")
    out = torch.full((a.shape[0], 256), float("nan"), dtype=torch.bfloat16, device="cuda")
    mategemm.ragged_m_moe_gemm_8bit((a, sfa), (b, sfb), info, out, gemm_mode="per_expert")
    info.copy_(torch.tensor([0, 120, 0], dtype=torch.int32))
    out.fill_(float("nan"))
    mategemm.ragged_m_moe_gemm_8bit((a, sfa), (b, sfb), info, out, gemm_mode="per_expert")
    check_rows(out, moe.ragged_m_reference(a, sfa, b, sfb, info, "per_expert"), "second routing")


def test_ragged_m_bad_routing_stays_in_bounds():
    """Ids out of range, counts past the rows and a decreasing prefix sum: nothing faults, nothing
    outside `out` changes (run under compute-sanitizer for the bounds proof)."""
    n, k, rows = 256, 256, 300
    a, sfa = moe.make_tokens(rows, k)
    b, sfb = moe.make_expert_weights(4, n, k)
    big = torch.full((rows + 2, n), 7.0, dtype=torch.bfloat16, device="cuda")
    out = big[1:rows + 1]
    ids = torch.randint(-3, 9, (rows,), dtype=torch.int32, device="cuda")
    mategemm.ragged_m_moe_gemm_8bit((a, sfa), (b, sfb), ids, out, gemm_mode="per_token")
    counts = torch.tensor([250, -5, 10**9, 40], dtype=torch.int32, device="cuda")
    mategemm.ragged_m_moe_gemm_8bit((a, sfa), (b, sfb), counts, out, gemm_mode="per_expert")
    # Made monotone and clipped: expert 0 rows 0-99, expert 2 rows 100-299, experts 1 and 3 empty.
    psum = torch.tensor([100, 50, 2**31 - 1, 20], dtype=torch.int32, device="cuda")
    mategemm.ragged_m_moe_gemm_8bit((a, sfa), (b, sfb), psum, out, gemm_mode="psum_expert")
    torch.cuda.synchronize()
    assert (big[0] == 7.0).all() and (big[-1] == 7.0).all()
    ref = moe.ragged_m_reference(a, sfa, b, sfb, torch.tensor([100, 0, 200, 0]), "per_expert")
    check_rows(out, ref, "clipped prefix sums")


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("max_m,masked", ((64, [0, 1, 64, 33]), (300, [300, 129, 0, 5000, 7])))
def test_masked(recipe, max_m, masked):
    e, n, k = len(masked), 384, 512
    a, sfa = moe.make_tokens(e * max_m, k)
    a, sfa = a.view(e, max_m, k), sfa.view(e, max_m, k // 128)
    b, sfb = moe.make_expert_weights(e, n, k, recipe)
    masked_m = torch.tensor(masked, dtype=torch.int32, device="cuda")
    out = torch.full((e, max_m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    got = mategemm.masked_moe_gemm_8bit((a, sfa), (b, sfb), masked_m, out, scale_granularity_mnk=recipe,
                                        expect_tokens=max(1, sum(min(c, max_m) for c in masked) // e))
    assert got is out
    clipped = torch.tensor([min(c, max_m) for c in masked])
    check_rows(out, moe.masked_reference(a, sfa, b, sfb, clipped, recipe), f"masked {masked} {recipe}")


def test_batch_deepgemm_fp8_nt_groupwise():
    e, m, n, k = 3, 128, 2048, 1024
    a, sfa = moe.make_tokens(e * m, k)
    a, sfa = a.view(e, m, k), sfa.view(e, m, k // 128)
    b, sfb = moe.make_expert_weights(e, n, k)
    masked_m = torch.tensor([128, 17, 0], dtype=torch.int32, device="cuda")
    out = mategemm.batch_deepgemm_fp8_nt_groupwise(a, b, sfa, sfb, masked_m, 48, out_dtype=torch.float16)
    assert out.dtype == torch.float16 and out.shape == (e, m, n)
    ref = moe.masked_reference(a, sfa, b, sfb, masked_m.cpu())
    defined = torch.isfinite(ref).all(dim=-1)
    assert calc_diff(out[defined], ref[defined]) <= TOLERANCE[("fp8_gemm", torch.float16)]


CONSUMER_SOURCE = r"""
// Copies each 64-row block of out into copy as soon as signal says it is final (one CTA per expert).
extern "C" __global__ void consume(const unsigned short* out, unsigned short* copy, const int* signal,
                                   const int* masked, int max_m, int n, int threshold) {
  const int e = blockIdx.x;
  const int blocks = (max_m + 63) / 64;
  const int rows = min(masked[e], max_m);
  for (int blk = 0; blk * 64 < rows; ++blk) {
    if (threadIdx.x == 0) {
      int v;
      int spins = 0;  // a broken signal fails the test (NaN in the copy) instead of hanging it
      do {
        asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(signal + e * blocks + blk) : "memory");
      } while (v < threshold && ++spins < (1 << 22));
    }
    __syncthreads();
    for (int r = blk * 64; r < min(rows, blk * 64 + 64); ++r) {
      for (int c = threadIdx.x; c < n; c += blockDim.x) {
        copy[((long long)e * max_m + r) * n + c] = __ldcg(out + ((long long)e * max_m + r) * n + c);
      }
    }
    __syncthreads();
  }
}
"""


def _load_consumer():
    from cuda.bindings import driver

    from mategemm.jit import nvrtc
    from mategemm.runtime.errors import check

    cubin, lowered, _ = nvrtc.compile_cubin(CONSUMER_SOURCE, "consume", nvrtc.base_options("sm_90a", False))
    module = check(driver.cuModuleLoadData(cubin), "cuModuleLoadData")
    return module, check(driver.cuModuleGetFunction(module, lowered.encode()), "cuModuleGetFunction")


def test_masked_overlap_signal_consumer_reads_only_final_rows():
    """A consumer kernel on another stream, launched while the GEMM runs, polls the signal and
    copies each 64-row block once it is final: its copy equals the final output (the poison, NaN,
    shows if it read a block early)."""
    from cuda.bindings import driver

    from mategemm.runtime.errors import check

    e, max_m, n, k = 8, 512, 4096, 7168
    blocks = max_m // 64
    a, sfa = moe.make_tokens(e * max_m, k)
    a, sfa = a.view(e, max_m, k), sfa.view(e, max_m, k // 128)
    b, sfb = moe.make_expert_weights(e, n, k)
    masked_m = torch.tensor([512, 100, 0, 193, 64, 65, 511, 1], dtype=torch.int32, device="cuda")
    out = torch.full((e, max_m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    copy = torch.full_like(out, float("nan"))
    signal = torch.zeros(e * blocks, dtype=torch.int32, device="cuda")
    module, consume = _load_consumer()
    mategemm.masked_moe_gemm_8bit((a, sfa), (b, sfb), masked_m, torch.empty_like(out), enable_overlap=True)  # compile
    side = torch.cuda.Stream()
    torch.cuda.synchronize()
    mategemm.set_num_mp(100)  # leave SMs for the consumer
    try:
        _, got_signal, block_m, threshold = mategemm.masked_moe_gemm_8bit(
            (a, sfa), (b, sfb), masked_m, out, enable_overlap=True, signal=signal)
        args = [ctypes.c_void_p(out.data_ptr()), ctypes.c_void_p(copy.data_ptr()),
                ctypes.c_void_p(signal.data_ptr()), ctypes.c_void_p(masked_m.data_ptr()), ctypes.c_int(max_m),
                ctypes.c_int(n), ctypes.c_int(threshold)]
        params = (ctypes.c_void_p * len(args))(*[ctypes.addressof(x) for x in args])
        check(driver.cuLaunchKernel(consume, e, 1, 1, 256, 1, 1, 0, driver.CUstream(side.cuda_stream),
                                    ctypes.addressof(params), 0), "cuLaunchKernel")
        torch.cuda.synchronize()
    finally:
        mategemm.set_num_mp(None)
        check(driver.cuModuleUnload(module), "cuModuleUnload")
    assert got_signal is signal and block_m == 64 and threshold >= 1
    ref = moe.masked_reference(a, sfa, b, sfb, masked_m.cpu())
    check_rows(out, ref, "overlap output")
    defined = torch.isfinite(ref).all(dim=-1)
    assert torch.equal(copy[defined], out[defined]), "the consumer read a block before it was final"
    assert torch.isnan(copy[~defined].float()).all()
    counters = signal.view(e, blocks).cpu()
    for g, rows in enumerate(masked_m.tolist()):
        live = -(-rows // 64)
        assert (counters[g, :live] == threshold).all() and (counters[g, live:] == 0).all(), counters[g]


@pytest.mark.parametrize("major", ("M", "K", "M-copied", "M-in-kernel", "K-overlap"))
@pytest.mark.parametrize("counts", ([256, 0, 128, 384], [0, 0, 1024], [128] * 12))
def test_ragged_k(major, counts, monkeypatch):
    if major == "K-overlap":  # with the second scratch accumulator (off by default in ragged K)
        monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", "overlap=1")
        major = "K"
    elif major != "K" and major != "M":  # force either way of reading M/N-major operands
        monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", "transpose=0" if major == "M-copied" else "transpose=1")
        major = "M"
    m, n = 320, 512
    sum_k = sum(counts) + 128  # a spare block past the last expert: never read
    a, sfa = moe.make_k_grouped_operand(sum_k, m)
    b, sfb = moe.make_k_grouped_operand(sum_k, n)
    if major == "K":
        a, b = moe.k_major(a), moe.k_major(b)
    out = torch.randn((len(counts), m, n), dtype=torch.float32, device="cuda")
    init = out.clone()
    info = torch.tensor(counts, dtype=torch.int32, device="cuda")
    got = mategemm.ragged_k_moe_gemm_8bit((a, sfa), (b, sfb), info, out, major_a_mode=major,
                                          major_b_mode="N" if major == "M" else "K")
    assert got is out
    ref = moe.ragged_k_reference(a, sfa, b, sfb, counts, init)
    diff = calc_diff(out, ref)
    assert diff <= 1e-6, f"ragged K {counts} {major}: calc_diff {diff:.3e}"
    for e, c in enumerate(counts):
        if c == 0:
            assert torch.equal(out[e], init[e]), "an empty expert's output changed"


@pytest.mark.parametrize("m,n", [(320, 512), (100, 200), (36, 72), (38, 136)])
def test_ragged_k_scales_by_bulk_copies_match_the_scale_warps(m, n, monkeypatch):
    """K-major operands with MN-major scales: each stage's scale rows by bulk copies (partial tiles
    along M and N; m = 38 cannot, and takes the scale warps) give the reference and, bit for bit,
    what the scale warps give (MATEGEMM_FORCE_CONFIG tma_scales=0)."""
    counts = [256, 0, 384, 128]
    sum_k = sum(counts)
    a, sfa = moe.make_k_grouped_operand(sum_k, m)
    b, sfb = moe.make_k_grouped_operand(sum_k, n)
    a, b = moe.k_major(a), moe.k_major(b)
    info = torch.tensor(counts, dtype=torch.int32, device="cuda")
    outs = []
    for force in ("", "tma_scales=0"):
        monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", force)
        out = torch.full((len(counts), m, n), 0.5, dtype=torch.float32, device="cuda")
        outs.append(mategemm.ragged_k_moe_gemm_8bit((a, sfa), (b, sfb), info, out, major_a_mode="K",
                                                    major_b_mode="K"))
    ref = moe.ragged_k_reference(a, sfa, b, sfb, counts, torch.full_like(outs[0], 0.5))
    diff = calc_diff(outs[0], ref)
    assert diff <= 1e-6, f"ragged K scales by bulk copies, m={m} n={n}: calc_diff {diff:.3e}"
    assert torch.equal(outs[0], outs[1]), "bulk-copied scales and the scale warps' differ"


def test_ragged_k_host_counts_checked():
    a, sfa = moe.make_k_grouped_operand(256, 128)
    b, sfb = moe.make_k_grouped_operand(256, 128)
    out = torch.zeros((2, 128, 128), dtype=torch.float32, device="cuda")
    with pytest.raises(ValueError, match="multiple of 128"):
        mategemm.ragged_k_moe_gemm_8bit((a, sfa), (b, sfb), torch.tensor([100, 156], dtype=torch.int32), out)
    mategemm.ragged_k_moe_gemm_8bit((a, sfa), (b, sfb), torch.tensor([128, 128], dtype=torch.int32), out)
    ref = moe.ragged_k_reference(a, sfa, b, sfb, [128, 128], torch.zeros_like(out))
    assert calc_diff(out, ref) <= 1e-6
