"""What full-resolution refinement buys: plain resize vs guided filter vs zoom pass vs tiles,
and composite colour error with and without foreground decontamination.

    python benchmarks/refinement.py --sizes 2048 --images 1 --repository model_repository

Synthetic high-resolution images with exact masks (``models.synth`` at a short side of
``--sizes``, long side up to 1.4x), a small and a large object for every task, through the demo
models of ``--repository`` on ONNX Runtime (CPU). For each image and option:

* ``BF@d``: boundary F-measure, the harmonic mean of the share of predicted boundary pixels
  within ``d`` px of the true boundary and the share of true boundary pixels within ``d`` px of
  the predicted one (mask at 0.5); ``d`` = ``--tolerance``;
* ``S``: S-measure (alpha 0.5) and ``MAE`` of the soft mask, via pysodmetrics;
* ``ms``: the option's own cost (postprocessing for the plain resize; the filter; the second
  pass including its network call; all tiles), and ``ms/MP``.

Options: ``plain`` (the resized soft mask), ``guided`` (``models.refine.refine_guided``),
``zoom`` and ``zoom+guided`` for salient and camouflage (``plan_zoom`` / ``blend_zoom``),
``tiles`` for forgery and defocus (native-resolution overlapping tiles, ``plan_tiles`` /
``stitch_tiles``; a 2048 px image is about 600 tiles of the demo models' 128 px, so by default
only the large-object images get them, to bound the run time: ``--tile-objects``).

Decontamination: the image cut out with the predicted alpha (plain and guided) and composited
on a flat new background, against the ideal composite (true mask, true foreground colours);
``fringe`` is the mean absolute RGB error (0..255) over the band within ``2 x factor`` px of
the true edge, without and with ``models.refine.estimate_foreground``.

Prints the CPU, a table per option, the means per task with a verdict, and ends with the key
ratio (the mean boundary F-measure of guided over that of plain, over the tasks). Verdict: a mask
option is "better" for a task when its mean boundary F-measure is higher than the plain
resize's and its mean S-measure is not lower (guided, tiles: they are about the edge); the
zoom pass, which is about finding a small object, when its mean S-measure is higher and its
MAE lower than plain (``zoom+guided``: than guided); decontamination when the fringe error
drops.
``models.refine.OFFERED`` offers an option for a task only with this verdict.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu_flags, cpu_model  # noqa: E402

from models.config import ModelCard  # noqa: E402
from models.processing import postprocess, preprocess_with_card  # noqa: E402
from models.refine import (  # noqa: E402
    blend_zoom,
    estimate_foreground,
    foreground_radius,
    plan_tiles,
    plan_zoom,
    refine_guided,
    stitch_tiles,
)
from models.runtime.onnxruntime import OnnxRuntimePredictor  # noqa: E402
from models.synth import sample  # noqa: E402

TASKS = ("salient", "camouflage", "shadow", "defocus", "forgery")
ZOOM_TASKS = ("salient", "camouflage")
TILE_TASKS = ("forgery", "defocus")
OBJECTS = {"small": 0.03, "large": 1.0}  # synth object_scale
NEW_BACKGROUND = np.array([40, 200, 60], np.float32)  # flat green


# ----------------------------------------------------------------------------------- metrics


def boundary(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint8)
    return (m - cv2.erode(m, np.ones((3, 3), np.uint8))) > 0


def boundary_f(pred: np.ndarray, gt: np.ndarray, tolerance: int) -> float:
    """Boundary F-measure at ``tolerance`` px (both boundaries empty: 1; one empty: 0)."""
    bp, bg = boundary(pred > 0.5), boundary(gt)
    if not bp.any() and not bg.any():
        return 1.0
    if not bp.any() or not bg.any():
        return 0.0
    dist_to_gt = cv2.distanceTransform((~bg).astype(np.uint8), cv2.DIST_L2, 3)
    dist_to_pred = cv2.distanceTransform((~bp).astype(np.uint8), cv2.DIST_L2, 3)
    precision = float((dist_to_gt[bp] <= tolerance).mean())
    recall = float((dist_to_pred[bg] <= tolerance).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def s_measure(pred: np.ndarray, gt: np.ndarray) -> float:
    import py_sod_metrics as psm

    metric = psm.Smeasure(alpha=0.5)
    metric.step(np.clip(pred, 0, 1).astype(np.float64), gt, normalize=False)
    return float(metric.get_results()["sm"])


def scores(pred: np.ndarray, gt: np.ndarray, tolerance: int) -> dict[str, float]:
    if pred.shape != gt.shape or pred.min() < 0 or pred.max() > 1:
        raise AssertionError(f"refinement broke the mask: {pred.shape} vs {gt.shape}")
    return {
        "BF": boundary_f(pred, gt, tolerance),
        "S": s_measure(pred, gt),
        "MAE": float(np.abs(pred - gt).mean()),
    }


def fringe_error(
    rgb: np.ndarray, gt: np.ndarray, alpha: np.ndarray, fg: np.ndarray, band: np.ndarray
) -> float:
    """Mean |composite - ideal composite| (0..255, RGB mean) over ``band``."""
    ideal = np.where(gt[..., None], rgb.astype(np.float32), NEW_BACKGROUND)
    a = alpha[..., None]
    composite = fg.astype(np.float32) * a + NEW_BACKGROUND * (1 - a)
    return float(np.abs(composite - ideal)[band].mean())


# ------------------------------------------------------------------------------------ passes


class Model:
    def __init__(self, directory: Path, threads: int) -> None:
        self.card = ModelCard.load(directory)
        self.predictor = OnnxRuntimePredictor(directory / "model.onnx", intra_op_threads=threads)

    def soft(self, rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """The plain resized soft mask and the (h, w) the network saw."""
        p = preprocess_with_card(rgb, self.card)
        probs, logits = self.predictor.infer(p.image[None], p.edges[None])
        soft, _ = postprocess(
            probs[0], logits[0], p.padded_size, p.resized_size, p.original_size, False
        )
        return soft, p.resized_size

    def tiles(self, rgb: np.ndarray, batch: int = 8) -> np.ndarray:
        """Native-resolution tiles of the network's own input size, stitched."""
        h, w = rgb.shape[:2]
        tile = self.card.input_short_side
        crops = plan_tiles(h, w, tile, overlap=0.25)
        masks: list[np.ndarray] = []
        for start in range(0, len(crops), batch):
            chunk = crops[start : start + batch]
            prepared = [
                preprocess_with_card(np.ascontiguousarray(rgb[c.y0 : c.y1, c.x0 : c.x1]), self.card)
                for c in chunk
            ]
            shapes = {p.padded_size for p in prepared}
            groups = [[p for p in prepared if p.padded_size == s] for s in shapes]
            by_id: dict[int, np.ndarray] = {}
            for group in groups:
                probs, logits = self.predictor.infer(
                    np.stack([p.image for p in group]), np.stack([p.edges for p in group])
                )
                for k, p in enumerate(group):
                    by_id[id(p)] = postprocess(
                        probs[k], logits[k], p.padded_size, p.resized_size, p.original_size, False
                    )[0]
            masks.extend(by_id[id(p)] for p in prepared)
        return stitch_tiles((h, w), crops, masks)


