"""`lifecycle deploy --target local | docker | bentocloud | k8s`: the champion's bento to where it will run.

    lifecycle deploy --target local                 # serve on this machine (`lifecycle serve` is the short form)
    lifecycle deploy --target docker                # `bentoml containerize` to <image>:v<registry version>
    lifecycle deploy --target bentocloud            # `bentoml deploy` with params `deploy.bentocloud` and `serve.resources`
    lifecycle deploy --target k8s --out deploy/k8s  # Deployment, Service and HorizontalPodAutoscaler manifests

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

TARGETS = ("local", "docker", "bentocloud", "k8s")
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
    """<repository>:v<registry version>: the image says which registered version it holds."""
    return f"{params.deploy.image or bento.split(':')[0]}:v{version.version}"


def record(client, name: str, version, target: str, detail: dict) -> dict:
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **detail}
    client.set_model_version_tag(name, str(version.version), f"lifecycle.deploy.{target}", json.dumps(entry))
    return entry


# --- targets --------------------------------------------------------------------------------------------------


def local_command(bento: str, host: str, port: int) -> list[str]:
    return [bentoml_cli(), "serve", bento, "--host", host, "--port", str(port)]


def docker_engine_running() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def docker(params, bento: str, version) -> dict:
    image = image_name(params, bento, version)
    command = [bentoml_cli(), "containerize", bento, "-t", image]
    if not docker_engine_running():
        raise DeployRefused(
            "no Docker engine answers here (`docker info` failed): build the image where one runs, "
            f"from this bento (`bentoml export {bento} bento.bentomodel` here, "
            "`bentoml import bento.bentomodel` there):\n  bentoml " + " ".join(command[1:])
        )
    subprocess.run(command, check=True)
    digest = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", image], capture_output=True, text=True, check=True
    ).stdout.strip()
    return {"image": image, "digest": digest}


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


def k8s(params, bento: str, version, out: Path) -> dict:
    """The manifests, written to `out` whole or not at all; their digest (sha256 over the files in order)."""
    import tempfile

    import yaml

    manifests = {f: yaml.safe_dump(m, sort_keys=False) for f, m in k8s_manifests(params, bento, version).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    for f, text in manifests.items():
        (tmp / f).write_text(text, encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    digest = hashlib.sha256("".join(manifests[f] for f in sorted(manifests)).encode()).hexdigest()
    return {"manifests": str(out), "digest": f"sha256:{digest}", "image": image_name(params, bento, version)}
