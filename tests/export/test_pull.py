"""``focus pull`` without the Hub: an offline Hugging Face cache and a loopback Hub.

Where each runs:
* default run -- the zoo table and ``--list``; the whole path (resolve, download, verify, strict
  import, ONNX export + parity, publish, served by the service) on a released-layout ``tiny``
  checkpoint in an offline cache, through a real ``focus serve`` with ``FOCUS_PULL`` (the
  ``served_pull`` fixture, shared with tests/service/test_service_pull.py: one ONNX trace); a
  second pull that finds the version present; over the loopback Hub: a cut download that resumes
  with a ``Range`` request, a corrupted file refused by its sha256, a checkpoint refused by the
  strict import, a wrong file name answered with the files the repository has.
* ``-m slow`` -- the same path on a synthesized FOCUS-L checkpoint (2.1 GB, names and shapes of
  the reference TSV): about 3 minutes and 8 GB of memory on two cores.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hub_testing import (
    COMMIT,
    ROOT,
    SHARED,
    TINY_FILE,
    TINY_REPO,
    TINY_SEED,
    HubFile,
    HubRepo,
    LoopbackHub,
    lay_out_cache,
    official_checkpoint,
    png_bytes,
    pull_env,
    sha256_file,
)

from models.config import ModelCard
from models.contract import CARD_FILE, ONNX_FILE, PIPELINE_REPORT_FILE, WEIGHTS_FILE
from models.zoo import DOWNLOAD_BYTES, SERVED_BYTES, all_releases

pytest.importorskip("huggingface_hub")
FROM = ["camouflage", "--size", "tiny", "--from", f"{TINY_REPO}/{TINY_FILE}"]


def focus(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "focus_cli", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def tree(root: Path) -> list[str]:
    """Every path under ``root``, hidden ones included (a failed pull must leave none)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    return official_checkpoint(tmp_path_factory.mktemp("pth") / TINY_FILE, "tiny", seed=TINY_SEED)


@pytest.fixture()
def demo_repository(tmp_path: Path) -> Path:
    import shutil

    repository = tmp_path / "repository"
    shutil.copytree(ROOT / "model_repository" / "camouflage", repository / "camouflage")
    return repository


# ----------------------------------------------------------------------------- the zoo


def test_every_release_is_named_after_the_reference_repositories() -> None:
    names = [(s.task, s.size, s.repo_id, s.filename) for s in all_releases()]
    expected = [
        (task, size, f"geshang/focus_{size}_{alias}", f"focus_{size}_{alias}.pth")
        for task, alias in (
            ("salient", "sod"),
            ("camouflage", "cod"),
            ("shadow", "sd"),
            ("defocus", "dbd"),
            ("forgery", "fd"),
        )  # fmt: skip
        for size in ("large", "giant")
    ]
    assert names == expected


@pytest.mark.parametrize("size", ["large", "giant"])
def test_served_bytes_are_the_reference_network_without_the_clip_refiner(size: str) -> None:
    path = SHARED / f"official_focus_dinov2_{size}_state_dict.tsv"
    if not path.exists():
        pytest.skip(f"{path} not found (../shared is not beside this checkout)")
    total = 0
    for line in path.read_text().splitlines()[1:]:
        name, shape, dtype = line.split("\t")
        if (
            dtype == "torch.float32"
            and "clip_refiner" not in name
            and name != "criterion.empty_weight"
        ):
            total += 4 * math.prod(int(s) for s in shape.split("x"))
    assert SERVED_BYTES[size] == total
    assert DOWNLOAD_BYTES[size] > total  # the released file also holds the training state


def test_list_shows_every_release_with_its_costs() -> None:
    result = focus("pull", "--list", env=pull_env(Path("/nonexistent")))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "task",
        "size",
        "Hugging",
        "Face",
        "file",
        "download",
        "served",
        "fp32",
    ]
    assert len(lines) == 1 + 10 + 1
    assert lines[3].split() == [
        "camouflage", "large", "geshang/focus_large_cod/focus_large_cod.pth", "5.11", "GB",
        "1.50", "GB",
    ]  # fmt: skip
    assert lines[4].split()[:3] == [
        "camouflage",
        "giant",
        "geshang/focus_giant_cod/focus_giant_cod.pth",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "error: unknown task 'nope'; available: salient, camouflage, shadow, "
                   "defocus, forgery"),
        (["cod", "--size", "tiny"], "error: no released FOCUS checkpoint of size 'tiny'; "
                                    "released sizes: large, giant"),
        (["cod", "--size", "tiny", "--from", "a/b"], "error: 'a/b' is not OWNER/NAME/FILE"),
        ([], "error: focus pull needs a TASK (or --list)"),
    ],
)  # fmt: skip
def test_bad_arguments_exit_2_with_the_reason(args: list[str], message: str) -> None:
    result = focus("pull", *args, env=pull_env(Path("/nonexistent")))
    assert result.returncode == 2
    assert result.stderr.startswith(message), result.stderr


