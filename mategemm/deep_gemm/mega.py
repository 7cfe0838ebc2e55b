"""DeepGEMM's mega MoE names (`deep_gemm.mega`): one fused dispatch, FP8 x FP4 (or BF16) expert
GEMMs and combine over symmetric memory. They are built on SM100's tensor memory and block-scaled
FP4 MMA, so on Hopper each raises NotImplementedError; mategemm's expert layer on Hopper is
`mategemm.fused_moe`, and across GPUs `mategemm.ep.EPMoE`."""
from __future__ import annotations

_WHY = ("DeepGEMM's mega MoE is an SM100 (Blackwell) kernel (tensor memory, FP4 block-scaled MMA); on Hopper "
        "use mategemm.fused_moe, or mategemm.ep.EPMoE across GPUs")


def _sm100_only(func: str) -> NotImplementedError:
    return NotImplementedError(f"{func}: {_WHY}")


def get_symm_buffer_for_mega_moe(group, num_experts: int, num_max_tokens_per_rank: int, num_topk: int, hidden: int,
                                 intermediate_hidden: int, use_fp8_dispatch: bool | None = None,
                                 mma_type: str = "fp8xfp4", activation: str = "swiglu"):
    raise _sm100_only("get_symm_buffer_for_mega_moe")


def transform_weights_for_mega_moe(l1_weights, l2_weights, activation: str = "swiglu"):
    raise _sm100_only("transform_weights_for_mega_moe")


def fp8_fp4_mega_moe(y, l1_weights, l2_weights, sym_buffer, cumulative_local_expert_recv_stats=None,
                     recipe=(1, 1, 32), activation: str = "swiglu", activation_clamp: float | None = None,
                     fast_math: bool = True) -> None:
    raise _sm100_only("fp8_fp4_mega_moe")


def bf16_mega_moe(y, l1_weights, l2_weights, sym_buffer, cumulative_local_expert_recv_stats=None,
                  activation: str = "swiglu", activation_clamp: float | None = None, fast_math: bool = True) -> None:
    raise _sm100_only("bf16_mega_moe")
