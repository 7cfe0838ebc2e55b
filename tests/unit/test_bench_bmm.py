"""The bmm benchmark's pure parts on the CPU: the row list, scale shapes and byte counts, the
quantiser and float64 reference against naive loops, summary maths, the table; and the cuBLAS
loop peers' layouts against torch's own shape checks on the meta device."""
import json
import math
from pathlib import Path

import pytest
import torch

from mategemm.testing import calc_diff

from benchkit import bmm_suite, common, peers

ROOT = Path(__file__).resolve().parents[2]
FP8 = torch.float8_e4m3fn
RECIPES = ((-1, -1, -1), (1, -1, -1), (1, 128, 128), (1, 1, 128))


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)


def naive_dequantise(q, scale, recipe, side):
    """Element by element from bmm_fp8's documented scale layouts (float64)."""
    batch, rows, k = q.shape
    out = torch.empty((batch, rows, k), dtype=torch.float64)
    flat = scale.reshape(-1)
    for i in range(batch):
        for r in range(rows):
            for c in range(0, k, 128):
                if recipe == (-1, -1, -1) or (recipe == (1, -1, -1) and side == "b"):
                    s = flat[i if flat.numel() > 1 else 0]
                elif recipe == (1, -1, -1):
                    s = scale[i, r]
                elif recipe == (1, 128, 128) and side == "b":
                    s = scale[i, r // 128, c // 128]
                else:
                    s = scale[i, r, c // 128]
                out[i, r, c:c + 128] = q[i, r, c:c + 128].double() * float(s)
    return out


# ---------------------------------------------------------------- the rows the suite runs


def test_jobs_cover_every_recipe_and_dense_shapes_once():
    shapes = json.loads((ROOT / "mategemm" / "shapes" / "shapes.json").read_text())
    jobs = bmm_suite.bmm_jobs(shapes)
    assert len(jobs) == 4 * len(shapes["bmm"]) + len(shapes["dense_fp8"])
    assert [j["recipe"] for j in jobs if j["shapes"] == "bmm"][::len(shapes["bmm"])] == \
        ["-1,-1,-1", "1,-1,-1", "1,128,128", "1,1,128"]
    dense = [j for j in jobs if j["shapes"] == "dense_fp8"]
    assert {j["recipe"] for j in dense} == {"1,128,128"} and {j["batch"] for j in dense} == {1}
    assert [(j["m"], j["n"], j["k"]) for j in dense] == [(s["m"], s["n"], s["k"]) for s in shapes["dense_fp8"]]
    # one recipe's rows run together, so each recipe prints one table
    order = [j["recipe"] for j in jobs]
    assert order == sorted(order, key=lambda r: [bmm_suite.recipe_name(x) for x in RECIPES].index(r))
    for j in jobs:
        assert j["k"] % 128 == 0 and j["n"] % 8 == 0, j


def test_recipe_names_and_peers():
    assert [bmm_suite.recipe_name(r) for r in RECIPES] == ["-1,-1,-1", "1,-1,-1", "1,128,128", "1,1,128"]
    assert all(bmm_suite.parse_recipe(bmm_suite.recipe_name(r)) == r for r in RECIPES)
    assert bmm_suite.bmm_peer("-1,-1,-1") == "cublas_tensorwise_loop"
    assert bmm_suite.bmm_peer("1,-1,-1") == "cublas_rowwise_loop"
    assert bmm_suite.bmm_peer("1,128,128") == "cublas_blockwise_loop"
    assert bmm_suite.bmm_peer("1,1,128") is None
    for name in ("cublas_tensorwise_loop", "cublas_rowwise_loop", "cublas_blockwise_loop"):
        assert callable(getattr(peers, name))


def test_scale_shapes_and_bytes():
    batch, m, n, k = 3, 200, 264, 512
    expected = {(-1, -1, -1): ((3,), (3,)), (1, -1, -1): ((3, 200), (3,)),
                (1, 128, 128): ((3, 200, 4), (3, 3, 4)), (1, 1, 128): ((3, 200, 4), (3, 264, 4))}
    for recipe, (sa, sb) in expected.items():
        assert bmm_suite.bmm_scale_shape(batch, m, k, bmm_suite.operand_granularity(recipe, "a")) == sa
        assert bmm_suite.bmm_scale_shape(batch, n, k, bmm_suite.operand_granularity(recipe, "b")) == sb
        scales = 4 * (math.prod(sa) + math.prod(sb))
        assert bmm_suite.bmm_bytes(batch, m, n, k, recipe) == batch * (m * k + n * k + 2 * m * n) + scales
    # batch 1 in (1,128,128) counts exactly what the dense suite counts
    for m, n, k in ((1, 2112, 7168), (4096, 576, 7168), (129, 1000, 256)):
        assert bmm_suite.bmm_bytes(1, m, n, k, (1, 128, 128)) == common.dense_bytes(m, n, k)


# ---------------------------------------------------------------- quantiser and reference


@pytest.mark.parametrize("recipe", RECIPES)
def test_inputs_quantise_per_block_and_dequantise_like_the_layouts_say(recipe, generator):
    batch, m, n, k = 2, 5, 136, 256  # n not a multiple of 128: a partial B block
    a, b, sa, sb = bmm_suite.make_bmm_inputs(batch, m, n, k, recipe, device="cpu", generator=generator)
    assert a.shape == (batch, m, k) and b.shape == (batch, n, k) and a.dtype == b.dtype == FP8
    assert a.is_contiguous() and b.is_contiguous()
    assert sa.shape == bmm_suite.bmm_scale_shape(batch, m, k, bmm_suite.operand_granularity(recipe, "a"))
    assert sb.shape == bmm_suite.bmm_scale_shape(batch, n, k, bmm_suite.operand_granularity(recipe, "b"))
    assert sa.dtype == sb.dtype == torch.float32 and (sa > 0).all() and (sb > 0).all()
    for q, s, side in ((a, sa, "a"), (b, sb, "b")):
        got = bmm_suite.dequantise(q, s, bmm_suite.operand_granularity(recipe, side))
        assert torch.equal(got, naive_dequantise(q, s, recipe, side))
    # each scale's block reaches the FP8 maximum: the scale is that block's amax / 448
    assert a.float().abs().amax() == 448 and b.float().abs().amax() == 448
    if recipe == (1, 128, 128):
        assert b[0, 128:].float().abs().amax() == 448  # the partial block was quantised on its own


@pytest.mark.parametrize("recipe", RECIPES)
def test_quantise_round_trip(recipe, generator):
    x = torch.randn((3, 130, 384), generator=generator) * torch.rand((3, 130, 1), generator=generator) * 10
    x *= torch.tensor([1.0, 4.0, 16.0])[:, None, None]  # batch entries of different magnitudes
    for side in ("a", "b"):
        gran = bmm_suite.operand_granularity(recipe, side)
        q, s = bmm_suite.quantise(x, gran)
        assert calc_diff(bmm_suite.dequantise(q, s, gran), x) < 2e-3  # e4m3: 3 mantissa bits
        wrong = s.flip(0)  # another batch entry's scales
        assert calc_diff(bmm_suite.dequantise(q, wrong, gran), x) > 1e-2


def test_one_element_per_tensor_scale_serves_every_entry():
    q = torch.ones((3, 2, 128)).to(FP8)
    got = bmm_suite.dequantise(q, torch.tensor([2.0]), (-1, -1), torch.float32)
    assert got.shape == (3, 2, 128) and (got == 2).all()
    got = bmm_suite.dequantise(q, torch.tensor(3.0), (-1, -1))
    assert got.dtype == torch.float64 and (got == 3).all()


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("index", (0, 2))
def test_reference_is_the_entrys_dequantised_product(recipe, index, generator):
    batch, m, n, k = 3, 4, 136, 256
    a, b, sa, sb = bmm_suite.make_bmm_inputs(batch, m, n, k, recipe, device="cpu", generator=generator)
    ref = bmm_suite.bmm_reference(a, b, sa, sb, recipe, index)
    assert ref.shape == (m, n) and ref.dtype == torch.float64
    expected = naive_dequantise(a, sa, recipe, "a")[index] @ naive_dequantise(b, sb, recipe, "b")[index].t()
    assert torch.allclose(ref, expected, rtol=1e-12, atol=0)
    if recipe == (-1, -1, -1):  # one scale for the whole batch
        shared = bmm_suite.bmm_reference(a, b, sa[:1], sb[1:2], recipe, index)
        expected = (a[index].double() * float(sa[0])) @ (b[index].double() * float(sb[1])).t()
        assert torch.allclose(shared, expected, rtol=1e-12, atol=0)


def test_bmm_diff_poisons_the_output_first():
    out = torch.zeros((2, 3, 4))
    ref = torch.ones((3, 4), dtype=torch.float64)

    def writes_entry_0():
        out[0] = 1

    assert bmm_suite.bmm_diff(writes_entry_0, out, ref) == 0.0
    assert bmm_suite.bmm_diff(lambda: None, out, ref) == float("inf")  # nothing written: NaN stays


# ---------------------------------------------------------------- ratios, summary, table


def test_bmm_summary_maths():
    rows = [
        {"recipe": "-1,-1,-1", "shapes": "bmm", "mategemm_ms": 1.0, "cublas_tensorwise_loop_ms": 2.0,
         "torch_bmm_bf16_ms": 4.0},
        {"recipe": "-1,-1,-1", "shapes": "bmm", "mategemm_ms": 2.0, "cublas_tensorwise_loop_ms": 1.0,
         "torch_bmm_bf16_ms": 4.0},
        {"recipe": "1,-1,-1", "shapes": "bmm", "mategemm_error": "boom", "cublas_rowwise_loop_ms": 1.0},
        {"recipe": "1,128,128", "shapes": "bmm", "mategemm_ms": 1.0, "cublas_blockwise_loop_ms": 4.0},
        {"recipe": "1,128,128", "shapes": "dense_fp8", "mategemm_ms": 1.0, "cublas_blockwise_loop_ms": 1.0},
        {"recipe": "1,128,128", "shapes": "dense_fp8", "mategemm_ms": 1.0, "cublas_blockwise_loop_error": "m=1"},
        {"recipe": "1,1,128", "shapes": "bmm", "mategemm_ms": 1.0, "torch_bmm_bf16_ms": 3.0},
    ]
    summary = bmm_suite.bmm_summary(rows)
    assert set(summary) == {"-1,-1,-1", "1,128,128", "1,1,128"}  # ours failed on every per-row row
    tw = summary["-1,-1,-1"]
    assert tw["geomean_vs_cublas_tensorwise_loop"] == 1.0 and tw["min_vs_cublas_tensorwise_loop"] == 0.5
    assert tw["rows_vs_cublas_tensorwise_loop"] == 2
    assert tw["geomean_vs_torch_bmm_bf16"] == pytest.approx(2.8284, abs=1e-4) and tw["min_vs_torch_bmm_bf16"] == 2.0
    bw = summary["1,128,128"]
    assert bw["geomean_vs_cublas_blockwise_loop"] == 2.0 and bw["rows_vs_cublas_blockwise_loop"] == 2
    assert bw["bmm_geomean_vs_cublas_blockwise_loop"] == 4.0
    assert bw["dense_fp8_geomean_vs_cublas_blockwise_loop"] == 1.0
    assert summary["1,1,128"] == {"geomean_vs_torch_bmm_bf16": 3.0, "min_vs_torch_bmm_bf16": 3.0,
                                  "rows_vs_torch_bmm_bf16": 1}
    assert bmm_suite.bmm_summary([]) == {}


def test_format_bmm_row():
    row = {"batch": 16, "m": 4096, "n": 4096, "k": 4096, "recipe": "1,-1,-1", "shapes": "bmm",
           "mategemm_diff": 1.5e-6, "torch_bmm_bf16_error": "OOM"}
    common.add_timing(row, "mategemm", 2.0, 2 * 16 * 4096 ** 3, 1e9)
    common.add_timing(row, "cublas_rowwise_loop", 3.0, 2 * 16 * 4096 ** 3, 1e9)
    head, line = bmm_suite.format_bmm_row(row)
    assert "cuBLAS-rw" in head and "bf16-bmm" in head
    assert "1.50" in line and "ERR" in line and "1.5e-06" in line
    assert len(head.split("|")) == len(line.split("|"))
    row = {"batch": 1, "m": 1, "n": 2112, "k": 7168, "recipe": "1,1,128", "shapes": "bmm"}
    head, line = bmm_suite.format_bmm_row(row)  # no timings, no peer: dashes, never an exception
    assert "cuBLAS" in head and "ERR" not in line


# ---------------------------------------------------------------- the loop peers on the meta device


@pytest.mark.parametrize("name, sa_shape, sb_shape", [
    ("cublas_tensorwise_loop", (3,), (1,)),
    ("cublas_tensorwise_loop", (), (3,)),
    ("cublas_rowwise_loop", (3, 64), (3,)),
    ("cublas_rowwise_loop", (3, 64), ()),
    ("cublas_blockwise_loop", (3, 64, 4), (3, 2, 4)),
])
def test_loop_peers_pass_torchs_checks_once_per_entry(name, sa_shape, sb_shape, monkeypatch):
    batch, m, n, k = 3, 64, 256, 512
    a = torch.empty((batch, m, k), dtype=FP8, device="meta")
    b = torch.empty((batch, n, k), dtype=FP8, device="meta")
    sa = torch.empty(sa_shape, dtype=torch.float32, device="meta")
    sb = torch.empty(sb_shape, dtype=torch.float32, device="meta")
    shapes = []
    for module, attr in ((torch, "_scaled_mm"), (torch.nn.functional, "scaled_mm")):
        original = getattr(module, attr)

        def recording(*args, _original=original, **kwargs):
            out = _original(*args, **kwargs)  # torch's meta checks: scale shapes, B column-major
            shapes.append(tuple(out.shape))
            return out

        monkeypatch.setattr(module, attr, recording)
    run = getattr(peers, name)(a, b, sa, sb)
    assert shapes == []  # nothing runs until called
    run()
    assert shapes == [(m, n)] * batch
