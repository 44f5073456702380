"""`lifecycle deploy --target local | docker | bentocloud | k8s`: the champion's bento to where it will run.

    lifecycle deploy --target local                 # serve on this machine (`lifecycle serve` is the short form)
    lifecycle deploy --target docker                # the bento's image (docker or podman), [pushed] as <image>:v<version>
    lifecycle deploy --target bentocloud            # `bentoml deploy` with params `deploy.bentocloud` and `serve.resources`
    lifecycle deploy --target k8s --out deploy/k8s  # Deployment, Service and HorizontalPodAutoscaler manifests,
                                                    # validated against Kubernetes' schemas (`--format kustomize`)
    lifecycle deploy --target gguf --out deploy/gguf  # a GGUF file (--gguf-type Q8_0) and a Modelfile: llama.cpp, Ollama
    lifecycle deploy --target llamacpp              # that file served by llama.cpp's OpenAI-compatible server

Only the registry's `champion` deploys (a model that failed its gates was never registered, and a challenger
waits for `lifecycle promote`). The target must agree with the scope: an on-prem project or one with personal
data never goes to BentoCloud (a SaaS platform). Every deploy is a tag on the model version,
`lifecycle.deploy.<target>`, holding when, and the image or the manifests' digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

TARGETS = ("local", "docker", "bentocloud", "k8s", "gguf", "llamacpp")
LLAMA_CPP = "llama-cpp-python[server]==0.3.36"  # compiles llama.cpp at install (minutes): not in `make install`
SAAS_TARGETS = {"bentocloud"}  # the model and every request leave the team's infrastructure


class DeployRefused(Exception):
    """A deploy that cannot or must not happen; the message says why and what to do."""


def bentoml_cli() -> str:
    return str(Path(sys.executable).parent / "bentoml")


def check_scope(params, target: str) -> None:
    from stages.common.params import DeploymentTarget

    scope = params.scope
    if target in SAAS_TARGETS and scope.privacy.personal_data:
        raise DeployRefused(
            f"`scope.privacy.personal_data` is true: --target {target} is a SaaS platform and personal "
            "data may not leave your infrastructure; deploy with --target k8s or docker"
        )
    if target in SAAS_TARGETS and scope.deployment_target is DeploymentTarget.on_prem:
        raise DeployRefused(
            f"`scope.deployment_target` is on-prem: --target {target} runs in BentoML's cloud; "
            "deploy with --target k8s (manifests for your cluster) or docker"
        )


def champion(client, name: str):
    """The champion's model version and its bento; DeployRefused when there is none to deploy."""
    from mlflow.exceptions import MlflowException

    from stages.common.registry import CHAMPION

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        raise DeployRefused(
            f"nothing to deploy: model {name!r} has no {CHAMPION} in the MLflow registry; run "
            "`lifecycle run` first (a model that failed its gates is never registered) or "
            "`lifecycle promote VERSION`"
        ) from None
    bento = version.tags.get("lifecycle.bento")
    if not bento:
        raise DeployRefused(
            f"{name} v{version.version} (champion) has no `lifecycle.bento` tag: it was registered "
            "outside `lifecycle run` or by an older version of it; `lifecycle models` lists the "
            "versions, `lifecycle promote VERSION` picks another"
        )
    return version, bento


def image_name(params, bento: str, version) -> str:
    """[registry/]<repository>:v<registry version>: the image says which registered version it holds."""
    image = f"{params.deploy.image or bento.split(':')[0]}:v{version.version}"
    registry = params.deploy.docker.registry
    return f"{registry.rstrip('/')}/{image}" if registry else image


def record(client, name: str, version, target: str, detail: dict) -> dict:
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **detail}
    client.set_model_version_tag(name, str(version.version), f"lifecycle.deploy.{target}", json.dumps(entry))
    return entry


# --- targets --------------------------------------------------------------------------------------------------


def local_command(bento: str, host: str, port: int) -> list[str]:
    return [bentoml_cli(), "serve", bento, "--host", host, "--port", str(port)]


def docker_engine(wanted: str) -> str | None:
    """The engine that builds: `deploy.docker.engine`, or on auto a docker whose daemon answers, else podman."""
    for engine in ("docker", "podman") if wanted == "auto" else (wanted,):
        if shutil.which(engine) and subprocess.run([engine, "info"], capture_output=True, timeout=60).returncode == 0:
            return engine
    return None


