#!/usr/bin/env bash
# The whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer (with LeakSanitizer at
# every process exit): builds into build-asan/ (cmake -DCONVNEXT_SANITIZE=ON) and runs ctest there.
# Tests of release artefacts (the installed client package, the runtime package list) and the
# fuzz smoke run are disabled in that build; see tests/CMakeLists.txt. CI runs it after the
# README's test command.
#
#   scripts/sanitize.sh [ctest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The reference data of the main build, when it has them (CI: scripts/test.sh ran first), are
# reused instead of generated again.
testdata=()
[[ -f build/testdata/manifest.json ]] && testdata=(-DCONVNEXT_TESTDATA="$PWD/build/testdata")
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCONVNEXT_SANITIZE=ON \
  -DCONVNEXT_BUILD_BENCH=OFF "${testdata[@]}" >/dev/null
cmake --build build-asan
# The soak runs 20,000 calls here instead of 100,000: its RSS bound is not checked under ASan
# (see tests/soak_test.py), and LeakSanitizer's verdict at exit does not need more calls.
CONVNEXT_SOAK_CALLS="${CONVNEXT_SOAK_CALLS:-20000}" \
  ctest --test-dir build-asan --output-on-failure -j2 "$@"
