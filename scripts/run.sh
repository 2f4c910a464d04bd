#!/usr/bin/env bash
# The README's run command: install, build, and start convnext-server on the default model
# model (default_model: a small ConvNeXt trained on handwritten digits) on port 50051.
# Extra arguments go to the server, e.g. `bash scripts/run.sh --model tiny=/models/x.pth`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
exec build/bin/convnext-server --port "${PORT:-50051}" "$@"
