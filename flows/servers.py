"""Which servers the pipeline talks to, whether they answer, and the Prefect deployment for a team's workers.

Each tool reads its usual setting, nothing of ours (see `.env.example`):

    MLFLOW_TRACKING_URI   unset: sqlite:///mlflow.db in the project
    PREFECT_API_URL       unset: an ephemeral Prefect server started by `lifecycle run`
    DVC remote            `dvc remote add -d ...` in .dvc/config; none: the local cache only

    lifecycle status                                    # prints the three in use
    lifecycle deploy-flow --pool gpu                    # the lifecycle as a deployment on a work pool
    lifecycle work-pool-template --gpus 1 --image IMG   # a Kubernetes work pool's base job template
    lifecycle schedule --cron "0 3 * * *"               # PREFECT_API_URL unset: a local server that schedules
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from stages.common.errors import ProjectError
from stages.common.tracking import require_health, tracking_uri

ENTRYPOINT = "flows/lifecycle.py:lifecycle"  # the flow, relative to the project root


def prefect_api() -> str | None:
    """PREFECT_API_URL from the environment or Prefect's profile; None: the ephemeral server."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def dvc_remote(root: str | Path = ".") -> tuple[str, str] | None:
    """The default DVC remote (name, url), or None when outputs live in the local cache only."""
    from dvc.config import Config

    config = Config(dvc_dir=Path(root) / ".dvc")  # .dvc/config with config.local over it
    name = config["core"].get("remote")
    return (name, config["remote"][name]["url"]) if name else None


def in_use(root: str | Path = ".") -> list[tuple[str, str]]:
    """(tool, what it uses) for `lifecycle status`."""
    api = prefect_api()
    remote = dvc_remote(root)
    return [
        ("MLflow", tracking_uri() + ("" if os.environ.get("MLFLOW_TRACKING_URI") else "  (embedded default)")),
        ("Prefect", api or "ephemeral server started by each `lifecycle run`  (embedded default)"),
        ("DVC", f"remote '{remote[0]}' {remote[1]}" if remote else "no remote: the local cache .dvc/cache only"),
    ]


def check_prefect(timeout: float = 5.0) -> None:
    api = prefect_api()
    if not api:
        return
    require_health(
        "Prefect",
        api,
        "PREFECT_API_URL",
        "Start it (`prefect server start`), or unset PREFECT_API_URL to run on an ephemeral server.",
        timeout,
    )


def deploy_flow(source: str, pool: str, name: str = "lifecycle", schedule=None):
    """Register the lifecycle flow as a deployment on `pool`; returns the deployment id. `source` is where a
    worker finds the project: this checkout's folder (a process worker on this machine) or the team's git URL (a
    worker that clones it, e.g. in a Kubernetes pod). Either way the flow runs with the project as its working
    directory (the deployment's pull step), so its `root` is "."; `schedule`: a Prefect schedule, or None."""
    from flows.lifecycle import lifecycle

    if "://" not in source and not source.endswith(".git"):
        source = str(Path(source).resolve())
        if not (Path(source) / ENTRYPOINT.split(":")[0]).is_file():
            raise ProjectError(
                [
                    f"--source {source}: no {ENTRYPOINT.split(':')[0]} there; run from the project "
                    "root or pass the project's folder or git URL"
                ]
            )
    flow = lifecycle.from_source(source=source, entrypoint=ENTRYPOINT)
    return flow.deploy(
        name=name,
        work_pool_name=pool,
        parameters={"root": "."},
        schedules=[schedule] if schedule else None,
        build=False,
        push=False,
        print_next_steps=False,
    )


def kubernetes_base_job_template(
    image: str, gpus: int, gpu_resource: str = "nvidia.com/gpu", namespace: str = "default"
) -> dict:
    """Prefect's Kubernetes worker template (from prefect-kubernetes) with the team's image and GPU requests:
    `prefect work-pool create gpu --type kubernetes --base-job-template FILE`. GPU pods also tolerate the
    usual GPU-node taint, so they schedule on the GPU nodes of a cluster that reserves them."""
    from prefect_kubernetes.worker import KubernetesWorker

    template = KubernetesWorker.get_default_base_job_template()
    variables = template["variables"]["properties"]
    variables["image"]["default"] = image
    variables["namespace"]["default"] = namespace
    variables["gpu_count"] = {
        "title": "GPUs",
        "type": "integer",
        "minimum": 0,
        "default": gpus,
        "description": f"`{gpu_resource}` requested and limited per flow-run pod",
    }
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    if gpus:
        container["resources"]["limits"][gpu_resource] = "{{ gpu_count }}"
        container["resources"]["requests"][gpu_resource] = "{{ gpu_count }}"
        pod["tolerations"] = [{"key": gpu_resource, "operator": "Exists", "effect": "NoSchedule"}]
    return template


def start_prefect_server(port: int) -> tuple[subprocess.Popen, str]:
    """A local Prefect server with its scheduler service: the ephemeral server `lifecycle run` uses does not
    run the scheduler, so a schedule on it would never fire."""
    import urllib.request

    url = f"http://127.0.0.1:{port}/api"
    proc = subprocess.Popen(  # noqa: S603 - an argv list, no shell: our own command
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    for _ in range(240):  # bounded: up to ~2 min for the first start (it migrates the database)
        if proc.poll() is not None:
            raise RuntimeError(f"`prefect server start` exited with {proc.returncode}; is port {port} free?")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):  # noqa: S310 - http(s) of a server we run or the user configured
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"the Prefect server on {url} did not become healthy in 2 minutes")


@contextlib.contextmanager
def scheduling_prefect(port: int) -> Iterator[tuple[str, bool]]:
    """(API URL, started here) for `lifecycle schedule`: PREFECT_API_URL when the environment sets it, else a local
    server with its scheduler on `port` (start_prefect_server), stopped when the block ends."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        yield url, False
        return
    server, url = start_prefect_server(port)
    try:
        yield url, True
    finally:
        server.terminate()
        server.wait(timeout=30)
