"""Synthetic image/mask pairs for every task: for tests, demo models and benchmarks.

Each sample ``i`` is drawn from its own generator seeded by ``(seed, task, i)``, so a dataset is
the same whatever ``n``, worker count or order, and sample ``i`` of ``n=10`` equals sample ``i``
of ``n=1000``. The scenes are built to need the cue each task is about, not just a colour:

* ``salient``: a strongly coloured, shaded object on a cluttered, textured background.
* ``camouflage``: object and background are two draws of the *same* texture style (palette,
  frequency content, spots); the object differs only by a small scale / tone shift and a faint
  rim shading, as real camouflaged animals do.
* ``shadow``: a soft-edged (penumbra), slightly blue-tinted darkening on a textured scene with
  objects; the mask is the shadow's umbra + half the penumbra.
* ``defocus``: a detailed scene whose out-of-focus part is blurred with a spatially varying
  radius; the mask (foreground) is the in-focus region, as in the DBD ground truths the
  reference trains on (white = in focus).
* ``forgery``: a copy-move (rescaled copy of another part of the same image) or a splice (a
  patch of another scene, colour-matched to its surroundings, with a different noise level).

Object masks are random shapes with holes and thin parts. Images are 8-bit RGB PNGs; masks are
0/255 PNGs.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models.tasks import TASKS, canonical_task

logger = logging.getLogger(__name__)

SYNTH_VERSION = 1


# ----------------------------------------------------------------------------- primitives


def fractal_noise(
    rng: np.random.Generator, h: int, w: int, base: float = 4.0, octaves: int = 4,
    persistence: float = 0.5,
) -> np.ndarray:
    """float32 [h, w] in [0, 1]: octaves of bicubically upsampled uniform noise."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = base * 2**o
        gh = max(2, int(round(cells * h / max(h, w))) + 1)
        gw = max(2, int(round(cells * w / max(h, w))) + 1)
        grid = rng.random((gh, gw), dtype=np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= persistence
    out /= total
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / max(hi - lo, 1e-6)


@dataclass(frozen=True)
class TextureStyle:
    """A family of textures: two renders of one style share their statistics."""

    palette: np.ndarray  # [k, 3] float32 RGB 0..255, mapped along the noise value
    base: float  # lowest noise frequency, cells across the long side
    octaves: int
    persistence: float
    spot_color: np.ndarray  # [3] colour of the thresholded spot layer
    spot_base: float
    spot_fraction: float  # 0 disables the spots
    grain: float  # std of per-pixel grain, grey levels


def random_style(rng: np.random.Generator, saturation: float = 0.6) -> TextureStyle:
    hue = rng.uniform(0, 180)
    k = int(rng.integers(3, 5))
    hsv = np.zeros((1, k, 3), np.uint8)
    hsv[0, :, 0] = (hue + rng.uniform(-20, 20, k)) % 180
    hsv[0, :, 1] = np.clip(rng.uniform(0.2, 1.0, k) * saturation * 255, 0, 255)
    hsv[0, :, 2] = np.sort(rng.uniform(40, 230, k))
    palette = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0].astype(np.float32)
    spot = palette[int(rng.integers(0, k))] * rng.uniform(0.6, 1.2)
    return TextureStyle(
        palette=palette,
        base=float(rng.uniform(2, 8)),
        octaves=int(rng.integers(3, 6)),
        persistence=float(rng.uniform(0.45, 0.7)),
        spot_color=np.clip(spot, 0, 255).astype(np.float32),
        spot_base=float(rng.uniform(6, 20)),
        spot_fraction=float(rng.choice([0.0, rng.uniform(0.1, 0.35)])),
        grain=float(rng.uniform(2, 8)),
    )


def render_texture(
    rng: np.random.Generator, style: TextureStyle, h: int, w: int, scale: float = 1.0,
) -> np.ndarray:
    """float32 [h, w, 3] RGB 0..255 drawn from ``style`` (``scale`` > 1 = finer texture)."""
    t = fractal_noise(rng, h, w, style.base * scale, style.octaves, style.persistence)
    stops = np.linspace(0, 1, len(style.palette))
    img = np.stack([np.interp(t, stops, style.palette[:, c]) for c in range(3)], -1)
    if style.spot_fraction > 0:
        s = fractal_noise(rng, h, w, style.spot_base * scale, 2, 0.4)
        spots = cv2.GaussianBlur((s > 1 - style.spot_fraction).astype(np.float32), (0, 0), 0.8)
        img = img * (1 - spots[..., None]) + style.spot_color * spots[..., None]
    img += rng.normal(0, style.grain, (h, w, 1)).astype(np.float32)
    return img.astype(np.float32)


