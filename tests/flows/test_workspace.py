"""One run per workspace: a second `lifecycle run` is refused before any stage (or waits), naming the holder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from flows.workspace import LOCK_FILE, WorkspaceBusy, holder, is_busy, workspace_lock
from stages.common.errors import ExitStatus

HOLD = """import sys, time, pathlib
from flows.workspace import workspace_lock
with workspace_lock(sys.argv[1]):
    pathlib.Path(sys.argv[1], "held").write_text("")
    while not pathlib.Path(sys.argv[1], "release").exists():
        time.sleep(0.1)
"""


@contextmanager
def holding(root: Path):
    """Another process holding the workspace until `release` appears in it (or it is killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], cwd=os.getcwd())
    for _ in range(300):  # bounded: the holder imports and writes `held`
        if (root / "held").exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert (root / "held").exists(), f"the holder did not start (exit {proc.poll()})"
    try:
        yield proc
    finally:
        (root / "release").write_text("")
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        (root / "held").unlink(missing_ok=True)
        (root / "release").unlink(missing_ok=True)


@pytest.fixture
def held(tmp_path):
    with holding(tmp_path) as proc:
        yield proc


def test_the_holder_is_named_and_a_second_lock_is_refused(tmp_path, held):
    assert is_busy(tmp_path)
    who = holder(tmp_path)
    assert who["pid"] == held.pid and who["host"] == socket.gethostname() and who["started"]
    with pytest.raises(WorkspaceBusy) as refused:
        with workspace_lock(tmp_path):
            pass
    message = str(refused.value)
    assert f"pid {held.pid} on {socket.gethostname()}, started {who['started']}" in message
    assert "orchestration.on_busy: wait" in message


def test_a_waiting_run_gets_the_workspace_when_the_holder_ends(tmp_path, held):
    (tmp_path / "release").write_text("")
    with workspace_lock(tmp_path, wait=True, timeout=60, poll=0.1) as me:
        assert me["pid"] == os.getpid() and holder(tmp_path)["pid"] == os.getpid()
    assert not is_busy(tmp_path) and holder(tmp_path) == {}, "released: the file says nobody holds it"


def test_waiting_gives_up_after_the_timeout(tmp_path, held):
    with pytest.raises(WorkspaceBusy, match="still in use after waiting"):
        with workspace_lock(tmp_path, wait=True, timeout=0.3, poll=0.1):
            pass


def test_a_killed_holder_leaves_the_workspace_free(tmp_path, held):
    held.send_signal(signal.SIGKILL)
    held.wait(timeout=30)
    assert not is_busy(tmp_path), "an OS lock dies with its process: no stale lock after a crash"
    with workspace_lock(tmp_path):
        pass


def test_a_second_lifecycle_run_is_refused_before_any_stage(tmp_path, held):
    """The real command in a real (DVC + params) workspace held by another process: exit 5 at once, nothing run."""
    from tests.conftest import tiny_params_dict, write_params

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    write_params(tmp_path, tiny_params_dict(tmp_path))
    (tmp_path / "dvc.yaml").write_text(
        json.dumps(
            {
                "stages": {
                    "scope": {"cmd": f"{sys.executable} -c \"open('scoped', 'w').write('x')\"", "outs": ["scoped"]}
                }
            }
        )
    )
    lifecycle = os.path.join(os.path.dirname(sys.executable), "lifecycle")
    out = subprocess.run([lifecycle, "run"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == ExitStatus.WORKSPACE_BUSY, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"in use by another lifecycle run (pid {held.pid} on {socket.gethostname()}, started" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "scoped").exists() and not (tmp_path / "reports").exists(), "no stage ran"
    assert (tmp_path / LOCK_FILE).exists()
