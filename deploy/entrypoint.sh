#!/usr/bin/env bash
# Container entrypoint for the focus-serve images.
#
#   entrypoint.sh serve [ARGS...]   build missing TensorRT engines, then exec `focus serve ARGS...`
#   entrypoint.sh CMD [ARGS...]     exec `focus CMD ARGS...` (segment, export, ...)
#
# TensorRT engines are specific to the GPU model and TensorRT version, so they are not shipped in
# the image: at start, for every task whose served version has a model.onnx but no engine at
# $FOCUS_ENGINE_CACHE/<task>/<version>/model.engine (where the service looks), this builds one
# into the cache (a volume, so the cost is paid once per GPU). It only tries where a GPU is
# visible and TensorRT imports; otherwise, or if a build fails, it logs why and serves anyway
# (the service then picks another backend for that task, or refuses to start if
# FOCUS_REQUIRE_GPU=true says it must).
set -euo pipefail

log() { printf '%s entrypoint: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

repository="${FOCUS_MODEL_REPOSITORY:-model_repository}"
cache="${FOCUS_ENGINE_CACHE:-/var/cache/focus/engines}"

gpu_and_tensorrt() {
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
        log "no NVIDIA GPU visible (nvidia-smi -L failed); not building TensorRT engines"
        return 1
    fi
    if ! python3 -c 'import tensorrt' >/dev/null 2>&1; then
        log "TensorRT is not importable; not building TensorRT engines"
        return 1
    fi
}

# One line per task the service will serve, "<task> TAB <model.onnx> TAB <engine>", computed by
# the package itself from the service's settings: models/repository.py picks the version (flat or
# <task>/<version>/ layout, FOCUS_MODEL_VERSIONS pins where the settings have them) and
# models/contract.py says where that version's engine is cached, which is where the TensorRT
# backend looks for it.
engine_plan() {
    python3 - <<'PY'
import sys

from models.contract import ONNX_FILE, engine_cache_path
from models.repository import RepositoryError, scan_repository
from service.settings import Settings

try:
    settings = Settings()
    pins = getattr(settings, "pinned_versions", None)
    entries = scan_repository(settings.model_repository, pins)
except (RepositoryError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
    sys.exit(str(exc))
for task, entry in sorted(entries.items()):
    if entry.has(ONNX_FILE):
        engine = engine_cache_path(settings.engine_cache, task, entry.version)
        print(task, entry.path(ONNX_FILE), engine, sep="\t")
PY
}

build_missing_engines() {
    local plan task onnx engine partial
    if [ "${FOCUS_BACKEND:-auto}" != auto ] && [ "${FOCUS_BACKEND:-auto}" != tensorrt ]; then
        log "FOCUS_BACKEND=${FOCUS_BACKEND} does not use TensorRT; not building engines"
        return 0
    fi
    gpu_and_tensorrt || return 0
    if ! plan="$(engine_plan)"; then
        log "could not read the model repository $repository; not building engines"
        return 0
    fi
    if [ -z "$plan" ]; then
        log "no ONNX models under $repository; nothing to build"
        return 0
    fi
    # fd 3 carries the plan, so nothing a build runs can read it from stdin
    while IFS=$'\t' read -r -u 3 task onnx engine; do
        if [ -s "$engine" ]; then
            log "$task: engine present at $engine"
            continue
        fi
        log "$task: building TensorRT engine $engine from $onnx (first start on this GPU)"
        # Build into a scratch directory and move the result (with any metadata written beside
        # it) into place, so an interrupted build never leaves a truncated engine behind.
        partial="$cache/.partial-$task"
        rm -rf "$partial" 2>/dev/null || true
        if mkdir -p "$partial" "$(dirname "$engine")" \
            && focus export tensorrt --onnx "$onnx" --out "$partial/model.engine" \
            && mv -f "$partial"/* "$(dirname "$engine")/"; then
            log "$task: engine ready"
        else
            log "$task: TensorRT build failed; serving this task with another backend"
        fi
        rm -rf "$partial" 2>/dev/null || true
    done 3<<<"$plan"
}

# ----------------------------------------------------------------------------- FOCUS_PULL
# With FOCUS_PULL set, `focus serve` pulls released checkpoints into $FOCUS_MODEL_REPOSITORY
# itself (service/pull.py). That directory must be writable (a volume); every task it lacks gets
# the demo model bundled in the image ($DEMO_REPOSITORY), so each task answers until its pull is
# published. Nothing already in the repository is touched.
seed_pull_repository() {
    local demo="${DEMO_REPOSITORY:-/app/model_repository}" source task
    [ -n "${FOCUS_PULL:-}" ] || return 0
    if ! mkdir -p "$repository" 2>/dev/null || [ ! -w "$repository" ]; then
        log "FOCUS_PULL is set but $repository is not writable: mount a volume there"
        return 0
    fi
    [ -d "$demo" ] || return 0
    if [ "$(cd "$demo" && pwd -P)" = "$(cd "$repository" && pwd -P)" ]; then
        return 0
    fi
    for source in "$demo"/*/; do
        task="$(basename "$source")"
        [ -e "$repository/$task" ] && continue
        if cp -R "$source" "$repository/.seed-$task" && mv "$repository/.seed-$task" "$repository/$task"; then
            log "$task: demo model copied into $repository; it serves until the pull is published"
        else
            rm -rf "${repository:?}/.seed-$task"
            log "$task: could not copy the demo model into $repository"
        fi
    done
}

if [ "$#" -eq 0 ]; then
    set -- serve
fi

if [ "$1" = serve ]; then
    seed_pull_repository
    build_missing_engines
fi

exec focus "$@"
