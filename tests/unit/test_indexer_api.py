"""The lightning indexer without a GPU: schedule metadata, argument checks, SASS of its kernels."""
import collections
import re

import pytest
import torch

import mategemm
from mategemm import deep_gemm
from mategemm.kernels import sm90_fp8_mqa_logits as kernel
from mategemm.testing import sass

E4M3 = torch.float8_e4m3fn


def walk(meta: torch.Tensor, blocks: list[int]) -> list[list[tuple[int, int]]]:
    """The (request, block) items each SM's CTA visits, as the kernel walks them."""
    rows = meta.tolist()
    visits = []
    for (b, i), (end_b, end_i) in zip(rows[:-1], rows[1:]):
        items = []
        while b < end_b or (b == end_b and i < end_i):
            if i < blocks[b]:
                items.append((b, i))
                i += 1
            else:
                b, i = b + 1, 0
        visits.append(items)
    return visits


@pytest.mark.parametrize("lens,num_mps", [([100, 0, 64, 65, 3000], 4), ([1], 132), ([0, 0, 0], 8),
                                          ([70000, 5, 64 * 7, 1, 2, 3], 13), ([[10, 70], [0, 0], [128, 1]], 3)])
def test_metadata_splits_every_block_once_and_evenly(lens, num_mps):
    context_lens = torch.tensor(lens, dtype=torch.int32)
    meta = mategemm.get_paged_mqa_logits_metadata(context_lens, 64, num_mps)
    assert meta.dtype == torch.int32 and tuple(meta.shape) == (num_mps + 1, 2)
    longest = context_lens if context_lens.dim() == 1 else context_lens.amax(dim=1)
    blocks = [-(-max(n, 0) // 64) for n in longest.tolist()]
    visits = walk(meta, blocks)
    flat = [item for items in visits for item in items]
    assert flat == [(b, i) for b in range(len(blocks)) for i in range(blocks[b])]
    total = sum(blocks)
    assert all(total // num_mps <= len(items) <= -(-total // num_mps) for items in visits)
    assert meta[-1].tolist() == [len(blocks), 0]
    assert torch.equal(deep_gemm.get_paged_mqa_logits_metadata(context_lens, 64, num_mps, indices=None), meta)


def test_metadata_checks_its_arguments():
    lens = torch.tensor([5, 6], dtype=torch.int32)
    with pytest.raises(ValueError, match="block_kv"):
        mategemm.get_paged_mqa_logits_metadata(lens, 128, 4)
    with pytest.raises(TypeError, match="context_lens"):
        mategemm.get_paged_mqa_logits_metadata(lens.long(), 64, 4)
    with pytest.raises(ValueError, match="num_mps"):
        mategemm.get_paged_mqa_logits_metadata(lens, 64, -1)
    with pytest.raises(ValueError, match="context_lens"):
        mategemm.get_paged_mqa_logits_metadata(torch.zeros((2, 2, 2), dtype=torch.int32), 64, 4)


def paged_args(batch=2, next_n=2, heads=64, num_blocks=8):
    q = torch.zeros((batch, next_n, heads, 128), dtype=torch.uint8).view(E4M3)
    cache = torch.zeros((num_blocks, 64, 1, 132), dtype=torch.uint8)
    weights = torch.zeros((batch * next_n, heads))
    lens = torch.tensor([100] * batch, dtype=torch.int32)
    table = torch.zeros((batch, 4), dtype=torch.int32)
    meta = torch.zeros((5, 2), dtype=torch.int32)
    return dict(q=q, fused_kv_cache=cache, weights=weights, context_lens=lens, block_table=table, schedule_meta=meta,
                max_context_len=256, clean_logits=True)


@pytest.mark.parametrize("change,error,match", [
    (dict(q=torch.zeros((2, 2, 64, 128))), TypeError, "q must have dtype"),
    (dict(q=torch.zeros((2, 5, 64, 128), dtype=torch.uint8).view(E4M3)), ValueError, "next_n"),
    (dict(q=torch.zeros((2, 2, 60, 128), dtype=torch.uint8).view(E4M3)), ValueError, "heads"),
    (dict(q=torch.zeros((2, 4, 128, 128), dtype=torch.uint8).view(E4M3)), ValueError, "heads"),
    (dict(q=torch.zeros((2, 2, 64, 64), dtype=torch.uint8).view(E4M3)), ValueError, "index_dim"),
    (dict(fused_kv_cache=torch.zeros((8, 64, 1, 128), dtype=torch.uint8)), ValueError, "fused_kv_cache"),
    (dict(fused_kv_cache=torch.zeros((8, 32, 1, 132), dtype=torch.uint8)), ValueError, "fused_kv_cache"),
    (dict(weights=torch.zeros((4, 32))), ValueError, "weights"),
    (dict(weights=torch.zeros((4, 64), dtype=torch.float16)), TypeError, "weights"),
    (dict(context_lens=torch.tensor([1, 2, 3], dtype=torch.int32)), ValueError, "context_lens"),
    (dict(context_lens=torch.tensor([[1, 2, 3]] * 2, dtype=torch.int32)), ValueError, "context_lens"),
    (dict(block_table=torch.zeros((3, 4), dtype=torch.int32)), ValueError, "block_table"),
    (dict(block_table=torch.zeros((2, 4), dtype=torch.int64)), TypeError, "block_table"),
    (dict(schedule_meta=torch.zeros((5, 3), dtype=torch.int32)), ValueError, "schedule_meta"),
    (dict(max_context_len=0), ValueError, "max_context_len"),
    (dict(max_context_len=2.5), ValueError, "max_context_len"),
    (dict(clean_logits=1), TypeError, "clean_logits"),
    (dict(logits_dtype=torch.float16), TypeError, "logits_dtype must be one of"),
    (dict(logits_dtype="bfloat16"), TypeError, "logits_dtype"),
    (dict(), ValueError, "CUDA"),  # everything right but on the CPU
    (dict(logits_dtype=torch.bfloat16), ValueError, "CUDA"),
])
def test_paged_logits_check_arguments_before_any_launch(change, error, match):
    args = paged_args()
    args.update(change)
    with pytest.raises(error, match=match):
        mategemm.fp8_paged_mqa_logits(**args)


def prefill_args(seq_len=16, heads=32, seq_len_kv=100, head_dim=128):
    q = torch.zeros((seq_len, heads, head_dim), dtype=torch.uint8).view(E4M3)
    k = torch.zeros((seq_len_kv, head_dim), dtype=torch.uint8).view(E4M3)
    return dict(q=q, kv=(k, torch.ones(seq_len_kv)), weights=torch.zeros((seq_len, heads)),
                cu_seq_len_k_start=torch.zeros(seq_len, dtype=torch.int32),
                cu_seq_len_k_end=torch.full((seq_len,), seq_len_kv, dtype=torch.int32))


@pytest.mark.parametrize("change,error,match", [
    (dict(kv=torch.zeros((100, 128))), TypeError, "kv must be a pair"),
    (dict(kv=(torch.zeros((100, 128), dtype=torch.uint8).view(E4M3), torch.ones(99))), ValueError, "kv\\[1\\]"),
    (dict(kv=(torch.zeros((100, 64), dtype=torch.uint8).view(E4M3), torch.ones(100))), ValueError, "kv\\[0\\]"),
    (dict(weights=torch.zeros((16, 64))), ValueError, "weights"),
    (dict(cu_seq_len_k_start=torch.zeros(15, dtype=torch.int32)), ValueError, "cu_seq_len_k_start"),
    (dict(cu_seq_len_k_end=torch.zeros(16, dtype=torch.int64)), TypeError, "cu_seq_len_k_end"),
    (dict(max_seqlen_k=-1), ValueError, "max_seqlen_k"),
    (dict(logits_dtype=torch.float16), TypeError, "logits_dtype must be one of"),
    (dict(logits_dtype=None), TypeError, "logits_dtype"),
    (dict(), ValueError, "CUDA"),
    (dict(logits_dtype=torch.bfloat16), ValueError, "CUDA"),
])
def test_prefill_logits_check_arguments(change, error, match):
    args = prefill_args()
    args.update(change)
    with pytest.raises(error, match=match):
        mategemm.fp8_mqa_logits(**args)


@pytest.mark.parametrize("head_dim", (32, 64))
def test_prefill_takes_small_heads_and_the_paged_form_does_not(head_dim):
    args = prefill_args(head_dim=head_dim)
    with pytest.raises(ValueError, match="CUDA"):  # every check passed but the device's
        mategemm.fp8_mqa_logits(**args, logits_dtype=torch.bfloat16)
    k, k_scale = args["kv"]
    args["kv"] = (torch.zeros((100, 128), dtype=torch.uint8).view(E4M3), k_scale)
    with pytest.raises(ValueError, match="kv\\[0\\] must be \\(seq_len_kv, " + str(head_dim)):
        mategemm.fp8_mqa_logits(**args)
    paged = paged_args()
    paged["q"] = torch.zeros((2, 2, 64, head_dim), dtype=torch.uint8).view(E4M3)
    with pytest.raises(ValueError, match="index_dim must be 128 in the paged form"):
        mategemm.fp8_paged_mqa_logits(**paged)


@pytest.mark.parametrize("head_dim", (16, 96, 256))
def test_prefill_rejects_other_head_dims(head_dim):
    with pytest.raises(ValueError, match=f"head_dim \\(the last dimension\\) must be one of \\(32, 64, 128\\), got "
                                         f"{head_dim}"):
        mategemm.fp8_mqa_logits(**prefill_args(head_dim=head_dim))


@pytest.mark.parametrize("head_dim", kernel.HEAD_DIMS)
def test_stage_ring_fits_shared_memory(head_dim):
    for rows, heads in ((1, 32), (1, 64), (2, 64), (4, 64), (4, 32), (8, 32), (5, 24), (1, 256)):
        stages, rings = kernel.stages_for(rows, heads, head_dim, 232448), kernel.math_warpgroups(rows, heads)
        assert stages % rings == 0 and 2 * rings <= stages <= kernel.MAX_STAGES
        assert kernel.smem_bytes(rows, heads, head_dim, stages) <= 232448


def test_smaller_heads_take_less_shared_memory():
    sizes = [kernel.smem_bytes(2, 64, head_dim, 8) for head_dim in kernel.HEAD_DIMS]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    # two query buffers and 8 key stages shrink with the head; weights, scales and barriers do not
    assert sizes[-1] - sizes[0] == 2 * 128 * (128 - 32) + 8 * 64 * (128 - 32)


def test_smem_bytes_match_the_kernel_layout():
    from mategemm.jit import nvrtc

    for rows, heads, head_dim, stages in ((1, 64, 128, 16), (4, 64, 128, 12), (4, 32, 128, 16), (2, 64, 64, 8),
                                          (4, 32, 32, 8), (5, 24, 32, 8), (5, 24, 64, 4)):
        source = ('#include "sm90_fp8_mqa_logits.cuh"\n'
                  f"static_assert(mategemm::MqaLogitsSmem<{rows}, {heads}, {head_dim}, {stages}>::kTotalBytes == "
                  f'{kernel.smem_bytes(rows, heads, head_dim, stages)}, "python and kernel disagree");\n'
                  "__global__ void probe() {}\n")
        nvrtc.compile_cubin(source, "&probe", nvrtc.base_options("sm_90a", debug=False))


def test_smem_descriptor_fields_follow_the_ptx_format():
    """wgmma's shared-memory descriptor: leading byte offset (bits 16-29, in 16 B; unused when K-major
    and swizzled: 1), stride byte offset (bits 32-45, in 16 B: 8 rows of one swizzle span), swizzle
    mode (bits 62-63: 1 = 128B, 2 = 64B, 3 = 32B). Written here from the format, not from the kernel."""
    from mategemm.jit import nvrtc

    checks = []
    for row_bytes, mode in ((128, 1), (64, 2), (32, 3)):
        want = 1 << 16 | (8 * row_bytes // 16) << 32 | mode << 62
        checks.append(f"static_assert(mategemm::smem_desc_k_major_layout<{row_bytes}>() == {want}ull, "
                      f'"descriptor fields for {row_bytes}-byte rows");')
    source = '#include "common/ptx.cuh"\n' + "\n".join(checks) + "\n__global__ void probe() {}\n"
    nvrtc.compile_cubin(source, "&probe", nvrtc.base_options("sm_90a", debug=False))


F32, BF16 = torch.float32, torch.bfloat16
# Every tile shape the API can launch: paged next_n 1-4 x heads 32/64 (head_dim 128); prefill
# 128-column tiles at head_dim 32, 64 and 128; fp32 logits, and bf16 where DeepGEMM's tests use them.
INSTANCES = ([(next_n, heads, 128, True, F32) for next_n in (1, 2, 3, 4) for heads in (32, 64)]
             + [(4, 32, 128, False, F32), (2, 64, 128, False, F32)]
             + [(next_n, heads, 128, True, BF16) for next_n in (1, 2) for heads in (32, 64)]
             + [(128 // heads, heads, head_dim, False, dtype) for heads in (32, 64) for head_dim in (32, 64, 128)
                for dtype in (F32, BF16) if (head_dim, dtype) != (128, F32)])


def instance_id(rows, heads, head_dim, paged, dtype):
    return f"{'paged' if paged else 'prefill'}-r{rows}-h{heads}-d{head_dim}-{str(dtype).split('.')[-1]}"


def indexer_cubin(cache, rows, heads, head_dim, paged, dtype):
    stages = kernel.stages_for(rows, heads, head_dim, 232448)
    return cache.get(kernel.spec(rows, heads, head_dim, stages, paged, dtype, "sm_90a")).path / "kernel.cubin"


@pytest.mark.parametrize("rows,heads,head_dim,paged,dtype", [pytest.param(*i, id=instance_id(*i)) for i in INSTANCES])
def test_indexer_kernels_are_hopper_sass(sass_cache, rows, heads, head_dim, paged, dtype):
    text = sass.dump_sass(indexer_cubin(sass_cache, rows, heads, head_dim, paged, dtype))
    ops = collections.Counter(sass.opcodes(text))
    # one k32 wgmma per 32 bytes of the head, unrolled
    assert text.count(f"QGMMA.64x{rows * heads}x32.F32.E4M3.E4M3") == head_dim // 32 == ops["QGMMA"], ops
    assert ops["UTMALDG"] > 0 and ops["STG"] > 0 and ops["LDL"] == 0 and ops["STL"] == 0, ops
    # bf16 logits: every store is 2 bytes (the kernel rounds; -inf included); fp32: 4 bytes
    stores = collections.Counter(re.findall(r"\bSTG\.\S+", text))
    assert set(stores) == ({"STG.E.U16"} if dtype == BF16 else {"STG.E"}), stores
    assert ("F2FP.BF16.F32.PACK_AB" in text) == (dtype == BF16)
    assert bool(re.search(r"\b0xff80\b", text)) == (dtype == BF16)  # the cleaned positions' bf16 -inf
    # the math warpgroups take the producer's registers: four get 112 each (producer 32), two 232 (40)
    math_regs, producer_regs = {4: (112, 32), 2: (232, 40)}[kernel.math_warpgroups(rows, heads)]
    assert f"USETMAXREG.TRY_ALLOC.CTAPOOL UP0, {math_regs:#x}" in text
    assert f"USETMAXREG.DEALLOC.CTAPOOL {producer_regs:#x}" in text


@pytest.mark.parametrize("heads", [8, 16, 24, 32, 64, 128])
def test_prefill_tiles_stay_within_the_kernel_rows(sass_cache, heads):
    """8 heads used to ask for 16-row tiles, which the kernel refuses (at most 8 rows): a compile
    error at the first call instead of a kernel."""
    from mategemm import plan

    rows = plan.mqa_prefill_rows(heads)
    assert 1 <= rows <= kernel.MAX_TILE_ROWS and rows * heads <= 128
    if heads == 8:
        assert indexer_cubin(sass_cache, rows, heads, 128, False, F32).exists()


def test_indexer_math_warpgroups_fit_their_registers():
    assert [kernel.math_warpgroups(r, h) for r, h in ((1, 32), (1, 64), (2, 64), (4, 32), (3, 64), (4, 64))] == \
        [4, 4, 4, 4, 2, 2]


@pytest.mark.parametrize("head_dim,dtype", [(128, F32), (32, BF16)])
def test_indexer_launch_arguments_match_the_kernel_signature(sass_cache, head_dim, dtype):
    import ctypes

    size = {None: 128, ctypes.c_void_p: 8, ctypes.c_int: 4, ctypes.c_longlong: 8}  # TMAP: CUtensorMap by value
    cubin = indexer_cubin(sass_cache, 2, 64, head_dim, False, dtype)
    assert sass.kernel_param_sizes(cubin) == [size[t] for t in kernel.TYPES]
