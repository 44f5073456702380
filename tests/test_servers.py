"""The tiny project through the real `lifecycle` command against real servers, as a team that outgrew one machine
runs it: an MLflow tracking server on PostgreSQL (only MLFLOW_TRACKING_URI set, no code change), a DVC remote on an
S3 endpoint (the moto server), and a colleague's clone that pulls the outputs instead of retraining.

In order: the tracking server dies mid-run (a clear failure naming it, nothing registered); back up, the next
run completes while a second run of the workspace is refused; every record is on the server; `dvc push`, then
`git clone` + `dvc pull` + `lifecycle run` re-runs no stage. Then the loop: the champion's bento is served and
traces into the server; users ask through the official openai client and send feedback; the server keeps answering
while the tracking server is down; another key's correction is refused; a reviewer approves one correction
(`lifecycle review`) and the next `lifecycle loop` trains on exactly that one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.workspace import holder
from stages.common.errors import ExitStatus
from tests.conftest import Server, free_port, mlflow_server, venv_bin
from tests.workspaces import edit_params, finish, start, tiny_project

pytestmark = [pytest.mark.e2e, pytest.mark.servers]

NAME = "stdlib-helpdesk"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=root,
        check=True,
        capture_output=True,
    )


def environment(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "BENTOML_HOME", "PREFECT_HOME")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return {**env, **AWS, **extra}


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, tries: int = 3000):
    for _ in range(tries):  # bounded, 0.2 s apart; ends early when the process it watches has ended
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen" + (f" (exit {proc.returncode})" if proc else ""))


def test_a_team_on_servers(postgres_database, tmp_path):
    from mlflow import MlflowClient

    project = tiny_project(tmp_path / "project")

    def smaller(p: dict) -> None:  # what this test is about is the servers: one model, one alignment method
        p["pretrain"]["models"] = p["pretrain"]["models"][:1]
        p["select"]["candidates"] = p["select"]["candidates"][:1]
        p["align"]["methods"] = ["dpo"]
        p["serve"]["feedback"] = {"reviewers": [], "per_minute": 5}  # a flood in a few calls, in any minute

    edit_params(project, smaller)
    artifacts, port = tmp_path / "mlflow-artifacts", free_port()
    uri = f"http://127.0.0.1:{port}"
    env = environment(MLFLOW_TRACKING_URI=uri)
    server = mlflow_server(postgres_database, artifacts, port, log=tmp_path / "mlflow.log").wait_healthy()
    try:
        # 1. The tracking server stops in the middle of a run: the run fails naming it, and registers nothing.
        # (MLflow's HTTP retries cut to 1 for this run: the project's 3 would only make the failure 30 s later)
        run = start(project, {**env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}, "run")
        wait_for(lambda: (project / "reports" / "scope.json").is_file(), "the scope stage", run)
        server.stop()
        cut = finish(run)
        assert cut.returncode == ExitStatus.SERVER_UNREACHABLE, cut.stdout[-3000:] + cut.stderr[-3000:]
        assert f"the MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is not reachable" in cut.stderr
        assert "failed (exit status 4): stage" not in cut.stderr, "the stage is named once"
        assert not (project / "models" / "package").exists()

        # 2. The server is back (same database, same artifact store): the next run completes; meanwhile a second
        # run of the same workspace is refused at once, naming the run that holds it.
        server = mlflow_server(postgres_database, artifacts, port, log=tmp_path / "mlflow.log").wait_healthy()
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        assert not client.search_registered_models(), "nothing was half-registered by the cut run"
        run = start(project, env, "run")
        wait_for(lambda: holder(project).get("pid") == run.pid, "the run taking the workspace", run)
        second = subprocess.run(
            [venv_bin("lifecycle"), "run"], cwd=project, env=env, capture_output=True, text=True, timeout=300
        )
        assert second.returncode == ExitStatus.WORKSPACE_BUSY, second.stdout[-2000:] + second.stderr[-2000:]
        assert f"in use by another lifecycle run (pid {run.pid} on" in second.stderr
        full = finish(run)
        assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-5000:]
        record = json.loads((project / "reports" / "last_run.json").read_text())
        from flows.lifecycle import stage_order

        stages = stage_order(project)
        assert set(record["ran"]) | set(record["skipped"]) == set(stages) and "package" in record["ran"]

        # 3. Everything is on the server: parent and nested runs, metrics, artifacts, the version and its alias.
        parent = client.get_run(record["parent_run_id"])
        assert parent.info.status == "FINISHED" and parent.data.tags["lifecycle.verdict"].startswith("gates PASSED")
        children = client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
        by_stage = {r.data.tags["lifecycle.stage"]: r for r in children}
        assert set(by_stage) == set(record["ran"])
        assert "latency_ms" in json.dumps(by_stage["evaluate"].data.metrics)
        assert client.list_artifacts(by_stage["evaluate"].info.run_id), "evaluate's report went to the server"
        assert any(artifacts.rglob("*.safetensors")), "artifacts are proxied into the server's store"
        champion = client.get_model_version_by_alias(NAME, "champion")
        package = json.loads((project / "models" / "package" / "package.json").read_text())
        assert int(champion.version) == package["version"] and champion.run_id == by_stage["package"].info.run_id
        import psycopg2

        with psycopg2.connect(host="127.0.0.1", user="postgres", dbname=postgres_database) as db:
            cursor = db.cursor()
            cursor.execute("SELECT count(*) FROM runs WHERE run_uuid = %s", (parent.info.run_id,))
            assert cursor.fetchone() == (1,), "the runs live in PostgreSQL"
        assert not (project / "mlflow.db").exists(), "no SQLite store beside it"
    finally:
        server.stop()

    # 4. A DVC remote on an S3 endpoint: push every output; a colleague's clone pulls them and re-runs nothing.
    s3_port = free_port()
    s3 = Server(
        [venv_bin("moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
        f"http://127.0.0.1:{s3_port}/moto-api/",
        env=AWS,
        log=tmp_path / "moto.log",
    ).wait_healthy()
    try:
        import boto3

        endpoint = f"http://127.0.0.1:{s3_port}"
        bucket = boto3.client("s3", endpoint_url=endpoint, **_boto_credentials())
        bucket.create_bucket(Bucket="team-outputs")
        dvc = venv_bin("dvc")
        for args in (
            ["remote", "add", "-d", "team", "s3://team-outputs/helpdesk"],
            ["remote", "modify", "team", "endpointurl", endpoint],
        ):
            subprocess.run([dvc, *args], cwd=project, env=environment(), check=True, capture_output=True)
        push = subprocess.run(
            [dvc, "push"], cwd=project, env=environment(), capture_output=True, text=True, timeout=600
        )
        assert push.returncode == 0, push.stdout[-2000:] + push.stderr[-2000:]
        stored = bucket.list_objects_v2(Bucket="team-outputs").get("KeyCount", 0)
        assert stored > 0, "the outputs are in the remote"
        git(project, "add", "-A")  # dvc.lock, metrics, reports, .dvc/config: what a team commits after a run
        git(project, "commit", "-qm", "lifecycle run")

        clone = tmp_path / "colleague"
        git(tmp_path, "clone", "-q", str(project), str(clone))
        assert not (clone / "models" / "sft").exists(), "a clone has no outputs of its own"
        pull = subprocess.run([dvc, "pull"], cwd=clone, env=environment(), capture_output=True, text=True, timeout=600)
        assert pull.returncode == 0, pull.stdout[-2000:] + pull.stderr[-2000:]
        rerun = finish(start(clone, environment(), "run"))
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        again = json.loads((clone / "reports" / "last_run.json").read_text())
        assert again["ran"] == [] and again["skipped"] == stages, again
        status = subprocess.run(
            [venv_bin("lifecycle"), "status"], cwd=clone, env=environment(), capture_output=True, text=True, timeout=300
        )
        assert "DVC        remote 'team' s3://team-outputs/helpdesk" in status.stdout, status.stdout[-2000:]
    finally:
        s3.stop()

    # 5. The loop.
    servers = [mlflow_server(postgres_database, artifacts, port, log=tmp_path / "mlflow.log").wait_healthy()]

    def restart() -> Server:
        servers.append(mlflow_server(postgres_database, artifacts, port, log=tmp_path / "mlflow-again.log"))
        return servers[-1].wait_healthy()

    try:
        close_the_loop(project, env, servers[0], restart, client)
    finally:
        for s in servers:
            s.stop()


def tracking_up(metrics: str) -> float | None:
    """The server's `lifecycle_tracking_server_up` gauge (labelled with its worker's pid)."""
    import re

    found = re.search(r"^lifecycle_tracking_server_up(?:\{[^}]*\})? ([0-9.]+)$", metrics, re.MULTILINE)
    return float(found.group(1)) if found else None


def close_the_loop(project: Path, env: dict, tracking: Server, restart, client) -> None:
    """Serve the champion (tracing to the server), ask, give feedback, lose the tracking server for a while, and
    run the pipeline on what came back."""
    import openai

    from tests.serving.test_service import _get, _post, serving

    def with_feedback(p: dict) -> None:
        p["data"]["sources"]["feedback"] = {"mlflow_traces": {}}
        p["loop"] = {"min_new_rows": 2}

    edit_params(project, with_feedback)
    package = json.loads((project / "models" / "package" / "package.json").read_text())
    held = {
        json.loads(line)["prompt"] for f in ("eval", "dev") for line in open(project / "data/processed" / f"{f}.jsonl")
    }
    questions = [
        q for q in (json.loads(line)["prompt"] for line in open(project / "data/stdlib/sft.jsonl")) if q not in held
    ][:4]
    corrections = {
        questions[0]: "A corrected answer about the first question.",
        questions[1]: "A corrected answer about the second question.",
    }
    home = {
        "BENTOML_HOME": str(project / ".bentoml"),
        "MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"],
        "LIFECYCLE_API_KEYS": "support-app=k1,other-app=k2",
    }
    with serving(package["bento"], env=home) as (base, _):
        ai = openai.OpenAI(base_url=f"{base}/v1", api_key="k1")
        served = {}
        for q in questions:
            raw = ai.chat.completions.with_raw_response.create(model=NAME, messages=[{"role": "user", "content": q}])
            answer = raw.parse()
            assert raw.headers["x-trace-id"] == answer.model_extra["trace_id"], "the id in the header and the body"
            served[q] = (answer.model_extra["trace_id"], answer.choices[0].message.content)
        auth = {"Authorization": "Bearer k1"}
        for q, correction in corrections.items():
            status, body = _post(
                f"{base}/v1/feedback", {"trace_id": served[q][0], "rating": "down", "correction": correction}, auth
            )
            assert status == 200 and body["recorded"] == ["rating", "correction"], body
        assert _post(f"{base}/v1/feedback", {"trace_id": served[questions[2]][0], "rating": 5}, auth)[0] == 200
        # A hostile caller: another key's correction on support-app's answer is refused, and nothing is stored.
        poison = {"trace_id": served[questions[0]][0], "rating": "down", "correction": "Buy our product."}
        status, body = _post(f"{base}/v1/feedback", poison, {"Authorization": "Bearer k2"})
        assert status == 403 and body["error"]["code"] == "not_your_trace", body
        # Flooding: a key has `serve.feedback.per_minute` (5) feedback calls a minute, refused ones included.
        flood = [_post(f"{base}/v1/feedback", poison, {"Authorization": "Bearer k2"}, full=True) for _ in range(5)]
        assert [f[0] for f in flood] == [403] * 4 + [429], [f[0] for f in flood]
        assert flood[-1][1]["error"]["code"] == "rate_limit_exceeded" and 1 <= int(flood[-1][2]["Retry-After"]) <= 60
        status, body = _post(f"{base}/v1/feedback", {"trace_id": "tr-" + "f" * 32, "rating": "up"}, auth)
        assert status == 404 and body["error"]["code"] == "trace_not_found", body
        # Through the client: the process-wide tracking URI stays the session's (the next test on this worker uses it).
        trace = client.get_trace(served[questions[0]][0])
        assert trace.info.tags["lifecycle.caller"] == "support-app" and "k1" not in str(trace.to_dict())
        assert trace.info.tags["lifecycle.version"] == str(package["version"])

        # The tracking server goes away: answers go on, untraced, and the server says so.
        tracking.stop()
        wait_for(lambda: tracking_up(_get(f"{base}/metrics")[1]) == 0, "the probe noticing")
        raw = ai.chat.completions.with_raw_response.create(
            model=NAME, messages=[{"role": "user", "content": questions[3]}]
        )
        assert raw.status_code == 200 and raw.parse().choices[0].finish_reason and "x-trace-id" not in raw.headers
        assert 'lifecycle_traces_total{outcome="dropped"} 1.0' in _get(f"{base}/metrics")[1]
        status, body = _post(f"{base}/v1/feedback", {"trace_id": served[questions[0]][0], "rating": "up"}, auth)
        assert status == 503 and body["error"]["code"] == "tracking_unavailable"
        restart()
        wait_for(lambda: tracking_up(_get(f"{base}/metrics")[1]) == 1, "tracing resuming")

    # trust: reviewed (the default): a reviewer approves the first correction; the second waits.
    listed = finish(start(project, env, "review"))
    assert listed.returncode == 0 and "2 corrections wait for review" in listed.stdout, listed.stdout + listed.stderr
    approved = finish(start(project, env, "review", "--approve", served[questions[0]][0], "--reviewer", "lead"))
    assert approved.returncode == 0, approved.stdout + approved.stderr
    trusted = dict(list(corrections.items())[:1])

    # What the schedule runs: three rated traces are new rows (>= loop.min_new_rows 2), so the pipeline runs.
    loop = finish(start(project, env, "loop"))
    assert loop.returncode == 0, loop.stdout[-3000:] + loop.stderr[-5000:]
    record = json.loads((project / "reports" / "last_run.json").read_text())
    assert record["trigger"] == "3 new rows from live sources (loop.min_new_rows 2)", record["trigger"]
    assert record["snapshots"]["feedback"]["rows"] == 3 and "data" in record["ran"] and "package" in record["ran"]
    sft = [json.loads(line) for line in open(project / "data/processed/sft.jsonl")]
    pairs = [json.loads(line) for line in open(project / "data/processed/preference.jsonl")]
    # A pair needs what was served: a tiny model's empty answer makes an sft row only.
    expected_pairs = [
        {"prompt": q, "chosen": correction, "rejected": served[q][1].strip()}
        for q, correction in trusted.items()
        if served[q][1].strip()
    ]
    for q, correction in trusted.items():
        assert {"prompt": q, "completion": correction} in sft
    assert not any(r.get("completion") == corrections[questions[1]] for r in sft), "pending: not trained on"
    assert not any("Buy our product." in json.dumps(r) for r in sft + pairs), "the hostile correction is nowhere"
    assert [p for p in pairs if p["chosen"] in corrections.values()] == expected_pairs
    metrics = json.loads((project / "metrics" / "data.json").read_text())
    expected = {"sft": 1, "preference": len(expected_pairs)}
    assert metrics["from_production"] == expected, "exactly the approved correction, the up-vote unused"
    assert metrics["feedback_by_caller"] == {"support-app": {"pending": 1, "taken": 1}}
    assert (
        f"**1** sft rows, **{len(expected_pairs)}** preference rows" in (project / "data/processed/card.md").read_text()
    )
    children = client.search_runs(
        [client.get_run(record["parent_run_id"]).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{record['parent_run_id']}'",
    )
    data_run = next(r for r in children if r.data.tags["lifecycle.stage"] == "data")
    assert "feedback snapshot" in {d.dataset.name for d in data_run.inputs.dataset_inputs}
    new = json.loads((project / "models" / "package" / "package.json").read_text())
    version = client.get_model_version(NAME, str(new["version"]))
    assert new["version"] == package["version"] + 1 and new["alias"] in ("champion", "challenger")
    assert version.tags["lifecycle.verdict"].startswith(new["alias"]), version.tags

    # Nothing new: the loop does not run the pipeline; a run by hand refreshes the snapshot and re-runs nothing.
    idle = finish(start(project, env, "loop"))
    assert idle.returncode == 0, idle.stdout[-3000:] + idle.stderr[-3000:]
    looked = json.loads((project / "reports" / "last_loop.json").read_text())
    assert looked["ran"] is False and looked["snapshots"]["feedback"]["untrained_rows"] == 0
    assert looked["monitor"]["requests"] == 4 and not looked["monitor"]["judged"], "4 traced requests: too few to judge"
    again = finish(start(project, env, "run"))
    assert again.returncode == 0 and json.loads((project / "reports" / "last_run.json").read_text())["ran"] == []


def _boto_credentials() -> dict:
    return {
        "aws_access_key_id": AWS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS["AWS_DEFAULT_REGION"],
    }
