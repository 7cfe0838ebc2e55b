#!/usr/bin/env bash
# One device call that re-checks a kernel change: the GPU suite, the GPU suite under
# compute-sanitizer (memcheck, racecheck, synccheck), and the dense benchmark.
# Usage (device tool): bash tools/gpu_check.sh [quick]     logs and results land in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/mategemm-gpu-check}
mkdir -p "$OUT"
# cuda-bindings probes cuGetProcAddress for symbols the driver lacks: API errors, not kernel faults.
SANITIZER="compute-sanitizer --report-api-errors no --error-exitcode 9"
SUBSET="ragged or forced or num_mp or dtypes or cluster_and or split_k or stream or graph or (sweep and (7-2112 or 1000-576 or 4096-4096-512))"

status=0
timeout 120 python3 -m pytest -q -x tests/gpu 2>&1 | tee "$OUT/gpu_tests.log" | tail -2 || status=1
for tool in memcheck racecheck synccheck; do
  selection=()
  [[ "${1:-}" == quick || $tool == racecheck ]] && selection=(-k "$SUBSET")
  timeout 300 $SANITIZER --tool $tool python3 -m pytest -q -x tests/gpu "${selection[@]}" > "$OUT/$tool.log" 2>&1
  echo "$tool: exit $? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/$tool.log" | tail -1)"
done
[[ "${1:-}" == quick ]] || timeout 150 python3 tools/bench.py dense_fp8 --out-dir "$OUT" 2>&1 | tail -3
exit $status
