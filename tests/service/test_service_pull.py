"""``FOCUS_PULL`` / ``FOCUS_REQUIRE_PULL``: released checkpoints pulled at start-up.

The settings and the "already pulled" rule run torch-free here. The start-up paths run a real
``focus serve`` subprocess whose ``focus pull`` subprocesses are real too: a pull that fails
(nothing in an offline cache) either stops start-up (required) or leaves the demo model serving;
and, through the session's ``served_pull`` fixture (tests/hub_testing.py), a pull that succeeds
while the demo model answers.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from hub_testing import ROOT, TINY_FILE, TINY_REPO, TINY_SPEC, png_bytes, pull_env
from pydantic import ValidationError

from models.config import ModelCard
from models.zoo import parse_sources
from service.pull import PullOutcome, missing, pull_command
from service.settings import Settings

DEMO = ROOT / "model_repository" / "camouflage"


# ----------------------------------------------------------------------------- settings


def test_focus_pull_parses_tasks_sizes_revisions_and_hub_files() -> None:
    settings = Settings(pull=" cod, salient:giant@v1.0, shadow:tiny=me/focus-sd/ckpt/m.pth ")
    assert [(s.task, s.size, s.repo_id, s.filename, s.revision) for s in settings.pull_sources] == [
        ("camouflage", "large", "geshang/focus_large_cod", "focus_large_cod.pth", "main"),
        ("salient", "giant", "geshang/focus_giant_sod", "focus_giant_sod.pth", "v1.0"),
        ("shadow", "tiny", "me/focus-sd", "ckpt/m.pth", "main"),
    ]
    assert [s.spec for s in settings.pull_sources] == [
        "camouflage:large", "salient:giant@v1.0", "shadow:tiny=me/focus-sd/ckpt/m.pth",
    ]  # fmt: skip
    assert Settings().pull_sources == ()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"pull": "nope"}, "'nope': unknown task 'nope'; available: salient, camouflage, shadow, "
                           "defocus, forgery"),
        ({"pull": "cod:huge"}, "'cod:huge': no released FOCUS checkpoint of size 'huge'; released "
                               "sizes: large, giant"),
        ({"pull": "cod,camouflage:giant"},
         "task 'camouflage' is named twice ('camouflage:large' and 'camouflage:giant'); a task "
         "serves one pulled model"),
        ({"pull": "cod@"}, "'cod@': empty revision after '@'"),
        ({"pull": "cod:nano=a/b/c"}, "'cod:nano=a/b/c': unknown preset 'nano'; available: tiny, "
                                     "small, base, large, giant"),
        ({"require_pull": True}, "FOCUS_REQUIRE_PULL=true needs FOCUS_PULL (what to pull)"),
    ],
)  # fmt: skip
def test_invalid_focus_pull_is_refused_with_the_reason(env: dict, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**env)
    assert message in str(info.value)


def test_pull_command_is_focus_pull_with_this_interpreter(tmp_path: Path) -> None:
    (released, hub_file) = parse_sources(f"salient:giant@abc,{TINY_SPEC}")
    assert pull_command(released, tmp_path) == [
        sys.executable, "-m", "focus_cli", "--log-level", "warning", "pull", "salient",
        "--size", "giant", "--revision", "abc", "--repository", str(tmp_path),
    ]  # fmt: skip
    assert pull_command(hub_file, tmp_path)[6:] == [
        "camouflage", "--size", "tiny", "--revision", "main", "--repository", str(tmp_path),
        "--from", f"{TINY_REPO}/{TINY_FILE}",
    ]  # fmt: skip


def _pulled_version(repo: Path, version: int, hub: dict) -> None:
    directory = repo / "camouflage" / str(version)
    directory.mkdir(parents=True)
    dataclasses.replace(ModelCard.load(DEMO), provenance={"hub": hub}).save(directory)
    (directory / "model.onnx").write_bytes((DEMO / "model.onnx").read_bytes())


def test_a_task_already_pulled_from_that_file_is_not_pulled_again(tmp_path: Path) -> None:
    commit = "a" * 40
    hub = {"repo_id": TINY_REPO, "filename": TINY_FILE, "revision": commit}
    _pulled_version(tmp_path, 2, hub)
    sources = parse_sources(f"{TINY_SPEC},salient:large")
    assert [s.task for s in missing(sources, tmp_path)] == ["salient"]  # any revision counts
    pinned = parse_sources(f"{TINY_SPEC}@{'b' * 40}")  # another commit: pull it
    assert missing(pinned, tmp_path) == list(pinned)
    assert missing(parse_sources(f"{TINY_SPEC}@{commit}"), tmp_path) == []
    other_preset = parse_sources(f"camouflage:base={TINY_REPO}/{TINY_FILE}")
    assert missing(other_preset, tmp_path) == list(other_preset)
    assert missing(sources, tmp_path / "absent") == list(sources)


def test_a_pull_outcome_names_the_failed_step_or_the_missing_tooling() -> None:
    (source,) = parse_sources("cod")
    failed = PullOutcome(source, 1, ("[ failed] verify ...", "error: pull step 'verify' failed: x"))
    assert failed.describe() == (
        "camouflage:large: focus pull exited 1: error: pull step 'verify' failed: x"
    )
    assert PullOutcome(source, 3, ("error: focus pull needs torch",)).describe() == (
        "camouflage:large: focus pull is not available in this image (it needs torch and "
        "huggingface_hub: the train extra, or the cpu-pull image)"
    )


# ----------------------------------------------------------------------------- start-up


def _serve(tmp_path: Path, **env: str) -> tuple[subprocess.Popen, str, Path]:
    import shutil
    import socket

    repository = tmp_path / "repository"
    shutil.copytree(DEMO, repository / "camouflage")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    full_env = pull_env(
        tmp_path / "hf",
        HF_HUB_OFFLINE="1",
        FOCUS_MODEL_REPOSITORY=str(repository),
        FOCUS_INTRA_OP_THREADS="1",
        **env,
    )
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "focus_cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=full_env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    return process, f"http://127.0.0.1:{port}", log


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_a_required_pull_that_fails_stops_start_up_naming_the_step(tmp_path: Path) -> None:
    process, base, log = _serve(tmp_path, FOCUS_PULL="cod", FOCUS_REQUIRE_PULL="true")
    try:
        process.wait(timeout=300)
    finally:
        _stop(process)
    text = log.read_text()
    assert process.returncode not in (0, None)
    assert (
        "FOCUS_REQUIRE_PULL=true and camouflage:large: focus pull exited 1: error: pull step "
        "'resolve' failed: focus_large_cod.pth of geshang/focus_large_cod@main is not in the "
        "Hugging Face cache"
    ) in text
    assert "Application startup failed" in text
    assert "Uvicorn running" not in text  # it never listened
    assert sorted(p.name for p in (tmp_path / "repository" / "camouflage").iterdir()) == sorted(
        p.name for p in DEMO.iterdir()
    )


def test_a_background_pull_that_fails_leaves_the_demo_model_serving(tmp_path: Path) -> None:
    process, base, log = _serve(tmp_path, FOCUS_PULL="cod")
    try:
        deadline = time.monotonic() + 300
        while "pull of" not in log.read_text() and "focus pull exited" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        response = httpx.post(
            f"{base}/segment/camouflage?format=json",
            content=png_bytes(60, 80),
            headers={"content-type": "image/png"},
            timeout=60,
        )
        assert process.poll() is None  # still serving
    finally:
        _stop(process)
    assert response.status_code == 200
    assert response.json()["model"]["version"] == ModelCard.load(DEMO).version
    text = log.read_text()
    assert (
        "camouflage:large: focus pull exited 1: error: pull step 'resolve' failed: "
        "focus_large_cod.pth of geshang/focus_large_cod@main is not in the Hugging Face cache"
    ) in text
    assert "; camouflage keeps the model it has" in text


def test_focus_pull_at_start_up_serves_the_demo_model_while_it_pulls(served_pull) -> None:
    assert served_pull.first["model"]["version"] == served_pull.demo_version
    assert served_pull.published_during_first is False
    log = served_pull.log
    for step in ("resolve", "download", "verify", "import", "onnx", "variants"):
        assert f"pull camouflage: [     ok] {step}" in log, log
    assert (
        f"pull camouflage: published camouflage version 2 at {served_pull.repository}/camouflage/2"
        in log
    )
    assert f"camouflage: pull of {TINY_SPEC} done" in log
    assert log.index("Uvicorn running") < log.index("[     ok] onnx")


def test_focus_pull_at_start_up_then_serves_the_pulled_version_without_a_restart(
    served_pull,
) -> None:
    if not served_pull.reloads:
        pytest.skip(
            "this build's ServiceState has no reload(): the pulled version is published (see "
            "the test above) but served only from the next start"
        )
    pulled = json.loads((served_pull.repository / "camouflage" / "2" / "focus.json").read_text())
    assert served_pull.later is not None
    assert served_pull.later["model"]["version"] == pulled["version"] != served_pull.demo_version
    assert "Application startup complete" in served_pull.log
    assert served_pull.log.count("Application startup complete") == 1  # no restart


# ----------------------------------------------------------------------------- entrypoint


def _entrypoint(tmp_path: Path, pull: str | None) -> tuple[Path, str, list[str]]:
    """deploy/entrypoint.sh with a stand-in `focus` that records its calls, no GPU."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    (bin_dir / "focus").write_text(f'#!/usr/bin/env bash\necho "focus $*" >> {calls}\n')
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\nexit 6\n")
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    demo = tmp_path / "demo"
    for task in ("camouflage", "salient"):
        (demo / task).mkdir(parents=True)
        (demo / task / "focus.json").write_text(f'{{"demo": "{task}"}}')
    volume = tmp_path / "volume"
    (volume / "salient" / "3").mkdir(parents=True)  # a pulled salient model is already there
    (volume / "salient" / "3" / "focus.json").write_text('{"pulled": true}')
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "FOCUS_MODEL_REPOSITORY": str(volume),
        "DEMO_REPOSITORY": str(demo),
        "FOCUS_BACKEND": "onnxruntime",
    }
    if pull is not None:
        env["FOCUS_PULL"] = pull
    result = subprocess.run(
        ["bash", str(ROOT / "deploy" / "entrypoint.sh"), "serve"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return volume, result.stderr, calls.read_text().splitlines()


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()}


def test_entrypoint_seeds_the_pull_volume_with_the_demo_models_it_lacks(tmp_path: Path) -> None:
    volume, stderr, calls = _entrypoint(tmp_path, "camouflage:large,salient:large")
    assert _files(volume) == {
        "camouflage/focus.json": '{"demo": "camouflage"}',
        "salient/3/focus.json": '{"pulled": true}',  # untouched, and no demo copied beside it
    }
    assert f"camouflage: demo model copied into {volume}; it serves until the pull" in stderr
    assert stderr.count("demo model copied") == 1
    assert calls == ["focus serve"]


def test_entrypoint_leaves_the_repository_alone_without_focus_pull(tmp_path: Path) -> None:
    volume, stderr, calls = _entrypoint(tmp_path, None)
    assert _files(volume) == {"salient/3/focus.json": '{"pulled": true}'}
    assert "demo model" not in stderr
    assert calls == ["focus serve"]
