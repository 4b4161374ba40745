# AutoDistiller image. One image, three roles (no ENTRYPOINT, so any command runs as given):
#   REST service   (default CMD)         autodistill serve --host 0.0.0.0 --port 8000
#   Ray head       ray start --head --block ...     (KubeRay and `ray up` write this command themselves)
#   Ray worker     ray start --address=HEAD:6379 --block ...
# The `autodistill` CLI (search, distill, recommend, keys) is on PATH in all of them.
#
# Build (deploy/README.md has the details; scripts/build_image.sh builds it with podman on a machine
# without a Docker daemon):
#   docker build -t autodistill:0.1.0 .                                    # CPU torch (default)
#   docker build --build-arg TORCH_VARIANT=cu126 -t autodistill:0.1.0-cu126 .   # CUDA torch from the PyTorch index
# Build arguments:
#   BASE             any Debian/Ubuntu image; Python 3.10+ is taken from it, or installed with apt
#                    (a Debian bookworm base gets Python 3.11). Default: python:3.11-slim-bookworm
#   TORCH_VARIANT    cpu (default) | cu126 | cu128 | ... : which torch 2.13.0 build; the build fails if
#                    "cpu" was asked for and a CUDA torch got in (the multi-GB accident), or the reverse
#   TORCH_INDEX_URL  where that torch comes from; default https://download.pytorch.org/whl/$TORCH_VARIANT;
#                    empty = the ordinary pip indexes below (a mirror or local wheel folder that has it)
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_CERT, PIP_CONSTRAINT
#                    the pip sources of the build (a mirror, a proxy's CA); used at build time only
#   EXTRA_PACKAGES   more pip packages; default boto3 (the Ray autoscaler's AWS provider runs inside the
#                    head container). For GCP: "google-api-python-client google-cloud-storage"
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LANG=C.UTF-8 LC_ALL=C.UTF-8 \
    VIRTUAL_ENV=/opt/autodistill PATH=/opt/autodistill/bin:$PATH \
    HF_HUB_DISABLE_TELEMETRY=1 RAY_USAGE_STATS_ENABLED=0 \
    AUTODISTILL_CACHE=/data/cache AUTODISTILL_SERVICE_STATE_DIR=/data \
    AUTODISTILL_SERVICE_MODEL_DIR=/app/meta_dataset/model

# OS packages: Python (when the base has none), and what Ray's cluster tools expect in a node image:
# bash, rsync + ssh (`ray up` syncs files into the container and the head's autoscaler ssh-es to workers),
# wget (KubeRay's readiness/liveness probes), ps (ray status/stop), CA certificates (s3://, gs://)
RUN set -eux; \
    pkgs="bash ca-certificates rsync openssh-client wget procps"; \
    command -v python3 >/dev/null || pkgs="$pkgs python3 python3-venv"; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs; \
    rm -rf /var/lib/apt/lists/*; \
    python3 -c 'import sys; assert sys.version_info >= (3, 10), sys.version'; \
    python3 -m venv "$VIRTUAL_ENV"; \
    useradd --create-home --uid 10001 --shell /bin/bash autodistill; \
    mkdir -p /data && chown autodistill /data

ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_FIND_LINKS=
ARG PIP_CERT=
ARG PIP_CONSTRAINT=
# torch first, in its own layer (the largest, and the one that changes least)
RUN set -eu; \
    for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CERT PIP_CONSTRAINT; do \
        eval "[ -n \"\${$v}\" ] || unset $v"; done; \
    if [ -n "$TORCH_INDEX_URL" ]; then src="--index-url $TORCH_INDEX_URL"; else src=""; fi; \
    pip install --no-cache-dir $src "torch==2.13.0"; \
    python -c "import sys, torch; c = torch.version.cuda; v = '$TORCH_VARIANT'; \
print('torch', torch.__version__, 'CUDA', c); \
sys.exit('TORCH_VARIANT=cpu but this torch is built for CUDA %s: give a TORCH_INDEX_URL or pip source with the CPU build' % c \
         if v == 'cpu' and c else 'TORCH_VARIANT=%s but this torch has no CUDA: give its TORCH_INDEX_URL' % v \
         if v != 'cpu' and not c else 0)"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY autodistill ./autodistill
COPY service ./service
COPY search_spaces ./search_spaces
COPY meta_dataset/model ./meta_dataset/model
# the records a refit starts from: those the model was fitted on (its model.json names them)
COPY meta_dataset/runs ./meta_dataset/runs
COPY meta_dataset/features ./meta_dataset/features
COPY meta_dataset/v2/runs ./meta_dataset/v2/runs
COPY meta_dataset/v2/features ./meta_dataset/v2/features
# editable install with the REST service's extra: the package finds search_spaces/ and meta_dataset/ next
# to itself (in /app), as in a checkout; torch==2.13.0 in the same call keeps the torch installed above
ARG EXTRA_PACKAGES=boto3
RUN set -eu; \
    for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CERT PIP_CONSTRAINT; do \
        eval "[ -n \"\${$v}\" ] || unset $v"; done; \
    pip install --no-cache-dir "torch==2.13.0" -e ".[service]" $EXTRA_PACKAGES; \
    python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"; \
    autodistill --help >/dev/null; \
    python -c "from autodistill.search.space import PRESET_DIR; assert (PRESET_DIR / 'cpu-fast.yaml').is_file(), PRESET_DIR"

USER autodistill
VOLUME ["/data"]
# 8000 REST service; Ray head: 6379 GCS, 8265 dashboard + job server, 10001 Ray client
EXPOSE 8000 6379 8265 10001
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"
CMD ["autodistill", "serve", "--host", "0.0.0.0", "--port", "8000"]
