# syntax=docker/dockerfile:1
# GKC, the General Knowledge Center: gRPC reads on 50051, REST ops on 8081. No torch in this image.
# Build from the repository root:  docker build -f deploy/gkc.Dockerfile -t keep-gkc .
# Pin by digest in production:     --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY contract ./contract
COPY bench ./bench
COPY protos ./protos
COPY gkc ./gkc
COPY ranker ./ranker
COPY trainer ./trainer
RUN pip install --no-cache-dir "/src[gkc]"

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 keep \
    && useradd --system --uid 10001 --gid keep --create-home --home-dir /home/keep keep \
    && mkdir -p /data \
    && chown keep:keep /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GKC_HOST=0.0.0.0 \
    GKC_GRPC_PORT=50051 \
    GKC_HTTP_PORT=8081 \
    GKC_DATA_DIR=/data
USER 10001:10001
WORKDIR /home/keep
EXPOSE 50051 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GKC_HTTP_PORT', '8081'), timeout=2)"]
ENTRYPOINT ["keep"]
CMD ["serve", "gkc"]
