"""Fine-tuning starts from a checkpoint's weights (a bundled demo model included), and every
checkpoint written by training carries a version: the date and a hash of its weights, or the
one given with ``--version``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import focus_cli
from models.checkpoint import is_training_only, load_checkpoint, weights_version
from models.synth import write_dataset
from training.loop import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "model_repository" / "salient"
VERSION = re.compile(r"^\d{8}-[0-9a-f]{8}$")


@pytest.fixture(scope="module")
def sod(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset("salient", 4, tmp_path_factory.mktemp("sod"), seed=0, size=64)


def _config(out: Path, data: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "out": out, "task": "salient", "data": (str(data),), "batch_size": 2,
        "num_points": 256, "workers": 0, "threads": 1, "save_every": 0, "progress": False,
        "tensorboard": False, "iters": 1, "clip_grad": 0.0,
    }
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_fine_tuning_starts_from_the_demo_checkpoint(tmp_path: Path, sod: Path) -> None:
    torch.manual_seed(0)
    ckpt = train(_config(tmp_path / "run", sod, init_from=DEMO, lr=1e-12))
    tuned = load_file(str(ckpt / "model.safetensors"))
    demo = load_file(str(DEMO / "model.safetensors"))
    # one step at lr 1e-12 leaves every inference tensor where the demo model had it
    # (BatchNorm running statistics move with any forward pass in train mode)
    moved = [
        k for k, v in demo.items()
        if "running_" not in k and "num_batches" not in k
        and not torch.allclose(tuned[k], v, atol=1e-6, rtol=0)
    ]
    assert moved == []
    _, card = load_checkpoint(ckpt)
    assert card.input_short_side == 128  # the demo model's, not the preset's 256
    assert card.provenance["train_config"]["init_from"] == str(DEMO)
    assert VERSION.match(card.version), card.version
    assert card.version.endswith(weights_version(tuned)[-8:])


def test_fine_tuning_refuses_another_preset(tmp_path: Path, sod: Path) -> None:
    with pytest.raises(ValueError, match="holds a 'tiny' model, not 'small'"):
        train(_config(tmp_path / "run", sod, init_from=DEMO, preset="small"))


def test_cli_train_init_from_and_explicit_version(tmp_path: Path, sod: Path) -> None:
    run = tmp_path / "run"
    argv = ["train", "--recipe", "tiny-cpu", "--task", "sod", "--data", str(sod), "--out",
            str(run), "--iters", "1", "--batch-size", "2", "--num-points", "128",
            "--workers", "0", "--init-from", str(DEMO), "--version", "2026.1-finetune"]
    assert focus_cli.main(argv) == 0
    model, card = load_checkpoint(run / "checkpoint")
    assert card.version == "2026.1-finetune"
    assert card.preset == "tiny" and card.input_short_side == 128
    assert any(is_training_only(k) for k in model.state_dict())  # rebuilt, not loaded


def test_weights_version_depends_on_every_byte() -> None:
    a = {"w": torch.zeros(3), "b": torch.ones(2)}
    b = {"w": torch.zeros(3), "b": torch.tensor([1.0, 1.0000001])}
    assert VERSION.match(weights_version(a, now=0)) and weights_version(a, now=0).startswith("1970")
    assert weights_version(a, now=0) == weights_version(dict(reversed(list(a.items()))), now=0)
    assert weights_version(a, now=0) != weights_version(b, now=0)
