#!/usr/bin/env bash
# Prepares .gpudeps/ for the GPU machine (scripts/gpu_check.sh), which has LibTorch (its torch
# wheel), CMake and ninja but no apt and no internet: the Debian bookworm packages the model-only
# build needs besides LibTorch (Abseil, nlohmann-json, GoogleTest/GoogleMock), downloaded as
# .deb files with apt and unpacked with `dpkg -x` into .gpudeps/root. Carried to the device with
# the device tool's `carry` (64 MiB at most in all; this is about 11 MB unpacked).
#
#   scripts/gpu-deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(libabsl-dev libabsl20220623 nlohmann-json3-dev libgtest-dev libgmock-dev)
rm -rf .gpudeps && mkdir -p .gpudeps/debs .gpudeps/root
if ! (cd .gpudeps/debs && apt-get download "${packages[@]}" >/dev/null 2>&1); then
  apt-get update >/dev/null
  (cd .gpudeps/debs && apt-get download "${packages[@]}" >/dev/null)
fi
for deb in .gpudeps/debs/*.deb; do dpkg -x "$deb" .gpudeps/root; done
rm -rf .gpudeps/debs
du -sh .gpudeps | awk '{print "gpu-deps: .gpudeps holds " $1}'
