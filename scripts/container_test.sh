#!/usr/bin/env bash
# The container image, built and run for real on a bare Debian bookworm base made here: proves
# that the Dockerfile's build stage (a bare-machine build: scripts/install-deps.sh --build and
# CMake) and its runtime stage work, and that the image serves. CI runs this after the test suites.
#
#   1. installs podman, runc and debootstrap (Debian packages);
#   2. makes the base image debian:bookworm-slim from `debootstrap --variant=minbase bookworm`
#      (no registry is reachable here); the tarball is cached in $CONVNEXT_CACHE (default
#      /var/cache/convnext-serve) when that is writable, and rebuilt when it is missing;
#   3. podman build of the Dockerfile (runtime runc: crun fails on hybrid cgroups here);
#   4. podman run of the image as its non-root user, then checks: health SERVING, a Classify of
#      the default model through the convnext CLI, the metrics endpoint, and a SIGTERM drain
#      (exit code 0, event=drained in the log).
#
#   scripts/container_test.sh            (needs root, the built convnext CLI in build/bin)
#   scripts/container_test.sh --base     (steps 1 and 2 only: CI makes the base image in the
#                                         background while the test suites build)
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${CONVNEXT_CACHE:-/var/cache/convnext-serve}"
image=convnext-serve:test
name=convnext-serve-test
port=15051
metrics_port=19090
http_port=18000

bash scripts/install-deps.sh --container
# podman's default rlimits are refused in this sandbox ("RLIMIT_NOFILE ... Operation not
# permitted") unless the container default is "none".
if ! grep -qs '^default_ulimits *= *\[\]' /etc/containers/containers.conf; then
  mkdir -p /etc/containers
  printf '[containers]\ndefault_ulimits = []\n' >> /etc/containers/containers.conf
fi
pm() { podman --runtime runc "$@"; }

# 2. The base image.
if ! pm image exists debian:bookworm-slim; then
  tarball="$cache/bookworm-minbase.tar"
  if [[ ! -s "$tarball" ]]; then
    root="$(mktemp -d)"
    echo "container_test: debootstrap bookworm (minbase)" >&2
    debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
    mkdir -p "$cache" 2>/dev/null || true
    if [[ -w "$cache" ]]; then out="$tarball"; else out="$(mktemp)"; tarball="$out"; fi
    tar -C "$root" -c . >"$out"
    rm -rf "$root"
  fi
  pm import "$tarball" debian:bookworm-slim >/dev/null 2>&1
fi

[[ "${1:-}" == "--base" ]] && exit 0

# 3. Build (the build stage reaches Debian's archive through the host's network).
echo "container_test: podman build" >&2
start=$(date +%s)
pm build --network host -t "$image" . >build/container-build.log 2>&1 || {
  tail -40 build/container-build.log
  echo "container_test: FAILED: the image does not build (build/container-build.log)" >&2
  exit 1
}
echo "container_test: built in $(( $(date +%s) - start )) s" >&2

# 4. Run and check.
pm rm -f "$name" >/dev/null 2>&1 || true
cleanup() { pm rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
pm run -d --name "$name" --network host "$image" --host=127.0.0.1 --port=$port \
  --metrics_host=127.0.0.1 --metrics_port=$metrics_port --http_host=127.0.0.1 \
  --http_port=$http_port >/dev/null
fail() {
  pm logs "$name" 2>&1 | tail -20
  echo "container_test: FAILED: $*" >&2
  exit 1
}
user="$(pm exec "$name" id -u)"
[[ "$user" == 10001 ]] || fail "the server runs as uid $user, not 10001"
for _ in $(seq 120); do
  build/bin/convnext health --target=127.0.0.1:$port --timeout_s=2 --retries=0 >/dev/null 2>&1 && break
  sleep 1
done
build/bin/convnext health --target=127.0.0.1:$port --retries=0 | grep -q SERVING || fail "health"
out="$(build/bin/convnext classify samples/digit_3_heldout_23.png --target=127.0.0.1:$port --top_k 1)"
echo "$out" | grep -q "digit 3" || fail "Classify of the default model: $out"
python3 - "$metrics_port" <<'PY' || fail "metrics endpoint"
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
assert "convnext_requests_total" in text, text[:500]
PY
python3 - "$http_port" <<'PY' || fail "HTTP/REST endpoint (Open Inference Protocol)"
import json, sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}/v2"
assert urllib.request.urlopen(f"{base}/health/ready", timeout=10).status == 200
meta = json.load(urllib.request.urlopen(f"{base}/models/digits", timeout=10))
assert meta["outputs"][0]["name"] == "probabilities", meta
PY
pm kill --signal TERM "$name" >/dev/null
code="$(pm wait "$name")"
[[ "$code" == 0 ]] || fail "exit code $code after SIGTERM"
logs="$(pm logs "$name" 2>&1)"
grep -q "event=drained pending_images=0" <<<"$logs" || fail "no clean event=drained after SIGTERM"
echo "container_test: passed (image built, ran as uid 10001, health, Classify, metrics, HTTP/REST, SIGTERM drain)"
