"""mategemm.deep_gemm's einsum and fp8_einsum on the CPU: each expression reaches bmm_fp16 / bmm_fp8
with views of DeepGEMM's tensors (recorded, not launched); with a float64 stand-in for the batched
GEMM the result is torch.einsum's; bad arguments raise before anything runs."""
import dataclasses

import pytest
import torch

import mategemm
import mategemm.deep_gemm as dg
from fake_device import LaunchReached, recorded_specs
from mategemm.deep_gemm import einsums
from mategemm.runtime import device as rt_device
from mategemm.testing import calc_diff, fp8_gemm_reference

BF16, E4M3 = torch.bfloat16, torch.float8_e4m3fn


@pytest.fixture
def recorded(record_calls):
    return record_calls(mategemm, ("bmm_fp16", "bmm_fp8"))


@pytest.fixture
def sms(monkeypatch):
    """Sets the SM count "bmk,bnk->mn" splits its sum for (a device with that many SMs)."""
    def use(num_sms):
        info = dataclasses.replace(rt_device.SM90_NO_DEVICE, num_sms=num_sms)
        monkeypatch.setattr(rt_device, "device_info", lambda index: info)
    use(132)
    return use


@pytest.fixture
def float64_bmm(monkeypatch):
    """bmm_fp16 and bmm_fp8 replaced by float64 references that write `out` as the kernels do."""
    def bmm_fp16(a, b, out_dtype, out=None, c=None):
        product = a.double() @ b.double().transpose(1, 2)
        out.copy_(product if c is None else product + c.double())

    def bmm_fp8(a, b, a_scale, b_scale, out_dtype, out=None, scale_granularity_mnk=None):
        for i in range(a.shape[0]):
            out[i] = fp8_gemm_reference(a[i], b[i], a_scale[i], b_scale[i], scale_granularity_mnk)

    monkeypatch.setattr(mategemm, "bmm_fp16", bmm_fp16)
    monkeypatch.setattr(mategemm, "bmm_fp8", bmm_fp8)


def small_ints(*shape, generator):
    """Values in -2..2: every product and sum below is exact in float32, and in bf16 up to 256."""
    return torch.randint(-2, 3, shape, generator=generator).to(BF16)


def per_head_operands(expr, b=5, h=3, r=256, d=128, extra=128):
    """DeepGEMM's test operands: x (b, h, r or d), y a (h, d, r) view of a wider tensor, z (b, h, ...)."""
    g = torch.Generator().manual_seed(1)
    x = small_ints(b, h, r if expr == "bhr,hdr->bhd" else d, generator=g)
    y = small_ints(h, d, r + extra, generator=g)[:, :, :r]
    z = torch.full((b, h, d if expr == "bhr,hdr->bhd" else r), float("nan"), dtype=BF16)
    return x, y, z


# ------------------------------------------------------------------ the per-head forms


def test_bhr_hdr_bhd_reaches_bmm_with_views(recorded):
    x, y, z = per_head_operands("bhr,hdr->bhd")
    assert dg.einsum("bhr,hdr->bhd", x, y, z) is None
    [(name, (a_op, b_op, out_dtype), kwargs)] = recorded
    assert name == "bmm_fp16" and out_dtype == BF16 and kwargs.keys() == {"out"}
    # (batch, M, N, K) = (h, b, d, r): x and z with h first, y as it is, none of them copied
    assert a_op.data_ptr() == x.data_ptr() and a_op.shape == (3, 5, 256) and a_op.stride() == (256, 768, 1)
    assert b_op.data_ptr() == y.data_ptr() and b_op.shape == (3, 128, 256) and b_op.stride() == y.stride()
    out = kwargs["out"]
    assert out.data_ptr() == z.data_ptr() and out.shape == (3, 5, 128) and out.stride() == (128, 384, 1)


def test_bhd_hdr_bhr_reaches_bmm_with_views(recorded):
    x, y, z = per_head_operands("bhd,hdr->bhr")
    dg.einsum("bhd,hdr->bhr", x, y, z)
    [(name, (a_op, b_op, _), kwargs)] = recorded
    # (batch, M, N, K) = (h, b, r, d): y seen as (h, r, d), N-major (bmm copies it K-major)
    assert a_op.data_ptr() == x.data_ptr() and a_op.shape == (3, 5, 128)
    assert b_op.data_ptr() == y.data_ptr() and b_op.shape == (3, 256, 128) and b_op.stride() == (128 * 384, 1, 384)
    assert kwargs["out"].data_ptr() == z.data_ptr() and kwargs["out"].shape == (3, 5, 256)


