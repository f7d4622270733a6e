"""Compare our network with golden tensors from shared/tools/reference-harness (dev tool).

    python scripts/check_reference.py --checkpoint $SCRATCH/official_S_random.pth --preset small \
        --reference $SCRATCH/reference/S

Imports the reference checkpoint with ``models.official``, then for every captured input checks
our preprocessing (resize, normalise, pad, edge map), backbone features, head outputs, the soft
mask (reference ``sem_seg[0]``, tolerance 1e-4) and the evaluator's binary mask (identical).
Exits 1 on any failure. Not part of the test suite: the harness needs a 5.5 GB environment.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.build import build_focus  # noqa: E402
from models.config import get_preset  # noqa: E402
from models.official import convert_official_state_dict, read_official_file  # noqa: E402
from models.processing import postprocess, preprocess  # noqa: E402
from models.weights import load_strict  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--preset", required=True)
    ap.add_argument("--reference", required=True, type=Path)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build_focus(get_preset(args.preset))
    load_strict(
        model, convert_official_state_dict(read_official_file(args.checkpoint)), args.checkpoint
    )
    model.eval()
    ok = True
    names = sorted(p.name[len("input_") : -4] for p in args.reference.glob("input_*.npy"))
    for name in names:
        rgb = np.load(args.reference / f"input_{name}.npy")
        prep = np.load(args.reference / f"prep_{name}.npz")
        head = np.load(args.reference / f"head_{name}.npz")
        sem_ref = np.load(args.reference / f"sem_seg_{name}.npy")
        inst_ref = np.load(args.reference / f"instmask_{name}.npy")
        p = preprocess(rgb)
        image, edges = torch.from_numpy(p.image)[None], torch.from_numpy(p.edges)[None]
        row = {
            "model_input": float(np.abs(p.image - prep["model_input"][0]).max()),
            "edge_input": float(np.abs(p.edges - prep["edge_input"][0]).max()),
        }
        with torch.no_grad():
            feats = model.backbone(image, edges)
            probs, logits = model(image, edges)
        bb = args.reference / f"backbone_{name}.npz"
        if bb.exists():
            ref_feats = np.load(bb)
            for k in ("res2", "res3", "res4", "res5"):
                row[k] = float(np.abs(feats[k].numpy() - ref_feats[k]).max())
        ref_probs = torch.softmax(torch.from_numpy(head["pred_logits"]), -1)[..., :-1].numpy()
        row["class_probs"] = float(np.abs(probs.numpy() - ref_probs).max())
        row["mask_logits"] = float(np.abs(logits.numpy() - head["pred_masks"]).max())
        soft, binary = postprocess(
            probs[0].numpy(), logits[0].numpy(), p.padded_size, p.resized_size, p.original_size
        )
        row["soft_mask"] = float(np.abs(soft - sem_ref[0]).max())
        row["binary_equal"] = bool(np.array_equal(binary.astype(np.int32), inst_ref))
        good = (
            row["model_input"] == 0
            and row["edge_input"] == 0
            and row["soft_mask"] <= 1e-4
            and row["binary_equal"]
        )
        ok &= good
        print(
            f"{'OK ' if good else 'BAD'} {name}: "
            + ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            )
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
