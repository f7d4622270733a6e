#!/usr/bin/env bash
# Build this checkout's images with podman on the local Debian base (deploy/local/base.sh), for
# machines without a Docker engine or registry access. Prints the image name.
#
#   deploy/local/build.sh cpu          the Dockerfile's cpu target   -> localhost/focus-serve:cpu
#   deploy/local/build.sh prometheus   Dockerfile.prometheus         -> localhost/focus-prometheus:bookworm
#
# On machines like our CI hosts, export CONTAINERS_CONF=deploy/local/containers.conf first.
# Layers are cached by podman, so an unchanged checkout rebuilds in seconds; the image is
# written in Docker's format because the OCI format has no HEALTHCHECK.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
base="${FOCUS_BASE_IMAGE:-$("$here/base.sh")}"

args=(--format docker --layers --network host)
# pip in the image's venv trusts only its own certifi bundle; where the host's CA bundle exists
# (it also holds the CA of a TLS-intercepting proxy, as on our CI), the build uses it instead.
# Build-time mounts only: nothing of the host ends up in a layer.
if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    pip_conf="$(mktemp)"
    trap 'rm -f "$pip_conf"' EXIT
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$pip_conf"
    args+=(--volume /etc/ssl/certs:/etc/ssl/certs:ro --volume "$pip_conf:/etc/pip.conf:ro")
fi

case "${1:-}" in
    cpu)
        image=localhost/focus-serve:cpu
        nice -n 10 podman build "${args[@]}" --build-arg "PYTHON_IMAGE=$base" \
            --target cpu --tag "$image" --file "$root/Dockerfile" "$root" >&2
        ;;
    prometheus)
        image=localhost/focus-prometheus:bookworm
        nice -n 10 podman build "${args[@]}" --build-arg "BASE_IMAGE=$base" \
            --tag "$image" --file "$here/Dockerfile.prometheus" "$here" >&2
        ;;
    *)
        echo "usage: $0 cpu|prometheus" >&2
        exit 2
        ;;
esac
echo "$image"
