"""``GET /``: the demo page; its assets ship in ``service/static`` (no CDN).

``GET /README.md`` serves the checkout's README (the demo page links its section on real
checkpoints); 404 where the service runs without the source tree.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
README = Path(__file__).resolve().parents[2] / "README.md"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/README.md")
async def readme() -> FileResponse:
    if not README.is_file():
        raise HTTPException(status_code=404, detail="no README.md beside this installation")
    return FileResponse(README, media_type="text/plain; charset=utf-8")
