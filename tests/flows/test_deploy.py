"""`lifecycle deploy` on the tiny project's registry: k8s manifests written and parsed, the targets that cannot
run here refused clearly before anything leaves, the scope's refusals naming their key, deploys recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from flows import cli, deploy


def _project(tmp_path: Path, tiny_root: Path, **scope_changes) -> Path:
    """A copy of the tiny project's params.yaml (same registry: the paths are absolute) with scope changes."""
    raw = yaml.safe_load((tiny_root / "params.yaml").read_text())
    for key, value in scope_changes.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return tmp_path


def _deploy(monkeypatch, root: Path, *args: str) -> int:
    monkeypatch.chdir(root)
    return cli.main(["deploy", *args])


def test_k8s_manifests_are_written_parsed_and_recorded(packaged, tiny, tiny_root, tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    out = tmp_path / "k8s"
    assert _deploy(monkeypatch, tiny_root, "--target", "k8s", "--out", str(out)) == 0
    docs = {f.name: yaml.safe_load(f.read_text()) for f in sorted(out.iterdir())}
    assert set(docs) == {"deployment.yaml", "service.yaml", "hpa.yaml"}
    dep = docs["deployment.yaml"]
    version = MlflowClient().get_model_version_by_alias(tiny.project.name, "champion")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert dep["kind"] == "Deployment" and container["image"].endswith(f":v{version.version}")
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["resources"]["requests"]["cpu"] == tiny.serve.resources.cpu
    assert "nvidia.com/gpu" not in container["resources"]["limits"], "no GPU asked for in params"
    assert dep["metadata"]["annotations"]["genai-lifecycle/bento"] == packaged["package"]["bento"]
    assert docs["service.yaml"]["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert docs["hpa.yaml"]["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    recorded = json.loads(
        MlflowClient().get_model_version(tiny.project.name, version.version).tags["lifecycle.deploy.k8s"]
    )
    assert recorded["digest"].startswith("sha256:") and recorded["manifests"] == str(out) and recorded["time"]
    assert "kubectl apply -f" in capsys.readouterr().out


def test_k8s_manifests_ask_for_gpus_and_the_api_key_secret_from_params(packaged, tiny):
    from mlflow import MlflowClient

    raw = tiny.model_dump(mode="json")
    raw["serve"]["resources"].update(gpu=2, gpu_type="NVIDIA-L4")
    raw["deploy"]["k8s"].update(api_key_secret="help-desk-keys", max_replicas=6)
    params = type(tiny).model_validate(raw)
    version = MlflowClient().get_model_version_by_alias(tiny.project.name, "champion")
    m = deploy.k8s_manifests(params, packaged["package"]["bento"], version)
    pod = m["deployment.yaml"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"} and pod["tolerations"]
    secret = pod["containers"][0]["env"][0]
    assert secret["name"] == "LIFECYCLE_API_KEYS" and secret["valueFrom"]["secretKeyRef"]["name"] == "help-desk-keys"
    assert m["hpa.yaml"]["spec"]["maxReplicas"] == 6


@pytest.mark.skipif(deploy.docker_engine_running(), reason="a Docker engine runs here: containerize would build")
def test_docker_without_an_engine_says_the_command_to_run_where_there_is_one(packaged, tiny_root, monkeypatch, capsys):
    assert _deploy(monkeypatch, tiny_root, "--target", "docker") == 1
    err = capsys.readouterr().err
    assert "no Docker engine" in err and f"bentoml containerize {packaged['package']['bento']} -t" in err


def test_bentocloud_is_refused_by_the_scope_or_without_credentials(packaged, tiny_root, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("BENTO_CLOUD_API_KEY", raising=False)
    # The tiny project is on-prem (as the default project).
    assert _deploy(monkeypatch, tiny_root, "--target", "bentocloud") == 1
    assert "`scope.deployment_target` is on-prem" in capsys.readouterr().err

    personal = _project(
        tmp_path / "personal", tiny_root, **{"scope.deployment_target": "cloud", "scope.privacy.personal_data": True}
    )
    assert _deploy(monkeypatch, personal, "--target", "bentocloud") == 1
    assert "`scope.privacy.personal_data` is true" in capsys.readouterr().err

    cloud = _project(tmp_path / "cloud", tiny_root, **{"scope.deployment_target": "cloud"})
    assert _deploy(monkeypatch, cloud, "--target", "bentocloud") == 1
    err = capsys.readouterr().err
    assert "no BentoCloud credentials" in err and "nothing was uploaded" in err


def test_only_a_champion_deploys(packaged, tiny_root, tmp_path, monkeypatch, capsys):
    other = _project(tmp_path, tiny_root, **{"project.name": "never-registered"})
    assert _deploy(monkeypatch, other, "--target", "k8s", "--out", str(tmp_path / "k8s")) == 1
    assert "no champion" in capsys.readouterr().err
    assert not (tmp_path / "k8s").exists()
