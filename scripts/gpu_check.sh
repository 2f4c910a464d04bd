#!/usr/bin/env bash
# The device check: one command for the GPU machine (scripts/gpu-deps.sh first, here, then carry
# .gpudeps), finishing in under 8 minutes and leaving every result in OUT even if cut short (each
# step writes its own log as it goes; summary.txt gets a line per step). CI runs the same script
# with --device cpu against Debian's LibTorch, so that it cannot rot.
#
#   scripts/gpu_check.sh OUT [--device cuda|cpu] [--python PY] [--budget_s 450]
#
# Steps (OUT/<step>.log each):
#   env         GPU (nvidia-smi), driver, CPU, torch/torchvision versions, compilers.
#   configure   the model-only build (-DCONVNEXT_MODEL_ONLY=ON) against PY's torch
#               (torch.utils.cmake_prefix_path) on the GPU machine, Debian's LibTorch with
#               --device cpu on ours; .gpudeps/root supplies Abseil, nlohmann-json, GoogleTest.
#   build       everything the model-only build has: the model and checkpoint tests,
#               device_throughput, model_throughput.
#   tests       the model tests with CONVNEXT_TEST_DEVICE=DEVICE: reference checkpoints and
#               outputs generated on the spot by tests/python/convnext_reference.py with PY's
#               torchvision, then parity in float32 (TF32 off, 1e-4) on the device, float16 and
#               bfloat16 agreement (CudaTest, GPU only), and every other model test.
#   throughput  bench/device_throughput: every variant in float16 and bfloat16 at batch 1, 8, 64,
#               256 against PyTorch eager (channels_last, autocast) measured in the same run
#               (CPU: convnext_tiny, float32, batch 1, briefly).
#   compile     torch.compile's figure for convnext_tiny (GPU only, if time remains).
# Exit status: 0 when configure, build and tests passed (the figures are figures, not checks).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: scripts/gpu_check.sh OUT [--device cuda|cpu] [--python PY] [--budget_s S]}"
shift
device=cuda
python=python3
budget=450
while (($#)); do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --budget_s) budget="$2"; shift 2 ;;
    *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"
build="$PWD/build-gpucheck"
summary="$out/summary.txt"
: >"$summary"
start=$SECONDS
failed=0

left() { echo $((budget - (SECONDS - start))); }
# step NAME MAX_SECONDS COMMAND...: runs COMMAND with its output in OUT/NAME.log, bounded by
# MAX_SECONDS and by what is left of the budget; records the outcome in summary.txt.
step() {
  local name="$1" limit="$2"
  shift 2
  local remaining
  remaining="$(left)"
  if ((remaining < 10)); then
    echo "$name: not run (budget spent)" | tee -a "$summary"
    return 1
  fi
  ((limit > remaining)) && limit=$remaining
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local verdict="ok"
  ((rc == 124 || rc == 137)) && verdict="cut short at ${limit} s"
  ((rc != 0 && rc != 124 && rc != 137)) && verdict="failed (exit $rc)"
  echo "$name: $verdict in $((SECONDS - t0)) s" | tee -a "$summary"
  return $rc
}

env_info() {
  date -u
  uname -a
  nproc
  grep -m1 'model name' /proc/cpuinfo
  command -v nvidia-smi >/dev/null && nvidia-smi
  "$python" -c 'import sys, torch, torchvision; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available()); print("torchvision", torchvision.__version__); print("cudnn", torch.backends.cudnn.version()); [print(torch.cuda.get_device_name(i)) for i in range(torch.cuda.device_count())]'
  cmake --version | head -1
  ninja --version
  c++ --version | head -1
}
export -f env_info
export python
step env 60 bash -c env_info

cmake_args=(-S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCONVNEXT_MODEL_ONLY=ON
            "-DCONVNEXT_TEST_PYTHON=$(command -v "$python")")
prefixes=()
if [[ "$device" != cpu ]]; then
  prefixes+=("$("$python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')")
fi
if [[ -d .gpudeps/root ]]; then
  deps="$PWD/.gpudeps/root/usr"
  prefixes+=("$deps")
  cmake_args+=("-Dabsl_DIR=$deps/lib/x86_64-linux-gnu/cmake/absl"
               "-DGTest_DIR=$deps/lib/x86_64-linux-gnu/cmake/GTest"
               "-Dnlohmann_json_DIR=$deps/share/cmake/nlohmann_json")
fi
if ((${#prefixes[@]})); then
  cmake_args+=("-DCMAKE_PREFIX_PATH=$(IFS=';'; echo "${prefixes[*]}")")
fi
step configure 120 cmake "${cmake_args[@]}" || failed=1
if ((!failed)); then
  step build 300 cmake --build "$build" || failed=1
fi
if ((!failed)); then
  step tests 240 env CONVNEXT_TEST_DEVICE="$device" ctest --test-dir "$build" \
    --output-on-failure -j "$(nproc)" || failed=1
  # The float16/bfloat16 agreement lines the CUDA test prints.
  grep -h "lowest cosine" "$build"/Testing/Temporary/LastTest.log 2>/dev/null \
    | sed 's/^/  /' | tee -a "$summary"
fi
if [[ -x "$build/bin/device_throughput" ]]; then
  if [[ "$device" == cpu ]]; then
    step throughput 120 "$build/bin/device_throughput" --device cpu --dtypes float32 \
      --variants convnext_tiny --batches 1 --seconds 1 --python "$python" --json
  else
    step throughput 330 "$build/bin/device_throughput" --device "$device" \
      --dtypes float16,bfloat16 --batches 1,8,64,256 --seconds 2 --python "$python" --json
    if (($(left) > 60)); then
      step compile "$(($(left) - 10))" "$python" bench/torch_device_eager.py --device "$device" \
        --dtypes float16 --variants convnext_tiny --batches 1,256 --seconds 2 --compile
    fi
  fi
  grep -v '^{' "$out/throughput.log" 2>/dev/null | tail -60 | sed 's/^/  /' >>"$summary"
fi
echo "gpu_check: device $device, $((SECONDS - start)) s; results in $out" | tee -a "$summary"
exit $failed
