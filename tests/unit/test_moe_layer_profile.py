"""tools/experiments/moe_layer_profile.py without a GPU: its byte model of the layer's own kernels."""
from lab_tools import load_tool

profile = load_tool("experiments/moe_layer_profile.py")


def test_least_bytes_of_the_layer_kernels():
    tokens, topk, hidden, inter = 16384, 8, 2048, 768
    pairs = tokens * topk
    assert profile.least_bytes("void mategemm::sm90_fp8_moe_unpermute<false>(...)", tokens, topk, hidden,
                               inter) == pairs * hidden * 2 + tokens * hidden * 2
    fp8_row = hidden + hidden // 128 * 4
    # a bf16 input of 16384 tokens is quantised per token (tokens rows), then the pairs' rows gathered
    assert profile.least_bytes("sm90_fp8_moe_permute<false>", tokens, topk, hidden, inter) == (
        tokens * hidden * 2 + tokens * fp8_row)
    assert profile.least_bytes("sm90_fp8_moe_permute<true>", tokens, topk, hidden, inter) == (tokens + pairs) * fp8_row
    assert profile.least_bytes("sm90_fp8_moe_permute<false>", 64, topk, hidden, inter) == (
        64 * hidden * 2 + 64 * topk * fp8_row)
    assert profile.least_bytes("sm90_fp8_moe_gated_act<0>", tokens, topk, hidden, inter) == (
        pairs * (4 * inter + inter + inter // 128 * 4))
    assert profile.least_bytes("sm90_fp8_moe_route<false>", tokens, topk, hidden, inter) == pairs * 20
    assert profile.least_bytes("sm90_fp8_gemm_blockscaled<...>", tokens, topk, hidden, inter) is None
