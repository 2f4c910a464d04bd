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
exec scripts/pinned-venv.sh "${1:-build/venv-timm}" tests/requirements-timm.txt \
  --system-site-packages -- --no-deps
