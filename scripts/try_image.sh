#!/usr/bin/env bash
# Run a command inside a built image without a container runtime, for machines where `podman run`
# cannot start containers (this one: "crun: setrlimit `RLIMIT_NPROC`: Operation not permitted").
# The image is mounted read-only (podman image mount), a tmpfs overlay on top makes it writable like a
# container's layer, and the command runs chrooted in a private mount namespace with the image's ENV,
# USER and WORKDIR. The network is the host's (no network namespace): ports are the host's ports.
# Needs root (as podman here). Everything written inside is gone when the command ends.
#
#   scripts/try_image.sh localhost/autodistill:dev autodistill --help
#   scripts/try_image.sh localhost/autodistill:dev            # the image's CMD (the REST service)
#   TRY_ENV="AUTODISTILL_SERVICE_DATABASE_URL=..." scripts/try_image.sh IMAGE CMD...   # extra variables
set -euo pipefail
IMAGE="${1:?usage: try_image.sh IMAGE [CMD ARGS...]}"; shift
[ "$(id -u)" = 0 ] || { echo "error: try_image.sh needs root (mount namespaces, chroot)" >&2; exit 2; }

lower=$(podman image mount "$IMAGE")
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
workdir=$(podman image inspect --format '{{.Config.WorkingDir}}' "$IMAGE")
mapfile -t env < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
if [ "$#" -eq 0 ]; then
    mapfile -t cmd < <(podman image inspect --format '{{range .Config.Cmd}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
    set -- "${cmd[@]}"
fi
read -r -a extra <<<"${TRY_ENV:-}"
uid=0; gid=0; home=/root
if [ -n "$user" ] && [ "$user" != root ]; then
    IFS=: read -r _ _ uid gid _ home _ < <(grep "^${user%%:*}:" "$lower/etc/passwd")
fi

scratch=$(mktemp -d /tmp/try-image.XXXXXX)
cleanup() { rm -rf "$scratch"; podman image unmount "$IMAGE" >/dev/null 2>&1 || true; }
trap cleanup EXIT
# shellcheck disable=SC2016
unshare --mount --propagation private -- /bin/bash -c '
    set -euo pipefail
    lower=$1 scratch=$2 uid=$3 gid=$4 home=$5 workdir=$6; shift 6
    mount -t tmpfs -o mode=0755 tmpfs "$scratch"
    mkdir -p "$scratch/upper" "$scratch/work" "$scratch/root"
    mount -t overlay overlay -o "lowerdir=$lower,upperdir=$scratch/upper,workdir=$scratch/work" "$scratch/root"
    root=$scratch/root
    mount -t proc proc "$root/proc"
    mount --rbind /sys "$root/sys"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
    mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
    cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    exec chroot --userspec="$uid:$gid" "$root" /usr/bin/env -i HOME="$home" "$@"
' try-image "$lower" "$scratch" "$uid" "$gid" "$home" "$workdir" \
    "${env[@]}" "${extra[@]}" /bin/sh -c 'cd "$0" && exec "$@"' "${workdir:-/}" "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true' TERM INT
wait "$child" || rc=$?
wait "$child" 2>/dev/null || true
exit "${rc:-0}"
