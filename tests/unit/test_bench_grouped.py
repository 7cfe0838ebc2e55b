"""tools/bench.py grouped's pure parts, without a GPU: the operands handed to DeepGEMM's k-grouped GEMM."""
import torch

from benchkit import grouped_suite


class RecordingDeepGemm:
    def __init__(self):
        self.calls = []

    def k_grouped_fp8_gemm_nt_contiguous(self, a, b, d, ks, grouped_layout, c):
        self.calls.append((a, b, d, ks, grouped_layout, c))


def test_deepgemm_k_grouped_gets_each_groups_rows_k_major_in_turn():
    ks, m, n = [256, 128, 384], 5, 3
    x = {"a": torch.arange(sum(ks) * m, dtype=torch.float32).view(sum(ks), m),
         "b": torch.arange(sum(ks) * n, dtype=torch.float32).view(sum(ks), n) + 0.5,
         "sfa": torch.rand(sum(ks) // 128, m), "sfb": torch.rand(sum(ks) // 128, n), "out": torch.zeros(3, m, n)}
    counts = torch.tensor(ks, dtype=torch.int32)
    deep_gemm = RecordingDeepGemm()
    call = grouped_suite.deepgemm_k_grouped(deep_gemm, ks, counts)(x)
    call()
    call()
    assert len(deep_gemm.calls) == 2 and deep_gemm.calls[0][0][0] is deep_gemm.calls[1][0][0]  # copied once
    (flat_a, sfa), (flat_b, sfb), d, passed_ks, layout, c = deep_gemm.calls[0]
    for flat, full, cols in ((flat_a, x["a"], m), (flat_b, x["b"], n)):
        assert flat.is_contiguous() and flat.shape == (sum(ks) * cols,)
        start = 0
        for k in ks:  # group g: a (cols, k) K-major block of its own rows
            assert torch.equal(flat[start * cols:(start + k) * cols].view(cols, k), full[start:start + k].t())
            start += k
    assert torch.equal(sfa, x["sfa"].t()) and sfa.stride() == (1, m)  # MN-major scales, as given
    assert torch.equal(sfb, x["sfb"].t())
    assert d is x["out"] and c is x["out"] and passed_ks == ks and layout is counts