def local_torch_wheel(version: str) -> Path | None:
    """The installed torch's own wheel (`2.13.0+cpu`) where pip finds it on disk (`find-links`), for a Linux image."""
    import platform

    config = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
    ).stdout
    folders = re.findall(r"find-links='([^']*)'", config) + [os.environ.get("PIP_FIND_LINKS", "")]
    python = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for folder in (f for links in folders for f in links.split()):
        for wheel in sorted(Path(folder).glob(f"torch-{version}-{python}-{python}-*linux*_{platform.machine()}.whl")):
            return wheel
    return None


def image_context(context: Path, docker_params, gpu: bool) -> list[str]:
    """Edits BentoML's build context for this deploy: the base image, and torch's CPU build in a CPU image (PyPI's
    default torch is the CUDA build, gigabytes the image would never use). Returns what was changed, to print."""
    from importlib.metadata import version

    changes = []
    dockerfile = context / "env" / "docker" / "Dockerfile"
    text = dockerfile.read_text(encoding="utf-8")
    if docker_params.base_image:
        text, found = re.subn(
            r"^FROM \S+ AS base-container$",
            f"FROM {docker_params.base_image} AS base-container",
            text,
            count=1,
            flags=re.M,
        )
        if not found:  # a BentoML whose Dockerfile names its base otherwise: say so rather than build on another
            raise DeployRefused(
                f"BentoML's Dockerfile has no `FROM … AS base-container` line to set {docker_params.base_image} in"
            )
        changes.append(f"base image {docker_params.base_image}")
    requirements = context / "env" / "python" / "requirements.txt"
    lines = requirements.read_text(encoding="utf-8").splitlines()
    torch = version("torch")
    wheel = None if gpu else local_torch_wheel(torch)
    if wheel:
        # The wheel travels in the build context; uv reads a requirement's relative path from the requirements file.
        (requirements.parent / "wheels").mkdir(exist_ok=True)
        shutil.copy(wheel, requirements.parent / "wheels" / wheel.name)
        lines = [f"./wheels/{wheel.name}" if re.match(r"torch==", line) else line for line in lines]
        changes.append(f"torch from {wheel}")
    elif not gpu:
        lines.insert(0, f"--extra-index-url {docker_params.cpu_torch_index}")
        changes.append(f"torch from {docker_params.cpu_torch_index}")
    else:  # PyPI's torch bundles the CUDA runtime: the nodes need the NVIDIA driver and container toolkit only
        changes.append("torch from PyPI (its CUDA build) for a GPU image")
    requirements.write_text("\n".join(lines) + "\n", encoding="utf-8")
    dockerfile.write_text(text, encoding="utf-8")
    return changes


def docker(params, bento: str, version) -> dict:
    """Builds the champion's image with BentoML's Dockerfile (its build context, edited by `image_context`), tags it
    <repository>:v<version>, pushes it where `deploy.docker.registry` says; the image id and digest are recorded."""
    import bentoml
    from bentoml._internal.container import construct_containerfile

    settings = params.deploy.docker
    engine = docker_engine(settings.engine)
    image = image_name(params, bento, version)
    if engine is None:
        raise DeployRefused(
            f"no container engine answers here ({'docker or podman' if settings.engine == 'auto' else settings.engine}"
            " `info` failed): `make container-engine` installs podman from Debian, or build where one runs, from "
            f"this bento (`bentoml export {bento} bento.bentomodel` here, `bentoml import bento.bentomodel` there):"
            f"\n  bentoml containerize {bento} -t {image}"
        )
    gpu = params.serve.resources.gpu > 0
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}  # BuildKit fetches its Dockerfile frontend from Docker Hub
    started = time.monotonic()
    # BentoML's own build context (the bento, its models, the Dockerfile `bentoml containerize` would use).
    with construct_containerfile(bentoml.get(bento), enable_buildkit=False) as (context, dockerfile):
        for change in image_context(Path(context), settings, gpu):
            print(f"  {change}")
        build = [engine, "build", "-f", dockerfile, "-t", image, context]
        print("  " + " ".join(build), flush=True)
        if subprocess.run(build, env=env).returncode != 0:
            raise DeployRefused(f"`{engine} build` failed (its output is above); nothing was tagged {image}")
    built_s = round(time.monotonic() - started, 1)
    inspect = [engine, "image", "inspect", "--format", "{{.Id}} {{.Size}}", image]
    image_id, size = subprocess.run(inspect, capture_output=True, text=True, check=True).stdout.split()
    detail = {"image": image, "engine": engine, "id": image_id, "size_bytes": int(size), "build_s": built_s}
    if settings.registry:
        try:
            detail["digest"] = push(engine, image, settings.tls_verify)
        except subprocess.CalledProcessError:
            raise DeployRefused(
                f"{image} was built but `{engine} push` to {settings.registry} (`deploy.docker.registry`) failed: its "
                "output is above (a registry on plain HTTP needs `deploy.docker.tls_verify: false`)"
            ) from None
    return detail


