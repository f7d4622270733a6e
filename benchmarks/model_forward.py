"""Per-preset size, compute and CPU forward latency of the FOCUS network.

    python benchmarks/model_forward.py [--presets tiny small base large giant] [--threads 2]
        [--reference-scratch $SCRATCH]

For each preset: parameters (all, and the inference graph without the training-only CLIP
refiner and projection heads), GFLOPs of one 512x512 forward (torch.utils.flop_counter), and the
median wall time of eval-mode forwards at 512x512, batch 1 (large and giant: one timed run after
one warm-up). With ``--reference-scratch`` (a reference-harness build, see
shared/tools/reference-harness), the reference implementation's ``large`` forward is timed in
the same run, alternating with ours, and the table ends with ours / reference.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.build import build_focus  # noqa: E402
from models.config import get_preset  # noqa: E402

REFERENCE_TIMER = r"""
import os, sys, time, types
sys.path.insert(0, os.environ["HARNESS"])
import torch
import make_reference as mr
torch.set_num_threads(int(os.environ["THREADS"]))
import focus  # noqa: F401  (registers the reference modules)
out = os.environ["SCRATCH"]
args = types.SimpleNamespace(config=mr.DEFAULT_CONFIG, size="large", opts=[])
cfg, _ = mr.setup_cfg(args, os.path.join(out, "clip_random_vitb16.pt"))
cfg.defrost(); cfg.MODEL.WEIGHTS = os.path.join(out, "official_L_random.pth"); cfg.freeze()
model = mr.build_predictor(cfg, 0).model.eval()
rgb = mr.make_inputs()[0][1]
image = torch.as_tensor(rgb.astype("float32").transpose(2, 0, 1))
inp = [{"image": image, "height": 512, "width": 512}]
with torch.no_grad():
    for r in range(2):
        t0 = time.perf_counter(); model(inp); print("WALL", time.perf_counter() - t0, flush=True)
"""


def cpu_description() -> str:
    model, flags = platform.processor(), ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next(
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.startswith("model name")
        )
        present = set(next(line for line in text.splitlines() if line.startswith("flags")).split())
        flags = " ".join(
            f
            for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")
            if f in present
        )
    except (OSError, StopIteration):
        pass
    return f"{model} [{flags}]"


def time_ours(preset: str, runs: int, size: int) -> tuple[float, int, int, float]:
    config = get_preset(preset)
    model = build_focus(config).eval()
    total = sum(p.numel() for p in model.parameters())
    training_only = ("clip_refiner", "text_embed", "image_embed")
    inference = sum(
        p.numel() for n, p in model.named_parameters() if not any(t in n for t in training_only)
    )
    image, edges = torch.randn(1, 3, size, size), torch.rand(1, 3, size, size)
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            model(image, edges)  # also the warm-up
        gflops = counter.get_total_flops() / 1e9
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model(image, edges)
            times.append(time.perf_counter() - t0)
    return statistics.median(times), total, inference, gflops


def time_reference(scratch: Path, threads: int) -> float:
    harness = Path(__file__).resolve().parents[2] / "shared" / "tools" / "reference-harness"
    env = dict(os.environ, SCRATCH=str(scratch), HARNESS=str(harness), THREADS=str(threads))
    out = subprocess.run(
        [str(scratch / "venv" / "bin" / "python"), "-c", REFERENCE_TIMER],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    walls = [float(line.split()[1]) for line in out.splitlines() if line.startswith("WALL")]
    return walls[-1]  # the run after the warm-up


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--presets", nargs="+", default=["tiny", "small", "base", "large", "giant"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", type=int, default=5, help="timed runs for tiny/small/base")
    ap.add_argument("--reference-scratch", type=Path, help="reference-harness SCRATCH dir")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"CPU: {cpu_description()}; torch {torch.__version__}; threads {args.threads}; "
        f"load avg {os.getloadavg()[0]:.2f}"
    )
    print(f"{'preset':8} {'params M':>9} {'infer M':>8} {'GFLOPs':>8} {'median s':>9}")
    ours = {}
    for preset in args.presets:
        runs = 1 if preset in ("large", "giant") else args.runs
        median, total, inference, gflops = time_ours(preset, runs, args.size)
        ours[preset] = median
        print(
            f"{preset:8} {total / 1e6:9.1f} {inference / 1e6:8.1f} {gflops:8.1f} {median:9.2f}",
            flush=True,
        )
    if args.reference_scratch:
        ref = time_reference(args.reference_scratch, args.threads)
        ours_again = time_ours("large", 1, args.size)[0]  # bracket the reference run
        mine = min(ours.get("large", ours_again), ours_again)
        print(
            f"reference large (same run): {ref:.2f} s; ours large: {mine:.2f} s "
            f"(load avg {os.getloadavg()[0]:.2f})"
        )
        print(
            f"ratio ours/reference (large, {args.size}^2, {args.threads} threads): {mine / ref:.2f}"
        )
    elif "large" in ours and "tiny" in ours:
        print(f"ratio large/tiny latency: {ours['large'] / ours['tiny']:.1f}")


if __name__ == "__main__":
    main()
