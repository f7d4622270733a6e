"""``Annotated`` dependency aliases shared by the routers."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from service.errors import ErrorCode, ServiceError
from service.settings import Settings
from service.state import ServiceState

API_KEY_HEADER = "X-API-Key"

_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="Required on /segment and /tasks when the server sets FOCUS_API_KEY.",
)


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.focus
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def require_api_key(
    settings: SettingsDep, key: Annotated[str | None, Security(_api_key_header)] = None
) -> None:
    expected = settings.api_key_value()
    if expected is None:
        return
    if key is None or not secrets.compare_digest(key.encode(), expected.encode()):
        raise ServiceError(ErrorCode.UNAUTHORIZED, f"missing or invalid {API_KEY_HEADER} header")


ApiKeyDep = Depends(require_api_key)
