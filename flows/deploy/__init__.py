"""`lifecycle deploy --target local | docker | bentocloud | k8s | gguf | llamacpp`: the champion's bento to where it runs.

    lifecycle deploy --target local                 # serve on this machine (`lifecycle serve` is the short form)
    lifecycle deploy --target docker                # the bento's image (docker or podman), [pushed] as <image>:v<version>
    lifecycle deploy --target bentocloud            # `bentoml deploy` with params `deploy.bentocloud` and `serve.resources`
    lifecycle deploy --target k8s --out deploy/k8s  # Deployment, Service and HorizontalPodAutoscaler manifests,
                                                    # validated against Kubernetes' schemas (`--format kustomize`)
    lifecycle deploy --target gguf --out deploy/gguf  # a GGUF file (--gguf-type Q8_0) and a Modelfile: llama.cpp, Ollama
    lifecycle deploy --target llamacpp              # that file served by llama.cpp's OpenAI-compatible server

One module per target; what they share (the refusal, the scope's rules, the champion, the record) is in
`common`. Only the registry's `champion` deploys, to a target the scope allows, and every deploy is a tag on the
model version, `lifecycle.deploy.<target>`, holding when, and the image or the manifests' digest.
"""

from __future__ import annotations

from collections.abc import Callable

from flows.deploy import bentocloud, docker, gguf, k8s, llamacpp, local
from flows.deploy.common import Deployed, DeployRefused, Options, champion, check_scope, record

__all__ = ["DEPLOYERS", "TARGETS", "Deployed", "DeployRefused", "Options", "deploy"]

# Each target's function: (params, bento, registry version, Options) -> Deployed. A new target is a module and a row.
DEPLOYERS: dict[str, Callable[..., Deployed]] = {
    "local": local.deploy,
    "docker": docker.deploy,
    "bentocloud": bentocloud.deploy,
    "k8s": k8s.deploy,
    "gguf": gguf.deploy,
    "llamacpp": llamacpp.deploy,
}
TARGETS = tuple(DEPLOYERS)


def deploy(target: str, params, client, options: Options) -> Deployed:
    """The champion to `target`, recorded on its model version; DeployRefused, before anything leaves, when the
    scope forbids the target, there is no champion, or the target cannot run here. A target that serves here
    returns the server for the caller to become; any other has finished, and its first line says what it made."""
    name = params.project.name
    check_scope(params, target)
    version, bento = champion(client, name)
    done = DEPLOYERS[target](params, bento, version, options)
    record(client, name, version, target, {"bento": bento, **done.detail})
    if done.server is None:
        done.said.insert(
            0,
            f"{name} v{version.version} (@champion) deployed to {target}: "
            + ", ".join(f"{k} {v}" for k, v in done.detail.items()),
        )
    return done
