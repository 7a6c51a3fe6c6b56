# One image with the three binaries and the ONNX Runtime library.
#
#   docker build -t scoring-fleet .                                   # CPU
#   docker build -t scoring-fleet:cuda --build-arg VARIANT=cuda .     # CUDA workers
#
# The CUDA variant compiles the `cuda` feature, takes ONNX Runtime from the onnxruntime-gpu
# wheel and runs on NVIDIA's CUDA/cuDNN runtime image; it still falls back to the CPU when no GPU
# is found at run time. One GPU stack: onnxruntime-gpu 1.31.1 (the newest GPU wheel; its CUDA
# build needs CUDA 13 and cuDNN 9 for CUDA 13), CUDA 13.0 with cuDNN 9 in the base image (hosts
# need NVIDIA driver R580 or newer), and `ort`'s API level 22 (any ONNX Runtime from 1.22).

ARG VARIANT=cpu
ARG RUST_VERSION=1.95
ARG ORT_VERSION=1.32.0
ARG ORT_GPU_VERSION=1.31.1

FROM rust:${RUST_VERSION}-bookworm AS build
ARG VARIANT
ARG ORT_VERSION
ARG ORT_GPU_VERSION
# The install script reads PyPI's JSON with jq and unpacks the wheel with unzip: no Python.
RUN apt-get update && apt-get install -y --no-install-recommends curl jq unzip nasm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN if [ "$VARIANT" = "cuda" ]; then features="--features producer/cuda,worker/cuda"; pkg=onnxruntime-gpu; version=$ORT_GPU_VERSION; \
    else features=""; pkg=onnxruntime; version=$ORT_VERSION; fi \
    && cargo build --release --locked --bins $features \
    && ORT_PACKAGE=$pkg ORT_VERSION=$version scripts/install-onnxruntime.sh \
    && mkdir -p /out/lib && cp target/release/producer target/release/worker target/release/collector /out/ \
    && cp -P .onnxruntime/lib* /out/lib/

FROM debian:bookworm-slim AS runtime-cpu
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 AS runtime-cuda

# checkov:skip=CKV_DOCKER_7: runtime-${VARIANT} is one of the two stages above, each a versioned base
FROM runtime-${VARIANT}
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home fleet
COPY --from=build /out/producer /out/worker /out/collector /usr/local/bin/
COPY --from=build /out/lib/ /usr/local/lib/
ENV ORT_DYLIB_PATH=/usr/local/lib/libonnxruntime.so \
    ORT_DISABLE_TELEMETRY=1 \
    RUST_LOG=info \
    LOG_FORMAT=json \
    HTTP_PORT=8080
USER 10001
# The worker and collector serve /healthz, /readyz and /metrics on HTTP_PORT. The probe needs
# no curl: bash's /dev/tcp. (The producer serves nothing: it runs once, as a job.)
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${HTTP_PORT} && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
# No default process: each service names its binary (worker, collector, producer).
CMD ["worker", "--help"]
