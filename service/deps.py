"""``Annotated`` dependency aliases shared by the routers."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, Request, Security
from fastapi.security import APIKeyHeader

from service.errors import ErrorCode, ServiceError
from service.settings import Settings
from service.state import ServiceState

API_KEY_HEADER = "X-API-Key"
ADMIN_KEY_HEADER = "X-Admin-Key"
TIMEOUT_HEADER = "X-Focus-Timeout-Ms"

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


_admin_key_header = APIKeyHeader(
    name=ADMIN_KEY_HEADER,
    scheme_name="AdminKey",  # not the class name: the X-API-Key scheme already has that
    auto_error=False,
    description="Required on /admin routes; they are off unless the server sets FOCUS_ADMIN_KEY.",
)


def require_admin_key(
    settings: SettingsDep, key: Annotated[str | None, Security(_admin_key_header)] = None
) -> None:
    """403 while FOCUS_ADMIN_KEY is unset (the admin API is off), 401 without the right key."""
    expected = settings.admin_key_value()
    if expected is None:
        raise ServiceError(
            ErrorCode.FORBIDDEN, "the admin API is off; set FOCUS_ADMIN_KEY to enable it"
        )
    if key is None or not secrets.compare_digest(key.encode(), expected.encode()):
        raise ServiceError(ErrorCode.UNAUTHORIZED, f"missing or invalid {ADMIN_KEY_HEADER} header")


AdminKeyDep = Depends(require_admin_key)


def request_timeout(
    settings: SettingsDep,
    timeout_ms: Annotated[
        int | None,
        Header(
            alias=TIMEOUT_HEADER,
            gt=0,
            le=86_400_000,
            description="This request's deadline in milliseconds; it can only lower the "
            "server's FOCUS_TIMEOUT_S (a larger value gets the server's deadline).",
        ),
    ] = None,
) -> float:
    """The request's deadline in seconds: the server's, or the client's when that is shorter."""
    if timeout_ms is None:
        return settings.timeout_s
    return min(settings.timeout_s, timeout_ms / 1000.0)


TimeoutDep = Annotated[float, Depends(request_timeout)]
