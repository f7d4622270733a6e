"""deploy/k8s: every rendered manifest is valid Kubernetes and agrees with the service.

Each overlay is rendered by kustomize (``kubectl kustomize`` or ``kustomize build``; skipped with
the reason where neither is installed), every document is validated offline against the
Kubernetes schemas by ``kubernetes-validate`` (strict: unknown fields are errors), and the
probes, ports, environment names and volumes are checked against ``service.settings.Settings``,
the app's routes, the images' user and the service's shutdown timing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (the dev extra)"
)

from service.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
# The oldest version with the preStop sleep action on by default, and the newest the validator has
K8S_VERSIONS = ("1.30.0", "1.37.0")
KINDS = {
    "ConfigMap", "PersistentVolumeClaim", "Deployment", "Service", "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
}  # fmt: skip


def _kustomize(overlay: Path) -> list[str]:
    if shutil.which("kustomize"):
        return ["kustomize", "build", str(overlay)]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize", str(overlay)]
    pytest.skip("neither kustomize nor kubectl (with its built-in kustomize) is installed")


def render(overlay: str) -> dict[str, dict[str, Any]]:
    """The overlay's documents by kind (one of each)."""
    done = subprocess.run(
        _kustomize(K8S / "overlays" / overlay), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one document per kind expected"
    return by_kind


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, dict[str, dict[str, Any]]]:
    return request.param, render(request.param)


def _container(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _config(docs: dict[str, dict[str, Any]]) -> dict[str, str]:
    return docs["ConfigMap"]["data"]


def _settings_from(config: dict[str, str]) -> Settings:
    """The Settings the pod would build from its ConfigMap (validated like at start-up)."""
    return Settings(**{name.removeprefix("FOCUS_").lower(): v for name, v in config.items()})


def _env_names() -> set[str]:
    return {f"FOCUS_{name.upper()}" for name in Settings.model_fields}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_rendered_manifest_is_valid_kubernetes(rendered, version: str) -> None:
    _, docs = rendered
    assert set(docs) == KINDS
    for doc in docs.values():
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_a_broken_manifest(rendered) -> None:
    _, docs = rendered
    broken = yaml.safe_load(yaml.safe_dump(docs["Deployment"]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError, match="'pth' was unexpected"):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def test_configmap_and_env_name_only_settings_and_validate(rendered) -> None:
    _, docs = rendered
    config = _config(docs)
    names = set(config) | {e["name"] for e in _container(docs).get("env", [])}
    assert names <= _env_names(), sorted(names - _env_names())
    settings = _settings_from(config)  # raises on a value the service would refuse
    assert settings.workers == 1  # one process per pod: replicas scale out
    for env in _container(docs)["env"]:  # secrets never sit in the ConfigMap
        assert env["valueFrom"]["secretKeyRef"]["optional"] is True
    assert {"FOCUS_API_KEY", "FOCUS_ADMIN_KEY"} <= {e["name"] for e in _container(docs)["env"]}
    assert not {"FOCUS_API_KEY", "FOCUS_ADMIN_KEY"} & set(config)


def test_probes_ports_and_scrape_target_match_the_app(rendered, tmp_path: Path) -> None:
    from service.app import create_app

    _, docs = rendered
    settings = _settings_from(_config(docs))
    paths = create_app(Settings(model_repository=tmp_path)).openapi()["paths"]
    container = _container(docs)
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": settings.port, "protocol": "TCP"}
    probes = {
        kind: container[kind]["httpGet"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/health/live"
    assert probes["readinessProbe"]["path"] == "/health/ready"
    for probe in probes.values():
        assert "get" in paths[probe["path"]] and probe["port"] == "http"
    service_port = docs["Service"]["spec"]["ports"][0]
    assert (service_port["port"], service_port["targetPort"]) == (settings.port, "http")
    for meta in (docs["Deployment"]["spec"]["template"]["metadata"], docs["Service"]["metadata"]):
        annotations = meta["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(settings.port)
        assert "get" in paths[annotations["prometheus.io/path"]]


def test_selectors_match_the_pods_and_the_hpa_targets_the_deployment(rendered) -> None:
    _, docs = rendered
    deployment = docs["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        docs["Service"]["spec"]["selector"],
        docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"],
    }  # fmt: skip
    # the budget lets a node drain evict one pod while another serves
    assert hpa["minReplicas"] > docs["PodDisruptionBudget"]["spec"]["minAvailable"]


def test_pods_run_as_the_images_user_on_a_read_only_root(rendered) -> None:
    _, docs = rendered
    uid = int(re.findall(r"^USER (\d+):", (ROOT / "Dockerfile").read_text(), re.M)[-1])
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    security = _container(docs)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def test_the_model_repository_comes_from_a_volume_and_writable_paths_are_mounted(
    rendered,
) -> None:
    _, docs = rendered
    settings = _settings_from(_config(docs))
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in _container(docs)["volumeMounts"]}
    models = mounts[str(settings.model_repository)]
    assert models["readOnly"] is True
    claim = volumes[models["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == docs["PersistentVolumeClaim"]["metadata"]["name"]
    # the root filesystem is read-only: the engine cache and /tmp need their own volumes
    for path in (str(settings.engine_cache), "/tmp"):
        assert not mounts[path].get("readOnly", False)
        assert "emptyDir" in volumes[mounts[path]["name"]]


def _drain_delay_s(config: dict[str, str]) -> float | None:
    if "drain_delay_s" not in Settings.model_fields:
        return None
    return _settings_from(config).drain_delay_s  # type: ignore[attr-defined]


def test_termination_grace_covers_the_pre_stop_delay_and_the_drain(rendered) -> None:
    _, docs = rendered
    config = _config(docs)
    settings = _settings_from(config)
    pre_stop = _container(docs)["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = _drain_delay_s(config) or 0.0
    grace = docs["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + drain + settings.timeout_s + 5


def test_the_pre_stop_delay_matches_the_services_drain_delay(rendered) -> None:
    _, docs = rendered
    drain = _drain_delay_s(_config(docs))
    if drain is None:
        pytest.skip("this build's Settings has no drain_delay_s (FOCUS_DRAIN_DELAY_S)")
    assert _container(docs)["lifecycle"]["preStop"]["sleep"]["seconds"] == drain


def test_only_the_gpu_overlay_asks_for_a_gpu(rendered) -> None:
    overlay, docs = rendered
    container = _container(docs)
    settings = _settings_from(_config(docs))
    if overlay == "gpu":
        assert container["image"] == "focus-serve:gpu"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert (settings.device, settings.require_gpu) == ("cuda", True)
        (metric,) = docs["HorizontalPodAutoscaler"]["spec"]["metrics"]
        from service.metrics import Metrics

        names = {family.name for family in Metrics().registry.collect()}
        assert metric["pods"]["metric"]["name"] in names  # a metric the service exports
    else:
        assert container["image"] == "focus-serve:cpu"
        assert "nvidia.com/gpu" not in yaml.safe_dump(docs)
        assert settings.device == "cpu"
