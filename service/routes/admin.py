"""``POST /admin/reload``: serve what the model repository holds now, without a restart.

Off unless ``FOCUS_ADMIN_KEY`` is set (403; an open reload endpoint is a denial-of-service
handle), and then only with that key in ``X-Admin-Key`` (401 otherwise, compared in constant
time). Each task switches to its pinned or highest
version through its ``ModelSlot``: the new version is loaded and warmed beside the old one,
new requests move to it, the old one drains. A version that fails keeps the old one serving:
the answer is then 422 ``reload_failed`` saying why, and the other tasks' switches stand.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query

from models.repository import RepositoryError
from models.tasks import UnknownTaskError
from service.deps import AdminKeyDep, StateDep
from service.errors import ErrorCode, ServiceError, error_doc
from service.schemas import ReloadOutcomeInfo, ReloadResponse

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminKeyDep])


@router.post(
    "/reload",
    summary="Rescan the model repository and switch tasks to new versions",
    responses={
        401: error_doc(ErrorCode.UNAUTHORIZED, "missing or invalid X-Admin-Key header"),
        403: error_doc(
            ErrorCode.FORBIDDEN,
            "the admin API is off; set FOCUS_ADMIN_KEY to enable it",
            "The admin API is off (FOCUS_ADMIN_KEY is unset)",
        ),
        404: error_doc(ErrorCode.UNKNOWN_TASK, "unknown task 'foo'; available: ..."),
        422: error_doc(
            ErrorCode.RELOAD_FAILED,
            "camouflage: version 3 not served (RuntimeError: ...); still serving version 2",
            "A version failed to load or warm up (the old one keeps serving), or bad parameters",
        ),
        503: error_doc(ErrorCode.NOT_READY, "models are not loaded yet"),
    },
)
async def reload(
    state: StateDep,
    task: Annotated[
        str | None,
        Query(min_length=1, max_length=64, description="Reload only this task (name or alias)."),
    ] = None,
    version: Annotated[
        int | None,
        Query(
            ge=1,
            le=2**31 - 1,
            description="With `task`: serve this version and keep it (a pin, e.g. a rollback) "
            "instead of the highest.",
        ),
    ] = None,
) -> ReloadResponse:
    if version is not None and task is None:
        raise ServiceError(ErrorCode.VALIDATION_ERROR, "query.version: needs query.task")
    if not state.ready:
        raise ServiceError(ErrorCode.NOT_READY, "models are not loaded yet")
    try:
        outcomes = await state.reload(task, version)
    except UnknownTaskError as exc:
        raise ServiceError(ErrorCode.UNKNOWN_TASK, str(exc)) from None
    except RepositoryError as exc:
        logger.error("reload: %s", exc)
        raise ServiceError(ErrorCode.RELOAD_FAILED, f"reload failed: {exc}") from None
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise ServiceError(ErrorCode.RELOAD_FAILED, "; ".join(o.describe() for o in failed))
    return ReloadResponse(
        tasks=[
            ReloadOutcomeInfo(
                task=o.task,
                status=o.status,
                requested=o.requested,
                serving=o.serving,
                previous=o.previous,
                error=o.error,
            )
            for o in outcomes
        ]
    )
