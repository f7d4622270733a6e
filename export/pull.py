"""``focus pull``: a released FOCUS checkpoint from the Hugging Face Hub -> a new model version.

    focus pull TASK [--size large|giant] [--revision REV] [--repository DIR]

Steps, each printed with its outcome as it ends; the first that fails stops the pull, names
itself, and leaves the model repository as it was:

1. **resolve** -- the task's Hub file (``models.zoo``) and the commit the revision points to
   (``hf_hub_download(dry_run=True)``: one HEAD request, or the cache's ``refs/`` offline). A
   version whose card already records that file at that commit is not pulled again.
2. **download** -- ``huggingface_hub.hf_hub_download`` into the library's own cache, with its
   progress bar, retries (an interrupted transfer resumes with a ``Range`` request) and its
   environment: ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_TOKEN``, ``HF_HUB_CACHE``.
3. **verify** -- the file's sha256 against the ETag it was stored under (the Hub's ETag of an
   LFS file is its sha256); a mismatch is refused.
4. **import** -- ``models.official.import_official``: ``torch.load(weights_only=True)`` and a
   strict load into the preset, every missing / unexpected / mis-shaped key named.
5. **onnx** -- ``export.onnx.export_checkpoint``: the fp32 graph and its parity check.
6. **variants** -- OpenVINO bf16 (the fastest CPU path on FOCUS-L) gated against the fp32 graph,
   its gate recorded in ``focus.json`` (:func:`build_variants`; skipped without openvino).
7. **publish** -- ``models.repository.publish_version``: the next version of the task, atomically.

The model card's provenance records the Hub repository, file, requested and resolved revision,
sha256, size and endpoint, so the pulled model says exactly what it is.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from models.config import ModelCard
from models.contract import ONNX_FILE, PIPELINE_REPORT_FILE, WEIGHTS_FILE
from models.repository import publish_version, scan_versions
from models.zoo import HUB_PROVENANCE, Source, pulled_from

logger = logging.getLogger(__name__)

SHA256_HEX = 64
_CHUNK = 8 * 1024 * 1024


class PullError(RuntimeError):
    """One step of a pull failed; nothing was published."""

    def __init__(self, step: str, message: str) -> None:
        self.step = step
        super().__init__(f"pull step {step!r} failed: {message}")


class PullUnavailableError(RuntimeError):
    """This installation cannot pull (no torch or huggingface_hub); says how to get them."""


class _Skip(Exception):
    """A step that does not apply here; its message says why."""


@dataclass(frozen=True)
class PullOptions:
    repository: Path
    work: Path | None = None  # scratch folder; default: a hidden one inside the repository
    force: bool = False  # pull even when a version already records this file and commit
    force_download: bool = False  # ignore the cached file (e.g. after a checksum failure)
    download_only: bool = False  # stop after verify: fill the cache, publish nothing
    with_weights: bool = False  # also publish model.safetensors (the torch backend)
    opset: int = 18


@dataclass
class StepResult:
    name: str
    status: str  # ok | skipped | failed
    seconds: float
    detail: str


@dataclass
class PullResult:
    source: Source
    status: str  # published | present | downloaded
    revision: str  # the resolved commit
    version: int | None = None  # the repository version published or found
    directory: Path | None = None
    sha256: str | None = None
    steps: list[StepResult] = field(default_factory=list)


def _step(
    name: str,
    fn: Callable[[], tuple[str, Any]],
    steps: list[StepResult],
    echo: Callable[[str], None],
) -> Any:
    """Run one step (``fn() -> (what it did, its value)``), print its outcome, and turn any
    failure into :class:`PullError` naming the step."""
    start = time.perf_counter()
    try:
        detail, value = fn()
        status = "ok"
    except _Skip as skip:
        value, status, detail = None, "skipped", str(skip)
    except PullError as exc:
        status, detail = "failed", str(exc).split(": ", 1)[-1]
        _record(steps, echo, StepResult(name, status, time.perf_counter() - start, detail))
        raise
    except Exception as exc:  # noqa: BLE001 - every failure names its step
        detail = f"{type(exc).__name__}: {exc}"
        _record(steps, echo, StepResult(name, "failed", time.perf_counter() - start, detail))
        raise PullError(name, detail) from exc
    _record(steps, echo, StepResult(name, status, time.perf_counter() - start, detail))
    return value


def _record(steps: list[StepResult], echo: Callable[[str], None], result: StepResult) -> None:
    steps.append(result)
    echo(f"[{result.status:>7}] {result.name:<9} {result.seconds:7.1f} s  {result.detail}")


# ----------------------------------------------------------------------------- hub


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError as exc:
        raise PullUnavailableError(
            f"focus pull needs huggingface_hub ({exc}); install the train extra: "
            "pip install 'focus-serve[train]'"
        ) from None
    return huggingface_hub


def _hub_error(source: Source, revision: str, exc: Exception) -> str:
    """A message for a failed Hub look-up that says what to check."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{source.repo_id}@{revision} on {constants.ENDPOINT}"
    if isinstance(exc, GatedRepoError):
        return f"{source.repo_id} is gated on {constants.ENDPOINT}: accept its terms, set HF_TOKEN"
    if isinstance(exc, RepositoryNotFoundError):
        return (
            f"no model repository {source.repo_id} on {constants.ENDPOINT} (or it is private: "
            "set HF_TOKEN)"
        )
    if isinstance(exc, RevisionNotFoundError):
        return f"{source.repo_id} has no revision {revision!r} on {constants.ENDPOINT}"
    if isinstance(exc, RemoteEntryNotFoundError):
        return f"{where} has no file {source.filename!r}; {_listing(source, revision)}"
    if isinstance(exc, LocalEntryNotFoundError):
        offline = " (HF_HUB_OFFLINE is set)" if constants.is_offline_mode() else ""
        return (
            f"{source.filename} of {source.repo_id}@{revision} is not in the Hugging Face cache "
            f"{constants.HF_HUB_CACHE} and the Hub cannot be reached{offline}"
        )
    return f"{where}: {type(exc).__name__}: {exc}"


