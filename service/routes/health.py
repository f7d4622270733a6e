"""``GET /health/live`` (the process answers) and ``GET /health/ready`` (models loaded, warm)."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import StateDep
from service.errors import ErrorCode, ServiceError, error_doc
from service.schemas import LiveResponse, ReadyResponse

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
