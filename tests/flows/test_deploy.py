"""`lifecycle deploy` on the tiny project's registry: k8s manifests written and parsed, the targets that cannot
run here refused clearly before anything leaves, the scope's refusals naming their key, deploys recorded."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from flows import cli, deploy
from flows.deploy import docker, k8s
from tests.conftest import Server, free_port, healthy

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/genai-lifecycle-base:bookworm"  # what containers/base-image.sh builds


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
    raw["deploy"]["k8s"].update(
        api_key_secret="help-desk-keys",
        max_replicas=6,
        network_policy={"from_namespaces": ["gateway"], "from_pods": {"app": "front"}},
    )
    params = type(tiny).model_validate(raw)
    version = MlflowClient().get_model_version_by_alias(tiny.project.name, "champion")
    m = k8s.k8s_manifests(params, packaged["package"]["bento"], version)
    pod = m["deployment.yaml"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"} and pod["tolerations"]
    keys = next(e["value"] for e in pod["containers"][0]["env"] if e["name"] == "LIFECYCLE_API_KEYS_FILE")
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if keys.startswith(m["mountPath"] + "/"))
    secret = next(v["secret"] for v in pod["volumes"] if v["name"] == mount["name"])
    assert secret["secretName"] == "help-desk-keys" and mount["readOnly"], "the API keys: the Secret as a file"
    assert k8s.restricted_problems(pod) == [], "the restricted Pod Security profile"
    assert pod["securityContext"]["runAsUser"] == k8s.BENTO_UID
    assert m["hpa.yaml"]["spec"]["maxReplicas"] == 6
    ingress = m["networkpolicy.yaml"]["spec"]["ingress"]
    assert ingress == [
        {
            "from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}},
                {"podSelector": {"matchLabels": {"app": "front"}}},
            ],
            "ports": [{"port": "http", "protocol": "TCP"}],
        }
    ]
    assert "networkpolicy.yaml" not in k8s.k8s_manifests(tiny, packaged["package"]["bento"], version), "off by default"


@pytest.mark.parametrize("gpu", [0, 2], ids=["cpu", "gpu"])
def test_k8s_manifests_pass_the_official_schemas_and_the_cross_field_rules(packaged, tiny, gpu):
    from mlflow import MlflowClient

    raw = tiny.model_dump(mode="json")
    raw["serve"]["resources"].update(gpu=gpu, gpu_type="NVIDIA-L4" if gpu else None)
    raw["deploy"]["k8s"].update(api_key_secret="help-desk-keys", network_policy={} if gpu else None)
    params = type(tiny).model_validate(raw)
    version = MlflowClient().get_model_version_by_alias(tiny.project.name, "champion")
    manifests = k8s.k8s_manifests(params, packaged["package"]["bento"], version)
    assert ("networkpolicy.yaml" in manifests) == bool(gpu)
    assert k8s.manifest_problems(manifests, params.deploy.k8s.version) == []
    assert k8s.manifest_problems(manifests, "1.25") == [], "the oldest schema kubernetes-validate has"
    if gpu:
        elsewhere = _broken(manifests, "networkpolicy.yaml", "spec.podSelector.matchLabels", {"app": "other"})
        problems = k8s.manifest_problems(elsewhere, params.deploy.k8s.version)
        assert any(p.startswith("networkpolicy.yaml: spec.podSelector {'app': 'other'} does not") for p in problems)


def test_checkov_finds_nothing_in_the_manifests_and_the_dockerfile(packaged, tiny, tmp_path):
    """A maintained scanner, offline: checkov's Kubernetes and Dockerfile checks fail nothing on what `deploy`
    writes and builds from; a check the manifests do not meet is skipped by annotation, with its reason."""
    import bentoml
    from bentoml._internal.container import construct_containerfile
    from mlflow import MlflowClient

    checkov = Path(sys.executable).parent.parent / "checkov" / "bin" / "checkov"
    assert checkov.is_file(), f"{checkov}: `make install` installs checkov there"
    raw = tiny.model_dump(mode="json")
    raw["deploy"]["k8s"].update(api_key_secret="help-desk-keys", network_policy={})
    params = type(tiny).model_validate(raw)
    version = MlflowClient().get_model_version_by_alias(tiny.project.name, "champion")
    scanned = tmp_path / "scanned"
    k8s.write(params, packaged["package"]["bento"], version, scanned)
    with construct_containerfile(bentoml.get(packaged["package"]["bento"]), enable_buildkit=False) as (context, _):
        docker.image_context(Path(context), params.deploy.docker, gpu=False)
        dockerfile = (Path(context) / "env" / "docker" / "Dockerfile").read_text()
    assert "build-essential" not in dockerfile and " git" not in dockerfile and "HEALTHCHECK" in dockerfile
    assert "gnupg2" not in dockerfile and "apt-get clean" in dockerfile, "no gpg, no downloaded .deb files"
    (scanned / "Dockerfile").write_text(dockerfile)
    scan = [str(checkov), "-d", str(scanned), "--framework", "kubernetes", "dockerfile", "--skip-download"]
    out = subprocess.run([*scan, "-o", "json"], capture_output=True, text=True, timeout=300)
    reports = json.loads(out.stdout)
    reports = {r["check_type"]: r for r in (reports if isinstance(reports, list) else [reports])}
    assert set(reports) == {"kubernetes", "dockerfile"}, out.stderr[-2000:]
    for kind, report in reports.items():
        failed = [(c["check_id"], c["check_name"], c["file_path"]) for c in report["results"]["failed_checks"]]
        print(f"checkov {kind}: {report['summary']}")
        assert report["summary"]["parsing_errors"] == 0 and failed == [], failed
    results = reports["kubernetes"]["results"]
    skipped = {c["check_id"]: c["check_result"]["suppress_comment"] for c in results["skipped_checks"]}
    assert set(skipped) == {"CKV_K8S_21", "CKV_K8S_40", "CKV_K8S_43"} and all(skipped.values()), skipped
    checked = {c["resource"].split(".")[0] for c in results["passed_checks"] + results["skipped_checks"]}
    assert checked == {"Deployment", "Pod", "Service"}, checked  # the kinds checkov has checks for


def test_k8s_pins_the_image_by_the_digest_a_docker_deploy_recorded(tiny):
    from types import SimpleNamespace

    from flows.deploy.common import image_name

    bento, digest = "stdlib-helpdesk:abc", "sha256:" + "a" * 64
    image = image_name(tiny, bento, SimpleNamespace(version=3))

    def deployed(tags: dict) -> dict:
        pod = k8s.k8s_manifests(tiny, bento, SimpleNamespace(version=3, tags=tags))["deployment.yaml"]
        return pod["spec"]["template"]["spec"]["containers"][0]["image"], pod["metadata"]["annotations"]

    pushed, annotations = deployed({"lifecycle.deploy.docker": json.dumps({"image": image, "digest": digest})})
    assert pushed == f"{image}@{digest}" and not any("CKV_K8S_43" in v for v in annotations.values())
    other = json.dumps({"image": "elsewhere/other:v3", "digest": digest})
    assert deployed({"lifecycle.deploy.docker": other})[0] == image, "another image's digest is not this one's"
    tagged, annotations = deployed({})
    assert tagged == image and any(v.startswith("CKV_K8S_43=") for v in annotations.values())


def _broken(manifests: dict, file: str, path: str, value) -> dict:
    import copy

    broken = copy.deepcopy(manifests)
    *parents, last = path.split(".")
    node = broken[file]
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[last] = value
    return broken


@pytest.mark.parametrize(
    ("file", "path", "value", "expected"),
    [
        ("deployment.yaml", "spec.replicas", "two", "deployment.yaml: spec.replicas: 'two' is not of type 'integer'"),
        ("deployment.yaml", "spec.replica", 2, "deployment.yaml: spec: Additional properties are not allowed"),
        ("hpa.yaml", "spec.maxReplica", 2, "hpa.yaml: spec: Additional properties are not allowed"),
        ("hpa.yaml", "apiVersion", "autoscaling/v2beta2", "hpa.yaml: no schema for autoscaling/v2beta2"),
        ("deployment.yaml", "spec.selector.matchLabels", {"app": "other"}, "does not match the pod template's labels"),
        ("service.yaml", "spec.selector", {"app": "other"}, "service.yaml: spec.selector {'app': 'other'} does not"),
        (
            "deployment.yaml",
            "spec.template.spec.containers.0.resources.limits.nvidia.com/gpu",
            "1.5",
            "limits nvidia.com/gpu '1.5': whole GPUs only",
        ),
        (
            "deployment.yaml",
            "spec.template.spec.containers.0.readinessProbe.httpGet.port",
            "metrics",
            "readinessProbe port 'metrics' is not one it serves",
        ),
        ("service.yaml", "spec.ports.0.targetPort", 8080, "service.yaml: targetPort 8080 is not a port the pods serve"),
        (
            "deployment.yaml",
            "spec.template.spec.containers.0.securityContext.allowPrivilegeEscalation",
            True,
            "container lifecycle: securityContext.allowPrivilegeEscalation must be false",
        ),
        (
            "deployment.yaml",
            "spec.template.spec.securityContext.runAsUser",
            0,
            "container lifecycle: runAsUser 0 (root) is not allowed",
        ),
        ("hpa.yaml", "spec.scaleTargetRef.name", "other", "hpa.yaml: scaleTargetRef Deployment/other is not"),
    ],
)
def test_k8s_manifest_problems_name_the_file_and_the_field(packaged, tiny, file, path, value, expected):
    from mlflow import MlflowClient

    version = MlflowClient().get_model_version_by_alias(tiny.project.name, "champion")
    manifests = k8s.k8s_manifests(tiny, packaged["package"]["bento"], version)
    if "nvidia.com/gpu" in path:  # a key with dots: set it by hand
        limits = manifests["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        limits["nvidia.com/gpu"] = value
        broken = manifests
    else:
        broken = _broken(manifests, file, path, value)
    problems = k8s.manifest_problems(broken, tiny.deploy.k8s.version)
    assert any(expected in p for p in problems), problems


def test_k8s_kustomize_format_and_a_version_without_schemas(packaged, tiny_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "k8s"
    secret = _project(tmp_path / "secret", tiny_root, **{"deploy.k8s.api_key_secret": "help-desk-keys"})
    assert _deploy(monkeypatch, secret, "--target", "k8s", "--out", str(out), "--format", "kustomize") == 0
    printed = capsys.readouterr().out
    assert "kubectl -n default create secret generic help-desk-keys --from-literal=api-keys=" in printed
    assert f"kubectl apply -k {out}" in printed
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    image = yaml.safe_load((out / "deployment.yaml").read_text())["spec"]["template"]["spec"]["containers"][0]["image"]
    assert kustomization["resources"] == ["deployment.yaml", "service.yaml", "hpa.yaml"]
    reference, _, digest = image.partition("@")  # by digest once a docker deploy recorded one
    pinned = {"digest": digest} if digest else {}
    assert kustomization["images"] == [dict(zip(("name", "newTag"), reference.rsplit(":", 1))) | pinned]

    future = _project(tmp_path / "future", tiny_root, **{"deploy.k8s.version": "1.99"})
    assert _deploy(monkeypatch, future, "--target", "k8s", "--out", str(tmp_path / "none")) == 1
    err = capsys.readouterr().err
    assert (
        "Kubernetes 1.99 (`deploy.k8s.version`); nothing was written" in err
        and "has no schemas for Kubernetes 1.99" in err
    )
    assert not (tmp_path / "none").exists()


@pytest.mark.skipif(docker.docker_engine("docker") is not None, reason="a Docker daemon answers here")
def test_docker_without_an_engine_says_what_to_install_and_the_command_to_run_elsewhere(
    packaged, tiny_root, tmp_path, monkeypatch, capsys
):
    project = _project(tmp_path, tiny_root, **{"deploy.docker.engine": "docker"})
    assert _deploy(monkeypatch, project, "--target", "docker") == 1
    err = capsys.readouterr().err
    assert "no container engine answers here (docker `info` failed)" in err and "make container-engine" in err
    assert f"bentoml containerize {packaged['package']['bento']} -t" in err


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


def _run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


@contextlib.contextmanager
def _local_registry(root: Path):
    """Debian's docker-registry (CNCF distribution) on a free 127.0.0.1 port, plain HTTP; stopped by PID."""
    port = free_port()
    root.mkdir(parents=True)
    config = root / "registry.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
                "http": {"addr": f"127.0.0.1:{port}"},
                "log": {"level": "warn"},
            }
        )
    )
    server = Server(["docker-registry", "serve", str(config)], f"http://127.0.0.1:{port}/v2/").wait_healthy(tries=60)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.mark.servers
