"""models.repository: Triton's versioned layout, the flat layout as version 1, atomic publish."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from models.config import ModelCard, make_card
from models.repository import (
    RepositoryError,
    publish_version,
    scan_repository,
    scan_versions,
)


def _model(directory: Path, task: str = "salient", label: str = "x") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    make_card(task, "tiny", version=label).save(directory)
    (directory / "model.onnx").write_bytes(label.encode())
    return directory


def test_flat_layout_reads_as_version_one_beside_numbered_versions(tmp_path: Path) -> None:
    _model(tmp_path / "salient", label="flat")
    _model(tmp_path / "salient" / "3", label="three")
    _model(tmp_path / "cod" / "2", task="camouflage", label="cod-two")
    versions = scan_versions(tmp_path)
    assert {t: [(e.version, e.card.version) for e in v] for t, v in versions.items()} == {
        "camouflage": [(2, "cod-two")],
        "salient": [(1, "flat"), (3, "three")],
    }
    chosen = scan_repository(tmp_path)
    assert (chosen["salient"].version, chosen["salient"].directory) == (3, tmp_path / "salient/3")
    pinned = scan_repository(tmp_path, pinned={"sod": 1})
    assert pinned["salient"].directory == tmp_path / "salient"


def test_pinning_a_missing_version_names_the_ones_there(tmp_path: Path) -> None:
    _model(tmp_path / "salient" / "1")
    _model(tmp_path / "salient" / "2")
    with pytest.raises(
        RepositoryError, match=r"salient: pinned version 7 is not in .* \(has 1, 2\)"
    ):
        scan_repository(tmp_path, pinned={"salient": 7})
    with pytest.raises(RepositoryError, match="pinned tasks without any model in .*: shadow"):
        scan_repository(tmp_path, pinned={"shadow": 1})


def test_odd_version_directories_are_skipped_and_wrong_tasks_refused(tmp_path, caplog) -> None:
    _model(tmp_path / "salient" / "1")
    _model(tmp_path / "salient" / "01")  # not a canonical number
    _model(tmp_path / "salient" / "latest")
    _model(tmp_path / "salient" / ".staging-abc")  # a publisher's, silently
    assert [e.version for e in scan_versions(tmp_path)["salient"]] == [1]
    assert "01: not a version number" in caplog.text and "latest: not a version" in caplog.text
    assert ".staging" not in caplog.text
    _model(tmp_path / "salient" / "2", task="shadow")
    with pytest.raises(RepositoryError, match=r"salient/2/focus.json is for task 'shadow'"):
        scan_versions(tmp_path)


def test_variants_are_listed_after_the_primary_artefacts(tmp_path: Path) -> None:
    d = _model(tmp_path / "salient" / "1")
    (d / "model.int8.onnx").write_bytes(b"q")
    (d / "model.safetensors").write_bytes(b"w")
    entry = scan_repository(tmp_path)["salient"]
    assert entry.artefacts == ("model.onnx", "model.safetensors", "model.int8.onnx")


def test_publish_takes_the_next_version_and_leaves_the_source(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _model(repo / "salient", label="flat")  # version 1
    source = _model(tmp_path / "new", label="new")
    entry = publish_version(repo, source)
    assert (entry.version, entry.directory) == (2, repo / "salient" / "2")
    assert (repo / "salient" / "2" / "model.onnx").read_bytes() == b"new"
    assert (source / "model.onnx").is_file()  # copied, not moved
    assert publish_version(repo, source).version == 3
    assert sorted(p.name for p in (repo / "salient").iterdir()) == [
        "2",
        "3",
        "focus.json",
        "model.onnx",
    ]
    assert oct((repo / "salient" / "3").stat().st_mode & 0o777) == "0o755"


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    sources = [_model(tmp_path / f"s{i}", label=str(i)) for i in range(6)]
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda s=s: results.append(publish_version(repo, s).version))
        for s in sources
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [1, 2, 3, 4, 5, 6]
    labels = {ModelCard.load(repo / "salient" / str(v)).version for v in results}
    assert labels == {str(i) for i in range(6)}


def test_a_failed_publish_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    _model(repo / "salient" / "1")
    source = _model(tmp_path / "new")
    real_replace = os.replace

    def fail_on_version_dir(src, dst, *args, **kwargs):
        if Path(dst).name == "2":
            raise OSError("disk full")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", fail_on_version_dir)
    with pytest.raises(OSError, match="disk full"):
        publish_version(repo, source)
    monkeypatch.undo()
    assert sorted(p.name for p in (repo / "salient").iterdir()) == ["1"]


def test_publish_refuses_a_source_for_another_task_or_without_artefacts(tmp_path: Path) -> None:
    source = _model(tmp_path / "src", task="shadow")
    with pytest.raises(RepositoryError, match="is for task 'shadow', not 'salient'"):
        publish_version(tmp_path / "repo", source, task="sod")
    (source / "model.onnx").unlink()
    with pytest.raises(RepositoryError, match="none of model.engine, model.onnx"):
        publish_version(tmp_path / "repo", source)
    assert not (tmp_path / "repo" / "shadow").exists() or not any(
        (tmp_path / "repo" / "shadow").iterdir()
    )


def test_schema_one_cards_still_read(tmp_path: Path) -> None:
    card = make_card("salient", "tiny")
    data = card.to_dict()
    data["schema_version"] = 1
    data["config"] = card.config.to_dict()  # schema 1 repeated the geometry in config
    (tmp_path / "focus.json").write_text(json.dumps(data))
    assert ModelCard.load(tmp_path) == card
