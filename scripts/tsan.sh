#!/usr/bin/env bash
# The batcher and server end-to-end tests under ThreadSanitizer: builds the programs they need
# into build-tsan/ (cmake -DCONVNEXT_TSAN=ON) and runs them there, with the TSan canary (a real
# race must be reported; writes ordered by Abseil's primitives must not be). Debian's Abseil and
# gRPC are not instrumented: tests/tsan/absl_sync_annotations.cc makes Abseil's Mutex, CondVar
# and Notification visible to TSan, tests/tsan/grpc_annotations.cc gRPC's completion-queue
# handover, and tests/tsan/tsan.supp lists what remains of gRPC's internals. CI runs this after
# scripts/sanitize.sh.
#
#   scripts/tsan.sh [ctest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The main build's reference data are reused when it has them (see scripts/sanitize.sh).
testdata=()
[[ -f build/testdata/manifest.json ]] && testdata=(-DCONVNEXT_TESTDATA="$PWD/build/testdata")
cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCONVNEXT_TSAN=ON \
  "${testdata[@]}" >/dev/null
cmake --build build-tsan --target tsan_canary convnext_batcher_test convnext_server_test convnext_server_e2e_test \
  convnext-server convnext python_stubs
# A report stops its process with TSan's exit status (halt_on_error), which fails the test, and
# goes to a file: the end-to-end tests start the server as a child whose standard error they do
# not show, so every report is printed at the end and fails this script.
reports="$PWD/build-tsan/tsan-reports"
rm -rf "$reports" && mkdir -p "$reports"
# ignore_noninstrumented_modules: memcpy, free and the like called from inside gRPC, protobuf or
# LibTorch (not instrumented, synchronised in ways TSan cannot see) are not checked; our code is.
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ignore_noninstrumented_modules=1 suppressions=$PWD/tests/tsan/tsan.supp log_path=$reports/report ${TSAN_OPTIONS:-}"
ctest --test-dir build-tsan --output-on-failure -j2 \
  -R '^(tsan_canary_.*|reference_data|BatchQueueTest\..*|BatcherTest\..*|InferenceRequestTest\..*|ServerE2eTest\..*|SharedTrunkE2eTest\..*|ModelFaultTest\..*|ReplicasE2eTest\..*|ModelRepositoryTest\..*|server_e2e|overload_e2e|model_lifecycle_e2e|heads_e2e)$' \
  "$@" || status=$?
if compgen -G "$reports/report.*" >/dev/null; then
  cat "$reports"/report.*
  echo "ThreadSanitizer reported the above (also in $reports)" >&2
  exit 1
fi
exit "${status:-0}"
