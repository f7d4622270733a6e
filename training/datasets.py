"""Image/mask pairs: the reference benchmark layouts by name, and generic folder pairing.

Folder names follow the reference's preparation scripts and dataset registrations
(``utils/prepare/prepare_*.py``, ``focus/data/datasets/register_*.py`` in geshang777/FOCUS),
relative to a data root (the reference's ``$DETECTRON2_DATASETS``, default ``datasets``).
Where the reference's preparation step moves files (PASCAL-S, CASIA), the raw download layout
is accepted too, so the data does not have to be prepared first.

Masks are binarised one way everywhere: grey value > 128 is foreground (the reference's
``pre_process``; COD10K masks, used as is by the reference, are already 0/255). A pair whose
mask is missing, unreadable or of another size than its image is never dropped silently: it is
collected in :class:`PairList.problems`, and the caller reports it by file name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_EXTS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTS: tuple[str, ...] = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".gif")
MASK_THRESHOLD = 128  # foreground is grey value > 128


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path

    @property
    def name(self) -> str:
        return self.image.name


@dataclass(frozen=True)
class Problem:
    """One image that cannot be used, and why (reported by file name)."""

    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


@dataclass
class PairList:
    """The usable pairs of a dataset, plus every pair that had to be left out and why."""

    name: str
    pairs: list[Pair] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    def report(self, limit: int = 20) -> str:
        """A human-readable summary of the problems ('' when there are none)."""
        if not self.problems:
            return ""
        total = len(self.pairs) + len(self.problems)
        lines = [f"{self.name}: {len(self.problems)} of {total} images left out:"]
        lines += [f"  {p}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)


class DatasetError(ValueError):
    """A dataset that cannot be read at all (unknown name, missing folder, no images)."""


def _skip_noncam(stem: str) -> bool:
    # register_cod10k.py: ``file_name.split('-')[1] == 'NonCAM'`` (COD10K-NonCAM-...).
    parts = stem.split("-")
    return len(parts) > 1 and parts[1] == "NonCAM"


@dataclass(frozen=True)
class Layout:
    """Where one reference dataset keeps its images and masks, relative to the data root.

    ``dirs`` are (image folder, mask folder) pairs that are all read; ``raw_dirs`` is the
    layout of the original download, used when ``dirs`` do not exist. A mask is found as
    ``<mask folder>/<image stem><mask_suffix>``.
    """

    name: str
    task: str
    split: str  # "train" or "test"
    dirs: tuple[tuple[str, str], ...]
    image_exts: tuple[str, ...] = (".jpg",)
    mask_suffix: str = ".png"
    raw_dirs: tuple[tuple[str, str], ...] = ()
    raw_image_exts: tuple[str, ...] = ()
    skip: Callable[[str], bool] | None = None  # stem -> leave out (the reference's own filter)
    exclude: tuple[str, ...] = ()  # stems the reference's preparation deletes
    aliases: tuple[str, ...] = ()


LAYOUTS: dict[str, Layout] = {
    lay.name: lay
    for lay in (
        # -- salient object detection
        Layout("DUTS-TR", "salient", "train",
               (("DUTS/DUTS-TR/DUTS-TR-Image", "DUTS/DUTS-TR/DUTS-TR-Mask"),),
               aliases=("duts_train",)),
        Layout("DUTS-TE", "salient", "test",
               (("DUTS/DUTS-TE/DUTS-TE-Image", "DUTS/DUTS-TE/DUTS-TE-Mask"),),
               aliases=("duts_val", "DUTS")),
        Layout("DUT-OMRON", "salient", "test",
               (("DUTOMRON/DUT-OMRON-image", "DUTOMRON/pixelwiseGT-new-PNG"),),
               aliases=("dutomron",)),
        Layout("HKU-IS", "salient", "test", (("HKU-IS/imgs", "HKU-IS/gt"),),
               image_exts=(".png",), aliases=("hkuis",)),
        Layout("ECSSD", "salient", "test", (("ECSSD/images", "ECSSD/ground_truth_mask"),),
               aliases=("ecssd",)),
        # prepare_pascal.py moves PASCAL/Imgs/*.jpg to img/ and *.png to gt/.
        Layout("PASCAL-S", "salient", "test", (("PASCAL/img", "PASCAL/gt"),),
               raw_dirs=(("PASCAL/Imgs", "PASCAL/Imgs"),), aliases=("pascal",)),
        # -- camouflaged object detection
        Layout("COD10K-train", "camouflage", "train",
               (("COD10K-v3/Train/Image", "COD10K-v3/Train/GT_Object"),),
               skip=_skip_noncam, aliases=("cod10k_train",)),
        Layout("COD10K", "camouflage", "test",
               (("COD10K-v3/Test/Image", "COD10K-v3/Test/GT_Object"),),
               skip=_skip_noncam, aliases=("cod10k_val", "COD10K-test")),
        Layout("CAMO-train", "camouflage", "train",
               (("CAMO-V.1.0-CVIU2019/Images/Train", "CAMO-V.1.0-CVIU2019/GT"),),
               aliases=("cod_train",)),
        Layout("CAMO", "camouflage", "test",
               (("CAMO-V.1.0-CVIU2019/Images/Test", "CAMO-V.1.0-CVIU2019/GT"),),
               aliases=("cod_val", "CAMO-test")),
        Layout("CHAMELEON", "camouflage", "test", (("CHAMELEON/Imgs", "CHAMELEON/GT"),),
               aliases=("chameleon",)),
        Layout("NC4K", "camouflage", "test", (("NC4K/Imgs", "NC4K/GT"),), aliases=("nc4k",)),
        # -- shadow detection
        Layout("ISTD-train", "shadow", "train",
               (("ISTD_Dataset/train/train_A", "ISTD_Dataset/train/train_B"),),
               image_exts=(".png",), aliases=("istd_train",)),
        Layout("ISTD-test", "shadow", "test",
               (("ISTD_Dataset/test/test_A", "ISTD_Dataset/test/test_B"),),
               image_exts=(".png",), aliases=("istd_val", "ISTD")),
        # -- defocus blur detection
        Layout("DEFOCUS-train", "defocus", "train",
               (("DEFOCUS/dataset/train_data/1204source", "DEFOCUS/dataset/train_data/1204gt"),),
               image_exts=(".bmp",), mask_suffix=".bmp", aliases=("defocus_train",)),
        Layout("CUHK", "defocus", "test",
               (("DEFOCUS/dataset/test_data/CUHK/xu100-source",
                 "DEFOCUS/dataset/test_data/CUHK/xu100-gt"),),
               image_exts=(".bmp",), mask_suffix=".bmp", aliases=("defocus_cuhk_val",)),
        Layout("DUT", "defocus", "test",
               (("DEFOCUS/dataset/test_data/DUT/dut500-source",
                 "DEFOCUS/dataset/test_data/DUT/dut500-gt"),),
               image_exts=(".bmp",), mask_suffix=".bmp", aliases=("defocus_dut_val",)),
        # -- forgery detection. Prepared: CASIA/{TRAIN,TEST}/{image,gt}, masks <stem>_gt.png.
        # CASIA 2.0: tampered (Tp) images only; CASIA 1.0: CM + Sp.
        Layout("CASIA2", "forgery", "train", (("CASIA/TRAIN/image", "CASIA/TRAIN/gt"),),
               mask_suffix="_gt.png",
               raw_dirs=(("CASIA/CASIA2.0_revised/Tp", "CASIA/CASIA2.0_Groundtruth"),),
               raw_image_exts=(".jpg", ".tif", ".bmp"), aliases=("casia_train", "CASIA2-train")),
        Layout("CASIA1", "forgery", "test", (("CASIA/TEST/image", "CASIA/TEST/gt"),),
               mask_suffix="_gt.png",
               raw_dirs=(("CASIA/CASIA 1.0 dataset/Tp/CM", "CASIA/CASIA 1.0 groundtruth/CM"),
                         ("CASIA/CASIA 1.0 dataset/Tp/Sp", "CASIA/CASIA 1.0 groundtruth/Sp")),
               # prepare_casia.py deletes this test image.
               exclude=("Sp_D_NRN_A_cha0011_sec0011_0542",),
               aliases=("casia_val", "CASIA")),
    )
}

_BY_NAME: dict[str, str] = {
    alias.lower(): lay.name for lay in LAYOUTS.values() for alias in (lay.name, *lay.aliases)
}


def get_layout(name: str) -> Layout:
    try:
        return LAYOUTS[_BY_NAME[name.strip().lower()]]
    except KeyError:
        raise DatasetError(
            f"unknown dataset {name!r}; known: {', '.join(LAYOUTS)} (or pass a folder)"
        ) from None


def is_known_dataset(name: str) -> bool:
    return name.strip().lower() in _BY_NAME


# ----------------------------------------------------------------------------- reading


def load_image(path: str | Path) -> np.ndarray:
    """uint8 HxWx3 RGB (palette, grey, 16-bit and alpha images are converted)."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, np.float64)
            arr = np.clip(arr / max(arr.max(), 1.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            im = Image.fromarray(arr)
        return np.asarray(im.convert("RGB"), np.uint8).copy()


def binarise_mask(grey: np.ndarray) -> np.ndarray:
    """Grey uint8 mask -> bool foreground (> 128)."""
    return np.asarray(grey) > MASK_THRESHOLD


def load_mask(path: str | Path) -> np.ndarray:
    """bool HxW foreground mask; colour and palette masks are read as luminance first."""
    with Image.open(path) as im:
        im.load()
        if im.mode == "1":
            return np.asarray(im, bool).copy()
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im, np.float64)
            top = arr.max()
            return (arr / top * 255.0 > MASK_THRESHOLD) if top > 0 else np.zeros(arr.shape, bool)
        return binarise_mask(np.asarray(im.convert("L"), np.uint8))


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    with Image.open(path) as im:
        return im.size[1], im.size[0]


# ----------------------------------------------------------------------------- pairing


def _list_images(folder: Path, exts: tuple[str, ...]) -> list[Path]:
    wanted = {e.lower() for e in exts}
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in wanted)


