# focus-serve images.
#
#   docker build -t focus-serve:gpu .               default target (last stage): NVIDIA GPUs
#   docker build --target cpu -t focus-serve:cpu .  small CPU image: no CUDA, no torch
#   docker build --target cpu-pull -t focus-serve:cpu-pull .   CPU image that can `focus pull`
#
# gpu: CUDA 13 runtime + cuDNN 9, onnxruntime-gpu (instead of onnxruntime) and TensorRT from PyPI.
#      TensorRT engines are GPU-specific, so none is baked in: deploy/entrypoint.sh builds the
#      missing ones from the ONNX models into the FOCUS_ENGINE_CACHE volume at first start.
# cpu: python:3.11-slim with the service's dependencies only (ONNX Runtime on CPU).
#
# Both install the package into /opt/venv in a builder stage and copy only that venv into a
# runtime stage. Nothing is downloaded except from the Debian/Ubuntu archives and PyPI.
# Why CUDA 13: the current onnxruntime-gpu and tensorrt wheels on PyPI are built for CUDA 13.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

# --------------------------------------------------------------------------- cpu builder
FROM ${PYTHON_IMAGE} AS cpu-builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, read from pyproject.toml (the single place they are declared, with their
# version bounds), so a change to the sources alone reuses this layer instead of downloading again.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); \
print(*p['build-system']['requires'], *p['project']['dependencies'], sep='\n')" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY README.md focus_cli.py ./
COPY models/ models/
COPY training/ training/
COPY export/ export/
COPY service/ service/
RUN pip install --no-deps --no-build-isolation . \
    && pip check \
    && python -c "import onnxruntime, service" \
    && ! python -c "import torch" 2>/dev/null

# --------------------------------------------------------------------------- cpu runtime
FROM ${PYTHON_IMAGE} AS cpu
LABEL org.opencontainers.image.title="focus-serve (CPU)" \
      org.opencontainers.image.description="FOCUS foreground segmentation service, ONNX Runtime on CPU"
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home focus \
    && mkdir -p /app /var/cache/focus/engines \
    && chown focus:focus /var/cache/focus/engines
COPY --from=cpu-builder /opt/venv /opt/venv
COPY --chmod=0755 deploy/entrypoint.sh /usr/local/bin/focus-entrypoint
COPY deploy/healthcheck.py /usr/local/lib/focus/healthcheck.py
COPY model_repository/ /app/model_repository/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FOCUS_MODEL_REPOSITORY=/app/model_repository \
    FOCUS_ENGINE_CACHE=/var/cache/focus/engines \
    FOCUS_BACKEND=onnxruntime \
    FOCUS_DEVICE=cpu \
    FOCUS_HOST=0.0.0.0 \
    FOCUS_PORT=8000
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=6s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/lib/focus/healthcheck.py"]
ENTRYPOINT ["focus-entrypoint"]
CMD ["serve"]

# --------------------------------------------------------------------------- cpu-pull (FOCUS_PULL)
# The cpu image plus the train extra (torch, huggingface_hub), so `focus serve` can honour
# FOCUS_PULL=camouflage:large,... : released checkpoints are pulled from the Hugging Face Hub into
# the model repository, a volume here (the entrypoint first copies the bundled demo models into it;
# each task answers with its demo model until its pull is published). torch comes from PyPI like
# every other dependency; its Linux wheel brings CUDA libraries, so this image is several GB.
FROM cpu-builder AS cpu-pull-builder
# Versions are bounded in pyproject.toml, the single place dependencies are declared.
# hadolint ignore=DL3013
RUN pip install ".[train]" \
    && python -c "import torch, huggingface_hub, export.pull"

FROM cpu AS cpu-pull
LABEL org.opencontainers.image.title="focus-serve (CPU, with focus pull)"
USER 0:0
RUN mkdir -p /var/lib/focus/models /var/lib/focus/hf \
    && chown -R focus:focus /var/lib/focus
COPY --from=cpu-pull-builder /opt/venv /opt/venv
ENV FOCUS_MODEL_REPOSITORY=/var/lib/focus/models \
    HF_HOME=/var/lib/focus/hf
VOLUME ["/var/lib/focus"]
USER 10001:10001

# --------------------------------------------------------------------------- gpu builder
FROM ${CUDA_IMAGE} AS gpu-builder
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The distribution's Python (3.12 on Ubuntu 24.04); versions follow the pinned base image tag.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md focus_cli.py ./
COPY models/ models/
COPY training/ training/
COPY export/ export/
COPY service/ service/
# onnxruntime (a base dependency) and onnxruntime-gpu install the same `onnxruntime` module and
# must never coexist: install with the gpu extra, remove both, then put back onnxruntime-gpu alone
# at the version the resolver chose. The last check fails the build if the CUDA provider is gone.
# Versions are bounded in pyproject.toml, the single place dependencies are declared.
# hadolint ignore=DL3013
RUN pip install ".[gpu,tensorrt]" \
    && ort_gpu="$(pip show onnxruntime-gpu | sed -n 's/^Version: //p')" \
    && pip uninstall --yes onnxruntime onnxruntime-gpu \
    && pip install --no-deps "onnxruntime-gpu==${ort_gpu}" \
    && python -c "import onnxruntime as ort, sys; sys.exit('CUDAExecutionProvider' not in ort.get_available_providers())" \
    && python -c "import tensorrt, service" \
    && ! python -c "import torch" 2>/dev/null

# --------------------------------------------------------------------------- gpu runtime (default)
FROM ${CUDA_IMAGE} AS gpu
LABEL org.opencontainers.image.title="focus-serve (GPU)" \
      org.opencontainers.image.description="FOCUS foreground segmentation service, TensorRT / ONNX Runtime CUDA"
ENV DEBIAN_FRONTEND=noninteractive
# Same Python as the builder stage (the venv links to it); versions follow the base image tag.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /app --no-create-home focus \
    && mkdir -p /app /var/cache/focus/engines \
    && chown focus:focus /var/cache/focus/engines
COPY --from=gpu-builder /opt/venv /opt/venv
COPY --chmod=0755 deploy/entrypoint.sh /usr/local/bin/focus-entrypoint
COPY deploy/healthcheck.py /usr/local/lib/focus/healthcheck.py
COPY model_repository/ /app/model_repository/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FOCUS_MODEL_REPOSITORY=/app/model_repository \
    FOCUS_ENGINE_CACHE=/var/cache/focus/engines \
    FOCUS_BACKEND=auto \
    FOCUS_DEVICE=cuda \
    FOCUS_HOST=0.0.0.0 \
    FOCUS_PORT=8000 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /app
VOLUME ["/var/cache/focus/engines"]
USER 10001:10001
EXPOSE 8000
# Long start period: the first start on a new GPU builds TensorRT engines before serving.
HEALTHCHECK --interval=30s --timeout=6s --start-period=600s --retries=3 \
    CMD ["python", "/usr/local/lib/focus/healthcheck.py"]
ENTRYPOINT ["focus-entrypoint"]
CMD ["serve"]
