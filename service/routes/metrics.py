"""``GET /metrics``: Prometheus text exposition (see ``service.metrics``)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service.deps import StateDep

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(state: StateDep) -> Response:
    body, content_type = state.metrics.exposition()
    return Response(body, media_type=content_type)
