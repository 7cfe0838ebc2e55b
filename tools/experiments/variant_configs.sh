#!/usr/bin/env bash
# Forced configs in patched copies of the tree, the trees taking turns (GPU; a lab tool; with
# deep_gemm importable, `source tools/deepgemm_build.sh` first, each run has DeepGEMM's column).
# Each VARIANT (tools/experiments/gemm_variants.py; base = unpatched; '+' joins several) is copied
# to /tmp/varc_<variant> and patched once; then, PASSES times (default 2), each tree in turn runs
#   TOOL=compare (default)  tools/compare_configs.py --scale-major MN on $SHAPES (MxNxK)
#   TOOL=contiguous         tools/experiments/contiguous_configs.py on $SHAPES (GxMxNxK)
# with the configs after "--" ('' = the heuristic's pick), $ROUNDS rounds (default 2) and
# $INPUT_SETS input sets (default 8) each; every run's output lands in $OUT_DIR/<variant>.<pass>.log
# and its table on stdout. Run from the repository root:
#   SHAPES=4096x2112x7168,4096x4096x7168 bash tools/experiments/variant_configs.sh base cluster_own_loads \
#       -- '' 'block_m=128,block_n=192,cluster_m=2'
#   TOOL=contiguous SHAPES=8x4096x4096x7168 bash tools/experiments/variant_configs.sh base per_token_pairs \
#       -- '' 'block_m=128,block_n=192,cluster_m=2'
set -u
export PYTHONUNBUFFERED=1
OUT_DIR=${OUT_DIR:-/tmp/variant_configs}
mkdir -p "$OUT_DIR"
variants=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do variants+=("$1"); shift; done
[ $# -gt 0 ] && shift
configs=("$@")
[ ${#variants[@]} -eq 0 ] && variants=(base)
[ ${#configs[@]} -eq 0 ] && configs=("")
[ -n "${SHAPES:-}" ] || { echo "set SHAPES" >&2; exit 2; }
case "${TOOL:-compare}" in
  compare) tool=(tools/compare_configs.py --scale-major MN) ;;
  contiguous) tool=(tools/experiments/contiguous_configs.py) ;;
  *) echo "TOOL is compare or contiguous" >&2; exit 2 ;;
esac
ready=()
for v in "${variants[@]}"; do
  d=/tmp/varc_$v; rm -rf "$d"; mkdir -p "$d"; cp -r mategemm tools kernels_src tests pyproject.toml "$d"/
  if python3 tools/experiments/gemm_variants.py "$v" "$d"; then ready+=("$v"); else echo "== $v: patch failed"; fi
done
for pass in $(seq 1 "${PASSES:-2}"); do
  for v in "${ready[@]}"; do
    d=/tmp/varc_$v
    echo "== $v, pass $pass"
    (cd "$d" && PYTHONPATH="$d:${PYTHONPATH:-}" MATEGEMM_CACHE_DIR="$d/.cache" timeout "${STEP_TIMEOUT:-300}" \
       python3 "${tool[@]}" --shapes "$SHAPES" --rounds "${ROUNDS:-2}" --input-sets "${INPUT_SETS:-8}" \
       --configs "${configs[@]}" > "$OUT_DIR/$v.$pass.log" 2>&1)
    echo "   exit $?"
    grep -v '^\s*$' "$OUT_DIR/$v.$pass.log" | tail -"${TAIL:-12}"
  done
done
