#!/usr/bin/env bash
# Build the local Debian base image that stands in for python:3.11-slim-bookworm where registry
# images cannot be pulled (see docker-compose.local.yml and `make container-test`).
#
#   deploy/local/base.sh        prints the image name; builds it only when it is missing
#
# debootstrap makes a minimal bookworm root filesystem from Debian's own archive (Python 3.11 as
# /usr/bin/python3, `python` -> python3, venv, CA certificates) and `podman import` turns it into
# an image. The image is tagged with a key of its inputs (this file and the mirror), so a run
# reuses it until one of them changes; the moving tag localhost/focus-base:bookworm points at the
# current one.
set -euo pipefail

suite=bookworm
packages=python3,python3-venv,python-is-python3,ca-certificates
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
name=localhost/focus-base

log() { printf 'base: %s\n' "$*" >&2; }

key="$( { cat "${BASH_SOURCE[0]}"; echo "$mirror"; } | sha256sum | cut -c1-12)"
tag="$name:$suite-$key"

if podman image exists "$tag"; then
    log "$tag present (cached)"
else
    for tool in debootstrap podman; do
        command -v "$tool" >/dev/null || { log "$tool not found"; exit 2; }
    done
    rootfs="$(mktemp -d /var/tmp/focus-base.XXXXXX)"
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap $suite from $mirror into $rootfs (a few minutes)"
    started=$SECONDS
    if ! nice -n 10 debootstrap --variant=minbase --include="$packages" \
        "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1; then
        tail -n 30 "$rootfs.log" >&2
        rm -f "$rootfs.log"
        exit 1
    fi
    rm -f "$rootfs.log"
    # Downloaded packages and indexes are not part of the image (apt-get update fetches them).
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar --numeric-owner -C "$rootfs" -c . \
        | podman import --change 'CMD ["/bin/bash"]' \
            --message "debootstrap --variant=minbase --include=$packages $suite" - "$tag" >/dev/null
    log "$tag built in $((SECONDS - started)) s"
fi
podman tag "$tag" "$name:$suite"
echo "$tag"
