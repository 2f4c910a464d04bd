#!/usr/bin/env bash
# Makes a virtual environment with the CPU engines bench/cpu_peers.py measures ours against (ONNX
# Runtime and OpenVINO from PyPI, versions pinned in bench/requirements-peers.txt; with --torch
# also PyTorch 2.x and torchvision from PyPI, bench/requirements-peers-torch.txt, a download of
# several GB). Debian's python3 stays the interpreter; the product never imports Python. Remade
# only when the pins change. Not part of the test suite.
#
#   scripts/peers-venv.sh [--torch] [DIR]     (default build/venv-peers)
set -euo pipefail
cd "$(dirname "$0")/.."
torch=0
if [[ "${1:-}" == "--torch" ]]; then torch=1; shift; fi
venv="${1:-build/venv-peers}"
requirements=(bench/requirements-peers.txt)
if (( torch )); then requirements+=(bench/requirements-peers-torch.txt); fi
pins="$(cat "${requirements[@]}")"
if [[ -x "$venv/bin/python" ]] && [[ "$pins" == "$(cat "$venv/requirements.txt" 2>/dev/null)" ]]; then
  exit 0
fi
rm -rf "$venv"
/usr/bin/python3 -m venv "$venv"
args=()
for r in "${requirements[@]}"; do args+=(-r "$r"); done
"$venv/bin/pip" install --quiet --disable-pip-version-check "${args[@]}"
printf '%s' "$pins" > "$venv/requirements.txt"
