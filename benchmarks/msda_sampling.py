"""Deformable-attention sampling on the CPU runtimes: ``GridSample`` (what models/msda.py
exports) against a gather-based bilinear formulation of the same function.

Issue 17's profile puts FOCUS-S's OpenVINO bf16 time 40 % in the deformable sampling, which
OpenVINO runs as an f32 ``GridSample`` with bf16<->f32 reorders around it. This measures, for
one pixel-decoder layer at FOCUS-S/L sizes (512x512 input: levels 64², 32², 16², 8 heads of 32,
4 points), the sampling + weighted sum of ``models.msda.sample_levels`` exported as it is and
the same function written with ``Gather`` (four corner rows of the flattened value, weighted by
the bilinear and attention weights, summed): ms per call in ONNX Runtime fp32, OpenVINO f32 and
OpenVINO bf16, interleaved round by round, and the max abs difference from PyTorch's
``grid_sample``. An experiment for the next step, not a served path.

    python benchmarks/msda_sampling.py --threads 2 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags, cpu_model  # noqa: E402

from models.msda import sample_levels  # noqa: E402

SHAPES = [(64, 64), (32, 32), (16, 16)]  # pixel-decoder levels of a 512x512 input
HEADS, HEAD_DIM, POINTS = 8, 32, 4


class GridSampleLevels(nn.Module):
    """models.msda.sample_levels as the exported graph computes it (``GridSample``)."""

    def forward(self, value: Tensor, grids: list[Tensor], weights: Tensor) -> Tensor:
        return sample_levels(value, SHAPES, grids, weights)


class GatherLevels(nn.Module):
    """The same function with ``Gather``: bilinear, zeros padding, align_corners=False."""

    def forward(self, value: Tensor, grids: list[Tensor], weights: Tensor) -> Tensor:
        n, _, m, d = value.shape
        lq = weights.shape[1]
        values = value.split([h * w for h, w in SHAPES], dim=1)
        # [N, Lq, M, L, P] -> [N*M, L, P, Lq]
        weights = weights.permute(0, 2, 3, 4, 1).flatten(0, 1)
        out: Tensor | None = None
        for level, (h, w) in enumerate(SHAPES):
            # [N, H*W, M, D] -> [N*M*H*W, D]: one row per (batch*head, cell)
            rows = values[level].permute(0, 2, 1, 3).reshape(n * m * h * w, d)
            grid = grids[level]  # [N*M, P, Lq, 2] in [-1, 1]
            x = ((grid[..., 0] + 1) * w - 1) / 2
            y = ((grid[..., 1] + 1) * h - 1) / 2
            x0, y0 = x.floor(), y.floor()
            fx, fy = x - x0, y - y0
            ix, iy = x0.to(torch.int64), y0.to(torch.int64)
            base = (torch.arange(n * m, device=value.device) * (h * w)).view(-1, 1, 1)
            attn = weights[:, level]  # [N*M, P, Lq]
            part: Tensor | None = None
            for cx, wx in ((ix, 1 - fx), (ix + 1, fx)):
                for cy, wy in ((iy, 1 - fy), (iy + 1, fy)):
                    inside = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
                    index = torch.clamp(cy, 0, h - 1) * w + torch.clamp(cx, 0, w - 1)
                    index = index + base  # [N*M, P, Lq]
                    corner = wx * wy * inside.to(value.dtype) * attn  # [N*M, P, Lq]
                    picked = rows[index.flatten(1)].view(n * m, POINTS, lq, d)
                    term = (picked * corner[..., None]).sum(1)  # [N*M, Lq, D]
                    part = term if part is None else part + term
            assert part is not None
            out = part if out is None else out + part
        assert out is not None
        return out.view(n, m, lq, d).permute(0, 2, 1, 3).reshape(n, lq, m * d)


def inputs(seed: int = 0) -> tuple[Tensor, list[Tensor], Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in SHAPES)
    lq = s  # the pixel-decoder encoder queries every cell of every level
    value = torch.randn(1, s, HEADS, HEAD_DIM, generator=g)
    # locations around each query's own cell, some outside the map (zeros padding matters)
    grids = [torch.rand(HEADS, POINTS, lq, 2, generator=g) * 2.2 - 1.1 for _ in SHAPES]
    weights = torch.softmax(torch.randn(1, lq, HEADS, len(SHAPES) * POINTS, generator=g), -1)
    return value, grids, weights.view(1, lq, HEADS, len(SHAPES), POINTS)


def export(module: nn.Module, example: tuple, path: Path) -> None:
    value, grids, weights = example
    torch.onnx.export(module, (value, grids, weights), str(path), dynamo=True, opset_version=18,
                      input_names=["value", "g0", "g1", "g2", "weights"],
                      output_names=["out"])  # fmt: skip


def runners(path: Path, threads: int) -> dict[str, object]:
    import onnxruntime as ort
    import openvino as ov

    from models.runtime.openvino import on_own_thread

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    found: dict[str, object] = {"onnxruntime fp32": ort.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"])}  # fmt: skip
    core = ov.Core()
    for hint in ("f32", "bf16"):
        config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads,
                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}  # fmt: skip
        found[f"openvino {hint}"] = on_own_thread(
            lambda config=config: core.compile_model(str(path), "CPU", config)
        )
    return found


def call(runner: object, feed: dict[str, np.ndarray]) -> np.ndarray:
    if hasattr(runner, "run"):
        return runner.run(None, feed)[0]  # type: ignore[attr-defined]
    return np.asarray(runner(feed)[0])  # type: ignore[operator]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    example = inputs()
    value, grids, weights = example
    with torch.no_grad():
        expected = GridSampleLevels()(value, grids, weights).numpy()
        gathered = GatherLevels()(value, grids, weights).numpy()
    print(f"CPU: {cpu_model()}; flags: {cpu_flags()}; {args.threads} threads; "
          f"torch {torch.__version__}")  # fmt: skip
    print(f"PyTorch gather vs grid_sample: max abs {np.abs(gathered - expected).max():.2e}")
    feed = {"value": value.numpy(), "g0": grids[0].numpy(), "g1": grids[1].numpy(),
            "g2": grids[2].numpy(), "weights": weights.numpy()}  # fmt: skip
    rows: dict[tuple[str, str], list[float]] = {}
    errors: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        graphs = {}
        for name, module in (("GridSample", GridSampleLevels()), ("Gather", GatherLevels())):
            path = Path(tmp) / f"{name}.onnx"
            export(module, example, path)
            graphs[name] = runners(path, args.threads)
        for name, found in graphs.items():  # warm-up and accuracy
            for runtime, runner in found.items():
                errors[(name, runtime)] = float(np.abs(call(runner, feed) - expected).max())
        for _ in range(args.rounds):  # interleaved: every row once per round
            for name, found in graphs.items():
                for runtime, runner in found.items():
                    start = time.perf_counter()
                    call(runner, feed)
                    rows.setdefault((name, runtime), []).append(1e3 * (time.perf_counter() - start))
    print(f"\none pixel-decoder layer's sampling, FOCUS at 512x512 (levels {SHAPES}, {HEADS} heads "
          f"of {HEAD_DIM}, {POINTS} points; {args.rounds} interleaved rounds)\n")  # fmt: skip
    print("| formulation | runtime | median ms | runs (ms) | max abs vs grid_sample |")
    print("|---|---|---:|---|---:|")
    for (name, runtime), times in rows.items():
        runs = " / ".join(f"{t:.1f}" for t in times)
        print(f"| {name} | {runtime} | {statistics.median(times):.1f} | {runs} | "
              f"{errors[(name, runtime)]:.1e} |")  # fmt: skip
    ratio = statistics.median(rows[("Gather", "openvino bf16")]) / statistics.median(
        rows[("GridSample", "openvino bf16")]
    )
    print(f"\nKey ratio: Gather / GridSample, OpenVINO bf16 = {ratio:.2f}")


if __name__ == "__main__":
    main()