def test_pull_without_torch_exits_3_and_says_what_to_install(tmp_path: Path) -> None:
    blocker = tmp_path / "sitecustomize.py"  # this interpreter, as if torch were not installed
    blocker.write_text(
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    env = pull_env(tmp_path / "hf", PYTHONPATH=str(tmp_path))
    result = focus("pull", "cod", env=env)
    assert result.returncode == 3
    assert result.stderr == (
        "error: focus pull needs torch, which this installation lacks; install the train extra "
        "(pip install 'focus-serve[train]') or use the cpu-pull image\n"
    )


# ----------------------------------------------------------------------------- offline cache


def test_pull_publishes_a_new_version_recording_where_it_came_from(served_pull) -> None:
    repo = served_pull.repository
    demo = ROOT / "model_repository" / "camouflage"
    for name in (CARD_FILE, ONNX_FILE, WEIGHTS_FILE):  # the demo model (flat = version 1)
        assert (repo / "camouflage" / name).read_bytes() == (demo / name).read_bytes()
    assert tree(repo / "camouflage") == sorted(
        [CARD_FILE, ONNX_FILE, PIPELINE_REPORT_FILE, WEIGHTS_FILE, "2"]
        + [f"2/{n}" for n in (CARD_FILE, ONNX_FILE, PIPELINE_REPORT_FILE)]
    )
    assert tree(repo) == ["camouflage", *(f"camouflage/{p}" for p in tree(repo / "camouflage"))]
    card = ModelCard.load(repo / "camouflage" / "2")
    hub = card.provenance["hub"]
    assert (card.task, card.preset, card.version) == (
        "camouflage",
        "tiny",
        f"focus_tiny_cod@{COMMIT[:12]}",
    )
    assert {k: v for k, v in hub.items() if k != "pulled_at"} == {
        "repo_id": TINY_REPO,
        "filename": TINY_FILE,
        "requested_revision": "main",
        "revision": COMMIT,
        "sha256": sha256_file(served_pull.checkpoint),
        "bytes": served_pull.checkpoint.stat().st_size,
        "endpoint": "https://huggingface.co",
        "released": False,
    }
    assert card.provenance["imported_from"] == TINY_FILE
    report = json.loads((repo / "camouflage" / "2" / PIPELINE_REPORT_FILE).read_text())
    assert [(s["name"], s["status"]) for s in report["steps"]] == [
        ("resolve", "ok"), ("download", "ok"), ("verify", "ok"), ("import", "ok"),
        ("onnx", "ok"), ("variants", "ok"),
    ]  # fmt: skip
    # the variants step gated OpenVINO bf16 against the published fp32 graph (no second copy of
    # the weights: it reads model.onnx), whether or not the gate passed
    (variant,) = card.variants
    assert (variant.runtime, variant.precision, variant.artefact) == ("openvino", "bf16", ONNX_FILE)
    assert variant.gate is not None and variant.gate.images >= 6
    assert variant.recipe["fp32_sha256"] == sha256_file(repo / "camouflage" / "2" / ONNX_FILE)
    assert report["steps"][5]["detail"].startswith("openvino bf16 gate ")
    assert report["hub"] == hub
    text = json.dumps(report)
    assert str(served_pull.hf_home) not in text and str(repo) not in text  # no machine paths


def test_the_published_graph_carries_the_pulled_card(served_pull) -> None:
    import onnx

    version = served_pull.repository / "camouflage" / "2"
    proto = onnx.load(str(version / ONNX_FILE), load_external_data=False)
    meta = {e.key: e.value for e in proto.metadata_props}
    # the variants' gates are measured after the export, so only focus.json carries them
    published = ModelCard.load(version)
    assert published.variants
    assert ModelCard.from_json(meta[CARD_FILE]) == dataclasses.replace(published, variants=())


def test_the_service_serves_the_pulled_weights_and_not_the_demo(served_pull) -> None:
    """The service's mask for the pulled version equals PyTorch on the .pth it came from."""
    import io

    import torch
    from fastapi.testclient import TestClient
    from PIL import Image

    from models.build import build_focus
    from models.config import get_preset
    from models.official import convert_official_state_dict, read_official_file
    from models.predict import predict
    from service.app import create_app
    from service.settings import Settings

    image = png_bytes(90, 120)
    settings = Settings(model_repository=served_pull.repository, intra_op_threads=1)
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/segment/camouflage", content=image, headers={"content-type": "image/png"}
        )
        info = client.get("/tasks").json()
    assert response.status_code == 200, response.text
    served = np.asarray(Image.open(io.BytesIO(response.content)), np.float32) / 255
    model = build_focus(get_preset("tiny")).eval()
    model.load_state_dict(convert_official_state_dict(read_official_file(served_pull.checkpoint)))
    rgb = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
    with torch.no_grad():
        soft, _ = predict(model, ModelCard.load(served_pull.repository / "camouflage" / "2"), rgb)
    assert served.shape == soft.shape == (90, 120)
    assert np.abs(served - soft).max() <= 1 / 255 + 1e-6  # 8-bit PNG quantisation
    assert json.dumps(info).count(f"focus_tiny_cod@{COMMIT[:12]}") == 1


