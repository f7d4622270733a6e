"""The released FOCUS checkpoints on the Hugging Face Hub, and where ``focus pull`` gets a model.

Torch-free: the service validates ``FOCUS_PULL`` and ``focus pull --list`` prints this table
without torch. The reference project (GitHub ``geshang777/FOCUS``, ``MODEL_ZOO.md``) publishes one
Hub repository per task and backbone, ``geshang/focus_{large,giant}_{cod,sod,sd,dbd,fd}``, each
holding one detectron2 checkpoint ``focus_<size>_<alias>.pth`` (``{"model": state_dict}`` plus
the training state: that is why the file is 2.4x the network's own 2.1 GB).

What was seen on the Hub pages (not downloadable from our machines): ``focus_large_sd.pth``
5.11 GB at commit ``f0037d4``, ``focus_giant_cod.pth`` 15.4 GB at commit ``50f03f3``,
``focus_large_cod`` at commit ``832afec``. The other file names follow the same pattern and their
sizes are assumed equal per backbone (same network, same optimiser state); a wrong name fails
with the list of files the repository does have (``export.pull``).

A :class:`Source` is what one pull fetches: a released checkpoint (``camouflage:large``) or any
Hub file in the same layout (``camouflage:tiny=owner/name/file.pth``: a fine-tune, or the tests'
own repositories), optionally at a pinned revision (``@<commit or branch>``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from models.config import PRESETS, ModelCard
from models.tasks import TASKS, UnknownTaskError, canonical_task

SIZES: tuple[str, ...] = ("large", "giant")  # released backbones, also our preset names
DEFAULT_SIZE = "large"
DEFAULT_REVISION = "main"
HUB_OWNER = "geshang"

# Bytes of each released .pth on the Hub (the pages above; 5.11 GB and 15.4 GB as displayed).
DOWNLOAD_BYTES: dict[str, int] = {"large": 5_110_000_000, "giant": 15_400_000_000}
# Weights of the fp32 network we serve (model.onnx, + model.onnx.data for giant): the float32
# tensors of ``../shared/reference/official_focus_dinov2_<size>_state_dict.tsv`` outside the
# training-only CLIP refiner (0.60 GB) and the loss; tests/export/test_pull.py recomputes them.
SERVED_BYTES: dict[str, int] = {"large": 1_500_173_404, "giant": 4_945_648_476}


# focus.json "provenance" key under which a pulled model records where it came from.
HUB_PROVENANCE = "hub"
_COMMIT = re.compile(r"[0-9a-f]{40}")


class SourceError(ValueError):
    """A pull source that names no released checkpoint or is malformed."""


@dataclass(frozen=True)
class Source:
    """One checkpoint to pull: a Hub file in the reference layout and the preset it loads into."""

    task: str  # canonical task name
    size: str  # our preset name (large/giant for released checkpoints)
    repo_id: str  # Hub model repository, "owner/name"
    filename: str  # file inside that repository
    revision: str = DEFAULT_REVISION  # branch, tag or commit asked for
    released: bool = True  # one of the reference project's releases (the table below)

    @property
    def spec(self) -> str:
        """The ``FOCUS_PULL`` entry that names this source."""
        text = f"{self.task}:{self.size}"
        if not self.released:
            text += f"={self.repo_id}/{self.filename}"
        if self.revision != DEFAULT_REVISION:
            text += f"@{self.revision}"
        return text


def release(task: str, size: str = DEFAULT_SIZE, revision: str | None = None) -> Source:
    """The reference project's checkpoint for ``task`` (name or alias) and ``size``."""
    canonical = canonical_task(task)
    if size not in SIZES:
        raise SourceError(
            f"no released FOCUS checkpoint of size {size!r}; released sizes: {', '.join(SIZES)} "
            "(a checkpoint of another preset: TASK:PRESET=OWNER/NAME/FILE, or focus pull --from)"
        )
    alias = TASKS[canonical].aliases[0]
    return Source(
        task=canonical,
        size=size,
        repo_id=f"{HUB_OWNER}/focus_{size}_{alias}",
        filename=f"focus_{size}_{alias}.pth",
        revision=revision or DEFAULT_REVISION,
    )