def _listing(source: Source, revision: str) -> str:
    from huggingface_hub import HfApi

    try:
        files = HfApi().list_repo_files(source.repo_id, revision=revision)
    except Exception as exc:  # noqa: BLE001 - the listing only decorates the error
        return f"its files could not be listed ({type(exc).__name__}: {exc})"
    return f"it has: {', '.join(sorted(files)) or 'no files'}"


def resolve(source: Source) -> tuple[str, int | None, bool]:
    """(commit, size in bytes if known, cached) of the source's file; :class:`PullError` if none."""
    hub = _hub()
    try:
        info = hub.hf_hub_download(
            source.repo_id, source.filename, revision=source.revision, dry_run=True
        )
    except Exception as exc:  # noqa: BLE001 - mapped to a message that says what to check
        raise PullError("resolve", _hub_error(source, source.revision, exc)) from exc
    return info.commit_hash, info.file_size, info.is_cached


def download(source: Source, commit: str, force: bool = False) -> Path:
    """The file at ``commit`` in the Hugging Face cache (downloaded if missing)."""
    hub = _hub()
    try:
        path = hub.hf_hub_download(
            source.repo_id, source.filename, revision=commit, force_download=force
        )
    except Exception as exc:  # noqa: BLE001 - mapped to a message that says what to check
        raise PullError("download", _hub_error(source, commit, exc)) from exc
    return Path(path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path) -> str:
    """The file's sha256, checked against the ETag the cache stored it under."""
    etag = path.resolve().name  # the cache names every blob by its ETag (blobs/<etag>)
    if len(etag) != SHA256_HEX or any(c not in "0123456789abcdef" for c in etag):
        raise PullError(
            "verify",
            f"{path}: the Hugging Face cache holds no sha256 for it (ETag {etag!r}: not an LFS "
            "file, or symlinks are disabled), so it cannot be verified",
        )
    actual = file_sha256(path)
    if actual != etag:
        raise PullError(
            "verify",
            f"{path}: sha256 {actual} does not match the Hub's {etag}: the download is corrupt; "
            "nothing was published. Run again with --force-download to fetch it anew",
        )
    return actual


# ----------------------------------------------------------------------------- steps


def _existing(repository: Path, source: Source, commit: str | None) -> list[tuple[int, Any]]:
    if not repository.is_dir():
        return []
    versions = scan_versions(repository).get(source.task, [])
    return pulled_from(((e.version, e.card) for e in versions), source, commit)


