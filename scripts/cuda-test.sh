#!/usr/bin/env bash
# The CUDA build's test run on a machine without a GPU: builds it (scripts/cuda-build.sh) and runs
# the suite with LibTorch 2.11.0 on the CPU (ctest). CUDA-only tests skip with a message; the
# tests of what differs in this build (no oneDNN fast path, CUDA devices refused with the reason,
# libraries that come with LibTorch) check that.
#
#   scripts/cuda-test.sh [--ci] [BUILD_DIR] [ctest arguments]      (default build-cuda)
#
# --ci: what CI runs (.ci/run; the whole suite twice over does not fit its time budget): only the
# model and server suites' executables are built (the model, checkpoint, batcher, server and
# in-process server end-to-end tests: every layer the GPU path touches, from the checkpoint to the
# gRPC service), and only their tests run. Without it: every target, every test.
set -euo pipefail
cd "$(dirname "$0")/.."
ci=0
if [[ "${1:-}" == --ci ]]; then
  ci=1
  shift
fi
build="${1:-build-cuda}"
shift || true
testdata=()
[[ -f build/testdata/manifest.json ]] && testdata=(-DCONVNEXT_TESTDATA="$PWD/build/testdata")
suites=(convnext_model_test convnext_checkpoint_test convnext_batcher_test convnext_server_test
        convnext_server_e2e_test)
if ((ci)); then
  CONVNEXT_CUDA_BUILD_TARGETS="${suites[*]}" bash scripts/cuda-build.sh "$build" "${testdata[@]}"
  labels="^($(IFS='|'; echo "${suites[*]}"))\$"
  ctest --test-dir "$build" --output-on-failure -j2 -L "$labels" "$@"
else
  bash scripts/cuda-build.sh "$build" "${testdata[@]}"
  ctest --test-dir "$build" --output-on-failure -j2 "$@"
fi