def zoom_pass(
    model: Model, rgb: np.ndarray, first: np.ndarray, network: tuple[int, int]
) -> tuple[np.ndarray, bool]:
    card = model.card
    crop = plan_zoom(first, card.input_short_side, card.input_max_size)
    if crop is None:
        return first, False
    crop_rgb = np.ascontiguousarray(rgb[crop.y0 : crop.y1, crop.x0 : crop.x1])
    crop_soft, _ = model.soft(crop_rgb)
    band = foreground_radius(first.shape, network)
    return blend_zoom(first, crop_soft, crop, band), True


# -------------------------------------------------------------------------------------- main


def run_image(
    model: Model, task: str, obj: str, rgb: np.ndarray, gt: np.ndarray, args: argparse.Namespace
) -> list[tuple[str, dict[str, float]]]:
    rows: list[tuple[str, dict[str, float]]] = []
    mp = rgb.shape[0] * rgb.shape[1] / 1e6
    t0 = time.perf_counter()
    plain, network = model.soft(rgb)
    t_plain = time.perf_counter() - t0
    rows.append(("plain", scores(plain, gt, args.tolerance) | {"ms": t_plain * 1e3}))

    t0 = time.perf_counter()
    guided = refine_guided(rgb, plain, network)
    t_guided = time.perf_counter() - t0
    rows.append(("guided", scores(guided, gt, args.tolerance) | {"ms": t_guided * 1e3}))

    if task in ZOOM_TASKS:
        t0 = time.perf_counter()
        zoomed, ran = zoom_pass(model, rgb, plain, network)
        t_zoom = time.perf_counter() - t0
        rows.append(("zoom", scores(zoomed, gt, args.tolerance) | {"ms": t_zoom * 1e3,
                                                                    "ran": float(ran)}))
        t0 = time.perf_counter()
        zg = refine_guided(rgb, zoomed, network)
        t_zg = t_zoom + time.perf_counter() - t0  # before scoring: the metrics are not its cost
        rows.append(("zoom+guided", scores(zg, gt, args.tolerance)
                     | {"ms": t_zg * 1e3, "ran": float(ran)}))
    if task in TILE_TASKS and obj in args.tile_objects:
        t0 = time.perf_counter()
        tiled = model.tiles(rgb)
        t_tiles = time.perf_counter() - t0
        rows.append(("tiles", scores(tiled, gt, args.tolerance) | {"ms": t_tiles * 1e3}))

    if not args.decontaminate:
        for _, row in rows:
            row["ms/MP"] = row["ms"] / mp
        return rows
    # Decontamination: the composite's colour error in the band around the true edge.
    factor = max(rgb.shape[0] / network[0], rgb.shape[1] / network[1])
    radius = int(round(2 * factor))
    near = cv2.dilate(boundary(gt).astype(np.uint8), np.ones((2 * radius + 1,) * 2, np.uint8)) > 0
    for name, alpha in (("plain", plain), ("guided", guided)):
        before = fringe_error(rgb, gt, alpha, rgb, near)
        t0 = time.perf_counter()
        fg = estimate_foreground(rgb, alpha, foreground_radius(alpha.shape, network))
        t_fg = time.perf_counter() - t0
        if fg.shape != rgb.shape or fg.dtype != np.uint8:
            raise AssertionError("decontamination changed the image's shape or type")
        after = fringe_error(rgb, gt, alpha, fg, near)
        rows.append((f"decont:{name}", {"fringe_before": before, "fringe_after": after,
                                        "ms": t_fg * 1e3}))
    for _, row in rows:
        row["ms/MP"] = row["ms"] / mp
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[2048])
    parser.add_argument("--images", type=int, default=1, help="images per task, size, object")
    parser.add_argument("--tolerance", type=int, default=3, help="boundary F tolerance, px")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--tile-objects", nargs="*", default=["large"], choices=list(OBJECTS),
                        help="object sizes that get native-resolution tiles (forgery, "
                        "defocus); none: skip them")
    parser.add_argument("--no-decontaminate", dest="decontaminate", action="store_false",
                        help="skip the composite colour error")
    parser.add_argument("--objects", nargs="+", default=list(OBJECTS), choices=list(OBJECTS))
    args = parser.parse_args()
    cv2.setNumThreads(1)

    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); flags: {cpu_flags()}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}; ONNX Runtime threads "
          f"{args.threads}; boundary tolerance {args.tolerance} px")
    results: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    header = (f"{'task':<10} {'object':<6} {'size':>9} {'option':<15} {'BF':>6} {'S':>6} "
              f"{'MAE':>7} {'ms':>8} {'ms/MP':>7}  note")
    print(header)
    print("-" * len(header))
    started = time.perf_counter()
    for task in args.tasks:
        model = Model(args.repository / task, args.threads)
        for size in args.sizes:
            for obj in args.objects:
                scale = OBJECTS[obj]
                for i in range(args.images):
                    rgb, gt = sample(task, i, seed=args.seed, size=size, object_scale=scale)
                    shape = f"{rgb.shape[1]}x{rgb.shape[0]}"
                    image_id = float(len(results[(task, "plain")]))
                    for option, row in run_image(model, task, obj, rgb, gt, args):
                        row["image"] = image_id  # options are compared on the same images
                        results[(task, option)].append(row)
                        if option.startswith("decont"):
                            print(f"{task:<10} {obj:<6} {shape:>9} {option:<15} "
                                  f"fringe {row['fringe_before']:6.2f} -> "
                                  f"{row['fringe_after']:6.2f} {row['ms']:8.1f} "
                                  f"{row['ms/MP']:7.1f}")
                            continue
                        note = ""
                        if "ran" in row:
                            note = "ran" if row["ran"] else "not needed"
                        print(f"{task:<10} {obj:<6} {shape:>9} {option:<15} {row['BF']:6.3f} "
                              f"{row['S']:6.3f} {row['MAE']:7.4f} {row['ms']:8.1f} "
                              f"{row['ms/MP']:7.1f}  {note}")
                    sys.stdout.flush()
        model.predictor.close()

    print()
    print("means per task and option over its images (compared with plain on the same images):")
    print(f"{'task':<10} {'option':<15} {'BF':>6} {'S':>6} {'MAE':>7} {'ms/MP':>7} "
          f"{'fringe':>15}  verdict")
    ratios: list[float] = []  # mean guided BF per task
    plains: list[float] = []  # mean plain BF per task
    def mean(rows: list[dict[str, float]], key: str, images: set[float]) -> float:
        return float(np.mean([r[key] for r in rows if r["image"] in images]))

    for task in args.tasks:
        base = results[(task, "plain")]
        for option in ("plain", "guided", "zoom", "zoom+guided", "tiles", "decont:plain",
                       "decont:guided"):
            rows = results.get((task, option))
            if not rows:
                continue
            ms_mp = float(np.mean([r["ms/MP"] for r in rows]))
            if option.startswith("decont"):
                before = float(np.mean([r["fringe_before"] for r in rows]))
                after = float(np.mean([r["fringe_after"] for r in rows]))
                verdict = "better" if after < before else "NOT better"
                print(f"{task:<10} {option:<15} {'':>6} {'':>6} {'':>7} {ms_mp:7.1f} "
                      f"{before:6.2f} -> {after:6.2f}  {verdict}")
                continue
            images = {r["image"] for r in rows}
            bf = mean(rows, "BF", images)
            s = mean(rows, "S", images)
            mae = mean(rows, "MAE", images)
            base_bf, base_s = mean(base, "BF", images), mean(base, "S", images)
            if option.startswith("zoom"):  # localisation: region measures
                reference = results[(task, "guided")] if option == "zoom+guided" else base
                better = s > mean(reference, "S", images) and mae < mean(reference, "MAE", images)
            else:  # the edge: boundary F, without losing the region
                better = bf > base_bf and s >= base_s
            note = ""
            if option == "tiles":  # only some images get tiles: say what they are compared to
                note = f" (plain on these {len(images)}: BF {base_bf:.3f}, S {base_s:.3f})"
            verdict = "" if option == "plain" else ("better" if better else "NOT better") + note
            if rows and "ran" in rows[0]:
                verdict += f" (ran on {int(sum(r['ran'] for r in rows))}/{len(rows)})"
            print(f"{task:<10} {option:<15} {bf:6.3f} {s:6.3f} {mae:7.4f} {ms_mp:7.1f} "
                  f"{'':>15}  {verdict}")
            if option == "guided":
                ratios.append(bf)
                plains.append(base_bf)
    print(f"\nwall time {time.perf_counter() - started:.0f} s; load average at end "
          f"{os.getloadavg()[0]:.2f}")
    print(f"key ratio: boundary F-measure guided / plain = "
          f"{float(np.mean(ratios)) / max(float(np.mean(plains)), 1e-9):.2f}x "
          f"(means over {len(ratios)} tasks)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
