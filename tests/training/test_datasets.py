"""Dataset registry, pairing, binarisation and corrupt-input reporting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.tasks import TASKS
from training.datasets import (
    LAYOUTS,
    DatasetError,
    get_layout,
    load_mask,
    pair_folders,
    pair_layout,
    read_pair,
    resolve_dataset,
)


def _img(path: Path, h: int = 8, w: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(path)
    return path


def _mask(path: Path, h: int = 8, w: int = 10, value: int = 255) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((h, w), np.uint8)
    m[2:5, 3:7] = value
    Image.fromarray(m).save(path)
    return path


def test_every_task_dataset_has_a_layout() -> None:
    for task in TASKS.values():
        for name in (*task.train_sets, *task.test_sets):
            layout = get_layout(name)
            assert layout.task == task.name, name
    assert get_layout("cod10k_val").name == "COD10K"  # reference split names work too
    assert get_layout("duts-te").name == "DUTS-TE"
    assert {lay.split for lay in LAYOUTS.values()} == {"train", "test"}
    with pytest.raises(DatasetError, match="unknown dataset 'NOPE'"):
        get_layout("NOPE")


def test_cod10k_skips_noncam_and_reports_missing_and_corrupt(tmp_path: Path) -> None:
    img_dir, gt_dir = tmp_path / "COD10K-v3/Train/Image", tmp_path / "COD10K-v3/Train/GT_Object"
    _img(img_dir / "COD10K-CAM-1-Aquatic-1-BatFish-1.jpg")
    _mask(gt_dir / "COD10K-CAM-1-Aquatic-1-BatFish-1.png")
    _img(img_dir / "COD10K-NonCAM-5-Background-1-Sky-2.jpg")  # skipped by the reference
    _img(img_dir / "COD10K-CAM-2-Terr-3-Cat-4.jpg")  # mask missing
    _img(img_dir / "COD10K-CAM-3-Flying-5-Bird-6.jpg")
    (gt_dir / "COD10K-CAM-3-Flying-5-Bird-6.png").write_bytes(b"not a png")
    _img(img_dir / "COD10K-CAM-4-Other-7-Fish-8.jpg", h=8, w=10)
    _mask(gt_dir / "COD10K-CAM-4-Other-7-Fish-8.png", h=9, w=10)  # other size
    pairs = pair_layout(get_layout("COD10K-train"), tmp_path)
    assert [p.name for p in pairs.pairs] == ["COD10K-CAM-1-Aquatic-1-BatFish-1.jpg"]
    problems = {p.file: p.reason for p in pairs.problems}
    assert set(problems) == {
        "COD10K-CAM-2-Terr-3-Cat-4.jpg",
        "COD10K-CAM-3-Flying-5-Bird-6.jpg",
        "COD10K-CAM-4-Other-7-Fish-8.jpg",
    }
    assert problems["COD10K-CAM-2-Terr-3-Cat-4.jpg"] == (
        "missing mask (expected COD10K-v3/Train/GT_Object/COD10K-CAM-2-Terr-3-Cat-4.png)"
    )
    assert problems["COD10K-CAM-3-Flying-5-Bird-6.jpg"].startswith(
        "unreadable mask COD10K-CAM-3-Flying-5-Bird-6.png"
    )
    assert problems["COD10K-CAM-4-Other-7-Fish-8.jpg"] == (
        "mask COD10K-CAM-4-Other-7-Fish-8.png is 10x9, image is 10x8"
    )
    report = pairs.report()
    assert report.startswith("COD10K-train: 3 of 4 images left out:")
    assert "COD10K-CAM-2-Terr-3-Cat-4.jpg: missing mask" in report


def test_casia_prepared_and_raw_layouts(tmp_path: Path) -> None:
    _img(tmp_path / "CASIA/TEST/image/Sp_a.jpg")
    _mask(tmp_path / "CASIA/TEST/gt/Sp_a_gt.png")
    _img(tmp_path / "CASIA/TEST/image/Sp_D_NRN_A_cha0011_sec0011_0542.jpg")  # deleted by ref
    pairs = resolve_dataset("CASIA1", tmp_path)
    assert [p.name for p in pairs.pairs] == ["Sp_a.jpg"] and not pairs.problems

    raw = tmp_path / "raw"
    _img(raw / "CASIA/CASIA2.0_revised/Tp/Tp_S_1.tif")
    _mask(raw / "CASIA/CASIA2.0_Groundtruth/Tp_S_1_gt.png")
    _img(raw / "CASIA/CASIA2.0_revised/Tp/Tp_S_2.jpg")
    _mask(raw / "CASIA/CASIA2.0_Groundtruth/Tp_S_2_gt.png")
    pairs = resolve_dataset("casia_train", raw)
    assert [p.name for p in pairs.pairs] == ["Tp_S_1.tif", "Tp_S_2.jpg"]


def test_missing_dataset_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="DUTS-TE: image folder not found"):
        resolve_dataset("DUTS-TE", tmp_path)
    with pytest.raises(DatasetError, match="needs --data-root"):
        resolve_dataset("DUTS-TE", None)
    with pytest.raises(DatasetError, match="neither a folder nor a known dataset"):
        resolve_dataset(str(tmp_path / "nothing"), tmp_path)


def test_pair_folders_matches_stems_gt_suffix_and_reports_orphans(tmp_path: Path) -> None:
    _img(tmp_path / "images/a.jpg")
    _mask(tmp_path / "masks/a.png")
    _mask(tmp_path / "masks/a.bmp")  # png preferred
    _img(tmp_path / "images/b.png")
    _mask(tmp_path / "masks/b_gt.png")
    _img(tmp_path / "images/c.jpg")
    _mask(tmp_path / "masks/zzz.png")
    (tmp_path / "images/notes.txt").write_text("ignored")
    pairs = resolve_dataset(str(tmp_path))
    assert [(p.image.name, p.mask.name) for p in pairs.pairs] == [
        ("a.jpg", "a.png"),
        ("b.png", "b_gt.png"),
    ]
    assert [str(p) for p in pairs.problems] == [
        "c.jpg: missing mask (expected masks/c.png)",
        "zzz.png: mask without an image",
    ]
    with pytest.raises(DatasetError, match="mask folder not found"):
        pair_folders(tmp_path / "images", tmp_path / "nope")


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("L", (0, 128, 129, 255), (False, False, True, True)),
        ("1", (0, 255, 0, 255), (False, True, False, True)),
        ("I;16", (0, 30000, 40000, 65535), (False, False, True, True)),
    ],
)
def test_masks_binarise_above_128(tmp_path: Path, mode, values, expected) -> None:
    arr = np.array([values], np.uint16 if mode == "I;16" else np.uint8)
    im = Image.fromarray(arr)  # uint16 -> "I;16"
    if mode == "1":
        im = im.convert("1")
    im.save(tmp_path / "m.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png")[0], expected)


def test_colour_and_palette_masks_use_luminance(tmp_path: Path) -> None:
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 1] = 255
    rgb[0, 2] = (120, 120, 120)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "rgb.png")[0], [False, True, False])
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "p.png")[0], [False, True, False])


def test_read_pair_names_a_truncated_image(tmp_path: Path) -> None:
    _img(tmp_path / "images/x.jpg", 64, 64)
    _mask(tmp_path / "masks/x.png", 64, 64)
    data = (tmp_path / "images/x.jpg").read_bytes()
    pairs = resolve_dataset(str(tmp_path))  # header is fine
    (tmp_path / "images/x.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="x.jpg: unreadable image"):
        read_pair(pairs.pairs[0])
