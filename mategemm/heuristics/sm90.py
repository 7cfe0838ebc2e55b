"""Hopper (sm_90a) limits and rates the heuristics plan with."""

# NOTES: the FP8 rate is the H100 SXM datasheet's 1979 dense TFLOPS over 132 SMs. The operand
# feed rate (10 TB/s into all SMs together) and the 300 ns floor per 128-K block per CTA (the
# serial chain barrier wait -> 4 wgmma -> wait -> promotion) were fitted to a sweep of every
# (BLOCK_M, BLOCK_N) over the 28 dense shapes on an H200 (docs/benchmarks.md, 2026-11-28): the
# fitted model picks configs within 0.5% (geomean) of the sweep's best, worst case 4%
# (`python tools/sweep_fp8_configs.py run | score` re-measures and re-scores). That sweep
# predates clusters, BLOCK_M 256 and split-K (v4-v6); their choices rest on the side-by-side
# measurements quoted in fp8_gemm.py until the next full sweep.
FP8_FLOPS_PER_SM_PER_NS = 1979e12 / 132 / 1e9
FEED_BYTES_PER_NS = 10.0e12 / 1e9
K_BLOCK_FLOOR_NS = 300.0

MAX_THREADS_PER_BLOCK = 1024
SMEM_SLACK = 1024        # alignment slack every mategemm kernel reserves
BLOCK_K_FP8 = 128        # one 128-byte swizzled row; one scale block of K
MAX_STAGES = 8
MIN_STAGES = 3          # the FP8 GEMM's three scale warps need a ring of at least 3
