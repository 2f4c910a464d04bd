#!/usr/bin/env bash
# The README's run command: install, build, and run the product's main job on a shipped sample.
#
# Until the server and the embedded trained model exist, this runs convnext-run: a
# convnext_tiny checkpoint with RANDOM weights (made with Debian's python3-torchvision, since no
# pretrained weights can be downloaded here) classifies samples/chelsea.jpg in-process. The
# classes it prints are meaningless; point --checkpoint at a real checkpoint for real answers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
/usr/bin/python3 tests/python/convnext_reference.py --out build/demo --cases tiny
build/bin/convnext-run --checkpoint build/demo/tiny.safetensors --variant convnext_tiny \
  samples/chelsea.jpg --output build/demo/chelsea.logits.npy
