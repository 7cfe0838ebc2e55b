"""How a dense (1,128,128) GEMM's A scales reach the kernel: the plan's choice (scale warps, TMA,
or a copy into a TMA-readable layout first) and, on CPU tensors through the whole call path up to
the recorded launch, the copy itself."""
import pytest
import torch

import mategemm
from mategemm import gemm, plan
from mategemm.runtime.device import SM90_NO_DEVICE
from mategemm.testing import make_fp8_gemm_inputs
from mategemm.types import RECIPE_1x128_1x128, RECIPE_1x128_128x128, GemmProblem
from test_warm_path import stubbed  # noqa: F401 - the fixture

E4M3 = torch.float8_e4m3fn


def dense_plan(k=7168, recipe=RECIPE_1x128_128x128, readable=True, force="", m=4096, n=2112):
    problem = GemmProblem(m, n, k, recipe, E4M3, E4M3, torch.bfloat16)
    return plan.dense(problem, SM90_NO_DEVICE, force=force, a_scales_tma=readable)


@pytest.mark.parametrize("readable,force,by_tma,copy", [
    (True, "", True, False), (False, "", True, True),
    (True, "tma_scales=0", False, False), (False, "tma_scales=0", False, False),
    (True, "tma_scales=2", True, False), (False, "tma_scales=2", True, True),
])
def test_the_plan_picks_the_scale_path(readable, force, by_tma, copy):
    p = dense_plan(readable=readable, force=force)
    assert (p.problem.tma_scales, p.copy_a_scales) == (by_tma, copy)
    assert p.spec.name_expr.endswith(", true>" if by_tma else ", false>")


@pytest.mark.parametrize("m,n,k,copied", [
    (4096, 2112, 7168, True), (4096, 24576, 1536, True), (4096, 7168, 16384, True),
    (4096, 32768, 512, False), (4096, 576, 7168, False), (128, 7168, 16384, False), (1, 4096, 7168, False),
])
def test_scales_tma_cannot_read_are_copied_only_where_that_pays(m, n, k, copied):
    """As measured on the H200: the copy pays at compute-bound sizes with 12 or more K blocks; the
    scale warps serve decode sizes, few K blocks and small problems. Readable scales always go by TMA."""
    p = dense_plan(k, readable=False, m=m, n=n)
    assert (p.problem.tma_scales, p.copy_a_scales) == (copied, copied)
    assert dense_plan(k, readable=True, m=m, n=n).problem.tma_scales


@pytest.mark.parametrize("k,recipe", [(32768 + 128, RECIPE_1x128_128x128), (7168, RECIPE_1x128_1x128)])
@pytest.mark.parametrize("force", ("", "tma_scales=2"))
def test_scale_warps_where_tma_cannot_serve(k, recipe, force):
    """K past the tile's B scale buffer, or per-column B scales: never by TMA, never copied."""
    p = dense_plan(k, recipe, readable=True, force=force)
    assert not p.problem.tma_scales and not p.copy_a_scales


def test_a_bad_forced_value_is_named():
    with pytest.raises(ValueError, match="tma_scales must be 0, 1 or 2"):
        dense_plan(force="tma_scales=3")


