#!/usr/bin/env bash
# Which part of the FP8 promotion costs time (GPU; a lab tool, timing only: the variants compute
# wrong results on purpose). Copies the tree to /tmp/var_<variant>, patches the kernel there and
# times forced configs side by side with tools/compare_configs.py:
#   base         the kernel as it is
#   double_ffma  every promotion FFMA twice (the marginal cost of promotion issue slots)
#   unit_scales  no shared-memory scale loads in the math warps (scales = 1)
#   no_overlap   the second scratch accumulator off (promotion not overlapped with the next wgmma)
#   pingpong     the two math warpgroups take turns issuing their batches (kPingPongEnabled; its
#                results are meant to be right: check them before making it the default)
# Run from the repository root: bash tools/experiments/promotion_cost.sh
export PYTHONUNBUFFERED=1
K=kernels_src/sm90_fp8_gemm_blockscaled.cuh
for v in base double_ffma unit_scales no_overlap pingpong; do
  d=/tmp/var_$v; rm -rf $d; mkdir -p $d; cp -r mategemm tools kernels_src pyproject.toml $d/ 2>/dev/null
  case $v in
    double_ffma) sed -i 's/            for (int c = 0; c < BLOCK_N \/ 8; ++c) promote_chunk(out + c \* 4, part + c \* 4, sc.lo\[0\], sc.hi\[0\]);/            for (int c = 0; c < BLOCK_N \/ 8; ++c) promote_chunk(out + c * 4, part + c * 4, sc.lo[0], sc.hi[0]);\n            for (int c = 0; c < BLOCK_N \/ 8; ++c) promote_chunk(out + c * 4, part + c * 4, sc.hi[0], sc.lo[0]);/' $d/$K ;;
    unit_scales) sed -i 's/        sc.lo\[0\] = ld_shared_f32(sf);/        sc.lo[0] = 1.0f;/; s/        sc.hi\[0\] = ld_shared_f32(sf + 8 \* 4);/        sc.hi[0] = 1.0f;/' $d/$K ;;
    no_overlap) sed -i 's/    constexpr bool kOverlap = kScaleGranN == 128 \&\& BLOCK_N <= 128 \&\& kWaves == 1;/    constexpr bool kOverlap = false;/' $d/$K ;;
    pingpong) sed -i 's/    constexpr bool kPingPongEnabled = false;/    constexpr bool kPingPongEnabled = true;/' $d/$K ;;
  esac
  echo "== $v (changed lines: $(diff $K $d/$K | grep -c '^>'))"
  (cd $d && PYTHONPATH=$d timeout 60 python3 tools/compare_configs.py --shapes 4096x4096x7168,4096x7168x16384 --configs "block_m=128,block_n=128,cluster_n=2" "block_m=256,block_n=128,cluster_n=2" "block_m=128,block_n=128" 2>&1 | tail -2)
done
