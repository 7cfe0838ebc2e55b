#!/usr/bin/env bash
# Builds DeepGEMM, the live anchor of tools/bench.py, on the device (about 40 s), from a source
# tarball in the ignored folder .peers/ (carry it to the device: run's carry [".peers"]):
#   .peers/deepgemm-src.tgz   DeepGEMM 2.6.1 (commit 54e22612409371d6364144b69086735beb54e98b) with
#                             third-party/cutlass/include/{cute,cutlass} (cutlass f3fde583) and
#                             third-party/fmt/include (fmt 553ec11e); nothing of it is committed.
# (tools/deepgemm_pack.sh writes it from git checkouts of the three.) The build lands in
# .peers/deepgemm/ (kept between calls on a warm machine). Use it in one command:
#   source tools/deepgemm_build.sh && python3 tools/bench.py dense_fp8
# A fresh machine builds again (40-90 s of device time a call) unless .peers/deepgemm-built.tgz
# holds an earlier build: then it is unpacked instead. To make one, end a call with
#   tar czf $OUT/deepgemm-built.tgz --exclude="deepgemm/build/temp*" -C .peers deepgemm deepgemm-jit
# (the build and DeepGEMM's compiled kernels) and put the file that comes back into .peers/.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=$ROOT/.peers/deepgemm
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export DG_JIT_NVCC_COMPILER=$CUDA_HOME/bin/nvcc DG_JIT_CACHE_DIR=$ROOT/.peers/deepgemm-jit
if ! ls "$DEST"/deep_gemm/_C*.so > /dev/null 2>&1 && [ -f "$ROOT/.peers/deepgemm-built.tgz" ]; then
  rm -rf "$DEST" && tar xzf "$ROOT/.peers/deepgemm-built.tgz" -C "$ROOT/.peers" && mkdir -p "$DG_JIT_CACHE_DIR"
fi
if ! ls "$DEST"/deep_gemm/_C*.so > /dev/null 2>&1; then
  rm -rf "$DEST" && mkdir -p "$DEST" "$DG_JIT_CACHE_DIR"
  tar xzf "$ROOT/.peers/deepgemm-src.tgz" -C "$DEST"
  # the image's default compiler cannot build torch extensions that use std::regex: the system g++
  (cd "$DEST" && CC=/usr/bin/gcc CXX=/usr/bin/g++ bash develop.sh > "$DEST/build.log" 2>&1) \
    || { tail -20 "$DEST/build.log"; exit 1; }
fi
export PYTHONPATH=$DEST${PYTHONPATH:+:$PYTHONPATH} DEEPGEMM_BUILD=$DEST  # DEEPGEMM_BUILD: benchkit.common.live_deepgemm
python3 -c "import deep_gemm; print('deep_gemm', deep_gemm.__version__, 'from', deep_gemm.__file__)"
