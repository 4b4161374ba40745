# AutoDistiller image: runs the REST service (`autodistill serve`). CPU by default; a CUDA base by build
# argument, e.g.
#   docker build --build-arg BASE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 --build-arg TORCH_INDEX=cu124 .
#   docker run -p 8000:8000 -v autodistill:/data autodistill
#   docker exec <container> autodistill keys --state-dir /data create me
# The service listens on 0.0.0.0:8000 inside the container; its embedded Ray head (dashboard and job
# server) stays on the container's loopback. Point AUTODISTILL_SERVICE_RAY_ADDRESS at a cluster to use one.
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH_INDEX=cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_DISABLE_TELEMETRY=1 \
    AUTODISTILL_CACHE=/data/cache AUTODISTILL_SERVICE_STATE_DIR=/data RAY_USAGE_STATS_ENABLED=0 \
    AUTODISTILL_SERVICE_MODEL_DIR=/app/meta_dataset/model \
    AUTODISTILL_SERVICE_BASE_RECORDS=/app/meta_dataset/runs:/app/meta_dataset/distiller/records.jsonl
RUN (command -v python3 >/dev/null || (apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv && rm -rf /var/lib/apt/lists/*)) \
    && useradd --create-home --uid 10001 autodistill \
    && mkdir -p /data && chown autodistill /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY autodistill ./autodistill
COPY service ./service
COPY search_spaces ./search_spaces
COPY meta_dataset/model ./meta_dataset/model
COPY meta_dataset/runs ./meta_dataset/runs
COPY meta_dataset/features ./meta_dataset/features
COPY meta_dataset/distiller/records.jsonl ./meta_dataset/distiller/records.jsonl
COPY meta_dataset/distiller/features ./meta_dataset/distiller/features
RUN python3 -m pip install --no-cache-dir "torch==2.13.0" --index-url "https://download.pytorch.org/whl/${TORCH_INDEX}" \
    && python3 -m pip install --no-cache-dir .
USER autodistill
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python3 -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"
ENTRYPOINT ["autodistill"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
