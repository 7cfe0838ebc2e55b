"""mategemm.deep_gemm on the GPU: DeepGEMM's names give the references' results, d in place, the
contiguous layout's padding rows zeroed (FP8 and BF16 grouped names), the einsum forms on DeepGEMM's
test shapes (views included), the indexer in DeepGEMM's SM90 MQA cases (bf16 logits, head_dim 32/64,
20 runs bit for bit); its layout helpers and bench_kineto on CUDA tensors."""
import pytest
import torch

import mategemm.deep_gemm as dg
from mategemm.testing import fp8_gemm_reference, make_fp8_gemm_inputs, moe
from mategemm.testing import indexer as indexer_ref
from mategemm.testing.numerics import TOLERANCE, calc_diff

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TOL = TOLERANCE[("fp8_gemm", torch.bfloat16)]


# (4096, 7168, 2112), (4096, 7168, 576): DeepGEMM's dgrad shapes, K not a multiple of 128.
@pytest.mark.parametrize("m,n,k", [(1, 2112, 7168), (128, 576, 7168), (4096, 4096, 7168), (300, 7168, 2048),
                                   (4096, 7168, 2112), (4096, 7168, 576)])
@pytest.mark.parametrize("tma_aligned_sfa", (False, True))
def test_fp8_gemm_nt_block_recipe(m, n, k, tma_aligned_sfa):
    a, b, sa, sb = make_fp8_gemm_inputs(m, n, k)
    if tma_aligned_sfa:  # as DeepGEMM's callers pass them: A's scales then go by TMA
        sa = dg.get_mn_major_tma_aligned_tensor(sa)
    d = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    assert dg.fp8_gemm_nt((a, sa), (b, sb), d, disable_ue8m0_cast=True) is None
    assert calc_diff(d, fp8_gemm_reference(a, b, sa, sb)) <= TOL


@pytest.mark.parametrize("m,n,k", [(128, 256, 1024), (4096, 2048, 512)])
def test_fp8_gemm_nt_accumulates_into_fp32(m, n, k):
    recipe = (1, 1, 128)
    a, b, sa, sb = make_fp8_gemm_inputs(m, n, k, recipe)
    d = torch.randn((m, n), device="cuda") * 32
    expected = d.double() + fp8_gemm_reference(a, b, sa, sb, recipe).double()
    dg.fp8_gemm_nt((a, sa), (b, sb), d, c=d, recipe=recipe)
    assert calc_diff(d, expected) <= TOL


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_bf16_gemm_nt_accumulates(out_dtype):
    m, n, k = 4096, 2112, 7168
    a = torch.randn((m, k), device="cuda", dtype=torch.bfloat16)
    b = torch.randn((n, k), device="cuda", dtype=torch.bfloat16)
    d = torch.randn((m, n), device="cuda").to(out_dtype)
    expected = d.double() + a.double() @ b.double().t()
    dg.bf16_gemm_nt(a, b, d, c=d)
    assert calc_diff(d, expected) <= 1e-5


def test_bf16_gemm_tn_with_mn_major_operands():
    m, n, k = 1024, 768, 4096
    a = torch.randn((k, m), device="cuda", dtype=torch.bfloat16)  # (k, m) and (k, n): weight-gradient form
    b = torch.randn((k, n), device="cuda", dtype=torch.bfloat16)
    d = torch.empty((m, n), device="cuda")
    dg.bf16_gemm_tn(a, b, d)
    assert calc_diff(d, a.double().t() @ b.double()) <= 1e-5


