#!/bin/sh
# An image to build bentos on where no image registry is reachable (`make base-image`): Debian bookworm from the
# Debian mirror (debootstrap), its Python 3.11 (the bento's python_version), pip, uv (BentoML's Dockerfile installs
# with it), this machine's extra CA certificates (a TLS-intercepting proxy), and the user BentoML's Dockerfile adds.
#   containers/base-image.sh [IMAGE]      default IMAGE: localhost/genai-lifecycle-base:bookworm
# Then set `deploy.docker.base_image` to IMAGE in params.yaml.
set -eu
IMAGE=${1:-localhost/genai-lifecycle-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if podman image exists "$IMAGE" 2>/dev/null; then
    echo "base image $IMAGE present"
    exit 0
fi
ROOT=$(mktemp -d /tmp/genai-lifecycle-base.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
echo "debootstrap bookworm into $ROOT (about a minute)"
debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates,passwd \
    bookworm "$ROOT" "$MIRROR" >/dev/null
# The proxy's CA (if any) so that pip and uv inside the image reach PyPI.
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
fi
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
chroot "$ROOT" update-ca-certificates >/dev/null
chroot "$ROOT" env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    python3 -m pip install --quiet --no-cache-dir --break-system-packages uv
rm -rf "$ROOT/var/cache/apt/archives"/*.deb "$ROOT/var/lib/apt/lists"/*
# No manuals, translations or docs in a server image (~55 MB), as Debian's slim images: removed now and never
# installed by a later apt step; the licences (copyright files) stay.
printf '%s\n' 'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' 'path-exclude=/usr/share/man/*' \
    'path-exclude=/usr/share/info/*' 'path-exclude=/usr/share/locale/*' > "$ROOT/etc/dpkg/dpkg.cfg.d/slim"
find "$ROOT/usr/share/doc" -type f ! -name copyright -delete
rm -rf "$ROOT/usr/share/man"/* "$ROOT/usr/share/info"/* "$ROOT/usr/share/locale"/*
: > "$ROOT/etc/resolv.conf"
tar -C "$ROOT" -c . | podman import \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV UV_NATIVE_TLS=true' \
    --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
echo "base image $IMAGE built ($(podman image inspect --format '{{.Size}}' "$IMAGE") bytes)"
