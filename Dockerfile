# One image, two targets:
#   docker build -t od-annotation-worker .                      # RunPod worker (default, last stage)
#   docker build --target backend -t od-annotation-backend .   # Label Studio ML backend + rq worker
# Bake weights into the image (recommended for RunPod cold starts):
#   DOCKER_BUILDKIT=1 docker build --build-arg BAKE_MODELS="grounding_dino sam2" \
#                --secret id=hf_token,env=HF_TOKEN -t od-annotation-worker .
#
# torch from PyPI is the CUDA 13.0 build and brings its own CUDA libraries, so the base is a plain
# Python image (any Debian/Ubuntu image with python3.11 + venv works: BASE_IMAGE). Hosts whose NVIDIA
# driver is too old for CUDA 13 need a torch built for an older CUDA, e.g.
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# Layers go from rarely to often changed: dependencies (from pyproject.toml only), then the code,
# so a code change rebuilds in seconds.

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/models/huggingface \
    PYTHONPATH=/app \
    PATH=/app/.venv/bin:$PATH
RUN useradd --create-home --uid 10001 app \
    && mkdir -p /app /models/huggingface /tmp/od-annotation \
    && chown -R app:app /app /models /tmp/od-annotation
WORKDIR /app
USER app

# Runtime dependencies only (no dev tools), read from pyproject.toml.
ARG TORCH_INDEX_URL=""
COPY --chown=app:app pyproject.toml ./
RUN python3 -m venv /app/.venv \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && if [ -n "$TORCH_INDEX_URL" ]; then \
        grep -E '^(torch|torchvision)[=<>~ ]' /tmp/requirements.txt | xargs pip install --index-url "$TORCH_INDEX_URL"; \
    fi \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Weights before the code: only the files the download needs, so a code change keeps this layer.
ARG BAKE_MODELS=""
COPY --chown=app:app ml_backend/__init__.py ml_backend/config.py ml_backend/download.py ./ml_backend/
RUN --mount=type=secret,id=hf_token,uid=10001 \
    if [ -n "$BAKE_MODELS" ]; then \
        HF_TOKEN="$(cat /run/secrets/hf_token 2>/dev/null || true)" python -m ml_backend.download $BAKE_MODELS; \
    fi
VOLUME ["/models/huggingface"]

COPY --chown=app:app ml_backend ./ml_backend
COPY --chown=app:app model.py _wsgi.py test_input.json ./

FROM base AS backend
EXPOSE 9090
CMD ["gunicorn", "--bind", "0.0.0.0:9090", "--workers", "1", "--threads", "8", "--timeout", "300", "_wsgi:app"]

FROM base AS worker
EXPOSE 8000
# On RunPod (RUNPOD_WEBHOOK_GET_JOB set) this runs the serverless loop; elsewhere the local test API.
CMD ["python", "-u", "-m", "ml_backend.worker", "--rp_api_host", "0.0.0.0", "--rp_api_port", "8000"]
