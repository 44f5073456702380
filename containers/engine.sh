#!/bin/sh
# A container engine and a local image registry from Debian packages (`make container-engine`).
# Podman (daemonless, rootful here), runc, the CNCF distribution registry (`docker-registry`) as a push target,
# and debootstrap for the offline base image (containers/base-image.sh). Needs root (or sudo) and apt.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
DROPIN=/etc/containers/containers.conf.d/50-genai-lifecycle.conf
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then
    SUDO=sudo
fi
# Podman's limits for sandboxes where its defaults fail (containers/containers.conf says what was measured).
install_dropin() {
    [ -f "$DROPIN" ] || { $SUDO mkdir -p "$(dirname "$DROPIN")" && $SUDO cp "$HERE/containers.conf" "$DROPIN"; } ||
        echo "containers/engine.sh: could not write $DROPIN; if podman fails on setrlimit, copy containers/containers.conf there" >&2
}
if command -v podman >/dev/null && command -v docker-registry >/dev/null && command -v debootstrap >/dev/null; then
    install_dropin
    echo "container engine: podman $(podman --version | cut -d' ' -f3), docker-registry and debootstrap present"
    exit 0
fi
if [ "$(id -u)" != 0 ] && [ -z "$SUDO" ]; then
    echo "containers/engine.sh: needs root or sudo to install Debian packages (podman, docker-registry, debootstrap)" >&2
    exit 1
fi
command -v apt-get >/dev/null || {
    echo "containers/engine.sh: no apt-get here; install podman (or docker), docker-registry and debootstrap yourself" >&2
    exit 1
}
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
    podman buildah runc uidmap slirp4netns fuse-overlayfs docker-registry debootstrap >/dev/null
install_dropin
echo "container engine: podman $(podman --version | cut -d' ' -f3) installed"
