"""Training dataset, resumable sampler and DataLoader workers."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from models.processing import edge_map, normalise_and_pad
from models.synth import write_dataset
from training.augment import AugmentConfig, augment
from training.data import ResumableSampler, TrainDataset, collate
from training.datasets import pair_folders, read_pair


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    return write_dataset("camouflage", 6, tmp_path_factory.mktemp("cod"), seed=0, size=64)


def _dataset(root: Path, seed: int = 0) -> TrainDataset:
    pairs = pair_folders(root / "images", root / "masks")
    return TrainDataset(pairs.pairs, AugmentConfig.for_short_side(64), seed=seed)


def test_item_uses_the_shared_preprocessing(synth_dir: Path) -> None:
    ds = _dataset(synth_dir)
    key = 2 * len(ds) + 4  # epoch 2, image 4
    item = ds[key]
    image, mask = read_pair(ds.pairs[4])
    canvas, label = augment(image, mask, ds.aug, np.random.default_rng([0, 2, 4]))
    x = normalise_and_pad(canvas)
    torch.testing.assert_close(item["image"], torch.from_numpy(x))
    torch.testing.assert_close(item["edges"], torch.from_numpy(edge_map(x)))
    assert item["image"].shape == (3, 64, 64) and item["index"] == 4
    assert item["labels"].dtype == torch.int64 and item["masks"].dtype == torch.bool
    assert item["masks"].shape[1:] == (64, 64) and item["boxes"].shape == (len(item["labels"]), 4)
    assert not torch.equal(ds[4]["image"], item["image"])  # other epoch, other draw


def test_sampler_resume_continues_the_same_stream() -> None:
    full = list(itertools.islice(iter(ResumableSampler(10, seed=3)), 27))
    resumed = list(itertools.islice(iter(ResumableSampler(10, seed=3, start=13)), 14))
    assert resumed == full[13:]
    epoch0 = full[:10]
    assert sorted(epoch0) == list(range(10)) and epoch0 != list(range(10))
    assert sorted(full[10:20]) == list(range(10, 20))  # epoch 1 encoded as 10 + i


def test_sampler_shards_cover_each_epoch() -> None:
    shards = [
        list(itertools.islice(iter(ResumableSampler(7, seed=1, rank=r, world_size=2)), 4))
        for r in range(2)
    ]
    assert len(ResumableSampler(7, world_size=2)) == 4
    first_epoch = [k for s in shards for k in s if k < 7]
    assert set(first_epoch) == set(range(7))  # 8 slots: one image repeated (wrap-around)


def test_workers_give_the_same_batches(synth_dir: Path) -> None:
    ds = _dataset(synth_dir, seed=5)

    def batches(workers: int) -> list[torch.Tensor]:
        loader = DataLoader(
            ds,
            batch_size=2,
            sampler=ResumableSampler(len(ds), seed=5),
            collate_fn=collate,
            num_workers=workers,
        )
        return [b["image"] for b in itertools.islice(iter(loader), 3)]

    for a, b in zip(batches(0), batches(2), strict=True):
        torch.testing.assert_close(a, b)


def test_corrupt_file_is_reported_and_replaced(tmp_path: Path, caplog) -> None:
    root = write_dataset("salient", 3, tmp_path / "sod", seed=0, size=48)
    ds = _dataset(root)
    (root / "masks" / "000001.png").write_bytes(b"broken")
    with caplog.at_level(logging.WARNING, logger="training.data"):
        item = ds[1]
    assert item["index"] == 2  # the next pair stands in
    assert "000001.png: unreadable mask 000001.png" in caplog.text


def test_collate_stacks_images_and_keeps_targets(synth_dir: Path) -> None:
    ds = _dataset(synth_dir)
    batch = collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 64, 64) and batch["edges"].shape == (2, 3, 64, 64)
    assert len(batch["targets"]) == 2 and set(batch["targets"][0]) == {"labels", "masks", "boxes"}
