#!/usr/bin/env bash
# The dense suite in patched copies of the tree, each run beside its own live DeepGEMM column (GPU; a
# lab tool; deep_gemm importable: `source tools/deepgemm_build.sh` first). For each round and each
# VARIANT (tools/experiments/gemm_variants.py; base = unpatched; '+' joins several), in turn: copies
# the tree to /tmp/var_<variant>, patches it, runs tools/bench.py dense_fp8 --scale-major MN on the
# core shapes (or $SHAPES, a shapes file) into $OUT_DIR/<variant>.<round>.json, then prints mategemm
# and DeepGEMM TFLOPS per shape with their ratio and the geomean per variant and round. Each run has
# its own anchor, so the ratios compare across variants under the card's drifting clock.
# Run from the repository root:
#   ROUNDS=2 bash tools/experiments/variant_bench.sh base stsm
# (MATEGEMM_FORCE_CONFIG=tma_scales=0 in the environment runs every variant with the scale warps.)
export PYTHONUNBUFFERED=1
OUT_DIR=${OUT_DIR:-/tmp/variant_bench}
ROUNDS=${ROUNDS:-2}
mkdir -p "$OUT_DIR"
if [ -z "$SHAPES" ]; then  # the compute-bound shapes and two decode ones
  SHAPES=$OUT_DIR/core_shapes.json
  python3 - "$SHAPES" <<'EOF'
import json, sys
shapes = [(4096, 7168, 16384), (4096, 4096, 7168), (4096, 2112, 7168), (4096, 24576, 1536), (4096, 7168, 2048),
          (128, 7168, 16384), (64, 2112, 7168)]
json.dump({"dense_fp8": [{"m": m, "n": n, "k": k} for m, n, k in shapes]}, open(sys.argv[1], "w"))
EOF
fi
variants=("$@")
[ ${#variants[@]} -eq 0 ] && variants=(base)
for round in $(seq 1 "$ROUNDS"); do
  for v in "${variants[@]}"; do
    d=/tmp/var_$v; rm -rf "$d"; mkdir -p "$d"; cp -r mategemm tools kernels_src pyproject.toml "$d"/ 2>/dev/null
    python3 tools/experiments/gemm_variants.py "$v" "$d" || continue
    echo "== $v, round $round"
    (cd "$d" && PYTHONPATH="$d:$PYTHONPATH" MATEGEMM_CACHE_DIR="$d/.cache" timeout 300 python3 tools/bench.py dense_fp8 \
       --scale-major MN --shapes "$SHAPES" --out-dir "$d/out" 2>&1 | tail -12)
    cp "$d/out/dense_fp8.json" "$OUT_DIR/$v.$round.json" 2>/dev/null
  done
done
python3 - "$OUT_DIR" "${variants[@]}" <<'EOF'
import json, math, sys
from pathlib import Path
out, variants = Path(sys.argv[1]), sys.argv[2:]
for v in variants:
    for path in sorted(out.glob(f"{v}.*.json")):
        rows = json.loads(path.read_text())["rows"]
        ratios = [r["mategemm_tflops"] / r["deepgemm_tflops"] for r in rows if r.get("deepgemm_tflops")]
        cells = " ".join(f"{r['m']}x{r['n']}x{r['k']}:{r.get('mategemm_tflops', '-')}/{r.get('deepgemm_tflops', '-')}"
                         for r in rows)
        geo = math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else float("nan")
        print(f"{path.stem:24s} geomean vs DeepGEMM {geo:.3f}  {cells}")
EOF
