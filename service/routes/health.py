"""``GET /health/live`` (the process answers), ``GET /health/ready`` (models loaded, warm) and
``GET /health/ready/{task}`` (that task's model serving; a reload keeps it ready throughout)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from service.deps import StateDep
from service.errors import ErrorCode, ServiceError, error_doc
from service.schemas import LiveResponse, ReadyResponse, TaskReadyResponse

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", summary="Liveness probe")
async def live() -> LiveResponse:
    return LiveResponse(status="alive")


@router.get(
    "/ready",
    summary="Readiness probe: every model loaded and warmed up",
    responses={
        503: error_doc(
            ErrorCode.NOT_READY, "models are not loaded yet", "Not loaded yet, or draining"
        )
    },
)
async def ready(state: StateDep) -> ReadyResponse:
    if state.draining:  # SIGTERM: tell the load balancer first, keep serving meanwhile
        raise ServiceError(ErrorCode.SHUTTING_DOWN, "draining: the service is shutting down")
    if not state.ready:
        raise ServiceError(ErrorCode.NOT_READY, "models are not loaded yet")
    stopped = [task for task, loaded in state.models.items() if not loaded.batcher.running]
    if stopped:  # an owner task died: say so instead of queueing into the void
        raise ServiceError(ErrorCode.NOT_READY, f"batcher stopped for {', '.join(stopped)}")
    return ReadyResponse(status="ready", tasks=list(state.available))


@router.get(
    "/ready/{task}",
    summary="Readiness of one task: its model loaded, warm and its batcher running",
    responses={
        404: error_doc(ErrorCode.UNKNOWN_TASK, "no model for task 'shadow'; available: salient"),
        503: error_doc(ErrorCode.NOT_READY, "models are not loaded yet"),
    },
)
async def ready_task(
    state: StateDep,
    task: Annotated[str, Path(min_length=1, max_length=64, description="Task name or alias.")],
) -> TaskReadyResponse:
    if state.draining:
        raise ServiceError(ErrorCode.SHUTTING_DOWN, "draining: the service is shutting down")
    if not state.ready:
        raise ServiceError(ErrorCode.NOT_READY, "models are not loaded yet")
    slot = state.slot(task)
    if not slot.active.batcher.running:
        raise ServiceError(ErrorCode.NOT_READY, f"batcher stopped for {slot.task}")
    staging = slot.staging.version if slot.staging is not None else None
    return TaskReadyResponse(
        status="ready", task=slot.task, repository_version=slot.version, staging_version=staging
    )
