"""What ``focus pull`` tests need instead of the Hugging Face Hub, which our machines cannot reach.

* :func:`official_checkpoint` -- a released-layout FOCUS checkpoint (``{"model": state_dict}``,
  detectron2 names) for any preset: our network's state dict through the inverse of
  ``models.official``'s key map (the loss weight put back), values from the network's own random
  initialisation, fp32. For ``large`` the names and shapes are checked against the reference TSV.
* :func:`lay_out_cache` -- that file in ``huggingface_hub``'s cache format, as the library itself
  writes it (``file_download._hf_hub_download_to_cache_dir``): ``models--OWNER--NAME/blobs/<etag>``,
  ``refs/<revision>`` holding the commit, ``snapshots/<commit>/<file>`` a relative symlink to the
  blob. An LFS file's ETag is its sha256.
* :class:`LoopbackHub` -- a local HTTP server speaking the part of the Hub protocol that
  ``hf_hub_download`` and ``HfApi.list_repo_files`` use: ``HEAD``/``GET
  /{repo}/resolve/{revision}/{file}`` with ``X-Repo-Commit``, ``ETag``/``X-Linked-Etag``,
  ``Content-Length``, ``Range`` requests (206 + ``Content-Range``), the ``X-Error-Code`` of a
  missing repository, revision or file, and ``GET /api/models/{repo}/tree/{revision}``. It can
  cut its first download short (the client must resume with a ``Range`` request) or serve
  corrupted bytes under the right ETag.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def reference_shapes(size: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the reference state dict (``../shared/reference/*.tsv``)."""
    path = SHARED / f"official_focus_dinov2_{size}_state_dict.tsv"
    shapes = {}
    for line in path.read_text().splitlines()[1:]:
        name, shape, _ = line.split("\t")
        shapes[name] = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
    return shapes


def official_state_dict(preset: str, seed: int = 0) -> dict[str, Any]:
    """Our network's state dict in the released layout: the inverse of the import key map."""
    import torch

    from models.build import build_focus
    from models.config import get_preset
    from models.official import DROPPED_KEYS

    config = get_preset(preset)
    torch.manual_seed(seed)
    state = {k: v.detach().clone() for k, v in build_focus(config).state_dict().items()}
    # the reference keeps the loss's class weights [1] * num_classes + [eos_coef] in the model
    (dropped,) = DROPPED_KEYS
    state[dropped] = torch.tensor([1.0] * config.num_classes + [0.1])
    return state


def official_checkpoint(path: Path, preset: str, seed: int = 0, drop: str | None = None) -> Path:
    """Write ``{"model": state_dict}`` as the reference's detectron2 checkpointer does."""
    import torch

    state = official_state_dict(preset, seed)
    if preset in ("large", "giant"):
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        if shapes != reference_shapes(preset):
            raise AssertionError(f"our {preset} names/shapes differ from the reference TSV")
    if drop is not None:
        del state[drop]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "iteration": 1000}, path)
    return path


def lay_out_cache(
    cache: Path, repo_id: str, filename: str, payload: Path, commit: str = COMMIT
) -> Path:
    """Put ``payload`` into a Hugging Face cache as ``repo_id``'s ``filename`` at ``commit``.

    The payload is hard-linked when it can be (the FOCUS-L file is 2.1 GB). Returns the
    snapshot path ``hf_hub_download`` will hand back.
    """
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    etag = sha256_file(payload)
    blob = storage / "blobs" / etag
    blob.parent.mkdir(parents=True, exist_ok=True)
    if not blob.exists():
        try:
            os.link(payload, blob)
        except OSError:
            shutil.copyfile(payload, blob)
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    pointer = storage / "snapshots" / commit / filename
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.unlink(missing_ok=True)
    pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    return pointer


# ----------------------------------------------------------------------------- loopback hub


@dataclass
class HubFile:
    data: bytes
    etag: str = ""  # the sha256 the Hub announces (default: of ``data``)
    corrupt: bool = False  # serve flipped bytes under the announced ETag
    cut_first_get_at: int | None = None  # first GET: announce the whole length, send this much

    def __post_init__(self) -> None:
        self.etag = self.etag or hashlib.sha256(self.data).hexdigest()


@dataclass
class HubRepo:
    files: dict[str, HubFile]
    commit: str = COMMIT
    revisions: tuple[str, ...] = ("main",)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class LoopbackHub:
    repos: dict[str, HubRepo]
    requests: list[Request] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def gets(self, filename: str) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + filename)]

    def __enter__(self) -> LoopbackHub:
        hub = self

        class Handler(_HubHandler):
            state = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_TREE = re.compile(r"^/api/models/([^/]+/[^/]+)/tree/([^/?]+)")


