#!/usr/bin/env bash
# Which part of the FP8 promotion costs time (GPU; a lab tool). For each variant (see
# gemm_variants.py; '+' joins several), copies the tree to /tmp/var_<variant>, patches the
# kernels there and times forced configs side by side with tools/compare_configs.py, which flags
# wrong results (double_ffma and unit_scales are wrong on purpose).
# Run from the repository root:
#   bash tools/experiments/promotion_cost.sh [VARIANT ...]      (default: base and three cost probes)
export PYTHONUNBUFFERED=1
SHAPES=${SHAPES:-4096x4096x7168,4096x7168x16384}
CONFIGS=${CONFIGS:-"block_m=128,block_n=128,cluster_n=2|block_m=256,block_n=128,cluster_n=2|block_m=128,block_n=128"}
IFS='|' read -r -a config_list <<< "$CONFIGS"
variants=("$@")
[ ${#variants[@]} -eq 0 ] && variants=(base double_ffma unit_scales no_overlap)
for v in "${variants[@]}"; do
  d=/tmp/var_$v; rm -rf $d; mkdir -p $d; cp -r mategemm tools kernels_src pyproject.toml $d/ 2>/dev/null
  python3 tools/experiments/gemm_variants.py "$v" $d || continue
  echo "== $v (changed lines: $(diff -r kernels_src $d/kernels_src | grep -c '^>'))"
  (cd $d && PYTHONPATH=$d MATEGEMM_CACHE_DIR=$d/.cache timeout 120 python3 tools/compare_configs.py --shapes "$SHAPES" \
     --configs "${config_list[@]}" 2>&1 | tail -4)
done
