#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, clang + ASan/UBSan) into build-fuzz/ and runs each for a
# bounded time from its seed corpus (fuzz/corpus/<target>/). Exit non-zero on any finding; the
# crashing input is left in build-fuzz/findings/.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
CC=clang CXX=clang++ cmake -S fuzz -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz >/dev/null
mkdir -p build-fuzz/findings
for target in pickle zip_directory safetensors_header image_header config request; do
  work="build-fuzz/corpus/$target"
  mkdir -p "$work"
  log="build-fuzz/$target.log"
  if ! build-fuzz/${target}_fuzzer "$work" "fuzz/corpus/$target" -max_total_time="$seconds" \
      -max_len=65536 -rss_limit_mb=2048 -artifact_prefix=build-fuzz/findings/ >"$log" 2>&1; then
    tail -30 "$log"
    echo "fuzz: $target: FINDING (see $log and build-fuzz/findings/)"
    exit 1
  fi
  runs=$(grep -oE '#[0-9]+' "$log" | tail -1 | tr -d '#')
  echo "fuzz: $target: ${runs:-0} executions in ${seconds}s, no findings"
done
