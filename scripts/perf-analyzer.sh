#!/usr/bin/env bash
# Makes Triton's load generator, perf_analyzer, runnable here, for bench/oip_throughput.sh:
#  - the binary from the tritonclient 2.41.0 wheel on PyPI (the last release that ships it; the
#    PyPI package named "perf-analyzer" is a placeholder that prints "hello");
#  - its libraries: libb64 from Debian (scripts/install-deps.sh --bench), and libcudart.so.12 from PyPI's nvidia-cuda-runtime-cu12
#    (it is linked against it; nothing CUDA is used against our server).
# Versions pinned; nothing is vendored. Prints the path of a wrapper that runs it.
#
#   scripts/perf-analyzer.sh [DIR]     (default build/perf-analyzer)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-build/perf-analyzer}"
if [[ ! -x "$dir/perf_analyzer" ]]; then
  bash scripts/install-deps.sh --bench
  rm -rf "$dir"
  mkdir -p "$dir/wheels"
  /usr/bin/python3 -m venv "$dir/venv"
  "$dir/venv/bin/pip" install --quiet --disable-pip-version-check \
    "nvidia-cuda-runtime-cu12==12.9.79"
  "$dir/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    -d "$dir/wheels" "tritonclient==2.41.0"
  (cd "$dir" && /usr/bin/python3 -m zipfile -e wheels/tritonclient-2.41.0-*.whl unpacked)
  cudart=$(dirname "$(find "$dir/venv" -name 'libcudart.so.12' | head -1)")
  cat > "$dir/perf_analyzer" <<WRAPPER
#!/usr/bin/env bash
export LD_LIBRARY_PATH="$(realpath "$cudart")\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$(realpath "$dir")/unpacked/tritonclient-2.41.0.data/data/bin/perf_analyzer" "\$@"
WRAPPER
  chmod +x "$dir/perf_analyzer" "$dir"/unpacked/tritonclient-2.41.0.data/data/bin/perf_analyzer
fi
echo "$dir/perf_analyzer"
