"""The pipeline against real servers started here on 127.0.0.1 (and stopped by PID): a Prefect server on PostgreSQL
with a process worker running the lifecycle deployment, a tracking server that does not answer, the Kubernetes
work pool's template accepted by that server and rendered by prefect-kubernetes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stages.common.errors import ExitStatus
from tests.conftest import REPO, Server, free_port, prefect_server, tiny_params_dict, venv_bin, write_params
from tests.flows.test_workspace import holding

pytestmark = pytest.mark.servers

# A stage that crashes on its first attempt and succeeds on the retry (a real process exit, not a mock).
CRASH_ONCE = (
    "import os, sys; first = not os.path.exists('attempted'); open('attempted', 'a').close(); "
    "sys.exit(1) if first else open('scoped', 'w').write('x')"
)


def toy_project(root: Path) -> Path:
    """A real DVC + git project with the default params and two quick stages; `scope` crashes once."""
    root.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    p = tiny_params_dict(root)
    p["orchestration"].update(retries=1, retry_delay_seconds=[1])
    write_params(root, p)
    (root / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "scope": {"cmd": f'{sys.executable} -c "{CRASH_ONCE}"', "outs": ["scoped"]},
                    "data": {
                        "cmd": f"{sys.executable} -c \"open('data', 'w').write('x')\"",
                        "deps": ["scoped"],
                        "outs": ["data"],
                    },
                }
            }
        )
    )
    return root


def cli(root: Path, env: dict, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [venv_bin("lifecycle"), *args],
        cwd=root,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def prefect_api(postgres_database, tmp_path):
    port = free_port()
    server = prefect_server(postgres_database, tmp_path / "prefect-server", port, log=tmp_path / "prefect.log")
    try:
        server.wait_healthy()
        yield f"http://127.0.0.1:{port}/api"
    finally:
        server.stop()


def test_a_worker_runs_the_deployment_retries_a_crash_and_honours_the_workspace_lock(prefect_api, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    project = toy_project(tmp_path / "project")
    shutil.copytree(REPO / "flows", project / "flows")  # a checkout of this repository: the flow's source is there
    env = {
        "PREFECT_API_URL": prefect_api,
        "PREFECT_HOME": str(tmp_path / "prefect-client"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    pool = subprocess.run(
        [venv_bin("prefect"), "work-pool", "create", "lifecycle-test", "--type", "process"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deployed = cli(project, env, "deploy-flow", "--pool", "lifecycle-test")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "deployment 'lifecycle/lifecycle'" in deployed.stdout and prefect_api in deployed.stdout

    health = free_port()
    worker = Server(
        [venv_bin("prefect"), "worker", "start", "--pool", "lifecycle-test", "--with-healthcheck"],
        f"http://127.0.0.1:{health}/health",
        cwd=project,
        log=tmp_path / "worker.log",
        env={
            **env,
            "PREFECT_HOME": str(tmp_path / "prefect-worker"),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
            "PREFECT_WORKER_WEBSERVER_PORT": str(health),
        },
    )
    try:
        worker.wait_healthy()
        with temporary_settings({PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("lifecycle/lifecycle")

            def final_state(run_id):
                for _ in range(300):  # bounded: the worker polls every second; a flow run process starts in ~10 s
                    state = client.read_flow_run(run_id).state
                    if state.is_final():
                        return state
                    time.sleep(1)
                return state

            run = client.create_flow_run_from_deployment(deployment.id)  # as the UI's "Run" button does
            state = final_state(run.id)
            log = (tmp_path / "worker.log").read_text(errors="replace")
            assert state.is_completed(), f"{state.type}: {state.message}\n{log[-4000:]}"
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            attempts = {t.name.split("-")[0]: t.run_count for t in tasks}
            # scope crashed once, Prefect retried it; the snapshot task (no live sources here) ran once, first
            assert attempts == {"snapshot": 1, "scope": 2, "data": 1}, attempts
            record = json.loads((project / "reports" / "last_run.json").read_text())
            assert record["ran"] == ["scope", "data"] and record["exit_status"] == 0

            # Another run holds the workspace: the worker's run is refused, naming it (orchestration.on_busy:
            # fail) ... or queues behind it until it ends (on_busy: wait).
            with holding(project) as other:
                refused = final_state(client.create_flow_run_from_deployment(deployment.id).id)
                assert refused.is_failed() and f"in use by another lifecycle run (pid {other.pid} on" in refused.message
                params = yaml.safe_load((project / "params.yaml").read_text())
                params["orchestration"]["on_busy"] = "wait"
                (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
                queued = client.create_flow_run_from_deployment(deployment.id)
                waiting = f"waiting for the workspace {project.resolve()}, held by pid {other.pid}"
                for _ in range(300):  # bounded: until the queued run says it waits
                    if waiting in (tmp_path / "worker.log").read_text(errors="replace"):
                        break
                    time.sleep(0.5)
                assert not client.read_flow_run(queued.id).state.is_final(), "it waits while the other holds"
            assert final_state(queued.id).is_completed()
    finally:
        worker.stop()
    assert waiting in (tmp_path / "worker.log").read_text(errors="replace")
    assert json.loads((project / "reports" / "last_run.json").read_text())["ran"] == [], "up to date after the wait"


def test_the_kubernetes_work_pool_template(prefect_api, tmp_path):
    """Generated for a GPU cluster; the Prefect server accepts it as a kubernetes pool; prefect-kubernetes renders
    a Job that requests the GPUs (the cluster itself is not here)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    out = tmp_path / "template.json"
    made = cli(
        tmp_path, {}, "work-pool-template", "--image", "registry.example/helpdesk:1", "--gpus", "2", "--out", str(out)
    )
    assert made.returncode == 0, made.stderr
    template = json.loads(out.read_text())
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(tmp_path / "prefect-client")}
    created = subprocess.run(
        [venv_bin("prefect"), "work-pool", "create", "gpu", "--type", "kubernetes", "--base-job-template", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        with get_client(sync_client=True) as client:
            assert client.read_work_pool("gpu").base_job_template == template
        # What the Kubernetes worker does with it per flow run: the pool's defaults, then a deployment's override.
        configs = [
            (asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values)), gpus)
            for values, gpus in (({}, 2), ({"gpu_count": 4}, 4))
        ]
    for config, gpus in configs:
        pod = config.job_manifest["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["image"] == "registry.example/helpdesk:1"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_a_tracking_server_that_does_not_answer_stops_the_run_before_any_stage(tmp_path):
    project = toy_project(tmp_path / "project")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = cli(project, {"MLFLOW_TRACKING_URI": uri}, "run")
    assert out.returncode == ExitStatus.SERVER_UNREACHABLE, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"the MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is not reachable" in out.stderr
    assert "Traceback" not in out.stderr and not (project / "attempted").exists(), "no stage started"


def test_a_prefect_server_that_does_not_answer_is_named(tmp_path):
    project = toy_project(tmp_path / "project")
    api = f"http://127.0.0.1:{free_port()}/api"
    out = cli(project, {"PREFECT_API_URL": api}, "run")
    assert (
        out.returncode == ExitStatus.SERVER_UNREACHABLE and f"the Prefect server {api} (PREFECT_API_URL)" in out.stderr
    )
    assert not (project / "attempted").exists()


def test_status_names_the_servers_in_use(tmp_path):
    project = toy_project(tmp_path / "project")
    subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "add", "-d", "team", "s3://bucket/lifecycle"], cwd=project, check=True
    )
    env = {"MLFLOW_TRACKING_URI": "http://mlflow.internal:5000", "PREFECT_API_URL": "http://prefect.internal:4200/api"}
    out = cli(project, env, "status")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "MLflow     http://mlflow.internal:5000" in out.stdout
    assert "Prefect    http://prefect.internal:4200/api" in out.stdout
    assert "DVC        remote 'team' s3://bucket/lifecycle" in out.stdout
    plain = cli(project, {"MLFLOW_TRACKING_URI": "", "PREFECT_API_URL": ""}, "status")
    assert "(embedded default)" in plain.stdout and "ephemeral server" in plain.stdout
