# syntax=docker/dockerfile:1.7
# One image, two targets:
#   docker build -t od-annotation-worker .                      # RunPod worker (default, last stage)
#   docker build --target backend -t od-annotation-backend .   # Label Studio ML backend + rq worker
# Bake weights into the image (recommended for RunPod cold starts):
#   docker build --build-arg BAKE_MODELS="grounding_dino sam2" \
#                --secret id=hf_token,env=HF_TOKEN -t od-annotation-worker .
# The install step is `make install`, the same one CI runs.

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/models/huggingface \
    PATH=/app/.venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv make ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 app \
    && mkdir -p /app /models/huggingface /tmp/od-annotation \
    && chown -R app:app /app /models /tmp/od-annotation
WORKDIR /app
USER app
COPY --chown=app:app pyproject.toml README.md Makefile ./
COPY --chown=app:app ml_backend ./ml_backend
RUN make install
COPY --chown=app:app model.py _wsgi.py test_input.json ./
ARG BAKE_MODELS=""
RUN --mount=type=secret,id=hf_token,uid=10001 \
    if [ -n "$BAKE_MODELS" ]; then \
        HF_TOKEN="$(cat /run/secrets/hf_token 2>/dev/null || true)" python -m ml_backend.download $BAKE_MODELS; \
    fi
VOLUME ["/models/huggingface"]

FROM base AS backend
EXPOSE 9090
CMD ["gunicorn", "--bind", "0.0.0.0:9090", "--workers", "1", "--threads", "8", "--timeout", "300", "_wsgi:app"]

FROM base AS worker
EXPOSE 8000
# On RunPod (RUNPOD_WEBHOOK_GET_JOB set) this runs the serverless loop; elsewhere the local test API.
CMD ["python", "-u", "-m", "ml_backend.worker", "--rp_api_host", "0.0.0.0", "--rp_api_port", "8000"]
