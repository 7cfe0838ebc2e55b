"""tools/bench.py moe_layer's pure parts, without a GPU: the seed pipeline's padded layout and the summary."""
import torch

from benchkit import moe_layer_suite


def test_padded_layout_puts_each_experts_pairs_in_aligned_segments():
    gen = torch.Generator().manual_seed(3)
    experts, topk, tokens = 6, 3, 50
    ids = torch.stack([torch.randperm(experts, generator=gen)[:topk] for _ in range(tokens)])
    row_of_pair, expert_of_row, rows = moe_layer_suite.padded_layout(ids, experts, align=16)
    flat = ids.reshape(-1).tolist()
    start = 0
    for e in range(experts):
        pairs = [p for p, x in enumerate(flat) if x == e]
        assert [row_of_pair[p].item() for p in pairs] == list(range(start, start + len(pairs)))  # token order
        assert expert_of_row[start:start + len(pairs)].tolist() == [e] * len(pairs)
        padded = -(-len(pairs) // 16) * 16
        assert expert_of_row[start + len(pairs):start + padded].tolist() == [-1] * (padded - len(pairs))
        start += padded
    assert rows >= start and rows == -(-(tokens * topk + experts * 15) // 16) * 16
    assert (expert_of_row[start:] == -1).all()


def test_moe_layer_summary():
    rows = [{"tokens": 16, "mategemm_ms": 1.0, "seed_padded_ms": 2.0, "torch_bf16_ms": 4.0},
            {"tokens": 64, "mategemm_ms": 2.0, "seed_padded_ms": 2.0},
            {"tokens": 1024, "mategemm_ms": 5.0, "mategemm_outside_gemm_share": 0.1},
            {"tokens": 4096, "mategemm_ms": 9.0, "mategemm_outside_gemm_share": 0.07},
            {"tokens": 256, "mategemm_ms": 1.0, "seed_padded_ms": 9.0}]
    summary = moe_layer_suite.moe_layer_summary(rows)
    assert summary["small_m_min_vs_seed_padded"] == 1.0 and round(summary["small_m_geomean_vs_seed_padded"], 3) == 1.414
    assert summary["small_m_geomean_vs_torch_bf16"] == 4.0
    assert summary["large_m_max_outside_gemm_share"] == 0.1