@pytest.mark.slow
def test_docker_builds_pushes_and_the_container_answers_as_evaluate_did(
    packaged, prepared, tiny, tiny_root, tmp_path, monkeypatch, capsys
):
    """`lifecycle deploy --target docker` for real: podman from Debian (containers/engine.sh), the offline base image
    (containers/base-image.sh), the champion's image pushed to a local registry, run, and asked 10 eval questions."""
    from mlflow import MlflowClient

    from stages.common.io import read_jsonl

    engine = _run("sh", str(REPO / "containers" / "engine.sh"))
    if engine.returncode != 0:
        pytest.skip(f"no container engine can be installed here: {engine.stderr.strip()[-300:]}")
    base = _run("sh", str(REPO / "containers" / "base-image.sh"), BASE_IMAGE)
    assert base.returncode == 0, base.stdout + base.stderr
    with _local_registry(tmp_path / "registry") as registry:
        project = _project(
            tmp_path / "project",
            tiny_root,
            **{
                "deploy.docker.base_image": BASE_IMAGE,
                "deploy.docker.registry": registry,
                "deploy.docker.tls_verify": False,
                "deploy.docker.engine": "podman",
            },
        )
        assert _deploy(monkeypatch, project, "--target", "docker") == 0, capsys.readouterr()
        version = MlflowClient().get_model_version_by_alias(tiny.project.name, "champion")
        recorded = json.loads(version.tags["lifecycle.deploy.docker"])
        image = f"{registry}/{packaged['package']['bento'].split(':')[0]}:v{version.version}"
        assert recorded["image"] == image and recorded["engine"] == "podman"
        print(f"\nimage {image}: {recorded['size_bytes'] / 2**20:,.0f} MiB, built in {recorded['build_s']} s")
        # What the registry holds is what was recorded (the digest a deployment pins).
        repository, tag = image.split("/", 1)[1].rsplit(":", 1)
        manifest = urllib.request.Request(
            f"http://{registry}/v2/{repository}/manifests/{tag}",
            headers={
                "Accept": "application/vnd.oci.image.manifest.v1+json, "
                "application/vnd.docker.distribution.manifest.v2+json"
            },
        )
        with urllib.request.urlopen(manifest, timeout=30) as resp:
            assert resp.headers["Docker-Content-Digest"] == recorded["digest"]
        # The tiny champion serves on OpenVINO: nothing in its image runs torch, so the image has none.
        code = "import importlib.util as u; print(u.find_spec('torch') is None, u.find_spec('openvino_genai') is None)"
        found = _run("podman", "run", "--rm", "--entrypoint", "python", image, "-c", code)
        assert found.stdout.split() == ["True", "False"], found.stdout + found.stderr

    # The image runs as the non-root user the k8s manifests name (runAsUser).
    user = _run("podman", "run", "--rm", "--entrypoint", "id", image, "-u")
    print(f"id -u in the container: {user.stdout.strip()}")
    assert user.returncode == 0 and user.stdout.strip() == str(k8s.BENTO_UID), user.stdout + user.stderr
    # Run as the k8s manifests run it: read-only root, an emptyDir-like /tmp, no capabilities, no privilege gain.
    port, name = free_port(), f"lifecycle-test-{os.getpid()}"
    locked = ["--read-only", "--tmpfs", f"{k8s.WRITABLE}:rw,size=4g,mode=1777", "--user", str(k8s.BENTO_UID)]
    locked += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    locked += [f"--env={n}={v}" for n, v in k8s.WRITABLE_ENV.items()]
    started = _run("podman", "run", "-d", "--name", name, *locked, "-p", f"127.0.0.1:{port}:3000", image)
    assert started.returncode == 0, started.stderr
    try:
        for _ in range(360):  # bounded: up to 3 minutes for the container to load its model
            if healthy(f"http://127.0.0.1:{port}/readyz"):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the container did not answer /readyz within 3 minutes: {_run('podman', 'logs', name).stdout}")
        variant = packaged["package"]["eval_answers"]  # the variant at the precision it shipped in
        rows = read_jsonl(Path(prepared.paths.eval_report).with_name("eval_answers.jsonl"))[:10]
        served = []
        for row in rows:
            body = json.dumps({"messages": [{"role": "user", "content": row["prompt"]}], "temperature": 0}).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/chat/completions", data=body, headers={"content-type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=60) as resp:
                served.append(json.loads(resp.read())["choices"][0]["message"]["content"])
        assert served == [row[variant] for row in rows], "the container answers as evaluate recorded"
    finally:
        logs = _run("podman", "logs", name).stdout[-2000:]
        _run("podman", "rm", "-f", name)
        _run("podman", "rmi", image)
        print(logs)
    assert _run("podman", "container", "exists", name).returncode == 1, "the container is removed"


