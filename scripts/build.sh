#!/usr/bin/env bash
# Installs the dependencies (Debian packages) and builds everything into build/ (binaries in
# build/bin/). Incremental: a second run rebuilds only what changed (ccache and ninja).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build