@pytest.mark.parametrize("expr", ["bhr,hdr->bhd", "bhd,hdr->bhr"])
def test_per_head_math_is_torch_einsum(float64_bmm, expr):
    x, y, z = per_head_operands(expr, b=4, h=3, r=48, d=24, extra=8)
    dg.einsum(expr, x, y, z)
    assert torch.equal(z, torch.einsum(expr, x.double(), y.double()).to(BF16))


@pytest.mark.parametrize("expr", ["bhr,hdr->bhd", "bhd,hdr->bhr"])
def test_per_head_through_torch(recorded, expr):
    x, y, z = per_head_operands(expr, b=4, h=3, r=48, d=24, extra=8)
    dg.einsum(expr, x, y, z, use_cublaslt=True)
    assert not recorded and torch.equal(z, torch.einsum(expr, x.double(), y.double()).to(BF16))


def test_per_head_nothing_to_multiply(recorded):
    x, y, z = per_head_operands("bhr,hdr->bhd", r=0, extra=0)
    dg.einsum("bhr,hdr->bhd", x, y, z)
    assert torch.equal(z, torch.zeros_like(z))  # r = 0: an empty sum
    x, y, z = per_head_operands("bhr,hdr->bhd", b=0)
    dg.einsum("bhr,hdr->bhd", x, y, z)
    assert not recorded


def test_per_head_argument_errors(recorded):
    expr = "bhr,hdr->bhd"
    x, y, z = per_head_operands(expr)
    with pytest.raises(ValueError, match="takes no c"):
        dg.einsum(expr, x, y, z, c=z)
    with pytest.raises(TypeError, match="d must be bfloat16"):
        dg.einsum(expr, x, y, z.float())
    with pytest.raises(TypeError, match="a must be bfloat16"):
        dg.einsum(expr, x.half(), y, z)
    with pytest.raises(TypeError, match="b must be a tensor"):
        dg.einsum(expr, x, y.tolist(), z)
    with pytest.raises(ValueError, match=r"a must be 3-D \(bhr\)"):
        dg.einsum(expr, x[0], y, z)
    with pytest.raises(ValueError, match="b: its 'h' dimension is 2, an earlier operand's is 3"):
        dg.einsum(expr, x, y[:2], z)
    with pytest.raises(ValueError, match="d: its 'd' dimension is 64"):
        dg.einsum(expr, x, y, z[:, :, :64])
    with pytest.raises(ValueError, match="a must have stride 1 along its last dimension"):
        dg.einsum(expr, x.transpose(0, 2).contiguous().transpose(0, 2), y, z)
    with pytest.raises(ValueError, match="d must have stride 1"):
        dg.einsum(expr, x, y, torch.empty(128, 3, 5, dtype=BF16).permute(2, 1, 0), use_cublaslt=True)
    assert not recorded


def test_unsupported_expressions(recorded):
    x, y, z = per_head_operands("bhr,hdr->bhd")
    for expr in ("bhr,hdr->bhd ", "bhr,hrd->bhd", "bmk,bkn->mn", "hdr,bhr->bhd"):
        with pytest.raises(ValueError, match=f"unsupported expression '{expr}'"):
            dg.einsum(expr, x, y, z)
    with pytest.raises(TypeError, match="expr must be a str"):
        dg.einsum(None, x, y, z)
    assert not recorded


# ------------------------------------------------------------------ the sum over the batch


