"""The `bentocloud` target: `bentoml deploy` of the champion's bento to BentoCloud, with params `deploy.bentocloud`.

    lifecycle deploy --target bentocloud     # after `bentoml cloud login` (or BENTO_CLOUD_API_KEY)

A SaaS platform: refused for an on-prem project or one with personal data (common.check_scope).
"""

from __future__ import annotations

import subprocess

from flows.deploy.common import Deployed, DeployRefused, Options, bentoml_cli, k8s_name


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


def deploy(params, bento: str, version, options: Options) -> Deployed:
    command = bentocloud_command(params, bento, version)
    if not bentocloud_credentials():
        raise DeployRefused(
            "no BentoCloud credentials: run `bentoml cloud login` or set BENTO_CLOUD_API_KEY "
            "(and BENTO_CLOUD_API_ENDPOINT); nothing was uploaded"
        )
    subprocess.run(command, check=True)  # noqa: S603 - an argv list, no shell: our own command
    return Deployed({"deployment": command[command.index("--name") + 1]})
