"""``/docs`` (Swagger UI) and ``/redoc`` render with no network: their assets ship with the
``fastapi-offline`` package. Checked in Debian's Chromium with every request that does not go
to the loopback server aborted and recorded: Swagger UI makes none; ReDoc tries only its
decorative sidebar logo."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest
from service_testing import live_server
from test_service_demo_browser import CHROMIUM_ARGS, _chromium

from service.app import create_app

# Also make Chromium itself unable to resolve any host but the loopback address.
OFFLINE_ARGS = [*CHROMIUM_ARGS, "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


def _render(base: str, path: str, ready: str) -> tuple[list[str], list[str], str]:
    """(requests that left loopback, requests served by us, the page's text) for ``path``."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    outside: list[str] = []
    served: list[str] = []

    def gate(route, request) -> None:  # noqa: ANN001 - Playwright's own types
        url = urlsplit(request.url)
        if url.scheme in ("http", "https", "ws", "wss") and url.hostname != "127.0.0.1":
            outside.append(request.url)
            route.abort()
        else:
            served.append(url.path)
            route.continue_()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=OFFLINE_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.route("**/*", gate)
            page.goto(base + path)
            page.wait_for_selector(ready, timeout=60_000)
            text = page.inner_text("body")
        finally:
            browser.close()
    assert errors == []
    return outside, served, text


def test_swagger_ui_renders_every_operation_offline(make_settings) -> None:
    with live_server(create_app(make_settings())) as base:
        outside, served, text = _render(base, "/docs", ".opblock-summary-path")
        operations = httpx.get(base + "/openapi.json").json()["paths"]
    assert outside == []
    assert "/openapi.json" in served
    assert any(p.endswith("/swagger-ui-bundle.js") for p in served)
    for path in ("/segment", "/segment/{task}", "/tasks", "/health/ready", "/metrics"):
        assert path in operations
        assert path in text, path
    assert "Segment an image (task in the path)" in text


def test_redoc_renders_offline(make_settings) -> None:
    with live_server(create_app(make_settings())) as base:
        outside, served, text = _render(base, "/redoc", "h2")
    # ReDoc's bundle hard-codes one decorative image, the "powered by" logo in the sidebar's
    # footer; blocked, it is simply not drawn. Nothing else may leave the machine.
    assert set(outside) <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}
    assert any(p.endswith("/redoc.standalone.js") for p in served)
    assert "Segment an image (task in the path)" in text
    assert "focus-serve" in text
