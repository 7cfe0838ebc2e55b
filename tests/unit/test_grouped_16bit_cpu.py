"""16-bit grouped GEMMs (mategemm.moe.grouped_gemm_16bit) and the deep_gemm BF16 grouped names on the
CPU: argument checks, the call path on fake CUDA tensors up to the launch (the scale-at-end kernel in
each group mode), the deep_gemm names' mapping (recorded), and the new kernel instances' SASS."""
import collections

import pytest
import torch

import mategemm.deep_gemm as dg
from fake_device import call, recorded_specs
from mategemm import moe, plan, validate
from mategemm.jit.cache import KernelCache
from mategemm.runtime.device import SM90_NO_DEVICE
from mategemm.testing import sass
from mategemm.types import RECIPE_PER_ROW, GemmProblem

BF16 = torch.bfloat16


def cuda(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="cuda")


def test_call_path_plans_the_scale_at_end_kernel_in_each_mode(monkeypatch):
    with recorded_specs(monkeypatch) as asked:
        call(moe.grouped_gemm_16bit, cuda(512, 256, dtype=BF16), cuda(4, 384, 256, dtype=BF16),
             cuda(512, dtype=torch.int32), cuda(512, 384, dtype=BF16), "per_token", alignment_m=128)
        call(moe.grouped_gemm_16bit, cuda(4, 64, 256, dtype=BF16), cuda(4, 384, 256, dtype=BF16),
             cuda(4, dtype=torch.int32), cuda(4, 64, 384, dtype=BF16), "masked", expect_tokens=20)
        call(moe.grouped_gemm_16bit, cuda(256, 1024, dtype=BF16), cuda(128, 1024, dtype=BF16),
             cuda(4, dtype=torch.int32), cuda(4, 256, 128), "ragged_k")
    assert [spec.kernel for spec in asked] == ["sm90_gemm_scale_at_end"] * 3
    modes = [spec.name_expr.split("mategemm::kGroup")[1].split(",")[0] for spec in asked]
    assert modes == ["Ids", "Masked", "K"]
    assert all("mategemm::kBF16, mategemm::kBF16" in spec.name_expr for spec in asked)


@pytest.mark.parametrize("case,error,match", [
    ("dtypes", TypeError, "same dtype"),
    ("fp8", TypeError, "a must have dtype"),
    ("k8", ValueError, "multiple of 8"),
    ("info", ValueError, r"info must have shape \(512,\)"),
    ("out dtype", TypeError, "out must have dtype"),
    ("masked groups", ValueError, "a has 3 groups"),
    ("ragged counts", ValueError, "multiple of 64"),
    ("mode", ValueError, "mode must be one of"),
])
def test_argument_errors_name_the_argument(case, error, match):
    a, b = torch.empty(512, 256, dtype=BF16), torch.empty(4, 384, 256, dtype=BF16)
    info, out, mode = torch.zeros(512, dtype=torch.int32), torch.empty(512, 384, dtype=BF16), "per_token"
    if case == "dtypes":
        b = b.half()
    elif case == "fp8":
        a = a.to(torch.float8_e4m3fn)
    elif case == "k8":
        a, b = torch.empty(512, 250, dtype=BF16), torch.empty(4, 384, 250, dtype=BF16)
    elif case == "info":
        info = torch.zeros(4, dtype=torch.int32)
    elif case == "out dtype":
        out = out.float()
    elif case == "masked groups":
        a, info, out, mode = torch.empty(3, 64, 256, dtype=BF16), torch.zeros(4, dtype=torch.int32), \
            torch.empty(4, 64, 384, dtype=BF16), "masked"
    elif case == "ragged counts":
        a, b, out, mode = torch.empty(64, 256, dtype=BF16), torch.empty(32, 256, dtype=BF16), \
            torch.empty(2, 64, 32), "ragged_k"
        info = torch.tensor([100, 128], dtype=torch.int32)
    elif case == "mode":
        mode = "per_expert"
    with pytest.raises(error, match=match):
        validate.grouped_16bit(a, b, info, out, mode)


def test_valid_arguments_stop_only_at_the_device_check():
    with pytest.raises(ValueError, match="a must be a CUDA tensor"):
        validate.grouped_16bit(torch.empty(512, 256, dtype=BF16), torch.empty(4, 384, 256, dtype=BF16),
                               torch.zeros(512, dtype=torch.int32), torch.empty(512, 384, dtype=BF16), "per_token")


@pytest.fixture
def recorded(monkeypatch):
    calls = []
    monkeypatch.setattr(moe, "grouped_gemm_16bit", lambda *args, **kwargs: calls.append((args, kwargs)))
    return calls