def batch_sum_operands(s=7, m=5, n=8, k=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(2)
    a, b = small_ints(s, m, k, generator=g), small_ints(s, n, k, generator=g)
    d = small_ints(m, n, generator=g).to(dtype)
    return a, b, d


def test_batch_sum_split():
    assert einsums.batch_sum_split(8192, 128, 384, 132) == (44, 187)  # 3 tiles: 44 GEMMs fill 132 SMs
    assert einsums.batch_sum_split(129, 384, 384, 132) == (13, 10)  # 9 tiles: 14 wanted; 13 of 10 entries (the last 9)
    assert einsums.batch_sum_split(4, 128, 128, 132) == (4, 1)  # at most one a batch entry
    assert einsums.batch_sum_split(129, 4096, 4096, 132) == (1, 129)  # 1024 tiles fill the SMs alone
    assert einsums.batch_sum_split(7, 1, 8, 3) == (3, 3)  # the last GEMM: one entry and two of zeros


def test_batch_sum_one_gemm_over_all_of_k(recorded, sms):
    sms(1)
    a, b, d = batch_sum_operands()
    assert dg.einsum("bmk,bnk->mn", a, b, d, c=d) is None
    [(name, (a_op, b_op, out_dtype), kwargs)] = recorded
    assert name == "bmm_fp16" and out_dtype == torch.float32
    assert a_op.shape == (1, 5, 7 * 16) and b_op.shape == (1, 8, 7 * 16) and a_op.is_contiguous()
    assert torch.equal(a_op[0], a.transpose(0, 1).reshape(5, -1))  # batch entries side by side along K
    assert kwargs["out"].data_ptr() == d.data_ptr() and kwargs["c"].data_ptr() == d.data_ptr()
    bf16 = torch.empty(5, 8, dtype=BF16)
    dg.einsum("bmk,bnk->mn", a, b, bf16)
    _, (_, _, out_dtype), kwargs = recorded[-1]
    assert out_dtype == BF16 and kwargs["out"].data_ptr() == bf16.data_ptr() and kwargs["c"] is None


def test_batch_sum_one_entry_a_chunk_reads_the_operands_as_they_are(recorded, sms):
    a, b, d = batch_sum_operands(s=4, m=128, n=128, dtype=BF16)
    dg.einsum("bmk,bnk->mn", a, b, d)
    [(_, (a_op, b_op, out_dtype), kwargs)] = recorded
    assert a_op is a and b_op is b and out_dtype == torch.float32 and kwargs["out"].shape == (4, 128, 128)


@pytest.mark.parametrize("num_sms", [1, 3, 132])  # one GEMM; 3 GEMMs of 3 entries (2 padding); one an entry
@pytest.mark.parametrize("dtype", [torch.float32, BF16])
def test_batch_sum_math_is_torch_einsum(float64_bmm, sms, num_sms, dtype):
    sms(num_sms)
    a, b, d = batch_sum_operands(dtype=dtype)
    expected = torch.einsum("bmk,bnk->mn", a.double(), b.double())
    if dtype == torch.float32:
        expected += d.double()
    dg.einsum("bmk,bnk->mn", a, b, d, c=d if dtype == torch.float32 else None)
    assert torch.equal(d, expected.to(dtype))


def test_batch_sum_nothing_to_multiply(recorded, sms):
    a, b, d = batch_sum_operands(s=0)
    before = d.clone()
    dg.einsum("bmk,bnk->mn", a, b, d, c=d)
    assert torch.equal(d, before)  # d += an empty sum
    a, b, bf16 = batch_sum_operands(k=0, dtype=BF16)
    dg.einsum("bmk,bnk->mn", a, b, bf16)
    assert torch.equal(bf16, torch.zeros_like(bf16)) and not recorded


def test_batch_sum_argument_errors(recorded, sms):
    a, b, d = batch_sum_operands()
    bf16 = d.to(BF16)
    with pytest.raises(ValueError, match="c must be d itself"):
        dg.einsum("bmk,bnk->mn", a, b, d)
    with pytest.raises(ValueError, match="c must be d itself"):
        dg.einsum("bmk,bnk->mn", a, b, d, c=d.clone())
    with pytest.raises(ValueError, match="a bfloat16 d takes no c"):
        dg.einsum("bmk,bnk->mn", a, b, bf16, c=bf16)
    with pytest.raises(TypeError, match="d must be bfloat16 or float32"):
        dg.einsum("bmk,bnk->mn", a, b, d.half())
    with pytest.raises(ValueError, match="use_cublaslt is not taken"):
        dg.einsum("bmk,bnk->mn", a, b, d, c=d, use_cublaslt=True)
    with pytest.raises(ValueError, match="b: its 'k' dimension is 8"):
        dg.einsum("bmk,bnk->mn", a, b[:, :, :8], d, c=d)
    with pytest.raises(ValueError, match="d: its 'n' dimension is 4"):
        dg.einsum("bmk,bnk->mn", a, b, bf16[:, :4])
    with pytest.raises(ValueError, match="d must have stride 1"):
        dg.einsum("bmk,bnk->mn", a, b, torch.empty(8, 5, dtype=BF16).t())
    assert not recorded


# ------------------------------------------------------------------ FP8


def fp8_operands(b=3, h=2, r=256, d=256):
    """x per token (b, h, r/128) and y per 128 x 128 block (h, d/128, r/128), as DeepGEMM's test casts them."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(b, h, r, generator=g) * 4).to(E4M3)
    y = (torch.randn(h, d, r, generator=g) * 4).to(E4M3)
    sx = torch.rand(b, h, r // 128, generator=g) + 0.5
    sy = torch.rand(h, d // 128, r // 128, generator=g) + 0.5
    return (x, sx), (y, sy), torch.full((b, h, d), float("nan"), dtype=BF16)


def test_fp8_bhr_hdr_bhd_reaches_bmm_fp8_with_views(recorded):
    (x, sx), (y, sy), z = fp8_operands()
    assert dg.fp8_einsum("bhr,hdr->bhd", (x, sx), (y, sy), z) is None
    [(name, (a_op, b_op, sa_op, sb_op, out_dtype), kwargs)] = recorded
    assert name == "bmm_fp8" and out_dtype == BF16 and kwargs["scale_granularity_mnk"] == (1, 128, 128)
    assert a_op.data_ptr() == x.data_ptr() and a_op.shape == (2, 3, 256)
    assert sa_op.data_ptr() == sx.data_ptr() and sa_op.shape == (2, 3, 2) and sa_op.stride() == (2, 4, 1)
    assert b_op.shape == y.shape and b_op.stride() == y.stride() and sb_op.shape == sy.shape
    assert kwargs["out"].data_ptr() == z.data_ptr() and kwargs["out"].shape == (2, 3, 256)
    dg.fp8_einsum("bhr,hdr->bhd", (x, sx), (y, torch.ones(2, 256, 2)), z, recipe=(1, 1, 128))
    assert recorded[-1][2]["scale_granularity_mnk"] == (1, 1, 128)


def test_fp8_math_is_the_dequantised_einsum(float64_bmm):
    (x, sx), (y, sy), z = fp8_operands()
    dg.fp8_einsum("bhr,hdr->bhd", (x, sx), (y, sy), z)
    x64 = x.double() * sx.double().repeat_interleave(128, dim=2)
    y64 = y.double() * sy.double().repeat_interleave(128, dim=1).repeat_interleave(128, dim=2)
    assert calc_diff(z, torch.einsum("bhr,hdr->bhd", x64, y64)) < 1e-5


def test_fp8_argument_errors(recorded):
    a, b, z = fp8_operands()
    expr = "bhr,hdr->bhd"
    with pytest.raises(NotImplementedError, match="SM100"):
        dg.fp8_einsum("bhd,hdr->bhr", a, b, z)
    with pytest.raises(NotImplementedError, match="SM100"):
        dg.fp8_einsum("bhd,bhr->hdr", a, b, z, c=z, recipe=(1, 1, 128))
    with pytest.raises(ValueError, match="unsupported expression 'bmk,bnk->mn'"):
        dg.fp8_einsum("bmk,bnk->mn", a, b, z)
    with pytest.raises(ValueError, match="c is not taken on Hopper"):
        dg.fp8_einsum(expr, a, b, z, c=z)
    with pytest.raises(TypeError, match="d must be bfloat16"):
        dg.fp8_einsum(expr, a, b, z.float())
    with pytest.raises(ValueError, match="recipe must be"):
        dg.fp8_einsum(expr, a, b, z, recipe=(1, 128, 64))
    with pytest.raises(TypeError, match=r"a must be a \(tensor, scale\) pair"):
        dg.fp8_einsum(expr, a[0], b, z)
    with pytest.raises(ValueError, match="b's scale must be a 3-D tensor"):
        dg.fp8_einsum(expr, a, (b[0], b[1][0]), z)
    with pytest.raises(ValueError, match="b: its 'h' dimension is 1"):
        dg.fp8_einsum(expr, a, (b[0][:1], b[1][:1]), z)
    assert not recorded


# ------------------------------------------------------------------ bmm's own checks


def test_deepgemm_shapes_pass_the_batched_checks(monkeypatch):
    """DeepGEMM's test shapes, views included, on fake CUDA tensors: bmm's own checks let every form
    through to a launch."""
    def cuda(*shape, dtype=BF16):
        return torch.empty(shape, dtype=dtype, device="cuda")

    with recorded_specs(monkeypatch) as asked:
        b, h, r, d = 37, 8, 512, 128
        y = torch.empty_strided((h, d, r), (d * (r + 128), r + 128, 1), dtype=BF16, device="cuda")  # fy[:, :, :r]
        forms = [(dg.einsum, "bhr,hdr->bhd", cuda(b, h, r), y, cuda(b, h, d)),
                 (dg.einsum, "bhd,hdr->bhr", cuda(b, h, d), y, cuda(b, h, r)),
                 (dg.fp8_einsum, "bhr,hdr->bhd", (cuda(b, h, r, dtype=E4M3), cuda(b, h, r // 128, dtype=torch.float32)),
                  (cuda(h, d, r, dtype=E4M3), cuda(h, d // 128, r // 128, dtype=torch.float32)), cuda(b, h, d))]
        for s, m, n, k in ((4, 128, 384, 128), (44, 384, 128, 384)):  # one entry a GEMM: fake tensors can't copy
            fp32 = cuda(m, n, dtype=torch.float32)
            forms += [(dg.einsum, "bmk,bnk->mn", cuda(s, m, k), cuda(s, n, k), fp32, fp32),
                      (dg.einsum, "bmk,bnk->mn", cuda(s, m, k), cuda(s, n, k), cuda(m, n))]
        for fn, *args in forms:
            with pytest.raises(LaunchReached):
                fn(*args)
        assert asked
