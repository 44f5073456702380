"""Pipeline benchmark: the full offline run, its orchestration overhead, and a no-op re-run, side by side.

    make bench        # or: .venv/bin/python bench/pipeline.py

In fresh copies of the repository (embedded defaults: MLflow SQLite, Prefect's ephemeral server, DVC's
local cache), it measures:
  1. the stage commands run by hand, one after another (`python -m stages.<stage>`, no Prefect, no DVC);
  2. `lifecycle run` (Prefect flow -> DVC -> the same commands, under an MLflow parent run), per-stage times;
  3. a no-op `lifecycle run`, next to a bare no-op `dvc repro` and the start-up of Prefect's ephemeral server
     (an empty flow in a new process), measured apart.
The machine is shared and noisy: read the ratios, not the absolute seconds.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))

from tests.workspaces import COPY_IGNORE  # noqa: E402  (the same fresh copy the end-to-end tests make)


def fresh_copy(parent: Path, name: str) -> Path:
    root = parent / name
    shutil.copytree(REPO, root, ignore=COPY_IGNORE)
    (root / "models").mkdir(exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def environment() -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "BENTOML_HOME", "PREFECT_HOME", "LIFECYCLE_MODEL_TAG")
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["HF_HUB_OFFLINE"] = "1"
    return env


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return seconds


def stages() -> list[str]:
    import yaml

    return list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


def main() -> int:
    env = environment()
    with tempfile.TemporaryDirectory(prefix="lifecycle-bench-") as tmp:
        tmp = Path(tmp)
        by_hand_root = fresh_copy(tmp, "by-hand")
        # Every tool's state inside the copy, as `lifecycle` sets it up.
        hand_env = {
            **env,
            "BENTOML_HOME": str(by_hand_root / ".bentoml"),
            "PREFECT_HOME": str(by_hand_root / ".prefect"),
        }
        by_hand = {s: timed([sys.executable, "-m", f"stages.{s}"], by_hand_root, hand_env) for s in stages()}
        print("by hand   " + ", ".join(f"{k} {v:.1f}" for k, v in by_hand.items()), flush=True)

        root = fresh_copy(tmp, "orchestrated")
        full = timed([str(BIN / "lifecycle"), "run"], root, env)
        record = json.loads((root / "reports" / "last_run.json").read_text())
        noop = timed([str(BIN / "lifecycle"), "run"], root, env)
        noop_record = json.loads((root / "reports" / "last_run.json").read_text())
        assert noop_record["ran"] == [], noop_record
        dvc_noop = timed([str(BIN / "dvc"), "repro"], root, env)
        prefect_env = {
            **env,
            "PREFECT_HOME": str(root / ".prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        }
        empty_flow = "from prefect import flow\n@flow\ndef empty():\n    pass\nempty()\n"
        prefect_start = timed([sys.executable, "-c", empty_flow], root, prefect_env)
        imports = timed([sys.executable, "-c", "import flows.lifecycle, dvc.repo, mlflow"], root, env)

    hand_total = sum(by_hand.values())
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'stage':<10}{'by hand s':>12}{'in lifecycle run s':>20}")
    for s in stages():
        print(f"{s:<10}{by_hand[s]:>12.1f}{record['seconds'].get(s, float('nan')):>20.1f}")
    print(f"{'total':<10}{hand_total:>12.1f}{full:>20.1f}")
    print(
        f"orchestration overhead (Prefect + MLflow parent run + DVC): {full - hand_total:+.1f} s = "
        f"{100 * (full / hand_total - 1):+.1f}% of the by-hand run"
    )
    print()
    print(f"no-op lifecycle run: {noop:.1f} s wall (target <= 20 s)")
    print(f"  of which Prefect ephemeral server start + empty flow (new process): {prefect_start:.1f} s")
    print(f"  importing Prefect, DVC and MLflow in a new interpreter: {imports:.1f} s")
    print(f"bare no-op `dvc repro`: {dvc_noop:.1f} s  -> lifecycle no-op / dvc no-op = {noop / dvc_noop:.1f}x")

    from report import command_line, markdown_table, write_section

    rows = [[s, f"{by_hand[s]:.1f}", f"{record['seconds'].get(s, float('nan')):.1f}"] for s in stages()]
    rows.append(["**total**", f"**{hand_total:.1f}**", f"**{full:.1f}**"])
    write_section(
        "pipeline",
        command_line("bench"),
        f"{platform.machine()}, Python {platform.python_version()}; fresh copies of the repository, embedded "
        "defaults. The stage commands by hand (`python -m stages.<stage>`), then `lifecycle run`:\n\n"
        + markdown_table(["stage", "by hand (s)", "in `lifecycle run` (s)"], rows)
        + f"\n\n- Orchestration overhead (Prefect + the MLflow parent run + DVC) over the same commands by hand: "
        f"**{100 * (full / hand_total - 1):+.1f} %** ({full - hand_total:+.1f} s; target: 10 %).\n"
        f"- No-op `lifecycle run`: **{noop:.1f} s** wall (target: 20 s), of which **{prefect_start:.1f} s** is "
        f"starting Prefect's ephemeral server and an empty flow in a new process ({imports:.1f} s of it importing "
        f"Prefect, DVC and MLflow); a bare no-op `dvc repro` takes **{dvc_noop:.1f} s** "
        f"({noop / dvc_noop:.0f}x less).",
        title="Pipeline: the offline run, orchestration overhead, a no-op run",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
