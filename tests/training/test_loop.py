"""The training loop: a tiny run learns, resumes exactly, reports bad data, and its checkpoint
goes through ``focus eval``. Runs at a 64-pixel input with one torch thread to stay fast."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import focus_cli
from models.build import build_focus
from models.checkpoint import load_checkpoint
from models.clip import build_clip_refiner
from models.config import get_preset
from models.synth import write_dataset
from training.loop import STATE_FILE, TrainConfig, train
from training.optim import param_groups, poly_lr, resolve_amp


@pytest.fixture(scope="module")
def cod(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset("camouflage", 8, tmp_path_factory.mktemp("cod"), seed=0, size=64)


def _config(out: Path, data: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "out": out, "task": "camouflage", "data": (str(data),), "input_short_side": 64,
        "batch_size": 2, "num_points": 256, "workers": 0, "threads": 1, "log_every": 1,
        "save_every": 0, "progress": False, "tensorboard": False, "lr": 1e-3,
        "clip_grad": 0.0, "iters": 4,
    }
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _mean(records: list[dict], term: str = "total") -> float:
    return sum(r["loss"][term] for r in records) / len(records)


def test_tiny_run_on_synthetic_camouflage_lowers_the_loss(tmp_path: Path, cod: Path) -> None:
    ckpt = train(_config(tmp_path / "run", cod, iters=30, workers=1))
    log = _log(tmp_path / "run")
    assert [r["step"] for r in log] == list(range(1, 31))
    assert set(log[0]["loss"]) == {"ce", "mask", "dice", "bbox", "giou", "total"}
    # Per-step totals are noisy (2 augmented images, drop-path): compare averages.
    assert _mean(log[-10:]) < 0.92 * _mean(log[:5])
    assert _mean(log[-5:], "ce") < 0.6 * _mean(log[:5], "ce")
    model, card = load_checkpoint(ckpt)
    assert card.task == "camouflage" and card.preset == "tiny"
    assert card.input_short_side == 64 and card.provenance["step"] == 30
    assert card.provenance["clip_distillation"] is False


@pytest.mark.slow
def test_longer_tiny_run_keeps_lowering_every_term(tmp_path: Path, cod: Path) -> None:
    train(_config(tmp_path / "run", cod, iters=200, batch_size=4, workers=1, log_every=10))
    log = _log(tmp_path / "run")
    assert _mean(log[-3:]) < 0.75 * _mean(log[:2])
    for term in ("ce", "mask", "dice", "bbox", "giou"):
        assert _mean(log[-3:], term) < _mean(log[:2], term), term


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / STATE_FILE, weights_only=True)["model"]


def test_resume_continues_to_the_same_weights(tmp_path: Path, cod: Path) -> None:
    kw = {"iters": 6, "accum": 2, "clip_grad": 0.05, "num_points": 128}
    straight = tmp_path / "straight"
    train(_config(straight, cod, **kw))
    split = tmp_path / "split"
    train(_config(split, cod, stop_at=3, **kw))
    state = torch.load(split / STATE_FILE, weights_only=True)
    assert state["step"] == 3 and state["samples_per_rank"] == 3 * 2 * 2
    train(_config(split, cod, resume=True, **kw))
    a, b = _weights(straight), _weights(split)
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst <= 1e-6, worst
    ck_a = load_file(str(straight / "checkpoint" / "model.safetensors"))
    ck_b = load_file(str(split / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(ck_a[k], ck_b[k]) for k in ck_a)
    assert [r["step"] for r in _log(split)] == list(range(1, 7))


def test_an_existing_run_is_not_overwritten(tmp_path: Path, cod: Path) -> None:
    train(_config(tmp_path / "run", cod, iters=1))
    with pytest.raises(FileExistsError, match="resume"):
        train(_config(tmp_path / "run", cod, iters=1))


def test_resume_refuses_another_task(tmp_path: Path, cod: Path) -> None:
    train(_config(tmp_path / "run", cod, iters=1))
    with pytest.raises(ValueError, match="task"):
        train(_config(tmp_path / "run", cod, iters=2, resume=True, task="salient"))


def test_bad_training_pairs_are_reported_by_name_and_skipped(
    tmp_path: Path, cod: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for i in range(3):
        name = f"{i:06d}.png"
        (data / "images" / name).write_bytes((cod / "images" / name).read_bytes())
        (data / "masks" / name).write_bytes((cod / "masks" / name).read_bytes())
    (data / "images" / "broken.png").write_bytes(b"\x89PNG not really")
    (data / "masks" / "broken.png").write_bytes((cod / "masks" / "000000.png").read_bytes())
    (data / "images" / "lonely.png").write_bytes((cod / "images" / "000004.png").read_bytes())
    with caplog.at_level(logging.WARNING):
        train(_config(tmp_path / "run", data, iters=2))
    text = caplog.text
    assert "broken.png" in text and "lonely.png" in text
    assert len(_log(tmp_path / "run")) == 2


def test_train_without_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="data"):
        train(TrainConfig(out=tmp_path / "run", iters=1))


def _tiny_clip_files(tmp_path: Path) -> tuple[Path, Path]:
    torch.manual_seed(1)
    refiner = build_clip_refiner(get_preset("tiny"))
    weights = tmp_path / "clip.safetensors"
    state = {k: v.contiguous() for k, v in refiner.clip_model.state_dict().items()}
    save_file(state, str(weights))
    vocab = tmp_path / "bpe.txt.gz"
    with gzip.open(vocab, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\ni t\nb a\nba ck</w>\n")
    return weights, vocab


def test_clip_distillation_adds_the_clip_terms(
    tmp_path: Path, cod: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weights, vocab = _tiny_clip_files(tmp_path)
    with caplog.at_level(logging.INFO):
        ckpt = train(_config(tmp_path / "run", cod, iters=2, clip_weights=weights,
                             clip_vocab=vocab))
    assert "CLIP distillation on" in caplog.text
    log = _log(tmp_path / "run")
    assert log[0]["loss"]["clip"] > 0
    _, card = load_checkpoint(ckpt)
    assert card.provenance["clip_distillation"] is True
    saved = load_file(str(ckpt / "model.safetensors"))
    prefix = "sem_seg_head.predictor.clip_refiner.clip_model."
    loaded = load_file(str(weights))
    assert torch.equal(saved[prefix + "token_embedding.weight"], loaded["token_embedding.weight"])


def test_without_clip_files_the_run_says_distillation_is_off(
    tmp_path: Path, cod: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        train(_config(tmp_path / "run", cod, iters=1))
    assert "CLIP distillation is off" in caplog.text
    assert "clip" not in _log(tmp_path / "run")[0]["loss"]


def test_cli_train_then_eval_end_to_end(
    tmp_path: Path, cod: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    argv = ["train", "--recipe", "tiny-cpu", "--task", "cod", "--data", str(cod), "--out",
            str(run), "--iters", "2",
            "--batch-size", "2", "--num-points", "128", "--workers", "0", "--threads", "1",
            "--input-short-side", "64", "--save-every", "1", "--log-every", "1"]
    assert focus_cli.main(argv) == 0
    _, card = load_checkpoint(run / "checkpoint")
    used = card.provenance["train_config"]
    assert used["lr"] == 1e-3 and used["clip_grad"] == 1.0  # from the recipe
    assert used["input_short_side"] == 64 and used["batch_size"] == 2  # explicit flags win
    heldout = write_dataset("camouflage", 2, tmp_path / "heldout", seed=1, size=64)
    out_json = tmp_path / "eval.json"
    code = focus_cli.main(["eval", "--checkpoint", str(run), "--threads", "1", "--data",
                           str(heldout), "--json", str(out_json)])
    assert code == 0
    result = json.loads(out_json.read_text())
    scores = result["datasets"][0]
    assert result["task"] == "camouflage" and scores["dataset"] == "heldout"
    assert result["checkpoint"] == str(run / "checkpoint")
    assert 0.0 <= scores["binary"]["MAE"] <= 1.0 and 0.0 <= scores["soft"]["S"] <= 1.0
    assert "heldout" in capsys.readouterr().out


def test_cli_train_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = focus_cli.main(["train", "--task", "nope", "--images", str(tmp_path), "--masks",
                           str(tmp_path), "--out", str(tmp_path / "run")])
    assert code == 2
    assert "unknown task" in capsys.readouterr().err


def test_param_groups_follow_the_reference() -> None:
    model = build_focus(get_preset("tiny"))
    model.sem_seg_head.predictor.clip_refiner.requires_grad_(False)

    def group_of(groups: list[dict], param: torch.nn.Parameter) -> dict:
        return next(g for g in groups if any(p is param for p in g["params"]))

    groups = param_groups(model, weight_decay=0.05, backbone_multiplier=0.1)
    bb, pred = model.backbone, model.sem_seg_head.predictor
    assert group_of(groups, bb.blocks[0].attn.qkv.weight) == {
        **group_of(groups, bb.blocks[0].attn.qkv.weight), "lr_scale": 0.1, "weight_decay": 0.05}
    assert group_of(groups, bb.blocks[0].norm1.weight)["weight_decay"] == 0.0
    assert group_of(groups, bb.norm1.weight)["weight_decay"] == 0.0  # BatchNorm
    assert group_of(groups, pred.query_feat.weight)["weight_decay"] == 0.0  # nn.Embedding
    assert group_of(groups, pred.class_embed.bias)["weight_decay"] == 0.05  # biases decay
    assert group_of(groups, pred.class_embed.weight)["lr_scale"] == 1.0
    for p in (bb.pos_embed, bb.cls_token, bb.level_embed, bb.blocks[0].gamma1):
        assert group_of(groups, p)["weight_decay"] == 0.05  # reference quirk
    fixed = param_groups(model, weight_decay=0.05, backbone_multiplier=0.1,
                         decay_embeddings=False)
    assert group_of(fixed, bb.pos_embed)["weight_decay"] == 0.0
    assert group_of(fixed, bb.blocks[0].gamma1)["weight_decay"] == 0.0
    counted = sum(len(g["params"]) for g in groups)
    assert counted == sum(1 for p in model.parameters() if p.requires_grad)


def test_poly_schedule_and_amp_choice() -> None:
    assert poly_lr(1e-4, 0, 100) == 1e-4
    assert poly_lr(1e-4, 50, 100) == pytest.approx(1e-4 * 0.5**0.9)
    assert poly_lr(1e-4, 100, 100) == 0.0
    assert resolve_amp("auto", torch.device("cpu")) is None
    assert resolve_amp("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="CUDA"):
        resolve_amp("fp16", torch.device("cpu"))


@pytest.mark.parametrize(
    "kw, match",
    [({"iters": 0}, "iters"), ({"input_short_side": 100}, "multiple of 32"),
     ({"clip_weights": Path("x")}, "clip_vocab"), ({"images": Path("x")}, "masks")],
)
def test_train_config_validates(tmp_path: Path, kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(out=tmp_path, **kw)  # type: ignore[arg-type]


class _FakeWriter:
    def __init__(self) -> None:
        self.scalars: dict[str, list[float]] = {}
        self.images: list[tuple[str, tuple[int, ...]]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.setdefault(tag, []).append(value)

    def add_image(self, tag: str, picture: object, step: int) -> None:
        self.images.append((tag, picture.shape))  # type: ignore[attr-defined]

    def close(self) -> None:
        pass


def test_tensorboard_gets_scalars_and_previews(
    tmp_path: Path, cod: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = _FakeWriter()
    monkeypatch.setattr("training.monitor._summary_writer", lambda log_dir: writer)
    train(_config(tmp_path / "run", cod, iters=2, tensorboard=True, image_every=2))
    assert len(writer.scalars["loss/total"]) == 2 and "loss/dice" in writer.scalars
    assert {"train/lr", "train/images_per_s", "train/grad_norm"} <= set(writer.scalars)
    assert writer.images == [("preview", (3, 64, 192))] * 2  # steps 1 and 2


def test_a_run_reports_progress_and_a_summary_on_the_console(
    tmp_path: Path, cod: Path, capsys: pytest.CaptureFixture
) -> None:
    train(_config(tmp_path / "run", cod, iters=4, log_every=2, progress=True))
    err = capsys.readouterr().err.splitlines()  # not a terminal: plain lines, no bar
    steps = [line for line in err if line.startswith("train step")]
    assert [line.split()[2] for line in steps] == ["2/4", "4/4"]
    assert all(" images/s " in line and " ETA " in line for line in steps)
    first, last = (_log(tmp_path / "run")[i]["loss"]["total"] for i in (0, -1))
    assert f"loss {first:.4f}" in steps[0]
    assert err[-1].startswith("train: 4 steps (to step 4/4) in ")
    assert err[-1].endswith(f"loss {first:.4f} -> {last:.4f}")
