#!/usr/bin/env bash
# Writes .peers/deepgemm-src.tgz (ignored; tools/deepgemm_build.sh builds it on the device) from git
# repositories of DeepGEMM, CUTLASS and fmt, at the commits DeepGEMM 2.6.1 pins.
#   bash tools/deepgemm_pack.sh DEEPGEMM_GIT_DIR CUTLASS_GIT_DIR FMT_GIT_DIR
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[[ $# == 3 ]] || { echo "usage: $0 DEEPGEMM_GIT_DIR CUTLASS_GIT_DIR FMT_GIT_DIR" >&2; exit 2; }
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
git -C "$1" archive 54e22612409371d6364144b69086735beb54e98b | tar -x -C "$STAGE"
mkdir -p "$STAGE/third-party/cutlass" "$STAGE/third-party/fmt"
git -C "$2" archive f3fde58372d33e9a5650ba7b80fc48b3b49d40c8 include/cute include/cutlass \
  | tar -x -C "$STAGE/third-party/cutlass"
git -C "$3" archive 553ec11ec06fbe0beebfbb45f9dc3c9eabd83d28 include | tar -x -C "$STAGE/third-party/fmt"
mkdir -p "$ROOT/.peers"
tar czf "$ROOT/.peers/deepgemm-src.tgz" -C "$STAGE" .
ls -la "$ROOT/.peers/deepgemm-src.tgz"