def test_a_second_pull_of_the_same_commit_publishes_nothing(served_pull) -> None:
    before = tree(served_pull.repository)
    env = pull_env(served_pull.hf_home, HF_HUB_OFFLINE="1")
    result = focus("pull", *FROM, "--repository", str(served_pull.repository), env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        f"camouflage: version 2 in {served_pull.repository} already holds "
        f"{TINY_REPO}/{TINY_FILE}@{COMMIT[:12]}; not pulling again (--force does)"
    )
    assert tree(served_pull.repository) == before


def test_offline_without_the_file_in_the_cache_fails_at_resolve(
    tmp_path: Path, demo_repository: Path
) -> None:
    before = tree(demo_repository)
    env = pull_env(tmp_path / "hf", HF_HUB_OFFLINE="1")
    result = focus("pull", "cod", "--repository", str(demo_repository), env=env, timeout=120)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "error: pull step 'resolve' failed: focus_large_cod.pth of geshang/focus_large_cod@main "
        f"is not in the Hugging Face cache {tmp_path / 'hf' / 'hub'} and the Hub cannot be "
        "reached (HF_HUB_OFFLINE is set)"
    )
    assert tree(demo_repository) == before


# ----------------------------------------------------------------------------- loopback hub


def _hub_pull(
    hub: LoopbackHub, tmp_path: Path, repository: Path, *args: str
) -> subprocess.CompletedProcess:
    env = pull_env(tmp_path / "hf", HF_ENDPOINT=hub.endpoint)
    return focus("pull", *FROM, "--repository", str(repository), *args, env=env, timeout=300)


def test_an_interrupted_download_resumes_with_a_range_request(
    tiny_pth: Path, tmp_path: Path, demo_repository: Path
) -> None:
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    data = tiny_pth.read_bytes()
    # the library writes (and so can resume from) whole chunks of DOWNLOAD_CHUNK_SIZE bytes
    cut = DOWNLOAD_CHUNK_SIZE + 123_456
    assert len(data) > cut + 1_000_000
    hub_file = HubFile(data, cut_first_get_at=cut)
    with LoopbackHub({TINY_REPO: HubRepo({TINY_FILE: hub_file})}) as hub:
        result = _hub_pull(hub, tmp_path, demo_repository, "--download-only")
        gets = hub.gets(TINY_FILE)
    assert result.returncode == 0, result.stderr
    assert [g.headers.get("Range") for g in gets] == [None, f"bytes={DOWNLOAD_CHUNK_SIZE}-"]
    assert "Trying to resume download..." in result.stderr
    blob = tmp_path / "hf" / "hub" / "models--test--focus_tiny_cod" / "blobs" / hub_file.etag
    assert blob.read_bytes() == data
    assert result.stdout.splitlines()[-1] == (
        f"downloaded {TINY_REPO}/{TINY_FILE}@{COMMIT} (sha256 {hub_file.etag}); published "
        "nothing (--download-only)"
    )


def test_a_corrupted_download_is_refused_by_its_sha256_and_nothing_is_published(
    tiny_pth: Path, tmp_path: Path, demo_repository: Path
) -> None:
    before = tree(demo_repository)
    hub_file = HubFile(tiny_pth.read_bytes(), corrupt=True)
    with LoopbackHub({TINY_REPO: HubRepo({TINY_FILE: hub_file})}) as hub:
        result = _hub_pull(hub, tmp_path, demo_repository)
        hub_file.corrupt = False  # the Hub serves it right again: --force-download fetches anew
        again = _hub_pull(hub, tmp_path, demo_repository, "--force-download", "--download-only")
    assert result.returncode == 1
    error = result.stderr.splitlines()[-1]
    assert error.startswith("error: pull step 'verify' failed: ")
    assert (
        f"does not match the Hub's {hub_file.etag}: the download is corrupt; nothing was published"
        in error
    )
    assert "[ failed] verify" in result.stdout
    assert tree(demo_repository) == before
    assert again.returncode == 0, again.stderr


