"""``GET /tasks``: the served tasks with their model metadata."""

from __future__ import annotations

from fastapi import APIRouter

from models.tasks import TASKS
from service.deps import ApiKeyDep, StateDep
from service.errors import ErrorCode, error_doc
from service.schemas import InputInfo, ModelInfo, TaskInfo, TasksResponse

router = APIRouter(tags=["tasks"], dependencies=[ApiKeyDep])


@router.get(
    "/tasks",
    summary="List the served tasks",
    responses={401: error_doc(ErrorCode.UNAUTHORIZED, "missing or invalid X-API-Key header")},
)
async def list_tasks(state: StateDep) -> TasksResponse:
    tasks = []
    for name in state.available:
        loaded = state.models[name]
        card, backend, task = loaded.backend.card, loaded.backend, TASKS[name]
        tasks.append(
            TaskInfo(
                name=name,
                aliases=list(task.aliases),
                description=task.description,
                model=ModelInfo(
                    task=name,
                    preset=card.preset,
                    version=card.version,
                    backend=backend.name,
                    device=backend.device,
                    repository_version=loaded.entry.version,
                    precision=backend.precision,
                    gate=backend.gate,
                    selection=backend.selection,
                ),
                input=InputInfo(
                    short_side=card.input_short_side,
                    max_size=card.input_max_size,
                    size_divisibility=card.size_divisibility,
                ),
                max_batch_size=loaded.batcher.max_batch_size,
            )
        )
    return TasksResponse(tasks=tasks)
