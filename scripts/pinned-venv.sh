#!/usr/bin/env bash
# Makes a virtual environment DIR with Debian's python3 and installs the pins of REQUIREMENTS from
# PyPI into it; kept as it is while the pins are unchanged (a copy of REQUIREMENTS inside records
# them). Options before `--` go to `python3 -m venv`, after it to `pip install`. Used by
# scripts/oip-venv.sh and scripts/timm-venv.sh; the product never imports Python.
#
#   scripts/pinned-venv.sh DIR REQUIREMENTS [VENV_OPTIONS...] [-- PIP_OPTIONS...]
set -euo pipefail
venv="$1"
requirements="$2"
shift 2
venv_options=()
pip_options=()
while [[ $# -gt 0 ]]; do
  if [[ "$1" == "--" ]]; then
    shift
    pip_options=("$@")
    break
  fi
  venv_options+=("$1")
  shift
done
if [[ -x "$venv/bin/python" ]] && cmp -s "$requirements" "$venv/requirements.txt"; then
  exit 0
fi
rm -rf "$venv"
/usr/bin/python3 -m venv "${venv_options[@]}" "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "${pip_options[@]}" -r "$requirements"
cp "$requirements" "$venv/requirements.txt"