def test_m_grouped_masked():
    groups, max_m, n, k = 6, 256, 1024, 2048
    a, sfa = moe.make_tokens(groups * max_m, k)
    a, sfa = a.view(groups, max_m, k), sfa.view(groups, max_m, -1)
    b, sfb = moe.make_expert_weights(groups, n, k)
    masked_m = torch.tensor([0, 1, 20, 128, 200, 256], dtype=torch.int32, device="cuda")
    d = torch.full((groups, max_m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    dg.m_grouped_fp8_gemm_nt_masked((a, sfa), (b, sfb), d, masked_m, 120)
    ref = moe.masked_reference(a, sfa, b, sfb, masked_m)
    rows = torch.isfinite(ref).all(dim=-1)
    assert calc_diff(d[rows], ref[rows]) <= TOL and d[~rows].isnan().all()


def test_m_grouped_contiguous_writes_zero_padding_rows():
    counts, n, k = [100, 0, 300, 128, 1], 512, 1024
    layout, _ = moe.per_token_layout(counts, dg.get_mk_alignment_for_contiguous_layout())
    a, sfa = moe.make_tokens(layout.numel(), k)
    b, sfb = moe.make_expert_weights(len(counts), n, k)
    d = torch.full((layout.numel(), n), float("nan"), dtype=torch.bfloat16, device="cuda")
    dg.m_grouped_fp8_gemm_nt_contiguous((a, sfa), (b, sfb), d, layout, disable_ue8m0_cast=True)
    ref = moe.ragged_m_reference(a, sfa, b, sfb, layout, "per_token").nan_to_num(0.0)
    assert calc_diff(d, ref) <= TOL and torch.equal(d[layout < 0], torch.zeros_like(d[layout < 0]))


def psum_layout(counts, alignment=128):
    """DeepGEMM's psum layout of `counts`: each group's row end (its start: the previous end rounded
    up to `alignment`), and rows enough for all of it plus one spare tile."""
    ends, start = [], 0
    for c in counts:
        ends.append(start + c)
        start = -(-(start + c) // alignment) * alignment
    return torch.tensor(ends, dtype=torch.int32, device="cuda"), start + alignment


def test_m_grouped_contiguous_psum_layout():
    counts, n, k = [100, 0, 300, 1], 512, 1024
    psum, rows = psum_layout(counts)
    a, sfa = moe.make_tokens(rows, k)
    b, sfb = moe.make_expert_weights(len(counts), n, k)
    d = torch.full((rows, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    dg.m_grouped_fp8_gemm_nt_contiguous((a, sfa), (b, sfb), d, psum, use_psum_layout=True,
                                        expected_m_for_psum_layout=100)
    ids = dg.gemm.psum_row_groups(psum, rows, 128)
    ref = moe.ragged_m_reference(a, sfa, b, sfb, ids, "per_token")
    live = ids >= 0
    assert calc_diff(d[live], ref[live]) <= TOL and d[~live].isnan().all()


def test_k_grouped_contiguous():
    ks, m, n, recipe = [256, 0, 1024, 128], 512, 384, (1, 1, 128)
    groups = [make_fp8_gemm_inputs(m, n, k, recipe) if k else None for k in ks]
    a = torch.cat([g[0].reshape(-1) for g in groups if g])
    b = torch.cat([g[1].reshape(-1) for g in groups if g])
    sfa = torch.cat([g[2] for g in groups if g], dim=1)  # (m, sum_k/128)
    sfb = torch.cat([g[3] for g in groups if g], dim=1)
    d = torch.randn((len(ks), m, n), device="cuda")
    expected = d.double().clone()
    for i, g in enumerate(groups):
        if g:
            expected[i] += fp8_gemm_reference(*g, recipe).double()
    layout = torch.tensor(ks, dtype=torch.int32, device="cuda")
    dg.k_grouped_fp8_gemm_nt_contiguous((a, sfa), (b, sfb), d, ks, layout, c=d)
    assert calc_diff(d, expected) <= TOL


def _bf16(*shape):
    return torch.randn(shape, device="cuda").to(torch.bfloat16)


def _grouped_rows_reference(a, b, row_groups):
    """float64 a[r] @ b[row_groups[r]]^T, zeros where row_groups is -1."""
    ref = torch.zeros((a.shape[0], b.shape[1]), dtype=torch.float64, device=a.device)
    for g in range(b.shape[0]):
        rows = row_groups == g
        ref[rows] = a[rows].double() @ b[g].double().t()
    return ref


@pytest.mark.parametrize("nn_form", [False, True])
def test_m_grouped_bf16_contiguous(nn_form):
    counts, n, k = [100, 0, 300, 128, 1], 512, 1024
    layout, _ = moe.per_token_layout(counts, dg.get_mk_alignment_for_contiguous_layout())
    a, b = _bf16(layout.numel(), k), _bf16(len(counts), n, k)
    d = torch.full((layout.numel(), n), float("nan"), dtype=torch.bfloat16, device="cuda")
    if nn_form:
        dg.m_grouped_bf16_gemm_nn_contiguous(a, b.transpose(1, 2).contiguous(), d, layout)
    else:
        dg.m_grouped_bf16_gemm_nt_contiguous(a, b, d, layout)
    live = layout >= 0
    ref = _grouped_rows_reference(a, b, layout)
    assert calc_diff(d, ref) <= 1e-5 and torch.equal(d[~live], torch.zeros_like(d[~live]))


def test_m_grouped_bf16_contiguous_psum_layout():
    counts, n, k = [100, 0, 300, 1], 256, 512
    psum, rows = psum_layout(counts)
    a, b = _bf16(rows, k), _bf16(len(counts), n, k)
    d = torch.full((rows, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    dg.m_grouped_bf16_gemm_nt_contiguous(a, b, d, psum, use_psum_layout=True, expected_m_for_psum_layout=100)
    ids = dg.gemm.psum_row_groups(psum, rows, 128)
    live = ids >= 0
    ref = _grouped_rows_reference(a, b, ids)
    assert calc_diff(d[live], ref[live]) <= 1e-5 and d[~live].isnan().all()


def test_m_grouped_bf16_masked():
    groups, max_m, n, k = 6, 256, 1024, 2048
    a, b = _bf16(groups, max_m, k), _bf16(groups, n, k)
    masked_m = torch.tensor([0, 1, 20, 128, 200, 256], dtype=torch.int32, device="cuda")
    d = torch.full((groups, max_m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    dg.m_grouped_bf16_gemm_nt_masked(a, b, d, masked_m, 120)
    for g, count in enumerate(masked_m.tolist()):
        if count:
            assert calc_diff(d[g, :count], a[g, :count].double() @ b[g].double().t()) <= 1e-5
        assert d[g, count:].isnan().all()


def test_k_grouped_bf16_tn():
    ks, m, n = [256, 0, 1024, 128], 512, 384
    a, b = _bf16(sum(ks), m), _bf16(sum(ks), n)  # (sum_k, m), (sum_k, n): the tn form
    c = torch.randn((len(ks), m, n), device="cuda") * 32
    d = c  # DeepGEMM's tests accumulate in place
    expected = c.double().clone()
    start = 0
    for i, kk in enumerate(ks):
        expected[i] += a[start:start + kk].double().t() @ b[start:start + kk].double()
        start += kk
    layout = torch.tensor(ks, dtype=torch.int32, device="cuda")
    dg.k_grouped_bf16_gemm_tn_contiguous(a, b, d, ks, layout, c)
    assert calc_diff(d, expected) <= 1e-5


@pytest.mark.parametrize("m,n", [(128, 8192), (4096, 32768)])
def test_skip_head_mid(m, n):
    left, mid, right = 128, 64, 128
    a, b, sa, sb = make_fp8_gemm_inputs(m, n, 512)
    heads = n // (left + right)
    d = torch.full((m, heads * (left + mid + right)), float("nan"), dtype=torch.bfloat16, device="cuda")
    dg.fp8_gemm_nt_skip_head_mid((a, sa), (b, sb), d, (left, mid, right))
    ref = fp8_gemm_reference(a, b, sa, sb).view(m, heads, left + right)
    out = d.view(m, heads, left + mid + right)
    assert calc_diff(torch.cat([out[:, :, :left], out[:, :, left + mid:]], dim=2), ref) <= TOL
    assert out[:, :, left:left + mid].isnan().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,n,k", [(128, 384, 128), (256, 256, 256), (384, 128, 384), (1, 8, 64), (200, 72, 40)])
@pytest.mark.parametrize("s", [1, 129, 2048])
def test_einsum_bmk_bnk_mn(s, m, n, k, dtype):
    a = torch.randn((s, m, k), device="cuda", dtype=torch.bfloat16)
    b = torch.randn((s, n, k), device="cuda", dtype=torch.bfloat16)
    d = torch.randn((m, n), device="cuda").to(dtype)
    c = d if dtype == torch.float32 else None  # float32 accumulates into d; bf16 is written
    expected = torch.einsum("bmk,bnk->mn", a.double(), b.double()) + (0 if c is None else d.double())
    assert dg.einsum("bmk,bnk->mn", a, b, d, c=c) is None
    assert calc_diff(d, expected) <= 1e-5


@pytest.mark.parametrize("b", [1, 4, 37, 512])
@pytest.mark.parametrize("h,r,d", [(128, 512, 128), (8, 4096, 1024)])
@pytest.mark.parametrize("expr", ["bhr,hdr->bhd", "bhd,hdr->bhr"])
def test_einsum_per_head(expr, h, r, d, b):
    x = torch.randn((b, h, r if expr == "bhr,hdr->bhd" else d), device="cuda", dtype=torch.bfloat16)
    y = torch.randn((h, d, r + 128), device="cuda", dtype=torch.bfloat16)[:, :, :r]  # a view, as DeepGEMM's test
    z = torch.full((b, h, d if expr == "bhr,hdr->bhd" else r), float("nan"), device="cuda", dtype=torch.bfloat16)
    expected = torch.einsum(expr, x.double(), y.double())
    dg.einsum(expr, x, y, z)
    assert calc_diff(z, expected) <= 1e-5
    z.fill_(float("nan"))
    dg.einsum(expr, x, y, z, use_cublaslt=True)
    assert calc_diff(z, expected) <= 1e-5


@pytest.mark.parametrize("b", [1, 4, 33, 512])
def test_fp8_einsum_bhr_hdr_bhd(b):
    h, r, d = 8, 1024, 512
    x = torch.randn((b, h, r), device="cuda", dtype=torch.bfloat16)
    y = torch.randn((h, d, r), device="cuda", dtype=torch.bfloat16)
    x_fp8, sx = dg.per_token_cast_to_fp8(x.view(-1, r), use_ue8m0=True)
    x_fp8, sx = x_fp8.view(b, h, r), sx.view(b, h, r // 128)
    y_fp8 = torch.empty_like(y, dtype=torch.float8_e4m3fn)
    sy = torch.empty((h, d // 128, r // 128), device="cuda")
    for i in range(h):
        y_fp8[i], sy[i] = dg.per_block_cast_to_fp8(y[i], use_ue8m0=True)
    z = torch.full((b, h, d), float("nan"), device="cuda", dtype=torch.bfloat16)
    assert dg.fp8_einsum("bhr,hdr->bhd", (x_fp8, sx), (y_fp8, sy), z) is None
    expected = torch.stack([fp8_gemm_reference(x_fp8[:, i], y_fp8[i], sx[:, i], sy[i]) for i in range(h)], dim=1)
    assert calc_diff(z, expected) <= TOL
    assert calc_diff(z, torch.einsum("bhr,hdr->bhd", x.double(), y.double())) < 1e-3  # DeepGEMM's bound


def check_logits(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """The visible positions (finite in the reference) within the tolerance of got's dtype; -inf where
    the reference has -inf (clean logits)."""
    visible = torch.isfinite(want)
    assert torch.equal(torch.isneginf(got) & ~visible, torch.isneginf(want)), f"{what}: -inf positions"
    diff = calc_diff(got[visible].double(), want[visible].double())
    assert diff <= TOLERANCE[("mqa_logits", got.dtype)], f"{what}: calc_diff {diff:.2e}"


def assert_20_runs_identical(run, visible: torch.Tensor, what: str) -> None:
    """DeepGEMM's self-consistency check: 20 more runs give the same bits where positions are visible."""
    first = run().masked_fill(~visible, 0)
    for _ in range(20):
        dg.testing.assert_bitwise_equal(run().masked_fill(~visible, 0), first, what)


# DeepGEMM's SM90 MQA cases: heads 32 and 64, head_dim 32, 64 and 128, float32 and bfloat16 logits,
# (compressed, clean) in {(False, True), (True, False)} (shorter sequences than its tests)
@pytest.mark.parametrize("logits_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("compressed,clean", [(False, True), (True, False)])
@pytest.mark.parametrize("heads", [32, 64])
@pytest.mark.parametrize("head_dim", [32, 64, 128])
def test_fp8_fp4_mqa_logits(head_dim, heads, compressed, clean, logits_dtype):
    gen = torch.Generator(device="cuda").manual_seed(head_dim + heads + compressed)
    case = indexer_ref.make_prefill_case(1024, 4096, heads, generator=gen, device="cuda", causal_chunks=True,
                                         head_dim=head_dim)
    max_seqlen_k = case["max_seqlen_k"] if compressed else 0
    args = ((case["q"], None), case["kv"], case["weights"], case["ks"], case["ke"], clean, max_seqlen_k,
            logits_dtype)
    got = dg.fp8_fp4_mqa_logits(*args)
    want = indexer_ref.prefill_reference(case["q"], case["kv"], case["weights"], case["ks"], case["ke"], True,
                                         max_seqlen_k)  # -inf marks the invisible positions
    assert got.dtype == logits_dtype and got.shape == want.shape
    what = f"prefill head_dim={head_dim} heads={heads} compressed={compressed} {logits_dtype}"
    check_logits(got if clean else got.masked_fill(torch.isneginf(want), float("-inf")), want, what)
    assert_20_runs_identical(lambda: dg.fp8_fp4_mqa_logits(*args), torch.isfinite(want), what)


@pytest.mark.parametrize("logits_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("heads", [32, 64])
@pytest.mark.parametrize("next_n", [1, 2])
def test_fp8_fp4_paged_mqa_logits(next_n, heads, logits_dtype):
    """DeepGEMM's SM90 paged cases: head_dim 128, 2-D context lens, unclean logits."""
    gen = torch.Generator(device="cuda").manual_seed(next_n * 100 + heads)
    lens = torch.randint(700, 1300, (64,), generator=torch.Generator().manual_seed(heads)).tolist()
    lens = [[max(n - 5 * (next_n - 1 - j), 1) for j in range(next_n)] for n in lens]
    case = indexer_ref.make_paged_case(len(lens), next_n, heads, lens, generator=gen, device="cuda")
    meta = dg.get_paged_mqa_logits_metadata(case["context_lens"], 64, dg.get_num_sms())
    kwargs = dict(q=(case["q"], None), kv_cache=case["fused_kv_cache"], weights=case["weights"],
                  context_lens=case["context_lens"], block_table=case["block_table"], schedule_meta=meta,
                  max_context_len=case["max_context_len"], clean_logits=False, logits_dtype=logits_dtype, indices=None)
    got = dg.fp8_fp4_paged_mqa_logits(**kwargs)
    want = indexer_ref.paged_reference(case["q"], case["fused_kv_cache"], case["weights"], case["context_lens"],
                                       case["block_table"], case["max_context_len"], clean_logits=True)
    assert got.dtype == logits_dtype and got.shape == want.shape
    what = f"paged next_n={next_n} heads={heads} {logits_dtype}"
    check_logits(got.masked_fill(torch.isneginf(want), float("-inf")), want, what)
    assert_20_runs_identical(lambda: dg.fp8_fp4_paged_mqa_logits(**kwargs), torch.isfinite(want), what)


def test_layout_helpers_on_cuda():
    sf = torch.exp2(torch.randint(-10, 10, (3, 4097, 57), device="cuda").float())
    mn_major = dg.get_mn_major_tma_aligned_tensor(sf)
    assert torch.equal(mn_major, sf) and mn_major.stride() == (4100 * 57, 1, 4100)
    packed = dg.get_mn_major_tma_aligned_packed_ue8m0_tensor(sf)
    assert torch.equal(packed.cpu(), dg.get_mn_major_tma_aligned_packed_ue8m0_tensor(sf.cpu()))


def test_bench_kineto_times_a_gemm():
    a, b, sa, sb = make_fp8_gemm_inputs(4096, 4096, 7168)
    d = torch.empty((4096, 4096), dtype=torch.bfloat16, device="cuda")
    seconds = dg.testing.bench_kineto(lambda: dg.fp8_gemm_nt((a, sa), (b, sb), d), "gemm_", num_tests=5,
                                      suppress_kineto_output=True)
    assert 20e-6 < seconds < 5e-3  # 240 GFLOP of work: about 0.35 ms on an H100/H200
    assert dg.testing.bench_kineto(lambda: None, ("a", "b"), num_tests=2) == (0.0, 0.0)


@pytest.mark.parametrize("m", (13, 4096))
@pytest.mark.parametrize("num_splits", (None, 16))
def test_tf32_hc_prenorm_gemm(m, num_splits, monkeypatch):
    """DeepGEMM's hyperconnection test case: TF32 allowed, calc_diff below 1e-8 against torch's TF32 matmul;
    against float64, d carries TF32's rounding (measured 2e-8 on the H200)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    n, k = 24, 7168
    a = torch.randn((m, k), dtype=torch.bfloat16, device="cuda")
    b = torch.randn((n, k), device="cuda")
    lead = () if num_splits is None else (num_splits,)
    d = torch.full((*lead, m, n), float("nan"), device="cuda")
    s = torch.full((*lead, m), float("nan"), device="cuda")
    dg.tf32_hc_prenorm_gemm(a, b, d, s, num_splits=num_splits)
    final_d, final_s = (d, s) if num_splits is None else (d.sum(0), s.sum(0))
    assert calc_diff(final_d, a.float() @ b.t()) < 1e-8
    assert calc_diff(final_d, a.double() @ b.double().t()) < 1e-6
    assert calc_diff(final_s, a.double().square().sum(-1)) < 1e-8