def random_shape(
    rng: np.random.Generator, h: int, w: int, area: tuple[float, float] = (0.06, 0.3),
    holes: float = 0.5, limbs: float = 0.6, spread: float = 0.2,
) -> np.ndarray:
    """bool [h, w]: a blob of ``area`` fraction, with probability of holes and thin limbs.

    The blob is 1-3 overlapping noisy elliptic lobes; ``spread`` keeps its centre at least that
    fraction of the image away from the borders (0 = anywhere).
    """
    frac = rng.uniform(*area)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(spread, 1 - spread) * h, rng.uniform(spread, 1 - spread) * w
    envelope = np.zeros((h, w), np.float32)
    for lobe in range(int(rng.integers(1, 4))):
        ry, rx = rng.uniform(0.1, 0.35) * h, rng.uniform(0.1, 0.35) * w
        oy, ox = (0.0, 0.0) if lobe == 0 else (rng.normal(0, 0.6) * ry, rng.normal(0, 0.6) * rx)
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - (cy + oy), xx - (cx + ox)
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / rx
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / ry
        envelope = np.maximum(envelope, np.exp(-(u * u + v * v)) * rng.uniform(0.7, 1.0))
    field = envelope * (0.35 + 0.65 * fractal_noise(rng, h, w, rng.uniform(2, 6), 3, 0.5))
    mask = field > np.quantile(field, 1 - frac)
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    inner = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    if rng.random() < holes and inner.max() > 8:
        for _ in range(int(rng.integers(1, 3))):
            ys, xs = np.nonzero(inner > 0.6 * inner.max())
            j = int(rng.integers(0, len(ys)))
            r = max(2.0, inner[ys[j], xs[j]] * rng.uniform(0.3, 0.6))
            cv2.ellipse(
                mask.view(np.uint8), (int(xs[j]), int(ys[j])),
                (int(r * rng.uniform(0.6, 1.4)), int(r)), float(rng.uniform(0, 180)), 0, 360, 0, -1,
            )
    if rng.random() < limbs:
        ys, xs = np.nonzero(mask)
        for _ in range(int(rng.integers(1, 4))):
            j = int(rng.integers(0, len(ys)))
            pts = [(int(xs[j]), int(ys[j]))]
            angle = rng.uniform(0, 2 * np.pi)
            for _ in range(int(rng.integers(2, 4))):
                angle += rng.uniform(-0.6, 0.6)
                step = rng.uniform(0.06, 0.15) * max(h, w)
                x, y = pts[-1]
                pts.append((int(x + step * np.cos(angle)), int(y + step * np.sin(angle))))
            thickness = int(rng.integers(2, 5))
            cv2.polylines(mask.view(np.uint8), [np.array(pts, np.int32)], False, 1, thickness)
    if not mask.any():  # never empty: fall back to the envelope's core
        mask = envelope > 0.5
    return mask


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)


