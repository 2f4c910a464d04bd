#!/usr/bin/env bash
# Makes a virtual environment with the real Open Inference Protocol clients (tritonclient, from
# PyPI, versions pinned in tests/requirements-oip.txt) for tests/oip_test.py. Debian's python3
# stays the interpreter; the product never imports Python. Remade only when the pins change.
#
#   scripts/oip-venv.sh [DIR]     (default build/venv-oip)
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/pinned-venv.sh "${1:-build/venv-oip}" tests/requirements-oip.txt
