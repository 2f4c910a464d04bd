#!/usr/bin/env bash
# Makes a virtual environment with the real Open Inference Protocol clients (tritonclient, from
# PyPI, versions pinned in tests/requirements-oip.txt) for tests/oip_test.py. Debian's python3
# stays the interpreter; the product never imports Python. Remade only when the pins change.
#
#   scripts/oip-venv.sh [DIR]     (default build/venv-oip)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-build/venv-oip}"
requirements=tests/requirements-oip.txt
if [[ -x "$venv/bin/python" ]] && cmp -s "$requirements" "$venv/requirements.txt"; then
  exit 0
fi
rm -rf "$venv"
/usr/bin/python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
cp "$requirements" "$venv/requirements.txt"
