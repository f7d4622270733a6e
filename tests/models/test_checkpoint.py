"""Checkpoint directory round trip and the official (detectron2) import."""

import dataclasses
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from focus_cli import main as focus_main
from models.build import build_focus
from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, weights_version
from models.config import ModelCard, make_card
from models.official import DROPPED_KEYS, convert_official_state_dict, import_official


def _inputs():
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 3, 64, 96, generator=g), torch.rand(2, 3, 64, 96, generator=g)


def _randomised(model):
    """Every tensor distinct and non-trivial, so a misplaced tensor changes the output."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                t.copy_(
                    torch.randn(t.shape, generator=g) * 0.05
                    + (1.0 if name.endswith("running_var") else 0.0)
                )
                if name.endswith("running_var"):
                    t.abs_()
    return model


def test_save_load_round_trip_is_bit_identical(tmp_path, tiny_config):
    model = _randomised(build_focus(tiny_config)).eval()
    card = make_card("cod", "tiny", tiny_config, provenance={"test": True})
    save_checkpoint(model, card, tmp_path / "ckpt")
    loaded, loaded_card = load_checkpoint(tmp_path / "ckpt")
    # an unversioned card is stamped with the date and a hash of the weights
    assert loaded_card == dataclasses.replace(card, version=weights_version(model.state_dict()))
    with torch.no_grad():
        before = model(*_inputs())
        after = loaded(*_inputs())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    meta = json.loads((tmp_path / "ckpt" / "focus.json").read_text())
    assert meta["task"] == "camouflage" and meta["input"]["short_side"] == 256


def test_save_replaces_an_existing_checkpoint(tmp_path, tiny_no_clip_config):
    card = make_card("sod", "tiny", tiny_no_clip_config)
    target = tmp_path / "ckpt"
    save_checkpoint(build_focus(tiny_no_clip_config), card, target)
    first = (target / "model.safetensors").read_bytes()
    torch.manual_seed(1)
    save_checkpoint(build_focus(tiny_no_clip_config), card, target)
    assert sorted(p.name for p in target.iterdir()) == ["focus.json", "model.safetensors"]
    assert (target / "model.safetensors").read_bytes() != first
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary leftovers


def test_a_failed_save_leaves_the_old_checkpoint_whole(tmp_path, tiny_no_clip_config, monkeypatch):
    import models.checkpoint as checkpoint

    card = make_card("sod", "tiny", tiny_no_clip_config)
    target = tmp_path / "ckpt"
    save_checkpoint(build_focus(tiny_no_clip_config), card, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def half_written(state, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"\0" * 1000)  # a partial file, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", half_written)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(build_focus(tiny_no_clip_config), card, target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    load_checkpoint(target)  # still loads


@pytest.mark.parametrize(
    ("umask", "dir_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)]
)
def test_saved_checkpoint_permissions_follow_the_umask(
    tmp_path, tiny_no_clip_config, umask, dir_mode, file_mode
):
    """mkdtemp makes 0700 directories; a service running as another user must read ours."""
    previous = os.umask(umask)
    try:
        target = save_checkpoint(
            build_focus(tiny_no_clip_config),
            make_card("sod", "tiny", tiny_no_clip_config),
            tmp_path / "ckpt",
        )
    finally:
        os.umask(previous)
    assert target.stat().st_mode & 0o777 == dir_mode
    assert {p.name: p.stat().st_mode & 0o777 for p in target.iterdir()} == {
        "focus.json": file_mode,
        "model.safetensors": file_mode,
    }


def test_load_names_every_missing_and_unexpected_key(tmp_path, tiny_no_clip_config):
    card = make_card("sod", "tiny", tiny_no_clip_config)
    save_checkpoint(build_focus(tiny_no_clip_config), card, tmp_path / "ckpt")
    state = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    del state["backbone.cls_token"]
    state["backbone.bogus"] = torch.zeros(1)
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "ckpt" / "model.safetensors"))
    with pytest.raises(
        CheckpointError,
        match=r"1 missing \['backbone.cls_token'\].*1 unexpected \['backbone.bogus'\]",
    ):
        load_checkpoint(tmp_path / "ckpt")


def _official_file(tmp_path, model):
    """A detectron2-layout file: {'model': state_dict} with the loss weight and a DDP prefix."""
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    state["criterion.empty_weight"] = torch.tensor([1.0, 1.0, 0.1])
    path = tmp_path / "model_final.pth"
    torch.save({"model": state, "iteration": 19999}, path)
    return path


def test_official_import_puts_every_tensor_where_it_belongs(tmp_path, tiny_config):
    source = _randomised(build_focus(tiny_config)).eval()
    path = _official_file(tmp_path, source)
    assert (
        focus_main(
            [
                "import-official",
                "--weights",
                str(path),
                "--task",
                "cod",
                "--preset",
                "tiny",
                "--out",
                str(tmp_path / "imported"),
            ]
        )
        == 0
    )
    imported, card = load_checkpoint(tmp_path / "imported")
    assert card.task == "camouflage" and card.provenance["imported_from"] == "model_final.pth"
    src_state, dst_state = source.state_dict(), imported.state_dict()
    assert set(src_state) == set(dst_state)
    assert all(torch.equal(src_state[k], dst_state[k]) for k in src_state)
    with torch.no_grad():
        assert all(
            torch.equal(a, b) for a, b in zip(source(*_inputs()), imported(*_inputs()), strict=True)
        )


def test_official_import_is_strict_and_lists_the_keys(tmp_path, tiny_config, capsys):
    model = build_focus(tiny_config)
    state = model.state_dict()
    state.pop("sem_seg_head.predictor.class_embed.bias")
    state["sem_seg_head.predictor.extra"] = torch.zeros(2)
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match="class_embed.bias.*unexpected.*predictor.extra"):
        import_official(path, "cod", "tiny", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    rc = focus_main(
        [
            "import-official",
            "--weights",
            str(path),
            "--task",
            "cod",
            "--preset",
            "tiny",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 1 and "class_embed.bias" in capsys.readouterr().err


def test_official_import_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save(
        {"model": {"a": torch.zeros(1)}, "cfg": ModelCard}, path
    )  # a class: needs unpickling
    with pytest.raises(CheckpointError, match="weights_only"):
        import_official(path, "cod", "tiny", tmp_path / "out")


def test_convert_drops_only_the_documented_keys():
    state = {"module.backbone.cls_token": torch.zeros(1), "criterion.empty_weight": torch.ones(3)}
    assert list(convert_official_state_dict(state)) == ["backbone.cls_token"]
    assert DROPPED_KEYS == ("criterion.empty_weight",)