def test_contiguous_maps_onto_per_token_and_zeroes_the_padding_rows(recorded):
    a, b = torch.zeros(256, 128, dtype=BF16), torch.zeros(2, 64, 128, dtype=BF16)
    layout = torch.tensor([0] * 100 + [-1] * 28 + [1] * 128, dtype=torch.int32)
    d = torch.full((256, 64), 7.0, dtype=BF16)
    assert dg.m_grouped_bf16_gemm_nt_contiguous(a, b, d, layout) is None
    [(args, kwargs)] = recorded
    assert args[0] is a and args[1] is b and args[2] is layout and args[3] is d and args[4] == "per_token"
    assert kwargs == {"alignment_m": 128}
    assert torch.all(d[100:128] == 0) and torch.all(d[:100] == 7) and torch.all(d[128:] == 7)


def test_contiguous_psum_layout_and_nn_form(recorded):
    a, b_kn = torch.zeros(256, 128, dtype=BF16), torch.zeros(2, 128, 64, dtype=BF16)
    d = torch.full((256, 64), 7.0, dtype=BF16)
    psum = torch.tensor([100, 228], dtype=torch.int32)
    dg.m_grouped_bf16_gemm_nn_contiguous(a, b_kn, d, psum, use_psum_layout=True)
    [(args, _)] = recorded
    b = args[1]
    assert b.shape == (2, 64, 128) and b.stride(-1) == 1 and torch.equal(b, b_kn.transpose(1, 2))
    assert args[2].tolist() == [0] * 100 + [-1] * 28 + [1] * 100 + [-1] * 28
    assert torch.all(d == 7)  # the psum layout's gaps are left as they were


def test_masked_and_k_grouped(recorded):
    a, b, d = torch.zeros(4, 32, 128, dtype=BF16), torch.zeros(4, 64, 128, dtype=BF16), torch.zeros(4, 32, 64,
                                                                                                      dtype=BF16)
    masked_m = torch.tensor([3, 0, 32, 5], dtype=torch.int32)
    dg.m_grouped_bf16_gemm_nt_masked(a, b, d, masked_m, 8)
    assert recorded[-1][0][4] == "masked" and recorded[-1][1] == {"expect_tokens": 8}
    with pytest.raises(ValueError, match="expected_m"):
        dg.m_grouped_bf16_gemm_nt_masked(a, b, d, masked_m, 0)
    ks = [128, 0, 256]
    a_t, b_t = torch.randn(384, 48).to(BF16), torch.randn(384, 32).to(BF16)
    c, d = torch.randn(3, 48, 32), torch.full((3, 48, 32), float("nan"))
    layout = torch.tensor(ks, dtype=torch.int32)
    dg.k_grouped_bf16_gemm_tn_contiguous(a_t, b_t, d, ks, layout, c)
    args, _ = recorded[-1]
    assert args[4] == "ragged_k" and args[2] is layout and args[3] is d and torch.equal(d, c)
    assert torch.equal(args[0], a_t.t()) and args[0].is_contiguous() and torch.equal(args[1], b_t.t())
    with pytest.raises(ValueError, match="multiple of 64"):
        dg.k_grouped_bf16_gemm_tn_contiguous(a_t, b_t, d, [100, 28, 256], layout, c)
    with pytest.raises(NotImplementedError, match="SM100"):
        dg.k_grouped_bf16_gemm_tn_contiguous(a_t, b_t, d, ks, layout, c, use_psum_layout=True)
    with pytest.raises(TypeError, match="bfloat16"):
        dg.m_grouped_bf16_gemm_nt_masked(a.float(), b, d, masked_m, 8)


@pytest.mark.parametrize("mode,problem,kwargs", [
    ("per_token", GemmProblem(4 * 8192, 6144, 7168, RECIPE_PER_ROW, BF16, BF16, BF16, "per_token", 4),
     {"alignment_m": 128}),
    ("masked", GemmProblem(32 * 4096, 4096, 4096, RECIPE_PER_ROW, BF16, BF16, BF16, "masked", 32),
     {"max_m": 4096, "expect_tokens": 20}),
    ("ragged_k", GemmProblem(4096, 7168, 4 * 8192, RECIPE_PER_ROW, BF16, BF16, torch.float32, "ragged_k", 4), {}),
    ("ragged_k fp16", GemmProblem(7168, 2048, 16 * 2048, RECIPE_PER_ROW, torch.float16, torch.float16, torch.float32,
                                  "ragged_k", 16), {}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_kernel_instances_are_hopper_sass(tmp_path, mode, problem, kwargs):
    if sass.tools_dir() is None:
        pytest.skip("cuobjdump not found")
    gemm_plan = plan.grouped_gemm(problem, SM90_NO_DEVICE, **kwargs)
    compiled = KernelCache(tmp_path).get(gemm_plan.spec)
    ops = collections.Counter(sass.opcodes(sass.dump_sass(compiled.path / "kernel.cubin")))
    assert ops["HGMMA"] > 0 and ops["UTMALDG"] > 0 and ops["LDL"] == 0 and ops["STL"] == 0, ops
