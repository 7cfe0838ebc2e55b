"""Hopper (sm_90a) limits and rates the heuristics plan with."""

# NOTES: rates are per SM at the boost clock, from the H100 SXM datasheet (1979 dense FP8
# TFLOPS over 132 SMs at 1.83 GHz => ~8192 FP8 FLOP/clk/SM); the memory figure is the measured
# copy bandwidth (2.94 TB/s H100, 4.2 TB/s H200) - the model only needs the ratio.
FP8_FLOPS_PER_SM_PER_NS = 1979e12 / 132 / 1e9
DRAM_BYTES_PER_NS = 2.9e12 / 1e9
L2_BYTES_PER_NS = 7.0e12 / 1e9

MAX_THREADS_PER_BLOCK = 1024
SMEM_SLACK = 1024        # alignment slack every mategemm kernel reserves
BLOCK_K_FP8 = 128        # one 128-byte swizzled row; one scale block of K
MAX_STAGES = 8
MIN_STAGES = 2
