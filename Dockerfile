# convnext-serve container image. NOT BUILT OR RUN HERE: no Docker engine is available on the
# development machines. The build steps are the same scripts CI runs (scripts/install-deps.sh,
# scripts/build.sh). The multi-stage runtime image, non-root user, health check and ports come
# with the server (see the deployment issue).
FROM debian:bookworm-slim AS build
WORKDIR /src
COPY . .
RUN bash scripts/build.sh
