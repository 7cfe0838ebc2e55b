#!/usr/bin/env bash
# Device runs, one stage per call (each fits the device tool's 10 minutes); logs and results land in $OUT.
#   bash tools/gpu_check.sh tests      the GPU suite (6 workers)
#   bash tools/gpu_check.sh sanitize   the GPU suite under compute-sanitizer memcheck and synccheck (racecheck on a
#                                      subset); `sanitize quick`: the subset for all three
#   bash tools/gpu_check.sh bench SUITE [SUITE ...]
#                                      tools/bench.py SUITE; with a baseline tree in .baseline/ (carried to the
#                                      device: git archive <commit> | tar -x -C .baseline), the baseline's run of
#                                      the same suite right after, into $OUT/baseline/
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/mategemm-gpu-check}
mkdir -p "$OUT"
# cuda-bindings probes cuGetProcAddress for symbols the driver lacks: API errors, not kernel faults.
SANITIZER="compute-sanitizer --report-api-errors no --error-exitcode 9"
SUBSET="ragged or forced or num_mp or dtypes or cluster_and or split_k or stream or graph or fused_moe or prewarm"
SUBSET+=" or (sweep and (7-2112 or 1000-576 or 4096-4096-512))"
SUBSET+=" or (nvfp4 and (decode_is_exact or every_tile_config or skipped))"
SUBSET+=" or grouped_bf16 or k_grouped_bf16 or small_heads_at_other or scale_decode_kernel or one_process_equals"
SUBSET+=" or tma_scales_forced or tma_scales_fall_back or tma_scales_copied or k_tail_forced or tf32_hc or fp8_output"

status=0
case "${1:-tests}" in
  tests)
    timeout 300 python3 -m pytest -q -n 6 tests/gpu 2>&1 | tee "$OUT/gpu_tests.log" | tail -3 || status=1 ;;
  sanitize)
    for tool in memcheck synccheck racecheck; do
      selection=()
      [[ "${2:-}" == quick || $tool == racecheck ]] && selection=(-k "$SUBSET")
      timeout 180 $SANITIZER --tool $tool python3 -m pytest -q -x tests/gpu "${selection[@]}" > "$OUT/$tool.log" 2>&1
      echo "$tool: exit $? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/$tool.log" | tail -1)"
    done ;;
  bench)
    shift
    for suite in "$@"; do
      timeout 280 python3 tools/bench.py "$suite" --out-dir "$OUT" 2>&1 | tee "$OUT/$suite.log" | tail -4 || status=1
      if [[ -d .baseline ]]; then
        mkdir -p "$OUT/baseline"
        (cd .baseline && PYTHONPATH=. timeout 280 python3 tools/bench.py "$suite" --out-dir "$OUT/baseline" 2>&1 \
          | tee "$OUT/baseline/$suite.log" | tail -2) || status=1
      fi
    done ;;
  *) echo "unknown stage $1" >&2; exit 2 ;;
esac
exit $status