def _check_pair(image: Path, mask: Path | None, expected: str, check: bool) -> Problem | None:
    if mask is None or not mask.is_file():
        return Problem(image.name, f"missing mask (expected {expected})")
    if not check:
        return None
    try:
        image_hw = _image_size(image)
    except Exception as exc:  # PIL raises several types for a broken file
        return Problem(image.name, f"unreadable image ({type(exc).__name__}: {exc})")
    try:
        mask_hw = _image_size(mask)
    except Exception as exc:
        return Problem(image.name, f"unreadable mask {mask.name} ({type(exc).__name__}: {exc})")
    if image_hw != mask_hw:
        return Problem(
            image.name,
            f"mask {mask.name} is {mask_hw[1]}x{mask_hw[0]}, image is {image_hw[1]}x{image_hw[0]}",
        )
    return None


def pair_layout(layout: Layout, data_root: str | Path, check: bool = True) -> PairList:
    """The pairs of a reference dataset under ``data_root``.

    Args:
        layout: the dataset's folders (see :data:`LAYOUTS`).
        data_root: the folder that holds the dataset folders (``$DETECTRON2_DATASETS``).
        check: open every image and mask header: unreadable files and size mismatches are
            reported as problems here rather than failing later.
    """
    root = Path(data_root)
    dirs, exts = layout.dirs, layout.image_exts
    if not all((root / img).is_dir() for img, _ in dirs) and layout.raw_dirs:
        if all((root / img).is_dir() for img, _ in layout.raw_dirs):
            dirs, exts = layout.raw_dirs, layout.raw_image_exts or layout.image_exts
    missing = [str(root / img) for img, _ in dirs if not (root / img).is_dir()]
    if missing:
        raise DatasetError(f"{layout.name}: image folder not found: {', '.join(missing)}")
    out = PairList(layout.name)
    for image_dir, mask_dir in dirs:
        for image in _list_images(root / image_dir, exts):
            stem = image.stem
            if stem in layout.exclude or (layout.skip is not None and layout.skip(stem)):
                continue
            mask = root / mask_dir / f"{stem}{layout.mask_suffix}"
            problem = _check_pair(image, mask, str(Path(mask_dir) / mask.name), check)
            if problem is None:
                out.pairs.append(Pair(image, mask))
            else:
                out.problems.append(problem)
    if not out.pairs and not out.problems:
        raise DatasetError(f"{layout.name}: no {'/'.join(exts)} images in {root / dirs[0][0]}")
    return out


