# convnext-serve container image.
#
#   docker build -t convnext-serve .
#   docker run -p 50051:50051 -p 8000:8000 -p 9090:9090 convnext-serve       # default model
#   docker run -v /path/to/models:/models:ro -p 50051:50051 convnext-serve \
#       --model tiny=/models/convnext_tiny_1k_224_ema.pth
#
# Built and run in CI (scripts/container_test.sh): podman builds this file on a debian:bookworm-slim
# made locally with debootstrap (the build stage is a bare-machine build), runs the image as its
# non-root user and checks health, a Classify of the default model, /metrics and a SIGTERM drain.
# tests/deploy_test.py checks that every port, flag, path and metric name used here and in
# deploy/ exists in the server.
#
# GPU: Debian's LibTorch is CPU-only; Dockerfile.cuda builds the CUDA image (LibTorch 2.11.0 + CUDA
# 13.0 from the PyPI torch wheel), documented there and NOT verified (no GPU here).
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY . .
RUN bash scripts/install-deps.sh --build \
 && cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCONVNEXT_BUILD_TESTS=OFF \
 && cmake --build build --target convnext-server convnext

FROM ${BASE_IMAGE}
COPY scripts/install-deps.sh /tmp/install-deps.sh
RUN bash /tmp/install-deps.sh --runtime && rm -rf /var/lib/apt/lists/* /tmp/install-deps.sh
COPY --from=build /src/build/bin/convnext-server /src/build/bin/convnext /usr/local/bin/
# The default model, where convnext-server looks for it (../share next to the binary).
COPY default_model/server.textproto default_model/convnext_digits.safetensors \
     default_model/labels.txt /usr/local/share/convnext-serve/default_model/
RUN useradd --system --uid 10001 --no-create-home convnext && mkdir -p /models
USER 10001
# gRPC (ImageModelService, grpc.health.v1, reflection) and Prometheus /metrics.
EXPOSE 50051 8000 9090
HEALTHCHECK --interval=10s --timeout=6s --start-period=60s --retries=3 \
  CMD ["convnext", "health", "--target=127.0.0.1:50051", "--timeout_s=5", "--retries=0"]
ENTRYPOINT ["convnext-server", "--port=50051", "--http_port=8000", "--metrics_port=9090"]
