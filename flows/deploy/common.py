"""What every deploy target shares: the refusal, the scope's rules, the champion, the record on the registry.

    lifecycle deploy --target k8s     # refused here, before anything is written, when there is no champion

Only the registry's `champion` deploys (a model that failed its gates was never registered, and a challenger
waits for `lifecycle promote`). The target must agree with the scope: an on-prem project or one with personal
data never goes to a SaaS platform. Every deploy is a tag on the model version, `lifecycle.deploy.<target>`.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SAAS_TARGETS = {"bentocloud"}  # the model and every request leave the team's infrastructure


class DeployRefused(Exception):
    """A deploy that cannot or must not happen; the message says why and what to do."""


@dataclass(frozen=True)
class Options:
    """What `lifecycle deploy` passes on; each target reads its own (each option's --help names its targets)."""

    host: str
    port: int
    out: str | None  # None: the target's own folder (deploy/k8s, deploy/gguf)
    gguf_type: str | None
    format: str | None


@dataclass
class Deployed:
    """What a target did: `detail` is recorded on the model version; `server`, for a target that serves here
    (local, llamacpp), is the command this process becomes; `said` is what to tell the user."""

    detail: dict
    server: list[str] | None = None
    said: list[str] = field(default_factory=list)


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


def k8s_name(text: str) -> str:
    """A DNS-1123 label (what Kubernetes accepts as a name)."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63] or "lifecycle"


def record(client, name: str, version, target: str, detail: dict) -> dict:
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **detail}
    client.set_model_version_tag(name, str(version.version), f"lifecycle.deploy.{target}", json.dumps(entry))
    return entry
