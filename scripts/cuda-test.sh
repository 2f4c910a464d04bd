#!/usr/bin/env bash
# The CUDA build's test run on a machine without a GPU: builds it (scripts/cuda-build.sh) and runs
# the whole suite with LibTorch 2.11.0 on the CPU (ctest). CUDA-only tests skip with a message; the
# tests of what differs in this build (no oneDNN fast path, CUDA devices refused with the reason,
# libraries that come with LibTorch) check that. Not part of CI: the wheel (several GB) and a
# second build of the whole tree do not fit its time budget (README, GPU).
#
#   scripts/cuda-test.sh [BUILD_DIR] [ctest arguments]      (default build-cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build-cuda}"
shift || true
testdata=()
[[ -f build/testdata/manifest.json ]] && testdata=(-DCONVNEXT_TESTDATA="$PWD/build/testdata")
bash scripts/cuda-build.sh "$build" "${testdata[@]}"
ctest --test-dir "$build" --output-on-failure -j2 "$@"
