"""Hopper (sm_90a) limits and rates the heuristics plan with."""

# NOTES: the FP8 rate is the H100 SXM datasheet's 1979 dense TFLOPS over 132 SMs. The operand
# feed rate (10 TB/s into all SMs together), the 400 ns floor per 128-K block per CTA (the
# serial chain barrier wait -> 4 wgmma -> wait -> promotion) and the tile rates of
# fp8_gemm.mma_efficiency were fitted to sweeps of forced configs on an H200
# (docs/bench/dense_fp8_config_sweep.json: the 28 dense shapes, the 7 with m = 4096 and 10 of
# 256-2048 rows re-swept with plain launches for cluster-1 kernels): the model picks
# configs within 0.6% (geomean) of each shape's best, worst case 4.3% (128x7168x16384: 64x112
# for 128x64; 1x24576x1536 2.9%, 1024x4096x7168 2.4%, the rest <= 1.2%).
# `python tools/sweep_fp8_configs.py run | score` re-measures and re-scores. Split-K decode picks
# follow split_k_rule's side-by-side measurements.
FP8_FLOPS_PER_SM_PER_NS = 1979e12 / 132 / 1e9
FEED_BYTES_PER_NS = 10.0e12 / 1e9
K_BLOCK_FLOOR_NS = 400.0

MAX_THREADS_PER_BLOCK = 1024
SMEM_SLACK = 1024        # alignment slack every mategemm kernel reserves
# NOTES: of an SM's 233,472 B of shared memory (H100, H200) the driver reserves 1 KB per resident
# block: one block may opt in to 232,448 B (DeviceInfo.smem_per_block), each of two to 115,712 B.
SMEM_RESERVED_PER_BLOCK = 1024
BLOCK_K_FP8 = 128        # one 128-byte swizzled row; one scale block of K
MAX_STAGES = 8
MAX_FORCED_STAGES = 16   # MATEGEMM_FORCE_CONFIG stages for the FP8 GEMM (DeepGEMM's ring at decode)
MIN_STAGES = 3          # the FP8 GEMM's three scale warps need a ring of at least 3
MAX_TILE_K_BLOCKS = 256  # K blocks of a tile whose B scales the GEMM stages once (A's scales by TMA)


def smem_per_block(device_smem_per_block: int, ctas_per_sm: int) -> int:
    """The shared memory each of `ctas_per_sm` resident blocks may use, from the device's opt-in
    limit for one block."""
    return (device_smem_per_block + SMEM_RESERVED_PER_BLOCK) // ctas_per_sm - SMEM_RESERVED_PER_BLOCK
