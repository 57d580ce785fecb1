# syntax=docker/dockerfile:1
# Trainer: the batch side (synthetic data, pre-training, export, publish, downstream training).
# Runs as a one-shot job (compose `trainer`, k8s CronJob); default command = deploy/scripts/publish-and-train.sh.
# Build from the repository root:  docker build -f deploy/trainer.Dockerfile -t keep-trainer .
# GPU hosts: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 (same torch pin).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
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
RUN pip install --no-cache-dir "/src[trainer]" \
    && pip install --no-cache-dir --no-deps torchrec==1.8.0

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 keep \
    && useradd --system --uid 10001 --gid keep --create-home --home-dir /home/keep keep \
    && mkdir -p /models /work \
    && chown keep:keep /models /work
COPY --from=build /opt/venv /opt/venv
COPY --chmod=0755 deploy/scripts/publish-and-train.sh /usr/local/bin/publish-and-train
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    KEEP_WORK_DIR=/work \
    KEEP_MODELS_DIR=/models
USER 10001:10001
WORKDIR /home/keep
# A batch job, not a server: there is nothing to probe; the orchestrator watches the exit code.
HEALTHCHECK NONE
ENTRYPOINT ["publish-and-train"]