def hub_file(task: str, size: str, path: str, revision: str | None = None) -> Source:
    """Any Hub file ``owner/name/file`` in the reference layout, loaded into preset ``size``."""
    canonical = canonical_task(task)
    if size not in PRESETS:
        raise SourceError(f"unknown preset {size!r}; available: {', '.join(PRESETS)}")
    parts = path.strip("/").split("/")
    if len(parts) < 3 or not all(parts):
        raise SourceError(
            f"{path!r} is not OWNER/NAME/FILE (a Hub model repository and a file inside it)"
        )
    return Source(
        task=canonical,
        size=size,
        repo_id=f"{parts[0]}/{parts[1]}",
        filename="/".join(parts[2:]),
        revision=revision or DEFAULT_REVISION,
        released=False,
    )


def all_releases() -> tuple[Source, ...]:
    """Every released checkpoint, by task then size."""
    return tuple(release(task, size) for task in TASKS for size in SIZES)


def parse_source(text: str) -> Source:
    """``TASK[:SIZE][=OWNER/NAME/FILE][@REVISION]`` -> :class:`Source` (one ``FOCUS_PULL`` entry).

    ``camouflage`` and ``cod:large`` name the released FOCUS-L camouflage checkpoint;
    ``salient:giant@<commit>`` pins a revision; ``camouflage:tiny=me/focus-cod/model.pth`` is a
    checkpoint of preset ``tiny`` in the reference layout from any Hub repository.
    """
    entry = text.strip()
    if not entry:
        raise SourceError("empty entry")
    revision = None
    if "@" in entry:
        entry, revision = entry.rsplit("@", 1)
        if not revision:
            raise SourceError(f"{text!r}: empty revision after '@'")
    path = None
    if "=" in entry:
        entry, path = entry.split("=", 1)
    task, _, size = entry.partition(":")
    size = size or DEFAULT_SIZE
    try:
        if path is not None:
            return hub_file(task, size, path, revision)
        return release(task, size, revision)
    except UnknownTaskError as exc:
        raise SourceError(f"{text!r}: {exc}") from None
    except SourceError as exc:
        raise SourceError(f"{text!r}: {exc}") from None


def parse_sources(text: str) -> tuple[Source, ...]:
    """A comma-separated ``FOCUS_PULL`` value; one entry per task at most."""
    sources = tuple(parse_source(part) for part in text.split(",") if part.strip())
    seen: dict[str, str] = {}
    for source in sources:
        if source.task in seen:
            raise SourceError(
                f"task {source.task!r} is named twice ({seen[source.task]!r} and "
                f"{source.spec!r}); a task serves one pulled model"
            )
        seen[source.task] = source.spec
    return sources


def is_commit(revision: str) -> bool:
    """Whether ``revision`` is a full commit hash (immutable) rather than a branch or tag."""
    return bool(_COMMIT.fullmatch(revision))


def hub_provenance(card: ModelCard) -> dict[str, Any]:
    """What ``focus pull`` recorded about a model's Hub origin (empty for other models)."""
    value = card.provenance.get(HUB_PROVENANCE)
    return dict(value) if isinstance(value, dict) else {}


def pulled_from(
    cards: Iterable[tuple[int, ModelCard]], source: Source, commit: str | None = None
) -> list[tuple[int, ModelCard]]:
    """The versions (number, card) already pulled from ``source``'s file, oldest first.

    With ``commit`` only those of that commit; without, a pinned commit in ``source`` decides,
    and an unpinned source (a branch) matches every revision of the file.
    """
    if commit is None and is_commit(source.revision):
        commit = source.revision
    found = []
    for version, card in cards:
        hub = hub_provenance(card)
        same_file = (hub.get("repo_id"), hub.get("filename")) == (source.repo_id, source.filename)
        if same_file and card.preset == source.size and commit in (None, hub.get("revision")):
            found.append((version, card))
    return found
