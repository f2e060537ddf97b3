# A Prefect process worker on a CUDA GPU node with InverseScope installed.
# Build from the project root (docker/compose.yaml does):
#   docker build -f docker/worker.Dockerfile --build-arg TORCH_INDEX_URL=... -t inversescope-worker .
# TORCH_INDEX_URL: the root of PyTorch's wheel index (see docker/README.md); the wheels of
# CUDA build TORCH_CUDA live under ${TORCH_INDEX_URL}/${TORCH_CUDA}.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
ARG TORCH_INDEX_URL

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_LOGGING_EXTRA_LOGGERS=inversescope

# Versions pinned by prefix (hadolint DL3008): Ubuntu 24.04's Python 3.12 and CA bundle of
# 2024-02-03; a security update of either still matches, another release does not.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        "python3=3.12.*" "python3-venv=3.12.*" "ca-certificates=20240203*" \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# torch first, from the CUDA build's index: the project pins torch==${TORCH_VERSION}, which the
# installed +${TORCH_CUDA} build satisfies, so the project's install below keeps it.
RUN test -n "${TORCH_INDEX_URL}" \
        || { echo "set --build-arg TORCH_INDEX_URL (docker/README.md)" >&2; exit 1; } \
    && pip install --index-url "${TORCH_INDEX_URL}/${TORCH_CUDA}" "torch==${TORCH_VERSION}"

WORKDIR /opt/inversescope
COPY pyproject.toml README.md ./
COPY inversescope inversescope
COPY inversescope_core inversescope_core
COPY tasks tasks
COPY storage storage
COPY flows flows
RUN pip install . && python -c "import torch, inversescope.flows.pipeline"

# The shared artifact directory (a volume every worker mounts at the same path), unless the
# workdir is a bucket (s3://...: nothing to mount, see docker/README.md).
WORKDIR /data
ENTRYPOINT ["prefect", "worker", "start", "--type", "process"]
CMD ["--pool", "gpu"]