def pair_folders(
    images: str | Path, masks: str | Path, check: bool = True, name: str | None = None
) -> PairList:
    """Pair ``images/<stem>.<ext>`` with ``masks/<stem>.<ext>`` (``<stem>_gt`` also matches).

    When several mask files share a stem, PNG is preferred, then the order of ``MASK_EXTS``.
    Masks that match no image are reported too (they usually mean a naming mismatch).
    """
    images, masks = Path(images), Path(masks)
    for folder, what in ((images, "image"), (masks, "mask")):
        if not folder.is_dir():
            raise DatasetError(f"{what} folder not found: {folder}")
    rank = {e: i for i, e in enumerate(MASK_EXTS)}
    by_stem: dict[str, Path] = {}
    for m in sorted(masks.iterdir()):
        ext = m.suffix.lower()
        if not m.is_file() or ext not in rank:
            continue
        stem = m.stem
        current = by_stem.get(stem)
        if current is None or rank[ext] < rank[current.suffix.lower()]:
            by_stem[stem] = m
    out = PairList(name or images.name)
    used: set[str] = set()
    image_files = _list_images(images, IMAGE_EXTS)
    if not image_files:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTS)}) in {images}")
    for image in image_files:
        key = image.stem if image.stem in by_stem else f"{image.stem}_gt"
        mask = by_stem.get(key)
        problem = _check_pair(image, mask, f"{masks.name}/{image.stem}.png", check)
        if problem is None:
            assert mask is not None
            out.pairs.append(Pair(image, mask))
            used.add(key)
        else:
            out.problems.append(problem)
    stems = {p.stem for p in image_files}
    for stem, m in by_stem.items():
        if stem not in used and stem not in stems:
            out.problems.append(Problem(m.name, "mask without an image"))
    return out


