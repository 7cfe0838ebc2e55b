#!/usr/bin/env bash
# A suite in patched copies of the tree, each run beside its own live DeepGEMM column (GPU; a lab
# tool; deep_gemm importable: `source tools/deepgemm_build.sh` first). For each round and each
# VARIANT (tools/experiments/gemm_variants.py; base = unpatched; '+' joins several), in turn: copies
# the tree to /tmp/var_<variant>, patches it, runs tools/bench.py $SUITE into
# $OUT_DIR/<variant>.<round>.json, then prints the geomean against DeepGEMM per variant, round and
# mode. Each run has its own anchor, so the ratios compare across variants under the card's
# drifting clock. SUITE=dense_fp8 (default): --scale-major MN on the core shapes (or $SHAPES, a
# shapes file), with each shape's TFLOPS; SUITE=grouped: the modes in $MODES (default contiguous
# masked k_grouped); SUITE=nvfp4: four expert GEMMs (DeepSeek-V3 w1 and w2, Qwen3-235B-A22B w1,
# Qwen3-30B-A3B w2) at $TOKENS tokens per expert (default "1 16"), each row's NVFP4 ms and the
# geomeans of our FP8 GEMM's and torch's bf16 time over it (the nvfp4 suite's peers; no DeepGEMM).
# Run from the repository root:
#   ROUNDS=2 bash tools/experiments/variant_bench.sh base lane0_empty
#   SUITE=grouped MODES=contiguous bash tools/experiments/variant_bench.sh base desc32
#   SUITE=nvfp4 TOKENS="1 16" bash tools/experiments/variant_bench.sh base stream_math_decode
# (MATEGEMM_FORCE_CONFIG=tma_scales=0 in the environment runs every variant with the scale warps.)
export PYTHONUNBUFFERED=1
OUT_DIR=${OUT_DIR:-/tmp/variant_bench}
ROUNDS=${ROUNDS:-2}
SUITE=${SUITE:-dense_fp8}
mkdir -p "$OUT_DIR"
if [ "$SUITE" = grouped ]; then
  read -r -a suite_args <<< "--modes ${MODES:-contiguous masked k_grouped}"
elif [ "$SUITE" = nvfp4 ]; then
  SHAPES=$OUT_DIR/nvfp4_shapes.json
  python3 - "$SHAPES" ${TOKENS:-1 16} <<'EOF'
import json, sys
from pathlib import Path
rows = json.loads(Path("mategemm/shapes/shapes.json").read_text())["nvfp4_moe"]
models = ("deepseek_v3 w1", "deepseek_v3 w2", "qwen3_235b_a22b w1", "qwen3_30b_a3b w2")
tokens = [int(t) for t in sys.argv[2:]]
picked = [dict(r, tokens_per_expert=t) for r in rows if r["_model"] in models and r["tokens_per_expert"] == 1
          for t in tokens]
json.dump({"nvfp4_moe": picked}, open(sys.argv[1], "w"))
EOF
  suite_args=(--shapes "$SHAPES")
elif [ -z "$SHAPES" ]; then  # the compute-bound shapes and two decode ones
  SHAPES=$OUT_DIR/core_shapes.json
  python3 - "$SHAPES" <<'EOF'
import json, sys
shapes = [(4096, 7168, 16384), (4096, 4096, 7168), (4096, 2112, 7168), (4096, 24576, 1536), (4096, 7168, 2048),
          (128, 7168, 16384), (64, 2112, 7168)]
json.dump({"dense_fp8": [{"m": m, "n": n, "k": k} for m, n, k in shapes]}, open(sys.argv[1], "w"))
EOF
fi
[ "$SUITE" = grouped ] || [ "$SUITE" = nvfp4 ] || suite_args=(--scale-major MN --shapes "$SHAPES")
variants=("$@")
[ ${#variants[@]} -eq 0 ] && variants=(base)
for round in $(seq 1 "$ROUNDS"); do
  for v in "${variants[@]}"; do
    d=/tmp/var_$v; rm -rf "$d"; mkdir -p "$d"; cp -r mategemm tools kernels_src tests pyproject.toml "$d"/ 2>/dev/null
    python3 tools/experiments/gemm_variants.py "$v" "$d" || continue
    echo "== $v, round $round"
    (cd "$d" && PYTHONPATH="$d:$PYTHONPATH" MATEGEMM_CACHE_DIR="$d/.cache" timeout 300 python3 tools/bench.py "$SUITE" \
       "${suite_args[@]}" --out-dir "$d/out" 2>&1 | tail -12)
    cp "$d/out/$SUITE.json" "$OUT_DIR/$v.$round.json" 2>/dev/null
  done
done
python3 - "$OUT_DIR" "$SUITE" "${variants[@]}" <<'EOF'
import json, math, sys
from pathlib import Path
out, suite, variants = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
for v in variants:
    for path in sorted(out.glob(f"{v}.*.json")):
        rows = json.loads(path.read_text())["rows"]
        if suite == "nvfp4":
            geo = []
            for peer in ("mategemm_fp8", "torch_grouped_bf16"):
                x = [r[f"{peer}_ms"] / r["mategemm_nvfp4_ms"] for r in rows
                     if f"{peer}_ms" in r and "mategemm_nvfp4_ms" in r]
                if x:
                    geo.append(f"{peer} / NVFP4 time {math.exp(sum(map(math.log, x)) / len(x)):.3f}")
            cells = " ".join(f"{r['model']}/{r['gemm']}/{r['tokens_per_expert']}:{r.get('mategemm_nvfp4_ms', '-')}"
                             for r in rows)
            print(f"{path.stem:24s} geomean {', '.join(geo)}  NVFP4 ms: {cells}")
            continue
        by_mode = {}
        for r in rows:
            if r.get("deepgemm_tflops") and r.get("mategemm_tflops"):
                by_mode.setdefault(r.get("mode", suite), []).append(r["mategemm_tflops"] / r["deepgemm_tflops"])
        geo = "  ".join(f"{mode} {math.exp(sum(map(math.log, x)) / len(x)):.3f}" for mode, x in by_mode.items())
        cells = "" if suite == "grouped" else " ".join(
            f"{r['m']}x{r['n']}x{r['k']}:{r.get('mategemm_tflops', '-')}/{r.get('deepgemm_tflops', '-')}" for r in rows)
        print(f"{path.stem:24s} geomean vs DeepGEMM: {geo}  {cells}")
EOF
