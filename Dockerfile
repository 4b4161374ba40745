# AutoDistiller image. CPU by default; a CUDA base by build argument, e.g.
#   docker build --build-arg BASE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 --build-arg TORCH_INDEX=cu124 .
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH_INDEX=cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_DISABLE_TELEMETRY=1 \
    AUTODISTILL_CACHE=/home/autodistill/.cache/autodistill
RUN (command -v python3 >/dev/null || (apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv && rm -rf /var/lib/apt/lists/*)) \
    && useradd --create-home --uid 10001 autodistill
WORKDIR /app
COPY pyproject.toml README.md ./
COPY autodistill ./autodistill
COPY service ./service
COPY search_spaces ./search_spaces
RUN python3 -m pip install --no-cache-dir "torch==2.13.0" --index-url "https://download.pytorch.org/whl/${TORCH_INDEX}" \
    && python3 -m pip install --no-cache-dir .
USER autodistill
ENTRYPOINT ["autodistill"]
CMD ["--help"]
