"""torch integration on the GPU: torch.compile(fullgraph=True) and CUDA graphs give the eager
results bit for bit, the custom ops pass torch.library.opcheck, repeated calls are bitwise
identical, and a CPU pre-warm leaves nothing to compile."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import mategemm
from mategemm.testing import indexer as ref
from mategemm.testing import make_fp8_gemm_inputs
from mategemm.testing.moe import make_expert_weights, make_tokens


def gemm_case():
    return make_fp8_gemm_inputs(300, 1024, 512)


def masked_case():
    a, sa = make_tokens(4 * 96, 512)
    b, sb = make_expert_weights(4, 256, 512)
    counts = torch.tensor([96, 20, 17, 64], dtype=torch.int32, device="cuda")  # each >= the 17 rows compared
    return (a.view(4, 96, 512), sa.view(4, 96, 4)), (b, sb), counts


def paged_case(seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    case = ref.make_paged_case(6, 2, 64, [70, 1, 640, 3000, 129, 64], generator=gen, device="cuda")
    meta = mategemm.get_paged_mqa_logits_metadata(case["context_lens"], 64)
    return (case["q"], case["fused_kv_cache"], case["weights"], case["context_lens"], case["block_table"], meta,
            case["max_context_len"], True)


def model(a, b, sa, sb, input_a, input_b, counts, paged):
    """A small graph mixing our ops with torch elementwise ops (inductor may reorder a reduction)."""
    y = mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb)
    z = mategemm.masked_moe_gemm_8bit(input_a, input_b, counts)
    logits = mategemm.fp8_paged_mqa_logits(*paged)
    return torch.relu(y.float()) * 2, z[:, :17].float() * 0.5, logits.clamp(min=-1e30)  # elementwise: exact


def test_compile_fullgraph_matches_eager():
    args = (*gemm_case(), *masked_case(), paged_case())
    eager = model(*args)
    compiled = torch.compile(model, fullgraph=True)
    for got, want in zip(compiled(*args), eager):
        assert torch.equal(got, want)
    fresh = (*gemm_case(), *masked_case(), paged_case(1))  # same shapes, new values: the same graph
    for got, want in zip(compiled(*fresh), model(*fresh)):
        assert torch.equal(got, want)


def test_compile_out_variants_write_their_argument():
    a, b, sa, sb = gemm_case()

    def f(a, b, sa, sb, out):
        mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out)
        return out * 1

    out_eager = torch.empty(300, 1024, dtype=torch.bfloat16, device="cuda")
    out_compiled = torch.full_like(out_eager, float("nan"))
    want = f(a, b, sa, sb, out_eager)
    got = torch.compile(f, fullgraph=True)(a, b, sa, sb, out_compiled)
    assert torch.equal(got, want) and torch.equal(out_compiled, out_eager)


def test_cuda_graph_replay_matches_eager():
    a, b, sa, sb = gemm_case()
    input_a, input_b, counts = masked_case()
    out = torch.empty(300, 1024, dtype=torch.bfloat16, device="cuda")
    z = torch.empty(4, 96, 256, dtype=torch.bfloat16, device="cuda")
    paged = paged_case()
    logits = torch.empty(12, paged[6], device="cuda")

    def step():
        mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb, out=out)
        mategemm.masked_moe_gemm_8bit(input_a, input_b, counts, out=z)
        logits.copy_(mategemm.fp8_paged_mqa_logits(*paged))

    step()  # compiles and warms outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for seed in range(3):
        a2, b2, sa2, sb2 = gemm_case()
        for static, new in ((a, a2), (b, b2), (sa, sa2), (sb, sb2)):
            static.copy_(new)
        counts.copy_(torch.tensor([seed, 96, 50, 3], dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, mategemm.gemm_fp8_nt_groupwise(a2, b2, sa2, sb2))
        want_z = mategemm.masked_moe_gemm_8bit(input_a, input_b, counts)
        for e, c in enumerate(counts.tolist()):
            assert torch.equal(z[e, :c], want_z[e, :c])
        assert torch.equal(logits, mategemm.fp8_paged_mqa_logits(*paged))


def test_opcheck():
    a, b, sa, sb = gemm_case()
    (xa, xsa), (w, wsb), counts = masked_case()
    checks = [
        (torch.ops.mategemm.gemm_fp8_nt_groupwise.default, (a, b, sa, sb, None, None, None, None, "auto", None)),
        (torch.ops.mategemm.gemm_fp8_nt_groupwise_out.default,
         (a, b, sa, sb, None, None, None, torch.empty(300, 1024, dtype=torch.bfloat16, device="cuda"), None, "auto",
          None)),
        # every row counted: rows past a count are never written, so they would differ between the two runs
        (torch.ops.mategemm.masked_moe_gemm_8bit.default,
         (xa, xsa, w, wsb, torch.full_like(counts, xa.shape[1]), None, None, "auto")),
        (torch.ops.mategemm.fp8_paged_mqa_logits.default, paged_case()),
    ]
    for op, args in checks:
        # test_schema is left out: its mutation check compares inputs with allclose, which FP8 lacks
        torch.library.opcheck(op, args, test_utils=("test_faketensor", "test_aot_dispatch_dynamic"))


def test_repeated_calls_are_bitwise_identical():
    a, b, sa, sb = gemm_case()
    input_a, input_b, counts = masked_case()
    paged = paged_case()

    def masked_rows():  # rows past each expert's count are never written: compare the rest
        z = mategemm.masked_moe_gemm_8bit(input_a, input_b, counts)
        return torch.cat([z[e, :c] for e, c in enumerate(counts.tolist())])

    calls = [lambda: mategemm.gemm_fp8_nt_groupwise(a, b, sa, sb),
             lambda: mategemm.bmm_fp8(a.view(3, 100, 512), b.view(2, 512, 512)[:1].expand(3, -1, -1).contiguous(),
                                      sa.new_ones(1), sb.new_ones(1), torch.bfloat16),
             masked_rows,
             lambda: mategemm.fp8_paged_mqa_logits(*paged)]
    for call in calls:
        first = call()
        for _ in range(3):
            assert torch.equal(call(), first)


PREWARMED_RUN = textwrap.dedent("""
    import torch, mategemm
    from mategemm import prewarm
    from mategemm.jit.cache import default_cache
    from mategemm.testing import indexer as ref
    from mategemm.testing.moe import routing_counts, per_token_layout, packed_layout
    preset = prewarm.load_preset("deepseek_v3")
    gen = torch.Generator().manual_seed(0)

    def fp8(*shape):
        return torch.randint(0, 64, shape, dtype=torch.uint8, device="cuda").view(torch.float8_e4m3fn)

    def ones(*shape):
        return torch.ones(shape, device="cuda")

    moe = preset.moe
    weights = {(n, k): (fp8(moe.num_experts, n, k), ones(moe.num_experts, -(-n // 128), k // 128))
               for n, k in ((2 * moe.moe_intermediate, moe.hidden), (moe.hidden, moe.moe_intermediate))}
    for m in TOKEN_COUNTS:
        for d in preset.dense:
            mategemm.gemm_fp8_nt_groupwise(fp8(m, d.k), fp8(d.n, d.k), ones(m, d.k // 128),
                                           ones(-(-d.n // 128), d.k // 128))
        counts = routing_counts(m, moe.num_experts, moe.top_k, generator=gen)
        for (n, k), b in weights.items():
            rows = sum(counts)
            info, _ = packed_layout(counts)
            mategemm.ragged_m_moe_gemm_8bit((fp8(rows, k), ones(rows, k // 128)), b, info,
                                            torch.empty(rows, n, dtype=torch.bfloat16, device="cuda"),
                                            gemm_mode="per_expert")
            ids, _ = per_token_layout(counts, moe.alignment_m)
            rows = ids.numel()
            mategemm.ragged_m_moe_gemm_8bit((fp8(rows, k), ones(rows, k // 128)), b, ids,
                                            torch.empty(rows, n, dtype=torch.bfloat16, device="cuda"))
            max_m = max(counts)
            masked = torch.tensor(counts, dtype=torch.int32, device="cuda")
            mategemm.masked_moe_gemm_8bit((fp8(moe.num_experts, max_m, k), ones(moe.num_experts, max_m, k // 128)),
                                          b, masked, expect_tokens=-(-m * moe.top_k // moe.num_experts))
        for next_n in preset.indexer.next_n:
            batch = max(1, m // next_n)
            # one shared 16-block context keeps the cache small at 16384 requests (80 GB cards, many workers)
            case = ref.make_paged_case(batch, next_n, 64, [1000] * batch, shared_prefix_blocks=16, device="cuda")
            meta = mategemm.get_paged_mqa_logits_metadata(case["context_lens"], 64)
            mategemm.fp8_paged_mqa_logits(case["q"], case["fused_kv_cache"], case["weights"], case["context_lens"],
                                          case["block_table"], meta, case["max_context_len"], True)
        case = ref.make_prefill_case(m, 700, 64, device="cuda")
        mategemm.fp8_mqa_logits(case["q"], case["kv"], case["weights"], case["ks"], case["ke"])
    torch.cuda.synchronize()
    print("compiles", default_cache().num_compiles)
""")


@pytest.mark.parametrize("max_tokens, token_counts", [(512, (1, 7, 64, 333, 512)),
                                                     (16384, (1, 129, 1000, 4097, 16384))])
def test_cpu_prewarm_leaves_no_compile(tmp_path, max_tokens, token_counts):
    """What `mategemm prewarm --preset deepseek_v3` (no GPU needed) compiles is all a serving run
    of that model's GEMMs, MoE modes and indexer needs, at token counts up to --max-tokens."""
    env = {**os.environ, "MATEGEMM_CACHE_DIR": str(tmp_path / "cache"), "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([sys.executable, "-m", "mategemm", "prewarm", "--preset", "deepseek_v3", "--max-tokens",
                    str(max_tokens), "--arch", "sm_90a", "--jobs", str(min(16, os.cpu_count() or 1))], env=env,
                   check=True, timeout=300)
    env.pop("CUDA_VISIBLE_DEVICES")
    run = subprocess.run([sys.executable, "-c", f"TOKEN_COUNTS = {token_counts!r}\n" + PREWARMED_RUN], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "compiles 0", run.stdout[-2000:]


@pytest.mark.parametrize("seed", (0, 1))
def test_prefill_logits_compile(seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    case = ref.make_prefill_case(64, 333, 64, generator=gen, device="cuda", causal_chunks=True)
    args = (case["q"], case["kv"], case["weights"], case["ks"], case["ke"])
    compiled = torch.compile(lambda *a: mategemm.fp8_mqa_logits(*a) * 1, fullgraph=True)
    assert torch.equal(compiled(*args), mategemm.fp8_mqa_logits(*args))