def push(engine: str, image: str, tls_verify: bool) -> str:
    """Pushes the image; its digest in the registry (sha256:…), what a deployment pins."""
    import tempfile

    if engine == "podman":
        with tempfile.TemporaryDirectory() as tmp:
            digest_file = Path(tmp) / "digest"
            command = ["podman", "push", f"--tls-verify={str(tls_verify).lower()}", "--digestfile", str(digest_file)]
            subprocess.run([*command, image], check=True)
            return digest_file.read_text().strip()
    # docker trusts a registry on localhost over plain HTTP; other insecure ones go in the daemon's configuration
    subprocess.run(["docker", "push", image], check=True)
    digests = subprocess.run(
        ["docker", "image", "inspect", "--format", '{{join .RepoDigests " "}}', image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    repository = image.rsplit(":", 1)[0]
    return next(d.split("@", 1)[1] for d in digests if d.startswith(repository + "@"))


def bentocloud_credentials() -> bool:
    """A BentoCloud context from `bentoml cloud login`, or BENTO_CLOUD_API_KEY in the environment."""
    from bentoml._internal.cloud.config import CloudClientConfig
    from bentoml.exceptions import BentoMLException

    try:
        CloudClientConfig.get_config().get_context()
        return True
    except (BentoMLException, FileNotFoundError):
        return False


def bentocloud_command(params, bento: str, version) -> list[str]:
    cloud = params.deploy.bentocloud
    command = [
        bentoml_cli(),
        "deploy",
        bento,
        "--name",
        k8s_name(f"{params.project.name}-v{version.version}"),
        "--scaling-min",
        str(cloud.scaling_min),
        "--scaling-max",
        str(cloud.scaling_max),
        "--label",
        f"registry-version={version.version}",
    ]
    if cloud.instance_type:  # else BentoCloud picks one by the bento's resources (serve.resources)
        command += ["--instance-type", cloud.instance_type]
    return command


def bentocloud(params, bento: str, version) -> dict:
    command = bentocloud_command(params, bento, version)
    if not bentocloud_credentials():
        raise DeployRefused(
            "no BentoCloud credentials: run `bentoml cloud login` or set BENTO_CLOUD_API_KEY "
            "(and BENTO_CLOUD_API_ENDPOINT); nothing was uploaded"
        )
    subprocess.run(command, check=True)
    return {"deployment": command[command.index("--name") + 1]}


def bento_model_dir(bento: str) -> Path:
    """The folder of the model a bento serves, in BentoML's model store."""
    import bentoml

    info = bentoml.get(bento).info
    return Path(bentoml.models.get(info.models[0].tag).path)


def gguf(bento: str, version, out: Path, gguf_type: str) -> dict:
    """The champion as <name>-v<version>-<type>.gguf and an Ollama Modelfile in `out`. A bento of the openvino
    engine carries its GGUF file: at the same type it is copied as it is (the bytes that were evaluated and
    served), at another type it is written again from that file dequantized. A bento of the transformers engine
    carries the trained weights (a torchao/quanto precision is applied at start-up): written from them at
    `gguf_type`, llama.cpp's own quantization."""
    import shutil

    from stages.common import gguf_file as writer

    model_dir = bento_model_dir(bento)
    out.mkdir(parents=True, exist_ok=True)
    name = bento.split(":")[0]
    target = out / f"{name}-v{version.version}-{gguf_type}.gguf"
    shipped = json.loads((model_dir / "lifecycle.json").read_text(encoding="utf-8"))
    try:
        if shipped.get("file") and shipped.get("gguf_type") == gguf_type:
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(model_dir / shipped["file"], tmp)
            tmp.replace(target)
            written = {"file": str(target), "type": gguf_type, "bytes": target.stat().st_size, "as_served": True}
        elif shipped.get("file"):
            written = _rewritten(model_dir, shipped, target, gguf_type, f"{name} v{version.version}")
        else:
            written = writer.write(model_dir, target, gguf_type, f"{name} v{version.version}")
    except writer.GgufRefused as exc:
        raise DeployRefused(str(exc)) from None
    prompt = json.loads((model_dir / "prompt.json").read_text(encoding="utf-8"))
    (out / "Modelfile").write_text(
        writer.modelfile(target, prompt.get("chat", False), prompt["format"].get("stop") or []), encoding="utf-8"
    )
    return {**written, "chat": bool(prompt.get("chat")), "modelfile": str(out / "Modelfile")}


def _rewritten(model_dir: Path, shipped: dict, target: Path, gguf_type: str, name: str) -> dict:
    """The bento's GGUF file dequantized (weights.convert), then written at `gguf_type`; the tokenizer is the
    bento's own. From an F16 file that is the trained weights to 16 bits; from a quantized one, rounding twice."""
    import shutil
    import tempfile

    from stages.common import gguf_file as writer
    from stages.common.weights import convert

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        convert(model_dir / shipped["file"], folder)
        for f in model_dir.glob("*.json"):
            if f.name.startswith(("tokenizer", "special_tokens")) or f.name == "generation_config.json":
                shutil.copy(f, folder / f.name)
        written = writer.write(folder, target, gguf_type, name)
    return {**written, "from": f"the bento's {shipped['gguf_type']} file"}


def require_llama_cpp() -> None:
    """DeployRefused, before anything is written, when llama-cpp-python's server is not installed."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise DeployRefused(
            f"llama.cpp's server is not installed: `pip install '{LLAMA_CPP}'` (it compiles llama.cpp), or serve "
            "the GGUF file from `--target gguf` with any llama.cpp build (`llama-server -m FILE`) or Ollama "
            "(`ollama create NAME -f Modelfile`)"
        )


def llamacpp_command(gguf_file: str, host: str, port: int, chat: bool) -> list[str]:
    """llama-cpp-python's OpenAI-compatible server on the GGUF file."""
    command = [sys.executable, "-m", "llama_cpp.server", "--model", gguf_file, "--host", host, "--port", str(port)]
    return command + ([] if chat else ["--chat_format", "raw"])  # no chat template: the prompt as rendered


def k8s_name(text: str) -> str:
    """A DNS-1123 label (what Kubernetes accepts as a name)."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63] or "lifecycle"


def k8s_manifests(params, bento: str, version) -> dict[str, dict]:
    """Deployment (image, resources with GPU limits, probes on BentoML's /readyz and /livez, the API keys
    from a Secret by reference), Service and HorizontalPodAutoscaler for an on-prem cluster."""
    k, resources = params.deploy.k8s, params.serve.resources
    name = k8s_name(params.project.name)
    labels = {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/version": f"v{version.version}",
        "app.kubernetes.io/managed-by": "genai-lifecycle",
    }
    meta = {
        "name": name,
        "namespace": k.namespace,
        "labels": labels,
        "annotations": {"genai-lifecycle/bento": bento, "genai-lifecycle/registry-version": str(version.version)},
    }
    requests = {"cpu": resources.cpu, **({"memory": resources.memory} if resources.memory else {})}
    limits = {
        **({"memory": resources.memory} if resources.memory else {}),
        **({"nvidia.com/gpu": resources.gpu} if resources.gpu else {}),
    }
    container = {
        "name": "lifecycle",
        "image": image_name(params, bento, version),
        "ports": [{"name": "http", "containerPort": k.port}],
        "args": ["--port", str(k.port)],
        "resources": {"requests": requests, "limits": limits},
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "initialDelaySeconds": 10,
            "periodSeconds": 5,
            "failureThreshold": 6,
        },
        "livenessProbe": {
            "httpGet": {"path": "/livez", "port": "http"},
            "initialDelaySeconds": 30,
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
    }
    if k.api_key_secret:
        container["env"] = [
            {"name": "LIFECYCLE_API_KEYS", "valueFrom": {"secretKeyRef": {"name": k.api_key_secret, "key": "api-keys"}}}
        ]
    pod = {"containers": [container]}
    if resources.gpu:
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        if resources.gpu_type:
            pod["nodeSelector"] = {"nvidia.com/gpu.product": resources.gpu_type}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": k.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "selector": {"app.kubernetes.io/name": name},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": k.replicas,
            "maxReplicas": max(k.max_replicas, k.replicas),
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": k.target_cpu_percent},
                    },
                }
            ],
        },
    }
    return {"deployment.yaml": deployment, "service.yaml": service, "hpa.yaml": hpa}


def manifest_problems(manifests: dict[str, dict], kubernetes: str) -> list[str]:
    """What Kubernetes would refuse or silently misroute: each manifest against the official schema of that version
    (kubernetes-validate, strict: unknown fields too), then the cross-field rules a schema cannot state."""
    import kubernetes_validate
    from kubernetes_validate.utils import VersionNotSupportedError

    problems = []
    for file, manifest in manifests.items():
        try:
            kubernetes_validate.validate(manifest, kubernetes, strict=True)
        except VersionNotSupportedError:
            return [f"kubernetes-validate {kubernetes_validate.version} has no schemas for Kubernetes {kubernetes}"]
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            problems.append(f"{file}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(
                f"{file}: no schema for {manifest['apiVersion']} {manifest['kind']} in Kubernetes {kubernetes}"
            )
    deployment, service, hpa = (manifests[f] for f in ("deployment.yaml", "service.yaml", "hpa.yaml"))
    template = deployment["spec"]["template"]
    labels = template["metadata"].get("labels", {})
    for what, selector in (
        ("deployment.yaml: spec.selector.matchLabels", deployment["spec"]["selector"]["matchLabels"]),
        ("service.yaml: spec.selector", service["spec"]["selector"]),
    ):
        if not selector.items() <= labels.items():
            problems.append(f"{what} {selector} does not match the pod template's labels {labels}")
    containers = template["spec"]["containers"]
    served = {p.get("name") for c in containers for p in c.get("ports", [])}  # a port by its name or its number
    served |= {p["containerPort"] for c in containers for p in c.get("ports", [])}
    for c in containers:
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            port = c.get(probe, {}).get("httpGet", {}).get("port")
            if port is not None and port not in served:
                problems.append(f"deployment.yaml: container {c['name']} {probe} port {port!r} is not one it serves")
        for kind in ("requests", "limits"):
            gpus = c.get("resources", {}).get(kind, {}).get("nvidia.com/gpu")
            if gpus is not None and not re.fullmatch(r"[0-9]+", str(gpus)):
                problems.append(
                    f"deployment.yaml: container {c['name']} {kind} nvidia.com/gpu {gpus!r}: whole GPUs only"
                )
    target = service["spec"]["ports"][0]["targetPort"]
    if target not in served:
        problems.append(f"service.yaml: targetPort {target!r} is not a port the pods serve")
    ref = hpa["spec"]["scaleTargetRef"]
    if (ref["kind"], ref["name"]) != ("Deployment", deployment["metadata"]["name"]):
        problems.append(f"hpa.yaml: scaleTargetRef {ref['kind']}/{ref['name']} is not the Deployment written beside it")
    return problems


def kustomization(params, manifests: dict[str, dict]) -> dict:
    """How teams patch manifests per environment: `kustomize edit set image` (or an overlay) changes the image."""
    image = manifests["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]["image"]
    repository, tag = image.rsplit(":", 1)
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": params.deploy.k8s.namespace,
        "resources": list(manifests),
        "images": [{"name": repository, "newTag": tag}],
    }


def k8s(params, bento: str, version, out: Path, kustomize: bool = False) -> dict:
    """The manifests, checked as Kubernetes checks them, written to `out` whole or not at all; their digest (sha256
    over the files in order). `kustomize`: a kustomization.yaml beside them."""
    import tempfile

    import yaml

    objects = k8s_manifests(params, bento, version)
    problems = manifest_problems(objects, params.deploy.k8s.version)
    if problems:
        raise DeployRefused(
            f"the manifests would not pass Kubernetes {params.deploy.k8s.version} (`deploy.k8s.version`); "
            "nothing was written:\n  " + "\n  ".join(problems)
        )
    if kustomize:
        objects = {**objects, "kustomization.yaml": kustomization(params, objects)}
    manifests = {f: yaml.safe_dump(m, sort_keys=False) for f, m in objects.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    for f, text in manifests.items():
        (tmp / f).write_text(text, encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    digest = hashlib.sha256("".join(manifests[f] for f in sorted(manifests)).encode()).hexdigest()
    return {
        "manifests": str(out),
        "digest": f"sha256:{digest}",
        "image": image_name(params, bento, version),
        "kubernetes": params.deploy.k8s.version,
    }