class _HubHandler(BaseHTTPRequestHandler):
    state: LoopbackHub

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._resolve(body=False)

    def do_GET(self) -> None:
        if self.path.startswith("/api/"):
            self._tree()
        else:
            self._resolve(body=True)

    def _record(self) -> None:
        self.state.requests.append(Request(self.command, self.path, dict(self.headers.items())))

    def _error(self, code: str, commit: str | None = None) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", code)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _lookup(self, repo_id: str, revision: str) -> HubRepo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._error("RepoNotFound")
            return None
        if revision not in (*repo.revisions, repo.commit):
            self._error("RevisionNotFound")
            return None
        return repo

    def _resolve(self, body: bool) -> None:
        self._record()
        match = _RESOLVE.match(self.path.split("?")[0])
        if not match:
            self._error("RepoNotFound")
            return
        repo_id, revision, filename = match.groups()
        repo = self._lookup(repo_id, revision)
        if repo is None:
            return
        hub_file = repo.files.get(filename)
        if hub_file is None:
            self._error("EntryNotFound", repo.commit)
            return
        data = hub_file.data
        if hub_file.corrupt:
            data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
        start = 0
        ranged = self.headers.get("Range")
        if body and ranged:
            start = int(re.fullmatch(r"bytes=(\d+)-", ranged).group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{hub_file.etag}"')
        self.send_header("X-Linked-Etag", f'"{hub_file.etag}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if not body:
            return
        cut = hub_file.cut_first_get_at
        if cut is not None and not ranged:
            hub_file.cut_first_get_at = None
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data[start:])

    def _tree(self) -> None:
        self._record()
        match = _TREE.match(self.path)
        if not match:
            self._error("RepoNotFound")
            return
        repo = self._lookup(*match.groups())
        if repo is None:
            return
        entries = [
            {"type": "file", "path": name, "size": len(f.data), "oid": f.etag[:40],
             "lfs": {"oid": f.etag, "size": len(f.data), "pointerSize": 134}}
            for name, f in sorted(repo.files.items())
        ]  # fmt: skip
        body = json.dumps(entries).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


# ----------------------------------------------------------------------------- FOCUS_PULL e2e

ROOT = Path(__file__).resolve().parents[1]
TINY_REPO = "test/focus_tiny_cod"
TINY_FILE = "focus_tiny_cod.pth"
TINY_SPEC = f"camouflage:tiny={TINY_REPO}/{TINY_FILE}"
TINY_SEED = 1


def pull_env(hf_home: Path, **extra: str) -> dict[str, str]:
    """This environment without FOCUS_* / HF_* settings, the Hub's cache in ``hf_home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FOCUS_", "HF_"))}
    env.update(
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_TELEMETRY="1",
        OMP_NUM_THREADS="1",  # the tiny trace is much faster on one thread on a busy machine
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@dataclass
class ServedPull:
    """A real ``focus serve`` that pulled the tiny checkpoint at start-up (``FOCUS_PULL``)."""

    checkpoint: Path  # the released-layout .pth laid into the Hugging Face cache
    hf_home: Path
    repository: Path  # the demo camouflage model (flat, version 1) + what the pull published
    demo_version: str  # focus.json "version" of the demo model
    first: dict[str, Any]  # the first /segment answer (format=json), while the pull ran
    published_during_first: bool  # whether version 2 existed when that answer came back
    later: dict[str, Any] | None  # an answer from the pulled version, where the service reloads
    reloads: bool  # whether this service switches models without a restart
    log: str  # the service's output, the pull's lines included


def png_bytes(height: int, width: int, seed: int = 0) -> bytes:
    """A synthetic camouflage scene as PNG (models.synth)."""
    import io

    import cv2
    from PIL import Image

    from models.synth import sample

    rgb, _ = sample("camouflage", index=0, seed=seed, size=min(height, width))
    rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG")
    return out.getvalue()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate: Any, timeout: float, what: str, process: Any) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(f"focus serve exited {process.returncode} while waiting: {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s: {what}")
        time.sleep(0.5)


def run_served_pull(root: Path) -> ServedPull:
    """Start ``focus serve`` with FOCUS_PULL on an offline cache; see :class:`ServedPull`."""
    import signal
    import subprocess
    import sys

    import httpx

    from service.state import ServiceState

    checkpoint = official_checkpoint(root / TINY_FILE, "tiny", seed=TINY_SEED)
    hf_home = root / "hf"
    lay_out_cache(hf_home / "hub", TINY_REPO, TINY_FILE, checkpoint)
    repository = root / "repository"
    shutil.copytree(ROOT / "model_repository" / "camouflage", repository / "camouflage")
    demo_version = json.loads((repository / "camouflage" / "focus.json").read_text())["version"]
    port = _free_port()
    env = pull_env(
        hf_home,
        HF_HUB_OFFLINE="1",
        FOCUS_PULL=TINY_SPEC,
        FOCUS_MODEL_REPOSITORY=str(repository),
        FOCUS_INTRA_OP_THREADS="1",
        FOCUS_LOG_LEVEL="info",
    )
    log_path = root / "serve.log"
    base = f"http://127.0.0.1:{port}"
    published = repository / "camouflage" / "2" / "focus.json"

    def segment() -> dict[str, Any]:
        response = httpx.post(
            f"{base}/segment/camouflage?format=json",
            content=png_bytes(90, 120),
            headers={"content-type": "image/png"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        return response.json()

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "focus_cli", "serve", "--host", "127.0.0.1",
             "--port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _wait(ready, 120, "the service to become ready", process)
            first = segment()
            published_during_first = published.exists()
            _wait(published.exists, 900, "the pulled version to be published", process)
            later = None
            reloads = hasattr(ServiceState, "reload")
            if reloads:
                pulled = json.loads(published.read_text())["version"]
                later = _wait(
                    lambda: (a := segment())["model"]["version"] == pulled and a,
                    120, "the service to serve the pulled version", process,
                )  # fmt: skip
            _wait(lambda: "pull of" in log_path.read_text(), 60, "the pull to end", process)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return ServedPull(
        checkpoint=checkpoint,
        hf_home=hf_home,
        repository=repository,
        demo_version=demo_version,
        first=first,
        published_during_first=published_during_first,
        later=later,
        reloads=reloads,
        log=log_path.read_text(),
    )
