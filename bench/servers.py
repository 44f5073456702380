"""Servers benchmark: what a team's servers cost or save against the embedded defaults, side by side in one run.

    make bench-servers        # or: .venv/bin/python bench/servers.py [--repeats 3]

On the tiny project (the test suite's settings, a fresh copy of the repository each):
  1. tracking: a full `lifecycle run` tracked into SQLite in the project vs into an `mlflow server` on PostgreSQL
     (artifacts proxied by the server), each in its own fresh copy: the ratio of wall times;
  2. orchestration: a no-op `lifecycle run` (every stage up to date) on Prefect's ephemeral server, which each run
     starts, vs against a running `prefect server` on PostgreSQL (PREFECT_API_URL): the start-up the server saves.
PostgreSQL must run on 127.0.0.1:5432 (trust authentication). The machine is shared and noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import free_port, mlflow_server, new_postgres_database, prefect_server, venv_bin  # noqa: E402
from tests.test_servers import environment, tiny_project  # noqa: E402  (the servers test's tiny project)


def run(project: Path, env: dict) -> float:
    start = time.perf_counter()
    out = subprocess.run([venv_bin("lifecycle"), "run"], cwd=project, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"lifecycle run failed ({out.returncode}) in {project}:\n{out.stderr[-4000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="no-op runs per Prefect setting (median reported)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-servers-"))
    print(f"{platform.machine()}, {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}; work in {work}")

    with new_postgres_database("lifecycle_bench") as mlflow_db, new_postgres_database("lifecycle_bench") as prefect_db:
        port = free_port()
        tracking = mlflow_server(mlflow_db, work / "mlflow-artifacts", port, log=work / "mlflow.log").wait_healthy()
        try:
            sqlite = run(tiny_project(work / "sqlite"), environment())
            server = run(tiny_project(work / "server"), environment(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}"))
        finally:
            tracking.stop()
        print(f"\n1. full tiny run, tracked into SQLite:                  {sqlite:7.1f} s")
        print(f"   full tiny run, tracked into mlflow server/PostgreSQL: {server:7.1f} s")
        print(f"   tracking server / SQLite:                             {server / sqlite:7.3f}")

        api_port = free_port()
        orchestrator = prefect_server(
            prefect_db, work / "prefect-server", api_port, log=work / "prefect.log"
        ).wait_healthy()
        try:
            project = work / "sqlite"  # up to date after its full run
            ephemeral = [run(project, environment()) for _ in range(args.repeats)]
            api = f"http://127.0.0.1:{api_port}/api"
            served = [
                run(project, environment(PREFECT_API_URL=api, PREFECT_HOME=str(work / "prefect-client")))
                for _ in range(args.repeats)
            ]
        finally:
            orchestrator.stop()
        e, s = statistics.median(ephemeral), statistics.median(served)
        print(
            f"\n2. no-op run, Prefect ephemeral server (median of {args.repeats}): {e:6.1f} s  "
            f"{[round(x, 1) for x in ephemeral]}"
        )
        print(
            f"   no-op run, running Prefect server  (median of {args.repeats}): {s:6.1f} s  "
            f"{[round(x, 1) for x in served]}"
        )
        print(f"   running server / ephemeral:                          {s / e:7.3f}")

    from report import command_line, markdown_table, write_section

    rows = [
        [
            "full `lifecycle run`, tracking into SQLite vs into `mlflow server` on PostgreSQL (artifacts proxied)",
            f"{sqlite:.1f} s",
            f"{server:.1f} s",
            f"{server / sqlite:.3f}",
        ],
        [
            "no-op `lifecycle run`, Prefect's ephemeral server vs a running `prefect server` on PostgreSQL "
            f"(median of {args.repeats})",
            f"{e:.1f} s",
            f"{s:.1f} s",
            f"{s / e:.3f}",
        ],
    ]
    write_section(
        "servers",
        command_line("bench-servers"),
        f"{platform.machine()}, Python {platform.python_version()}; PostgreSQL on 127.0.0.1; the tiny project of the "
        "tests, in fresh copies:\n\n"
        + markdown_table(["", "embedded default", "a real server", "server / default"], rows),
        title="Servers: real MLflow and Prefect servers against the embedded defaults",
    )


if __name__ == "__main__":
    main()
