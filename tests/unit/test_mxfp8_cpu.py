"""MXFP8 without a GPU: the quantiser's layouts and rounding, the exact reference, the scale decode
and row mapping the GEMM uses (torch ops, run on CPU tensors), and the argument checks."""
import pytest
import torch

import mategemm
from fake_device import recorded_specs
from mategemm import quant
from mategemm.testing import mxfp8 as ref

E4M3 = torch.float8_e4m3fn


@pytest.mark.parametrize("gran", [128, 32])
@pytest.mark.parametrize("offsets", [[0, 3, 3, 10], [0, 10], [0, 0, 1, 9, 9, 17], [0, 0]])
def test_token_rows_quantise_into_padded_scale_rows(gran, offsets):
    gen = torch.Generator().manual_seed(gran + len(offsets))
    cum_m, k = offsets[-1], 384
    x = torch.randn((cum_m, k), generator=gen) * torch.logspace(-4, 4, max(cum_m, 1))[:cum_m, None]
    q, packed = quant.mxfp8_quantize(x.to(torch.bfloat16), gran, offsets)
    experts = len(offsets) - 1
    assert q.dtype == E4M3 and q.shape == (cum_m, k)
    assert packed.dtype == torch.int32 and packed.shape == ((cum_m + experts * 3) // 4 * 4, -(-k // (4 * gran)))
    exponents = ref.ue8m0_bytes(packed, k // gran)
    m_padded, starts = quant.mxfp8_scale_rows(offsets)
    used = {start + i for start, lo, hi in zip(starts, offsets, offsets[1:]) for i in range(hi - lo)}
    assert all(start % 4 == 0 for start in starts) and max(used, default=-1) < m_padded
    for row in set(range(m_padded)) - used:
        assert (exponents[row] == 0).all()  # padding rows
    deq = ref.mxfp8_dequantize(q, packed, gran, offsets)
    xb = x.to(torch.bfloat16).double()
    for lo, hi in zip(offsets, offsets[1:]):
        for r in range(lo, hi):
            for blk in range(k // gran):
                cols = slice(blk * gran, (blk + 1) * gran)
                amax = xb[r, cols].abs().max()
                scale = 2.0 ** (int(exponents[starts[offsets.index(lo)] + r - lo, blk]) - 127)
                assert amax / scale <= 448 and (amax == 0 or amax / scale > 224)  # the smallest power of two
                err = (deq[r, cols] - xb[r, cols]).abs()
                assert (err <= torch.maximum(xb[r, cols].abs() / 16, torch.tensor(scale * 2.0 ** -9))).all()


def test_expert_weights_and_extreme_exponents():
    w = torch.zeros((2, 8, 256))
    w[0, 0, :128] = 2.0 ** 100
    w[0, 1, 128:] = 2.0 ** -120
    w[1, 2] = torch.linspace(-3, 3, 256)
    q, packed = quant.mxfp8_quantize(w, 128)
    assert packed.shape == (2, 8, 1)
    exponents = ref.ue8m0_bytes(packed, 2)
    assert int(exponents[0, 0, 0]) == 92 + 127  # 2^100 / 448 = 2^91.2: the scale 2^92, values 256
    assert int(exponents[0, 1, 1]) == 0  # 2^-120 / 448 wants 2^-128: clamped to the smallest, 2^-127
    assert int(exponents[0, 3, 0]) == 0  # a block of zeros: 2^-127
    deq = ref.mxfp8_dequantize(q, packed, 128)
    assert torch.equal(deq[0], w[0].double())  # powers of two survive exactly, at both ends of the range
    assert ((deq[1, 2] - w[1, 2].double()).abs() <= w[1, 2].double().abs() / 16).all()
    assert ref.ue8m0_bytes(torch.tensor([[0x7F_FE_01_00]], dtype=torch.int32), 4).tolist() == [[0, 1, 254, 127]]


def test_the_reference_gemm_follows_the_experts():
    offsets = [0, 2, 2, 7]
    a = torch.randn(7, 256)
    b = torch.randn(3, 16, 256)
    qa, sa = quant.mxfp8_quantize(a, 128, offsets)
    qb, sb = quant.mxfp8_quantize(b, 128)
    out = ref.moe_gemm_mxfp8_reference(qa, qb, sa, sb, torch.tensor(offsets), 128)
    a64, b64 = ref.mxfp8_dequantize(qa, sa, 128, offsets), ref.mxfp8_dequantize(qb, sb, 128)
    assert torch.allclose(out[:2], a64[:2] @ b64[0].t()) and torch.allclose(out[2:], a64[2:] @ b64[2].t())


def cuda(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="cuda")


BAD = [(lambda: dict(scale_granularity_mnk=(1, 128, 128)), ValueError, "scale_granularity_mnk must be"),
       (lambda: dict(scale_granularity_mnk=(1, 1, 32)), ValueError, "a_scale must have shape"),  # k_align 2
       (lambda: dict(scale_major_mode="K"), ValueError, "scale_major_mode"),
       (lambda: dict(out_dtype=torch.float16), TypeError, "out_dtype"),
       (lambda: dict(a_scale=cuda(12, 1, dtype=torch.int32)), ValueError, "a_scale must have shape"),
       (lambda: dict(b_scale=cuda(3, 64, 2, dtype=torch.int32)), ValueError, "b_scale must have shape"),
       (lambda: dict(m_indptr=cuda(3, dtype=torch.int32)), ValueError, "m_indptr must have shape")]


@pytest.mark.parametrize("change,error,message", BAD, ids=[m for _, _, m in BAD])
def test_bad_arguments_are_named(monkeypatch, change, error, message):
    with recorded_specs(monkeypatch) as asked:
        args = dict(a=cuda(10, 256, dtype=E4M3), b=cuda(3, 64, 256, dtype=E4M3),
                    a_scale=cuda((10 + 9) // 4 * 4, 1, dtype=torch.int32), b_scale=cuda(3, 64, 1, dtype=torch.int32),
                    m_indptr=cuda(4, dtype=torch.int32))
        args.update(change())
        with pytest.raises(error, match=message):
            mategemm.moe_gemm_mxfp8_nt_groupwise(**args)
    assert asked == []


def test_host_offsets_are_checked():
    args = dict(a=torch.zeros((10, 256), dtype=torch.uint8).view(E4M3),
                b=torch.zeros((3, 64, 256), dtype=torch.uint8).view(E4M3),
                a_scale=torch.zeros((16, 1), dtype=torch.int32), b_scale=torch.zeros((3, 64, 1), dtype=torch.int32))
    for offsets in ([0, 5, 3, 10], [1, 5, 8, 10], [0, 5, 8, 9]):
        with pytest.raises(ValueError, match="m_indptr must rise from 0 to cum_m = 10"):
            mategemm.moe_gemm_mxfp8_nt_groupwise(**args, m_indptr=torch.tensor(offsets, dtype=torch.int32))


def test_the_flashinfer_name_is_the_same_function():
    assert mategemm.flashinfer.moe_gemm_mxfp8_nt_groupwise is mategemm.moe_gemm_mxfp8_nt_groupwise


@pytest.mark.parametrize("gran", [128, 32])
def test_each_granularity_plans_its_grouped_kernel(gran):
    """The GEMM after the exponent decode: psum_expert with recipe (1,1,gran); (1,1,32) promotes per
    32 values of K, in 64-row tiles, and its scales (rows, k/32) pass the grouped checks."""
    from mategemm import plan, validate
    from mategemm.runtime.device import SM90_NO_DEVICE
    from mategemm.types import GemmProblem, Recipe

    problem = GemmProblem(4096, 512, 7168, Recipe(1, 1, gran), E4M3, E4M3, torch.bfloat16, "psum_expert", 8)
    spec = plan.grouped_gemm(problem, SM90_NO_DEVICE).spec
    assert f", 1, {gran}, mategemm::kE4M3, mategemm::kE4M3," in spec.name_expr
    assert gran == 128 or spec.name_expr.startswith("&mategemm::sm90_fp8_gemm_blockscaled<64, ")
    a, b = torch.zeros(64, 256, dtype=E4M3), torch.zeros(3, 64, 256, dtype=E4M3)
    sa, sb = torch.ones(64, 256 // gran), torch.ones(3, 64, 256 // gran)
    counts = torch.zeros(3, dtype=torch.int32)
    with pytest.raises(ValueError, match="must be a CUDA tensor"):  # every other check passed
        validate.ragged_m((a, sa), (b, sb), counts, torch.empty(64, 64, dtype=torch.bfloat16), "psum_expert", "K",
                          "K", (1, 1, gran), None, None, "auto")
    with pytest.raises(ValueError, match=f"one scale per row and {gran}-K block"):
        validate.ragged_m((a, sa[:, :-1]), (b, sb), counts, torch.empty(64, 64, dtype=torch.bfloat16), "psum_expert",
                          "K", "K", (1, 1, gran), None, None, "auto")


def test_granularity_32_kernel_is_hopper_sass(tmp_path):
    """Four k32 wgmma issued and promoted one at a time per stage: QGMMA and the per-column
    promotion present, no local memory."""
    import collections

    from mategemm import plan
    from mategemm.jit.cache import KernelCache
    from mategemm.runtime.device import SM90_NO_DEVICE
    from mategemm.testing import sass
    from mategemm.types import RECIPE_1x32_1x32, GemmProblem

    if sass.tools_dir() is None:
        pytest.skip("cuobjdump not found")
    problem = GemmProblem(256 * 64, 4096, 7168, RECIPE_1x32_1x32, E4M3, E4M3, torch.bfloat16, "psum_expert", 256)
    compiled = KernelCache(tmp_path).get(plan.grouped_gemm(problem, SM90_NO_DEVICE).spec)
    ops = collections.Counter(sass.opcodes(sass.dump_sass(compiled.path / "kernel.cubin")))
    assert ops["QGMMA"] >= 1 and ops["FFMA"] >= 64 and ops["LDL"] == 0 and ops["STL"] == 0, ops