def test_the_image_context_gets_the_base_image_and_torchs_cpu_build(tmp_path):
    from importlib.metadata import version

    from stages.common.params import Docker

    def context(dockerfile: str) -> Path:
        (tmp_path / "env" / "docker").mkdir(parents=True, exist_ok=True)
        (tmp_path / "env" / "python").mkdir(parents=True, exist_ok=True)
        (tmp_path / "env" / "docker" / "Dockerfile").write_text(dockerfile)
        (tmp_path / "env" / "python" / "requirements.txt").write_text("torch==2.13.0\nbentoml==1.4.39\n")
        return tmp_path

    settings = Docker(base_image="localhost/base:1")
    ctx = context("FROM python:3.11-slim AS base-container\nRUN true\n")
    docker.image_context(ctx, settings, gpu=False)
    assert (ctx / "env/docker/Dockerfile").read_text().startswith("FROM localhost/base:1 AS base-container\n")
    requirements = (ctx / "env/python/requirements.txt").read_text().splitlines()
    wheel = docker.local_torch_wheel(version("torch"))
    if wheel:  # this machine: pip's find-links has the CPU wheel, which travels in the build context
        assert requirements == [f"./wheels/{wheel.name}", "bentoml==1.4.39"]
        assert (ctx / "env/python/wheels" / wheel.name).stat().st_size == wheel.stat().st_size
    else:
        assert requirements == [f"--extra-index-url {settings.cpu_torch_index}", "torch==2.13.0", "bentoml==1.4.39"]
    if wheel:  # podman mounts the wheel's folder into the build instead: the wheel is in no layer
        shutil.rmtree(ctx / "env/python/wheels")
        mounted = context("FROM python:3.11-slim AS base-container\n")
        docker.image_context(mounted, settings, gpu=False, mounted_wheels=True)
        requirements = (mounted / "env/python/requirements.txt").read_text().splitlines()
        assert (
            requirements[0] == f"{docker.WHEELS_IN_BUILD}/{wheel.name}" and not (mounted / "env/python/wheels").exists()
        )

    assert (ctx / "env/python" / docker.EXCLUDES).read_text() == "", "no chromadb: nothing to leave out"

    without = context("FROM python:3.11-slim AS base-container\n")
    (without / "env/python/requirements.txt").write_text("openvino==2026.4.0\nchromadb==1.5.9\n")
    changes = docker.image_context(without, settings, gpu=False, mounted_wheels=True)
    assert (without / "env/python/requirements.txt").read_text() == "openvino==2026.4.0\nchromadb==1.5.9\n"
    assert any(c.startswith("no torch") for c in changes) and not (without / "env/python/wheels").exists()
    assert (without / "env/python" / docker.EXCLUDES).read_text() == "kubernetes\nonnxruntime\n"

    gpu = context("FROM python:3.11-slim AS base-container\n")
    docker.image_context(gpu, Docker(), gpu=True)
    assert (gpu / "env/python/requirements.txt").read_text() == "torch==2.13.0\nbentoml==1.4.39\n", "PyPI's CUDA torch"
    assert (gpu / "env/docker/Dockerfile").read_text() == "FROM python:3.11-slim AS base-container\n"

    with pytest.raises(deploy.DeployRefused, match="no `FROM … AS base-container` line"):
        docker.image_context(context("FROM python:3.11-slim\n"), settings, gpu=False)


