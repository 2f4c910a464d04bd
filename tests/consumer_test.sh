#!/usr/bin/env bash
# Installs the client package from the build tree into a temporary prefix, builds the consumer
# project (tests/consumer) against it with find_package, and runs it against a real server.
set -euo pipefail
build="$1"
src="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
cmake -S "$src/tests/consumer" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/build" >/dev/null
"$build/bin/convnext-server" --host 127.0.0.1 --port 0 --metrics_port -1 --http_port -1 >"$work/server.log" 2>&1 &
server=$!
port=""
for _ in $(seq 300); do
  port="$(sed -n 's/.*event=serving .* port=\([0-9]*\) .*/\1/p' "$work/server.log")"
  [ -n "$port" ] && break
  sleep 0.2
done
out="$("$work/build/consumer" "127.0.0.1:$port")"
echo "$out"
[ "$out" = "serving=1 default_model=digits" ]
