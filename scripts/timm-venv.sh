#!/usr/bin/env bash
# Makes a virtual environment with timm (from PyPI, version pinned in tests/requirements-timm.txt)
# for tests/family_test.py: the reference for ConvNeXt V2 and timm's small V1 variants. It sees
# Debian's site packages (--system-site-packages), so timm runs on Debian's python3-torch and
# python3-torchvision, the oracle of every other parity test; timm is installed without its
# dependencies for that reason (it needs none beyond them and python3-yaml to import). The
# product never imports Python. Remade only when the pins change.
#
#   scripts/timm-venv.sh [DIR]     (default build/venv-timm)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-build/venv-timm}"
requirements=tests/requirements-timm.txt
if [[ -x "$venv/bin/python" ]] && cmp -s "$requirements" "$venv/requirements.txt"; then
  exit 0
fi
rm -rf "$venv"
/usr/bin/python3 -m venv --system-site-packages "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$requirements"
"$venv/bin/python" -c "import timm, torch; print('timm', timm.__version__, 'on torch', torch.__version__)"
cp "$requirements" "$venv/requirements.txt"