@pytest.mark.parametrize("m,major", [(333, "K"), (64, "K"), (333, "MN")])
def test_forced_copy_feeds_the_kernel_a_tma_readable_workspace(stubbed, monkeypatch, m, major):  # noqa: F811
    """tma_scales=2 with scales TMA cannot read: before each launch they are copied into rows of
    m floats padded to a multiple of 4, and the kernel is given the workspace."""
    _, kernel = stubbed
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", "tma_scales=2")
    a, b, sa, sb = make_fp8_gemm_inputs(m, 256, 640, scale_major_mode=major, device="cpu")
    for scale in (1.0, 2.0):  # a warm call copies the new values again
        sa.mul_(scale)
        mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, scale_major_mode=major)
        (call,) = gemm._warm._calls.values()
        (copy,) = call.staged
        ptr, stride_m, stride_k = kernel.launches[-1][1][4:7]
        assert (ptr, stride_m, stride_k) == (copy.workspace.data_ptr(), 1, -(-m // 4) * 4)
        assert ptr % 16 == 0 and torch.equal(copy.workspace, sa.t() if major == "K" else sa)


def test_readable_scales_are_read_where_they_are(stubbed, monkeypatch):  # noqa: F811
    _, kernel = stubbed
    a, b, sa, sb = make_fp8_gemm_inputs(64, 256, 640, scale_major_mode="MN", device="cpu")
    mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, scale_major_mode="MN")
    (call,) = gemm._warm._calls.values()
    assert call.staged == () and kernel.launches[-1][1][4:7] == (sa.data_ptr(), 1, 64)


@pytest.mark.parametrize("mode", ("per_token", "per_expert", "psum_expert", "masked", "batched"))
@pytest.mark.parametrize("readable", (True, False))
@pytest.mark.parametrize("force", ("", "tma_scales=2", "tma_scales=0"))
@pytest.mark.parametrize("rows", (4096, 1024))
def test_grouped_scales_by_tma_where_the_copy_pays(mode, readable, force, rows):
    """The grouped modes whose tokens are one stack load A's scales by TMA (copied first unless
    readable) where the copy pays for the rows they compute (masked: experts x max_m), or with
    tma_scales=2; the scale warps otherwise, and always with tma_scales=0."""
    problem = GemmProblem(rows, 2112, 7168, RECIPE_1x128_128x128, E4M3, E4M3, torch.bfloat16, mode, 8)
    p = plan.grouped_gemm(problem, SM90_NO_DEVICE, alignment_m=128 if mode == "per_token" else 0, max_m=rows // 8,
                          force=force, a_scales_tma=readable)
    pays = plan.a_scales_copy_pays(rows, 2112, 7168)
    assert pays == (rows == 4096)
    by_tma = mode in plan.TMA_SCALE_MODES and (force == "tma_scales=2" or (force == "" and pays))
    assert (p.problem.tma_scales, p.copy_a_scales) == (by_tma, by_tma and not readable)
    assert p.spec.name_expr.endswith(", true>" if by_tma else ", false>")


def test_masked_scales_by_tma_follow_the_expected_tokens():
    """Masked: the rows the copy must pay for are the experts' expected tokens, not their max_m."""
    problem = GemmProblem(8 * 4096, 2112, 7168, RECIPE_1x128_128x128, E4M3, E4M3, torch.bfloat16, "masked", 8)
    full = plan.grouped_gemm(problem, SM90_NO_DEVICE, max_m=4096)
    decode = plan.grouped_gemm(problem, SM90_NO_DEVICE, max_m=4096, expect_tokens=16)
    assert full.problem.tma_scales and not decode.problem.tma_scales


def test_grouped_forced_copy_feeds_the_kernel_a_workspace(stubbed, monkeypatch):  # noqa: F811
    """ragged_m with tma_scales=2 and K-major scales: the staged copy fills an MN-major workspace
    the launch reads; a warm call copies the new values again."""
    from mategemm import moe
    from mategemm.testing import moe as moe_testing

    _, kernel = stubbed
    monkeypatch.setattr(moe, "_warm", type(moe._warm)())
    monkeypatch.setenv("MATEGEMM_FORCE_CONFIG", "tma_scales=2")
    counts, info = [5, 0, 70], moe_testing.packed_layout([5, 0, 70], device="cpu")[0]
    a, sfa = moe_testing.make_tokens(sum(counts), 256, device="cpu")
    b, sfb = moe_testing.make_expert_weights(3, 256, 256, (1, 128, 128), device="cpu")
    out = torch.empty((sum(counts), 256), dtype=torch.bfloat16)
    for scale in (1.0, 3.0):
        sfa.mul_(scale)
        mategemm.ragged_m_moe_gemm_8bit((a, sfa), (b, sfb), info, out, gemm_mode="per_expert")
        (call,) = moe._warm._calls.values()
        copy = next(c for c in call.staged if hasattr(c, "workspace"))
        ptr, stride_m, stride_k = kernel.launches[-1][1][4:7]
        assert (ptr, stride_m, stride_k) == (copy.workspace.data_ptr(), 1, 76)
        assert torch.equal(copy.workspace, sfa.t())


@pytest.mark.parametrize("block_m", (64, 128, 256))
@pytest.mark.parametrize("rows_checked", (False, True))
def test_tma_scale_boxes_start_aligned_and_cover_the_tile(block_m, rows_checked):
    """A's scale boxes start on 16 bytes (4 floats; TMA faults otherwise) wherever a tile of the
    grouped M modes starts, stay within TMA's 256 rows, and cover the tile's rows within the
    stage's scale rows (GemmSmemLayout::scale_box_row, as the kernel computes it)."""
    from mategemm.heuristics import fp8_gemm
    from mategemm.types import tma_scale_boxes

    box_rows, boxes = tma_scale_boxes(block_m, rows_checked)
    step = block_m // boxes
    stage_rows = block_m + box_rows - step
    assert box_rows <= 256 and box_rows % 4 == 0 and step % 4 == 0
    # a stage: A and B tiles, the scale rows (TMA writes 128-byte aligned boxes), two barriers
    stage_bytes = (fp8_gemm.smem_bytes(block_m, 128, 4, 128, tma_scales=True, rows_checked=rows_checked)
                   - fp8_gemm.smem_bytes(block_m, 128, 3, 128, tma_scales=True, rows_checked=rows_checked))
    scale_bytes = stage_bytes - (block_m + 128) * 128 - 2 * 8
    assert scale_bytes >= stage_rows * 4 and scale_bytes % (128 if rows_checked else 16) == 0
    for a_row0 in range(0, 3 * block_m, 1 if rows_checked else block_m):
        first = a_row0 & ~3 if rows_checked else a_row0
        starts = [first + c * step for c in range(boxes)]
        assert all(s % 4 == 0 for s in starts)
        covered = set().union(*(range(s, s + box_rows) for s in starts))
        assert set(range(a_row0, a_row0 + block_m)) <= covered
        assert a_row0 - first + block_m <= stage_rows


def ragged_k_plan(readable=True, force="", m=4096, n=2048, mn_major=0):
    problem = GemmProblem(m, n, 8 * 2048, RECIPE_1x128_1x128, E4M3, E4M3, torch.float32, "ragged_k", 8,
                          mn_major=mn_major)
    return plan.grouped_gemm(problem, SM90_NO_DEVICE, force=force, a_scales_tma=readable)


@pytest.mark.parametrize("readable,force,mn_major,bulk", [
    (True, "", 0, True), (True, "tma_scales=2", 0, True), (True, "tma_scales=0", 0, False),
    (False, "", 0, False), (False, "tma_scales=2", 0, False), (True, "", 3, False),
])
def test_ragged_k_copies_its_scales_with_each_stage_where_readable(readable, force, mn_major, bulk):
    """Both operands' scale rows by bulk copies where given readable (never copied first); the scale
    warps with tma_scales=0, with scales the copies cannot read, and beside operands transposed in
    the kernel."""
    p = ragged_k_plan(readable, force, mn_major=mn_major)
    assert (p.problem.tma_scales, p.copy_a_scales) == (bulk, False)
    assert not p.config.overlap  # ragged K's default: the last argument
    assert p.spec.name_expr.endswith((", true" if bulk else ", false") + ", false>")


@pytest.mark.parametrize("m,n,offset,strides,readable", [
    (4096, 2048, 0, ((1, 4096), (1, 2048)), True),
    (4100, 2048, 0, ((1, 4100), (1, 2048)), True),
    (4098, 2048, 0, ((1, 4100), (1, 2048)), False),   # a row of m floats is no multiple of 16 bytes
    (4096, 2050, 0, ((1, 4096), (1, 2052)), False),
    (4096, 2048, 4, ((1, 4096), (1, 2048)), False),   # not 16-byte aligned
    (4096, 2048, 0, ((16, 1), (1, 2048)), False),     # K-major scales
    (4096, 2048, 0, ((1, 4098), (1, 2048)), False),   # rows 4098 floats apart
])
def test_ragged_k_scales_bulk_readable(m, n, offset, strides, readable):
    assert plan.ragged_k_scales_bulk_readable(strides[0], 4096 + offset, m, strides[1], 8192, n) == readable


def test_ragged_k_call_plans_bulk_scales_as_given(stubbed, monkeypatch):  # noqa: F811
    """Through the call path: MN-major scales with aligned rows take the bulk-copy instance and are
    passed where they lie; rows of 38 floats (no multiple of 16 bytes) take the scale warps."""
    from mategemm import moe
    from mategemm.kernels import sm90_fp8_gemm_blockscaled as kernel_fp8
    from mategemm.testing import moe as moe_testing

    _, kernel = stubbed
    specs = []
    monkeypatch.setattr(kernel_fp8, "load", lambda spec, *args, **kwargs: specs.append(spec) or kernel)
    for m, bulk in ((64, True), (38, False)):
        monkeypatch.setattr(moe, "_warm", type(moe._warm)())
        a, sfa = moe_testing.make_k_grouped_operand(256, m, device="cpu")
        b, sfb = moe_testing.make_k_grouped_operand(256, 128, device="cpu")
        out = torch.zeros((2, m, 128), dtype=torch.float32)
        mategemm.ragged_k_moe_gemm_8bit((moe_testing.k_major(a), sfa), (moe_testing.k_major(b), sfb),
                                        torch.tensor([128, 128], dtype=torch.int32), out, major_a_mode="K",
                                        major_b_mode="K")
        assert specs[-1].name_expr.endswith((", true" if bulk else ", false") + ", false>")  # tma_scales, overlap
        assert kernel.launches[-1][1][4:7] == (sfa.data_ptr(), 1, m)