def resolve_dataset(spec: str, data_root: str | Path | None = None, check: bool = True) -> PairList:
    """A dataset name from :data:`LAYOUTS` (under ``data_root``) or a folder.

    A folder must hold ``images/`` and ``masks/`` (what ``focus data synth`` writes), or be the
    image folder of a ``<dir>/images`` + ``<dir>/masks`` pair.
    """
    path = Path(spec)
    if path.is_dir():
        if (path / "images").is_dir() and (path / "masks").is_dir():
            return pair_folders(path / "images", path / "masks", check, name=path.name)
        raise DatasetError(f"{path} has no images/ and masks/ folders; use --images/--masks")
    if is_known_dataset(spec):
        if data_root is None:
            raise DatasetError(f"dataset {spec!r} needs --data-root (the folder that holds it)")
        return pair_layout(get_layout(spec), data_root, check)
    raise DatasetError(f"{spec!r} is neither a folder nor a known dataset ({', '.join(LAYOUTS)})")


def read_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 HxWx3 RGB image, bool HxW mask); raises ValueError naming the file."""
    try:
        image = load_image(pair.image)
    except Exception as exc:
        raise ValueError(f"{pair.image.name}: unreadable image ({exc})") from exc
    try:
        mask = load_mask(pair.mask)
    except Exception as exc:
        raise ValueError(f"{pair.image.name}: unreadable mask {pair.mask.name} ({exc})") from exc
    if mask.shape != image.shape[:2]:
        raise ValueError(
            f"{pair.image.name}: mask {pair.mask.name} is {mask.shape[1]}x{mask.shape[0]}, "
            f"image is {image.shape[1]}x{image.shape[0]}"
        )
    return image, mask
