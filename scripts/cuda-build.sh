#!/usr/bin/env bash
# The CUDA build (README, GPU): the whole project compiled against LibTorch 2.11.0 with CUDA 13.0,
# taken from the PyPI torch wheel (scripts/requirements-torch-cuda.txt) in a virtual environment
# of its own, into BUILD_DIR. Runs on a machine without a GPU (the CUDA toolkit is only needed to
# link; LibTorch finds no device at run time and every model stays on the CPU unless told
# otherwise). Then `ctest --test-dir BUILD_DIR` runs the suite with it (CUDA-only tests skip with a
# message). The oneDNN CPU fast path is compiled out of this build (CMakeLists.txt: the wheel
# carries its own oneDNN).
#
#   scripts/cuda-build.sh [BUILD_DIR] [CMAKE_ARGS...]      (default build-cuda)
#   CONVNEXT_TORCH_VENV=DIR   where the wheel goes (default build/venv-torch-cuda; a few GB)
#   CONVNEXT_CUDA_BUILD_TARGETS="a b"   build only these targets (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build-cuda}"
shift || true
venv="${CONVNEXT_TORCH_VENV:-build/venv-torch-cuda}"
bash scripts/pinned-venv.sh "$venv" scripts/requirements-torch-cuda.txt
prefix="$("$venv/bin/python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_PREFIX_PATH="$prefix" "$@"
grep -q "^CONVNEXT_ONEDNN:BOOL=OFF" "$build/CMakeCache.txt"
targets=()
for t in ${CONVNEXT_CUDA_BUILD_TARGETS:-}; do targets+=(--target "$t"); done
cmake --build "$build" "${targets[@]}"
