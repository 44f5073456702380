"""The `k8s` target: Deployment, Service, HorizontalPodAutoscaler (and a NetworkPolicy if asked) manifests for the
champion's image, checked against Kubernetes' own schemas and written whole or not at all.

    lifecycle deploy --target k8s --out deploy/k8s [--format kustomize]
    kubectl apply -f deploy/k8s          # the image from `lifecycle deploy --target docker` with deploy.docker.registry
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from flows.deploy.common import Deployed, DeployRefused, Options, image_name, k8s_name

OUT = "deploy/k8s"  # where the manifests go without --out


# BentoML's image runs as this user (its Dockerfile's `bentoml`, uid and gid 1034, home /home/bentoml/).
BENTO_UID = 1034


# A read-only root: what the server writes goes to an emptyDir at /tmp (BentoML's metrics folder under its home,
# the engine's GGUF file and its copy, which OpenVINO opens for writing too, caches); the container test runs the
# image this way (podman --read-only).
WRITABLE = "/tmp"  # noqa: S108 - an emptyDir of the pod's own, not a shared /tmp
WRITABLE_ENV = {
    "HOME": WRITABLE,  # OpenVINO's telemetry file
    "BENTOML_HOME": f"{WRITABLE}/bentoml",  # its metrics folder
    "HF_HOME": f"{WRITABLE}/huggingface",
    "XDG_CACHE_HOME": f"{WRITABLE}/cache",
}
KEYS_DIR = "/var/run/secrets/lifecycle"  # the API keys' Secret as a file (LIFECYCLE_API_KEYS_FILE), not an env var


def security_contexts() -> tuple[dict, dict]:
    """The pod's and the container's securityContext for the Pod Security Standards' `restricted` profile (what
    on-prem clusters enforce in tenant namespaces), with a read-only root filesystem."""
    pod = {
        "runAsNonRoot": True,
        "runAsUser": BENTO_UID,
        "runAsGroup": BENTO_UID,
        "fsGroup": BENTO_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
    }
    return pod, container


def scanner_skips(params, image: str) -> dict[str, str]:
    """checkov's checks these manifests do not meet, each with its reason, as the annotations checkov reads
    (`checkov.io/skipN: CHECK=reason`); tests/flows/test_deploy.py runs checkov and allows only these."""
    skips = {
        "CKV_K8S_40": f"BentoML's image runs as its own user, uid {BENTO_UID}, who owns the bento: a uid of 10000 "
        "or more could not read it",
    }
    if "@sha256:" not in image:
        skips["CKV_K8S_43"] = (
            "the image is pinned by its version tag; its digest is used once `lifecycle deploy --target docker` "
            "with a registry has recorded one on the model version"
        )
    if params.deploy.k8s.namespace == "default":
        skips["CKV_K8S_21"] = "deploy.k8s.namespace is `default`: set the tenant namespace the pods belong to"
    return {f"checkov.io/skip{i}": f"{check}={why}" for i, (check, why) in enumerate(sorted(skips.items()), 1)}


def pinned_image(params, bento: str, version) -> str:
    """The image by tag, and by digest too (`repository:tag@sha256:…`) when the docker deploy pushed it and recorded
    its digest on this model version."""
    import json

    image = image_name(params, bento, version)
    recorded = json.loads((getattr(version, "tags", None) or {}).get("lifecycle.deploy.docker", "{}"))
    if recorded.get("image") == image and recorded.get("digest"):
        return f"{image}@{recorded['digest']}"
    return image


def k8s_manifests(params, bento: str, version) -> dict[str, dict]:
    """Deployment (image, resources with GPU limits, probes on BentoML's /readyz and /livez, the API keys
    from a Secret as a file, the `restricted` security profile with a read-only root), Service, HorizontalPodAutoscaler and, with
    `deploy.k8s.network_policy`, a NetworkPolicy for an on-prem cluster."""
    k, resources = params.deploy.k8s, params.serve.resources
    name = k8s_name(params.project.name)
    labels = {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/version": f"v{version.version}",
        "app.kubernetes.io/managed-by": "genai-lifecycle",
    }
    image = pinned_image(params, bento, version)
    meta = {
        "name": name,
        "namespace": k.namespace,
        "labels": labels,
        "annotations": {
            "genai-lifecycle/bento": bento,
            "genai-lifecycle/registry-version": str(version.version),
            **scanner_skips(params, image),
        },
    }
    requests = {"cpu": resources.cpu, **({"memory": resources.memory} if resources.memory else {})}
    limits = {
        "cpu": resources.cpu,  # what was asked is the ceiling too: a noisy neighbour cannot starve the node
        **({"memory": resources.memory} if resources.memory else {}),
        **({"nvidia.com/gpu": resources.gpu} if resources.gpu else {}),
    }
    container = {
        "name": "lifecycle",
        "image": image,
        "imagePullPolicy": "Always",  # a re-pushed tag is pulled again, never an older copy on the node
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
    env = {"PYTHONDONTWRITEBYTECODE": "1", **WRITABLE_ENV}  # nothing written beside the code
    volumes = [{"name": "writable", "emptyDir": {"sizeLimit": "4Gi"}}]
    container["volumeMounts"] = [{"name": "writable", "mountPath": WRITABLE}]
    if k.api_key_secret:  # a file, not an env var: it stays out of `kubectl describe` and crash dumps
        env["LIFECYCLE_API_KEYS_FILE"] = f"{KEYS_DIR}/api-keys"
        volumes.append(
            {
                "name": "api-keys",
                "secret": {"secretName": k.api_key_secret, "items": [{"key": "api-keys", "path": "api-keys"}]},
            }
        )
        container["volumeMounts"].append({"name": "api-keys", "mountPath": KEYS_DIR, "readOnly": True})
    container["env"] = [{"name": n, "value": v} for n, v in env.items()]
    pod_security, container["securityContext"] = security_contexts()
    pod = {
        "securityContext": pod_security,
        "automountServiceAccountToken": False,  # the server never calls the Kubernetes API
        "containers": [container],
        "volumes": volumes,
    }
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
    manifests = {"deployment.yaml": deployment, "service.yaml": service, "hpa.yaml": hpa}
    if k.network_policy is not None:
        manifests["networkpolicy.yaml"] = network_policy(k.network_policy, meta)
    return manifests


def network_policy(policy, meta: dict) -> dict:
    """Ingress to the pods' http port from the namespaces and pods `policy` lists (the same namespace's pods when
    it lists neither); a cluster whose network plugin enforces NetworkPolicy drops the rest."""
    peers = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}} for ns in policy.from_namespaces
    ]
    if policy.from_pods:
        peers.append({"podSelector": {"matchLabels": dict(policy.from_pods)}})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta,
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": meta["name"]}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers or [{"podSelector": {}}], "ports": [{"port": "http", "protocol": "TCP"}]}],
        },
    }


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
    problems += [f"deployment.yaml: {p}" for p in restricted_problems(template["spec"])]
    if policy := manifests.get("networkpolicy.yaml"):
        selected = policy["spec"]["podSelector"]["matchLabels"]
        if not selected.items() <= labels.items():
            problems.append(f"networkpolicy.yaml: spec.podSelector {selected} does not match the pod template's labels")
        for rule in policy["spec"].get("ingress", []):
            problems += [
                f"networkpolicy.yaml: ingress port {p['port']!r} is not a port the pods serve"
                for p in rule.get("ports", [])
                if p["port"] not in served
            ]
    target = service["spec"]["ports"][0]["targetPort"]
    if target not in served:
        problems.append(f"service.yaml: targetPort {target!r} is not a port the pods serve")
    ref = hpa["spec"]["scaleTargetRef"]
    if (ref["kind"], ref["name"]) != ("Deployment", deployment["metadata"]["name"]):
        problems.append(f"hpa.yaml: scaleTargetRef {ref['kind']}/{ref['name']} is not the Deployment written beside it")
    return problems


RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_problems(pod: dict) -> list[str]:
    """What the Pod Security Standards' `restricted` profile (Kubernetes' documented rules, as its admission
    controller checks them) refuses in a pod spec."""
    out, ctx = [], pod.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(f"{key}: true is not allowed")
    for v in pod.get("volumes", []):
        if not set(v) - {"name"} <= RESTRICTED_VOLUMES:
            out.append(f"volume {v['name']}: only {sorted(RESTRICTED_VOLUMES)} volumes are allowed")
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        cc, name = c.get("securityContext", {}), f"container {c['name']}"
        if not cc.get("runAsNonRoot", ctx.get("runAsNonRoot")):
            out.append(f"{name}: securityContext.runAsNonRoot must be true")
        if cc.get("runAsUser", ctx.get("runAsUser")) == 0:
            out.append(f"{name}: runAsUser 0 (root) is not allowed")
        if cc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: securityContext.allowPrivilegeEscalation must be false")
        if cc.get("privileged"):
            out.append(f"{name}: securityContext.privileged is not allowed")
        caps = cc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            out.append(f"{name}: securityContext.capabilities.drop must hold ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities.add beyond NET_BIND_SERVICE: {sorted(set(caps['add']))}")
        seccomp = cc.get("seccompProfile", ctx.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile.type must be RuntimeDefault or Localhost, not {seccomp}")
    return out


def kustomization(params, manifests: dict[str, dict]) -> dict:
    """How teams patch manifests per environment: `kustomize edit set image` (or an overlay) changes the image."""
    image = manifests["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]["image"]
    reference, _, digest = image.partition("@")
    repository, tag = reference.rsplit(":", 1)
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": params.deploy.k8s.namespace,
        "resources": list(manifests),
        "images": [{"name": repository, "newTag": tag, **({"digest": digest} if digest else {})}],
    }


def write(params, bento: str, version, out: Path, kustomize: bool = False) -> dict:
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


def deploy(params, bento: str, version, options: Options) -> Deployed:
    """The manifests, and how to apply them: the Secret the pods read their API keys from, `kubectl apply`."""
    out = options.out or OUT
    kustomize = options.format == "kustomize"
    detail = write(params, bento, version, Path(out), kustomize=kustomize)
    said = []
    secret = params.deploy.k8s.api_key_secret
    if secret:  # never written: the keys are the operator's, not the repository's
        said.append(
            f"the pods read their API keys from Secret {secret} (not written here); create it first:\n"
            f"  kubectl -n {params.deploy.k8s.namespace} create secret generic {secret} --from-literal=api-keys=…"
        )
    said.append(
        f"apply with: {'kubectl apply -k' if kustomize else 'kubectl apply -f'} {out}  (image {detail['image']}: build "
        "and push it with `lifecycle deploy --target docker` and `deploy.docker.registry`)"
    )
    return Deployed(detail, said=said)
