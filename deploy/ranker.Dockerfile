# syntax=docker/dockerfile:1
# Ranker: gRPC on 50052, REST on 8082. CPU build of torch from the PyTorch CPU wheel index.
# Build from the repository root:  docker build -f deploy/ranker.Dockerfile -t keep-ranker .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, alone, from the CPU index (no CUDA libraries); the extra below then finds it satisfied.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY contract ./contract
COPY bench ./bench
COPY protos ./protos
COPY gkc ./gkc
COPY ranker ./ranker
COPY trainer ./trainer
RUN pip install --no-cache-dir "/src[ranker]"

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 keep \
    && useradd --system --uid 10001 --gid keep --create-home --home-dir /home/keep keep \
    && mkdir -p /models \
    && chown keep:keep /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RANKER_HOST=0.0.0.0 \
    RANKER_GRPC_PORT=50052 \
    RANKER_HTTP_PORT=8082 \
    RANKER_GKC_ADDR=gkc:50051 \
    RANKER_MODEL_DIR=/models/current
USER 10001:10001
WORKDIR /home/keep
EXPOSE 50052 8082
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RANKER_HTTP_PORT', '8082'), timeout=2)"]
ENTRYPOINT ["keep"]
CMD ["serve", "ranker"]
