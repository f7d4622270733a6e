"""Rebuild the bundled demo models in ``model_repository/``: one ``tiny`` model per task.

    python scripts/make_demo_models.py [--tasks salient camouflage ...] [--minutes 4]

For each task: ``focus data synth`` writes a training split (seed 0) and a held-out split
(seed 1); ``focus pipeline`` trains the ``tiny`` preset for a wall-clock budget with the
CPU-friendly settings ``training.config.TINY_CPU`` (input short side 128, lr 1e-3 with
the backbone at the full rate, grad clip 1.0, drop-path 0.1, 1024 loss points), evaluates on the
held-out split, exports ONNX with the PyTorch parity check and publishes
``model_repository/<task>/{focus.json, model.onnx, model.safetensors, pipeline.json}``, the
checkpoint with its inference weights only (the training-only modules dropped, as
``models.checkpoint.save_inference_weights`` writes them). These models have only ever seen
synthetic images: they demonstrate the service, they are not useful on photographs.

Then the precision variants (``--no-variants`` skips them; ``scripts/make_demo_variants.py``
alone rebuilds them): ``model.int8.onnx`` (ONNX Runtime dynamic int8) and OpenVINO fp32 / bf16
on ``model.onnx`` (no IR, to keep the repository small), each gated against fp32 in focus.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.pipeline import PipelineConfig, run_pipeline  # noqa: E402
from models.checkpoint import is_training_only  # noqa: E402
from models.contract import WEIGHTS_FILE  # noqa: E402
from models.repository import scan_repository  # noqa: E402
from models.synth import write_dataset  # noqa: E402
from models.tasks import TASKS  # noqa: E402
from training.config import TINY_CPU  # noqa: E402


def keep_inference_weights(repository: Path, task: str) -> Path:
    """Drop the training-only tensors from the ``model.safetensors`` just published."""
    from safetensors.torch import load_file, save_file

    weights = scan_repository(repository)[task].directory / WEIGHTS_FILE
    state = {k: v for k, v in load_file(str(weights)).items() if not is_training_only(k)}
    save_file(state, str(weights), metadata={"format": "pt", "inference": "1"})
    return weights


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--minutes", type=float, default=4.0, help="training budget per task")
    ap.add_argument("--iters", type=int, default=900, help="poly-schedule length (steps)")
    ap.add_argument("--train-n", type=int, default=400)
    ap.add_argument("--eval-n", type=int, default=40)
    ap.add_argument("--out", type=Path, default=ROOT / "model_repository")
    ap.add_argument("--work", type=Path, default=None, help="keep data and runs here")
    ap.add_argument("--no-variants", dest="variants", action="store_false",
                    help="skip the int8 / OpenVINO bf16 variants")  # fmt: skip
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="focus-demo-"))
    failed = []
    for task in args.tasks:
        train_dir, eval_dir = work / task / "train", work / task / "heldout"
        write_dataset(task, args.train_n, train_dir, seed=0, size=128)
        write_dataset(task, args.eval_n, eval_dir, seed=1, size=128)
        config = PipelineConfig(
            task=task,
            data=(str(train_dir),),
            eval_data=(str(eval_dir),),
            out=args.out,
            preset=TINY_CPU["preset"],
            iters=args.iters,
            batch_size=TINY_CPU["batch_size"],
            num_points=TINY_CPU["num_points"],
            workers=TINY_CPU["workers"],
            tensorrt="off",
            with_weights=True,
            work=work / task / "pipeline",
            train_options={**TINY_CPU, "max_seconds": args.minutes * 60, "progress": False},
        )
        try:
            run_pipeline(config, echo=print)
            print(f"{task}: {keep_inference_weights(args.out, task)}: inference weights only")
        except Exception as exc:  # noqa: BLE001 - report every task, then fail
            print(f"{task}: FAILED: {exc}", file=sys.stderr)
            failed.append(task)
    if args.variants and not failed:
        from make_demo_variants import build_variants

        return build_variants(args.out, args.tasks)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