def test_the_table_is_the_targets_and_the_package_docstring_names_them():
    assert deploy.TARGETS == tuple(deploy.DEPLOYERS) == ("local", "docker", "bentocloud", "k8s", "gguf", "llamacpp")
    first_line = deploy.__doc__.splitlines()[0]
    assert all(f" {target} " in first_line or f" {target}`" in first_line for target in deploy.TARGETS), first_line
    assert cli.parser().parse_args(["deploy", "--target", "gguf"]).target in deploy.DEPLOYERS


class _Registry:
    """An MLflow client with one champion (or none): what `deploy.deploy` asks of the registry, recorded."""

    def __init__(self, bento: str | None):
        self.bento, self.tags = bento, {}

    def get_model_version_by_alias(self, name, alias):
        from types import SimpleNamespace

        from mlflow.exceptions import MlflowException

        if self.bento is None:
            raise MlflowException(f"no alias {alias}")
        return SimpleNamespace(version="7", tags={"lifecycle.bento": self.bento})

    def set_model_version_tag(self, name, version, key, value):
        self.tags[(name, version, key)] = json.loads(value)


def test_deploy_dispatches_through_the_table_refuses_first_and_records(tmp_path):
    from stages.common.loader import load_params

    params = load_params(REPO / "params.yaml", files=False)  # on-prem, as the default project
    options = deploy.Options(host="0.0.0.0", port=3100, out=None, gguf_type=None, format=None)
    with pytest.raises(deploy.DeployRefused, match="`scope.deployment_target` is on-prem"):
        deploy.deploy("bentocloud", params, _Registry("help-desk:abc"), options)
    with pytest.raises(deploy.DeployRefused, match="has no champion in the MLflow registry"):
        deploy.deploy("k8s", params, _Registry(None), deploy.Options("h", 1, str(tmp_path / "k8s"), None, None))
    assert not (tmp_path / "k8s").exists()

    registry = _Registry("help-desk:abc")
    done = deploy.deploy("local", params, registry, options)
    assert done.server[1:] == ["serve", "help-desk:abc", "--host", "0.0.0.0", "--port", "3100"]
    assert done.said == [f"serving {params.project.name} v7 (@champion) on http://0.0.0.0:3100"]
    recorded = registry.tags[(params.project.name, "7", "lifecycle.deploy.local")]
    assert recorded["bento"] == "help-desk:abc" and recorded["address"] == "0.0.0.0:3100" and recorded["time"]
