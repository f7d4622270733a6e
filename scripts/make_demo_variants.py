"""(Re)build the precision variants of the bundled demo models in ``model_repository/``.

    python scripts/make_demo_variants.py [--tasks salient ...] [--out model_repository]

Per task, from its ``model.onnx``: ``focus export onnx --precision int8`` (ONNX Runtime dynamic
int8 -> ``model.int8.onnx``) and ``focus export openvino --precision fp32 bf16 --no-ir`` (OpenVINO
reads model.onnx: no IR copy of the weights in the repository). Each gate — soft mask and binary
IoU against ONNX Runtime fp32 on 8 synthetic scenes of the task (the demo models are trained, so
the IoU counts) — is written into the task's focus.json, passed or failed: the service refuses a
failed one, and ``FOCUS_BACKEND=auto`` times the passed ones against ONNX Runtime fp32.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.tasks import TASKS  # noqa: E402


def build_variants(repository: Path, tasks: list[str], threads: int = 1) -> int:
    from export.precision import build_int8, build_openvino

    for task in tasks:
        onnx_path = repository / task / "model.onnx"
        for variant in (
            build_int8(onnx_path, threads=threads),
            *build_openvino(onnx_path, ["fp32", "bf16"], write_ir=False, threads=threads),
        ):
            gate = variant.gate
            verdict = "passed" if gate.passed else "FAILED: " + "; ".join(gate.failures())
            print(f"{task} {variant.name}: {gate.summary()}: {verdict}", flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--out", type=Path, default=ROOT / "model_repository")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    return build_variants(args.out, args.tasks, args.threads)


if __name__ == "__main__":
    sys.exit(main())
