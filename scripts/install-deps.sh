#!/usr/bin/env bash
# Installs every package convnext-serve needs to build, run and test, from Debian's archive only.
# Idempotent and quiet; safe to run on a machine that already has everything (it then only checks).
#
#   scripts/install-deps.sh            build + runtime + test packages (what the README and CI use)
#   scripts/install-deps.sh --build    build packages only (the Dockerfile's build stage)
#   scripts/install-deps.sh --runtime  only what the built binaries need at run time (Docker final stage)
#   scripts/install-deps.sh --build-cuda    the build packages and python3-venv for the torch wheel
#                                           (scripts/cuda-build.sh; Dockerfile.cuda's build stage)
#   scripts/install-deps.sh --runtime-cuda  the runtime packages less Debian's LibTorch, OpenBLAS,
#                                           oneDNN and libgomp (the fast path's, not in that build;
#                                           Dockerfile.cuda's final stage carries the wheel's
#                                           LibTorch)
#   scripts/install-deps.sh --container  podman and its helpers (scripts/container_test.sh, CI's last stage)
#   scripts/install-deps.sh --bench      what the peer benchmarks need (scripts/perf-analyzer.sh)
#                                        and the profiler (perf)
set -euo pipefail

runtime_pkgs=(
  # What the convnext-server and convnext binaries link (readelf -d), by package.
  libtorch1.13 libopenblas0-pthread  # without OpenBLAS, LibTorch uses the reference BLAS: 20x slower
  libdnnl2  # oneDNN: the CPU fast path's fused kernels (model/onednn_stage.h)
  libgomp1  # OpenMP: our own fast-path kernels' threads (model/amx_mlp.h, layer_norm_rows.h)
  libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623 libssl3
  libopencv-core406 libopencv-imgproc406 libopencv-imgcodecs406
  libjpeg62-turbo  # libjpeg-turbo: the common JPEG decoded straight to RGB (image/jpeg_decoder.h)
  libprometheus-cpp-core1.0
  libmicrohttpd12 libgnutls30  # the Open Inference Protocol's HTTP endpoint (HTTPS, mutual TLS)
)
build_pkgs=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev libopenblas0-pthread libdnnl-dev
  ocl-icd-opencl-dev  # dnnl-config.cmake requires OpenCL; libdnnl-dev only recommends it
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libjpeg-dev  # libjpeg-turbo's headers (image/jpeg_decoder.cc), named, not left to OpenCV's -dev
  libopencv-dev prometheus-cpp-dev nlohmann-json3-dev libssl-dev libmicrohttpd-dev libgnutls28-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang libclang-rt-14-dev  # libFuzzer + sanitizers for fuzz/
)
test_pkgs=(
  python3 python3-torch python3-torchvision python3-numpy python3-pil
  python3-skimage python3-sklearn  # real photos and the digits data set for tests
  python3-grpcio python3-protobuf  # a second-language gRPC client for end-to-end tests
  prometheus python3-yaml  # a real Prometheus scrapes the server in the metrics test
  openssl  # certificates for the TLS tests
  python3-venv  # virtual environments for the PyPI peers: tritonclient (oip_test), timm (family_test)
  curl  # the README's HTTP examples, run by tests/oip_test.py
)

container_pkgs=(
  podman runc  # crun, podman's default runtime, fails here ("cgroups in hybrid mode")
  debootstrap  # the bookworm base image, made locally (no registry is reachable)
  uidmap fuse-overlayfs slirp4netns
)
bench_pkgs=(
  libb64-0d  # perf_analyzer (from the tritonclient 2.41.0 wheel) links it
  linux-perf  # perf record -e cpu-clock: the profiles quoted in README's Performance
)

if [[ "${1:-}" == "--runtime" ]]; then
  pkgs=("${runtime_pkgs[@]}")
elif [[ "${1:-}" == "--runtime-cuda" ]]; then
  pkgs=()
  for p in "${runtime_pkgs[@]}"; do
    [[ "$p" == libtorch1.13 || "$p" == libopenblas0-pthread || "$p" == libdnnl2 ||
       "$p" == libgomp1 ]] || pkgs+=("$p")
  done
elif [[ "${1:-}" == "--build-cuda" ]]; then
  pkgs=("${build_pkgs[@]}" python3-venv)
elif [[ "${1:-}" == "--container" ]]; then
  pkgs=("${container_pkgs[@]}")
elif [[ "${1:-}" == "--bench" ]]; then
  pkgs=("${bench_pkgs[@]}")
elif [[ "${1:-}" == "--build" ]]; then
  pkgs=("${build_pkgs[@]}")
else
  pkgs=("${build_pkgs[@]}" "${test_pkgs[@]}")
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
echo "install-deps: installing ${#missing[@]} package(s): ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
