"""``torchrun --nproc-per-node 2 -m focus_cli train`` on CPU (gloo): a 2-process smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from models.checkpoint import load_checkpoint
from models.synth import write_dataset
from training.loop import STATE_FILE

REPO = Path(__file__).resolve().parents[2]


def test_two_process_gloo_run_trains_and_writes_once(tmp_path: Path) -> None:
    data = write_dataset("camouflage", 6, tmp_path / "cod", seed=0, size=64)
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "focus_cli", "train", "--task", "camouflage", "--data", str(data),
        "--out", str(run), "--iters", "3", "--batch-size", "1", "--num-points", "128",
        "--workers", "0", "--threads", "1", "--input-short-side", "64", "--log-every", "1",
        "--save-every", "2", "--device", "cpu",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]  # rank 0 alone writes
    assert all(r["loss"]["total"] > 0 for r in log)
    state = torch.load(run / STATE_FILE, weights_only=True)
    assert state["world_size"] == 2 and state["step"] == 3 and state["samples_per_rank"] == 3
    _, card = load_checkpoint(run / "checkpoint")
    assert card.provenance["step"] == 3
