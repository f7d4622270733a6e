"""The training data pipeline: dataset, resumable sampler and collate (torch).

A sample is a pure function of ``(seed, epoch, index)``: the sampler yields encoded indices
``epoch * len(dataset) + i`` and each worker process seeds its own generator from them. So the
batches do not depend on the number of workers, and resuming mid-epoch (the sampler skips what
was already consumed) gives the same batches as an uninterrupted run.

Images go through the shared preprocessing of ``models.processing`` (ImageNet normalisation
after the canvas padding, then the edge map built from the normalised tensor), exactly as at
inference.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from models.config import PIXEL_MEAN, PIXEL_STD
from models.processing import edge_map, normalise_and_pad
from training.augment import AugmentConfig, augment, make_targets
from training.datasets import Pair, read_pair

logger = logging.getLogger(__name__)


class TrainDataset(Dataset):
    """Augmented training samples of a list of image/mask pairs.

    Args:
        pairs: the image/mask files.
        aug: augmentation sizes (``AugmentConfig.for_short_side(card.input_short_side)``).
        seed: run seed; with the encoded (epoch, index) it fixes every random draw.
        mean, std: normalisation of the model card.
    """

    def __init__(
        self,
        pairs: list[Pair],
        aug: AugmentConfig,
        seed: int = 0,
        mean: tuple[float, float, float] = PIXEL_MEAN,
        std: tuple[float, float, float] = PIXEL_STD,
    ) -> None:
        if not pairs:
            raise ValueError("no training pairs")
        self.pairs = list(pairs)
        self.aug = aug
        self.seed = int(seed)
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, index: int) -> tuple[int, np.ndarray, np.ndarray]:
        """Read pair ``index``; a file that fails to decode is reported and the next used."""
        n = len(self.pairs)
        for k in range(n):
            used = (index + k) % n
            try:
                return (used, *read_pair(self.pairs[used]))
            except ValueError as exc:
                logger.warning("skipping unreadable training pair (%s); using the next one", exc)
        raise RuntimeError("no readable training pair left")

    def __getitem__(self, key: int) -> dict[str, Any]:
        n = len(self.pairs)
        epoch, index = divmod(int(key), n)
        used, image, mask = self._load(index)
        rng = np.random.default_rng([self.seed, epoch, index])
        canvas, label = augment(image, mask, self.aug, rng)
        x = normalise_and_pad(canvas, self.mean, self.std, divisor=32)
        labels, masks, boxes = make_targets(label)
        return {
            "image": torch.from_numpy(x),  # [3, C, C] normalised
            "edges": torch.from_numpy(edge_map(x)),  # [3, C, C]
            "labels": torch.from_numpy(labels),  # [N]
            "masks": torch.from_numpy(masks),  # [N, C, C] bool
            "boxes": torch.from_numpy(boxes),  # [N, 4] cxcywh / C
            "index": used,  # the pair actually read
        }


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images/edges; keep per-image targets as a list of dicts."""
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "edges": torch.stack([b["edges"] for b in batch]),
        "targets": [
            {"labels": b["labels"], "masks": b["masks"], "boxes": b["boxes"]} for b in batch
        ],
        "index": [b["index"] for b in batch],
    }


class ResumableSampler(Sampler[int]):
    """Epoch-seeded shuffling, sharded over ranks, that can start mid-stream.

    Yields encoded indices ``epoch * n + i`` forever (training is iteration-based). Each epoch
    is a permutation drawn from ``(seed, epoch)``, padded to a multiple of ``world_size`` by
    wrapping, and rank ``r`` takes every ``world_size``-th element from ``r``.

    Args:
        n: dataset length.
        seed: shuffling seed.
        rank, world_size: this process's shard.
        start: number of samples this rank already consumed (to resume).
    """

    def __init__(
        self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0
    ) -> None:
        if n < 1:
            raise ValueError("empty dataset")
        self.n, self.seed, self.rank, self.world_size = n, int(seed), rank, world_size
        self.per_rank = -(-n // world_size)
        self.start = int(start)

    def epoch_order(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, epoch, 7919]).permutation(self.n)
        total = self.per_rank * self.world_size
        perm = np.resize(perm, total)  # wrap around to an equal share per rank
        return perm[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            for i in self.epoch_order(epoch)[offset:]:
                yield int(epoch * self.n + i)
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # one epoch, for progress displays
        return self.per_rank