def _provenance(source: Source, commit: str, path: Path, sha256: str) -> dict[str, Any]:
    from huggingface_hub import constants

    return {
        "repo_id": source.repo_id,
        "filename": source.filename,
        "requested_revision": source.revision,
        "revision": commit,
        "sha256": sha256,
        "bytes": path.stat().st_size,
        "endpoint": constants.ENDPOINT,
        "released": source.released,
        "pulled_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _import(source: Source, weights: Path, work: Path, hub: dict[str, Any]) -> tuple[str, Path]:
    from models.official import import_official

    checkpoint = import_official(weights, source.task, source.size, work / "checkpoint")
    card = ModelCard.load(checkpoint)
    card = replace(
        card,
        version=f"{source.repo_id.split('/')[-1]}@{hub['revision'][:12]}",
        provenance={**card.provenance, HUB_PROVENANCE: hub},
    )
    card.save(checkpoint)
    return f"strict load into preset {source.size}, model version {card.version}", checkpoint


def _onnx(checkpoint: Path, staging: Path, opset: int) -> tuple[str, dict[str, Any]]:
    from export.onnx import export_checkpoint

    result = export_checkpoint(checkpoint, staging / ONNX_FILE, opset=opset)
    p = result["parity"]["fp32"]
    text = (
        f"{result['bytes'] / 1e6:.1f} MB; parity vs PyTorch: soft max |diff| "
        f"{p['soft_max_abs']:.2g}, IoU {p['min_iou']:.4f}"
    )
    return text, result


def build_variants(staging: Path) -> tuple[str, list[str]]:
    """The fastest reduced-precision variant beside ``staging/model.onnx``, gated against fp32.

    OpenVINO bf16 reading ``model.onnx`` itself (no second copy of the weights): on FOCUS-L it
    was the fastest gated CPU path (benchmarks/RESULTS.md, issue 17). Its gate goes into the
    card whether it passes or not; the service serves a variant only when it passed (``auto``
    times it against fp32 there). Skipped, saying why, where OpenVINO is not installed.
    """
    if importlib.util.find_spec("openvino") is None:
        raise _Skip("openvino is not installed (fp32 ONNX only)")
    from export.precision import build_openvino

    made = build_openvino(staging / ONNX_FILE, ["bf16"], write_ir=False, echo=logger.info)
    texts = [
        f"{v.runtime} {v.precision} gate "
        + ("passed" if v.gate is not None and v.gate.passed else "FAILED (not served)")
        + (f": {v.gate.summary()}" if v.gate is not None else "")
        for v in made
    ]
    return "; ".join(texts), [v.name for v in made]


def _publish(
    options: PullOptions, source: Source, staging: Path, checkpoint: Path, report: dict[str, Any]
) -> tuple[str, Any]:
    if options.with_weights:
        shutil.copyfile(checkpoint / WEIGHTS_FILE, staging / WEIGHTS_FILE)
    text = json.dumps(report, indent=2) + "\n"
    (staging / PIPELINE_REPORT_FILE).write_text(text, encoding="utf-8")
    entry = publish_version(options.repository, staging, task=source.task)
    files = ", ".join(sorted(p.name for p in entry.directory.iterdir()))
    return f"{source.task} version {entry.version} at {entry.directory}: {files}", entry


def _resolve_step(source: Source) -> tuple[str, tuple[str, int | None, bool]]:
    commit, size, cached = resolve(source)
    where = "in the cache" if cached else f"to download ({_gb(size)})"
    text = f"{source.repo_id}/{source.filename}@{source.revision} = commit {commit}, {where}"
    return text, (commit, size, cached)


def _download_step(source: Source, commit: str, force: bool) -> tuple[str, Path]:
    path = download(source, commit, force)
    # no paths of this machine: the step details end up in the published pipeline.json
    return f"{source.filename} in the Hugging Face cache ({_gb(path.stat().st_size)})", path


def _verify_step(path: Path) -> tuple[str, str]:
    sha256 = verify(path)
    return f"sha256 {sha256} = the Hub's ETag", sha256


def _gb(size: int | None) -> str:
    return "size unknown" if size is None else f"{size / 1e9:.2f} GB"


def _offline_fallback(
    exc: PullError, source: Source, repository: Path, echo: Callable[[str], None]
) -> int | None:
    """A version already pulled from this file, when the Hub cannot be asked for a newer one."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    if not isinstance(exc.__cause__, LocalEntryNotFoundError):
        return None
    present = _existing(repository, source, None)
    if not present:
        return None
    version, card = present[-1]
    echo(
        f"{source.task}: cannot check {source.repo_id} for a newer revision ({exc}); keeping "
        f"version {version} ({card.version})"
    )
    return version


def pull(
    source: Source, options: PullOptions, echo: Callable[[str], None] = logger.info
) -> PullResult:
    """Run every step for ``source``; see the module docstring."""
    steps: list[StepResult] = []
    repository = Path(options.repository)
    try:
        commit, size, cached = _step("resolve", partial(_resolve_step, source), steps, echo)
    except PullError as exc:
        version = None if options.force else _offline_fallback(exc, source, repository, echo)
        if version is None:
            raise
        return PullResult(source, "present", "", version, repository, steps=steps)
    present = [] if options.force else _existing(repository, source, commit)
    if present:
        version, _ = present[-1]
        echo(
            f"{source.task}: version {version} in {repository} already holds "
            f"{source.repo_id}/{source.filename}@{commit[:12]}; not pulling again (--force does)"
        )
        return PullResult(source, "present", commit, version, repository, steps=steps)
    force = options.force_download
    path = _step("download", partial(_download_step, source, commit, force), steps, echo)
    sha256 = _step("verify", partial(_verify_step, path), steps, echo)
    if options.download_only:
        return PullResult(source, "downloaded", commit, sha256=sha256, steps=steps)
    repository.mkdir(parents=True, exist_ok=True)
    scratch = options.work or repository  # inside the repository: same disk, hidden from scans
    work = Path(tempfile.mkdtemp(prefix=f".pull-{source.task}-", dir=scratch))
    try:
        staging = work / "publish"
        staging.mkdir()
        hub = _provenance(source, commit, path, sha256)
        checkpoint = _step("import", partial(_import, source, path, work, hub), steps, echo)
        _step("onnx", partial(_onnx, checkpoint, staging, options.opset), steps, echo)
        _step("variants", partial(build_variants, staging), steps, echo)
        report = {
            "task": source.task,
            "source": source.spec,
            HUB_PROVENANCE: hub,
            "steps": [{**vars(s), "seconds": round(s.seconds, 1)} for s in steps],
        }
        publish = partial(_publish, options, source, staging, checkpoint, report)
        entry = _step("publish", publish, steps, echo)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return PullResult(
        source, "published", commit, entry.version, entry.directory, sha256, steps=steps
    )
