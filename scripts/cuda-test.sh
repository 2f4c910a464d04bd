#!/usr/bin/env bash
# The CUDA build's test run on a machine without a GPU (CI's stage after the device check): builds
# it (scripts/cuda-build.sh) and runs, with LibTorch 2.11.0 on the CPU, every C++ test (the
# checkpoint, image, model, batcher and server suites, the in-process gRPC end-to-end tests) and
# the Python end-to-end tests that check what differs in this build (its fast-path-less compute
# dtypes, CUDA devices refused with the reason, the deploy files, the server end to end).
# CUDA-only tests skip with a message. The remaining Python end-to-end tests exercise the same
# server code as the Debian build's run (scripts/test.sh) and are left to it, for CI's time
# budget; `ctest --test-dir build-cuda` runs them all (all pass: README, GPU).
#
#   scripts/cuda-test.sh [BUILD_DIR]      (default build-cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build-cuda}"
testdata=()
[[ -f build/testdata/manifest.json ]] && testdata=(-DCONVNEXT_TESTDATA="$PWD/build/testdata")
bash scripts/cuda-build.sh "$build" "${testdata[@]}"
skipped="family_e2e|fuzz_smoke|soak_e2e|oip_e2e|heads_e2e|budget_e2e|variable_batching_e2e"
skipped+="|model_lifecycle_e2e|embed_transport_e2e|overload_e2e|metrics_e2e|regions_e2e"
skipped+="|checkpoint_formats_e2e|convnext_run_e2e|tls_e2e|client_package_consumer"
ctest --test-dir "$build" --output-on-failure -j2 -E "^($skipped)\$"
