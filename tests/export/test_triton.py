"""focus export triton: every generated config.pbtxt parses as Triton's own ModelConfig
(tritonclient's model_config_pb2), the ensemble's wiring is what Triton checks at load time,
and the files land where Triton looks. Artefact contents are opaque to the writer, so small
stand-in files do; tests/export/test_triton_server.py serves a real model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from test_layering import _imports, _torch_chain
from triton_config_proto import DataType, Kind, parse

from export.triton import TritonOptions, config_pbtxt, write_triton_repository
from export.triton_ensemble import SOURCES, ensemble_names, preprocess_config
from focus_cli import main
from models.config import make_card

ROOT = Path(__file__).resolve().parents[2]
FP32, INT32, STRING = (DataType.Value(f"TYPE_{t}") for t in ("FP32", "INT32", "STRING"))
PYTHON_PATH = ("/opt/focus-deps", "/opt/focus")


def _repository(root: Path, tasks: dict[str, tuple[str, ...]], version: str = "") -> Path:
    for task, files in tasks.items():
        directory = root / task / version if version else root / task
        directory.mkdir(parents=True)
        make_card(task, "tiny", version="7").save(directory)
        for name in files:
            (directory / name).write_bytes(f"{task}:{version}:{name}".encode())
    return root


def _io(config) -> tuple[dict, dict]:
    inputs = {t.name: (t.data_type, list(t.dims)) for t in config.input}
    outputs = {t.name: (t.data_type, list(t.dims)) for t in config.output}
    return inputs, outputs


def _configs(out: Path) -> dict:
    return {d.name: parse((d / "config.pbtxt").read_text()) for d in out.iterdir() if d.is_dir()}


def _check_ensemble(configs: dict, name: str) -> list[tuple[str, int]]:
    """What Triton verifies when it loads an ensemble, from the parsed configs alone.

    Every step's inputs are exactly its model's inputs and come from the ensemble's inputs or
    an earlier step's outputs with the same data type and dims; its outputs are its model's;
    the ensemble's outputs are produced with their declared type and dims. Returns the steps.
    """
    ensemble = configs[name]
    assert ensemble.platform == "ensemble"
    available = {t.name: (t.data_type, list(t.dims)) for t in ensemble.input}
    steps = []
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        assert ensemble.max_batch_size <= model.max_batch_size
        inputs, outputs = _io(model)
        assert sorted(step.input_map) == sorted(inputs), step.model_name
        for key, tensor in step.input_map.items():
            assert available[tensor] == inputs[key], (step.model_name, key)
        assert sorted(step.output_map) == sorted(outputs), step.model_name
        for key, tensor in step.output_map.items():
            assert tensor not in available, f"{tensor} produced twice"
            available[tensor] = outputs[key]
        steps.append((step.model_name, step.model_version))
    for t in ensemble.output:
        assert available[t.name] == (t.data_type, list(t.dims))
    return steps


def test_onnx_repository_has_the_network_and_the_ensemble_per_task(tmp_path: Path) -> None:
    src = _repository(
        tmp_path / "repo",
        {"salient": ("model.onnx",), "camouflage": ("model.onnx", "model.safetensors")},
    )
    (src / "not-a-task").mkdir()
    out = tmp_path / "triton"
    written = write_triton_repository(src, out, TritonOptions(python_path=PYTHON_PATH))
    expected = [
        f"{task}{suffix}"
        for task in ("camouflage", "salient")
        for suffix in ("", "_preprocess", "_postprocess", "_ensemble")
    ]
    assert [p.name for p in written] == expected
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    configs = _configs(out)
    for task in ("camouflage", "salient"):
        model_dir = out / task
        assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt", "focus.json"]
        assert [p.name for p in (model_dir / "1").iterdir()] == ["model.onnx"]
        assert (model_dir / "1" / "model.onnx").read_bytes() == f"{task}::model.onnx".encode()
        assert json.loads((model_dir / "focus.json").read_text())["task"] == task
        config = configs[task]
        assert config.name == task
        assert (config.platform, config.backend) == ("onnxruntime_onnx", "")
        assert config.max_batch_size == 8
        assert config.default_model_filename == "model.onnx"
        inputs, outputs = _io(config)
        assert inputs == {"image": (FP32, [3, -1, -1]), "edges": (FP32, [3, -1, -1])}
        assert outputs == {"class_probs": (FP32, [2, 2]), "mask_logits": (FP32, [2, -1, -1])}
        assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8]
        assert config.dynamic_batching.max_queue_delay_microseconds == 2000
        assert [(g.count, g.kind) for g in config.instance_group] == [(1, Kind.Value("KIND_AUTO"))]
        names = ensemble_names(task)
        assert _check_ensemble(configs, names.ensemble) == [
            (names.preprocess, 1),
            (task, 1),
            (names.postprocess, 1),
        ]
    assert not (out / "not-a-task").exists()


def test_preprocess_and_postprocess_are_python_models_with_our_sources(tmp_path: Path) -> None:
    src = _repository(tmp_path / "repo", {"shadow": ("model.onnx",)})
    out = tmp_path / "triton"
    options = TritonOptions(python_path=PYTHON_PATH, python_instances=3, max_pixels=1_000_000)
    write_triton_repository(src, out, options)
    configs = _configs(out)
    pre, post = configs["shadow_preprocess"], configs["shadow_postprocess"]
    for config, source in ((pre, "preprocess.py"), (post, "postprocess.py")):
        assert (config.backend, config.platform, config.max_batch_size) == ("python", "", 1)
        assert not config.HasField("dynamic_batching")  # one image per request, any size
        assert [(g.count, g.kind) for g in config.instance_group] == [(3, Kind.Value("KIND_CPU"))]
        assert config.parameters["python_path"].string_value == "/opt/focus-deps:/opt/focus"
        version_dir = out / config.name / "1"
        assert sorted(p.name for p in version_dir.iterdir()) == [
            "focus.json",
            "focus_bootstrap.py",
            "model.py",
        ]
        assert (version_dir / "model.py").read_bytes() == (SOURCES / source).read_bytes()
        assert json.loads((version_dir / "focus.json").read_text())["task"] == "shadow"
    assert pre.parameters["max_pixels"].string_value == "1000000"
    assert _io(pre) == (
        {"image_bytes": (STRING, [1])},
        {
            "image": (FP32, [3, -1, -1]),
            "edges": (FP32, [3, -1, -1]),
            "original_size": (INT32, [2]),
            "resized_size": (INT32, [2]),
            "padded_size": (INT32, [2]),
        },
    )
    assert _io(post)[1] == {"mask_png": (STRING, [1])}
    assert (configs["shadow_ensemble"].max_batch_size, list(configs["shadow_ensemble"].input)) == (
        1,
        list(pre.input),
    )
    assert sorted(p.name for p in (out / "shadow_ensemble").iterdir()) == ["1", "config.pbtxt"]
    assert list((out / "shadow_ensemble" / "1").iterdir()) == []


def test_python_onnxruntime_variant_runs_the_graph_in_the_python_backend(tmp_path: Path) -> None:
    src = _repository(tmp_path / "repo", {"defocus": ("model.onnx",)})
    out = tmp_path / "triton"
    options = TritonOptions(
        model_backend="python-onnxruntime",
        kind="KIND_CPU",
        python_path=PYTHON_PATH,
        intra_op_threads=2,
        instances=2,
    )
    write_triton_repository(src, out, options)
    configs = _configs(out)
    config = configs["defocus"]
    assert (config.backend, config.platform, config.max_batch_size) == ("python", "", 8)
    assert config.default_model_filename == ""
    assert config.parameters["intra_op_threads"].string_value == "2"
    assert config.parameters["python_path"].string_value == "/opt/focus-deps:/opt/focus"
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, Kind.Value("KIND_CPU"))]
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8]
    version_dir = out / "defocus" / "1"
    assert sorted(p.name for p in version_dir.iterdir()) == [
        "focus_bootstrap.py",
        "model.onnx",
        "model.py",
    ]
    assert (version_dir / "model.py").read_bytes() == (
        SOURCES / "onnxruntime_model.py"
    ).read_bytes()
    native = _configs(_write(tmp_path / "native", src, TritonOptions(python_path=PYTHON_PATH)))
    # the ensemble and the network's signature are the same as the native variant's
    assert _io(config) == _io(native["defocus"])
    assert configs["defocus_ensemble"] == native["defocus_ensemble"]
    _check_ensemble(configs, "defocus_ensemble")


def _write(out: Path, src: Path, options: TritonOptions) -> Path:
    write_triton_repository(src, out, options)
    return out


def test_every_model_takes_the_served_version_and_the_ensemble_pins_it(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    _repository(root, {"salient": ("model.onnx",)}, version="1")
    _repository(root / "v4", {"salient": ("model.onnx",)}, version="4")
    (root / "v4" / "salient" / "4").rename(root / "salient" / "4")
    out = tmp_path / "triton"
    write_triton_repository(root, out, TritonOptions(python_path=PYTHON_PATH))
    for name in ("salient", "salient_preprocess", "salient_postprocess", "salient_ensemble"):
        assert [p.name for p in (out / name).iterdir() if p.is_dir()] == ["4"], name
    assert (out / "salient" / "4" / "model.onnx").read_bytes() == b"salient:4:model.onnx"
    steps = _check_ensemble(_configs(out), "salient_ensemble")
    assert [version for _, version in steps] == [4, 4, 4]


def test_tensorrt_plan_takes_the_engine_max_batch(tmp_path: Path) -> None:
    src = _repository(tmp_path / "repo", {"shadow": ("model.onnx", "model.engine")})
    meta = {
        "gpu_name": "NVIDIA H100",
        "tensorrt_version": "10.8.0",
        "precision": "fp16",
        "max_batch": 4,
    }
    (src / "shadow" / "model.engine.json").write_text(json.dumps(meta))
    options = TritonOptions(platform="tensorrt_plan", kind="KIND_GPU", python_path=PYTHON_PATH)
    out = tmp_path / "triton"
    write_triton_repository(src, out, options)
    model_dir = out / "shadow"
    assert (model_dir / "1" / "model.plan").read_bytes() == b"shadow::model.engine"
    configs = _configs(out)
    config = configs["shadow"]
    assert (config.platform, config.max_batch_size) == ("tensorrt_plan", 4)
    assert config.default_model_filename == "model.plan"
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, Kind.Value("KIND_GPU"))]
    _check_ensemble(configs, "shadow_ensemble")
    with pytest.raises(ValueError, match="built for batch <= 4; --max-batch 16 exceeds it"):
        write_triton_repository(
            src, tmp_path / "t2", TritonOptions(platform="tensorrt_plan", max_batch=16)
        )
    assert not (tmp_path / "t2").exists()  # checked before anything is written


def test_the_ensemble_check_catches_miswiring(tmp_path: Path) -> None:
    """_check_ensemble must fail when a step's tensors disagree with its model."""
    src = _repository(tmp_path / "repo", {"salient": ("model.onnx",)})
    out = _write(tmp_path / "triton", src, TritonOptions(python_path=PYTHON_PATH))
    configs = _configs(out)
    configs["salient_preprocess"].output[3].data_type = FP32  # resized_size as float
    with pytest.raises(AssertionError):
        _check_ensemble(configs, "salient_ensemble")
    configs = _configs(out)
    del configs["salient_postprocess"].input[-1]  # padded_size no longer consumed
    with pytest.raises(AssertionError):
        _check_ensemble(configs, "salient_ensemble")


