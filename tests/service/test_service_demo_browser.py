"""The demo page driven in a real headless Chromium (Debian's, through Playwright for Python).

Skips with the reason where Playwright or a Chromium binary is missing; ``.ci/run`` installs
both. Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from service_testing import image_bytes, live_server

from service.app import create_app

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _chromium() -> str | None:
    for candidate in (os.environ.get("FOCUS_TEST_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_demo_page_segments_an_uploaded_image(make_settings, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    image = tmp_path / "photo.png"
    image.write_bytes(image_bytes(150, 200, seed=9))
    app = create_app(make_settings())
    with live_server(app) as base, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(base + "/")
            page.wait_for_selector("#task option[value='camouflage']", state="attached")
            page.set_input_files("#file", str(image))
            page.wait_for_function(
                "document.getElementById('mask').naturalWidth > 0", timeout=60_000
            )
            size = page.evaluate(
                "() => { const m = document.getElementById('mask');"
                " return [m.naturalWidth, m.naturalHeight]; }"
            )
            overlay = page.evaluate(
                "() => { const c = document.getElementById('overlay');"
                " return [c.width, c.height]; }"
            )
            download = page.get_attribute("#download", "href")
            timing = page.text_content("#timing")
            status = page.text_content("#status")
        finally:
            browser.close()
    assert errors == []
    assert size == [200, 150]
    assert overlay == [200, 150]
    assert download is not None and download.startswith("data:image/png;base64,")
    assert timing is not None and "onnxruntime on cpu" in timing and "server" in timing
    assert status == "Done: photo.png"
