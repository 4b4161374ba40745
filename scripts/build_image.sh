#!/usr/bin/env bash
# Build the AutoDistiller image with podman/buildah: no Docker daemon, no registry needed.
#
#   scripts/build_image.sh                      # -> localhost/autodistill:dev (CPU torch)
#   IMAGE=registry.example.com/autodistill:0.1.0 scripts/build_image.sh && podman push registry.example.com/autodistill:0.1.0
#   TORCH_VARIANT=cu126 IMAGE=...:0.1.0-cu126 scripts/build_image.sh          # CUDA torch (PyTorch's index)
#
# Environment:
#   IMAGE          tag to build (default localhost/autodistill:dev)
#   BASE           base image; default localhost/debian-base:bookworm, made here from Debian packages with
#                  debootstrap (minbase, the Debian mirror apt uses) when it does not exist yet. Any
#                  pullable image works too, e.g. BASE=docker.io/library/python:3.11-slim-bookworm
#   TORCH_VARIANT  cpu (default) | cu126 | ...;  TORCH_INDEX_URL overrides where torch comes from
#                  (default here: empty = the pip sources of this machine, see below)
#   PIP_SOURCES    host (default): the build uses this machine's pip sources (`pip config list` and PIP_*
#                  variables: index-url, extra-index-url, find-links, cert); local folders among them are
#                  mounted read-only into the build, nothing of them is left in the image.
#                  none: the Dockerfile's defaults (PyPI + download.pytorch.org)
#   ISOLATION      podman build --isolation (default chroot: works where podman cannot start containers)
#   EXTRA_BUILD_ARGS  more `podman build` arguments
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-localhost/autodistill:dev}"
BASE="${BASE:-localhost/debian-base:bookworm}"
TORCH_VARIANT="${TORCH_VARIANT:-cpu}"
PIP_SOURCES="${PIP_SOURCES:-host}"
ISOLATION="${ISOLATION:-chroot}"

command -v podman >/dev/null || { echo "error: podman is not installed (Debian: apt-get install podman)" >&2; exit 2; }

# the Debian mirror apt uses on this machine (deb822 .sources or a one-line sources.list)
apt_mirror() {
    local uri
    uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)
    [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
                             | awk '{print $2}' | grep -v security | head -n1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

make_debian_base() {
    local suite="${BASE##*:}" rootfs
    command -v debootstrap >/dev/null || { echo "error: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }
    rootfs=$(mktemp -d /tmp/autodistill-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    echo "== base: debootstrap --variant=minbase $suite $(apt_mirror) -> $BASE"
    debootstrap --variant=minbase "$suite" "$rootfs" "$(apt_mirror)" >"$rootfs.log" 2>&1 \
        || { tail -n 20 "$rootfs.log" >&2; exit 1; }
    tar -C "$rootfs" -c . | podman import - "$BASE" >/dev/null
    rm -rf "$rootfs" "$rootfs.log"
    trap - EXIT
}

if [[ "$BASE" == localhost/debian-base:* ]] && ! podman image exists "$BASE"; then
    make_debian_base
fi

args=(--isolation "$ISOLATION" --ulimit nofile=20000:20000 --format docker
      --build-arg "BASE=$BASE" --build-arg "TORCH_VARIANT=$TORCH_VARIANT")

if [ "$PIP_SOURCES" = host ]; then
    # this machine's pip sources as build args; local paths (file:// indexes, wheel folders, the CA bundle
    # of a proxy) are bind-mounted read-only at the same path, for the build only
    while IFS= read -r line; do
        args+=("$line")
    done < <(python3 - <<'PY'
import os, shlex, subprocess
out = subprocess.run(["python3", "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
conf = {}
for line in out.splitlines():               # e.g. global.find-links='/opt/wheels'  or  :env:.cert='...'
    key, _, value = line.partition("=")
    scope, _, name = key.rpartition(".")
    value = " ".join(shlex.split(value))
    if scope == ":env:" or name not in conf:  # PIP_* variables win over files, as in pip
        conf[name] = value
mounts = set()
for name in ("index-url", "extra-index-url", "find-links", "cert"):
    if not conf.get(name):
        continue
    value = conf[name]
    if name == "cert":   # mounted beside the image's own /etc/ssl (which apt rewrites), build only
        print("--volume")
        print(f"{value}:/run/pip-build-ca.crt:ro")
        value = "/run/pip-build-ca.crt"
    print("--build-arg")
    print(f"PIP_{name.upper().replace('-', '_')}={value}")
    if name == "cert":
        continue
    for item in value.split():
        path = item[len("file://"):] if item.startswith("file://") else item
        if path.startswith("/") and os.path.exists(path):
            if path.endswith("/simple"):      # a file:// index: its files live beside it
                path = os.path.dirname(path)
            mounts.add(path)
for path in sorted(mounts):
    print("--volume")
    print(f"{path}:{path}:ro")
PY
)
    # with host sources found, torch comes from them unless told otherwise (download.pytorch.org may be
    # out of reach); with none, from the Dockerfile's default (PyTorch's index for TORCH_VARIANT)
    if [ -n "${TORCH_INDEX_URL+x}" ]; then
        args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
    elif [ "$TORCH_VARIANT" = cpu ] && printf '%s\n' "${args[@]}" | grep -q '^PIP_\(INDEX_URL\|EXTRA_INDEX_URL\|FIND_LINKS\)='; then
        args+=(--build-arg "TORCH_INDEX_URL=")
    fi
elif [ -n "${TORCH_INDEX_URL+x}" ]; then
    args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
fi

# shellcheck disable=SC2206
args+=(${EXTRA_BUILD_ARGS:-} -t "$IMAGE" .)
echo "== podman build ${args[*]}"
start=$(date +%s)
podman build "${args[@]}"
echo "== built $IMAGE in $(( $(date +%s) - start )) s; $(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