def _compose(back: np.ndarray, front: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return back * (1 - alpha[..., None]) + front * alpha[..., None]


def _clutter(rng: np.random.Generator, img: np.ndarray, count: int, alpha: float) -> np.ndarray:
    """Draw ``count`` random rectangles, ellipses and lines onto ``img`` (float RGB)."""
    h, w = img.shape[:2]
    layer = img.copy()
    for _ in range(count):
        color = tuple(float(c) for c in rng.uniform(0, 255, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = int(rng.integers(4, max(6, min(h, w) // 6)))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            cv2.rectangle(layer, (x, y), (x + size, y + int(size * rng.uniform(0.3, 2))), color, -1)
        elif kind == 1:
            axes = (size // 2 + 1, int(size * rng.uniform(0.2, 1)) // 2 + 1)
            cv2.ellipse(layer, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
        else:
            end = (x + int(rng.normal(0, size * 2)), y + int(rng.normal(0, size * 2)))
            cv2.line(layer, (x, y), end, color, int(rng.integers(1, 4)))
    return img * (1 - alpha) + layer * alpha


def _scaled(area: tuple[float, float], scale: float) -> tuple[float, float]:
    """The object's area range times ``scale`` (< 1: small objects, e.g. for the zoom
    benchmark); the same draws are made, so ``scale=1`` gives the usual samples."""
    return (area[0] * scale, area[1] * scale)


def _finish(img: np.ndarray) -> np.ndarray:
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _scene(rng: np.random.Generator, h: int, w: int, objects: int = 3) -> np.ndarray:
    """A textured scene: a ground texture plus a few objects of other textures."""
    img = render_texture(rng, random_style(rng), h, w)
    for _ in range(objects):
        m = random_shape(rng, h, w, area=(0.02, 0.12), holes=0.2, limbs=0.2, spread=0.0)
        img = _compose(img, render_texture(rng, random_style(rng), h, w), _soft(m, 0.7))
    return img


# ----------------------------------------------------------------------------- tasks


def synth_salient(
    rng: np.random.Generator, h: int, w: int, object_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    back = render_texture(rng, random_style(rng, saturation=0.35), h, w)
    back = _clutter(rng, back, int(rng.integers(10, 30)), float(rng.uniform(0.3, 0.7)))
    mask = random_shape(rng, h, w, area=_scaled((0.08, 0.35), object_scale))
    # A colour far from the background: opposite hue, high saturation, lightness pushed away.
    mean = back.reshape(-1, 3).mean(0).astype(np.uint8)[None, None]
    hsv = cv2.cvtColor(mean, cv2.COLOR_RGB2HSV)[0, 0].astype(np.float32)
    hue = (hsv[0] + 90 + rng.uniform(-30, 30)) % 180
    val = 230.0 if hsv[2] < 128 else float(rng.uniform(30, 70))
    obj_hsv = np.array([[[hue, rng.uniform(170, 255), val]]], np.uint8)
    color = cv2.cvtColor(obj_hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
    shade = 0.75 + 0.5 * fractal_noise(rng, h, w, 2.0, 2, 0.5)[..., None]
    front = np.clip(color * shade, 0, 255) + rng.normal(0, 3, (h, w, 1)).astype(np.float32)
    return _finish(_compose(back, front, _soft(mask, 0.6))), mask


def synth_camouflage(
    rng: np.random.Generator, h: int, w: int, object_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    style = random_style(rng)
    back = render_texture(rng, style, h, w)
    mask = random_shape(rng, h, w, area=_scaled((0.06, 0.3), object_scale))
    # Same style, slightly finer or coarser, with a small tone shift: never identical.
    scale = rng.uniform(0.7, 0.85) if rng.random() < 0.5 else rng.uniform(1.2, 1.45)
    front = render_texture(rng, style, h, w, scale=float(scale))
    front = front * rng.uniform(0.95, 1.05) + rng.choice([-1, 1]) * rng.uniform(4, 12)
    inner = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    rim = np.exp(-inner / rng.uniform(2, 5)) * (inner > 0)
    front = front * (1 - rim[..., None] * rng.uniform(0.1, 0.25))  # faint rim shading (relief)
    return _finish(_compose(back, front, _soft(mask, 0.7))), mask


def synth_shadow(
    rng: np.random.Generator, h: int, w: int, object_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    scene = _scene(rng, h, w, objects=int(rng.integers(1, 4)))
    shape = random_shape(
        rng, h, w, area=_scaled((0.08, 0.35), object_scale), holes=0.3, limbs=0.5
    )
    soft = _soft(shape, float(rng.uniform(1.5, 5.0)))
    strength = rng.uniform(0.35, 0.65)
    tint = np.array([1.0, 0.95, 0.8], np.float32)  # shadows lose less blue (sky light)
    image = scene * (1 - strength * soft[..., None] * tint)
    return _finish(image), soft > 0.5


def synth_defocus(
    rng: np.random.Generator, h: int, w: int, object_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    sharp = _clutter(rng, _scene(rng, h, w, objects=int(rng.integers(2, 5))), 40, 0.8)
    sharp += rng.normal(0, 4, (h, w, 1)).astype(np.float32)
    focus = random_shape(
        rng, h, w, area=_scaled((0.15, 0.5), object_scale), holes=0.2, limbs=0.4
    )
    near, far = float(rng.uniform(1.5, 3.0)), float(rng.uniform(3.5, 7.0))
    b1 = cv2.GaussianBlur(sharp, (0, 0), near)
    b2 = cv2.GaussianBlur(sharp, (0, 0), far)
    depth = fractal_noise(rng, h, w, 1.5, 2, 0.5)[..., None]  # blur radius varies smoothly
    blurred = b1 * (1 - depth) + b2 * depth
    return _finish(_compose(blurred, sharp, _soft(focus, 0.8))), focus


def _match_colour(patch: np.ndarray, target: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Shift/scale ``patch`` per channel so its stats inside ``where`` match ``target``'s."""
    p, t = patch[where], target[where]
    return (patch - p.mean(0)) / (p.std(0) + 1e-3) * t.std(0) + t.mean(0)


def synth_forgery(
    rng: np.random.Generator, h: int, w: int, object_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    base = _scene(rng, h, w, objects=int(rng.integers(2, 5)))
    base += rng.normal(0, rng.uniform(2, 5), (h, w, 3)).astype(np.float32)  # camera noise
    mask = random_shape(
        rng, h, w, area=_scaled((0.04, 0.2), object_scale), holes=0.3, limbs=0.4
    )
    patch: np.ndarray
    if rng.random() < 0.5:  # copy-move: a rescaled copy of another part of this image
        s = float(rng.uniform(0.8, 1.25))
        dx, dy = rng.uniform(-0.4, 0.4) * w, rng.uniform(-0.4, 0.4) * h
        m = np.array(
            [[s, 0, (1 - s) * w / 2 + dx], [0, s, (1 - s) * h / 2 + dy]], dtype=np.float32
        )
        patch = cv2.warpAffine(
            base, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
    else:  # splice: another scene, colour-matched, with its own noise level
        patch = _scene(rng, h, w, objects=2)
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
        patch = _match_colour(patch, base, ring)
        patch += rng.normal(0, rng.choice([0.5, 9.0]), (h, w, 3)).astype(np.float32)
    return _finish(_compose(base, patch, _soft(mask, 0.6))), mask


# Each is (rng, h, w, object_scale=1.0) -> (image, mask).
GENERATORS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "salient": synth_salient,
    "camouflage": synth_camouflage,
    "shadow": synth_shadow,
    "defocus": synth_defocus,
    "forgery": synth_forgery,
}
assert set(GENERATORS) == set(TASKS)


def _rng(task: str, seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(task.encode()), int(index)])


def sample(
    task: str, index: int, seed: int = 0, size: int = 256, object_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``index`` of the synthetic ``task`` set: (uint8 HxWx3 RGB, bool HxW mask).

    The short side is ``size``; the long side is up to 1.4x longer, in either orientation.
    ``object_scale`` multiplies the object's area range (1: the training distribution).
    """
    task = canonical_task(task)
    rng = _rng(task, seed, index)
    long = int(round(size * rng.uniform(1.0, 1.4)))
    h, w = (size, long) if rng.random() < 0.5 else (long, size)
    image, mask = GENERATORS[task](rng, h, w, object_scale=object_scale)
    return image, mask


def iter_samples(
    task: str, n: int, seed: int = 0, size: int = 256
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for i in range(n):
        yield sample(task, i, seed, size)


def _write_one(args: tuple[str, int, int, int, str]) -> None:
    task, index, seed, size, out = args
    image, mask = sample(task, index, seed, size)
    name = f"{index:06d}.png"
    cv2.imwrite(str(Path(out, "images", name)), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(Path(out, "masks", name)), mask.astype(np.uint8) * 255)


def write_dataset(
    task: str, n: int, out: str | Path, seed: int = 0, size: int = 256, workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``out/images/*.png``, ``out/masks/*.png`` and ``out/synth.json``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    task = canonical_task(task)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    jobs = [(task, i, seed, size, str(out)) for i in range(n)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_write_one, jobs, chunksize=8):
                if progress:
                    progress(1)
    else:
        for job in jobs:
            _write_one(job)
            if progress:
                progress(1)
    meta = {"task": task, "n": n, "seed": seed, "size": size, "version": SYNTH_VERSION}
    (out / "synth.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out
