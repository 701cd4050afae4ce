#!/usr/bin/env bash
# Build the offline base image (default ncl-base:bookworm) from a debootstrap rootfs:
# minimal Debian bookworm with python3, python3-venv and tzdata. Skips if the image exists.
# Usage: scripts/build-base-image.sh [IMAGE]
set -euo pipefail

IMAGE="${1:-ncl-base:bookworm}"
SUITE="bookworm"
DEFAULT_MIRROR="http://deb.debian.org/debian"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
say() { echo "build-base-image: $*" >&2; }

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  say "image $IMAGE already exists"; echo "$IMAGE"; exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache show debootstrap >/dev/null 2>&1; then
    say "apt-get update"; $SUDO apt-get update -q >&2
  fi
  say "installing debootstrap"; $SUDO apt-get install -y -q debootstrap >&2
fi

# Debian mirrors apt is configured with (deb822 "URIs:" and one-line "deb URL" forms).
apt_mirrors() {
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
    2>/dev/null | sed -nE 's/^URIs:[[:space:]]*//p; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//p' \
    | tr ' ' '\n' | grep -E '^https?://.*/debian/?$' | sed 's#/$##' || true
}
reachable() {
  local url="$1/dists/$SUITE/Release"
  if command -v curl >/dev/null 2>&1; then curl -fsI --max-time 10 "$url" >/dev/null
  else python3 -c 'import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)' "$url" 2>/dev/null
  fi
}

MIRROR=""
for m in "$DEFAULT_MIRROR" $(apt_mirrors); do
  if reachable "$m"; then MIRROR="$m"; break; fi
  say "mirror $m unreachable"
done
[ -n "$MIRROR" ] || { say "no reachable Debian mirror"; exit 1; }

ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/ncl-rootfs.XXXXXX")"
trap '$SUDO rm -rf --one-file-system "$ROOTFS"' EXIT

say "debootstrap $SUITE from $MIRROR into $ROOTFS"
$SUDO debootstrap --variant=minbase --include=python3,python3-venv,tzdata \
  "$SUITE" "$ROOTFS" "$MIRROR" >&2

$SUDO rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
say "importing rootfs as $IMAGE"
$SUDO tar -C "$ROOTFS" --numeric-owner -c . | docker import -c 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
say "done"
echo "$IMAGE"