def test_a_checkpoint_the_network_does_not_match_is_refused_by_the_strict_import(
    tmp_path: Path, demo_repository: Path
) -> None:
    pytest.importorskip("torch")
    missing = "sem_seg_head.predictor.class_embed.weight"
    broken = official_checkpoint(tmp_path / "broken.pth", "tiny", seed=TINY_SEED, drop=missing)
    before = tree(demo_repository)
    with LoopbackHub({TINY_REPO: HubRepo({TINY_FILE: HubFile(broken.read_bytes())})}) as hub:
        result = _hub_pull(hub, tmp_path, demo_repository)
    assert result.returncode == 1
    error = result.stderr.splitlines()[-1]
    assert error.startswith("error: pull step 'import' failed: WeightsMismatchError: ")
    assert f"1 missing ['{missing}'], 0 unexpected [], 0 mis-shaped []" in error
    assert tree(demo_repository) == before


def test_a_wrong_file_name_lists_the_files_the_repository_has(
    tmp_path: Path, demo_repository: Path
) -> None:
    files = {"README.md": HubFile(b"# focus\n"), "model_final.pth": HubFile(b"not this one")}
    with LoopbackHub({TINY_REPO: HubRepo(files)}) as hub:
        result = _hub_pull(hub, tmp_path, demo_repository)
        endpoint = hub.endpoint
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: pull step 'resolve' failed: {TINY_REPO}@main on {endpoint} has no file "
        f"'{TINY_FILE}'; it has: README.md, model_final.pth"
    )


@pytest.mark.parametrize(
    ("repos", "args", "message"),
    [
        ({}, [], "no model repository test/focus_tiny_cod on {endpoint} (or it is private: "
                 "set HF_TOKEN)"),
        ("files", ["--revision", "v9"], "test/focus_tiny_cod has no revision 'v9' on {endpoint}"),
    ],
)  # fmt: skip
def test_an_unknown_repository_or_revision_says_which(
    repos: object, args: list[str], message: str, tmp_path: Path, demo_repository: Path
) -> None:
    hub_repos = {TINY_REPO: HubRepo({TINY_FILE: HubFile(b"x")})} if repos == "files" else {}
    with LoopbackHub(hub_repos) as hub:
        result = _hub_pull(hub, tmp_path, demo_repository, *args)
        endpoint = hub.endpoint
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "error: pull step 'resolve' failed: " + message.format(endpoint=endpoint)
    )


# ----------------------------------------------------------------------------- FOCUS-L


@pytest.mark.slow
def test_pull_focus_large_from_an_offline_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The released FOCUS-L layout (reference TSV names and shapes), 2.1 GB: the whole path."""
    pytest.importorskip("torch")
    if not (SHARED / "official_focus_dinov2_large_state_dict.tsv").exists():
        pytest.skip("../shared/reference is not beside this checkout")
    root = tmp_path_factory.mktemp("large")
    pth = official_checkpoint(root / "focus_large_cod.pth", "large", seed=0)
    lay_out_cache(root / "hf" / "hub", "geshang/focus_large_cod", "focus_large_cod.pth", pth)
    env = pull_env(root / "hf", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    result = focus("pull", "camouflage", "--repository", str(root / "repo"), env=env, timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr
    card = ModelCard.load(root / "repo" / "camouflage" / "1")
    assert (card.preset, card.provenance["hub"]["sha256"]) == ("large", sha256_file(pth))
    assert card.provenance["hub"]["released"] is True
    onnx_bytes = (root / "repo" / "camouflage" / "1" / ONNX_FILE).stat().st_size
    assert abs(onnx_bytes - SERVED_BYTES["large"]) < 0.02 * SERVED_BYTES["large"]


def test_a_pull_stopped_by_sigterm_leaves_no_trace_in_the_repository(
    tiny_pth: Path, tmp_path: Path, demo_repository: Path
) -> None:
    """What the service does to a pull in progress when it stops (service/pull.py)."""
    import signal

    before = tree(demo_repository)
    lay_out_cache(tmp_path / "hf" / "hub", TINY_REPO, TINY_FILE, tiny_pth)
    env = pull_env(tmp_path / "hf", HF_HUB_OFFLINE="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "focus_cli", "pull", *FROM, "--repository", str(demo_repository)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:  # the export (minutes) starts right after the import
            lines.append(line)
            if line.startswith("[     ok] import"):
                break
        assert any(p.name.startswith(".pull-") for p in demo_repository.iterdir()), lines
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM
    assert tree(demo_repository) == before