def test_plan_without_engine_metadata_is_refused(tmp_path: Path) -> None:
    src = _repository(tmp_path / "repo", {"shadow": ("model.engine",)})
    with pytest.raises(ValueError, match="no model.engine.json beside it"):
        write_triton_repository(src, tmp_path / "t", TritonOptions(platform="tensorrt_plan"))


def test_repository_without_the_artefact_is_an_error(tmp_path: Path) -> None:
    src = _repository(tmp_path / "repo", {"salient": ("model.onnx",)})
    with pytest.raises(ValueError, match=r"no task in .* has focus.json and model.engine"):
        write_triton_repository(src, tmp_path / "t", TritonOptions(platform="tensorrt_plan"))


def test_invalid_options_are_rejected() -> None:
    cases = [
        ({"platform": "pytorch_libtorch"}, "platform must be one of"),
        ({"platform": "tensorrt_plan", "kind": "KIND_CPU"}, "cannot run on KIND_CPU"),
        ({"max_batch": 0}, "max batch must be >= 1"),
        ({"model_backend": "openvino"}, "model backend must be one of"),
        (
            {"model_backend": "python-onnxruntime", "platform": "tensorrt_plan"},
            "cannot serve platform tensorrt_plan",
        ),
        ({"model_backend": "python-onnxruntime", "kind": "KIND_GPU"}, r"on the CPU \(KIND_CPU\)"),
        ({"python_path": ("/a:/b",)}, "python path entry '/a:/b' must be"),
        ({"python_path": ("",)}, "python path entry '' must be"),
        ({"python_instances": 0}, "instances must be >= 1"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            TritonOptions(**kwargs)


def test_the_parser_used_here_is_strict() -> None:
    """The structure tests above would be worthless if unknown fields parsed."""
    good = config_pbtxt("salient", make_card("salient", "tiny"), TritonOptions(), 8)
    parse(good)
    for bad in (
        good.replace("max_batch_size", "max_batch"),
        good.replace("TYPE_FP32", "FP32"),
        good.replace("KIND_AUTO", "KIND_TPU"),
    ):
        with pytest.raises(text_format.ParseError):
            parse(bad)


def test_bootstrap_reads_the_python_path_the_writer_wrote(tmp_path: Path) -> None:
    """focus_bootstrap parses python_path from the config text the writer produces and
    puts it on sys.path of a fresh interpreter (relative entries: relative to the repository)."""
    card = make_card("salient", "tiny")
    repo = tmp_path / "triton"
    version_dir = repo / "salient_preprocess" / "1"
    version_dir.mkdir(parents=True)
    text = preprocess_config("salient", card, ("/opt/deps", "lib/focus"), 1, 10)
    (repo / "salient_preprocess" / "config.pbtxt").write_text(text)
    (version_dir / "focus_bootstrap.py").write_bytes((SOURCES / "focus_bootstrap.py").read_bytes())
    code = "import sys; import focus_bootstrap; print(sys.path[:2])"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=version_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(["/opt/deps", str((repo / "lib/focus").resolve())])


def test_python_model_sources_import_only_torch_free_focus_modules() -> None:
    """They run in Triton's stub interpreter, which has no torch (and must not need one)."""
    for source in sorted(SOURCES.glob("*.py")):
        for _, name in _imports(source, module_level_only=False):
            top = name.split(".")[0]
            assert top not in ("torch", "service", "training", "export"), (source.name, name)
            if top == "models":  # `from m import x` also yields m itself: every module is seen
                assert _torch_chain(name, set()) is None, (source.name, name)


def test_cli_writes_the_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _repository(tmp_path / "repo", {"forgery": ("model.onnx",)})
    out = tmp_path / "t"
    args = ["export", "triton", "--model-repository", str(src), "--out", str(out)]
    rc = main([*args, "--max-batch", "16", "--instances", "2", "--python-path", "/x"])
    assert rc == 0
    assert (
        capsys.readouterr().out
        == "".join(
            f"wrote {out / name}/config.pbtxt\n"
            for name in ("forgery", "forgery_preprocess", "forgery_postprocess", "forgery_ensemble")
        )
        + "Python models import from: /x\n"
    )
    config = parse((out / "forgery" / "config.pbtxt").read_text())
    assert config.max_batch_size == 16 and config.instance_group[0].count == 2
    rc = main([*args, "--model-backend", "python-onnxruntime", "--platform", "tensorrt_plan"])
    assert rc == 2
    assert "cannot serve platform tensorrt_plan" in capsys.readouterr().err
    rc = main([*args, "--model-backend", "python-onnxruntime", "--python-path", "/x"])
    assert rc == 0
    config = parse((out / "forgery" / "config.pbtxt").read_text())
    assert (config.backend, config.instance_group[0].kind) == ("python", Kind.Value("KIND_CPU"))
