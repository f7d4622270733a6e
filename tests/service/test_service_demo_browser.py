"""The demo page driven in a real headless Chromium (Debian's, through Playwright for Python).

Skips with the reason where Playwright or a Chromium binary is missing; ``make test`` installs
both. Playwright's own browser download is never used. Every wait is for the state the test
then asserts (``#results[data-shown=...]`` is set after the overlay and cut-out are drawn).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_testing import GatedBackend, factory, image_bytes, live_server

from service.app import create_app

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SHOWN = """() => {
  const o = document.getElementById('original'), m = document.getElementById('mask');
  const c = document.getElementById('overlay'), k = document.getElementById('cutout');
  return {original: [o.naturalWidth, o.naturalHeight], mask: [m.naturalWidth, m.naturalHeight],
          overlay: [c.width, c.height], cutout: [k.width, k.height], src: m.src,
          shown: document.getElementById('results').dataset.shown || null,
          status: document.getElementById('status').textContent};
}"""


def _chromium() -> str | None:
    for candidate in (os.environ.get("FOCUS_TEST_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser_page() -> Iterator[Callable[[], Any]]:
    """``open_page()`` -> a fresh Playwright page in Debian's Chromium; page errors fail."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)

        def open_page() -> Any:
            page = browser.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            return page

        try:
            yield open_page
        finally:
            browser.close()
    assert errors == []


def _until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_demo_page_segments_an_uploaded_image(make_settings, browser_page, tmp_path) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(image_bytes(150, 200, seed=9))
    with live_server(create_app(make_settings())) as base:
        page = browser_page()
        page.goto(base + "/")
        page.wait_for_selector("#task option[value='camouflage']", state="attached")
        page.set_input_files("#file", str(image))
        page.wait_for_selector("#results[data-shown='photo.png']", timeout=60_000)
        shown = page.evaluate(SHOWN)
        download = page.get_attribute("#download", "href")
        timing = page.text_content("#timing")
    assert shown["original"] == shown["mask"] == shown["overlay"] == shown["cutout"] == [200, 150]
    assert download is not None and download == shown["src"]
    assert download.startswith("data:image/png;base64,")
    assert timing is not None and "onnxruntime on cpu" in timing and "server" in timing
    assert "version test" in timing
    assert shown["status"] == "Done: photo.png"


def test_demo_page_before_any_upload(make_settings, model_repository, browser_page) -> None:
    with live_server(create_app(make_settings(model_repository=model_repository))) as base:
        page = browser_page()
        page.goto(base + "/")
        page.wait_for_selector("#task option[value='salient']", state="attached")
        task = page.input_value("#task")
        results_hidden = page.is_hidden("#results")
        images_hidden = [page.is_hidden(s) for s in ("#original", "#mask", "#download")]
        note = page.text_content("#demo-note")
        note_visible = page.is_visible("#demo-note")
        link = page.get_attribute("#real-checkpoints", "href")
        readme = httpx.get(base + link.split("#")[0])
    assert task == "salient"  # the strongest demo model, not the first in the list
    assert results_hidden and images_hidden == [True, True, True]  # no broken-image icons
    assert note_visible and "trained on synthetic" in " ".join(note.split())
    assert link == "/README.md#real-masks-in-three-commands"
    assert readme.status_code == 200
    assert "## Real masks in three commands" in readme.text


def test_two_quick_uploads_pair_each_image_with_its_own_mask(
    make_settings, model_repository, browser_page, tmp_path
) -> None:
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    first.write_bytes(image_bytes(120, 90, seed=11))
    second.write_bytes(image_bytes(150, 200, seed=12))
    made: dict[str, GatedBackend] = {}
    settings = make_settings(model_repository=model_repository)
    app = create_app(settings, backend_factory=factory(GatedBackend, made))
    with live_server(app) as base:
        page = browser_page()
        page.goto(base + "/")
        page.wait_for_selector("#task option[value='salient']", state="attached")
        page.select_option("#task", "salient")
        backend = made["salient"]
        calls = len(backend.batches)
        backend.hold.clear()  # the first request stays in the backend until the second is sent
        page.set_input_files("#file", str(first))
        _until(lambda: len(backend.batches) > calls, "the first request to reach the backend")
        page.set_input_files("#file", str(second))
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('Segmenting second.png')"
        )
        backend.hold.set()
        page.wait_for_selector("#results[data-shown='second.png']", timeout=60_000)
        # the first request's computation finishes too; the page must not show its result
        _until(lambda: len(backend.batches) >= calls + 2, "both requests to be computed")
        page.wait_for_timeout(300)
        shown = page.evaluate(SHOWN)
        expected = httpx.post(
            base + "/segment/salient?format=json",
            content=second.read_bytes(),
            headers={"content-type": "image/png"},
            timeout=60,
        ).json()["mask_png_base64"]
    assert shown["shown"] == "second.png" and shown["status"] == "Done: second.png"
    assert shown["original"] == shown["mask"] == shown["overlay"] == shown["cutout"] == [200, 150]
    assert shown["src"] == f"data:image/png;base64,{expected}"
