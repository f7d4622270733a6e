"""Which int8 recipe for ONNX Runtime: dynamic vs static QDQ, and which modules to keep in fp32.

    python benchmarks/int8_study.py --onnx DIR/model.onnx [--threads 2] [--modes dynamic static]

For each mode and each exclusion (none, then each stage of ``STAGES`` kept in fp32), quantize
with the export's own code (``export.precision.quantize_int8``, what ``focus export onnx
--precision int8`` runs), measure the gate (``export.precision.measure_gate``: 8 images through
the shared post-processing vs ONNX Runtime fp32) and time one forward at the card's input size
(median of ``--repeats`` after a warm-up). Needs a graph whose nodes carry module paths
(``export.graph.name_nodes_by_module``; graphs exported before that cannot be attributed).
Prints the CPU, a table and the best recipe that passes the gate.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (name, regex of module paths kept in fp32)
STAGES: tuple[tuple[str, str], ...] = (
    ("none", ""),
    ("ViT blocks", r"^backbone\.blocks\."),
    ("adapter (interactions, spm)", r"^backbone\.(interactions|spm|level_embed)"),
    ("deform. offsets + weights (all)", r"\.(sampling_offsets|attention_weights)$"),
    ("pixel decoder", r"^sem_seg_head\.pixel_decoder"),
    ("transformer decoder", r"^sem_seg_head\.predictor"),
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--onnx", type=Path, required=True)
    ap.add_argument("--modes", nargs="+", default=["dynamic", "static"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trained", action="store_true", help="enforce the binary IoU")
    ap.add_argument("--stages", nargs="+", default=None, help="stage names to try (all)")
    args = ap.parse_args()

    from export.precision import calibration_batches, measure_gate, quantize_int8, time_predictor
    from models.config import ModelCard
    from models.runtime.onnxruntime import OnnxRuntimePredictor

    card = ModelCard.load(args.onnx.parent)
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )  # fmt: skip
    print(f"CPU: {cpu}; {args.threads} threads; load average {os.getloadavg()[0]:.2f}")
    print(f"model: {card.task} {card.preset} ({args.onnx}); trained: {args.trained}")
    reference = OnnxRuntimePredictor(args.onnx, intra_op_threads=args.threads)
    feeds = calibration_batches(card, 1, seed=2)[0]
    fp32_s = time_predictor(reference, feeds, args.repeats)
    print("\n| mode | kept fp32 | soft max abs | soft mean abs | binary IoU | ms | vs fp32 "
          "| gate |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---|")
    print(f"| fp32 | - | 0 | 0 | 1 | {fp32_s * 1e3:.1f} | 1.00x | reference |")
    best = None
    stages = [s for s in STAGES if args.stages is None or s[0] in args.stages]
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            for name, exclude in stages:
                out = Path(tmp) / f"{mode}-{len(name)}.onnx"
                recipe = quantize_int8(args.onnx, out, card, mode=mode, exclude=exclude)
                candidate = OnnxRuntimePredictor(out, intra_op_threads=args.threads)
                gate = measure_gate(reference, candidate, card, reference_name="onnxruntime fp32",
                                    runtime_version="", trained=args.trained)  # fmt: skip
                seconds = time_predictor(candidate, feeds, args.repeats)
                ok = "pass" if gate.passed else "FAIL"
                print(
                    f"| {mode} | {name} ({recipe['excluded_nodes']} nodes) | "
                    f"{gate.soft_max_abs:.3g} | {gate.soft_mean_abs:.3g} | {gate.min_iou:.4f} | "
                    f"{seconds * 1e3:.1f} | {fp32_s / seconds:.2f}x | {ok} |",
                    flush=True,
                )
                if gate.passed and (best is None or seconds < best[0]):
                    best = (seconds, mode, name)
                candidate.session = None
                out.unlink()
    if best:
        print(f"\nbest passing recipe: {best[1]}, kept fp32: {best[2]}, "
              f"{fp32_s / best[0]:.2f}x fp32")  # fmt: skip
    else:
        print("\nno int8 recipe passed the gate")
    print(f"(load average {os.getloadavg()[0]:.2f}; the machine is shared)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
