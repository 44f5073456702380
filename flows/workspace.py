"""One pipeline run per workspace at a time.

Two `lifecycle run` in one checkout (by hand, or two workers picking up two scheduled runs) would race on the
same outputs and DVC's own lock: the second one failed deep inside a stage with a `LockError` traceback. The
lock is taken before any stage: the second run is refused at once with who holds the workspace, or waits for it
when params say `orchestration.on_busy: wait`.

The lock is an OS file lock (`fcntl.flock`), so it is released when its holder exits, even by SIGKILL: a
crashed run never leaves the workspace locked. The file also says who holds it (pid, host, start time).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from stages.common.errors import ExitStatus

LOCK_FILE = ".lifecycle.lock"  # in the project root; git-ignored
log = logging.getLogger(__name__)


class WorkspaceBusy(Exception):
    exit_status = ExitStatus.WORKSPACE_BUSY

    def __init__(self, root: Path, holder: dict, waited: float | None = None):
        self.holder = holder
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}" + (
            f", command: {holder['command']}" if holder.get("command") else ""
        )
        if waited is None:
            hint = (
                "wait for it to finish, stop that process, or set `orchestration.on_busy: wait` in params.yaml "
                "to queue behind it"
            )
            super().__init__(f"the workspace {root} is in use by another lifecycle run ({who}); {hint}")
        else:
            super().__init__(
                f"the workspace {root} was still in use after waiting {waited:.0f} s "
                f"(`orchestration.wait_timeout_seconds`) by another lifecycle run ({who})"
            )


def holder(root: str | Path) -> dict:
    """Who holds (or last held) the workspace, as written in the lock file; {} when nobody ever did."""
    try:
        return json.loads((Path(root) / LOCK_FILE).read_text(encoding="utf-8") or "{}")
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def is_busy(root: str | Path) -> bool:
    """Whether another process holds the workspace now (a look, not a claim: the flow takes the lock)."""
    path = Path(root) / LOCK_FILE
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


@contextmanager
def workspace_lock(root: str | Path, wait: bool = False, timeout: float = 3600.0, poll: float = 1.0):
    """Hold the workspace for the body; WorkspaceBusy if another process holds it (after `timeout` s if `wait`)."""
    root = Path(root).resolve()
    path = root / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        start, said = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                if not wait:
                    raise WorkspaceBusy(root, holder(root)) from None
                if waited >= timeout:
                    raise WorkspaceBusy(root, holder(root), waited) from None
                if not said:  # once: the run is queued, not hung
                    said, who = True, holder(root)
                    log.warning(
                        "waiting for the workspace %s, held by pid %s on %s since %s "
                        "(orchestration.on_busy: wait, up to %.0f s)",
                        root,
                        who.get("pid", "?"),
                        who.get("host", "?"),
                        who.get("started", "?"),
                        timeout,
                    )
                time.sleep(poll)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": " ".join(sys.argv)[:200],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        try:
            yield me
        finally:
            os.ftruncate(fd, 0)  # nobody holds it now; the file stays (removing it would race a waiting run)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
