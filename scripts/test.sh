#!/usr/bin/env bash
# The README's test command: install, build, and run every test (ctest). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
ctest --test-dir build --output-on-failure -j2 "$@"
