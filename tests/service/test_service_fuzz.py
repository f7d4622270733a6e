"""Fuzzing the HTTP API from its own OpenAPI schema with schemathesis.

Every generated request (random task names, formats, thresholds, bodies and content types,
with and without the API key) must get a documented status and a response that conforms to the
schema; no 5xx at all. The default run keeps a fast subset; ``-m slow`` runs many more examples.
``positive_data_acceptance`` is off: a schema-valid ``format: binary`` body is random bytes,
which is rightly refused as an undecodable image. The one 5xx allowed is a 504 for a request
that set its own deadline (``X-Focus-Timeout-Ms: 1`` rightly times out).
"""

from __future__ import annotations

from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402

API_KEY = "fuzz-key"


@schemathesis.check
def not_a_server_error_but_a_clients_deadline(ctx: Any, response: Any, case: Any) -> Any:
    """``not_a_server_error``, except a 504 for a request with ``X-Focus-Timeout-Ms``."""
    if response.status_code == 504 and "X-Focus-Timeout-Ms" in (case.headers or {}):
        return None
    return not_a_server_error(ctx, response, case)


@pytest.fixture(scope="module")
def api_schema(model_repository):
    app = create_app(
        Settings(model_repository=model_repository, api_key=API_KEY, intra_op_threads=1)
    )
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")

FAST = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
SLOW = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def _call(case: Any) -> None:
    case.call_and_validate(
        headers={"X-API-Key": API_KEY},
        excluded_checks=[positive_data_acceptance, not_a_server_error],
        additional_checks=[not_a_server_error_but_a_clients_deadline],
    )


@schema.parametrize()
@FAST
def test_api_conforms_to_its_schema(case: Any) -> None:
    _call(case)


@pytest.mark.slow
@schema.parametrize()
@SLOW
def test_api_conforms_to_its_schema_thoroughly(case: Any) -> None:
    _call(case)
