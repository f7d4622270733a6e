"""The five FOCUS tasks: one registry imported by training, export and the service.

Torch-free. Prompts are the reference configs' CLIP prompt pairs (U+2019 apostrophe kept),
used only by the training-time CLIP distillation.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """One foreground-segmentation task and the facts attached to it."""

    name: str
    aliases: tuple[str, ...]
    description: str
    prompts: tuple[str, str]  # (foreground description, background description)
    clip_weight: float  # CLIP distillation loss weight in the reference recipe
    train_sets: tuple[str, ...]
    test_sets: tuple[str, ...]


def _prompts(thing: str) -> tuple[str, str]:
    return (
        f"It\u2019s an image of {thing} without background.",
        f"It\u2019s an image of background with {thing} removed.",
    )


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            name="salient",
            aliases=("sod",),
            description="salient object detection",
            prompts=_prompts("salient objects"),
            clip_weight=1.0,
            train_sets=("DUTS-TR",),
            test_sets=("DUTS-TE", "DUT-OMRON", "HKU-IS", "ECSSD", "PASCAL-S"),
        ),
        Task(
            name="camouflage",
            aliases=("cod",),
            description="camouflaged object detection",
            prompts=_prompts("salient objects"),
            clip_weight=1.0,
            train_sets=("COD10K-train", "CAMO-train"),
            test_sets=("CAMO", "COD10K", "CHAMELEON", "NC4K"),
        ),
        Task(
            name="shadow",
            aliases=("sd",),
            description="shadow detection",
            prompts=_prompts("shadow"),
            clip_weight=1.0,
            train_sets=("ISTD-train",),
            test_sets=("ISTD-test",),
        ),
        Task(
            name="defocus",
            aliases=("dbd",),
            description="defocus blur detection",
            prompts=_prompts("salient objects"),
            clip_weight=1.0,
            train_sets=("DEFOCUS-train",),
            test_sets=("CUHK", "DUT"),
        ),
        Task(
            name="forgery",
            aliases=("fd",),
            description="image forgery (splicing / copy-move) localisation",
            prompts=_prompts("forgery objects"),
            clip_weight=0.01,
            train_sets=("CASIA2",),
            test_sets=("CASIA1",),
        ),
    )
}

_BY_ALIAS: dict[str, str] = {
    alias: t.name for t in TASKS.values() for alias in (t.name, *t.aliases)
}


class UnknownTaskError(KeyError):
    """Raised for a task name that is neither canonical nor an alias."""

    def __init__(self, name: str, available: tuple[str, ...] | None = None) -> None:
        self.name = name
        self.available = available if available is not None else tuple(TASKS)
        super().__init__(name)

    def __str__(self) -> str:
        return f"unknown task {self.name!r}; available: {', '.join(self.available)}"


def canonical_task(name: str) -> str:
    """Map a canonical name or alias (case-insensitive) to the canonical name."""
    try:
        return _BY_ALIAS[name.strip().lower()]
    except (KeyError, AttributeError):
        raise UnknownTaskError(str(name)) from None


def get_task(name: str) -> Task:
    return TASKS[canonical_task(name)]
